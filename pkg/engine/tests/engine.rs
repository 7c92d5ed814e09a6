//! Drives the built `slipway-engine` daemon over its socket with real containers (busybox-static
//! rootfs). Needs root and Debian's busybox-static. Each test runs its own daemon with its own
//! socket, bundle directory, log directory and state directory.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use slipway_engine::client::{Client, container_path};

const BUSYBOX: &str = "/bin/busybox";
const BIN: &str = env!("CARGO_BIN_EXE_slipway-engine");

struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
    client: Client,
    runtime: tokio::runtime::Runtime,
    test: String,
    /// More daemon arguments.
    extra: Vec<String>,
}

impl Daemon {
    fn new(test: &str) -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "these tests run real containers and must run as root"
        );
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("services")).unwrap();
        let client = Client::new(dir.path().join("engine.sock"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Self {
            dir,
            child: None,
            client,
            runtime,
            test: format!("{test}-{}", std::process::id()),
            extra: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A service bundle running `script` under busybox sh, with the given annotations.
    ///
    /// The engine under test is a dynamically linked debug build (in an image it is static),
    /// and its init runs inside the containers: they see the host's /usr, read-only, for its
    /// loader and libraries.
    fn service(&self, name: &str, script: &str, annotations: Value) {
        let bundle = self.path("services").join(name);
        let rootfs = bundle.join("rootfs");
        for dir in ["bin", "proc", "sys", "dev", "tmp", "etc", "usr"] {
            fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        symlink("usr/lib", rootfs.join("lib")).unwrap();
        symlink("usr/lib64", rootfs.join("lib64")).unwrap();
        fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("busybox-static is installed");
        for applet in [
            "sh", "sleep", "echo", "cat", "trap", "test", "touch", "rm", "id", "hostname", "dd",
        ] {
            let _ = symlink("busybox", rootfs.join("bin").join(applet));
        }
        let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        let config = json!({
            "ociVersion": "1.0.2",
            "annotations": annotations,
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["/bin/sh", "-c", script],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": name,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "nodev", "mode=1777"]},
                {"destination": "/usr", "type": "bind", "source": "/usr",
                 "options": ["rbind", "ro"]}
            ],
            "linux": {
                "cgroupsPath": format!("/slipway-engine-test/{}-{name}", self.test),
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}
                ]
            }
        });
        fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    }

    fn start(&mut self) {
        let child = Command::new(BIN)
            .arg("--socket")
            .arg(self.client.socket())
            .arg("daemon")
            .arg("--bundles")
            .arg(self.path("services"))
            .arg("--log-dir")
            .arg(self.path("log"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--containers")
            .arg(self.path("containers"))
            .arg("--images")
            .arg(self.path("images"))
            .arg("--store")
            .arg(self.path("store"))
            .args(["--grace", "2"])
            .arg("--volumes")
            .arg(self.path("volumes"))
            .arg("--settings")
            .arg(self.path("engine.json"))
            .args(&self.extra)
            .stderr(fs::File::create(self.path("daemon.err")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.client.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "no socket; daemon: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.path("daemon.err")).unwrap_or_default()
    }

    fn request(&self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let reply = self
            .runtime
            .block_on(
                self.client
                    .request(method, path, body.map(|b| b.as_bytes().to_vec())),
            )
            .unwrap_or_else(|e| panic!("{e}; daemon: {}", self.stderr()));
        let value = reply.json();
        (reply.status, value)
    }

    fn inspect(&self, name: &str) -> Value {
        let (status, info) = self.request(Method::GET, &container_path(name, ""), None);
        assert_eq!(status, StatusCode::OK, "{info}");
        info
    }

    fn logs(&self, name: &str) -> String {
        let reply = self
            .runtime
            .block_on(
                self.client
                    .request(Method::GET, &container_path(name, "logs"), None),
            )
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        String::from_utf8(reply.body.to_vec()).unwrap()
    }

    /// Polls `inspect` until `check` holds, for at most `secs` seconds.
    fn wait_for(&self, name: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let info = self.inspect(name);
            if check(&info) {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never reached the expected state: {info}\nlog:\n{}\ndaemon:\n{}",
                self.logs(name),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Polls the log until `needle` appears `count` times.
    fn wait_for_log(&self, name: &str, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.logs(name).matches(needle).count() < count {
            assert!(Instant::now() < deadline, "{}", self.logs(name));
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM to the daemon; returns its exit code.
    fn terminate(&mut self) -> i32 {
        let mut child = self.child.take().expect("a running daemon");
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
    }
}

fn state(info: &Value) -> &str {
    info["state"].as_str().unwrap_or("")
}

fn process_exists(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn start_stop_and_logs_through_the_api_and_the_cli() {
    let mut d = Daemon::new("basic");
    d.service(
        "web",
        "echo hello from $(hostname); echo oops >&2; exec sleep 600",
        json!({}),
    );
    d.start();
    let info = d.wait_for("web", 10, |i| state(i) == "running");
    let pid = info["pid"].as_i64().unwrap();
    assert!(process_exists(pid));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.logs("web").contains("stderr oops") {
        assert!(Instant::now() < deadline, "{}", d.logs("web"));
        std::thread::sleep(Duration::from_millis(25));
    }
    let text = d.logs("web");
    assert!(text.contains(" stdout hello from web\n"), "{text}");
    let file = fs::read_to_string(d.path("log/web.log")).unwrap();
    assert!(file.contains(" stdout hello from web\n"), "{file}");

    // The CLI lists it.
    let ps = Command::new(BIN)
        .arg("--socket")
        .arg(d.client.socket())
        .arg("ps")
        .output()
        .unwrap();
    assert!(ps.status.success());
    let ps = String::from_utf8(ps.stdout).unwrap();
    assert!(
        ps.lines().any(|l| l.starts_with("web ")
            && l.contains("running")
            && l.contains(&pid.to_string())),
        "{ps}"
    );

    // Under the engine's init, sleep is not its namespace's PID 1: SIGTERM ends it.
    let (status, info) = d.request(
        Method::POST,
        &container_path("web", "stop"),
        Some(r#"{"timeout": 1}"#),
    );
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(state(&info), "stopped");
    assert_eq!(info["last_exit"], "exit status 143", "{info}");
    assert!(!process_exists(pid));
    assert!(info["pid"].is_null());

    let (status, info) = d.request(Method::POST, &container_path("web", "start"), None);
    assert_eq!(status, StatusCode::OK, "{info}");
    let info = d.wait_for("web", 10, |i| state(i) == "running");
    assert_ne!(info["pid"].as_i64().unwrap(), pid);
    assert_eq!(info["runs"], 2);

    // logs -f prints the past lines, then new ones as they come.
    let mut follow = Command::new(BIN)
        .arg("--socket")
        .arg(d.client.socket())
        .args(["logs", "-f", "web"])
        .stdout(fs::File::create(d.path("follow.out")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = d.request(
        Method::POST,
        &container_path("web", "restart"),
        Some(r#"{"timeout": 1}"#),
    );
    assert_eq!(status, StatusCode::OK);
    d.wait_for("web", 10, |i| i["runs"] == 3 && state(i) == "running");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = fs::read_to_string(d.path("follow.out")).unwrap();
        if out.matches("stdout hello from web").count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "follow output:\n{out}");
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(d.terminate(), 0, "{}", d.stderr());
}

#[test]
fn a_container_killed_with_sigkill_comes_back_with_growing_backoff() {
    let mut d = Daemon::new("always");
    d.service(
        "svc",
        "echo up; exec sleep 600",
        json!({"org.slipway.restart": "always"}),
    );
    d.start();
    let first = d.wait_for("svc", 10, |i| state(i) == "running");
    let pid1 = first["pid"].as_i64().unwrap();
    // Each run is killed only after it has written its line, so the log shows every run.
    d.wait_for_log("svc", " stdout up", 1);

    let (status, info) = d.request(
        Method::POST,
        &container_path("svc", "kill"),
        Some(r#"{"signal": "SIGKILL"}"#),
    );
    assert_eq!(status, StatusCode::OK, "{info}");
    let killed = Instant::now();
    let second = d.wait_for("svc", 10, |i| {
        state(i) == "running" && i["pid"].as_i64() != Some(pid1)
    });
    let first_delay = killed.elapsed();
    assert_eq!(second["restarts"], 1);
    assert_eq!(second["last_exit"], "killed by SIGKILL");
    let pid2 = second["pid"].as_i64().unwrap();
    assert!(!process_exists(pid1));
    d.wait_for_log("svc", " stdout up", 2);

    // Killed again before 10 s of stable running: the delay doubles.
    let (status, _) = d.request(
        Method::POST,
        &container_path("svc", "kill"),
        Some(r#"{"signal": 9}"#),
    );
    assert_eq!(status, StatusCode::OK);
    let killed = Instant::now();
    let third = d.wait_for("svc", 10, |i| {
        state(i) == "running" && i["pid"].as_i64() != Some(pid2)
    });
    let second_delay = killed.elapsed();
    assert_eq!(third["restarts"], 2);
    assert!(first_delay >= Duration::from_millis(100), "{first_delay:?}");
    assert!(
        second_delay >= Duration::from_millis(200),
        "{second_delay:?}"
    );
    let logs = d.logs("svc");
    let delays: Vec<&str> = logs
        .lines()
        .filter_map(|l| l.split(" engine restarting in ").nth(1))
        .collect();
    assert_eq!(delays, ["100ms", "200ms"], "{logs}");
    d.wait_for_log("svc", " stdout up", 3);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn on_failure_3_gives_up_after_four_runs() {
    let mut d = Daemon::new("onfailure");
    d.service(
        "flaky",
        "echo run; exit 3",
        json!({"org.slipway.restart": "on-failure:3"}),
    );
    // A service that succeeds is not restarted by on-failure.
    d.service(
        "fine",
        "echo done",
        json!({"org.slipway.restart": "on-failure"}),
    );
    d.start();
    let info = d.wait_for("flaky", 20, |i| state(i) == "exited");
    assert_eq!(info["runs"], 4, "{info}");
    assert_eq!(info["restarts"], 3);
    assert_eq!(info["exit_code"], 3);
    // It stays given up.
    std::thread::sleep(Duration::from_secs(2));
    let info = d.inspect("flaky");
    assert_eq!(state(&info), "exited");
    assert_eq!(info["runs"], 4);
    let logs = d.logs("flaky");
    assert_eq!(logs.matches(" stdout run").count(), 4, "{logs}");
    let delays: Vec<&str> = logs
        .lines()
        .filter_map(|l| l.split(" engine restarting in ").nth(1))
        .collect();
    assert_eq!(delays, ["100ms", "200ms", "400ms"], "{logs}");

    let fine = d.wait_for("fine", 10, |i| state(i) == "exited");
    assert_eq!(fine["runs"], 1);
    assert_eq!(fine["exit_code"], 0);
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_dependent_starts_only_after_its_dependency_and_stops_before_it() {
    let mut d = Daemon::new("deps");
    // Names chosen so that name order would start the dependent first.
    d.service(
        "a-app",
        "exec sleep 600",
        json!({"org.slipway.dependsOn": "b-db"}),
    );
    // A dependency whose bundle is broken never runs, so its dependent never starts either.
    d.service("b-db", "exec sleep 600", json!({}));
    d.service(
        "c-orphan",
        "echo must-not-run",
        json!({"org.slipway.dependsOn": "d-broken"}),
    );
    d.service(
        "d-broken",
        "echo bad",
        json!({"org.slipway.restart": "sometimes"}),
    );
    d.start();
    let app = d.wait_for("a-app", 10, |i| state(i) == "running");
    let db = d.inspect("b-db");
    assert_eq!(state(&db), "running");
    let app_started = humantime::parse_rfc3339(app["started_at"].as_str().unwrap()).unwrap();
    let db_started = humantime::parse_rfc3339(db["started_at"].as_str().unwrap()).unwrap();
    assert!(app_started >= db_started, "{app} {db}");
    let app_log = d.logs("a-app");
    let waited = app_log.find("engine waiting for b-db");
    let started = app_log.find("engine started").unwrap();
    assert!(waited.is_none_or(|w| w < started), "{app_log}");

    let broken = d.inspect("d-broken");
    assert_eq!(state(&broken), "failed");
    assert!(
        broken["error"].as_str().unwrap().contains("sometimes"),
        "{broken}"
    );
    let orphan = d.inspect("c-orphan");
    assert_eq!(state(&orphan), "failed", "{orphan}");
    assert_eq!(orphan["runs"], 0);
    assert!(!d.logs("c-orphan").contains("must-not-run"));
    let (status, _) = d.request(Method::POST, &container_path("c-orphan", "start"), None);
    assert_eq!(status, StatusCode::CONFLICT);

    // SIGTERM: the dependent stops first, then its dependency; the daemon exits 0.
    let pids = [app["pid"].as_i64().unwrap(), db["pid"].as_i64().unwrap()];
    assert_eq!(d.terminate(), 0, "{}", d.stderr());
    for pid in pids {
        assert!(!process_exists(pid));
    }
    let err = d.stderr();
    let app_stop = err.find("service a-app stopped").expect(&err);
    let db_stop = err.find("service b-db stopped").expect(&err);
    assert!(app_stop < db_stop, "{err}");
    assert!(!d.client.socket().exists());
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let mut d = Daemon::new("bad");
    d.service(
        "svc",
        "exec sleep 600",
        json!({"org.slipway.restart": "always"}),
    );
    d.start();
    let before = d.wait_for("svc", 10, |i| state(i) == "running");

    let (status, body) = d.request(Method::GET, "/v1/containers/nope", None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");
    let (status, body) = d.request(Method::POST, &container_path("nope", "stop"), None);
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    for (path, body) in [
        (container_path("svc", "kill"), Some("{\"signal\": ")),
        (
            container_path("svc", "kill"),
            Some("{\"signal\": \"SIGNOPE\"}"),
        ),
        (container_path("svc", "kill"), Some("{\"sig\": \"KILL\"}")),
        (container_path("svc", "kill"), None),
        (container_path("svc", "stop"), Some("[1, 2")),
        (container_path("svc", "stop"), Some("{\"timeout\": -1}")),
        (container_path("../x", "stop"), None),
        ("/v1/containers/../x/stop".to_owned(), None),
        ("/v1/containers/..".to_owned(), None),
    ] {
        let method = if path.ends_with("/..") {
            Method::GET
        } else {
            Method::POST
        };
        let (status, reply) = d.request(method, &path, body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body:?}: {reply}");
        assert!(reply["error"].is_string(), "{reply}");
    }
    let (status, _) = d.request(Method::PUT, &container_path("svc", ""), None);
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // Only containers made by `run` can be removed.
    let (status, _) = d.request(Method::DELETE, &container_path("svc", ""), None);
    assert_eq!(status, StatusCode::CONFLICT);
    for path in [
        "/v2/containers",
        "/v1/containers/svc/nope",
        "/v1/containers/svc/stop/x",
    ] {
        let (status, reply) = d.request(Method::GET, path, None);
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply, json!({"message": "page not found"}), "{path}");
    }
    let (status, _) = d.request(
        Method::POST,
        &container_path("svc", "stop"),
        Some(&" ".repeat(3 << 20)),
    );
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let after = d.inspect("svc");
    assert_eq!(state(&after), "running");
    assert_eq!(after["pid"], before["pid"]);
    assert_eq!(after["runs"], 1);
    assert_eq!(after["restarts"], 0);
    assert!(process_exists(after["pid"].as_i64().unwrap()));
    let (_, list) = d.request(Method::GET, "/v1/containers", None);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn slow_clients_are_cut_off_and_cannot_hold_the_api() {
    use std::io::{Read, Write};
    let mut d = Daemon::new("slow");
    d.service("svc", "exec sleep 600", json!({}));
    d.start();
    d.wait_for("svc", 10, |i| state(i) == "running");
    // More stalled clients than the engine serves at once, each halfway through its headers.
    let stalled: Vec<_> = (0..slipway_engine::api::MAX_CONNECTIONS + 16)
        .map(|_| {
            let mut stream = std::os::unix::net::UnixStream::connect(d.client.socket()).unwrap();
            stream
                .write_all(b"GET /v1/containers HTTP/1.1\r\nHost: x\r\nX-Slow:")
                .unwrap();
            stream
        })
        .collect();
    let start = Instant::now();
    let limit = slipway_engine::api::HEADER_TIMEOUT + Duration::from_secs(5);
    let (status, list) = d.request(Method::GET, "/v1/containers", None);
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(start.elapsed() < limit, "ps took {:?}", start.elapsed());
    // The engine has hung up on the stalled ones.
    for mut stream in stalled.into_iter().take(4) {
        stream.set_read_timeout(Some(limit)).unwrap();
        let mut buf = Vec::new();
        let read = stream.read_to_end(&mut buf);
        assert!(
            read.is_ok() || start.elapsed() < limit,
            "a stalled client still holds its connection after {:?}: {read:?}",
            start.elapsed()
        );
        assert!(start.elapsed() < limit, "{:?}", start.elapsed());
    }
    assert_eq!(d.terminate(), 0);
}

/// Rewrites `bundle/config.json` of service `name` through `edit`.
fn edit_config(d: &Daemon, name: &str, edit: impl FnOnce(&mut Value)) {
    let path = d.path("services").join(name).join("config.json");
    let mut config: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    fs::write(&path, config.to_string()).unwrap();
}

fn health(info: &Value) -> &str {
    info["health"].as_str().unwrap_or("")
}

#[test]
fn a_dependent_waits_for_its_dependency_to_be_healthy_and_unhealthy_is_reported() {
    let mut d = Daemon::new("health");
    // /tmp is a tmpfs of the container's own mount namespace: the check passes only if it
    // runs inside the container.
    d.service(
        "db",
        "sleep 1; touch /tmp/ready; exec sleep 600",
        json!({"org.slipway.healthcheck": json!({
            "test": ["/bin/test", "-e", "/tmp/ready"],
            "interval": "200ms", "timeout": "1s", "retries": 2, "startPeriod": "0s"
        }).to_string()}),
    );
    d.service(
        "app",
        "exec sleep 600",
        json!({"org.slipway.dependsOn": "db"}),
    );
    d.start();
    let db = d.wait_for("db", 10, |i| state(i) == "running");
    assert_eq!(health(&db), "starting", "{db}");
    let app = d.inspect("app");
    assert_eq!(state(&app), "waiting", "{app}");
    let db = d.wait_for("db", 10, |i| health(i) == "healthy");
    assert_eq!(db["health_failures"], 0);
    let app = d.wait_for("app", 10, |i| state(i) == "running");
    assert!(app["health"].is_null(), "{app}");
    // The dependent started only once the check passed, a second or so after db started.
    let db_started = humantime::parse_rfc3339(db["started_at"].as_str().unwrap()).unwrap();
    let app_started = humantime::parse_rfc3339(app["started_at"].as_str().unwrap()).unwrap();
    assert!(
        app_started.duration_since(db_started).unwrap() >= Duration::from_millis(900),
        "{db} {app}"
    );
    let log = d.logs("db");
    assert!(log.contains("engine health: healthy"), "{log}");

    // Break it from inside: two failures in a row make it unhealthy.
    let (status, reply) = d.request(
        Method::POST,
        &container_path("db", "exec"),
        Some(r#"{"cmd": ["rm", "/tmp/ready"]}"#),
    );
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["exitCode"], 0, "{reply}");
    let db = d.wait_for("db", 10, |i| health(i) == "unhealthy");
    assert!(db["health_failures"].as_u64().unwrap() >= 2, "{db}");
    assert!(
        db["health_output"]
            .as_str()
            .unwrap()
            .contains("exit code 1"),
        "{db}"
    );
    let ps = Command::new(BIN)
        .arg("--socket")
        .arg(d.client.socket())
        .arg("ps")
        .output()
        .unwrap();
    let ps = String::from_utf8(ps.stdout).unwrap();
    assert!(
        ps.lines()
            .any(|l| l.starts_with("db ") && l.contains("unhealthy")),
        "{ps}"
    );
    // And healthy again once the file is back.
    let (status, _) = d.request(
        Method::POST,
        &container_path("db", "exec"),
        Some(r#"{"cmd": ["touch", "/tmp/ready"]}"#),
    );
    assert_eq!(status, StatusCode::OK);
    d.wait_for("db", 10, |i| {
        health(i) == "healthy" && i["health_failures"] == 0
    });
    assert_eq!(d.terminate(), 0, "{}", d.stderr());
}

#[test]
fn exec_runs_in_the_containers_namespaces_as_its_user_and_returns_the_exit_code() {
    let mut d = Daemon::new("exec");
    d.service("svc", "exec sleep 600", json!({}));
    edit_config(&d, "svc", |c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1001});
    });
    d.service("done", "true", json!({}));
    d.start();
    let info = d.wait_for("svc", 10, |i| state(i) == "running");
    let script = "echo host=$(hostname) uid=$(id -u) gid=$(id -g); \
                  echo pid1=$(cat /proc/1/cmdline); echo oops >&2; exit 7";
    let body = json!({"cmd": ["sh", "-c", script]}).to_string();
    let (status, reply) = d.request(Method::POST, &container_path("svc", "exec"), Some(&body));
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["exitCode"], 7, "{reply}");
    assert_eq!(reply["timedOut"], false);
    let output = reply["output"].as_str().unwrap();
    // Its own hostname (UTS namespace), user, and the service's process as PID 1: the
    // engine's init, in front of the command.
    assert!(output.contains("host=svc uid=1000 gid=1001\n"), "{output}");
    assert!(
        output.contains("pid1=slipway-shim/bin/sh-cexec sleep 600\n"),
        "{output}"
    );
    assert!(output.contains("oops\n"), "{output}");
    // The command ran and ended; the service goes on.
    let after = d.inspect("svc");
    assert_eq!(after["pid"], info["pid"]);
    assert_eq!(state(&after), "running");

    // The CLI prints the output and exits with the command's code.
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(d.client.socket())
        .args(["exec", "svc", "sh", "-c", "echo via-cli; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-cli\n");

    // A command past its timeout is killed.
    let started = Instant::now();
    let (status, reply) = d.request(
        Method::POST,
        &container_path("svc", "exec"),
        Some(r#"{"cmd": ["sleep", "30"], "timeout": 1}"#),
    );
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["timedOut"], true);
    assert_eq!(reply["exitCode"], 137);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Refused: a container that does not run, an unknown one, an empty command, a missing
    // executable.
    d.wait_for("done", 10, |i| state(i) == "exited");
    let (status, _) = d.request(
        Method::POST,
        &container_path("done", "exec"),
        Some(r#"{"cmd": ["true"]}"#),
    );
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = d.request(
        Method::POST,
        &container_path("nope", "exec"),
        Some(r#"{"cmd": ["true"]}"#),
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    for body in [r#"{"cmd": []}"#, r#"{"command": ["true"]}"#, "{"] {
        let (status, _) = d.request(Method::POST, &container_path("svc", "exec"), Some(body));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let (status, reply) = d.request(
        Method::POST,
        &container_path("svc", "exec"),
        Some(r#"{"cmd": ["/no/such/program"]}"#),
    );
    assert!(
        status == StatusCode::INTERNAL_SERVER_ERROR || reply["exitCode"] != 0,
        "{status} {reply}"
    );
    assert_eq!(d.inspect("svc")["pid"], info["pid"]);
    assert_eq!(d.terminate(), 0, "{}", d.stderr());
}

#[test]
fn a_service_past_its_memory_limit_is_oom_killed_and_reported() {
    let mut d = Daemon::new("oom");
    // dd's 64 MiB buffer cannot fit under a 32 MiB limit (this host has no swap; memsw caps
    // it where the v1 controller has swap accounting).
    d.service(
        "hog",
        "exec dd if=/dev/zero of=/dev/null bs=64M count=4",
        json!({}),
    );
    d.service(
        "fits",
        "exec dd if=/dev/zero of=/dev/null bs=1M count=4",
        json!({}),
    );
    for name in ["hog", "fits"] {
        edit_config(&d, name, |c| {
            c["linux"]["resources"] = json!({"memory": {"limit": 32 * 1024 * 1024}});
        });
    }
    d.start();
    let hog = d.wait_for("hog", 20, |i| state(i) == "exited");
    // dd is killed by SIGKILL; the init in front of it exits with 128 + 9.
    assert_eq!(hog["exit_code"], 137, "{hog}");
    assert_eq!(hog["oom_killed"], true, "{hog}");
    let last = hog["last_exit"].as_str().unwrap();
    assert!(
        last.contains("137") && last.contains("out of memory"),
        "{hog}"
    );
    let fits = d.wait_for("fits", 20, |i| state(i) == "exited");
    assert_eq!(fits["exit_code"], 0, "{fits}");
    assert_eq!(fits["oom_killed"], false, "{fits}");
    assert_eq!(d.terminate(), 0, "{}", d.stderr());
}

/// Debian's docker-registry on a free loopback port (through `scripts/registry`), stopped on
/// drop, also when the test fails.
struct Registry {
    port: u16,
    dir: tempfile::TempDir,
}

fn registry_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/registry")
}

impl Registry {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Another process may take the port between this probe and the registry's bind.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let out = Command::new(registry_script())
                .args(["start", "--port", &port.to_string()])
                .env("SLIPWAY_REGISTRY_DIR", dir.path())
                .output()
                .unwrap();
            if out.status.success() {
                return Self { port, dir };
            }
            eprintln!(
                "registry start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        panic!("could not start docker-registry");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(registry_script())
            .args(["stop", "--port", &self.port.to_string()])
            .env("SLIPWAY_REGISTRY_DIR", self.dir.path())
            .status();
    }
}

/// Puts a one-layer busybox-static image into a store of its own and pushes it to `target`.
fn push_busybox_image(target: &str) -> String {
    use slipway_oci::{Digest, PullOptions, Store};
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    for dir in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .unwrap();
    }
    let busybox = fs::read(BUSYBOX).expect("busybox-static is installed");
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", &busybox[..])
        .unwrap();
    for applet in ["sh", "echo", "sleep", "touch", "cat", "ls"] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let diff_id = Digest::of(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let layer = gz.finish().unwrap();
    let layer_d = store.put_blob(&layer).unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": slipway_oci::resolve::host_arch(), "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]}
    }))
    .unwrap();
    let config_d = store.put_blob(&config).unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_d.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_d.to_string(), "size": layer.len()}]
    }))
    .unwrap();
    let manifest_d = store.put_blob(&manifest).unwrap();
    store
        .tag(
            "slipway/engine-run:local",
            oci_spec::image::Descriptor::new(
                oci_spec::image::MediaType::ImageManifest,
                manifest.len() as u64,
                manifest_d.to_oci(),
            ),
        )
        .unwrap();
    slipway_oci::push(
        &store,
        "slipway/engine-run:local",
        target,
        &PullOptions::default(),
    )
    .unwrap()
    .to_string()
}

/// Entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn run_pulls_an_image_from_a_registry_and_rm_removes_the_container() {
    let registry = Registry::start();
    let image = format!("127.0.0.1:{}/engine-run/busybox:1", registry.port);
    push_busybox_image(&image);
    let mut d = Daemon::new("run");
    d.service("svc", "exec sleep 600", json!({}));
    d.start();

    // Bad requests are refused before anything is pulled.
    for (body, status) in [
        (json!({"name": "x"}), StatusCode::BAD_REQUEST),
        (
            json!({"image": image, "name": "../x"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"image": image, "restart": "sometimes"}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"image": image, "cmd": []}), StatusCode::BAD_REQUEST),
        (json!({"image": image, "name": "svc"}), StatusCode::CONFLICT),
    ] {
        let (got, reply) = d.request(Method::POST, "/v1/containers", Some(&body.to_string()));
        assert_eq!(got, status, "{body}: {reply}");
        assert!(reply["error"].is_string(), "{reply}");
    }
    assert!(entries(&d.path("containers")).is_empty());
    assert!(entries(&d.path("images")).is_empty());

    // A missing image: a clear error, and nothing left behind.
    let missing = format!("127.0.0.1:{}/engine-run/missing:1", registry.port);
    let (status, reply) = d.request(
        Method::POST,
        "/v1/containers",
        Some(&json!({"image": missing, "name": "ghost"}).to_string()),
    );
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains(&missing), "{error}");
    let (status, _) = d.request(Method::GET, &container_path("ghost", ""), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(entries(&d.path("containers")).is_empty());
    assert!(entries(&d.path("images")).is_empty());
    assert!(!d.path("log/ghost.log").exists());

    let body = json!({
        "image": image,
        "name": "web",
        "cmd": ["/bin/sh", "-c", "echo hello-from-run; sleep 600"],
        "restart": "on-failure"
    });
    let (status, info) = d.request(Method::POST, "/v1/containers", Some(&body.to_string()));
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{info}\ndaemon:\n{}",
        d.stderr()
    );
    assert_eq!(state(&info), "running", "{info}");
    assert_eq!(info["restart"], "on-failure");
    let pid = info["pid"].as_i64().unwrap();
    assert!(process_exists(pid));
    d.wait_for_log("web", "hello-from-run", 1);
    let (_, list) = d.request(Method::GET, "/v1/containers", None);
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["svc", "web"]);

    // The bundle: the builder's config, the unpacked image as the overlay's lower directory.
    let bundle = d.path("containers/web");
    assert_eq!(info["bundle"].as_str().unwrap(), bundle.to_str().unwrap());
    let config: Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["root"]["readonly"], false);
    assert_eq!(config["annotations"]["org.slipway.restart"], "on-failure");
    let images = entries(&d.path("images"));
    assert_eq!(images.len(), 1, "{images:?}");
    let image_dir = d.path("images").join(&images[0]);
    assert_eq!(fs::read_link(bundle.join("lower")).unwrap(), image_dir);
    assert!(image_dir.join("bin/busybox").is_file());
    assert!(d.path("state/service-web").exists());
    // The root is writable and the writes stay out of the shared image.
    let (status, reply) = d.request(
        Method::POST,
        &container_path("web", "exec"),
        Some(&json!({"cmd": ["/bin/sh", "-c", "touch /written && ls /written"]}).to_string()),
    );
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["exitCode"], 0, "{reply}");
    assert!(!image_dir.join("written").exists());

    // The name is taken now; a service of the image cannot be removed.
    let (status, reply) = d.request(Method::POST, "/v1/containers", Some(&body.to_string()));
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");
    let (status, reply) = d.request(Method::DELETE, &container_path("svc", ""), None);
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");
    assert_eq!(state(&d.inspect("svc")), "running");

    let (status, reply) = d.request(
        Method::DELETE,
        &container_path("web", ""),
        Some(r#"{"timeout": 1}"#),
    );
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (status, _) = d.request(Method::GET, &container_path("web", ""), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!process_exists(pid));
    assert!(!bundle.exists());
    assert!(entries(&d.path("containers")).is_empty());
    assert!(!d.path("state/service-web").exists());
    assert!(!d.path("state/overlay/service-web").exists());
    assert!(!d.path("log/web.log").exists());
    let (status, _) = d.request(Method::DELETE, &container_path("web", ""), None);
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The CLI: run with a generated name (the image is unpacked already), then rm.
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--socket")
            .arg(d.client.socket())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}\ndaemon:\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.stderr()
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let name = cli(&[
        "run",
        &image,
        "--",
        "/bin/sh",
        "-c",
        "echo from-the-cli; sleep 600",
    ]);
    assert_eq!(name, "busybox-1");
    d.wait_for_log(&name, "from-the-cli", 1);
    assert_eq!(state(&d.inspect(&name)), "running");
    assert_eq!(cli(&["rm", "-t", "1", &name]), name);
    let (status, _) = d.request(Method::GET, &container_path(&name, ""), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(entries(&d.path("containers")).is_empty());
    assert_eq!(d.terminate(), 0);
}

/// The "stopped in N ms" times the daemon logged: per service, and for the whole shutdown
/// ("every service").
fn stop_times(stderr: &str) -> std::collections::BTreeMap<String, u64> {
    stderr
        .lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" stopped in ")?;
            // "service NAME stopped in", or "every service stopped in".
            let mut words = head.rsplit(' ');
            let name = match words.next()? {
                "service" => words.next()?,
                name => name,
            };
            let ms = tail.split_once(" ms")?.0.parse().ok()?;
            Some((name.to_owned(), ms))
        })
        .collect()
}

fn stop_timed(d: &Daemon, name: &str, body: Option<&str>) -> (Value, Duration) {
    let started = Instant::now();
    let (status, info) = d.request(Method::POST, &container_path(name, "stop"), body);
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(state(&info), "stopped", "{info}");
    (info, started.elapsed())
}

#[test]
fn a_command_that_ignores_sigterm_as_pid_1_stops_at_once_under_the_init_and_late_without() {
    let mut d = Daemon::new("init");
    d.service("shimmed", "exec sleep 1000", json!({}));
    d.service(
        "bare",
        "exec sleep 1000",
        json!({"org.slipway.init": "false", "org.slipway.stopGracePeriod": "1500ms"}),
    );
    d.start();
    for name in ["shimmed", "bare"] {
        d.wait_for(name, 10, |i| state(i) == "running");
    }
    // The engine's grace period is 2 s; under the init the command's own SIGTERM ends it.
    let (info, took) = stop_timed(&d, "shimmed", None);
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(info["last_exit"], "exit status 143", "{info}");
    // Without, sleep is PID 1 and ignores SIGTERM: SIGKILL after its own grace period.
    let (info, took) = stop_timed(&d, "bare", None);
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert_eq!(info["last_exit"], "killed by SIGKILL", "{info}");
    assert!(
        d.logs("bare")
            .contains("still running 1s 500ms after SIGTERM: SIGKILL"),
        "{}",
        d.logs("bare")
    );
    // A timeout in the request wins over the service's grace period.
    d.request(Method::POST, &container_path("bare", "start"), None);
    d.wait_for("bare", 10, |i| state(i) == "running");
    let (_, took) = stop_timed(&d, "bare", Some(r#"{"timeout": 0}"#));
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // The same at the engine's shutdown.
    for name in ["shimmed", "bare"] {
        d.request(Method::POST, &container_path(name, "start"), None);
        d.wait_for(name, 10, |i| state(i) == "running");
    }
    assert_eq!(d.terminate(), 0, "{}", d.stderr());
    let times = stop_times(&d.stderr());
    assert!(times["shimmed"] < 1000, "{times:?}\n{}", d.stderr());
    assert!(times["bare"] >= 1500, "{times:?}");
}

#[test]
fn the_grace_period_is_honoured_and_independent_services_stop_in_parallel() {
    let mut d = Daemon::new("parallel");
    // SIGTERM is ignored by the shell and, inherited, by its sleep: no init can help, the
    // grace period runs out.
    for name in ["slow-a", "slow-b"] {
        d.service(
            name,
            "trap '' TERM; sleep 1000",
            json!({"org.slipway.stopGracePeriod": "2s"}),
        );
    }
    // Stopped only once slow-a has: after one grace period, then at once.
    d.service(
        "after-a",
        "exec sleep 1000",
        json!({"org.slipway.dependsOn": "slow-a", "org.slipway.stopGracePeriod": "5s"}),
    );
    d.service("quick", "exec sleep 1000", json!({}));
    d.start();
    for name in ["slow-a", "slow-b", "after-a", "quick"] {
        d.wait_for(name, 10, |i| state(i) == "running");
    }
    assert_eq!(d.terminate(), 0, "{}", d.stderr());
    let err = d.stderr();
    let times = stop_times(&err);
    for name in ["slow-a", "slow-b"] {
        assert!((2000..3500).contains(&times[name]), "{times:?}\n{err}");
    }
    assert!(times["quick"] < 1000, "{times:?}");
    assert!(times["after-a"] < 1000, "{times:?}");
    // One grace period for the whole shutdown, not one per slow service.
    let total = times["every"];
    assert!((2000..3500).contains(&total), "{times:?}\n{err}");
    // The dependent stopped before its dependency was sent anything.
    let dependent = err.find("service after-a stopped").expect(&err);
    let dependency = err.find("service slow-a stopped").expect(&err);
    assert!(dependent < dependency, "{err}");
}

/// Processes whose parent is `pid` and that are zombies.
fn zombie_children(pid: i64) -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // "PID (COMM) STATE PPID ..."; COMM may hold spaces, so split after its ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&pid.to_string().as_str())
        })
        .count()
}

#[test]
fn the_init_passes_signals_on_reaps_orphans_and_exits_as_its_command_did() {
    let mut d = Daemon::new("shim");
    d.service("three", "echo up; exit 3", json!({}));
    d.service("signalled", "exec sleep 1000", json!({}));
    // Each subshell leaves its sleep to PID 1, which must reap it when it ends.
    let orphans = "(sleep 0.1 &); (sleep 0.1 &); exec sleep 1000";
    d.service("orphans", orphans, json!({}));
    d.service(
        "orphans-bare",
        orphans,
        json!({"org.slipway.init": "false"}),
    );
    d.start();
    let three = d.wait_for("three", 10, |i| state(i) == "exited");
    assert_eq!(three["exit_code"], 3, "{three}");
    assert_eq!(three["last_exit"], "exit status 3", "{three}");

    d.wait_for("signalled", 10, |i| state(i) == "running");
    let (status, body) = d.request(
        Method::POST,
        &container_path("signalled", "kill"),
        Some(r#"{"signal": "SIGUSR1"}"#),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let info = d.wait_for("signalled", 10, |i| state(i) == "exited");
    assert_eq!(info["exit_code"], 128 + 10, "{info}");

    let shimmed = d.wait_for("orphans", 10, |i| state(i) == "running");
    let bare = d.wait_for("orphans-bare", 10, |i| state(i) == "running");
    std::thread::sleep(Duration::from_secs(1));
    let (shimmed, bare) = (
        shimmed["pid"].as_i64().unwrap(),
        bare["pid"].as_i64().unwrap(),
    );
    assert_eq!(zombie_children(shimmed), 0);
    // Without the init, sleep is PID 1 and never waits: the orphans stay zombies.
    assert_eq!(zombie_children(bare), 2);
    assert_eq!(d.terminate(), 0, "{}", d.stderr());
}

/// Runs the engine binary as the shim (argv[0] selects it).
fn shim(args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(BIN);
    cmd.arg0(slipway_engine::shim::NAME).args(args);
    cmd
}

#[test]
fn the_shim_alone_exits_as_its_command_did_and_passes_signals_to_it() {
    let code = |args: &[&str]| shim(args).output().unwrap().status.code();
    assert_eq!(code(&[BUSYBOX, "sh", "-c", "exit 3"]), Some(3));
    assert_eq!(code(&[BUSYBOX, "sh", "-c", "kill -USR1 $$"]), Some(138));
    assert_eq!(code(&[BUSYBOX, "sh", "-c", "kill -KILL $$"]), Some(137));
    let missing = shim(&["/no/such/program"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(127));
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(message.contains("/no/such/program"), "{message}");
    assert_eq!(code(&[]), Some(127));

    // SIGTERM to the shim reaches the command's process group: the shell and its background
    // sleep both die of it.
    let mut child = shim(&[BUSYBOX, "sh", "-c", "sleep 100 & sleep 100"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = rustix::process::Pid::from_child(&child);
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let group = children
        .split_whitespace()
        .next()
        .and_then(|p| rustix::process::Pid::from_raw(p.parse().ok()?))
        .expect("the shim has a child");
    assert!(rustix::process::test_kill_process_group(group).is_ok());
    let started = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(started.elapsed() < Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(2);
    while rustix::process::test_kill_process_group(group).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the command's background sleep survived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Daemon {
    /// `request`, failing when the engine takes longer than `limit` to answer.
    fn request_within(&self, limit: Duration, method: Method, path: &str) -> (StatusCode, Value) {
        let reply = self
            .runtime
            .block_on(async {
                tokio::time::timeout(limit, self.client.request(method, path, None)).await
            })
            .unwrap_or_else(|_| {
                panic!(
                    "no answer to {path} in {limit:?}; daemon: {}",
                    self.stderr()
                )
            })
            .unwrap_or_else(|e| panic!("{e}; daemon: {}", self.stderr()));
        let value = reply.json();
        (reply.status, value)
    }

    /// SIGKILL to the daemon (it cleans nothing up), and its socket removed so that `start`
    /// waits for the next one.
    fn kill9(&mut self) {
        let mut child = self.child.take().expect("a running daemon");
        child.kill().unwrap();
        child.wait().unwrap();
        fs::remove_file(self.client.socket()).unwrap();
    }
}

#[test]
fn a_stuck_container_start_leaves_the_api_answering_and_can_be_stopped() {
    let mut d = Daemon::new("stuck");
    d.service("web", "echo up; exec sleep 600", json!({}));
    d.service("stuck", "echo never; exec sleep 600", json!({}));
    // libcontainer runs createRuntime hooks in the process that creates the container and
    // waits for them: this start hangs for a minute.
    edit_config(&d, "stuck", |config| {
        config["hooks"] =
            json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "60"]}]});
    });
    d.start();
    std::thread::sleep(Duration::from_millis(500));
    // The engine answers while the hook runs.
    let (status, list) = d.request_within(Duration::from_secs(2), Method::GET, "/v1/containers");
    assert_eq!(status, StatusCode::OK, "{list}");
    d.wait_for("web", 10, |i| state(i) == "running");
    let began = Instant::now();
    let (status, list) = d.request_within(Duration::from_secs(2), Method::GET, "/v1/containers");
    assert_eq!(status, StatusCode::OK, "{list}");
    let stuck = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "stuck")
        .unwrap()
        .clone();
    assert_eq!(state(&stuck), "starting", "{stuck}");
    // An exec into the other container works meanwhile.
    let (status, reply) = d.request(
        Method::POST,
        &container_path("web", "exec"),
        Some(r#"{"cmd": ["echo", "hi"], "timeout": 5}"#),
    );
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["output"], "hi\n", "{reply}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    // A stop gives the start up: the helper is killed and nothing of the container is left.
    let stopping = Instant::now();
    let (status, info) = d.request(Method::POST, &container_path("stuck", "stop"), None);
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(state(&info), "stopped", "{info}");
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopping.elapsed()
    );
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    assert!(!d.path("state/service-stuck").exists());
    // The hook the killed helper ran came to the engine (a subreaper), which reaped it.
    let engine = d.child.as_ref().unwrap().id() as i64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while zombie_children(engine) > 0 {
        assert!(
            Instant::now() < deadline,
            "the engine left zombies: {:?}",
            fs::read_to_string(format!("/proc/{engine}/task/{engine}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .map(|p| fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(state(&d.inspect("web")), "running");
    assert_eq!(d.terminate(), 0, "{}", d.stderr());
}

/// The highest `tick N` in a log.
fn last_tick(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split(" stdout tick ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_restarted_engine_takes_over_its_running_services() {
    let mut d = Daemon::new("adopt");
    d.service(
        "web",
        "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done",
        json!({"org.slipway.restart": "always"}),
    );
    d.service(
        "other",
        "echo up; exec sleep 600",
        json!({"org.slipway.restart": "always"}),
    );
    d.start();
    let web = d.wait_for("web", 10, |i| state(i) == "running");
    let other = d.wait_for("other", 10, |i| state(i) == "running");
    let (web_pid, other_pid) = (web["pid"].as_i64().unwrap(), other["pid"].as_i64().unwrap());
    d.wait_for_log("web", "tick 3\n", 1);
    d.kill9();
    assert!(process_exists(web_pid) && process_exists(other_pid));
    std::thread::sleep(Duration::from_millis(500));
    d.start();

    // Taken over, not started again.
    let web = d.wait_for("web", 10, |i| state(i) == "running");
    assert_eq!(web["pid"].as_i64(), Some(web_pid), "{web}");
    let other = d.wait_for("other", 10, |i| state(i) == "running");
    assert_eq!(other["pid"].as_i64(), Some(other_pid), "{other}");
    assert!(
        d.logs("web")
            .contains(&format!("taken over (pid {web_pid})"))
    );
    // Its output goes on into the log, what it wrote while no engine ran included.
    let before = last_tick(&d.logs("web"));
    d.wait_for_log("web", &format!("tick {}\n", before + 5), 1);
    let log = d.logs("web");
    let ticks: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split(" stdout tick ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let after: Vec<u64> = ticks.iter().copied().filter(|&n| n > 3).collect();
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "lines lost or repeated: {ticks:?}"
    );
    let file = fs::read_to_string(d.path("log/web.log")).unwrap();
    assert!(
        file.contains(&format!(" stdout tick {}\n", before + 5)),
        "{file}"
    );

    // Supervised again: an exit is noticed through its pidfd and the policy restarts it.
    let (status, _) = d.request(
        Method::POST,
        &container_path("other", "kill"),
        Some(r#"{"signal": "SIGKILL"}"#),
    );
    assert_eq!(status, StatusCode::OK);
    let other = d.wait_for("other", 10, |i| {
        state(i) == "running" && i["pid"].as_i64() != Some(other_pid)
    });
    assert!(
        other["last_exit"].as_str().unwrap().contains("unknown"),
        "{other}"
    );
    assert!(!process_exists(other_pid));

    // Stop works on a taken-over container and removes it.
    let (status, info) = d.request(
        Method::POST,
        &container_path("web", "stop"),
        Some(r#"{"timeout": 2}"#),
    );
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(state(&info), "stopped", "{info}");
    assert!(!process_exists(web_pid));
    assert!(!d.path("state/service-web").exists());
    assert_eq!(d.terminate(), 0, "{}", d.stderr());
}

/// Runs `cmd` in container `name`; its exit code and output.
fn exec(d: &Daemon, name: &str, cmd: &[&str]) -> (i64, String) {
    let (status, reply) = d.request(
        Method::POST,
        &container_path(name, "exec"),
        Some(&json!({ "cmd": cmd }).to_string()),
    );
    assert_eq!(status, StatusCode::OK, "{cmd:?}: {reply}");
    (
        reply["exitCode"].as_i64().unwrap(),
        reply["output"].as_str().unwrap().to_owned(),
    )
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

/// A cgroup setting of process `pid`: the v1 file of `controller` when the controller is
/// mounted on its own (hybrid hosts), else the v2 file.
fn cgroup_value(pid: i64, controller: &str, v1: &str, v2: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1_path = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then_some(path)
    });
    let path = match v1_path {
        Some(path) => Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(path.trim_start_matches('/'))
            .join(v1),
        None => {
            let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            Path::new("/sys/fs/cgroup")
                .join(path.trim_start_matches('/'))
                .join(v2)
        }
    };
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

#[test]
fn run_takes_a_tasks_env_mounts_secret_files_resources_labels_and_health_check() {
    use base64::Engine as _;
    let registry = Registry::start();
    let image = format!("127.0.0.1:{}/engine-task/busybox:1", registry.port);
    let digest = push_busybox_image(&image);
    let mut d = Daemon::new("task");
    d.start();
    let host_dir = d.path("host-dir");
    fs::create_dir_all(&host_dir).unwrap();
    fs::write(host_dir.join("greeting"), "hello from the host").unwrap();
    let secret = base64::engine::general_purpose::STANDARD.encode("s3cret");
    let task = json!({
        "image": image,
        "name": "web.1.task1",
        "command": ["/bin/sh", "-c"],
        "args": ["pwd > /scratch/pwd; env > /scratch/env; exec sleep 600"],
        "env": ["A=1", "PATH=/bin"],
        "workdir": "/tmp",
        "user": "1000:1000",
        "hostname": "task-host",
        "labels": {"com.docker.swarm.task.id": "task1", "tier": "front"},
        "mounts": [
            {"type": "bind", "source": host_dir, "target": "/host", "readonly": true},
            {"type": "volume", "source": "data", "target": "/data"},
            {"type": "tmpfs", "target": "/scratch"}
        ],
        "files": [{"target": "/run/secrets/pw", "data": secret, "uid": 1000, "gid": 1000, "mode": 0o400}],
        "resources": {"memory": 64 << 20, "nanoCpus": 500_000_000, "pids": 100},
        "healthcheck": {"test": ["CMD-SHELL", "test -f /scratch/ready"], "interval": "200ms", "retries": 2},
        "stopGracePeriod": "1s",
        "network": "host"
    });

    // Every bad field is refused before anything is pulled, with the field named.
    for (field, value, needle) in [
        ("env", json!(["NOEQ"]), "env"),
        (
            "mounts",
            json!([{"type": "bind", "source": "/no/such/dir", "target": "/x"}]),
            "bind source path does not exist",
        ),
        (
            "mounts",
            json!([{"type": "nfs", "target": "/x"}]),
            "mounts[0]",
        ),
        (
            "files",
            json!([{"target": "relative", "data": ""}]),
            "files[0].target",
        ),
        ("healthcheck", json!({"test": ["WHAT"]}), "healthcheck.test"),
        ("network", json!("bridge"), "network"),
        ("resources", json!({"memory": 10}), "resources.memory"),
        ("stopGracePeriod", json!("soon"), "stopGracePeriod"),
        ("bogus", json!(1), "unknown field"),
    ] {
        let mut body = task.clone();
        body[field] = value;
        let (status, reply) = d.request(Method::POST, "/v1/containers", Some(&body.to_string()));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(needle), "{field}: {error}");
    }
    assert!(entries(&d.path("containers")).is_empty());
    assert!(entries(&d.path("images")).is_empty());

    let (status, info) = d.request(Method::POST, "/v1/containers", Some(&task.to_string()));
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{info}\ndaemon:\n{}",
        d.stderr()
    );
    assert_eq!(info["labels"]["tier"], "front", "{info}");
    assert_eq!(info["image"], image);
    assert_eq!(info["image_digest"], digest);
    // Starting until the check passes; the command makes it pass.
    assert_eq!(info["health"], "starting", "{info}");
    let name = "web.1.task1";
    let (code, _) = exec(&d, name, &["/bin/busybox", "touch", "/scratch/ready"]);
    assert_eq!(code, 0);
    d.wait_for(name, 10, |i| i["health"] == "healthy");

    let (code, env) = exec(&d, name, &["/bin/busybox", "cat", "/scratch/env"]);
    assert_eq!(code, 0);
    assert!(env.lines().any(|l| l == "A=1"), "{env}");
    for (cmd, expected) in [
        (&["/bin/busybox", "cat", "/scratch/pwd"][..], "/tmp"),
        (&["/bin/busybox", "id", "-u"], "1000"),
        (&["/bin/busybox", "hostname"], "task-host"),
        (&["/bin/busybox", "cat", "/run/secrets/pw"], "s3cret"),
        (
            &["/bin/busybox", "stat", "-c", "%a %u", "/run/secrets/pw"],
            "400 1000",
        ),
        (
            &["/bin/busybox", "cat", "/host/greeting"],
            "hello from the host",
        ),
    ] {
        let (code, out) = exec(&d, name, cmd);
        assert_eq!((code, out.trim()), (0, expected), "{cmd:?}");
    }
    // The secret and the bind are read-only; the volume is a directory of the engine's.
    let (code, _) = exec(&d, name, &["/bin/sh", "-c", "echo x > /run/secrets/pw"]);
    assert_ne!(code, 0);
    let (code, _) = exec(&d, name, &["/bin/sh", "-c", "echo x > /host/greeting"]);
    assert_ne!(code, 0);
    // The node's network: its interfaces, not only loopback.
    let (_, net) = exec(&d, name, &["/bin/busybox", "cat", "/proc/net/dev"]);
    let host_net = fs::read_to_string("/proc/net/dev").unwrap();
    assert_eq!(net.lines().count(), host_net.lines().count(), "{net}");
    // The secret lives on a tmpfs of the container's own, never on disk.
    let files = fs::canonicalize(d.path("containers"))
        .unwrap()
        .join(name)
        .join("files");
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with(&format!("tmpfs {} tmpfs", files.display()))),
        "{mounts}"
    );
    // Resources in the container's cgroup.
    let pid = info["pid"].as_i64().unwrap();
    assert_eq!(
        cgroup_value(pid, "memory", "memory.limit_in_bytes", "memory.max"),
        (64u64 << 20).to_string()
    );
    let cpu = cgroup_value(pid, "cpu", "cpu.cfs_quota_us", "cpu.max");
    assert!(cpu == "50000" || cpu == "50000 100000", "{cpu}");
    assert_eq!(cgroup_value(pid, "pids", "pids.max", "pids.max"), "100");

    // Label filters.
    for (query, expected) in [
        ("label=tier=front", vec![name]),
        ("label=tier", vec![name]),
        ("label=tier=back", vec![]),
        (
            "label=tier=front&label=com.docker.swarm.task.id=task1",
            vec![name],
        ),
        ("label=nope", vec![]),
    ] {
        let (status, list) = d.request(Method::GET, &format!("/v1/containers?{query}"), None);
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(names(&list), expected, "{query}");
    }
    let (status, _) = d.request(Method::GET, "/v1/containers?tier=front", None);
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The image's digest through the registry.
    let (status, reply) = d.request(
        Method::GET,
        &format!("/v1/distribution?image={image}"),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["digest"], digest);

    // Removed: the files' tmpfs with it.
    let (status, reply) = d.request(Method::DELETE, &container_path(name, ""), None);
    assert_eq!(status, StatusCode::OK, "{reply}");
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&files.display().to_string()), "{mounts}");
    assert!(entries(&d.path("containers")).is_empty());
    assert_eq!(d.terminate(), 0);
}

/// Forwards connections to `192.0.2.2`-like addresses (`listen`) to `target`, so a loopback
/// registry is reached through an address that is not loopback.
fn forward(listen: std::net::TcpListener, target: std::net::SocketAddr) {
    std::thread::spawn(move || {
        for client in listen.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(target) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c, mut s) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// The first IPv4 address of this machine that is not loopback.
fn outside_address() -> std::net::Ipv4Addr {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
        .find(|ip: &std::net::Ipv4Addr| !ip.is_loopback())
        .expect("an address that is not loopback")
}

#[test]
fn a_plain_http_registry_off_loopback_needs_insecure_registry() {
    let registry = Registry::start();
    let listen = std::net::TcpListener::bind((outside_address(), 0)).unwrap();
    let outside = listen.local_addr().unwrap();
    forward(listen, ([127, 0, 0, 1], registry.port).into());
    let digest = push_busybox_image(&format!("127.0.0.1:{}/insecure/busybox:1", registry.port));
    let image = format!("{outside}/insecure/busybox:1");
    let body = json!({"image": image, "name": "far", "cmd": ["/bin/sleep", "600"]}).to_string();

    let mut d = Daemon::new("insecure");
    d.start();
    let (status, reply) = d.request(Method::POST, "/v1/containers", Some(&body));
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains(&image), "{reply}");
    let (status, _) = d.request(
        Method::GET,
        &format!("/v1/distribution?image={image}"),
        None,
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(d.terminate(), 0);

    // Named in the settings file (as in an image) it is pulled over plain HTTP.
    let mut d = Daemon::new("insecure2");
    fs::write(
        d.path("engine.json"),
        json!({"insecureRegistries": [outside.to_string()]}).to_string(),
    )
    .unwrap();
    d.start();
    let (status, reply) = d.request(
        Method::GET,
        &format!("/v1/distribution?image={image}"),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{reply}\n{}", d.stderr());
    assert_eq!(reply["digest"], digest);
    let (status, reply) = d.request(Method::POST, "/v1/containers", Some(&body));
    assert_eq!(status, StatusCode::CREATED, "{reply}\n{}", d.stderr());
    assert_eq!(state(&reply), "running");
    assert_eq!(d.terminate(), 0);

    // And so with the flag.
    let mut d = Daemon::new("insecure3");
    d.extra = vec!["--insecure-registry".to_owned(), outside.to_string()];
    d.start();
    let (status, reply) = d.request(
        Method::GET,
        &format!("/v1/distribution?image={image}"),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn a_run_container_that_ended_stays_ended_when_the_engine_starts_again() {
    let registry = Registry::start();
    let image = format!("127.0.0.1:{}/engine-ended/busybox:1", registry.port);
    push_busybox_image(&image);
    let mut d = Daemon::new("ended");
    d.start();
    let body =
        json!({"image": image, "name": "once", "cmd": ["/bin/sh", "-c", "echo ran; exit 3"]});
    let (status, reply) = d.request(Method::POST, "/v1/containers", Some(&body.to_string()));
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    d.wait_for("once", 10, |i| state(i) == "exited");
    assert_eq!(d.terminate(), 0);
    d.start();
    std::thread::sleep(Duration::from_millis(500));
    let info = d.inspect("once");
    assert_eq!(state(&info), "exited", "{info}");
    assert_eq!(info["exit_code"], 3);
    // Run once, before the restart, and not again.
    // Not run again by the new engine.
    assert_eq!(info["runs"], 0, "{info}");
    assert_eq!(d.terminate(), 0);
}
