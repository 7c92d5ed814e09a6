//! Service and task logs with real engines and containers: a manager that does not lead (h2)
//! serves them through the leader (h1), from containers on h1, h2 and a worker (h3). The raw
//! multiplexed stream (stdout/stderr selection, `tail`, `since`, `timestamps`, `details`, bad
//! queries), Debian's `docker service logs -f --since … --tail …` parsed as it streams (a task
//! added meanwhile shows up), a client hanging up (the engines' log connections close again) and
//! a follow ending when its service is removed. Needs root, Debian's busybox-static,
//! docker-registry and docker.io.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::engine::{Registry, push_busybox_image};
use common::services::{create, hosts, tasks, update};
use common::{Cluster, Node};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(40);
/// One line on each stream, then a numbered line every 250 ms.
const SCRIPT: &str =
    "echo one; echo two >&2; i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.25; done";

/// GET on the agent's socket: status and the raw body (HTTP/1.0: the body runs to the close).
fn get(socket: &Path, path: &str) -> (u16, Vec<u8>) {
    let mut stream = UnixStream::connect(socket).expect("the agent's socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("a request");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).expect("an answer");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, out[split + 4..].to_vec())
}

/// Docker's multiplexed stream: (stream, text) per frame; the whole body must be frames.
fn frames(mut body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 8, "a cut frame header: {body:?}");
        assert!(
            matches!(body[0], 1 | 2) && body[1..4] == [0, 0, 0],
            "{body:?}"
        );
        let size = u32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize;
        let data = &body[8..8 + size];
        out.push((body[0], String::from_utf8_lossy(data).into_owned()));
        body = &body[8 + size..];
    }
    out
}

fn logs(node: &Node, path: &str) -> Vec<(u8, String)> {
    let (status, body) = get(&node.socket, path);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    frames(&body)
}

/// The socket descriptors of `node`'s engine process.
fn engine_sockets(node: &Node) -> usize {
    let socket = node.engine().socket().display().to_string();
    let pid = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .find(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(&socket) && cmdline.contains("daemon") && !cmdline.contains("nsenter")
        })
        .expect("the engine's process")
        .path();
    std::fs::read_dir(pid.join("fd"))
        .map(|fds| {
            fds.flatten()
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The fewest sockets each engine held over a second (its own short calls come and go).
fn steady_sockets(cluster: &Cluster) -> Vec<usize> {
    let mut least = vec![usize::MAX; cluster.nodes.len()];
    for _ in 0..10 {
        for (i, node) in cluster.nodes.iter().enumerate() {
            least[i] = least[i].min(engine_sockets(node));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    least
}

/// `docker service logs ARGS` on `node`, its stdout lines coming on the receiver.
fn docker_follow(node: &Node, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(common::DOCKER)
        .arg("-H")
        .arg(format!("unix://{}", node.socket.display()))
        .args(["service", "logs"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running docker");
    let stdout = child.stdout.take().expect("a pipe");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// A line of `docker service logs --timestamps`: (task ID prefix, host, time, message).
type Parsed = (String, String, String, String);

fn parse(line: &str) -> Parsed {
    let (context, message) = line.split_once(" | ").expect("CONTEXT | LINE");
    let (time, context) = context
        .split_once(' ')
        .unwrap_or_else(|| panic!("TIME CONTEXT: {line}"));
    let (task, host) = context.trim_end().split_once('@').expect("task@host");
    let (_, id) = task.rsplit_once('.').expect("name.slot.id");
    (
        id.to_string(),
        host.to_string(),
        time.to_string(),
        message.to_string(),
    )
}

/// Reads `lines` into `got` until `until` holds.
fn take(
    cluster: &Cluster,
    lines: &mpsc::Receiver<String>,
    got: &mut Vec<Parsed>,
    what: &str,
    until: impl Fn(&[Parsed]) -> bool,
) {
    let deadline = Instant::now() + LONG;
    while !until(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => got.push(parse(&line)),
            Err(_) => panic!("{what}: {got:?}\n{}", cluster.logs()),
        }
    }
}

fn is_docker_time(t: &str) -> bool {
    // 2006-01-02T15:04:05.000000000Z (RFC 3339 with nanoseconds, UTC).
    t.len() == 30 && t.as_bytes()[10] == b'T' && t.ends_with('Z') && t.as_bytes()[19] == b'.'
}

/// The running tasks of `service`: task ID -> node ID.
fn running(node: &Node, service: &str) -> BTreeMap<String, String> {
    tasks(node, service)
        .into_iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .map(|t| {
            (
                t["ID"].as_str().unwrap_or("").to_string(),
                t["NodeID"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn logs_stream_from_any_manager_with_follow_since_and_tail() {
    let registry = Registry::start();
    push_busybox_image(&format!("{}/slipway/busybox:1", registry.local()));
    let cluster = Cluster::with_engines(3, registry.port);
    cluster.init();
    cluster.join("h2", "manager");
    cluster.join("h3", "worker");
    let (h1, h2) = (cluster.node("h1"), cluster.node("h2"));
    // h2 manages and h1 leads.
    cluster.wait(LONG, "3 ready nodes, h1 leading, seen by h2", || {
        let nodes = h2.api("GET", "/v1.41/nodes", "").json();
        let nodes = nodes.as_array()?;
        let leader = nodes
            .iter()
            .find(|n| n["ManagerStatus"]["Leader"] == true)?;
        (nodes.len() == 3
            && nodes.iter().all(|n| n["Status"]["State"] == "ready")
            && leader["Description"]["Hostname"] == "h1")
            .then_some(())
    });
    let image = format!("{}/slipway/busybox:1", cluster.registry(registry.port));
    create(
        h1,
        &json!({
            "Name": "talk",
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": image,
                    "Args": ["/bin/sh", "-c", SCRIPT],
                    "StopGracePeriod": 1_000_000_000i64,
                },
            },
            "Mode": {"Replicated": {"Replicas": 2}},
        }),
    );
    let deadline = Instant::now() + LONG;
    let talk = loop {
        let r = running(h1, "talk");
        if r.len() == 2 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "2 running tasks: {:#}\n{}",
            Value::Array(tasks(h1, "talk")),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let service_id = h1.api("GET", "/v1.41/services/talk", "").json()["ID"]
        .as_str()
        .expect("an ID")
        .to_string();

    // The raw stream from h2: both streams, with times and each task's context.
    let all = cluster.wait(LONG, "both tasks' first lines", || {
        let f = logs(
            h2,
            "/v1.41/services/talk/logs?stdout=1&stderr=1&timestamps=1&details=1",
        );
        (f.iter()
            .filter(|(s, l)| *s == 2 && l.ends_with(" two\n"))
            .count()
            == 2)
            .then_some(f)
    });
    let mut seen = BTreeSet::new();
    for (stream, line) in &all {
        let (time, rest) = line.split_once(' ').expect("TIME REST");
        assert!(is_docker_time(time), "{line:?}");
        let (context, text) = rest.split_once(' ').expect("CONTEXT TEXT");
        let field = |k: &str| {
            context
                .split(',')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or("")
                .to_string()
        };
        let task = field("com.docker.swarm.task.id");
        assert_eq!(
            talk.get(&task),
            Some(&field("com.docker.swarm.node.id")),
            "{line:?}"
        );
        assert_eq!(field("com.docker.swarm.service.id"), service_id, "{line:?}");
        match (stream, text) {
            (2, "two\n") => {}
            // The runtime's own note, when it runs the command without an init.
            (2, t) if t.starts_with("slipway: ") => {}
            (1, "one\n") => {}
            (1, t) if t.starts_with("tick-") => {}
            _ => panic!("{stream} {line:?}"),
        }
        seen.insert(task);
    }
    assert_eq!(seen.len(), 2, "{all:?}");
    // One stream or the other.
    let errors = logs(h2, "/v1.41/services/talk/logs?stderr=1");
    assert!(errors.iter().all(|(s, _)| *s == 2), "{errors:?}");
    assert_eq!(
        errors.iter().filter(|(_, l)| l == "two\n").count(),
        2,
        "{errors:?}"
    );
    assert!(
        !errors.iter().any(|(_, l)| l.starts_with("tick-")),
        "{errors:?}"
    );
    let out = logs(h2, "/v1.41/services/talk/logs?stdout=1");
    assert!(out.iter().all(|(s, l)| *s == 1 && l != "two\n"), "{out:?}");
    // tail: the last line of each task (once both have ticked).
    cluster.wait(LONG, "a tick as each task's last line", || {
        let last = logs(h2, "/v1.41/services/talk/logs?stdout=1&stderr=1&tail=1");
        assert!(last.len() <= 2, "{last:?}");
        (last.len() == 2 && last.iter().all(|(_, l)| l.starts_with("tick-"))).then_some(())
    });
    // One task, by ID prefix.
    let (task, _) = talk.iter().next().expect("a task");
    let one = logs(
        h2,
        &format!(
            "/v1.41/tasks/{}/logs?stdout=1&stderr=1&tail=3&details=1",
            &task[..10]
        ),
    );
    assert_eq!(one.len(), 3, "{one:?}");
    assert!(
        one.iter().all(|(_, l)| l.contains(task.as_str())),
        "{one:?}"
    );
    // since: nothing written before it.
    std::thread::sleep(Duration::from_millis(600));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock");
    let since = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
    std::thread::sleep(Duration::from_millis(700));
    let recent = logs(
        h2,
        &format!("/v1.41/services/talk/logs?stdout=1&stderr=1&timestamps=1&since={since}"),
    );
    assert!(!recent.is_empty());
    for (_, line) in &recent {
        let (time, text) = line.split_once(' ').expect("TIME TEXT");
        assert!(text.starts_with("tick-"), "{line:?}");
        let t = humantime::parse_rfc3339(time).expect("a time");
        assert!(t >= UNIX_EPOCH + now, "{line:?} before {since}");
    }
    // Bad queries: Docker's refusals, and the agents live on.
    for (path, status) in [
        ("/v1.41/services/talk/logs", 400),
        ("/v1.41/services/talk/logs?stdout=1&tail=x", 400),
        (
            "/v1.41/services/talk/logs?stdout=1&tail=99999999999999999999",
            400,
        ),
        ("/v1.41/services/talk/logs?stdout=1&since=yesterday", 400),
        ("/v1.41/services/talk/logs?stdout=1&since=1.%00", 400),
        ("/v1.41/services/nope/logs?stdout=1", 404),
        ("/v1.41/tasks/nope/logs?stdout=1&follow=1", 404),
        (
            "/v1.41/services/talk/logs?stdout=1&since=-99999999999999",
            200,
        ),
    ] {
        for node in [h1, h2] {
            assert_eq!(get(&node.socket, path).0, status, "{path} on {}", node.name);
        }
    }
    assert_eq!(
        get(
            &cluster.node("h3").socket,
            "/v1.41/services/talk/logs?stdout=1"
        )
        .0,
        503,
        "a worker serves no logs"
    );

    // The agent's own CLI, through h2.
    let ours = h2
        .cli(&["service", "logs", "--tail", "1", "--since", "1h", "talk"])
        .expect("service logs");
    assert_eq!(ours.lines().count(), 2, "{ours}");
    for line in ours.lines() {
        let (context, text) = line.split_once("    | ").expect("CONTEXT | LINE");
        assert!(
            context.starts_with("talk.") && text.starts_with("tick-"),
            "{line}"
        );
        let (_, host) = context.split_once('@').expect("task@host");
        assert!(["h1", "h2", "h3"].contains(&host), "{line}");
    }
    assert!(h2.cli(&["service", "logs", "--tail", "x", "talk"]).is_err());

    // Docker's CLI follows through h2; a task added meanwhile shows up.
    let baseline = steady_sockets(&cluster);
    let (mut follow, lines) = docker_follow(
        h2,
        &["-f", "--since", "1s", "--tail", "5", "--timestamps", "talk"],
    );
    let mut got: Vec<Parsed> = Vec::new();
    let hosts = hosts(h1);
    let ticking = |got: &[Parsed], tasks: &BTreeMap<String, String>| {
        tasks.keys().all(|t| {
            got.iter()
                .filter(|(id, _, _, m)| t.starts_with(id.as_str()) && m.starts_with("tick-"))
                .count()
                >= 8
        })
    };
    take(
        &cluster,
        &lines,
        &mut got,
        "new lines of both tasks",
        |got| ticking(got, &talk),
    );
    for (id, host, time, message) in &got {
        assert!(is_docker_time(time), "{time}");
        let (task, node) = talk
            .iter()
            .find(|(t, _)| t.starts_with(id.as_str()))
            .expect("a task of talk");
        assert_eq!(&hosts[node], host, "{task}");
        assert!(message.starts_with("tick-"), "since 1s: {message}");
    }
    let during = steady_sockets(&cluster);
    let on = |tasks: &BTreeMap<String, String>, i: usize| {
        tasks.values().any(|n| hosts[n] == cluster.nodes[i].name)
    };
    for i in 0..3 {
        if on(&talk, i) {
            assert!(during[i] > baseline[i], "{during:?} {baseline:?}");
        }
    }
    update(h1, "talk", |spec| {
        spec["Mode"]["Replicated"]["Replicas"] = json!(3);
    });
    let three = cluster.wait(LONG, "3 running tasks", || {
        let r = running(h1, "talk");
        (r.len() == 3).then_some(r)
    });
    let added: BTreeMap<String, String> = three
        .iter()
        .filter(|(t, _)| !talk.contains_key(*t))
        .map(|(t, n)| (t.clone(), n.clone()))
        .collect();
    take(
        &cluster,
        &lines,
        &mut got,
        "the added task's lines",
        |got| {
            ticking(got, &added)
                && got.iter().any(|(id, _, _, m)| {
                    added.keys().any(|t| t.starts_with(id.as_str())) && m == "one"
                })
        },
    );

    // The client hangs up: every engine's log connections close again.
    follow.kill().expect("kill docker");
    let _ = follow.wait();
    cluster.wait(
        Duration::from_secs(15),
        "the engines' log connections closed",
        || {
            let now = steady_sockets(&cluster);
            now.iter().zip(&baseline).all(|(n, b)| n <= b).then_some(())
        },
    );

    // A follow ends when its service is removed.
    let (mut follow, lines) = docker_follow(h2, &["-f", "--tail", "1", "talk"]);
    lines.recv_timeout(LONG).expect("a first line");
    assert!(h1.docker_ok(&["service", "rm", "talk"]).contains("talk"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = follow.try_wait().expect("docker") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = follow.kill();
            panic!("the follow went on after the service was removed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    let _: Value = h1.api("GET", "/v1.41/info", "").json();
}
