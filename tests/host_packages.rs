//! The packages a host is built from (pkg/dhcpcd, pkg/getty, pkg/sshd), each booted for real
//! under QEMU (TCG) through `slipway run qemu`, whose default NIC is virtio-net on QEMU's user
//! network: the boots run in parallel threads. Each package's image is also built twice to the
//! same digest.
//!
//! Needs qemu-system-x86 and Debian's OpenSSH client (`ssh`, `ssh-keygen`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

const PACKAGES: [&str; 3] = ["pkg/dhcpcd", "pkg/getty", "pkg/sshd"];

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
                "pkg/metadata",
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
    build_in(cache(), dir, name, &[], manifests);
}

/// `slipway build` with the store `store` and the extra flags `flags`.
fn build_in(store: &Path, dir: &Path, name: &str, flags: &[&str], manifests: &[&str]) {
    let out = slipway(store)
        .args(["build", "--name", name, "--dir"])
        .arg(dir)
        .args(flags)
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
        Vm::start_in(cache(), prefix, args)
    }

    fn start_in(store: &Path, prefix: &Path, args: &[&str]) -> Vm {
        let mut child = slipway(store)
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

/// A new ed25519 key pair in `dir` (`id`, `id.pub`), made by Debian's ssh-keygen.
fn ssh_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "slipway-test", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(dir.join("id.pub")).unwrap();
    (key, public.trim().to_string())
}

/// A free TCP port on 127.0.0.1 for `--publish` (free now; QEMU binds it a moment later).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Debian's OpenSSH client logs in as root on 127.0.0.1:`port` with `key` and runs `command`:
/// whether it succeeded, and its output (stdout, then stderr).
fn ssh(key: &Path, port: u16, command: &str) -> (bool, String) {
    let out = Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(key)
        .args(["-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(["root@127.0.0.1", command])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// [`ssh`] again and again while the guest boots, until the output shows `expect` or `limit`
/// passes or the machine stops. Returns the last output.
fn ssh_until(
    vm: &mut Vm,
    key: &Path,
    port: u16,
    command: &str,
    expect: &str,
    limit: Duration,
) -> String {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline && vm.child.try_wait().unwrap().is_none() {
        let (ok, text) = ssh(key, port, command);
        if ok && text.contains(expect) {
            return text;
        }
        last = text;
        std::thread::sleep(Duration::from_secs(2));
    }
    last
}

/// What a login runs: root's POSIX shell with busybox's `ip`, then a clean poweroff.
const SSH_COMMAND: &str = "echo ssh-$((6*7))-$(id -u); ip -4 -o addr show dev eth0";

fn ssh_logs_in_and_powers_off(vm: &mut Vm, key: &Path, port: u16, what: &str) {
    let out = ssh_until(
        vm,
        key,
        port,
        SSH_COMMAND,
        "ssh-42-0",
        Duration::from_secs(230),
    );
    assert!(
        out.contains("ssh-42-0") && out.contains("inet 10.0.2.15/24"),
        "{what}: no SSH login as root (last answer: {out}):\n{}",
        vm.text()
    );
    // busybox's poweroff signals PID 1 (sshd shares the host's pid namespace).
    let _ = ssh(key, port, "poweroff");
    let clean = vm.finish(Duration::from_secs(90));
    assert!(clean, "{what}: no clean poweroff after SSH:\n{}", vm.text());
}

/// A manifest in LinuxKit's exact shape (its image names and tags, `binds.add`, its `files:`
/// entry for the key; the key here is the test's own) builds with `--linuxkit` from an empty
/// store, boots, and its sshd lets Debian's ssh in with the key from `files:`.
fn sshd_in_a_linuxkit_manifest_takes_the_key_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let (key, _) = ssh_key(dir.path());
    let manifest = dir.path().join("sshd.yml");
    std::fs::write(
        &manifest,
        format!(
            "kernel:\n  image: linuxkit/kernel:6.6.71\n  cmdline: \"console=ttyS0 panic=-1\"\n\
init:\n  - linuxkit/init:8eea386739975a43af558eec757a7dcb3a3d2e7b\n  - linuxkit/runc:667e7ea2c426a2460ca21e3da065a57dbb3369c9\n\
\x20 - linuxkit/containerd:a988a1a8bcbacb2c0c4df8d0bbe7b83b9c4bd5bd\n\
services:\n  - name: dhcpcd\n    image: linuxkit/dhcpcd:b87e9ececac55a65eaa592f4dd8b4e0c3009afdb\n\
\x20 - name: sshd\n    image: linuxkit/sshd:08e5d4a46603eff485d5d1b14001cc932a530858\n    binds.add:\n      - /root/.ssh:/root/.ssh\n\
files:\n  - path: root/.ssh/authorized_keys\n    source: {}\n    mode: \"0600\"\n    optional: true\n",
            dir.path().join("id.pub").display()
        ),
    )
    .unwrap();
    build_in(
        store.path(),
        dir.path(),
        "lk-sshd",
        &["--linuxkit"],
        &[manifest.to_str().unwrap()],
    );
    let port = free_port();
    let publish = format!("{port}:22");
    let mut vm = Vm::start_in(
        store.path(),
        &dir.path().join("lk-sshd"),
        &["--publish", &publish],
    );
    ssh_logs_in_and_powers_off(&mut vm, &key, port, "files:");
}

/// examples/sshd.yml booted with `--data`: `metadata` writes the key from the CD to
/// /run/config/ssh/authorized_keys and sshd lets Debian's ssh in with it.
fn sshd_takes_the_key_from_data() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(dir.path());
    build(dir.path(), "sshd", &["examples/sshd.yml"]);
    let data = serde_json::json!({
        "ssh": {"entries": {"authorized_keys": {"perm": "0600", "content": format!("{public}\n")}}}
    })
    .to_string();
    let port = free_port();
    let publish = format!("{port}:22");
    let mut vm = Vm::start(
        &dir.path().join("sshd"),
        &["--publish", &publish, "--data", &data],
    );
    ssh_logs_in_and_powers_off(&mut vm, &key, port, "--data");
}

#[test]
fn host_packages_boot() {
    cache();
    let tests: [(&str, fn()); 4] = [
        ("dhcpcd", dhcpcd_gets_an_address_from_qemus_user_network),
        ("getty", getty_gives_a_root_shell_on_the_serial_console),
        (
            "sshd files: (LinuxKit manifest)",
            sshd_in_a_linuxkit_manifest_takes_the_key_from_files,
        ),
        ("sshd --data", sshd_takes_the_key_from_data),
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

/// The host keys are made at the first boot on the state disk (examples/state-disk.yml mounts it
/// under /var) and the second boot of the same disk offers the same key.
#[test]
fn sshd_keeps_its_host_key_on_the_state_disk() {
    cache();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(dir.path());
    build(
        dir.path(),
        "st",
        &["examples/sshd.yml", "examples/state-disk.yml"],
    );
    let data = serde_json::json!({
        "ssh": {"entries": {"authorized_keys": {"perm": "0600", "content": format!("{public}\n")}}}
    })
    .to_string();
    let mut seen = Vec::new();
    for boot in 1..=2 {
        let port = free_port();
        let publish = format!("{port}:22");
        let mut vm = Vm::start(
            &dir.path().join("st"),
            &[
                "--disk",
                "size=256M",
                "--publish",
                &publish,
                "--data",
                &data,
            ],
        );
        let command = "echo boot-$(cat /var/lib/state/boots); cat /etc/ssh/ssh_host_ed25519_key.pub; readlink /etc/ssh/ssh_host_ed25519_key";
        let expect = format!("boot-{boot}");
        let out = ssh_until(
            &mut vm,
            &key,
            port,
            command,
            &expect,
            Duration::from_secs(230),
        );
        assert!(out.contains(&expect), "boot {boot}: {out}\n{}", vm.text());
        assert!(
            out.contains("/var/lib/state/ssh-host-keys/ssh_host_ed25519_key"),
            "boot {boot}: host key not on the state disk: {out}"
        );
        let host_key = out
            .lines()
            .find(|l| l.starts_with("ssh-ed25519 "))
            .unwrap_or_default()
            .to_string();
        seen.push(host_key);
        let _ = ssh(&key, port, "poweroff");
        assert!(
            vm.finish(Duration::from_secs(90)),
            "boot {boot}: no clean poweroff:\n{}",
            vm.text()
        );
    }
    assert!(!seen[0].is_empty(), "no host key read: {seen:?}");
    assert_eq!(seen[0], seen[1], "the host key changed between boots");
}
