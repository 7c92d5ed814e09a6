//! Swarm agents as separate processes, each in its own network namespace on a bridge, driven by
//! Docker's own CLI (Debian's docker.io) and raw HTTP on their sockets. Run as root (namespaces).

mod common;

use std::time::Duration;

use common::{Cluster, raw, wait_for};
use serde_json::Value;

fn by_host<'a>(nodes: &'a [Value], host: &str) -> &'a Value {
    nodes
        .iter()
        .find(|n| n["Hostname"] == host)
        .unwrap_or_else(|| panic!("no node {host} in {nodes:?}"))
}

fn leader_of(nodes: &[Value]) -> Option<String> {
    nodes
        .iter()
        .find(|n| n["ManagerStatus"] == "Leader")
        .and_then(|n| n["Hostname"].as_str())
        .map(str::to_string)
}

#[test]
fn api_answers_before_init_and_hostile_requests_get_dockers_errors() {
    let cluster = Cluster::new(1);
    let h1 = cluster.node("h1");

    let ping = h1.api("GET", "/_ping", "");
    assert_eq!((ping.status, ping.body.as_str()), (200, "OK"));
    assert!(
        ping.headers
            .to_ascii_lowercase()
            .contains("api-version: 1.41"),
        "{}",
        ping.headers
    );
    let version = h1.api("GET", "/v1.41/version", "").json();
    assert_eq!(version["ApiVersion"], "1.41");
    let info = h1.api("GET", "/info", "").json();
    assert_eq!(info["Swarm"]["LocalNodeState"], "inactive");
    assert_eq!(info["Name"], "h1");

    let missing = h1.api("GET", "/v1.41/no/such/thing", "");
    assert_eq!(
        (missing.status, missing.json()["message"].as_str()),
        (404, Some("page not found"))
    );
    let nodes = h1.api("GET", "/nodes", "");
    assert_eq!(nodes.status, 503);
    assert!(
        nodes.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("This node is not a swarm manager.")
    );

    // Malformed bodies: 400 with a message, and the daemon lives on.
    for body in [
        "{",
        "[1,2]",
        "{\"ListenAddr\": 5}",
        "\u{0}\u{1}garbage",
        "{\"Spec\": {\"Dispatcher\": {\"HeartbeatPeriod\": \"x\"}}}",
        "{\"Spec\": {\"Raft\": {\"ElectionTick\": 9223372036854775807}}}",
    ] {
        let reply = h1.api("POST", "/v1.41/swarm/init", body);
        assert_eq!(reply.status, 400, "{body:?}: {}", reply.body);
        assert!(reply.json()["message"].is_string());
    }
    let reply = raw(
        &h1.socket,
        b"POST /swarm/join HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n{",
    )
    .map(|r| r.status);
    assert_eq!(
        reply,
        Some(400),
        "an oversized body is refused before it is read"
    );
    assert_eq!(
        raw(&h1.socket, b"\x16\x03\x01garbage\r\n\r\n")
            .map(|r| r.status)
            .unwrap_or(400),
        400
    );

    // Random requests (methods, paths, queries, bodies) on every endpoint: each gets an answer
    // (never a 5xx from a panic, never a dropped connection), and the daemon stays inactive.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let methods = ["GET", "POST", "DELETE", "PUT", "HEAD"];
    let paths = [
        "/swarm",
        "/swarm/init",
        "/swarm/join",
        "/swarm/leave",
        "/swarm/update",
        "/swarm/unlockkey",
        "/nodes",
        "/nodes/x",
        "/nodes/x/update",
        "/info",
        "/v1.41/nodes",
        "/v9/x",
        "/v1.x/nodes",
        "//",
        "/nodes/%ff%00",
    ];
    let bodies = [
        "",
        "{}",
        "null",
        "[]",
        "{\"JoinToken\":\"SWMTKN-1-x\",\"RemoteAddrs\":[\"256.1.1.1\"]}",
        "{\"RemoteAddrs\":null,\"JoinToken\":null}",
        "{\"Labels\":{\"a\":1}}",
        "{\"Role\":\"king\"}",
        "{\"Availability\":\"sideways\"}",
        "\u{7f}\u{0}",
        "{\"ListenAddr\":\"999.0.0.1:99999\"}",
    ];
    for _ in 0..300 {
        let method = methods[next() as usize % methods.len()];
        let path = paths[next() as usize % paths.len()];
        let query = [
            "",
            "?force=1",
            "?version=abc",
            "?filters=%7B",
            "?version=18446744073709551616",
        ][next() as usize % 5];
        let body = bodies[next() as usize % bodies.len()];
        let reply = h1.api(method, &format!("{path}{query}"), body);
        assert!(
            reply.status < 500 || reply.status == 503,
            "{method} {path}{query} {body:?}: {} {}",
            reply.status,
            reply.body
        );
    }
    assert_eq!(
        h1.api("GET", "/info", "").json()["Swarm"]["LocalNodeState"],
        "inactive",
        "{}",
        h1.log_text()
    );

    // S03: joins without a token or with a malformed one are refused with Docker's texts.
    let no_token = h1
        .docker(&["swarm", "join", "--token", "", "10.0.0.1:2377"])
        .unwrap_err();
    assert!(no_token.contains("join token is necessary"), "{no_token}");
    let foobaz = h1
        .docker(&["swarm", "join", "--token", "foobaz", "10.0.0.1:2377"])
        .unwrap_err();
    assert!(foobaz.contains("invalid join token"), "{foobaz}");
    assert_eq!(
        h1.api("GET", "/_ping", "").status,
        200,
        "the daemon survived:\n{}",
        h1.log_text()
    );
    assert_eq!(
        h1.api("GET", "/info", "").json()["Swarm"]["LocalNodeState"],
        "inactive"
    );
}

#[test]
fn docker_cli_forms_a_cluster_manages_nodes_and_checks_tokens() {
    let cluster = Cluster::new(4);
    let (h1, h2, h3, h4) = (
        cluster.node("h1"),
        cluster.node("h2"),
        cluster.node("h3"),
        cluster.node("h4"),
    );

    // S01: bootstrap.
    cluster.init();
    let swarm = h1.api("GET", "/v1.41/swarm", "").json();
    let worker_token = h1
        .docker_ok(&["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_string();
    let manager_token = h1
        .docker_ok(&["swarm", "join-token", "-q", "manager"])
        .trim()
        .to_string();
    for token in [&worker_token, &manager_token] {
        let parts: Vec<&str> = token.split('-').collect();
        assert_eq!(
            (
                parts.len(),
                parts[0],
                parts[1],
                parts[2].len(),
                parts[3].len()
            ),
            (4, "SWMTKN", "1", 50, 25),
            "{token}"
        );
    }
    assert_ne!(worker_token, manager_token);
    assert_eq!(
        swarm["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"],
        5
    );
    assert_eq!(swarm["Spec"]["Raft"]["SnapshotInterval"], 10000);
    assert_eq!(
        swarm["Spec"]["CAConfig"]["NodeCertExpiry"],
        7_776_000_000_000_000i64
    );
    assert_eq!(swarm["Spec"]["Dispatcher"]["HeartbeatPeriod"], 500_000_000);

    // S03: a token whose CA digest is not this CA's is refused before anything is trusted.
    let mut wrong_ca = worker_token.clone().into_bytes();
    wrong_ca[9] = if wrong_ca[9] == b'a' { b'b' } else { b'a' };
    let wrong_ca = String::from_utf8(wrong_ca).unwrap();
    let refused = h4
        .docker(&["swarm", "join", "--token", &wrong_ca, &h1.addr()])
        .unwrap_err();
    assert!(
        refused.contains("remote CA does not match fingerprint"),
        "{refused}"
    );
    assert_eq!(
        h4.api("GET", "/info", "").json()["Swarm"]["LocalNodeState"],
        "inactive"
    );

    // S02: a worker and a manager join.
    h2.docker_ok(&[
        "swarm",
        "join",
        "--token",
        &worker_token,
        "--advertise-addr",
        &h2.ip,
        &h1.addr(),
    ]);
    h3.docker_ok(&[
        "swarm",
        "join",
        "--token",
        &manager_token,
        "--advertise-addr",
        &h3.ip,
        &h1.addr(),
    ]);
    let nodes = h1.node_ls().unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(
        nodes
            .iter()
            .all(|n| n["Status"] == "Ready" && n["Availability"] == "Active"),
        "{nodes:?}"
    );
    assert_eq!(by_host(&nodes, "h1")["ManagerStatus"], "Leader");
    assert_eq!(by_host(&nodes, "h1")["Self"], true);
    assert_eq!(by_host(&nodes, "h2")["ManagerStatus"], "");
    assert_eq!(by_host(&nodes, "h3")["ManagerStatus"], "Reachable");
    let worker_view = h2.docker(&["node", "ls"]).unwrap_err();
    assert!(
        worker_view.contains("Worker nodes can't be used to view or modify cluster state"),
        "{worker_view}"
    );

    // S04: after a rotation the old worker token no longer joins; the new one does; h2 stays.
    h1.docker_ok(&["swarm", "join-token", "--rotate", "-q", "worker"]);
    let rotated = h3
        .docker_ok(&["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_string();
    assert_ne!(rotated, worker_token);
    let old = h4
        .docker(&[
            "swarm",
            "join",
            "--token",
            &worker_token,
            "--advertise-addr",
            &h4.ip,
            &h1.addr(),
        ])
        .unwrap_err();
    assert!(
        old.contains("A valid join token is necessary to join this cluster"),
        "{old}"
    );
    h4.docker_ok(&[
        "swarm",
        "join",
        "--token",
        &rotated,
        "--advertise-addr",
        &h4.ip,
        &h3.addr(),
    ]);
    let nodes = h1.node_ls().unwrap();
    assert_eq!(nodes.len(), 4);
    assert_eq!(by_host(&nodes, "h2")["Status"], "Ready");

    // S09: writes through a follower (h3) reach the leader and every manager sees them.
    h3.docker_ok(&["node", "update", "--availability", "drain", "h2"]);
    h3.docker_ok(&[
        "node",
        "update",
        "--label-add",
        "zone=plaintextmarker",
        "h2",
    ]);
    let spec: Value = serde_json::from_str(&h1.docker_ok(&[
        "node",
        "inspect",
        "h2",
        "--format",
        "{{json .Spec}}",
    ]))
    .unwrap();
    assert_eq!(spec["Availability"], "drain");
    assert_eq!(spec["Labels"]["zone"], "plaintextmarker");
    h1.docker_ok(&[
        "node",
        "update",
        "--label-rm",
        "zone",
        "--availability",
        "active",
        "h2",
    ]);
    wait_for(Duration::from_secs(5), "h3 to apply the update", || {
        let spec: Value = serde_json::from_str(&h3.docker_ok(&[
            "node",
            "inspect",
            "h2",
            "--format",
            "{{json .Spec}}",
        ]))
        .ok()?;
        (spec["Availability"] == "active" && spec["Labels"].get("zone").is_none()).then_some(())
    });

    // S12: promote a worker (it gets a manager certificate and joins Raft), then demote it.
    h1.docker_ok(&["node", "promote", "h4"]);
    wait_for(
        Duration::from_secs(20),
        "h4 to become a reachable manager",
        || {
            let nodes = h1.node_ls().ok()?;
            (by_host(&nodes, "h4")["ManagerStatus"] == "Reachable").then_some(())
        },
    );
    wait_for(
        Duration::from_secs(10),
        "h4's own API to serve manager calls",
        || h4.node_ls().ok(),
    );
    h3.docker_ok(&["node", "demote", "h4"]);
    wait_for(Duration::from_secs(20), "h4 to be a worker again", || {
        let nodes = h1.node_ls().ok()?;
        (by_host(&nodes, "h4")["ManagerStatus"] == "" && h4.docker(&["node", "ls"]).is_err())
            .then_some(())
    });
    // The last manager cannot be demoted... (two remain here: h1 and h3).
    h1.docker_ok(&["node", "demote", "h3"]);
    let last = h1.docker(&["node", "demote", "h1"]).unwrap_err();
    assert!(
        last.contains("attempting to demote the last manager of the swarm"),
        "{last}"
    );

    // A live node cannot be removed without --force; with it, it is gone.
    let live = h1.docker(&["node", "rm", "h2"]).unwrap_err();
    assert!(live.contains("is not down and can't be removed"), "{live}");
    h1.docker_ok(&["node", "rm", "--force", "h2"]);
    assert_eq!(h1.node_ls().unwrap().len(), 3);

    // Encryption at rest: no node name or label in the clear in any Raft store file.
    // (h3 and h4 were demoted: their stores are gone; h1 has one.)
    assert!(h1.state.join("raft").is_dir());
    for node in [h1, h3, h4]
        .into_iter()
        .filter(|n| n.state.join("raft").is_dir())
    {
        for entry in walk(&node.state.join("raft")) {
            let bytes = std::fs::read(&entry).unwrap();
            // (Needles of 8 bytes and more: shorter ones turn up by chance in ciphertext.)
            for needle in [
                &b"plaintextmarker"[..],
                b"hostname",
                b"swarm-ca",
                b"swarm-manager",
                b"BEGIN",
            ] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds {:?} in the clear",
                    entry.display(),
                    String::from_utf8_lossy(needle)
                );
            }
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn leader_failover_down_detection_quorum_loss_and_full_restart() {
    let mut cluster = Cluster::new(4);
    cluster.init();
    cluster.join("h2", "manager");
    cluster.join("h3", "manager");
    cluster.join("h4", "worker");
    assert_eq!(
        leader_of(&cluster.node("h2").node_ls().unwrap()).as_deref(),
        Some("h1")
    );

    // S06: the leader's host dies; a new leader takes writes; the old one comes back as a follower
    // and leadership stays where it is.
    cluster.node_mut("h1").kill();
    let new_leader = wait_for(Duration::from_secs(20), "a new leader", || {
        let nodes = cluster.node("h2").node_ls().ok()?;
        leader_of(&nodes).filter(|l| l != "h1")
    });
    cluster
        .node("h3")
        .docker_ok(&["node", "update", "--label-add", "after=failover", "h4"]);
    wait_for(
        Duration::from_secs(10),
        "h1 to be down and unreachable",
        || {
            let nodes = cluster.node("h2").node_ls().ok()?;
            let h1 = by_host(&nodes, "h1");
            (h1["Status"] == "Down" && h1["ManagerStatus"] == "Unreachable").then_some(())
        },
    );
    cluster.node_mut("h1").start();
    wait_for(
        Duration::from_secs(15),
        "h1 back as a reachable follower",
        || {
            let nodes = cluster.node("h1").node_ls().ok()?;
            (by_host(&nodes, "h1")["ManagerStatus"] == "Reachable"
                && by_host(&nodes, "h1")["Status"] == "Ready")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        leader_of(&cluster.node("h1").node_ls().unwrap()).as_deref(),
        Some(new_leader.as_str())
    );
    let labels: Value = serde_json::from_str(&cluster.node("h1").docker_ok(&[
        "node",
        "inspect",
        "h4",
        "--format",
        "{{json .Spec.Labels}}",
    ]))
    .unwrap();
    assert_eq!(
        labels["after"], "failover",
        "the restarted manager caught up"
    );

    // A worker's host dies: its session with the leader ends and it is down within about a
    // second, long before three missed heartbeats (30 s with this period) would tell.
    cluster
        .node("h1")
        .docker_ok(&["swarm", "update", "--dispatcher-heartbeat", "10s"]);
    std::thread::sleep(Duration::from_secs(1));
    cluster.node_mut("h4").kill();
    let killed = std::time::Instant::now();
    wait_for(Duration::from_secs(10), "h4 to be down", || {
        let nodes = cluster.node("h1").node_ls().ok()?;
        (by_host(&nodes, "h4")["Status"] == "Down").then_some(())
    });
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "a dead host is noticed in {:?}",
        killed.elapsed()
    );
    cluster
        .node("h1")
        .docker_ok(&["swarm", "update", "--dispatcher-heartbeat", "500ms"]);

    // S08: two of three managers gone: writes are refused with Docker's message; one back: fine.
    let others: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .filter(|h| **h != new_leader)
        .map(|h| h.to_string())
        .collect();
    cluster.node_mut(&others[0]).kill();
    cluster.node_mut(&new_leader).kill();
    let survivor = cluster.node(&others[1]);
    let refused = survivor
        .docker(&["node", "update", "--label-add", "x=y", "h4"])
        .unwrap_err();
    assert!(
        refused.contains("Make sure more than half of the managers are online"),
        "{refused}"
    );
    cluster.node_mut(&new_leader).start();
    wait_for(Duration::from_secs(20), "writes to work again", || {
        cluster
            .node(&others[1])
            .docker(&["node", "update", "--label-add", "x=y", "h4"])
            .ok()
    });

    // S11: everything stops at once and starts again: the cluster is back with its state.
    for node in &mut cluster.nodes {
        node.kill();
    }
    for node in &mut cluster.nodes {
        node.start();
    }
    wait_for(
        Duration::from_secs(20),
        "the restarted cluster to have a leader and four ready nodes",
        || {
            let nodes = cluster.node("h1").node_ls().ok()?;
            (nodes.len() == 4
                && leader_of(&nodes).is_some()
                && nodes.iter().all(|n| n["Status"] == "Ready"))
            .then_some(())
        },
    );
    let labels: Value = serde_json::from_str(&cluster.node("h2").docker_ok(&[
        "node",
        "inspect",
        "h4",
        "--format",
        "{{json .Spec.Labels}}",
    ]))
    .unwrap();
    assert_eq!(labels["x"], "y");
}

#[test]
fn a_paused_leader_marks_no_worker_down_and_a_demoted_leader_hands_over() {
    let cluster = Cluster::new(5);
    cluster.init();
    cluster.join("h2", "manager");
    cluster.join("h3", "manager");
    cluster.join("h4", "worker");
    cluster.join("h5", "worker");
    let (h1, h2, h4) = (cluster.node("h1"), cluster.node("h2"), cluster.node("h4"));

    // Garbage, a truncated TLS record and plain HTTP on the leader's port 2377 are refused.
    for bytes in [
        "garbage\\n",
        "\\x16\\x03\\x01\\x00\\xffhello",
        "GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
    ] {
        h4.send_garbage(&h1.addr(), bytes);
    }
    assert_eq!(
        h1.node_ls().unwrap().len(),
        5,
        "the leader survived garbage:\n{}",
        h1.log_text()
    );
    cluster.wait(Duration::from_secs(5), "the garbage to be logged", || {
        h1.log_text()
            .contains("refused a connection from")
            .then_some(())
    });

    // S07: the leader is paused well past the heartbeat grace; no worker is ever marked down.
    h1.signal("STOP");
    let watch_until = std::time::Instant::now() + Duration::from_secs(5);
    let mut new_leader = None;
    while std::time::Instant::now() < watch_until {
        if let Ok(nodes) = h2.node_ls() {
            for worker in ["h4", "h5"] {
                assert_eq!(
                    by_host(&nodes, worker)["Status"],
                    "Ready",
                    "{worker} marked down while the leader was paused: {nodes:?}"
                );
            }
            new_leader = leader_of(&nodes).filter(|l| l != "h1").or(new_leader);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    h1.signal("CONT");
    let watch_until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < watch_until {
        for manager in [h1, h2] {
            if let Ok(nodes) = manager.node_ls() {
                for worker in ["h4", "h5"] {
                    assert_eq!(
                        by_host(&nodes, worker)["Status"],
                        "Ready",
                        "{worker} marked down after the pause: {nodes:?}"
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let new_leader = new_leader.expect("the other managers elected a leader while h1 was paused");

    // S12: the leader is demoted: it leaves Raft, another manager leads, writes go on.
    let other = ["h2", "h3"].into_iter().find(|h| *h != new_leader).unwrap();
    cluster
        .node(other)
        .docker_ok(&["node", "demote", &new_leader]);
    let next = cluster.wait(
        Duration::from_secs(20),
        "a leader other than the demoted one",
        || {
            let nodes = cluster.node(other).node_ls().ok()?;
            let leader = leader_of(&nodes).filter(|l| *l != new_leader)?;
            (by_host(&nodes, &new_leader)["ManagerStatus"] == "").then_some(leader)
        },
    );
    cluster.wait(
        Duration::from_secs(20),
        "the demoted node to be a worker",
        || cluster.node(&new_leader).docker(&["node", "ls"]).err(),
    );
    cluster
        .node(other)
        .docker_ok(&["node", "update", "--label-add", "after=demotion", "h5"]);
    let nodes = cluster.node(&next).node_ls().unwrap();
    assert_eq!(
        nodes.iter().filter(|n| n["ManagerStatus"] != "").count(),
        2,
        "{nodes:?}"
    );
    assert!(nodes.iter().all(|n| n["Status"] == "Ready"), "{nodes:?}");
}

#[test]
fn short_lived_certificates_are_renewed_and_nodes_leave() {
    let cluster = Cluster::new(3);
    let (h1, h2, h3) = (cluster.node("h1"), cluster.node("h2"), cluster.node("h3"));
    let too_short = h1
        .docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            &h1.ip,
            "--cert-expiry",
            "500ms",
        ])
        .unwrap_err();
    assert!(
        too_short.contains("minimum certificate expiry time is 1s"),
        "{too_short}"
    );
    h1.docker_ok(&[
        "swarm",
        "init",
        "--advertise-addr",
        &h1.ip,
        "--dispatcher-heartbeat",
        "500ms",
        "--cert-expiry",
        "6s",
    ]);
    cluster.join("h2", "manager");
    cluster.join("h3", "worker");

    // Certificates of 6 s are renewed at 3-4.8 s: after 15 s (and two or three renewals of
    // every node's certificate) mutual TLS still works everywhere.
    let cert = |node: &common::Node| {
        std::fs::read(node.state.join("certificates/swarm-node.crt")).unwrap()
    };
    let first = (cert(h1), cert(h3));
    std::thread::sleep(Duration::from_secs(15));
    assert_ne!(cert(h1), first.0, "the manager's certificate was renewed");
    assert_ne!(cert(h3), first.1, "the worker's certificate was renewed");
    let nodes = h2.node_ls().unwrap();
    assert!(
        nodes.iter().all(|n| n["Status"] == "Ready"),
        "{nodes:?}\n{}",
        cluster.logs()
    );
    h2.docker_ok(&["node", "update", "--label-add", "renewed=yes", "h3"]);

    // A manager does not leave without --force; a worker leaves and is then down.
    let refused = h2.docker(&["swarm", "leave"]).unwrap_err();
    assert!(
        refused.contains("Use `--force` to suppress this message"),
        "{refused}"
    );
    h3.docker_ok(&["swarm", "leave"]);
    assert_eq!(
        h3.api("GET", "/info", "").json()["Swarm"]["LocalNodeState"],
        "inactive"
    );
    assert!(!h3.state.join("certificates").exists());
    wait_for(Duration::from_secs(5), "h3 to be down", || {
        let nodes = h1.node_ls().ok()?;
        (by_host(&nodes, "h3")["Status"] == "Down").then_some(())
    });
}

#[test]
fn snapshots_compact_the_log_and_bring_a_new_manager_up_to_date() {
    let mut cluster = Cluster::new(2);
    let h1 = cluster.node("h1");
    let init = format!(
        r#"{{"ListenAddr":"0.0.0.0:2377","AdvertiseAddr":"{}","Spec":{{"Raft":{{"SnapshotInterval":5,"LogEntriesForSlowFollowers":1}},"Dispatcher":{{"HeartbeatPeriod":500000000}}}}}}"#,
        h1.ip
    );
    let reply = h1.api("POST", "/v1.41/swarm/init", &init);
    assert_eq!(reply.status, 200, "{}", reply.body);
    for i in 0..25 {
        h1.docker_ok(&["node", "update", "--label-add", &format!("k{i}=v{i}"), "h1"]);
    }
    wait_for(
        Duration::from_secs(5),
        "a snapshot and a compacted log",
        || {
            let log = cluster.node("h1").log_text();
            (log.contains("built a Raft snapshot") && log.contains("compacted the Raft log"))
                .then_some(())
        },
    );

    // The new manager cannot get the early entries any more: it gets the snapshot.
    cluster.join("h2", "manager");
    let h2 = cluster.node("h2");
    wait_for(Duration::from_secs(10), "h2 to hold every label", || {
        let labels: Value = serde_json::from_str(
            &h2.docker(&["node", "inspect", "h1", "--format", "{{json .Spec.Labels}}"])
                .ok()?,
        )
        .ok()?;
        (labels["k24"] == "v24" && labels["k0"] == "v0").then_some(())
    });
    assert!(
        h2.log_text().contains("installed a Raft snapshot"),
        "{}",
        h2.log_text()
    );

    // Restarted, it rebuilds its state from its own (sealed) snapshot and log.
    cluster.node_mut("h2").kill();
    cluster.node_mut("h2").start();
    let h2 = cluster.node("h2");
    wait_for(Duration::from_secs(10), "h2 back with its state", || {
        let labels: Value = serde_json::from_str(
            &h2.docker(&["node", "inspect", "h1", "--format", "{{json .Spec.Labels}}"])
                .ok()?,
        )
        .ok()?;
        (labels["k24"] == "v24").then_some(())
    });
}

#[test]
fn force_new_cluster_on_a_surviving_manager_keeps_the_state() {
    let mut cluster = Cluster::new(5);
    cluster.init();
    cluster.join("h2", "manager");
    cluster.join("h3", "manager");
    cluster.join("h4", "worker");
    cluster
        .node("h1")
        .docker_ok(&["node", "update", "--label-add", "kept=yes", "h4"]);

    // S10: two of three managers are gone for good; the survivor starts over with the state.
    cluster.node_mut("h2").kill();
    cluster.node_mut("h3").kill();
    let h1 = cluster.node("h1");
    let refused = h1
        .docker(&["node", "update", "--label-add", "x=y", "h4"])
        .unwrap_err();
    assert!(
        refused.contains("Make sure more than half of the managers are online"),
        "{refused}"
    );
    h1.docker_ok(&[
        "swarm",
        "init",
        "--force-new-cluster",
        "--advertise-addr",
        &h1.ip,
    ]);
    let nodes = wait_for(
        Duration::from_secs(10),
        "h4 ready under the new cluster",
        || {
            let nodes = h1.node_ls().ok()?;
            (by_host(&nodes, "h4")["Status"] == "Ready").then_some(nodes)
        },
    );
    assert_eq!(nodes.len(), 4, "{nodes:?}");
    assert_eq!(by_host(&nodes, "h1")["ManagerStatus"], "Leader");
    for gone in ["h2", "h3"] {
        assert_eq!(by_host(&nodes, gone)["Status"], "Down", "{nodes:?}");
        assert_eq!(by_host(&nodes, gone)["ManagerStatus"], "", "{nodes:?}");
    }
    let labels: Value = serde_json::from_str(&h1.docker_ok(&[
        "node",
        "inspect",
        "h4",
        "--format",
        "{{json .Spec.Labels}}",
    ]))
    .unwrap();
    assert_eq!(labels["kept"], "yes");
    h1.docker_ok(&["node", "update", "--label-add", "after=recovery", "h4"]);

    // A lost manager that comes back finds itself demoted: it becomes a worker, and its stale
    // Raft does not disturb the new cluster.
    cluster.node_mut("h2").start();
    wait_for(Duration::from_secs(20), "h2 back as a ready worker", || {
        let nodes = cluster.node("h1").node_ls().ok()?;
        let h2 = by_host(&nodes, "h2");
        (h2["Status"] == "Ready"
            && h2["ManagerStatus"] == ""
            && cluster.node("h2").docker(&["node", "ls"]).is_err())
        .then_some(())
    });
    assert_eq!(
        leader_of(&cluster.node("h1").node_ls().unwrap()).as_deref(),
        Some("h1")
    );

    // The old tokens still work: a new manager joins the new cluster.
    cluster.join("h5", "manager");
    let nodes = cluster.node("h5").node_ls().unwrap();
    assert_eq!(by_host(&nodes, "h5")["ManagerStatus"], "Reachable");
    cluster
        .node("h5")
        .docker_ok(&["node", "update", "--label-add", "via=h5", "h4"]);
}

#[test]
fn the_agents_own_cli_speaks_dockers_verbs() {
    let cluster = Cluster::new(2);
    let (h1, h2) = (cluster.node("h1"), cluster.node("h2"));
    let out = h1
        .cli(&[
            "init",
            "--advertise-addr",
            &h1.ip,
            "--dispatcher-heartbeat",
            "500ms",
        ])
        .unwrap();
    assert!(out.contains("Swarm initialized: current node ("), "{out}");
    let token = h1
        .cli(&["join-token", "-q", "worker"])
        .unwrap()
        .trim()
        .to_string();
    assert!(token.starts_with("SWMTKN-1-"), "{token}");
    let out = h2
        .cli(&[
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &h2.ip,
            &h1.addr(),
        ])
        .unwrap();
    assert_eq!(out.trim(), "This node joined a swarm as a worker.");
    let again = h2
        .cli(&["join", "--token", &token, &h1.addr()])
        .unwrap_err();
    assert!(
        again.contains("This node is already part of a swarm"),
        "{again}"
    );

    h1.cli(&[
        "node",
        "update",
        "--availability",
        "pause",
        "--label-add",
        "disk=ssd",
        "h2",
    ])
    .unwrap();
    let rows: Vec<Value> = h1
        .cli(&["node", "ls", "--format", "json"])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(by_host(&rows, "h1")["ManagerStatus"], "Leader");
    assert_eq!(by_host(&rows, "h1")["Self"], true);
    assert_eq!(by_host(&rows, "h2")["Availability"], "Pause");
    let inspect: Value =
        serde_json::from_str(&h1.cli(&["node", "inspect", "h2"]).unwrap()).unwrap();
    assert_eq!(inspect[0]["Spec"]["Labels"]["disk"], "ssd");
    let missing = h1
        .cli(&["node", "update", "--label-rm", "nope", "h2"])
        .unwrap_err();
    assert!(
        missing.contains("key nope doesn't exist in node's labels"),
        "{missing}"
    );

    h1.cli(&["join-token", "--rotate", "worker"]).unwrap();
    assert_ne!(
        h1.cli(&["join-token", "-q", "worker"]).unwrap().trim(),
        token
    );
    h1.cli(&["update", "--dispatcher-heartbeat", "1s"]).unwrap();
    assert_eq!(
        h1.api("GET", "/swarm", "").json()["Spec"]["Dispatcher"]["HeartbeatPeriod"],
        1_000_000_000
    );
    let table = h1.cli(&["node", "ls"]).unwrap();
    assert!(table.starts_with("ID") && table.contains(" *"), "{table}");
    h2.cli(&["leave"]).unwrap();
    let refused = h1.cli(&["leave"]).unwrap_err();
    assert!(
        refused.contains("Removing the last manager erases all current state of the swarm"),
        "{refused}"
    );
}
