//! Real engines for cluster tests: Debian's docker-registry serving every network namespace, a
//! busybox-static image pushed to it, and one `slipway-engine daemon` per node, started in the
//! node's namespace with its own directories (see `Cluster::with_engines`).

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

fn registry_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/registry")
}

/// Debian's docker-registry on a free port of every address (so the nodes reach it through
/// their bridge), stopped on drop.
pub struct Registry {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("0.0.0.0:0")
                .expect("a free port")
                .local_addr()
                .expect("its address")
                .port();
            let out = Command::new(registry_script())
                .args(["start", "--addr", "0.0.0.0", "--port", &port.to_string()])
                .env("SLIPWAY_REGISTRY_DIR", dir.path())
                .output()
                .expect("running scripts/registry");
            if out.status.success() {
                return Self { port, dir };
            }
        }
        panic!("could not start docker-registry");
    }

    /// The address the host pushes to.
    pub fn local(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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

/// A one-layer busybox-static image pushed to `target` (`HOST:PORT/REPO:TAG`); its manifest
/// digest.
pub fn push_busybox_image(target: &str) -> String {
    push_busybox_image_marked(target, "1")
}

/// The same, with `MARK=mark` in its environment (another mark, another digest).
pub fn push_busybox_image_marked(target: &str, mark: &str) -> String {
    use slipway_oci::{Digest, PullOptions, Store};
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("store");
    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for dir in ["bin", "proc", "sys", "dev", "tmp", "etc", "run"] {
        let mut h = header(tar::EntryType::Directory, 0o1777, 0);
        tar.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .expect("tar");
    }
    let busybox = fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", &busybox[..])
        .expect("tar");
    for applet in [
        "sh", "sleep", "touch", "cat", "test", "stat", "rm", "echo", "kill",
    ] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("tar");
    }
    let raw = tar.into_inner().expect("tar");
    let diff_id = Digest::of(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    let layer = gz.finish().expect("gzip");
    let layer_d = store.put_blob(&layer).expect("blob");
    let config = serde_json::to_vec(&json!({
        "architecture": slipway_oci::resolve::host_arch(), "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin", format!("MARK={mark}")]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]}
    }))
    .expect("json");
    let config_d = store.put_blob(&config).expect("blob");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_d.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_d.to_string(), "size": layer.len()}]
    }))
    .expect("json");
    let manifest_d = store.put_blob(&manifest).expect("blob");
    store
        .tag(
            "slipway/busybox:local",
            oci_spec::image::Descriptor::new(
                oci_spec::image::MediaType::ImageManifest,
                manifest.len() as u64,
                manifest_d.to_oci(),
            ),
        )
        .expect("tag");
    slipway_oci::push(
        &store,
        "slipway/busybox:local",
        target,
        &PullOptions::default(),
    )
    .expect("push")
    .to_string()
}

/// The engine binary, built by the test when needed (it is another package's).
pub fn engine_binary() -> PathBuf {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "slipway-engine",
                "--bin",
                "slipway-engine",
            ])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building slipway-engine");
        *built = true;
    }
    // target/debug/deps/TEST-HASH -> target/debug/slipway-engine
    let exe = std::env::current_exe().expect("the test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .join("slipway-engine")
}

/// A `slipway-engine daemon` in a node's network namespace (the host's when `netns` is empty),
/// with its own directories.
pub struct Engine {
    pub dir: PathBuf,
    netns: String,
    insecure: String,
    child: Option<Child>,
}

impl Engine {
    pub fn new(dir: PathBuf, netns: &str, insecure: &str) -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "these tests run real containers and must run as root"
        );
        fs::create_dir_all(&dir).expect("engine dir");
        Self {
            dir,
            netns: netns.to_owned(),
            insecure: insecure.to_owned(),
            child: None,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("engine.sock")
    }

    pub fn start(&mut self) {
        let p = |name: &str| self.dir.join(name).display().to_string();
        let _ = fs::remove_file(self.socket());
        let mut cmd = if self.netns.is_empty() {
            Command::new(engine_binary())
        } else {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/run/netns/{}", self.netns))
                .arg(engine_binary());
            cmd
        };
        cmd.arg("--socket").arg(self.socket()).arg("daemon");
        for (flag, dir) in [
            ("--bundles", "services"),
            ("--log-dir", "log"),
            ("--state-dir", "state"),
            ("--containers", "containers"),
            ("--images", "images"),
            ("--store", "store"),
            ("--volumes", "volumes"),
            ("--settings", "engine.json"),
        ] {
            cmd.arg(flag).arg(p(dir));
        }
        let err = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.err"))
            .expect("engine log");
        let child = cmd
            .args(["--grace", "1"])
            .args(
                Some(&self.insecure)
                    .filter(|i| !i.is_empty())
                    .map(|i| ["--insecure-registry", i.as_str()])
                    .into_iter()
                    .flatten(),
            )
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("starting slipway-engine");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while super::http(&self.socket(), "GET", "/v1/containers", "").is_none() {
            assert!(
                Instant::now() < deadline,
                "no engine socket: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.err")).unwrap_or_default()
    }

    /// The engine's containers of swarm tasks.
    pub fn containers(&self) -> Vec<serde_json::Value> {
        super::http(
            &self.socket(),
            "GET",
            "/v1/containers?label=com.docker.swarm.task.id",
            "",
        )
        .map(|r| r.json().as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
    }

    /// The running containers of swarm tasks: task ID -> (container name, PID).
    pub fn running(&self) -> std::collections::BTreeMap<String, (String, i64)> {
        self.containers()
            .iter()
            .filter(|c| c["state"] == "running")
            .filter_map(|c| {
                Some((
                    c["labels"]["com.docker.swarm.task.id"].as_str()?.to_owned(),
                    (c["name"].as_str()?.to_owned(), c["pid"].as_i64()?),
                ))
            })
            .collect()
    }

    /// `POST /v1/containers/NAME/ACTION` with `body`; the reply.
    pub fn post(&self, name: &str, action: &str, body: &str) -> super::Reply {
        super::http(
            &self.socket(),
            "POST",
            &format!("/v1/containers/{name}/{action}"),
            body,
        )
        .expect("the engine answers")
    }

    /// Runs `cmd` in container `name`: (exit code, output).
    pub fn exec(&self, name: &str, cmd: &[&str]) -> (i64, String) {
        let reply = self.post(name, "exec", &json!({ "cmd": cmd }).to_string());
        let v = reply.json();
        (
            v["exitCode"].as_i64().unwrap_or(-1),
            v["output"].as_str().unwrap_or(&reply.body).to_owned(),
        )
    }

    /// SIGTERM and wait: the engine stops its containers.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&child),
                rustix::process::Signal::TERM,
            );
            let _ = child.wait();
        }
    }

    /// SIGKILL, as the host dying (its containers are killed by the caller).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
        // A killed engine (a host "died") leaves its containers' rootfs, overlay and secret tmpfs
        // mounts behind; detach them, deepest first, so the test's temp dir can go and the
        // host's mount table does not grow with every run.
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| std::path::Path::new(m).starts_with(&self.dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
    }
}
