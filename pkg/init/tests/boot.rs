//! End-to-end: the init as PID 1 of a fresh pid, mount, uts and network namespace, chrooted
//! into a prepared root with real onboot and onshutdown bundles (busybox-static), in test mode
//! (SLIPWAY_INIT_TEST=1: no reboot(2), the host's /sys and /dev bound in). Needs root.
//!
//! It tests the debug binary; set SLIPWAY_INIT_BIN to test another build (the static one).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    for applet in ["sh", "echo", "kill", "poweroff", "sleep"] {
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
