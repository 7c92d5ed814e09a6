//! The packages a host is built from (pkg/dhcpcd, pkg/getty), each booted for real under QEMU
//! (TCG) through `slipway run qemu`, whose default NIC is virtio-net on QEMU's user network: the
//! boots run in parallel threads. Each package's image is also built twice to the same digest.
//!
//! Needs qemu-system-x86.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

const PACKAGES: [&str; 2] = ["pkg/dhcpcd", "pkg/getty"];

fn cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let cache = root().join("target/slipway-test-cache");
        let status = slipway(&cache)
            .args([
                "pkg",
                "build",
                "kernel",
                "pkg/init",
                "pkg/busybox",
                "pkg/engine",
            ])
            .args(PACKAGES)
            .status()
            .unwrap();
        assert!(status.success(), "building the packages failed");
        cache
    })
}

fn slipway(cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slipway"));
    cmd.current_dir(root()).env("SLIPWAY_CACHE", cache);
    cmd
}

fn build(dir: &Path, name: &str, manifests: &[&str]) {
    let out = slipway(cache())
        .args(["build", "--name", name, "--dir"])
        .arg(dir)
        .args(manifests)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building {manifests:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `slipway run qemu` on `prefix` with `args`; its console (stdout) is collected as it comes.
struct Vm {
    child: std::process::Child,
    console: Arc<Mutex<String>>,
}

impl Vm {
    fn start(prefix: &Path, args: &[&str]) -> Vm {
        let mut child = slipway(cache())
            .args(["run", "qemu", "--mem", "512", "--timeout", "240"])
            .args(args)
            .arg(prefix)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let console = Arc::new(Mutex::new(String::new()));
        let mut stdout = child.stdout.take().unwrap();
        let sink = console.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Vm { child, console }
    }

    fn text(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    /// Waits until the console shows `needle` (true), or the machine stops or `limit` passes.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.text().contains(needle) {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(200));
                return self.text().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        let _ = stdin.write_all(format!("{line}\r").as_bytes());
        let _ = stdin.flush();
    }

    /// Waits for the machine to stop by itself; kills it after `limit`. True if it exited 0.
    fn finish(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                return status.success();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// dhcpcd, one shot as an onboot step, gets eth0 an address and a resolver from QEMU's user
/// network (10.0.2.15, DNS 10.0.2.3), which `slipway run qemu` attaches by default.
fn dhcpcd_gets_an_address_from_qemus_user_network() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), "dhcp", &["tests/data/host-dhcpcd.yml"]);
    let mut vm = Vm::start(&dir.path().join("dhcp"), &[]);
    let clean = vm.finish(Duration::from_secs(240));
    let text = vm.text();
    assert!(
        text.contains("slipway-test: addr") && text.contains("inet 10.0.2.15/24"),
        "no DHCP address on eth0:\n{text}"
    );
    assert!(
        text.contains("slipway-test: resolv nameserver 10.0.2.3"),
        "no resolv.conf from the lease:\n{text}"
    );
    assert!(clean, "no clean poweroff:\n{text}");
}

/// getty with INSECURE=true (examples/getty.yml): a root shell on the serial console, driven
/// through QEMU's stdio; the shell has the host's /dev (bound, see slipway-bundle's
/// dev_bind_hook) and busybox's `ip`, and powers the machine off.
fn getty_gives_a_root_shell_on_the_serial_console() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), "getty", &["examples/getty.yml"]);
    let mut vm = Vm::start(&dir.path().join("getty"), &["--console"]);
    assert!(
        vm.wait_for("built-in shell", Duration::from_secs(200)),
        "no shell on the console:\n{}",
        vm.text()
    );
    // The shell comes up a moment after getty: type until it answers.
    let mut answered = false;
    for _ in 0..30 {
        vm.type_line("echo shell-$((6*7))-$(id -u) $(ls /dev/ttyS0); ip -4 -o addr show dev eth0");
        if vm.wait_for("shell-42-0 /dev/ttyS0", Duration::from_secs(3)) {
            answered = true;
            break;
        }
    }
    let text = vm.text();
    assert!(answered, "no root shell on the console:\n{text}");
    vm.type_line("poweroff");
    let clean = vm.finish(Duration::from_secs(60));
    let text = vm.text();
    assert!(clean, "no clean poweroff from the console shell:\n{text}");
}

#[test]
fn host_packages_boot() {
    cache();
    let tests: [(&str, fn()); 2] = [
        ("dhcpcd", dhcpcd_gets_an_address_from_qemus_user_network),
        ("getty", getty_gives_a_root_shell_on_the_serial_console),
    ];
    let handles: Vec<_> = tests
        .into_iter()
        .map(|(name, test)| (name, std::thread::spawn(test)))
        .collect();
    let failed: Vec<&str> = handles
        .into_iter()
        .filter_map(|(name, h)| h.join().is_err().then_some(name))
        .collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// Each package builds to the same image digest twice (a fresh store each time).
#[test]
fn host_packages_are_reproducible() {
    let digest = |store: &Path, pkg: &str| {
        let out = slipway(store).args(["pkg", "build", pkg]).output().unwrap();
        assert!(
            out.status.success(),
            "{pkg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for pkg in PACKAGES {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, second) = (digest(a.path(), pkg), digest(b.path(), pkg));
        assert!(first.contains("sha256:"), "{pkg}: no digest in {first:?}");
        assert_eq!(first, second, "{pkg} is not reproducible");
    }
}
