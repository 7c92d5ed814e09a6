//! What the direct QEMU boot tests (`tests/rootfs.rs`, `tests/state_disk.rs`) share: the package
//! store, the `slipway` command, and QEMU started with the test's own command line (q35, TCG,
//! serial console on standard output, no reboot), each boot bounded in time.

#![allow(dead_code)] // each test crate uses its part

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The store of the boot tests, with the packages this image needs built once per run.
pub fn cache() -> &'static Path {
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
            .status()
            .unwrap();
        assert!(status.success(), "building the packages failed");
        cache
    })
}

pub fn slipway(cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slipway"));
    cmd.current_dir(root()).env("SLIPWAY_CACHE", cache);
    cmd
}

/// What a boot printed, and whether the guest powered off by itself.
pub struct Boot {
    pub console: String,
    pub clean: bool,
}

/// Boots `PREFIX-kernel` and `PREFIX-initrd.img` with `PREFIX-cmdline` and `append` as the
/// kernel command line and `drive` (QEMU arguments) attached, for at most `limit`.
pub fn boot(prefix: &Path, append: &str, drive: &[String], limit: Duration) -> Boot {
    let file = |suffix: &str| PathBuf::from(format!("{}-{suffix}", prefix.display()));
    let cmdline = std::fs::read_to_string(file("cmdline")).unwrap();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-accel", "tcg", "-m", "512", "-smp", "1"])
        .args([
            "-nographic",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(file("kernel"))
        .arg("-initrd")
        .arg(file("initrd.img"))
        .arg("-append")
        .arg(format!("{cmdline} {append}"))
        .args(drive)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 runs");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut console = reader.join().unwrap();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    if !stderr.is_empty() {
        console.push_str("\n--- qemu stderr ---\n");
        console.push_str(&stderr);
    }
    Boot {
        console,
        clean: status.is_some_and(|s| s.success()),
    }
}

/// `-drive` for a raw image with more options (`,if=virtio`, `,if=none,id=root`).
pub fn raw_drive(path: &Path, rest: &str) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},format=raw{rest}", path.display()),
    ]
}

/// Builds each package folder twice (`pkg build --force`) and asserts both digests are equal.
pub fn assert_packages_reproducible(dirs: &[&str]) {
    let digest = |dir: &str| {
        let out = slipway(cache())
            .args(["pkg", "build", "--json", "--force", dir])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["images"][0]["digest"].as_str().unwrap().to_string()
    };
    for dir in dirs {
        assert_eq!(digest(dir), digest(dir), "{dir} is not reproducible");
    }
}
