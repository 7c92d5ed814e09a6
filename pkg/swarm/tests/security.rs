//! Security scenarios of swarm.md §6: S05 (a node restarted with certificates of another swarm
//! fails fast) and S28 (autolock: a restarted manager is locked until its unlock key is given;
//! rotation; a manager that missed a rotation takes the old key once). Agents run as separate
//! processes in their own network namespaces, driven by Docker's CLI and the agent's own.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, DOCKER, Node};

/// Runs `docker swarm unlock` (Docker's CLI reads the key from standard input when it is not a
/// terminal) or the agent's own `unlock`.
fn unlock(node: &Node, docker: bool, key: &str) -> Result<String, String> {
    let mut command = if docker {
        let mut c = Command::new(DOCKER);
        c.arg("-H")
            .arg(format!("unix://{}", node.socket.display()))
            .args(["swarm", "unlock"]);
        c
    } else {
        let mut c = Command::new(env!("CARGO_BIN_EXE_slipway-swarm"));
        c.arg("--socket").arg(&node.socket).arg("unlock");
        c
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running unlock");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{key}\n").as_bytes())
        .expect("writing the key");
    let out = child.wait_with_output().expect("unlock");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn local_state(node: &Node) -> String {
    node.api("GET", "/info", "").json()["Swarm"]["LocalNodeState"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn key_file(node: &Node) -> String {
    std::fs::read_to_string(node.state.join("certificates/swarm-node.key")).unwrap_or_default()
}

fn sealed(node: &Node) -> bool {
    let key = key_file(node);
    !key.is_empty()
        && !key.contains("PRIVATE KEY")
        && !node.state.join("certificates/swarm-node.dek").exists()
}

const LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"docker swarm unlock\" to unlock it.";

#[test]
fn an_autolocked_manager_is_locked_after_a_restart_until_its_key_is_given() {
    let mut cluster = Cluster::new(2);
    let h1 = cluster.node("h1");
    let out = h1.docker_ok(&[
        "swarm",
        "init",
        "--autolock",
        "--advertise-addr",
        &h1.ip,
        "--dispatcher-heartbeat",
        "500ms",
    ]);
    assert!(out.contains("SWMKEY-1-"), "{out}");
    let key = h1
        .docker_ok(&["swarm", "unlock-key", "-q"])
        .trim()
        .to_string();
    assert!(out.contains(&key), "init printed another key: {out}");
    let swarm = h1.api("GET", "/swarm", "").json();
    assert_eq!(swarm["Spec"]["EncryptionConfig"]["AutoLockManagers"], true);
    cluster.join("h2", "worker");
    // The manager's TLS key and data key are sealed at once; a worker is never locked.
    assert!(
        sealed(cluster.node("h1")),
        "{}",
        key_file(cluster.node("h1"))
    );
    assert!(!key_file(cluster.node("h1")).contains(&key));
    assert!(key_file(cluster.node("h2")).contains("PRIVATE KEY"));

    let h1 = cluster.node_mut("h1");
    h1.kill();
    h1.start();
    let h1 = cluster.node("h1");
    assert_eq!(local_state(h1), "locked");
    assert_eq!(
        h1.docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
            .trim(),
        "locked"
    );
    let ping = h1.api("GET", "/_ping", "");
    assert!(
        ping.headers.to_ascii_lowercase().contains("swarm: locked"),
        "{}",
        ping.headers
    );
    let err = h1.docker(&["node", "ls"]).unwrap_err();
    assert!(err.contains(LOCKED), "{err}");
    let reply = h1.api("GET", "/swarm/unlockkey", "");
    assert_eq!(
        (reply.status, reply.json()["message"].as_str()),
        (503, Some(LOCKED))
    );
    let err = h1.docker(&["swarm", "join-token", "worker"]).unwrap_err();
    assert!(err.contains(LOCKED), "{err}");

    // Bad keys: not a key at all, another key, a key for nothing; hostile bodies.
    let err = unlock(h1, true, "SWMKEY-2-nope").unwrap_err();
    assert!(err.contains("invalid key string"), "{err}");
    let other = slipway_swarm::autolock::new_unlock_key();
    let err = unlock(h1, true, &other).unwrap_err();
    assert!(
        err.contains("swarm could not be unlocked: invalid key provided"),
        "{err}"
    );
    let reply = h1.api(
        "POST",
        "/swarm/unlock",
        &format!("{{\"UnlockKey\":\"{other}\"}}"),
    );
    assert_eq!(reply.status, 401, "{}", reply.body);
    for body in ["{", "{\"UnlockKey\": 5}", "[]"] {
        assert_eq!(h1.api("POST", "/swarm/unlock", body).status, 400, "{body}");
    }
    let reply = h1.api("POST", "/swarm/unlock", "{\"UnlockKey\":\"SWMKEY-1-\"}");
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(local_state(h1), "locked");

    unlock(h1, true, &key).unwrap_or_else(|e| panic!("unlock: {e}\n{}", cluster.logs()));
    assert_eq!(local_state(h1), "active");
    let nodes = cluster.wait(Duration::from_secs(20), "node ls after unlock", || {
        h1.node_ls().ok().filter(|n| n.len() == 2)
    });
    assert!(nodes.iter().all(|n| n["Status"] == "Ready"), "{nodes:?}");
    let err = unlock(h1, true, &key).unwrap_err();
    assert!(err.contains("swarm is not locked"), "{err}");
    let reply = h1.api(
        "POST",
        "/swarm/unlock",
        &format!("{{\"UnlockKey\":\"{key}\"}}"),
    );
    assert_eq!(
        (reply.status, reply.json()["message"].as_str()),
        (409, Some("swarm is not locked"))
    );
    let err = unlock(cluster.node("h2"), true, &key).unwrap_err();
    assert!(err.contains("swarm is not locked"), "{err}");

    // Autolock off: the files are in the clear again, and a restart needs no key.
    h1.docker_ok(&["swarm", "update", "--autolock=false"]);
    assert!(
        h1.docker(&["swarm", "unlock-key"])
            .unwrap_err()
            .contains("no unlock key is set")
    );
    cluster.wait(Duration::from_secs(10), "the key unsealed", || {
        key_file(h1).contains("PRIVATE KEY").then_some(())
    });
    let h1 = cluster.node_mut("h1");
    h1.kill();
    h1.start();
    let h1 = cluster.node("h1");
    assert_eq!(local_state(h1), "active");
    cluster.wait(Duration::from_secs(20), "node ls without a key", || {
        h1.node_ls().ok().filter(|n| n.len() == 2)
    });

    // On again with `swarm update --autolock=true`: a new key is printed and needed.
    let out = h1.docker_ok(&["swarm", "update", "--autolock=true"]);
    let key2 = h1
        .docker_ok(&["swarm", "unlock-key", "-q"])
        .trim()
        .to_string();
    assert!(out.contains(&key2) && key2 != key, "{out}");
    assert!(sealed(h1));
    let h1 = cluster.node_mut("h1");
    h1.kill();
    h1.start();
    let h1 = cluster.node("h1");
    assert_eq!(local_state(h1), "locked");
    assert!(unlock(h1, true, &key).is_err());
    // A locked manager leaves only with --force.
    let err = h1.docker(&["swarm", "leave"]).unwrap_err();
    assert!(err.contains("Swarm is encrypted and locked"), "{err}");
    unlock(h1, false, &key2).unwrap_or_else(|e| panic!("unlock: {e}\n{}", cluster.logs()));
    assert_eq!(local_state(h1), "active");

    // `swarm ca` shows the root CA; rotating it is refused, not silently accepted (S29 is not
    // implemented yet).
    let ca = h1.docker_ok(&["swarm", "ca"]);
    assert!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    let err = h1
        .docker(&["swarm", "ca", "--rotate", "--detach"])
        .unwrap_err();
    assert!(err.contains("CA rotation"), "{err}");
}

#[test]
fn a_rotated_unlock_key_reaches_every_manager_and_one_that_missed_it_takes_the_old_key_once() {
    let mut cluster = Cluster::new(3);
    let h1 = cluster.node("h1");
    let out = h1
        .cli(&[
            "init",
            "--autolock",
            "--advertise-addr",
            &h1.ip,
            "--dispatcher-heartbeat",
            "500ms",
        ])
        .unwrap_or_else(|e| panic!("init: {e}"));
    let old = h1.cli(&["unlock-key", "-q"]).unwrap().trim().to_string();
    assert!(out.contains(&old), "{out}");
    cluster.join("h2", "manager");
    cluster.join("h3", "manager");
    // Managers that joined learn the key through Raft and seal their own files with it.
    cluster.wait(Duration::from_secs(15), "h2 and h3 sealed", || {
        (sealed(cluster.node("h2")) && sealed(cluster.node("h3"))).then_some(())
    });

    cluster.node_mut("h3").kill();
    let before = key_file(cluster.node("h2"));
    let h1 = cluster.node("h1");
    let out = h1.cli(&["unlock-key", "--rotate"]).unwrap();
    assert!(
        out.contains("Successfully rotated manager unlock key."),
        "{out}"
    );
    let new = h1.cli(&["unlock-key", "-q"]).unwrap().trim().to_string();
    assert_ne!(new, old);
    assert!(out.contains(&new), "{out}");
    assert_eq!(
        h1.docker_ok(&["swarm", "unlock-key", "-q"]).trim(),
        new,
        "Docker's CLI reads the same key"
    );
    // h2 was up: it re-seals with the new key; the old one no longer opens it.
    cluster.wait(Duration::from_secs(10), "h2 re-sealed", || {
        (key_file(cluster.node("h2")) != before).then_some(())
    });
    let h2 = cluster.node_mut("h2");
    h2.kill();
    h2.start();
    let h2 = cluster.node("h2");
    assert_eq!(local_state(h2), "locked");
    let err = unlock(h2, false, &old).unwrap_err();
    assert!(err.contains("invalid key provided"), "{err}");
    unlock(h2, false, &new).unwrap_or_else(|e| panic!("unlock h2: {e}\n{}", cluster.logs()));

    // h3 missed the rotation: the new key does not open it, the old one does (once).
    let h3 = cluster.node_mut("h3");
    h3.start();
    let h3 = cluster.node("h3");
    assert_eq!(local_state(h3), "locked");
    let err = unlock(h3, false, &new).unwrap_err();
    assert!(err.contains("invalid key provided"), "{err}");
    let before = key_file(h3);
    unlock(h3, true, &old).unwrap_or_else(|e| panic!("unlock h3: {e}\n{}", cluster.logs()));
    cluster.wait(
        Duration::from_secs(20),
        "h3 caught up and re-sealed",
        || (key_file(cluster.node("h3")) != before).then_some(()),
    );
    let h3 = cluster.node_mut("h3");
    h3.kill();
    h3.start();
    let h3 = cluster.node("h3");
    assert!(unlock(h3, false, &old).is_err());
    unlock(h3, false, &new).unwrap_or_else(|e| panic!("unlock h3: {e}\n{}", cluster.logs()));
    let nodes = cluster.wait(Duration::from_secs(20), "three managers ready", || {
        cluster
            .node("h3")
            .node_ls()
            .ok()
            .filter(|n| n.len() == 3 && n.iter().all(|n| n["Status"] == "Ready"))
    });
    assert!(
        nodes.iter().any(|n| n["ManagerStatus"] == "Leader"),
        "{nodes:?}"
    );
}

#[test]
fn a_node_restarted_with_certificates_of_another_swarm_fails_fast() {
    use slipway_swarm::pki::{self, NodeSubject, RootCa};
    let mut cluster = Cluster::new(2);
    cluster.init();
    cluster.join("h2", "worker");
    let h2 = cluster.node("h2");
    let node_id = h2.api("GET", "/info", "").json()["Swarm"]["NodeID"]
        .as_str()
        .unwrap()
        .to_string();
    let cluster_id = cluster.node("h1").api("GET", "/swarm", "").json()["ID"]
        .as_str()
        .unwrap()
        .to_string();

    // The same node ID and cluster, but certificates of another CA (a wrong backup restored).
    let other = RootCa::generate().unwrap();
    let (key, csr) = pki::new_key_and_csr().unwrap();
    let subject = NodeSubject {
        node_id: node_id.clone(),
        ou: pki::WORKER_OU.into(),
        cluster_id,
    };
    let cert = other
        .sign_csr(&csr, &subject, Duration::from_secs(3600))
        .unwrap();
    let h2 = cluster.node_mut("h2");
    h2.kill();
    let certs = h2.state.join("certificates");
    std::fs::write(certs.join("swarm-root-ca.crt"), &other.cert_pem).unwrap();
    std::fs::write(certs.join("swarm-node.crt"), pki::der_to_pem(&cert)).unwrap();
    std::fs::write(
        certs.join("swarm-node.key"),
        pki::der_to_pem(&key).replace("CERTIFICATE", "PRIVATE KEY"),
    )
    .unwrap();
    let started = Instant::now();
    h2.start();
    let h2 = cluster.node("h2");
    let error = cluster.wait(Duration::from_secs(10), "h2 to give up", || {
        let info = h2.api("GET", "/info", "").json();
        (info["Swarm"]["LocalNodeState"] == "error").then(|| {
            info["Swarm"]["Error"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(error.contains("issued by another swarm's CA"), "{error}");
    assert!(error.contains(&cluster.node("h1").addr()), "{error}");
    // It stopped trying: the manager sees no more connections from it.
    let refusals = || {
        cluster
            .node("h1")
            .log_text()
            .matches(&format!("refused a connection from {}:", h2.ip))
            .count()
    };
    // (a connection already under way when it gave up may still be logged)
    std::thread::sleep(Duration::from_millis(1000));
    let seen = refusals();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(refusals(), seen, "h2 kept retrying\n{}", cluster.logs());
    let err = h2
        .docker(&[
            "swarm",
            "join",
            "--token",
            "SWMTKN-1-x-y",
            &cluster.node("h1").addr(),
        ])
        .unwrap_err();
    assert!(err.contains("already part of a swarm"), "{err}");

    // The way out: leave, join again (as a new node).
    h2.docker_ok(&["swarm", "leave", "--force"]);
    assert_eq!(local_state(h2), "inactive");
    cluster.join("h2", "worker");
    let h1 = cluster.node("h1");
    cluster.wait(Duration::from_secs(15), "h2 back as a new node", || {
        let nodes = h1.node_ls().ok()?;
        nodes
            .iter()
            .any(|n| n["Hostname"] == "h2" && n["Status"] == "Ready" && n["ID"] != node_id.as_str())
            .then_some(())
    });
}
