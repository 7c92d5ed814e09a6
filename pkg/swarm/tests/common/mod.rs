//! The cluster-test harness: a bridge and one network namespace per node (veth pairs, 10.x
//! addresses), each agent started as its own process with `nsenter --net=...`, and Docker's CLI
//! (Debian's docker.io, /usr/bin/docker) or raw HTTP on the agent's socket to drive it.
//! Everything is torn down on drop, also when a test fails; names are unique per test.

#![allow(dead_code)]

pub mod engine;
pub mod services;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const DOCKER: &str = "/usr/bin/docker";
static NEXT: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Node {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    /// More daemon flags (e.g. `--executor fake`).
    pub args: Vec<String>,
    /// The node's own `slipway-engine daemon`, when the cluster runs real containers.
    pub engine: Option<engine::Engine>,
    child: Option<Child>,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("{}:2377", self.ip)
    }

    /// Starts (or restarts) the agent in its namespace and waits for its API.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(env!("CARGO_BIN_EXE_slipway-swarm"))
            .arg("--socket")
            .arg(&self.socket)
            .args([
                "daemon",
                "--raft-tick",
                "100",
                "--min-cert-expiry",
                "1s",
                "--hostname",
                &self.name,
                "--state",
            ])
            .arg(&self.state)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting slipway-swarm under nsenter");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http(&self.socket, "GET", "/_ping", "").is_some_and(|r| r.status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not answer on its socket; log:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// SIGKILL, as a host dying.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs every process of the node's namespace (its agent, engine and containers): the
    /// host dies.
    pub fn kill_host(&mut self) {
        self.kill();
        if let Some(engine) = &mut self.engine {
            engine.kill9();
        }
        self.kill_namespace();
    }

    fn kill_namespace(&self) {
        let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output()
        else {
            return;
        };
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            sh(&["kill", "-KILL", pid]);
        }
    }

    /// The node's engine (panics when the cluster has none).
    pub fn engine(&self) -> &engine::Engine {
        self.engine.as_ref().expect("a cluster with engines")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs Docker's CLI against this agent; stdout on success, else stderr as the error.
    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .expect("running docker");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs the agent's own CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway-swarm"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running slipway-swarm");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        self.docker(args).unwrap_or_else(|e| {
            panic!(
                "docker {args:?} on {}: {e}\nlog:\n{}",
                self.name,
                self.log_text()
            )
        })
    }

    pub fn api(&self, method: &str, path: &str, body: &str) -> Reply {
        http(&self.socket, method, path, body)
            .unwrap_or_else(|| panic!("{} did not answer {method} {path}", self.name))
    }

    /// `docker node ls --format '{{json .}}'`, one JSON object per node.
    pub fn node_ls(&self) -> Result<Vec<serde_json::Value>, String> {
        let out = self.docker(&["node", "ls", "--format", "{{json .}}"])?;
        Ok(out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

pub struct Cluster {
    pub bridge: String,
    pub nodes: Vec<Node>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` namespaces h1..hn on a new bridge, agents started.
    pub fn new(n: usize) -> Cluster {
        Cluster::with_args(n, &[])
    }

    /// `n` nodes whose daemons get `args` too.
    pub fn with_args(n: usize, args: &[&str]) -> Cluster {
        Cluster::build(n, args, None)
    }

    /// `n` nodes, each with its own `slipway-engine daemon` in its namespace next to its agent
    /// (`--executor engine`), pulling over plain HTTP from the registry on `registry_port` of the
    /// host, reached at the bridge's address (`Cluster::registry`).
    pub fn with_engines(n: usize, registry_port: u16) -> Cluster {
        Cluster::build(n, &[], Some(registry_port))
    }

    /// The registry's address as the nodes reach it (the bridge's address on the host).
    pub fn registry(&self, port: u16) -> String {
        format!("{}.254:{port}", self.subnet())
    }

    fn subnet(&self) -> String {
        let ip = &self.nodes[0].ip;
        ip.rsplit_once('.')
            .map(|(s, _)| s.to_owned())
            .expect("IPv4")
    }

    fn build(n: usize, args: &[&str], registry_port: Option<u16>) -> Cluster {
        let unique = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", std::process::id() % 10000, unique);
        let bridge = format!("swb{tag}");
        let subnet = format!("10.{}.{}", 100 + std::process::id() % 100, unique % 250);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster {
            bridge: bridge.clone(),
            nodes: Vec::new(),
            dir,
        };
        must(&["ip", "link", "add", &bridge, "type", "bridge"]);
        // Bridged frames must not go through the host's iptables (a FORWARD policy of DROP).
        sh(&[
            "ip",
            "link",
            "set",
            &bridge,
            "type",
            "bridge",
            "nf_call_iptables",
            "0",
        ]);
        must(&["ip", "link", "set", &bridge, "up"]);
        for i in 1..=n {
            let name = format!("h{i}");
            let netns = format!("sw{tag}-{name}");
            let host_if = format!("sw{tag}v{i}");
            let ip = format!("{subnet}.{i}");
            must(&["ip", "netns", "add", &netns]);
            must(&[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
                &netns,
            ]);
            must(&["ip", "link", "set", &host_if, "master", &bridge, "up"]);
            must(&[
                "ip",
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
            must(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
            must(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
            let base = cluster.dir.path().join(&name);
            std::fs::create_dir_all(&base).expect("node dir");
            let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let engine = registry_port.map(|port| {
                let engine = engine::Engine::new(
                    base.join("engine"),
                    &netns,
                    &format!("{subnet}.254:{port}"),
                );
                args.extend([
                    "--executor".to_owned(),
                    "engine".to_owned(),
                    "--engine".to_owned(),
                    engine.socket().display().to_string(),
                ]);
                engine
            });
            cluster.nodes.push(Node {
                name,
                netns,
                ip,
                socket: base.join("swarm.sock"),
                state: base.join("state"),
                log: base.join("log"),
                args,
                engine,
                child: None,
            });
        }
        if registry_port.is_some() {
            cluster.reach_from_host();
        }
        for node in &mut cluster.nodes {
            if let Some(engine) = &mut node.engine {
                engine.start();
            }
            node.start();
        }
        cluster
    }

    /// Gives the bridge an address, so this (host) process reaches the nodes directly.
    pub fn reach_from_host(&self) {
        let node = &self.nodes[0];
        let subnet = node
            .ip
            .rsplit_once('.')
            .map(|(s, _)| s)
            .expect("an IPv4 address");
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{subnet}.254/24"),
            "dev",
            &self.bridge,
        ]);
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("no such node")
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("no such node")
    }

    /// `init` on h1 with Docker's CLI; a short heartbeat for tests.
    pub fn init(&self) {
        let h1 = self.node("h1");
        h1.docker_ok(&[
            "swarm",
            "init",
            "--advertise-addr",
            &h1.ip,
            "--dispatcher-heartbeat",
            "500ms",
        ]);
    }

    pub fn join(&self, name: &str, role: &str) {
        let h1 = self.node("h1");
        let token = h1
            .docker_ok(&["swarm", "join-token", "-q", role])
            .trim()
            .to_string();
        let node = self.node(name);
        node.docker_ok(&[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &node.ip,
            &h1.addr(),
        ]);
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let engine = n.engine.as_ref().map(|e| e.stderr()).unwrap_or_default();
                format!("--- {} ---\n{}{engine}", n.name, n.log_text())
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
            if let Some(engine) = &mut node.engine {
                engine.stop();
            }
            node.kill_namespace();
            sh(&["ip", "netns", "del", &node.netns]);
        }
        sh(&["ip", "link", "del", &self.bridge]);
        // What a killed engine left mounted (overlays, secret tmpfs), deepest first.
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            sh(&["umount", "-l", m]);
        }
    }
}

impl Cluster {
    /// [`wait_for`], with every node's log in the failure.
    pub fn wait<T>(&self, timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A raw HTTP/1.0 request on a unix socket (so malformed requests can be sent as they are).
pub fn http(socket: &Path, method: &str, path: &str, body: &str) -> Option<Reply> {
    raw(socket, format!("{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
}

pub fn raw(socket: &Path, bytes: &[u8]) -> Option<Reply> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    stream.write_all(bytes).ok()?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Reply {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    })
}

impl Node {
    /// SIGSTOP / SIGCONT: the process is paused, not dead (its connections stay open).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("a running agent").to_string();
        assert!(
            sh(&["kill", &format!("-{signal}"), &pid]),
            "kill -{signal} {pid}"
        );
    }

    /// Sends raw bytes to `addr` (host:port) from inside this node's namespace.
    pub fn send_garbage(&self, addr: &str, bytes: &str) {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let script = format!(
            "exec 3<>/dev/tcp/{host}/{port} && printf '{bytes}' >&3 && timeout 2 cat <&3 >/dev/null; exit 0"
        );
        // The agent may close the connection mid-write (SIGPIPE): only its survival matters.
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["bash", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
