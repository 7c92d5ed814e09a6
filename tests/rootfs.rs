//! The formats whose root lives on a block device, `kernel+squashfs` and `kernel+iso`: built from
//! the real packages, read back by the host's tools (unsquashfs, xorriso, isoinfo), built twice
//! for the same bytes, and booted under QEMU (TCG, q35) with QEMU started here with its own
//! command line: the squashfs on virtio-blk, virtio-scsi and NVMe, the ISO on virtio-blk and as a
//! CD-ROM. Each boot shows, from the init's own mount table, that `/` is the image's device.
//!
//! Needs qemu-system-x86, squashfs-tools, xorriso and genisoimage (isoinfo).

mod qemu_direct;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use qemu_direct::{boot, cache, slipway};

/// A read-only raw image on a drive.
fn raw_drive(path: &Path, rest: &str) -> Vec<String> {
    qemu_direct::raw_drive(path, &format!(",readonly=on{rest}"))
}

const MANIFEST: &str = "tests/data/rootfs.yml";
const NAME: &str = "rootfs";

/// Builds both formats of [`MANIFEST`] into `dir` (one phase-1 tree).
fn build_into(dir: &Path) {
    let out = slipway(cache())
        .args([
            "build",
            "-f",
            "kernel+squashfs,kernel+iso",
            "--name",
            NAME,
            "--dir",
        ])
        .arg(dir)
        .arg(MANIFEST)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The build the boot tests share.
fn built() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        build_into(dir.path());
        dir
    })
    .path()
}

fn file(name: &str) -> PathBuf {
    built().join(format!("{NAME}-{name}"))
}

/// The root on each bus, booted side by side; `(name, append, drive, the mount line's start)`.
fn boot_all(cases: Vec<(&'static str, String, Vec<String>, String)>) {
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(what, append, drive, expected)| {
            std::thread::spawn(move || {
                let boot = boot(
                    &built().join(NAME),
                    &append,
                    &drive,
                    Duration::from_secs(240),
                );
                (what, expected, boot)
            })
        })
        .collect();
    for handle in handles {
        let (what, expected, boot) = handle.join().unwrap();
        let text = &boot.console;
        let mount = text
            .lines()
            .find_map(|l| l.split("slipway-test: root mount ").nth(1))
            .unwrap_or_else(|| panic!("{what}: no root mount printed:\n{text}"));
        assert!(
            mount.starts_with(&expected) && mount.contains(" ro"),
            "{what}: / is `{mount}`, expected `{expected} ... ro`:\n{text}"
        );
        for marker in [
            "slipway-test: container root writable: written",
            "slipway-test: service check running",
        ] {
            assert!(text.contains(marker), "{what}: no {marker:?}:\n{text}");
        }
        let timeline = text
            .lines()
            .find(|l| l.contains("boot timeline"))
            .unwrap_or_else(|| panic!("{what}: no boot timeline:\n{text}"));
        assert!(timeline.contains("| root "), "{what}: {timeline}");
        assert!(boot.clean, "{what}: no clean poweroff:\n{text}");
    }
}

#[test]
fn a_squashfs_root_boots_from_virtio_blk_virtio_scsi_and_nvme() {
    let image = file("squashfs.img");
    let mut scsi = vec!["-device".to_string(), "virtio-scsi-pci,id=scsi".to_string()];
    scsi.extend(raw_drive(&image, ",if=none,id=root"));
    scsi.extend(["-device".into(), "scsi-hd,drive=root".into()]);
    let mut nvme = raw_drive(&image, ",if=none,id=root");
    nvme.extend(["-device".into(), "nvme,drive=root,serial=slipway".into()]);
    boot_all(vec![
        (
            "virtio-blk",
            "root=/dev/vda rootfstype=squashfs".into(),
            raw_drive(&image, ",if=virtio"),
            "/dev/vda / squashfs".into(),
        ),
        (
            "virtio-scsi",
            "root=/dev/sda rootfstype=squashfs".into(),
            scsi,
            "/dev/sda / squashfs".into(),
        ),
        (
            "nvme",
            "root=/dev/nvme0n1".into(),
            nvme,
            "/dev/nvme0n1 / squashfs".into(),
        ),
    ]);
}

#[test]
fn an_iso_root_boots_from_a_virtio_disk_and_a_cdrom() {
    let image = file("root.iso");
    boot_all(vec![
        (
            "virtio-blk",
            "root=/dev/vda rootfstype=iso9660".into(),
            raw_drive(&image, ",if=virtio"),
            "/dev/vda / iso9660".into(),
        ),
        (
            "cdrom",
            "root=/dev/sr0 rootfstype=iso9660".into(),
            vec!["-cdrom".into(), image.display().to_string()],
            "/dev/sr0 / iso9660".into(),
        ),
    ]);
}

#[test]
fn a_root_device_that_never_appears_is_named_on_the_console() {
    let boot = boot(
        &built().join(NAME),
        "root=/dev/vdz rootfstype=squashfs rootwait=2",
        &[],
        Duration::from_secs(120),
    );
    let text = &boot.console;
    assert!(
        text.contains("root device /dev/vdz did not appear within 2 s"),
        "{text}"
    );
    assert!(text.contains("block devices present:"), "{text}");
}

/// One entry as the listings give it: path, type letter, permission bits, `uid/gid`, symlink
/// target.
type Listed = (String, char, u32, String, String);

/// Every entry of the image's `tar` format, the reference the root images are compared with.
fn tar_listing() -> BTreeSet<Listed> {
    static LISTING: OnceLock<BTreeSet<Listed>> = OnceLock::new();
    LISTING
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let out = slipway(cache())
                .args(["build", "-f", "tar", "--name", NAME, "--dir"])
                .arg(dir.path())
                .arg(MANIFEST)
                .output()
                .unwrap();
            assert!(out.status.success());
            let mut archive = tar::Archive::new(
                std::fs::File::open(dir.path().join(format!("{NAME}.tar"))).unwrap(),
            );
            let mut set = BTreeSet::new();
            for entry in archive.entries().unwrap() {
                let entry = entry.unwrap();
                let path = entry
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string();
                if path.starts_with("boot/") || path == "boot" || path.is_empty() {
                    continue;
                }
                let h = entry.header();
                let (kind, target) = match h.entry_type() {
                    tar::EntryType::Directory => ('d', String::new()),
                    tar::EntryType::Symlink => (
                        'l',
                        h.link_name()
                            .unwrap()
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    ),
                    tar::EntryType::Char => ('c', String::new()),
                    _ => ('-', String::new()),
                };
                let mode = if kind == 'l' {
                    0o777
                } else {
                    h.mode().unwrap() & 0o7777
                };
                let owner = format!("{}/{}", h.uid().unwrap(), h.gid().unwrap());
                set.insert((path, kind, mode, owner, target));
            }
            set
        })
        .clone()
}

/// An `ls -l` mode string (`drwxr-xr-x`, `-rwsr-xr-x`) as the type letter and permission bits.
fn parse_mode(text: &str) -> (char, u32) {
    let kind = text.chars().next().unwrap();
    let bits: Vec<char> = text.chars().skip(1).collect();
    let mut mode = 0;
    for (i, c) in bits.iter().enumerate().take(9) {
        let bit = 1 << (8 - i);
        match c {
            '-' => {}
            's' | 't' => mode |= bit,
            _ if "rwx".contains(*c) => mode |= bit,
            _ => {}
        }
        match (i, c) {
            (2, 's' | 'S') => mode |= 0o4000,
            (5, 's' | 'S') => mode |= 0o2000,
            (8, 't' | 'T') => mode |= 0o1000,
            _ => {}
        }
    }
    (kind, mode)
}

#[test]
fn unsquashfs_lists_what_the_tar_format_holds() {
    let image = file("squashfs.img");
    let info = Command::new("unsquashfs")
        .arg("-s")
        .arg(&image)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(info.contains("Compression gzip"), "{info}");
    assert!(info.contains("Block size 131072"), "{info}");
    let inodes: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("Number of inodes "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no inode count: {info}"));
    let out = Command::new("unsquashfs")
        .args(["-lln", "-d", ""])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut listed = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `drwxr-xr-x 0/0 38 2017-04-18 16:30 /path -> target`
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 6 || !words[5].starts_with('/') {
            continue;
        }
        let (kind, mode) = parse_mode(words[0]);
        let path = words[5].trim_start_matches('/').to_string();
        if path.is_empty() {
            continue;
        }
        let target = if kind == 'l' {
            words[7..].join(" ")
        } else {
            String::new()
        };
        let kind = if kind == 'b' { 'c' } else { kind };
        listed.insert((path, kind, mode, words[1].to_string(), target));
    }
    assert_eq!(inodes, listed.len() + 1, "unsquashfs -s and -l disagree");
    let expected = tar_listing();
    let missing: Vec<_> = expected.difference(&listed).take(5).collect();
    let extra: Vec<_> = listed.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "squashfs vs tar: missing {missing:?}, extra {extra:?}"
    );
}

#[test]
fn the_iso_root_carries_rock_ridge_names_modes_and_links() {
    let image = file("root.iso");
    let out = Command::new("xorriso")
        .args(["-abort_on", "FATAL", "-indev"])
        .arg(&image)
        .args(["-find", "/", "-exec", "lsdl", "--"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut listed = BTreeSet::new();
    for line in text.lines() {
        // `-rwxr-xr-x    1 0        0          123 Apr 18  2017 '/init'`
        let Some(quote) = line.find('\'') else {
            continue;
        };
        let words: Vec<&str> = line[..quote].split_whitespace().collect();
        let (kind, mode) = parse_mode(words[0]);
        let rest = &line[quote..];
        let mut names = rest.split(" -> ");
        let path = names
            .next()
            .unwrap()
            .trim_matches('\'')
            .trim_start_matches('/')
            .to_string();
        // Where Rock Ridge relocates deep directories (each shows at its real place too).
        if path.is_empty() || path == ".rr_moved" {
            continue;
        }
        let target = names
            .next()
            .map(|t| t.trim_matches('\'').to_string())
            .unwrap_or_default();
        listed.insert((
            path,
            kind,
            mode,
            format!("{}/{}", words[2], words[3]),
            target,
        ));
    }
    let expected = tar_listing();
    let missing: Vec<_> = expected.difference(&listed).take(5).collect();
    let extra: Vec<_> = listed.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "iso vs tar: missing {missing:?}, extra {extra:?}\n{}",
        &text[..text.len().min(3000)]
    );
    // isoinfo sees the Rock Ridge extension and the volume name.
    let info = Command::new("isoinfo")
        .arg("-d")
        .arg("-i")
        .arg(&image)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(info.contains("Rock Ridge signatures version"), "{info}");
    assert!(info.contains("Volume id: SLIPWAY_ROOT"), "{info}");
}

#[test]
fn two_builds_write_the_same_bytes() {
    let again = tempfile::tempdir().unwrap();
    build_into(again.path());
    for name in [
        "kernel",
        "cmdline",
        "initrd.img",
        "squashfs.img",
        "root.iso",
    ] {
        let a = std::fs::read(file(name)).unwrap();
        let b = std::fs::read(again.path().join(format!("{NAME}-{name}"))).unwrap();
        assert!(!a.is_empty(), "{name} is empty");
        assert!(a == b, "{name} differs between two builds");
    }
    // The small initrd is small: the init and the disk drivers, not the containers.
    let initrd = std::fs::metadata(file("initrd.img")).unwrap().len();
    let root = std::fs::metadata(file("squashfs.img")).unwrap().len();
    assert!(
        initrd * 2 < root,
        "initrd {initrd} bytes, root {root} bytes"
    );
}
