//! Rolling updates, rollbacks and restart policies on agents with real engines and real
//! containers (swarm.md §6 S19–S22): each node is a network namespace holding its agent
//! (`--executor engine`) and its own `slipway-engine daemon`, pulling busybox-static images
//! from Debian's docker-registry on the host. Two images are pushed, `:1` and `:2` (another
//! digest), so what the engines actually run tells old from new.
//!
//! - S19: 5 replicas, parallelism 2, delay 2 s: the running containers go {old 3, new 2} →
//!   {1, 4} → {0, 5}; `rollback=previous` with parallelism 3: {old 3, new 2} → {old 5}.
//! - S21 (next to S19, on the same cluster): a tag that does not exist, parallelism 1,
//!   failure ratio 0.25, action pause: paused after exactly 2 slots changed; rolled back.
//! - S20: start-first, the new spec's health check passes once `/tmp/healthy` exists (made
//!   through the engine's exec): 2 new containers stay starting while the 5 old run; each pair
//!   made healthy lets exactly the next batch start.
//! - S22 (next to S20): exit 1 under on-failure with max attempts 3 runs 4 containers, at least
//!   the delay apart (each container writes the host's uptime to a bind-mounted directory);
//!   condition none and an exit 0 under on-failure run once; a window lets attempts go on.
//!
//! Timings are shortened through the API (delays of 1–2 s, 500 ms monitors, 1 s stop grace).
//! Needs root, Debian's busybox-static and docker-registry.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::engine::{Registry, push_busybox_image, push_busybox_image_marked};
use common::services::{create, tasks, update};
use common::{Cluster, Node};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(90);
const SECOND: i64 = 1_000_000_000;

/// The two images as the nodes name them, and their manifest digests.
struct Images {
    old: String,
    new: String,
    old_digest: String,
    new_digest: String,
}

/// A 3-node cluster (h1 manager, h2 and h3 workers) with engines, and the two images.
fn three_nodes(registry: &Registry) -> (Cluster, Images) {
    let old_digest = push_busybox_image(&format!("{}/slipway/busybox:1", registry.local()));
    let new_digest =
        push_busybox_image_marked(&format!("{}/slipway/busybox:2", registry.local()), "2");
    assert_ne!(old_digest, new_digest);
    let cluster = Cluster::with_engines(3, registry.port);
    cluster.init();
    cluster.join("h2", "worker");
    cluster.join("h3", "worker");
    let h1 = cluster.node("h1");
    // Docker's default heartbeat (the harness sets 500 ms): no node here has to be found
    // down, and a node slowed by a loaded machine must not be, which would move its tasks
    // and upset the exact counts.
    h1.docker_ok(&["swarm", "update", "--dispatcher-heartbeat", "5s"]);
    cluster.wait(Duration::from_secs(20), "3 ready nodes", || {
        let nodes = h1.node_ls().ok()?;
        (nodes.len() == 3 && nodes.iter().all(|n| n["Status"] == "Ready")).then_some(())
    });
    let base = format!("{}/slipway/busybox", cluster.registry(registry.port));
    let images = Images {
        old: format!("{base}:1"),
        new: format!("{base}:2"),
        old_digest,
        new_digest,
    };
    (cluster, images)
}

fn spec(name: &str, image: &str, replicas: u64, script: &str) -> Value {
    json!({
        "Name": name,
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": image,
                "Args": ["/bin/sh", "-c", script],
                "StopGracePeriod": SECOND,
            },
            "RestartPolicy": {"Condition": "any", "Delay": SECOND},
        },
        "Mode": {"Replicated": {"Replicas": replicas}},
    })
}

fn id(t: &Value) -> String {
    t["ID"].as_str().unwrap_or("").to_string()
}

fn update_state(node: &Node, service: &str) -> String {
    node.api("GET", &format!("/v1.41/services/{service}"), "")
        .json()["UpdateStatus"]["State"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// `POST /services/{id}/update?rollback=previous`, as `docker service rollback` does.
fn rollback(node: &Node, service: &str) {
    let current = node
        .api("GET", &format!("/v1.41/services/{service}"), "")
        .json();
    let version = current["Version"]["Index"].as_u64().expect("a version");
    let reply = node.api(
        "POST",
        &format!("/v1.41/services/{service}/update?version={version}&rollback=previous"),
        &current["Spec"].to_string(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// The tasks of `service` meant to run and running, by ID.
fn running_tasks(node: &Node, service: &str) -> BTreeSet<String> {
    tasks(node, service)
        .iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .map(id)
        .collect()
}

/// Every container of the service (`com.docker.swarm.service.id`) on every engine, in any
/// state, with the node it is on.
fn containers(cluster: &Cluster, service_id: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for node in &cluster.nodes {
        for c in node.engine().containers() {
            if c["labels"]["com.docker.swarm.service.id"] == service_id {
                out.push((node.name.clone(), c));
            }
        }
    }
    out
}

/// Running containers of the service: (old image, new image, any other).
fn mix(cluster: &Cluster, service_id: &str, images: &Images) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for (_, c) in containers(cluster, service_id) {
        if c["state"] != "running" {
            continue;
        }
        match c["image_digest"].as_str() {
            Some(d) if d == images.old_digest => counts.0 += 1,
            Some(d) if d == images.new_digest => counts.1 += 1,
            _ => counts.2 += 1,
        }
    }
    counts
}

/// The service's tasks (slot, node, desired and observed state, error) and the nodes' lines
/// about nodes going down, for a failure's message.
fn diag(cluster: &Cluster, service: &str) -> String {
    let h1 = cluster.node("h1");
    let mut out = String::new();
    for t in tasks(h1, service) {
        out += &format!(
            "task {} slot {} node {} desired {} state {} image {} err {}\n",
            id(&t),
            t["Slot"],
            t["NodeID"],
            t["DesiredState"],
            t["Status"]["State"],
            t["Spec"]["ContainerSpec"]["Image"],
            t["Status"]["Err"]
        );
    }
    for node in &cluster.nodes {
        for line in node.log_text().lines().filter(|l| l.contains("down")) {
            out += &format!("{}: {line}\n", node.name);
        }
    }
    out
}

/// One observation of an update: when, the running containers' mix, `UpdateStatus.State`.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    old: usize,
    new: usize,
    other: usize,
    state: String,
}

/// Polls the mix and the update state until `done` holds for one; every observation.
fn watch(
    cluster: &Cluster,
    service_id: &str,
    images: &Images,
    done: impl Fn(&Seen) -> bool,
) -> Vec<Seen> {
    let h1 = cluster.node("h1");
    let deadline = Instant::now() + LONG;
    let mut seen = Vec::new();
    loop {
        let state = update_state(h1, service_id);
        let (old, new, other) = mix(cluster, service_id, images);
        let s = Seen {
            at: Instant::now(),
            old,
            new,
            other,
            state,
        };
        let finished = done(&s);
        seen.push(s);
        if finished {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "the update did not finish: {:?}\n{}",
            compact(&seen),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The observations with consecutive repeats of (old, new, other, state) folded.
fn compact(seen: &[Seen]) -> Vec<(usize, usize, usize, String)> {
    let mut out: Vec<(usize, usize, usize, String)> = Vec::new();
    for s in seen {
        let key = (s.old, s.new, s.other, s.state.clone());
        if out.last() != Some(&key) {
            out.push(key);
        }
    }
    out
}

/// The successive (old, new) mixes in which every one of `replicas` slots ran a container.
fn full_mixes(seen: &[Seen], replicas: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for s in seen.iter().filter(|s| s.old + s.new == replicas) {
        if out.last() != Some(&(s.old, s.new)) {
            out.push((s.old, s.new));
        }
    }
    out
}

/// How long (first to last observation) the running containers were at (old, new).
fn held(seen: &[Seen], old: usize, new: usize) -> Duration {
    let at: Vec<Instant> = seen
        .iter()
        .filter(|s| s.old == old && s.new == new)
        .map(|s| s.at)
        .collect();
    match (at.first(), at.last()) {
        (Some(a), Some(b)) => *b - *a,
        _ => Duration::ZERO,
    }
}

/// The successive `UpdateStatus.State` values seen, repeats folded, the empty one left out.
fn states(seen: &[Seen]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in seen.iter().filter(|s| !s.state.is_empty()) {
        if out.last() != Some(&s.state) {
            out.push(s.state.clone());
        }
    }
    out
}

/// S19: the image mix of the running containers during an update and its rollback.
fn rolling_update_and_rollback(cluster: &Cluster, images: &Images) {
    let h1 = cluster.node("h1");
    // SIGTERM ignored: each stop takes the whole 1 s grace period, so a replacement started
    // before its predecessor stopped would show as a sixth container.
    let mut svc = spec("roll", &images.old, 5, "trap '' TERM; exec sleep 3600");
    svc["UpdateConfig"] = json!({"Parallelism": 2, "Delay": 2 * SECOND,
        "FailureAction": "continue", "Monitor": SECOND / 2, "Order": "stop-first"});
    svc["RollbackConfig"] = json!({"Parallelism": 3, "Delay": 2 * SECOND,
        "FailureAction": "continue", "Monitor": SECOND / 2, "Order": "stop-first"});
    let sid = create(h1, &svc);
    cluster.wait(LONG, "roll: 5 old containers", || {
        (mix(cluster, &sid, images) == (5, 0, 0) && running_tasks(h1, &sid).len() == 5)
            .then_some(())
    });

    update(h1, &sid, |s| {
        s["TaskTemplate"]["ContainerSpec"]["Image"] = json!(images.new);
    });
    let seen = watch(cluster, &sid, images, |s| {
        s.state == "completed" && (s.old, s.new, s.other) == (0, 5, 0)
    });
    let trace = compact(&seen);
    eprintln!("roll: {trace:?}");
    // Stop-first: never more containers than replicas, never another image.
    assert!(
        seen.iter().all(|s| s.old + s.new <= 5 && s.other == 0),
        "{trace:?}\n{}",
        diag(cluster, &sid)
    );
    assert_eq!(
        full_mixes(&seen, 5),
        [(5, 0), (3, 2), (1, 4), (0, 5)],
        "{trace:?}\n{}",
        diag(cluster, &sid)
    );
    // The delay holds each batch's outcome before the next batch stops anything.
    for (old, new) in [(3, 2), (1, 4)] {
        let d = held(&seen, old, new);
        assert!(
            d >= Duration::from_millis(1500),
            "{{old {old}, new {new}}} held {d:?}: {trace:?}"
        );
    }
    assert_eq!(states(&seen), ["updating", "completed"], "{trace:?}");
    assert_eq!(running_tasks(h1, &sid).len(), 5);
    // What the new containers run is the second image's (MARK=2 in its environment).
    let (host, c) = containers(cluster, &sid)
        .into_iter()
        .find(|(_, c)| c["state"] == "running")
        .expect("a running container");
    let name = c["name"].as_str().expect("a name");
    assert_eq!(
        cluster
            .node(&host)
            .engine()
            .exec(name, &["/bin/sh", "-c", "echo $MARK"]),
        (0, "2\n".to_string())
    );

    // Rollback, 3 at a time.
    rollback(h1, &sid);
    let seen = watch(cluster, &sid, images, |s| {
        s.state == "rollback_completed" && (s.old, s.new, s.other) == (5, 0, 0)
    });
    let trace = compact(&seen);
    eprintln!("roll: {trace:?}");
    assert!(
        seen.iter().all(|s| s.old + s.new <= 5 && s.other == 0),
        "{trace:?}\n{}",
        diag(cluster, &sid)
    );
    assert_eq!(
        full_mixes(&seen, 5),
        [(0, 5), (3, 2), (5, 0)],
        "{trace:?}\n{}",
        diag(cluster, &sid)
    );
    let d = held(&seen, 3, 2);
    assert!(d >= Duration::from_millis(1500), "held {d:?}: {trace:?}");
    assert_eq!(
        states(&seen),
        ["rollback_started", "rollback_completed"],
        "{trace:?}"
    );
    let s = h1.api("GET", &format!("/v1.41/services/{sid}"), "").json();
    assert_eq!(
        s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        images.old.as_str()
    );
    assert_eq!(running_tasks(h1, &sid).len(), 5);
}

/// S21: a failing update pauses after exactly 2 slots changed; a rollback restores 5.
fn failed_update_pauses(cluster: &Cluster, images: &Images) {
    let h1 = cluster.node("h1");
    let mut svc = spec("bad", &images.old, 5, "exec sleep 3600");
    svc["UpdateConfig"] = json!({"Parallelism": 1, "FailureAction": "pause",
        "MaxFailureRatio": 0.25, "Monitor": 2 * SECOND, "Order": "stop-first"});
    svc["RollbackConfig"] = json!({"Parallelism": 0, "FailureAction": "pause",
        "Monitor": SECOND / 2});
    let sid = create(h1, &svc);
    cluster.wait(LONG, "bad: 5 old containers", || {
        (mix(cluster, &sid, images) == (5, 0, 0) && running_tasks(h1, &sid).len() == 5)
            .then_some(())
    });
    let missing = images.old.replace(":1", ":no-such-tag");
    update(h1, &sid, |s| {
        s["TaskTemplate"]["ContainerSpec"]["Image"] = json!(missing);
    });
    let service = cluster.wait(LONG, "bad: the update paused", || {
        let s = h1.api("GET", &format!("/v1.41/services/{sid}"), "").json();
        (s["UpdateStatus"]["State"] == "paused").then_some(s)
    });
    let message = service["UpdateStatus"]["Message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("update paused due to failure or early termination of task"),
        "{service}"
    );
    // Slots that got a task of the missing image, and what the engines run.
    let changed = |node: &Node| -> BTreeSet<u64> {
        tasks(node, &sid)
            .iter()
            .filter(|t| t["Spec"]["ContainerSpec"]["Image"] == missing.as_str())
            .filter_map(|t| t["Slot"].as_u64())
            .collect()
    };
    let slots = changed(h1);
    assert_eq!(
        slots.len(),
        2,
        "exactly 2 slots changed: {slots:?}\n{}",
        diag(cluster, &sid)
    );
    assert_eq!(mix(cluster, &sid, images), (3, 0, 0));
    let old_running: BTreeSet<u64> = tasks(h1, &sid)
        .iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .filter_map(|t| t["Slot"].as_u64())
        .collect();
    assert_eq!(old_running.len(), 3);
    assert!(old_running.is_disjoint(&slots));
    // Paused: nothing more changes.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(changed(h1), slots, "a paused update changes nothing more");
    assert_eq!(mix(cluster, &sid, images), (3, 0, 0));
    assert_eq!(update_state(h1, &sid), "paused");
    // The tasks of the missing image that ended were refused by the engines (the pull found
    // no such tag); the restart supervisor keeps trying in those two slots.
    let ended: Vec<Value> = tasks(h1, &sid)
        .into_iter()
        .filter(|t| {
            t["Spec"]["ContainerSpec"]["Image"] == missing.as_str()
                && t["DesiredState"] == "shutdown"
        })
        .collect();
    assert!(ended.len() >= 2, "{ended:#?}");
    for t in &ended {
        assert_eq!(t["Status"]["State"], "rejected", "{t:#?}");
        let err = t["Status"]["Err"].as_str().unwrap_or("");
        assert!(err.contains("manifest unknown"), "{t:#?}");
    }

    rollback(h1, &sid);
    cluster.wait(LONG, "bad: rolled back to 5 old containers", || {
        (update_state(h1, &sid) == "rollback_completed"
            && mix(cluster, &sid, images) == (5, 0, 0)
            && running_tasks(h1, &sid).len() == 5)
            .then_some(())
    });
    // The three slots that never changed kept their containers' tasks.
    let now: BTreeSet<u64> = tasks(h1, &sid)
        .iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .filter_map(|t| t["Slot"].as_u64())
        .collect();
    assert_eq!(now, (1..=5).collect());
}

#[test]
fn updates_roll_two_at_a_time_roll_back_three_at_a_time_and_a_failing_update_pauses() {
    let registry = Registry::start();
    let (cluster, images) = three_nodes(&registry);
    std::thread::scope(|s| {
        let roll = s.spawn(|| rolling_update_and_rollback(&cluster, &images));
        let bad = s.spawn(|| failed_update_pauses(&cluster, &images));
        let results = [roll.join(), bad.join()];
        for r in results {
            if let Err(e) = r {
                std::panic::resume_unwind(e);
            }
        }
    });
}

/// The service's containers, by task ID: (host, container).
fn containers_by_task(cluster: &Cluster, service_id: &str) -> BTreeMap<String, (String, Value)> {
    containers(cluster, service_id)
        .into_iter()
        .filter_map(|(host, c)| {
            let task = c["labels"]["com.docker.swarm.task.id"]
                .as_str()?
                .to_string();
            Some((task, (host, c)))
        })
        .collect()
}

/// S20: start-first held back by a failing health check, one batch at a time.
fn start_first_waits_for_health(cluster: &Cluster, images: &Images) {
    let h1 = cluster.node("h1");
    let mut svc = spec("sf", &images.old, 5, "exec sleep 3600");
    svc["UpdateConfig"] = json!({"Parallelism": 2, "Order": "start-first",
        "FailureAction": "pause", "Monitor": SECOND / 2});
    let sid = create(h1, &svc);
    cluster.wait(LONG, "sf: 5 old containers", || {
        (mix(cluster, &sid, images) == (5, 0, 0) && running_tasks(h1, &sid).len() == 5)
            .then_some(())
    });
    let old = running_tasks(h1, &sid);
    update(h1, &sid, |s| {
        let c = &mut s["TaskTemplate"]["ContainerSpec"];
        c["Image"] = json!(images.new);
        c["Healthcheck"] = json!({
            "Test": ["CMD", "/bin/test", "-f", "/tmp/healthy"],
            "Interval": SECOND / 2, "Timeout": 2 * SECOND, "Retries": 3,
            "StartPeriod": 300 * SECOND,
        });
    });
    let mut made_healthy: BTreeSet<String> = BTreeSet::new();
    // Each batch: `starting` new containers appear next to the old still running; they stay
    // so; once made healthy, exactly the next batch starts.
    for (batch, old_left) in [(2usize, 5usize), (2, 3), (1, 1)] {
        let new_total = made_healthy.len() + batch;
        let what = format!("sf: {batch} new starting next to {old_left} old");
        let starting = cluster.wait(LONG, &what, || {
            let by_task = containers_by_task(cluster, &sid);
            let starting: Vec<(String, String, String)> = by_task
                .iter()
                .filter(|(_, (_, c))| c["state"] == "running" && c["health"] == "starting")
                .map(|(t, (host, c))| {
                    (
                        t.clone(),
                        host.clone(),
                        c["name"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            let fine =
                (mix(cluster, &sid, images) == (old_left, new_total, 0)) && starting.len() == batch;
            fine.then_some(starting)
        });
        // They stay starting and the old ones keep running, tasks and containers.
        std::thread::sleep(Duration::from_secs(2));
        let all = tasks(h1, &sid);
        let trace: Vec<(String, Value, Value)> = all
            .iter()
            .map(|t| {
                (
                    id(t),
                    t["DesiredState"].clone(),
                    t["Status"]["State"].clone(),
                )
            })
            .collect();
        assert_eq!(
            mix(cluster, &sid, images),
            (old_left, new_total, 0),
            "{trace:?}"
        );
        for (task, _, _) in &starting {
            let t = all.iter().find(|t| id(t) == *task).expect("its task");
            assert_eq!(t["Status"]["State"], "starting", "{trace:?}");
        }
        let old_running: BTreeSet<String> = running_tasks(h1, &sid)
            .into_iter()
            .filter(|t| old.contains(t))
            .collect();
        assert_eq!(old_running.len(), old_left, "{trace:?}");
        assert_eq!(update_state(h1, &sid), "updating");
        let by_task = containers_by_task(cluster, &sid);
        let new_healthy = by_task
            .values()
            .filter(|(_, c)| c["state"] == "running" && c["health"] == "healthy")
            .count();
        assert_eq!(new_healthy, made_healthy.len(), "{trace:?}");
        // Healthy now.
        for (task, host, name) in &starting {
            let (code, out) = cluster
                .node(host)
                .engine()
                .exec(name, &["/bin/touch", "/tmp/healthy"]);
            assert_eq!(code, 0, "{out}");
            made_healthy.insert(task.clone());
        }
    }
    cluster.wait(LONG, "sf: 5 new healthy, the update completed", || {
        let by_task = containers_by_task(cluster, &sid);
        let healthy = by_task
            .values()
            .filter(|(_, c)| c["state"] == "running" && c["health"] == "healthy")
            .count();
        (healthy == 5
            && mix(cluster, &sid, images) == (0, 5, 0)
            && update_state(h1, &sid) == "completed")
            .then_some(())
    });
    assert_eq!(running_tasks(h1, &sid), made_healthy);
}

/// The host's uptime in seconds, as a container reads it (`/proc/uptime` is not namespaced).
fn uptimes(file: &Path) -> Vec<f64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// S22: restart policies on real containers that exit.
fn restart_policies(cluster: &Cluster, images: &Images, shared: &Path) {
    let h1 = cluster.node("h1");
    let delay = Duration::from_millis(1500);
    let service = |name: &str, code: u8, policy: Value| {
        let mut s = spec(
            name,
            &images.old,
            1,
            &format!("cat /proc/uptime >> /shared/{name}; exit {code}"),
        );
        s["TaskTemplate"]["ContainerSpec"]["Mounts"] =
            json!([{"Type": "bind", "Source": shared.display().to_string(), "Target": "/shared"}]);
        s["TaskTemplate"]["RestartPolicy"] = policy;
        create(h1, &s)
    };
    let nanos = delay.as_nanos() as i64;
    let onfail = service(
        "onfail",
        1,
        json!({"Condition": "on-failure", "Delay": nanos, "MaxAttempts": 3}),
    );
    let none = service("none", 1, json!({"Condition": "none", "Delay": SECOND / 2}));
    let done = service(
        "done",
        0,
        json!({"Condition": "on-failure", "Delay": SECOND / 2}),
    );
    // One attempt per 1 s window: the count never reaches the maximum, attempts go on.
    let windowed = service(
        "windowed",
        1,
        json!({"Condition": "on-failure", "Delay": nanos, "MaxAttempts": 1,
            "Window": SECOND}),
    );

    let four = cluster.wait(LONG, "onfail: 4 failed tasks", || {
        let t = tasks(h1, &onfail);
        (t.len() == 4 && t.iter().all(|t| t["Status"]["State"] == "failed")).then_some(t)
    });
    // Past another delay and a report: no fifth attempt.
    std::thread::sleep(delay + Duration::from_secs(2));
    let t = tasks(h1, &onfail);
    assert_eq!(t.len(), 4, "exactly 3 restarts: {t:#?}");
    assert_eq!(
        t.iter().map(id).collect::<BTreeSet<_>>(),
        four.iter().map(id).collect::<BTreeSet<_>>()
    );
    for task in &t {
        assert_eq!(task["Status"]["ContainerStatus"]["ExitCode"], 1, "{task}");
        assert_eq!(task["DesiredState"], "shutdown", "{task}");
    }
    let starts = uptimes(&shared.join("onfail"));
    assert_eq!(starts.len(), 4, "4 containers ran: {starts:?}");
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= delay.as_secs_f64(),
            "attempts {:.2} s apart, less than the delay: {starts:?}",
            pair[1] - pair[0]
        );
    }
    assert!(
        containers(cluster, &onfail)
            .iter()
            .all(|(_, c)| c["state"] != "running")
    );

    // Condition none: one failed task, one container, never restarted.
    let t = tasks(h1, &none);
    assert_eq!(t.len(), 1, "{t:#?}");
    assert_eq!(t[0]["Status"]["State"], "failed", "{t:#?}");
    assert_eq!(t[0]["Status"]["ContainerStatus"]["ExitCode"], 1);
    assert_eq!(uptimes(&shared.join("none")).len(), 1);

    // Exit 0 under on-failure: complete, not restarted.
    let t = tasks(h1, &done);
    assert_eq!(t.len(), 1, "{t:#?}");
    assert_eq!(t[0]["Status"]["State"], "complete", "{t:#?}");
    assert_eq!(t[0]["DesiredState"], "shutdown", "{t:#?}");
    assert_eq!(uptimes(&shared.join("done")).len(), 1);

    // Max attempts 1 within a 1 s window, attempts 1.5 s apart: more than 2 ran.
    let windowed_starts = uptimes(&shared.join("windowed"));
    assert!(
        windowed_starts.len() > 2,
        "the window lets attempts go on: {windowed_starts:?}"
    );
    for pair in windowed_starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= delay.as_secs_f64(),
            "{windowed_starts:?}"
        );
    }
    for name in [&onfail, &none, &done, &windowed] {
        assert_eq!(
            h1.api("DELETE", &format!("/v1.41/services/{name}"), "")
                .status,
            200
        );
    }
}

#[test]
fn start_first_waits_for_health_and_restart_policies_count_and_wait() {
    let registry = Registry::start();
    let (cluster, images) = three_nodes(&registry);
    let shared: PathBuf = cluster.dir.path().join("shared");
    std::fs::create_dir_all(&shared).expect("shared dir");
    std::thread::scope(|s| {
        let sf = s.spawn(|| start_first_waits_for_health(&cluster, &images));
        let restarts = s.spawn(|| restart_policies(&cluster, &images, &shared));
        let results = [sf.join(), restarts.join()];
        for r in results {
            if let Err(e) = r {
                std::panic::resume_unwind(e);
            }
        }
    });
}
