//! Placement on agents with real engines and real containers (swarm.md §6): each node is a
//! network namespace holding its agent (`--executor engine`) and its own `slipway-engine
//! daemon`; every placement is checked on the engines themselves (which node runs which task's
//! container), not only in the manager's task list.
//! S17 (a global service follows joining nodes), S18 (drain, reactivate, pause; `--availability
//! drain` at join and at init), S24 (label and role constraints, a service no node fits stays
//! pending with Docker's reason until a label appears), S26 (spread over a label's values) and
//! S27 (a reservation no node has; `--replicas-max-per-node`).
//! One cluster per test, many services at once on it. Needs root, Debian's busybox-static,
//! docker-registry and docker CLI.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::engine::{Registry, push_busybox_image};
use common::services::{create, hosts, tasks, update};
use common::{Cluster, Node};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

/// `docker swarm init` on h1 with more flags. The heartbeat is 2 s, not the harness's 500 ms: a
/// node is marked down after 3 missed periods, and on a loaded machine (a dozen debug daemons
/// on two cores) 1.5 s without a heartbeat happens; nothing here waits for a node to go down.
fn init(cluster: &Cluster, flags: &[&str]) {
    let h1 = cluster.node("h1");
    let mut args = vec![
        "swarm",
        "init",
        "--advertise-addr",
        &h1.ip,
        "--dispatcher-heartbeat",
        "2s",
    ];
    args.extend(flags);
    h1.docker_ok(&args);
}

/// Task ID -> (hostname, container name, PID).
type Containers = BTreeMap<String, (String, String, i64)>;

/// A cluster of `n` nodes with engines (none in the swarm yet), the image pushed, and the
/// image's reference as the nodes name it.
fn nodes_with_engines(registry: &Registry, n: usize) -> (Cluster, String) {
    push_busybox_image(&format!("{}/slipway/busybox:1", registry.local()));
    let cluster = Cluster::with_engines(n, registry.port);
    let image = format!("{}/slipway/busybox:1", cluster.registry(registry.port));
    (cluster, image)
}

/// `docker swarm join` as a worker with more flags (e.g. `--availability drain`).
fn join_with(cluster: &Cluster, name: &str, flags: &[&str]) {
    let h1 = cluster.node("h1");
    let token = h1
        .docker_ok(&["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_string();
    let node = cluster.node(name);
    let mut args = vec![
        "swarm",
        "join",
        "--token",
        &token,
        "--advertise-addr",
        &node.ip,
    ];
    args.extend(flags);
    let manager = h1.addr();
    args.push(&manager);
    node.docker_ok(&args);
}

fn ready_nodes(cluster: &Cluster, n: usize) {
    let h1 = cluster.node("h1");
    cluster.wait(LONG, &format!("{n} ready nodes"), || {
        let nodes = h1.node_ls().ok()?;
        (nodes.len() == n && nodes.iter().all(|node| node["Status"] == "Ready")).then_some(())
    });
}

fn availability(node: &Node, of: &str) -> Value {
    let spec: Value = serde_json::from_str(&node.docker_ok(&[
        "node",
        "inspect",
        of,
        "--format",
        "{{json .Spec}}",
    ]))
    .expect("JSON");
    spec["Availability"].clone()
}

fn spec(name: &str, image: &str, replicas: u64) -> Value {
    json!({
        "Name": name,
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": image,
                "Args": ["/bin/sh", "-c", "exec sleep 3600"],
                "StopGracePeriod": 1_000_000_000i64,
            },
            "RestartPolicy": {"Condition": "any", "Delay": 300_000_000i64},
        },
        "Mode": {"Replicated": {"Replicas": replicas}},
    })
}

fn id(t: &Value) -> String {
    t["ID"].as_str().unwrap_or("").to_string()
}

/// Every engine's running task containers.
fn containers(cluster: &Cluster) -> Containers {
    let mut out = BTreeMap::new();
    for node in &cluster.nodes {
        for (task, (name, pid)) in node.engine().running() {
            out.insert(task, (node.name.clone(), name, pid));
        }
    }
    out
}

/// Waits until `n` tasks of `service` run, each in a running container on the node the
/// manager placed it on, and no other container of the service runs on any engine; returns
/// the containers.
fn converged(cluster: &Cluster, service: &str, n: usize) -> Containers {
    let h1 = cluster.node("h1");
    cluster.wait(
        LONG,
        &format!("{n} running containers of {service}"),
        || {
            let hosts = hosts(h1);
            let all_tasks = tasks(h1, service);
            let running: Vec<&Value> = all_tasks
                .iter()
                .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
                .collect();
            if running.len() != n {
                return None;
            }
            let all = containers(cluster);
            let mut mine = BTreeMap::new();
            for t in running {
                let (host, name, pid) = all.get(&id(t))?;
                if hosts.get(t["NodeID"].as_str()?) != Some(host) {
                    return None;
                }
                mine.insert(id(t), (host.clone(), name.clone(), *pid));
            }
            let ids: BTreeSet<String> = all_tasks.iter().map(id).collect();
            let service_containers = all.keys().filter(|t| ids.contains(*t)).count();
            (service_containers == n).then_some(mine)
        },
    )
}

/// The service's tasks, one line each (node, slot, desired and observed state, error), and the
/// manager's log: what a failed placement assertion shows.
fn story(cluster: &Cluster, service: &str) -> String {
    let h1 = cluster.node("h1");
    let hosts = hosts(h1);
    let mut lines: Vec<String> = tasks(h1, service)
        .iter()
        .map(|t| {
            format!(
                "{} slot {} on {:?}: desired {} state {} at {} ({}) err {:?}",
                id(t),
                t["Slot"],
                hosts.get(t["NodeID"].as_str().unwrap_or("")),
                t["DesiredState"],
                t["Status"]["State"],
                t["Status"]["Timestamp"],
                t["Status"]["Message"],
                t["Status"]["Err"],
            )
        })
        .collect();
    lines.sort();
    for n in h1
        .api("GET", "/v1.41/nodes", "")
        .json()
        .as_array()
        .into_iter()
        .flatten()
    {
        lines.push(format!(
            "node {}: {} {}",
            n["Description"]["Hostname"], n["Status"]["State"], n["Spec"]["Availability"]
        ));
    }
    format!("{}\n{}", lines.join("\n"), cluster.logs())
}

fn per_host(containers: &Containers) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (host, _, _) in containers.values() {
        *out.entry(host.clone()).or_default() += 1;
    }
    out
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(h, n)| (h.to_string(), *n)).collect()
}

/// The containers of `containers` on `host`.
fn on(containers: &Containers, host: &str) -> Containers {
    containers
        .iter()
        .filter(|(_, c)| c.0 == host)
        .map(|(t, c)| (t.clone(), c.clone()))
        .collect()
}

fn scale(node: &Node, service: &str, replicas: u64) {
    update(node, service, |s| {
        s["Mode"]["Replicated"]["Replicas"] = json!(replicas)
    });
}

#[test]
fn global_follows_joining_nodes_drain_empties_pause_keeps_and_join_drain_holds() {
    let registry = Registry::start();
    let (cluster, image) = nodes_with_engines(&registry, 6);
    init(&cluster, &[]);
    cluster.join("h2", "worker");
    cluster.join("h3", "worker");
    ready_nodes(&cluster, 3);
    let h1 = cluster.node("h1");

    // S17: a global service, one container per node; two nodes join, one container each.
    let mut global = spec("g", &image, 0);
    global["Mode"] = json!({"Global": {}});
    create(h1, &global);
    let three = converged(&cluster, "g", 3);
    assert_eq!(per_host(&three), counts(&[("h1", 1), ("h2", 1), ("h3", 1)]));
    cluster.join("h4", "worker");
    cluster.join("h5", "worker");
    let five = converged(&cluster, "g", 5);
    assert_eq!(
        per_host(&five),
        counts(&[("h1", 1), ("h2", 1), ("h3", 1), ("h4", 1), ("h5", 1)]),
        "{}",
        story(&cluster, "g")
    );
    for (task, container) in &three {
        assert_eq!(five.get(task), Some(container), "a join changed {task}");
    }

    // S18: `swarm join --availability drain` (the CLI sends `"Availability":"drain"`): the node
    // is in the swarm, ready, and gets no task, neither global nor replicated.
    join_with(&cluster, "h6", &["--availability", "drain"]);
    ready_nodes(&cluster, 6);
    assert_eq!(availability(h1, "h6"), "drain");
    create(h1, &spec("web", &image, 10));
    let web = converged(&cluster, "web", 10);
    assert_eq!(
        per_host(&web),
        counts(&[("h1", 2), ("h2", 2), ("h3", 2), ("h4", 2), ("h5", 2)]),
        "{}",
        story(&cluster, "web")
    );
    assert_eq!(converged(&cluster, "g", 5), five, "nothing of g on h6");
    assert!(cluster.node("h6").engine().containers().is_empty());

    // S18: draining h5 moves its replicas and stops its global task; the rest stay as they are.
    h1.docker_ok(&["node", "update", "--availability", "drain", "h5"]);
    let drained = cluster.wait(LONG, "web off the drained h5", || {
        let now = converged(&cluster, "web", 10);
        (!per_host(&now).contains_key("h5")).then_some(now)
    });
    let g4 = converged(&cluster, "g", 4);
    assert!(!per_host(&g4).contains_key("h5"), "{g4:?}");
    assert!(
        cluster.node("h5").engine().running().is_empty(),
        "h5 still runs {:?}",
        cluster.node("h5").engine().running()
    );
    for (task, container) in &web {
        if container.0 != "h5" {
            assert_eq!(drained.get(task), Some(container), "drain changed {task}");
        }
    }
    let moved: Vec<_> = drained.keys().filter(|t| !web.contains_key(*t)).collect();
    assert_eq!(moved.len(), 2, "{drained:?}");

    // Reactivated (h5, and h6 that joined drained) and scaled 10 -> 14: the emptiest nodes get
    // the new replicas, the global service a task on each again, and nothing else moves.
    h1.docker_ok(&["node", "update", "--availability", "active", "h5"]);
    h1.docker_ok(&["node", "update", "--availability", "active", "h6"]);
    scale(h1, "web", 14);
    let fourteen = converged(&cluster, "web", 14);
    let spread = per_host(&fourteen);
    assert_eq!(
        (spread.get("h5"), spread.get("h6")),
        (Some(&2), Some(&2)),
        "{spread:?}\n{}",
        story(&cluster, "web")
    );
    for (task, container) in &drained {
        assert_eq!(
            fourteen.get(task),
            Some(container),
            "scaling changed {task}"
        );
    }
    let g6 = converged(&cluster, "g", 6);
    assert_eq!(per_host(&g6).values().copied().collect::<Vec<_>>(), [1; 6]);

    // S18: pausing h4 keeps its containers; scaled 14 -> 18, the new replicas go elsewhere.
    let h4_before = on(&containers(&cluster), "h4");
    assert_eq!(h4_before.len(), on(&fourteen, "h4").len() + 1, "web and g");
    h1.docker_ok(&["node", "update", "--availability", "pause", "h4"]);
    scale(h1, "web", 18);
    let eighteen = converged(&cluster, "web", 18);
    let new: Vec<_> = eighteen
        .iter()
        .filter(|(t, _)| !fourteen.contains_key(*t))
        .collect();
    assert_eq!(new.len(), 4, "{eighteen:?}");
    assert!(
        new.iter().all(|(_, c)| c.0 != "h4"),
        "{new:?}\n{}",
        story(&cluster, "web")
    );
    assert_eq!(converged(&cluster, "g", 6), g6);
    assert_eq!(
        on(&containers(&cluster), "h4"),
        h4_before,
        "pause kept h4's containers"
    );
}

/// `docker service create --detach` with `flags`, a busybox sleeping.
fn docker_create(node: &Node, name: &str, image: &str, flags: &[&str]) {
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--name",
        name,
        "--restart-delay",
        "300ms",
        "--stop-grace-period",
        "1s",
    ];
    args.extend(flags);
    args.extend([image, "/bin/sh", "-c", "exec sleep 3600"]);
    node.docker_ok(&args);
}

/// Waits until `service` has `n` tasks pending with `err`, on no node and with no container
/// on any engine; their IDs.
fn pending(cluster: &Cluster, service: &str, n: usize, err: &str) -> BTreeSet<String> {
    let h1 = cluster.node("h1");
    let ids = cluster.wait(LONG, &format!("{n} tasks of {service} pending"), || {
        let waiting: BTreeSet<String> = tasks(h1, service)
            .iter()
            .filter(|t| {
                t["DesiredState"] == "running"
                    && t["Status"]["State"] == "pending"
                    && t["Status"]["Err"] == err
                    && t["NodeID"].as_str().unwrap_or("").is_empty()
            })
            .map(id)
            .collect();
        (waiting.len() == n).then_some(waiting)
    });
    let all = containers(cluster);
    for task in &ids {
        assert!(!all.contains_key(task), "pending {task} has a container");
    }
    // Docker's CLI shows the reason in full.
    let ps = h1.docker_ok(&["service", "ps", "--no-trunc", service]);
    assert!(
        ps.lines().filter(|l| l.contains(err)).count() >= n,
        "docker service ps {service}:\n{ps}"
    );
    ids
}

#[test]
fn constraints_preferences_and_limits_place_real_containers_and_unfit_tasks_wait() {
    let registry = Registry::start();
    let (cluster, image) = nodes_with_engines(&registry, 3);
    let h1 = cluster.node("h1");

    // S18: `swarm init --availability drain`: the manager takes no task.
    init(&cluster, &["--availability", "drain"]);
    cluster.join("h2", "worker");
    cluster.join("h3", "worker");
    ready_nodes(&cluster, 3);
    assert_eq!(availability(h1, "self"), "drain");
    create(h1, &spec("early", &image, 4));
    assert_eq!(
        per_host(&converged(&cluster, "early", 4)),
        counts(&[("h2", 2), ("h3", 2)]),
        "{}",
        story(&cluster, "early")
    );
    h1.docker_ok(&["node", "update", "--availability", "active", "h1"]);

    for (node, labels) in [
        ("h1", &["rack=a"][..]),
        ("h2", &["rack=b", "security=high"]),
        ("h3", &["rack=b"]),
    ] {
        let mut args = vec!["node", "update"];
        for label in labels {
            args.extend(["--label-add", label]);
        }
        args.push(node);
        h1.docker_ok(&args);
    }

    // Everything at once, through Docker's CLI flags.
    let services: [(&str, &[&str]); 8] = [
        // S24
        (
            "high",
            &[
                "--replicas",
                "2",
                "--constraint",
                "node.labels.security==high",
            ],
        ),
        (
            "nothigh",
            &[
                "--replicas",
                "4",
                "--constraint",
                "node.labels.security!=high",
            ],
        ),
        (
            "medium",
            &[
                "--replicas",
                "2",
                "--constraint",
                "node.labels.security==medium",
            ],
        ),
        (
            "multi",
            &[
                "--replicas",
                "2",
                "--constraint",
                "node.labels.security!=high",
                "--constraint",
                "node.role==worker",
            ],
        ),
        (
            "mgr",
            &["--replicas", "2", "--constraint", "node.role==manager"],
        ),
        // S26
        (
            "racked",
            &[
                "--replicas",
                "4",
                "--placement-pref",
                "spread=node.labels.rack",
            ],
        ),
        // S27: a petabyte reserved; one replica per node at most.
        ("huge", &["--replicas", "1", "--reserve-memory", "1p"]),
        (
            "capped",
            &["--replicas", "5", "--replicas-max-per-node", "1"],
        ),
    ];
    for (name, flags) in services {
        docker_create(h1, name, &image, flags);
    }
    let expected = [
        ("high", counts(&[("h2", 2)])),
        ("nothigh", counts(&[("h1", 2), ("h3", 2)])),
        ("multi", counts(&[("h3", 2)])),
        ("mgr", counts(&[("h1", 2)])),
        ("racked", counts(&[("h1", 2), ("h2", 1), ("h3", 1)])),
        ("capped", counts(&[("h1", 1), ("h2", 1), ("h3", 1)])),
    ];
    let mut first = BTreeMap::new();
    for (name, placement) in &expected {
        let now = converged(&cluster, name, placement.values().sum());
        assert_eq!(per_host(&now), *placement, "{}", story(&cluster, name));
        first.insert(*name, now);
    }
    let medium = pending(
        &cluster,
        "medium",
        2,
        "no suitable node (scheduling constraints not satisfied on 3 nodes)",
    );
    pending(
        &cluster,
        "huge",
        1,
        "no suitable node (insufficient resources on 3 nodes)",
    );
    pending(
        &cluster,
        "capped",
        2,
        "no suitable node (max replicas per node limit exceed)",
    );

    // S24: the label appears on h3: the pending tasks themselves run there.
    h1.docker_ok(&["node", "update", "--label-add", "security=medium", "h3"]);
    let placed = converged(&cluster, "medium", 2);
    assert_eq!(
        per_host(&placed),
        counts(&[("h3", 2)]),
        "{}",
        story(&cluster, "medium")
    );
    assert_eq!(placed.keys().cloned().collect::<BTreeSet<_>>(), medium);
    // Nothing else moved, and the capped service still waits.
    for (name, placement) in &expected {
        let now = converged(&cluster, name, placement.values().sum());
        assert_eq!(now, first[name], "{name} changed");
    }
    assert_eq!(
        tasks(h1, "capped")
            .iter()
            .filter(|t| t["Status"]["State"] == "pending")
            .count(),
        2
    );
}
