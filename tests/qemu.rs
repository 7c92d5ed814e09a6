//! Boot tests: initrds written by slipway, booted by the real `slipway run qemu` under TCG with
//! Debian's cloud kernel, and a guest that never powers off cut short by `--timeout`.
//!
//! Needs qemu-system-x86, ovmf, busybox-static and apt access to download the kernel package
//! (unpacked here, in the test fixture only, with dpkg-deb). Each boot takes a few seconds of TCG,
//! so there are few of them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use slipway::assemble::tree::{Entry, Kind, Tree};
use slipway::format::kernel_initrd::write_kernel_initrd;
use slipway::format::{BootSpec, Compression};

/// Debian's cloud kernel (`linux-image-*-cloud-amd64`), downloaded once into the test target's
/// temporary folder and reused by later runs.
fn cloud_kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cloud-kernel");
        let vmlinuz = cache.join("vmlinuz");
        if vmlinuz.is_file() {
            return vmlinuz;
        }
        std::fs::create_dir_all(&cache).unwrap();
        // The meta package only depends on the versioned one, which holds the kernel.
        let depends = Command::new("apt-cache")
            .args(["depends", "linux-image-cloud-amd64"])
            .output()
            .unwrap();
        let depends = String::from_utf8(depends.stdout).unwrap();
        let package = depends
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
            .unwrap_or_else(|| panic!("no kernel package in `apt-cache depends`: {depends}"))
            .to_string();
        let status = Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&cache)
            .status()
            .unwrap();
        assert!(status.success(), "apt-get download {package} failed");
        let deb = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("downloaded .deb");
        let unpacked = cache.join("unpacked");
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&unpacked)
            .status()
            .unwrap();
        assert!(status.success(), "dpkg-deb -x {} failed", deb.display());
        let image = std::fs::read_dir(unpacked.join("boot"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("vmlinuz-")
            })
            .expect("boot/vmlinuz-* in the kernel package");
        let tmp = cache.join("vmlinuz.tmp");
        std::fs::copy(&image, &tmp).unwrap();
        std::fs::rename(&tmp, &vmlinuz).unwrap();
        std::fs::remove_dir_all(&unpacked).unwrap();
        std::fs::remove_file(&deb).unwrap();
        vmlinuz
    })
}

/// A root with static busybox (reached through a hard link, as in a real image), the console
/// device the kernel opens for init, and `/init` running `script`.
fn busybox_tree(script: &str) -> Tree {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian busybox-static)");
    let mut t = Tree::new();
    t.insert("bin/busybox", Entry::file(busybox, 0o755));
    t.insert(
        "bin/sh",
        Entry {
            kind: Kind::Hardlink("bin/busybox".into()),
            ..Entry::file(vec![], 0o755)
        },
    );
    t.insert(
        "dev/console",
        Entry {
            kind: Kind::CharDevice { major: 5, minor: 1 },
            ..Entry::dir(0o600)
        },
    );
    t.insert("init", Entry::file(format!("#!/bin/sh\n{script}"), 0o755));
    t
}

/// Writes kernel+initrd for `tree` into `dir` as `NAME-*` and returns the `NAME` prefix.
fn build(dir: &Path, tree: &Tree, compression: Compression) -> PathBuf {
    let boot = BootSpec {
        kernel: std::fs::read(cloud_kernel()).unwrap(),
        // panic=-1: a broken init ends the run at once (without the marker) instead of hanging.
        cmdline: "console=ttyS0 panic=-1 quiet".into(),
        ucode: None,
    };
    write_kernel_initrd(tree, &boot, compression, dir, "image").unwrap();
    dir.join("image")
}

fn slipway() -> assert_cmd::Command {
    assert_cmd::cargo::cargo_bin_cmd!("slipway")
}

/// The marker is computed by the guest's shell, so it appears on the console only if /init ran
/// (the kernel never prints the initrd's contents, but this rules out any echo of the script).
const POWER_OFF: &str = "echo \"SLIPWAY-BOOT-$((6 * 7))-OK\"\n/bin/busybox poweroff -f\n";
const MARKER: &str = "SLIPWAY-BOOT-42-OK";

fn boots_and_powers_off(compression: Compression, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = build(dir.path(), &busybox_tree(POWER_OFF), compression);
    let started = Instant::now();
    let out = slipway()
        .args(["run", "qemu", "--mem", "256", "--timeout", "120"])
        .args(extra)
        .arg(&prefix)
        .timeout(Duration::from_secs(180))
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{compression}: exit {:?}\nstderr: {stderr}\nconsole:\n{console}",
        out.status
    );
    assert!(
        console.contains(MARKER),
        "{compression}: marker missing; console:\n{console}\nstderr: {stderr}"
    );
    eprintln!(
        "{compression} {extra:?}: booted and powered off in {:.1?}",
        started.elapsed()
    );
    // qemu removes its pid file when it exits; the state folder (and the UEFI variable store
    // copied into it) stays.
    assert!(
        dir.path().join("image-state").is_dir(),
        "default state folder not used"
    );
    if extra.contains(&"--uefi") {
        assert!(
            dir.path().join("image-state/OVMF_VARS_4M.fd").is_file(),
            "no private UEFI variable store"
        );
    }
}

#[test]
fn gzip_initrd_boots_and_powers_off() {
    boots_and_powers_off(Compression::Gzip, &[]);
}

#[test]
fn zstd_initrd_boots_and_powers_off() {
    boots_and_powers_off(Compression::Zstd, &[]);
}

/// Also the UEFI path: OVMF loads the kernel through its EFI stub.
#[test]
fn xz_initrd_boots_and_powers_off_under_uefi() {
    boots_and_powers_off(Compression::Xz, &["--uefi", "--networking", "none"]);
}

#[test]
fn a_guest_that_never_powers_off_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let tree = busybox_tree("echo \"SLIPWAY-HANG-$((6 * 7))\"\nexec /bin/busybox sleep 100000\n");
    let prefix = build(dir.path(), &tree, Compression::Gzip);
    let started = Instant::now();
    let out = slipway()
        .args(["run", "qemu", "--mem", "256", "--timeout", "5"])
        .arg(&prefix)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("did not power off within 5 s"), "{stderr}");
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(20),
        "took {elapsed:?}"
    );
    // No qemu may outlive the run: its pid file names the process that was killed.
    let pid = std::fs::read_to_string(dir.path().join("image-state/qemu.pid")).unwrap();
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "qemu {} still running",
        pid.trim()
    );
}

#[test]
fn killing_slipway_kills_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = build(
        dir.path(),
        &busybox_tree("exec /bin/busybox sleep 100000\n"),
        Compression::None,
    );
    let bin = assert_cmd::cargo::cargo_bin!("slipway");
    let mut child = Command::new(bin)
        .args(["run", "qemu", "--mem", "256", "--networking", "none"])
        .arg(&prefix)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pidfile = dir.path().join("image-state/qemu.pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    let qemu_pid = loop {
        match std::fs::read_to_string(&pidfile) {
            Ok(pid) if !pid.trim().is_empty() => break pid.trim().to_string(),
            _ if Instant::now() > deadline => panic!("qemu never wrote {}", pidfile.display()),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(Path::new(&format!("/proc/{qemu_pid}")).exists());
    child.kill().unwrap(); // SIGKILL: slipway gets no chance to clean up itself.
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_alive(&qemu_pid) {
        assert!(
            Instant::now() < deadline,
            "qemu {qemu_pid} outlived slipway"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process that exited but was not reaped yet (a zombie) counts as gone.
fn is_alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn missing_build_output_names_what_was_tried() {
    let dir = tempfile::tempdir().unwrap();
    slipway()
        .args(["run", "qemu"])
        .arg(dir.path().join("nothing"))
        .assert()
        .failure()
        .stderr(predicates::str::contains("nothing-kernel"));
}

#[test]
fn a_qemu_error_fails_the_run_with_qemus_message() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = build(dir.path(), &busybox_tree(POWER_OFF), Compression::None);
    let disk = dir.path().join("data.img");
    std::fs::write(&disk, [0u8; 4096]).unwrap();
    slipway()
        .args(["run", "qemu", "--timeout", "60", "--disk"])
        .arg(format!("{},format=no-such-format", disk.display()))
        .arg(&prefix)
        .timeout(Duration::from_secs(90))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("no-such-format"))
        .stderr(predicates::str::contains("qemu exited with"));
}
