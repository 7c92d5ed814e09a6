//! Runs real containers (busybox-static rootfs, runc-like config.json) through slipway-runtime.
//! Needs root, Debian's busybox-static and, on cgroup v1 or hybrid hosts, the memory controller.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use slipway_runtime::{ExitStatus, Runtime, Stdio};

/// libcontainer clones with the raw clone3 syscall, which runs no fork handlers: cloning while
/// another test thread holds a libc lock could deadlock the child. One container at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const BUSYBOX: &str = "/bin/busybox";

struct Fixture {
    dir: tempfile::TempDir,
    runtime: Runtime,
}

impl Fixture {
    fn new() -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "these tests run real containers and must run as root"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = Runtime::new(dir.path().join("state")).expect("runtime");
        Fixture { dir, runtime }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A bundle whose root holds busybox and its applet links, in `rootfs/` or, for the
    /// writable layout, in `lower/` with an empty `rootfs/`.
    fn bundle(&self, name: &str, config: Value, layered: bool) -> PathBuf {
        let bundle = self.path(name);
        let image = bundle.join(if layered { "lower" } else { "rootfs" });
        fs::create_dir_all(image.join("bin")).unwrap();
        fs::create_dir_all(bundle.join("rootfs")).unwrap();
        for dir in ["proc", "sys", "dev", "tmp", "etc"] {
            fs::create_dir_all(image.join(dir)).unwrap();
        }
        fs::copy(BUSYBOX, image.join("bin/busybox")).expect("busybox-static is installed");
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                symlink("busybox", image.join("bin").join(applet)).unwrap();
            }
        }
        fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        bundle
    }

    fn log(&self, name: &str) -> (fs::File, PathBuf) {
        let path = self.path(name);
        (fs::File::create(&path).unwrap(), path)
    }

    /// Runs the bundle to completion with stdout and stderr in one log; returns the status and
    /// the log's text.
    fn run(&self, id: &str, bundle: &Path) -> (ExitStatus, String) {
        let (out, path) = self.log(&format!("{id}.log"));
        let err = out.try_clone().unwrap();
        let mut container = self
            .runtime
            .create_and_start(
                id,
                bundle,
                Stdio {
                    stdin: None,
                    stdout: Some(out.into()),
                    stderr: Some(err.into()),
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let status = container.wait().unwrap();
        container.delete().unwrap();
        (status, fs::read_to_string(path).unwrap())
    }
}

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// The configuration the builder writes for a container: runc's defaults (namespaces, masked
/// paths, default capabilities, read-only root) with the given command.
fn config(id: &str, script: &str) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", script],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "slipway-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]}
        ],
        "linux": {
            "cgroupsPath": format!("/slipway-test/{id}"),
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[test]
fn exit_status_zero_and_stdout_reach_the_log() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new();
    let id = unique("zero");
    let bundle = f.bundle("b", config(&id, "echo hello from $(hostname)"), false);
    let (status, log) = f.run(&id, &bundle);
    assert_eq!(status, ExitStatus::Exited(0));
    assert_eq!(log, "hello from slipway-test\n");
}

#[test]
fn exit_status_three_is_reported() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new();
    let id = unique("three");
    let bundle = f.bundle("b", config(&id, "echo failing >&2; exit 3"), false);
    let (status, log) = f.run(&id, &bundle);
    assert_eq!(status, ExitStatus::Exited(3));
    assert!(!status.success());
    assert_eq!(log, "failing\n");
}

#[test]
fn read_only_root_refuses_writes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new();
    let id = unique("ro");
    let bundle = f.bundle("b", config(&id, "touch /bin/new-file"), false);
    let (status, log) = f.run(&id, &bundle);
    assert_eq!(status, ExitStatus::Exited(1), "log: {log}");
    assert!(log.contains("Read-only file system"), "log: {log}");
    assert!(!bundle.join("rootfs/bin/new-file").exists());
}

#[test]
fn layered_bundle_gets_a_writable_overlay_that_leaves_the_image_alone() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new();
    let id = unique("rw");
    let mut cfg = config(&id, "echo written > /etc/new-file && cat /etc/new-file");
    cfg["root"]["readonly"] = json!(false);
    let bundle = f.bundle("b", cfg, true);
    let (status, log) = f.run(&id, &bundle);
    assert_eq!(status, ExitStatus::Exited(0), "log: {log}");
    assert_eq!(log, "written\n");
    // The write went to the tmpfs upper directory, which delete() removed with the overlay.
    assert!(!bundle.join("lower/etc/new-file").exists());
    assert!(!bundle.join("rootfs/etc/new-file").exists());
    assert!(!f.runtime.state_dir().join("overlay").join(&id).exists());
}

#[test]
fn without_cap_net_admin_links_cannot_be_changed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new();
    let script = "ip link set lo up && echo lo-is-up";

    let id = unique("nocap");
    let bundle = f.bundle("without", config(&id, script), false);
    let (status, log) = f.run(&id, &bundle);
    assert_ne!(status, ExitStatus::Exited(0), "log: {log}");
    assert!(log.contains("not permitted"), "log: {log}");

    // The same command with the capability granted works, so the failure above is the
    // missing capability and nothing else.
    let id = unique("cap");
    let mut cfg = config(&id, script);
    for set in ["bounding", "effective", "permitted"] {
        cfg["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_NET_ADMIN"));
    }
    let bundle = f.bundle("with", cfg, false);
    let (status, log) = f.run(&id, &bundle);
    assert_eq!(status, ExitStatus::Exited(0), "log: {log}");
    assert_eq!(log, "lo-is-up\n");
}

/// Where the memory limit of a process's cgroup lives, on v2 or v1 hierarchies.
fn memory_limit_file(pid: i32) -> PathBuf {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let path = path.trim_start_matches('/');
        if unified && controllers.is_empty() {
            return Path::new("/sys/fs/cgroup").join(path).join("memory.max");
        }
        if !unified && controllers.split(',').any(|c| c == "memory") {
            return Path::new("/sys/fs/cgroup/memory")
                .join(path)
                .join("memory.limit_in_bytes");
        }
    }
    panic!("no memory cgroup for {pid} in:\n{cgroups}");
}

#[test]
fn memory_limit_is_set_on_the_cgroup_and_enforced() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new();
    let id = unique("mem");
    // Wait for a go-ahead file so the host can look at the cgroup first, then allocate a
    // 100 MiB buffer (dd's block) against a 32 MiB limit.
    let mut cfg = config(
        &id,
        "while [ ! -e /tmp/go ]; do sleep 0.1; done; \
         dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null; echo dd status $?",
    );
    cfg["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
    cfg["mounts"].as_array_mut().unwrap().pop(); // keep /tmp on the image: written from the host
    cfg["root"]["readonly"] = json!(false);
    let bundle = f.bundle("b", cfg, false);
    let (out, path) = f.log("mem.log");
    let mut container = f
        .runtime
        .create_and_start(
            &id,
            &bundle,
            Stdio {
                stdin: None,
                stderr: Some(out.try_clone().unwrap().into()),
                stdout: Some(out.into()),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = container.pid().unwrap();
    let limit = fs::read_to_string(memory_limit_file(pid)).unwrap();
    assert_eq!(limit.trim(), "33554432");
    fs::write(bundle.join("rootfs/tmp/go"), "").unwrap();
    let status = container.wait().unwrap();
    container.delete().unwrap();
    let log = fs::read_to_string(path).unwrap();
    // The OOM killer ends dd (SIGKILL, 128 + 9); the shell reports it.
    assert_eq!(status, ExitStatus::Exited(0), "log: {log}");
    assert_eq!(log, "dd status 137\n");
}

#[test]
fn kill_ends_a_running_container_and_wait_reports_the_signal() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new();
    let id = unique("kill");
    let bundle = f.bundle("b", config(&id, "sleep 600"), false);
    let mut container = f
        .runtime
        .create_and_start(&id, &bundle, Stdio::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(container.try_wait().unwrap(), None);
    let pid = container.pid().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    container.kill(Signal::SIGKILL, false).unwrap();
    assert_eq!(
        container.wait().unwrap(),
        ExitStatus::Signaled(Signal::SIGKILL)
    );
    let state = f.runtime.state_dir().join(&id);
    assert!(state.exists());
    container.delete().unwrap();
    assert!(!state.exists());
}

#[test]
fn missing_config_is_an_error_naming_the_bundle() {
    let f = Fixture::new();
    let bundle = f.path("empty");
    fs::create_dir_all(&bundle).unwrap();
    let err = f
        .runtime
        .create_and_start("none", &bundle, Stdio::default())
        .unwrap_err();
    assert!(
        err.to_string().contains(&bundle.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_caller_blocking_signals_does_not_pass_its_mask_to_the_container() {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new();
    let id = unique("mask");
    let bundle = f.bundle("b", config(&id, "grep SigBlk /proc/self/status"), false);
    // As PID 1 does: every signal it handles is blocked and read from a signalfd.
    let mut blocked = SigSet::empty();
    blocked.add(Signal::SIGTERM);
    blocked.add(Signal::SIGUSR2);
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut old)).unwrap();
    let (status, log) = f.run(&id, &bundle);
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).unwrap();
    assert_eq!(status, ExitStatus::Exited(0), "log: {log}");
    assert_eq!(log, "SigBlk:\t0000000000000000\n");
}
