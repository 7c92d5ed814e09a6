//! `scripts/cluster` end to end: three VMs of `examples/swarm.yml` under QEMU (TCG) on one socket
//! network, node1 running `init` from its metadata CD's settings, node2 and node3 `join` with the
//! token its agent printed on the console, then `node ls` on node1's console shows the three
//! Ready; node3 restarted resumes its membership from its state disk, and the three are Ready
//! again. Then a service of 6 replicas (busybox from a registry on the host, pulled through each
//! VM's second card on QEMU's user networking) runs 2 tasks on each node, and with node3's plug
//! pulled its tasks run again on node1 and node2. About a minute of boots on a warm store (plus
//! the agent's image build on a cold one), then about 70 s for the service (45 s until the 6 run,
//! 25 s after the power-off: node3 is `Down` after three missed 5 s heartbeats).
//!
//! Needs qemu-system-x86, root's QEMU socket networking (a multicast group on the host) and
//! docker-registry.

use std::path::Path;
use std::process::Command;

/// Running tasks (or containers) per node: `[("node1", 2), ...]`.
type Shares = Vec<(String, u32)>;

#[test]
fn three_vms_form_a_swarm_and_keep_six_replicas_running_when_one_loses_power() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(root.join("scripts/cluster"))
        .current_dir(root)
        .env("SLIPWAY_BIN", env!("CARGO_BIN_EXE_slipway"))
        .env("SLIPWAY_CACHE", root.join("target/slipway-test-cache"))
        .env("CLUSTER_DIR", work.path())
        .env("CLUSTER_TIMEOUT", "240")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/cluster failed:\n{stdout}\n{stderr}"
    );
    // `node ls`'s table: ID [*] HOSTNAME STATUS AVAILABILITY [MANAGER STATUS], printed once when
    // the three joined and once after node3's restart: both must show the three Ready.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().filter(|w| *w != "*").collect())
        .filter(|w: &Vec<&str>| w.len() >= 4 && w[1].starts_with("node"))
        .collect();
    let mut hosts: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    hosts.sort();
    assert_eq!(
        hosts,
        ["node1", "node1", "node2", "node2", "node3", "node3"],
        "{stdout}"
    );
    for row in &rows {
        assert_eq!(row[2], "Ready", "{stdout}");
        assert_eq!(row[3], "Active", "{stdout}");
        // node1 made the swarm and is its only manager; the others joined as workers.
        assert_eq!(
            row.get(4).copied(),
            (row[1] == "node1").then_some("Leader"),
            "{stdout}"
        );
    }
    // node1's console has the `docker swarm init` text its agent printed.
    let console = std::fs::read_to_string(work.path().join("node1.log")).unwrap();
    assert!(
        console.contains("Swarm initialized: current node ("),
        "{console}"
    );
    // node3's console after its restart: it resumed its membership.
    let console = std::fs::read_to_string(work.path().join("node3.log")).unwrap();
    assert!(console.contains("rejoined the swarm from"), "{console}");

    // `service: 6/6 running: node1=2 node2=2 node3=2 (engines: node1=2 node2=2 node3=2), ...`:
    // each node's share of the running tasks, then of the containers its engine runs.
    let shares = |prefix: &str| -> (Shares, Shares) {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{stdout}"));
        let parse = |part: &str| -> Shares {
            part.split_whitespace()
                .filter_map(|w| w.trim_end_matches([')', ',']).split_once('='))
                .filter(|(node, _)| node.starts_with("node"))
                .map(|(node, n)| (node.to_string(), n.parse().unwrap()))
                .collect()
        };
        let (swarm, engines) = line.split_once("(engines:").expect(line);
        (parse(swarm), parse(engines))
    };
    let (swarm, engines) = shares("service: 6/6 running:");
    let spread: Shares = ["node1", "node2", "node3"]
        .iter()
        .map(|n| (n.to_string(), 2))
        .collect();
    assert_eq!(swarm, spread, "{stdout}");
    assert_eq!(engines, spread, "{stdout}");
    let (swarm, engines) = shares("service: powered off node3");
    assert_eq!(swarm.iter().map(|(_, n)| n).sum::<u32>(), 6, "{stdout}");
    assert_eq!(
        swarm.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
        ["node1", "node2"],
        "{stdout}"
    );
    assert_eq!(swarm, engines, "{stdout}");
}
