//! Services on a swarm of agents, each in its own network namespace (swarm.md §6, S13-S24):
//! replicas spread, scaling keeps slots, drain and pause, a dead node's tasks replaced at once,
//! global services on nodes that join later, constraints with a pending reason, the restart
//! policy, secrets only where needed, rolling updates and rollback, and Docker's own CLI.
//!
//! The executor is `fake` unless `SLIPWAY_SWARM_TEST_EXECUTOR` names another (`engine`, once
//! the engine-backed executor and its engines are part of these runs).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::services::{create, hosts, tasks, update};
use common::{Cluster, Node};
use serde_json::{Value, json};

fn executor() -> String {
    std::env::var("SLIPWAY_SWARM_TEST_EXECUTOR").unwrap_or_else(|_| "fake".into())
}

fn cluster(n: usize) -> Cluster {
    let executor = executor();
    Cluster::with_args(n, &["--executor", &executor])
}

const IMAGE: &str = "busybox:latest";

fn spec(name: &str, replicas: u64) -> Value {
    json!({
        "Name": name,
        "TaskTemplate": {
            "ContainerSpec": {"Image": IMAGE, "Args": ["sleep", "3600"]},
            "RestartPolicy": {"Condition": "any", "Delay": 300_000_000i64},
        },
        "Mode": {"Replicated": {"Replicas": replicas}},
    })
}

fn running(tasks: &[Value]) -> Vec<&Value> {
    tasks
        .iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .collect()
}

/// Running tasks per hostname.
fn spread(node: &Node, service: &str) -> BTreeMap<String, usize> {
    let hosts = hosts(node);
    let mut out = BTreeMap::new();
    for t in running(&tasks(node, service)) {
        let host = hosts
            .get(t["NodeID"].as_str().unwrap_or(""))
            .cloned()
            .unwrap_or_default();
        *out.entry(host).or_default() += 1;
    }
    out
}

fn slots(node: &Node, service: &str) -> BTreeMap<u64, String> {
    running(&tasks(node, service))
        .iter()
        .map(|t| {
            (
                t["Slot"].as_u64().unwrap_or(0),
                t["ID"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn three_nodes() -> Cluster {
    let cluster = cluster(3);
    cluster.init();
    cluster.join("h2", "worker");
    cluster.join("h3", "worker");
    let h1 = cluster.node("h1");
    cluster.wait(Duration::from_secs(20), "3 ready nodes", || {
        let nodes = h1.node_ls().ok()?;
        (nodes.len() == 3 && nodes.iter().all(|n| n["Status"] == "Ready")).then_some(())
    });
    cluster
}

const LONG: Duration = Duration::from_secs(30);

#[test]
fn replicas_spread_scale_keeps_slots_drain_pause_and_a_dead_node_is_replaced_at_once() {
    let mut cluster = three_nodes();
    let h1 = cluster.node("h1");
    // S13: 9 replicas, 3 per node.
    let mut web = spec("web", 9);
    // A long restart delay: S14's replacements must not wait for it.
    web["TaskTemplate"]["RestartPolicy"]["Delay"] = json!(60_000_000_000i64);
    create(h1, &web);
    cluster.wait(LONG, "9 replicas spread 3/3/3", || {
        let s = spread(h1, "web");
        (s.values().copied().collect::<Vec<_>>() == [3, 3, 3]).then_some(())
    });
    let listed = h1.api("GET", "/v1.41/services?status=true", "").json();
    assert_eq!(listed[0]["ServiceStatus"]["RunningTasks"], 9);
    assert_eq!(listed[0]["ServiceStatus"]["DesiredTasks"], 9);
    // Names and ID prefixes resolve; unknown ones get Docker's 404.
    let by_name = h1.api("GET", "/v1.41/services/web", "").json();
    let id = by_name["ID"].as_str().unwrap().to_string();
    assert_eq!(
        h1.api("GET", &format!("/v1.41/services/{}", &id[..6]), "")
            .json()["ID"],
        id.as_str()
    );
    let missing = h1.api("GET", "/v1.41/services/nope", "");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["message"], "service nope not found");
    // A stale version is refused; a duplicate name too.
    let stale = h1.api(
        "POST",
        "/v1.41/services/web/update?version=1",
        &web.to_string(),
    );
    assert_eq!(stale.status, 500);
    assert!(
        stale.body.contains("update out of sequence"),
        "{}",
        stale.body
    );
    let dup = h1.api("POST", "/v1.41/services/create", &web.to_string());
    assert_eq!(dup.status, 409, "{}", dup.body);

    // S16: scale 2 -> 4 keeps the first two tasks; 4 -> 1 keeps slot 1.
    create(h1, &spec("s16", 2));
    let first = cluster.wait(LONG, "2 replicas of s16", || {
        let s = slots(h1, "s16");
        (s.len() == 2).then_some(s)
    });
    update(h1, "s16", |s| {
        s["Mode"]["Replicated"]["Replicas"] = json!(4)
    });
    let scaled = cluster.wait(LONG, "4 replicas of s16", || {
        let s = slots(h1, "s16");
        (s.len() == 4).then_some(s)
    });
    assert_eq!(scaled[&1], first[&1]);
    assert_eq!(scaled[&2], first[&2]);
    update(h1, "s16", |s| {
        s["Mode"]["Replicated"]["Replicas"] = json!(1)
    });
    let down = cluster.wait(LONG, "1 replica of s16", || {
        let s = slots(h1, "s16");
        (s.len() == 1).then_some(s)
    });
    assert_eq!(down.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(down[&1], first[&1]);

    // S18: drain moves h3's tasks away; pause keeps h2's but places nothing new there.
    h1.docker_ok(&["node", "update", "--availability", "drain", "h3"]);
    cluster.wait(LONG, "web off the drained h3", || {
        let s = spread(h1, "web");
        (!s.contains_key("h3") && s.values().sum::<usize>() == 9).then_some(())
    });
    h1.docker_ok(&["node", "update", "--availability", "pause", "h2"]);
    let before = spread(h1, "web")["h2"];
    update(h1, "web", |s| {
        s["Mode"]["Replicated"]["Replicas"] = json!(12)
    });
    cluster.wait(LONG, "3 more replicas, all on h1", || {
        let s = spread(h1, "web");
        (s.values().sum::<usize>() == 12).then_some(())
    });
    assert_eq!(spread(h1, "web")["h2"], before, "pause places nothing new");
    h1.docker_ok(&["node", "update", "--availability", "active", "h2"]);
    h1.docker_ok(&["node", "update", "--availability", "active", "h3"]);

    // S14: h2's host dies; its tasks run elsewhere well before the 60 s restart delay.
    let on_h2 = spread(h1, "web")["h2"];
    assert!(on_h2 > 0);
    cluster.node_mut("h2").kill();
    let h1 = cluster.node("h1");
    cluster.wait(
        Duration::from_secs(20),
        "web's 12 replicas back without h2",
        || {
            let s = spread(h1, "web");
            (!s.contains_key("h2") && s.values().sum::<usize>() == 12).then_some(())
        },
    );

    // Removal takes the tasks along.
    assert_eq!(h1.api("DELETE", "/v1.41/services/web", "").status, 200);
    cluster.wait(LONG, "web's tasks gone", || {
        tasks(h1, &id).is_empty().then_some(())
    });
}

#[test]
fn global_services_follow_nodes_and_constraints_wait_for_a_label() {
    let cluster = cluster(3);
    cluster.init();
    cluster.join("h2", "worker");
    let h1 = cluster.node("h1");
    // S17: a global service on both nodes, then on h3 when it joins.
    let mut global = spec("agent", 0);
    global["Mode"] = json!({"Global": {}});
    create(h1, &global);
    cluster.wait(LONG, "one agent task on h1 and h2", || {
        let s = spread(h1, "agent");
        (s.len() == 2 && s.values().all(|&n| n == 1)).then_some(())
    });
    // S24: a constraint no node meets keeps the task pending with Docker's reason.
    let mut picky = spec("picky", 1);
    picky["TaskTemplate"]["Placement"] = json!({"Constraints": ["node.labels.zone==a"]});
    create(h1, &picky);
    cluster.wait(LONG, "picky pending with a reason", || {
        let t = tasks(h1, "picky");
        let t = t.first()?;
        (t["Status"]["State"] == "pending"
            && t["Status"]["Err"]
                == "no suitable node (scheduling constraints not satisfied on 2 nodes)")
            .then_some(())
    });
    cluster.join("h3", "worker");
    cluster.wait(LONG, "an agent task on h3 too", || {
        let s = spread(h1, "agent");
        (s.len() == 3 && s.values().all(|&n| n == 1)).then_some(())
    });
    h1.docker_ok(&["node", "update", "--label-add", "zone=a", "h3"]);
    cluster.wait(LONG, "picky placed on h3 once labelled", || {
        (spread(h1, "picky").get("h3") == Some(&1)).then_some(())
    });
    // Draining h2 removes its global task; activating it brings one back.
    h1.docker_ok(&["node", "update", "--availability", "drain", "h2"]);
    cluster.wait(LONG, "no agent task on drained h2", || {
        let s = spread(h1, "agent");
        (!s.contains_key("h2") && s.len() == 2).then_some(())
    });
    h1.docker_ok(&["node", "update", "--availability", "active", "h2"]);
    cluster.wait(LONG, "an agent task on h2 again", || {
        (spread(h1, "agent").len() == 3).then_some(())
    });
}

#[test]
fn wrong_requests_get_dockers_errors_restart_policy_counts_and_used_secrets_stay() {
    let cluster = cluster(1);
    cluster.init();
    let h1 = cluster.node("h1");
    // Hostile or wrong requests get Docker's errors, and the daemon lives on.
    let cases: &[(&str, &str, Value, u16, &str)] = &[
        (
            "POST",
            "/v1.41/services/create",
            json!({"Name": "x"}),
            400,
            "ContainerSpec",
        ),
        (
            "POST",
            "/v1.41/services/create",
            json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {}}}),
            400,
            "image reference must be provided",
        ),
        (
            "POST",
            "/v1.41/services/create",
            json!({"Name": "bad name!", "TaskTemplate": {"ContainerSpec": {"Image": "i"}}}),
            400,
            "DNS name",
        ),
        (
            "POST",
            "/v1.41/services/create",
            json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "i"}}, "Mode": {"Replicated": {"Replicas": 1u64 << 60}}}),
            400,
            "at most",
        ),
        (
            "POST",
            "/v1.41/services/create",
            json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "i"}, "Placement": {"Constraints": ["node.nope=1"]}}}),
            400,
            "invalid constraint",
        ),
        (
            "POST",
            "/v1.41/services/create",
            json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "i", "Secrets": [{"SecretID": "nope"}]}}}),
            400,
            "secret reference not found",
        ),
        (
            "POST",
            "/v1.41/services/create",
            json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "i"}}, "Mode": {"Replicated": {"Replicas": -1}}}),
            400,
            "invalid JSON",
        ),
        (
            "POST",
            "/v1.41/services/nope/update?version=1",
            json!({}),
            404,
            "service nope not found",
        ),
        (
            "DELETE",
            "/v1.41/services/nope",
            json!(null),
            404,
            "service nope not found",
        ),
        (
            "GET",
            "/v1.41/tasks?filters=%7B",
            json!(null),
            400,
            "invalid filter",
        ),
        (
            "GET",
            "/v1.41/tasks?filters=%7B%22bogus%22%3A%5B%22x%22%5D%7D",
            json!(null),
            400,
            "invalid filter 'bogus'",
        ),
        (
            "GET",
            "/v1.41/tasks/nope",
            json!(null),
            404,
            "task nope not found",
        ),
        (
            "POST",
            "/v1.41/secrets/create",
            json!({"Name": "s", "Data": "not base64!"}),
            400,
            "data",
        ),
        (
            "POST",
            "/v1.41/secrets/create",
            json!({"Name": "", "Data": "eA=="}),
            400,
            "invalid name",
        ),
        (
            "DELETE",
            "/v1.41/configs/nope",
            json!(null),
            404,
            "config nope not found",
        ),
    ];
    for (method, path, body, status, text) in cases {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let reply = h1.api(method, path, &body);
        assert_eq!(reply.status, *status, "{method} {path}: {}", reply.body);
        assert!(reply.body.contains(text), "{method} {path}: {}", reply.body);
    }
    assert_eq!(h1.api("GET", "/_ping", "").status, 200);
    if executor() != "fake" {
        return;
    }
    // S22: a task that fails after 200 ms, restarted on failure twice at most, 300 ms apart.
    let mut failing = spec("failing", 1);
    failing["TaskTemplate"]["ContainerSpec"]["Env"] =
        json!(["SLIPWAY_FAKE_EXIT=3", "SLIPWAY_FAKE_DELAY_MS=200"]);
    failing["TaskTemplate"]["RestartPolicy"] =
        json!({"Condition": "on-failure", "Delay": 300_000_000i64, "MaxAttempts": 2});
    create(h1, &failing);
    cluster.wait(LONG, "3 failed tasks", || {
        let t = tasks(h1, "failing");
        (t.len() == 3 && t.iter().all(|t| t["Status"]["State"] == "failed")).then_some(t)
    });
    std::thread::sleep(Duration::from_secs(2));
    let t = tasks(h1, "failing");
    assert_eq!(t.len(), 3, "no fourth attempt: {t:#?}");
    assert_eq!(t[0]["Status"]["ContainerStatus"]["ExitCode"], 3);
    assert!(t.iter().all(|t| t["DesiredState"] == "shutdown"), "{t:#?}");
    // A task that completes is not restarted under on-failure.
    let mut done = spec("done", 1);
    done["TaskTemplate"]["ContainerSpec"]["Env"] = json!(["SLIPWAY_FAKE_EXIT=0"]);
    done["TaskTemplate"]["RestartPolicy"] =
        json!({"Condition": "on-failure", "Delay": 100_000_000i64});
    create(h1, &done);
    cluster.wait(LONG, "done complete", || {
        let t = tasks(h1, "done");
        (t.len() == 1 && t[0]["Status"]["State"] == "complete").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let t = tasks(h1, "done");
    assert_eq!(t.len(), 1);
    // Its slot is dead, as in SwarmKit: the task is marked for shutdown, nothing replaces it.
    assert_eq!(t[0]["DesiredState"], "shutdown");
    // Condition any: history is capped at 5 tasks per slot.
    let mut flappy = spec("flappy", 1);
    flappy["TaskTemplate"]["ContainerSpec"]["Env"] =
        json!(["SLIPWAY_FAKE_EXIT=1", "SLIPWAY_FAKE_DELAY_MS=50"]);
    flappy["TaskTemplate"]["RestartPolicy"] = json!({"Condition": "any", "Delay": 50_000_000i64});
    create(h1, &flappy);
    let ids = |t: Vec<Value>| -> std::collections::BTreeSet<String> {
        t.iter()
            .map(|t| t["ID"].as_str().unwrap().to_string())
            .collect()
    };
    let five = cluster.wait(LONG, "5 flappy tasks", || {
        let t = tasks(h1, "flappy");
        (t.len() == 5).then(|| ids(t))
    });
    cluster.wait(LONG, "flappy restarted again, still 5 kept", || {
        let t = tasks(h1, "flappy");
        assert!(t.len() <= 5, "{} tasks kept", t.len());
        (ids(t) != five).then_some(())
    });

    // Secrets: refused removal while a service uses one.
    let secret = h1.api(
        "POST",
        "/v1.41/secrets/create",
        &json!({"Name": "pw", "Data": "c2VjcmV0"}).to_string(),
    );
    assert_eq!(secret.status, 201, "{}", secret.body);
    let secret_id = secret.json()["ID"].as_str().unwrap().to_string();
    let listed = h1.api("GET", "/v1.41/secrets", "").json();
    assert_eq!(listed[0]["Spec"]["Name"], "pw");
    assert!(
        listed[0]["Spec"].get("Data").is_none(),
        "no secret data out"
    );
    let mut user = spec("user", 1);
    user["TaskTemplate"]["ContainerSpec"]["Secrets"] = json!([{
        "File": {"Name": "pw", "UID": "0", "GID": "0", "Mode": 292},
        "SecretID": secret_id, "SecretName": "pw"
    }]);
    create(h1, &user);
    let rm = h1.api("DELETE", "/v1.41/secrets/pw", "");
    assert_eq!(rm.status, 400, "{}", rm.body);
    assert!(
        rm.json()["message"]
            .as_str()
            .unwrap()
            .ends_with("secret 'pw' is in use by the following service: user"),
        "{}",
        rm.body
    );
    assert_eq!(h1.api("DELETE", "/v1.41/services/user", "").status, 200);
    assert_eq!(h1.api("DELETE", "/v1.41/secrets/pw", "").status, 204);
}

#[test]
fn rolling_update_goes_two_at_a_time_pauses_on_failure_and_rolls_back() {
    if executor() != "fake" {
        return;
    }
    let cluster = three_nodes();
    let h1 = cluster.node("h1");
    let mut svc = spec("roll", 6);
    // The delay outlasts the executor's report of a failure (it reconciles every second), so
    // a failure is counted before the next batch starts.
    svc["UpdateConfig"] = json!({"Parallelism": 2, "Delay": 1_500_000_000i64,
        "FailureAction": "pause", "Monitor": 1_000_000_000i64, "Order": "stop-first"});
    create(h1, &svc);
    cluster.wait(LONG, "6 replicas", || {
        (running(&tasks(h1, "roll")).len() == 6).then_some(())
    });
    // S19: never more than 2 slots between images at once.
    update(h1, "roll", |s| {
        s["TaskTemplate"]["ContainerSpec"]["Image"] = json!("busybox:2");
    });
    let mut mixes = Vec::new();
    cluster.wait(LONG, "the update completed", || {
        let t = running(&tasks(h1, "roll"))
            .iter()
            .filter(|t| t["Spec"]["ContainerSpec"]["Image"] == "busybox:2")
            .count();
        mixes.push(t);
        let s = h1.api("GET", "/v1.41/services/roll", "").json();
        (s["UpdateStatus"]["State"] == "completed").then_some(())
    });
    assert_eq!(running(&tasks(h1, "roll")).len(), 6);
    assert!(
        mixes.windows(2).all(|w| w[1] <= w[0] + 2),
        "at most 2 replaced per step: {mixes:?}"
    );
    // S21: a failing image, parallelism 1, failure ratio 0.25 of the 6 slots: the update pauses
    // after exactly 2 tasks changed; a rollback restores busybox:2.
    update(h1, "roll", |s| {
        s["UpdateConfig"]["Parallelism"] = json!(1);
        s["UpdateConfig"]["MaxFailureRatio"] = json!(0.25);
        s["TaskTemplate"]["ContainerSpec"]["Image"] = json!("busybox:bad");
        s["TaskTemplate"]["ContainerSpec"]["Env"] =
            json!(["SLIPWAY_FAKE_EXIT=1", "SLIPWAY_FAKE_DELAY_MS=200"]);
    });
    cluster.wait(LONG, "the update paused", || {
        let s = h1.api("GET", "/v1.41/services/roll", "").json();
        (s["UpdateStatus"]["State"] == "paused").then_some(())
    });
    let bad = tasks(h1, "roll")
        .iter()
        .filter(|t| t["Spec"]["ContainerSpec"]["Image"] == "busybox:bad")
        .map(|t| t["Slot"].as_u64())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(bad, 2, "the update paused after 2 tasks changed");
    std::thread::sleep(Duration::from_secs(2));
    let still = tasks(h1, "roll")
        .iter()
        .filter(|t| t["Spec"]["ContainerSpec"]["Image"] == "busybox:bad")
        .map(|t| t["Slot"].as_u64())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(still, 2, "a paused update changes nothing more");
    let current = h1.api("GET", "/v1.41/services/roll", "").json();
    let version = current["Version"]["Index"].as_u64().unwrap();
    let rb = h1.api(
        "POST",
        &format!("/v1.41/services/roll/update?version={version}&rollback=previous"),
        &current["Spec"].to_string(),
    );
    assert_eq!(rb.status, 200, "{}", rb.body);
    cluster.wait(LONG, "rolled back to busybox:2", || {
        let s = h1.api("GET", "/v1.41/services/roll", "").json();
        let ok = s["UpdateStatus"]["State"] == "rollback_completed"
            && s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == "busybox:2";
        let t = running(&tasks(h1, "roll"))
            .iter()
            .filter(|t| t["Spec"]["ContainerSpec"]["Image"] == "busybox:2")
            .count();
        (ok && t == 6).then_some(())
    });
}

#[test]
fn dockers_cli_creates_scales_updates_rolls_back_and_removes_a_service() {
    let cluster = cluster(2);
    cluster.init();
    cluster.join("h2", "worker");
    let h1 = cluster.node("h1");
    h1.docker_ok(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        "cli",
        "--replicas",
        "2",
        "--update-delay",
        "100ms",
        IMAGE,
        "sleep",
        "3600",
    ]);
    let ps = |h1: &Node| -> Vec<(String, String, String)> {
        h1.docker_ok(&[
            "service",
            "ps",
            "cli",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Name}} {{.Node}} {{.CurrentState}}",
        ])
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.into(), w.next()?.into(), w.next()?.into()))
        })
        .collect()
    };
    cluster.wait(LONG, "2 running tasks in service ps", || {
        let rows = ps(h1);
        (rows.len() == 2 && rows.iter().all(|r| r.2 == "Running")).then_some(())
    });
    let rows = ps(h1);
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert!(
        names.contains(&"cli.1") && names.contains(&"cli.2"),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r.1 == "h1") && rows.iter().any(|r| r.1 == "h2"));
    let ls = h1.docker_ok(&[
        "service",
        "ls",
        "--format",
        "{{.Name}} {{.Mode}} {{.Replicas}}",
    ]);
    assert_eq!(ls.trim(), "cli replicated 2/2");
    h1.docker_ok(&["service", "scale", "--detach", "cli=3"]);
    cluster.wait(LONG, "3 running", || (ps(h1).len() == 3).then_some(()));
    assert_eq!(
        h1.docker_ok(&[
            "service",
            "inspect",
            "--format",
            "{{.Spec.Mode.Replicated.Replicas}} {{.Spec.TaskTemplate.RestartPolicy.Condition}}",
            "cli"
        ])
        .trim(),
        "3 any"
    );
    h1.docker_ok(&[
        "service",
        "update",
        "--detach",
        "--no-resolve-image",
        "--image",
        "busybox:2",
        "cli",
    ]);
    let image = |h1: &Node| {
        h1.docker_ok(&[
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}} {{.UpdateStatus.State}}",
            "cli",
        ])
        .trim()
        .to_string()
    };
    cluster.wait(LONG, "the update completed", || {
        (image(h1) == "busybox:2 completed").then_some(())
    });
    h1.docker_ok(&["service", "rollback", "--detach", "cli"]);
    cluster.wait(LONG, "the rollback completed", || {
        (image(h1) == format!("{IMAGE} rollback_completed")).then_some(())
    });
    let err = h1
        .docker(&["service", "inspect", "nope"])
        .expect_err("an unknown service");
    assert!(err.to_lowercase().contains("nope"), "{err}");
    h1.docker_ok(&["service", "rm", "cli"]);
    assert_eq!(h1.docker_ok(&["service", "ls", "-q"]).trim(), "");
    // Without --detach, Docker's CLI follows the tasks until the service converged.
    let out = h1.docker_ok(&[
        "service",
        "create",
        "--no-resolve-image",
        "--name",
        "waited",
        "--replicas",
        "2",
        IMAGE,
    ]);
    assert!(out.contains("converged"), "{out}");
    h1.docker_ok(&["service", "rm", "waited"]);

    // The agent's own CLI speaks the same verbs.
    let cli = |args: &[&str]| {
        h1.cli(args)
            .unwrap_or_else(|e| panic!("slipway-swarm {args:?}: {e}"))
    };
    let secret_file = cluster.dir.path().join("pw");
    std::fs::write(&secret_file, "hunter2").unwrap();
    cli(&["secret", "create", "pw", secret_file.to_str().unwrap()]);
    assert!(cli(&["secret", "ls"]).contains("pw"));
    cli(&[
        "service",
        "create",
        "--name",
        "own",
        "--replicas",
        "2",
        "--secret",
        "pw",
        IMAGE,
        "sleep",
        "3600",
    ]);
    cli(&["service", "scale", "own=3"]);
    cluster.wait(LONG, "own's 3 tasks running", || {
        let ls = cli(&["service", "ls"]);
        let ps = cli(&["service", "ps", "own"]);
        let running = ps
            .lines()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() >= 5 && w[3] == "running" && w[4] == "running"
            })
            .count();
        (ls.contains("3/3") && running == 3).then_some(())
    });
    let inspected: Value = serde_json::from_str(&cli(&["service", "inspect", "own"])).unwrap();
    assert_eq!(inspected[0]["Spec"]["Mode"]["Replicated"]["Replicas"], 3);
    let err = h1.cli(&["secret", "rm", "pw"]).expect_err("pw is in use");
    assert!(
        err.contains("is in use by the following service: own"),
        "{err}"
    );
    cli(&["service", "rm", "own"]);
    cli(&["secret", "rm", "pw"]);
    assert_eq!(cli(&["secret", "ls", "-q"]).trim(), "");
}

#[test]
fn start_first_waits_for_health_and_a_failing_update_rolls_itself_back() {
    if executor() != "fake" {
        return;
    }
    let cluster = cluster(1);
    cluster.init();
    let h1 = cluster.node("h1");
    let mut svc = spec("sf", 2);
    svc["UpdateConfig"] = json!({"Parallelism": 1, "Order": "start-first",
        "FailureAction": "pause", "Monitor": 1_000_000_000i64});
    create(h1, &svc);
    cluster.wait(LONG, "2 replicas", || {
        (running(&tasks(h1, "sf")).len() == 2).then_some(())
    });
    let old: Vec<String> = running(&tasks(h1, "sf"))
        .iter()
        .map(|t| t["ID"].as_str().unwrap().to_string())
        .collect();
    // S20: the new task never passes its health check: it stays starting, the old ones run.
    update(h1, "sf", |s| {
        s["TaskTemplate"]["ContainerSpec"]["Env"] = json!(["SLIPWAY_FAKE_UNHEALTHY=1"]);
    });
    cluster.wait(LONG, "one new task starting", || {
        let t = tasks(h1, "sf");
        t.iter()
            .any(|t| t["Status"]["State"] == "starting")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let t = tasks(h1, "sf");
    let still: Vec<String> = running(&t)
        .iter()
        .map(|t| t["ID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(still, old, "the old tasks keep running: {t:#?}");
    let starting = t
        .iter()
        .filter(|t| t["Status"]["State"] == "starting")
        .count();
    assert_eq!(starting, 1, "parallelism 1: {t:#?}");
    let s = h1.api("GET", "/v1.41/services/sf", "").json();
    assert_eq!(s["UpdateStatus"]["State"], "updating");
    // Failure action rollback: the failing update is undone by itself.
    let mut auto = spec("auto", 2);
    auto["UpdateConfig"] = json!({"Parallelism": 1, "Delay": 1_500_000_000i64,
        "FailureAction": "rollback", "Monitor": 2_000_000_000i64});
    create(h1, &auto);
    cluster.wait(LONG, "2 auto replicas", || {
        (running(&tasks(h1, "auto")).len() == 2).then_some(())
    });
    update(h1, "auto", |s| {
        s["TaskTemplate"]["ContainerSpec"]["Env"] =
            json!(["SLIPWAY_FAKE_EXIT=1", "SLIPWAY_FAKE_DELAY_MS=100"]);
    });
    cluster.wait(LONG, "auto rolled back by itself", || {
        let s = h1.api("GET", "/v1.41/services/auto", "").json();
        let done = s["UpdateStatus"]["State"] == "rollback_completed"
            && s["Spec"]["TaskTemplate"]["ContainerSpec"]
                .get("Env")
                .is_none();
        (done && running(&tasks(h1, "auto")).len() == 2).then_some(s)
    });
}

#[test]
fn services_survive_a_leader_failover_without_duplicate_tasks() {
    let mut cluster = cluster(3);
    cluster.init();
    cluster.join("h2", "manager");
    cluster.join("h3", "manager");
    let h1 = cluster.node("h1");
    cluster.wait(LONG, "3 ready managers", || {
        let nodes = h1.node_ls().ok()?;
        (nodes.len() == 3 && nodes.iter().all(|n| n["Status"] == "Ready")).then_some(())
    });
    create(h1, &spec("ha", 6));
    cluster.wait(LONG, "6 replicas", || {
        (running(&tasks(h1, "ha")).len() == 6).then_some(())
    });
    cluster.node_mut("h1").kill();
    let h2 = cluster.node("h2");
    // A new leader; h1's tasks run elsewhere; every slot holds exactly one live task.
    cluster.wait(Duration::from_secs(40), "6 replicas on h2 and h3", || {
        let t = tasks(h2, "ha");
        let hosts = hosts(h2);
        let r = running(&t);
        let on_survivors = r.iter().all(|t| {
            hosts
                .get(t["NodeID"].as_str().unwrap_or(""))
                .map(String::as_str)
                != Some("h1")
        });
        (r.len() == 6 && on_survivors).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let t = tasks(h2, "ha");
    let mut live_per_slot: BTreeMap<u64, usize> = BTreeMap::new();
    for task in t.iter().filter(|t| t["DesiredState"] == "running") {
        *live_per_slot
            .entry(task["Slot"].as_u64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        live_per_slot,
        (1..=6).map(|s| (s, 1)).collect::<BTreeMap<_, _>>(),
        "{t:#?}"
    );
    // Writes through a follower or the new leader; S14's scale down after the failure.
    update(h2, "ha", |s| s["Mode"]["Replicated"]["Replicas"] = json!(3));
    cluster.wait(LONG, "3 replicas", || {
        let s = slots(h2, "ha");
        (s.keys().copied().collect::<Vec<_>>() == [1, 2, 3]).then_some(())
    });
}
