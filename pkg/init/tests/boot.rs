//! End-to-end: the init as PID 1 of a fresh pid, mount, uts and network namespace, chrooted
//! into a prepared root with real onboot and onshutdown bundles (busybox-static), in test mode
//! (SLIPWAY_INIT_TEST=1: no reboot(2), the host's /sys and /dev bound in). Needs root.
//!
//! It tests the debug binary; set SLIPWAY_INIT_BIN to test another build (the static one).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn config(script: &str, pid_namespace: bool) -> Value {
    let caps = json!(["CAP_KILL"]);
    let mut namespaces = vec![
        json!({"type": "mount"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
    ];
    if pid_namespace {
        namespaces.push(json!({"type": "pid"}));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", script],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}
        },
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
        ],
        "linux": {"namespaces": namespaces}
    })
}

fn bundle(dir: &Path, config: Value) {
    let bin = dir.join("rootfs/bin");
    fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "dev"] {
        fs::create_dir_all(dir.join("rootfs").join(d)).unwrap();
    }
    fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    for d in ["run", "tmp", "var"] {
        fs::create_dir_all(dir.join("rootfs").join(d)).unwrap();
    }
    for applet in ["sh", "echo", "kill", "poweroff", "sleep", "grep"] {
        symlink("busybox", bin.join(applet)).unwrap();
    }
    fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
}

fn init_binary() -> PathBuf {
    std::env::var_os("SLIPWAY_INIT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_slipway-init")))
}

#[test]
fn runs_onboot_in_order_reports_failures_and_powers_off_on_busybox_poweroff() {
    assert!(rustix::process::geteuid().is_root(), "this test needs root");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for d in ["etc", "sys", "dev", "proc", "run", "tmp", "var", "usr"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    // A dynamically linked test binary needs the host's libraries; Debian has merged /usr.
    for link in ["lib", "lib64", "bin"] {
        symlink(format!("usr/{link}"), root.join(link)).unwrap();
    }
    fs::write(root.join("etc/hostname"), "e2e-host\n").unwrap();
    fs::copy(init_binary(), root.join("init")).unwrap();
    let onboot = root.join("containers/onboot");
    bundle(
        &onboot.join("000-first"),
        config("echo first-says-hello", true),
    );
    bundle(
        &onboot.join("010-second"),
        config("echo second-fails >&2; exit 3", true),
    );
    // Shares the init's pid namespace, as LinuxKit's `pid: host`: busybox poweroff signals
    // PID 1 (SIGUSR2), the init itself.
    bundle(
        &onboot.join("020-poweroff"),
        config("echo powering-off; poweroff", false),
    );
    bundle(
        &onboot.join("030-skipped"),
        config("echo must-not-run", true),
    );
    bundle(
        &root.join("containers/onshutdown/000-bye"),
        config("echo onshutdown-says-bye", true),
    );

    let script = format!(
        "set -e; mount --make-rprivate /; r={root}; \
         mount --bind $r $r; \
         for d in sys dev usr; do mount --rbind /$d $r/$d; done; \
         exec chroot $r /init",
        root = root.display()
    );
    let out = Command::new("timeout")
        .args([
            "120", "unshare", "--pid", "--mount", "--uts", "--net", "--fork", "sh", "-c", &script,
        ])
        .env("SLIPWAY_INIT_TEST", "1")
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {:?}\nconsole:\n{console}\nstderr:\n{stderr}",
        out.status
    );

    let expected = [
        "slipway-init: hostname e2e-host",
        "slipway-init: onboot 000-first starting",
        "first-says-hello",
        "slipway-init: onboot 000-first finished",
        "second-fails",
        "slipway-init: onboot 010-second failed: exit status 3",
        "powering-off",
        "slipway-init: SIGUSR2 received: power off",
        "slipway-init: onboot 020-poweroff finished",
        "slipway-init: shutdown requested: onboot 030-skipped skipped",
        "slipway-init: boot finished",
        // Steps in order; 030-skipped never ran, and there is no service to start.
        "slipway-init: boot timeline (ms since the kernel started): kernel ",
        " | mounts ",
        " | onboot 000-first ",
        " | onboot 010-second ",
        " | onboot 020-poweroff ",
        "slipway-init: onshutdown 000-bye starting",
        "onshutdown-says-bye",
        "slipway-init: power off",
    ];
    let mut from = 0;
    for line in expected {
        match console[from..].find(line) {
            Some(at) => from += at + line.len(),
            None => {
                panic!("missing or out of order: {line:?}\nconsole:\n{console}\nstderr:\n{stderr}")
            }
        }
    }
    assert!(!console.contains("must-not-run"), "console:\n{console}");
}

/// A root like the image's: /init, /etc/hostname, and the host's /usr (libraries of a dynamic
/// test binary) bound in by the script that enters it.
fn prepare_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["etc", "sys", "dev", "proc", "run", "tmp", "var", "usr"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for link in ["lib", "lib64", "bin"] {
        symlink(format!("usr/{link}"), root.join(link)).unwrap();
    }
    fs::write(root.join("etc/hostname"), "e2e-host\n").unwrap();
    fs::copy(init_binary(), root.join("init")).unwrap();
    root
}

/// The command that runs the init as PID 1 of new namespaces in `root`. With `engine`, a tmpfs
/// over the root's /usr/bin holds the init's binary as /usr/bin/slipway-engine (the same
/// multi-call binary an image installs there).
fn init_command(root: &Path, engine: bool) -> Command {
    let engine = if engine {
        "mount -t tmpfs tmpfs $r/usr/bin; cp $r/init $r/usr/bin/slipway-engine; "
    } else {
        ""
    };
    let script = format!(
        "set -e; mount --make-rprivate /; r={root}; \
         mount --bind $r $r; \
         for d in sys dev usr; do mount --rbind /$d $r/$d; done; {engine}\
         exec chroot $r /init",
        root = root.display()
    );
    let mut cmd = Command::new("timeout");
    cmd.args([
        "120", "unshare", "--pid", "--mount", "--uts", "--net", "--fork", "sh", "-c", &script,
    ])
    .env("SLIPWAY_INIT_TEST", "1");
    cmd
}

/// Asserts that `expected` appear in `console` in this order.
fn assert_in_order(out: &Output, expected: &[&str]) -> String {
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {:?}\nconsole:\n{console}\nstderr:\n{stderr}",
        out.status
    );
    let mut from = 0;
    for line in expected {
        match console[from..].find(line) {
            Some(at) => from += at + line.len(),
            None => {
                panic!("missing or out of order: {line:?}\nconsole:\n{console}\nstderr:\n{stderr}")
            }
        }
    }
    console
}

fn with_annotations(mut config: Value, annotations: Value) -> Value {
    config["annotations"] = annotations;
    config
}

/// The size of the tmpfs on `target` as the container's /proc/mounts shows it, in KiB.
fn tmpfs_size_kib(console: &str, target: &str) -> u64 {
    let line = console
        .lines()
        .find(|l| l.starts_with(&format!("tmpfs {target} tmpfs ")))
        .unwrap_or_else(|| panic!("no tmpfs on {target} in:\n{console}"));
    line.split([' ', ','])
        .find_map(|o| o.strip_prefix("size="))
        .and_then(|s| s.strip_suffix('k'))
        .unwrap_or_else(|| panic!("no size in {line:?}"))
        .parse()
        .unwrap()
}

fn mem_total_kib() -> u64 {
    let info = fs::read_to_string("/proc/meminfo").unwrap();
    let line = info.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn hung_onboot_times_out_poweroff_interrupts_one_and_tmpfs_mounts_are_capped() {
    assert!(rustix::process::geteuid().is_root(), "this test needs root");
    let dir = tempfile::tempdir().unwrap();
    let root = prepare_root(dir.path());
    let onboot = root.join("containers/onboot");
    bundle(
        &onboot.join("000-hang"),
        with_annotations(
            config("echo hanging; exec sleep 600", true),
            json!({"org.slipway.timeout": "1s"}),
        ),
    );
    // The init's /run, /tmp and /var, bound in to be seen in the container's /proc/mounts.
    let mut mounts_config = config("grep -E '^tmpfs /(run|tmp|var) ' /proc/mounts", true);
    for d in ["/run", "/tmp", "/var"] {
        mounts_config["mounts"].as_array_mut().unwrap().push(
            json!({"destination": d, "type": "bind", "source": d, "options": ["rbind", "ro"]}),
        );
    }
    bundle(&onboot.join("010-mounts"), mounts_config);
    // Asks for a poweroff, then hangs (under the default timeout of 5 minutes).
    bundle(
        &onboot.join("020-poweroff-and-hang"),
        config("poweroff; echo still-here; exec sleep 600", false),
    );
    bundle(
        &onboot.join("030-skipped"),
        config("echo must-not-run", true),
    );
    let started = Instant::now();
    let out = init_command(&root, false).output().unwrap();
    let console = assert_in_order(
        &out,
        &[
            "slipway-init: onboot 000-hang starting",
            "hanging",
            "slipway-init: onboot 000-hang timed out after 1s: killed",
            "slipway-init: onboot 010-mounts finished",
            "slipway-init: SIGUSR2 received: power off",
            "slipway-init: onboot 020-poweroff-and-hang still running 5s after the shutdown request: killed",
            "slipway-init: shutdown requested: onboot 030-skipped skipped",
            "slipway-init: power off",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(console.contains("still-here"), "console:\n{console}");
    assert!(!console.contains("must-not-run"), "console:\n{console}");
    // The documented shares of the RAM (pkg/init/src/mounts.rs), give or take a page's rounding.
    let ram = mem_total_kib();
    for (target, percent) in [("/run", 25), ("/tmp", 15), ("/var", 40)] {
        let size = tmpfs_size_kib(&console, target);
        let expected = ram * percent / 100;
        assert!(
            size.abs_diff(expected) <= 8,
            "{target}: size={size}k, expected {percent}% of {ram}k = {expected}k"
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn an_injected_panic_is_survived_by_reexecuting_and_the_services_are_adopted() {
    assert!(rustix::process::geteuid().is_root(), "this test needs root");
    let dir = tempfile::tempdir().unwrap();
    let root = prepare_root(dir.path());
    bundle(
        &root.join("containers/onboot/000-first"),
        config("echo first-says-hello", true),
    );
    // Started before the panic, still running after it: the re-executed init must not start it
    // again, and its poweroff reaches the new init.
    bundle(
        &root.join("containers/services/later"),
        config(
            "echo service-up; sleep 3; echo service-powers-off; poweroff",
            false,
        ),
    );
    bundle(
        &root.join("containers/onshutdown/000-bye"),
        config("echo onshutdown-says-bye", true),
    );
    let out = init_command(&root, false)
        .env("SLIPWAY_INIT_FAULT", "after-boot")
        .output()
        .unwrap();
    let console = assert_in_order(
        &out,
        &[
            "slipway-init: onboot 000-first finished",
            "slipway-init: service later started",
            "slipway-init: boot finished",
            "slipway-init: BUG: ",
            "injected fault at after-boot",
            "slipway-init: re-executed after a crash (1 so far): the boot is not repeated",
            "slipway-init: SIGUSR2 received: power off",
            "slipway-init: onshutdown 000-bye starting",
            "onshutdown-says-bye",
            "slipway-init: power off",
        ],
    );
    for once in [
        "first-says-hello",
        "slipway-init: hostname",
        "slipway-init: service later started",
        "boot finished",
    ] {
        assert_eq!(console.matches(once).count(), 1, "{once:?}:\n{console}");
    }
    assert!(!console.contains("powering off"), "console:\n{console}");
}

/// The processes whose parent is `pid`, with their command names.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after its last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head
            .split_once('(')
            .map(|(_, c)| c.to_owned())
            .unwrap_or_default();
        let ppid = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) {
            out.push((child, comm));
        }
    }
    out
}

fn wait_for(what: &str, mut f: impl FnMut() -> Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(x) = f() {
            return x;
        }
        assert!(Instant::now() < deadline, "no {what} after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_engine_that_dies_is_restarted_by_the_init() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    assert!(rustix::process::geteuid().is_root(), "this test needs root");
    let dir = tempfile::tempdir().unwrap();
    let root = prepare_root(dir.path());
    let child = init_command(&root, true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // timeout, then unshare, then (sh exec'ing chroot exec'ing) the init.
    let timeout_pid = child.id();
    // A failed assertion must not leave the namespace's processes running: SIGKILL to
    // `timeout`'s group takes them all.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(-(self.0 as i32)), Signal::SIGKILL);
        }
    }
    let _cleanup = KillOnDrop(timeout_pid);
    let init = wait_for("init", || {
        let unshare = children(timeout_pid).first()?.0;
        children(unshare)
            .into_iter()
            .find(|(_, c)| c == "init")
            .map(|(p, _)| p)
    });
    let engine_of = |init: u32| {
        move || {
            children(init)
                .into_iter()
                .find(|(_, c)| c == "slipway-engine")
                .map(|(p, _)| p)
        }
    };
    let first = wait_for("engine", engine_of(init));
    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let second = wait_for("restarted engine", || {
        engine_of(init)().filter(|&p| p != first)
    });
    // Let the second engine settle, then power off through the init.
    std::thread::sleep(Duration::from_millis(500));
    assert!(children(init).iter().any(|&(p, _)| p == second));
    kill(Pid::from_raw(init as i32), Signal::SIGUSR2).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_in_order(
        &out,
        &[
            "slipway-init: engine started (pid ",
            "slipway-init: engine (pid ",
            "ended: killed by SIGKILL; restarting it in 1s",
            "slipway-init: engine restarted (pid ",
            "slipway-init: SIGUSR2 received: power off",
            "slipway-init: engine stopped",
            "slipway-init: power off",
        ],
    );
}
