//! The kernel+initrd, tar and tar-kernel-initrd writers, checked with the real tools that read
//! them: `cpio`, `gzip`, `xz`, `zstd` and GNU `tar` (Debian cpio, gzip, xz-utils, zstd, tar).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use slipway::assemble::tree::{Entry, Kind, Tree};
use slipway::format::initrd::write_initrd;
use slipway::format::kernel_initrd::{write_kernel_initrd, write_tar_kernel_initrd};
use slipway::format::tar::write_tar;
use slipway::format::{BootSpec, Compression};

/// A small tree with one of every kind of entry the initrd must carry.
fn sample_tree() -> Tree {
    let mut t = Tree::new();
    t.insert(
        "bin/busybox",
        Entry::file(b"#!pretend busybox\n".repeat(100), 0o755),
    );
    t.insert(
        "bin/sh",
        Entry {
            kind: Kind::Hardlink("bin/busybox".into()),
            ..Entry::file(vec![], 0o755)
        },
    );
    t.insert(
        "sbin/init",
        Entry {
            kind: Kind::Hardlink("/bin/busybox".into()),
            ..Entry::file(vec![], 0o755)
        },
    );
    t.insert("init", Entry::file(b"#!/bin/sh\necho hi\n".to_vec(), 0o755));
    t.insert("etc/mtab", Entry::symlink("/proc/mounts"));
    t.insert(
        "dev/console",
        Entry {
            kind: Kind::CharDevice { major: 5, minor: 1 },
            ..Entry::dir(0o600)
        },
    );
    t.insert(
        "dev/sda",
        Entry {
            kind: Kind::BlockDevice { major: 8, minor: 0 },
            ..Entry::dir(0o660)
        },
    );
    t.insert(
        "run/fifo",
        Entry {
            kind: Kind::Fifo,
            ..Entry::dir(0o644)
        },
    );
    t.insert(
        "home/user",
        Entry {
            uid: 1000,
            gid: 1000,
            ..Entry::dir(0o750)
        },
    );
    t.insert("tmp", Entry::dir(0o1777));
    t.insert(
        &format!("deep/{}/file", "n".repeat(200)),
        Entry::file(b"long name".to_vec(), 0o644),
    );
    t
}

fn boot() -> BootSpec {
    BootSpec {
        kernel: b"pretend bzImage".to_vec(),
        cmdline: "console=ttyS0 quiet".into(),
        ucode: None,
    }
}

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    out
}

#[test]
fn cpio_lists_every_entry_with_its_type_owner_and_device_numbers() {
    let cpio = write_initrd(&sample_tree(), None, Compression::None, Vec::new()).unwrap();
    let out = run_with_stdin(
        Command::new("cpio").args(["-itv", "--quiet", "--numeric-uid-gid"]),
        &cpio,
    );
    assert!(
        out.status.success(),
        "cpio -itv failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(name) || l.contains(&format!(" {name} ->")))
            .unwrap_or_else(|| panic!("{name} missing from:\n{listing}"))
            .to_string()
    };
    assert!(
        line("dev/console").starts_with("crw-------"),
        "{}",
        line("dev/console")
    );
    assert!(
        line("dev/console").contains("5,   1"),
        "{}",
        line("dev/console")
    );
    assert!(line("dev/sda").starts_with("brw-rw----") && line("dev/sda").contains("8,   0"));
    assert!(line("run/fifo").starts_with("prw-r--r--"));
    assert!(line("tmp").starts_with("drwxrwxrwt"));
    assert!(
        line("home/user").contains(" 1000     1000 "),
        "{}",
        line("home/user")
    );
    assert!(
        line("etc/mtab").starts_with("lrwxrwxrwx") && line("etc/mtab").ends_with("-> /proc/mounts")
    );
    // The three names of busybox share one inode: link count 3 on each.
    for name in ["bin/busybox", "bin/sh", "sbin/init"] {
        assert!(line(name).starts_with("-rwxr-xr-x   3 "), "{}", line(name));
    }
    assert!(listing.contains(&"n".repeat(200)), "long name missing");
    // Entries come in path order; the root entry is not written.
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"bin"));
}

#[test]
fn hard_links_extract_as_one_inode_with_the_data() {
    let cpio = write_initrd(&sample_tree(), None, Compression::None, Vec::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_stdin(
        Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path()),
        &cpio,
    );
    assert!(
        out.status.success(),
        "cpio -i failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap();
    assert_eq!(meta("bin/busybox").ino(), meta("bin/sh").ino());
    assert_eq!(meta("bin/busybox").ino(), meta("sbin/init").ino());
    assert_eq!(meta("bin/sh").nlink(), 3);
    assert_eq!(
        std::fs::read(dir.path().join("sbin/init")).unwrap(),
        b"#!pretend busybox\n".repeat(100)
    );
    assert_eq!(
        meta("init").mtime(),
        slipway::assemble::tree::DEFAULT_MTIME as i64
    );
}

#[test]
fn compressed_initrds_pass_their_tools_and_hold_the_same_archive() {
    let tree = sample_tree();
    let plain = write_initrd(&tree, None, Compression::None, Vec::new()).unwrap();
    for (compression, tool) in [
        (Compression::Gzip, "gzip"),
        (Compression::Xz, "xz"),
        (Compression::Zstd, "zstd"),
    ] {
        let packed = write_initrd(&tree, None, compression, Vec::new()).unwrap();
        let test = run_with_stdin(Command::new(tool).arg("-t"), &packed);
        assert!(
            test.status.success(),
            "{tool} -t: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        let unpacked = run_with_stdin(Command::new(tool).args(["-d", "-c"]), &packed);
        assert!(
            unpacked.status.success(),
            "{tool} -dc: {}",
            String::from_utf8_lossy(&unpacked.stderr)
        );
        assert!(
            unpacked.stdout == plain,
            "{tool} stream does not hold the uncompressed archive"
        );
    }
    // The xz stream must use CRC32: `xz -lvv` names the check.
    let dir = tempfile::tempdir().unwrap();
    let xz = dir.path().join("i.xz");
    std::fs::write(
        &xz,
        write_initrd(&tree, None, Compression::Xz, Vec::new()).unwrap(),
    )
    .unwrap();
    let list = Command::new("xz")
        .args(["-l", "-v", "-v"])
        .arg(&xz)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("CRC32"),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );
}

fn read_dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn two_builds_of_the_same_tree_are_byte_identical_in_every_format() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for compression in Compression::ALL {
        for dir in [&a, &b] {
            // Trees built separately, so that nothing is shared between the two writes.
            write_kernel_initrd(
                &sample_tree(),
                &boot(),
                compression,
                dir.path(),
                compression.name(),
            )
            .unwrap();
        }
    }
    let (fa, fb) = (read_dir_bytes(a.path()), read_dir_bytes(b.path()));
    assert_eq!(
        fa.len(),
        12,
        "{:?}",
        fa.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(fa == fb, "kernel+initrd outputs differ between two builds");
    let tar1 = write_tar(&sample_tree(), &boot(), Vec::new()).unwrap();
    assert!(
        tar1 == write_tar(&sample_tree(), &boot(), Vec::new()).unwrap(),
        "tar differs"
    );
    let tki = |_: ()| {
        write_tar_kernel_initrd(&sample_tree(), &boot(), Compression::Gzip, Vec::new()).unwrap()
    };
    assert!(tki(()) == tki(()), "tar-kernel-initrd differs");
}

#[test]
fn kernel_initrd_writes_the_three_files_linuxkit_writes() {
    let dir = tempfile::tempdir().unwrap();
    let boot = BootSpec {
        ucode: Some(b"UCODE-CPIO".to_vec()),
        ..boot()
    };
    let files = write_kernel_initrd(
        &sample_tree(),
        &boot,
        Compression::Gzip,
        dir.path(),
        "minimal",
    )
    .unwrap();
    assert_eq!(files.kernel, dir.path().join("minimal-kernel"));
    assert_eq!(std::fs::read(&files.kernel).unwrap(), b"pretend bzImage");
    assert_eq!(
        std::fs::read_to_string(&files.cmdline).unwrap(),
        "console=ttyS0 quiet"
    );
    let initrd = std::fs::read(&files.initrd).unwrap();
    assert!(
        initrd.starts_with(b"UCODE-CPIO\x1f\x8b"),
        "microcode must come first, uncompressed"
    );
    assert_eq!(
        std::fs::metadata(&files.initrd).unwrap().mode() & 0o777,
        0o644
    );
    let names: Vec<_> = read_dir_bytes(dir.path())
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(
        names,
        ["minimal-cmdline", "minimal-initrd.img", "minimal-kernel"],
        "stray files left"
    );
}

#[test]
fn tar_output_lists_with_gnu_tar_including_the_boot_files() {
    let bytes = write_tar(&sample_tree(), &boot(), Vec::new()).unwrap();
    let out = run_with_stdin(
        Command::new("tar").args(["-tvf", "-", "--numeric-owner"]),
        &bytes,
    );
    assert!(
        out.status.success(),
        "tar -tv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "boot/kernel",
        "boot/cmdline",
        "bin/sh link to bin/busybox",
        "sbin/init link to bin/busybox",
        "etc/mtab -> /proc/mounts",
        "5,1",
        &"n".repeat(200),
    ] {
        assert!(
            listing.contains(expected),
            "{expected:?} missing from:\n{listing}"
        );
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("crw-------") && l.contains("dev/console")),
        "{listing}"
    );
    assert!(listing.lines().any(|l| l.starts_with("drwxr-x---")
        && l.contains("1000/1000")
        && l.contains("home/user")));
}

#[test]
fn tar_kernel_initrd_holds_kernel_initrd_and_cmdline() {
    let bytes =
        write_tar_kernel_initrd(&sample_tree(), &boot(), Compression::Zstd, Vec::new()).unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut members = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        members.push((name, data));
    }
    let names: Vec<_> = members.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(names, ["kernel", "initrd.img", "cmdline"]);
    assert_eq!(members[0].1, b"pretend bzImage");
    assert_eq!(
        members[1].1,
        write_initrd(&sample_tree(), None, Compression::Zstd, Vec::new()).unwrap()
    );
    assert_eq!(members[2].1, b"console=ttyS0 quiet");
}

#[test]
fn an_initrd_too_large_for_the_loader_is_refused_with_size_and_hint() {
    let mut tree = sample_tree();
    tree.insert("big", Entry::file(vec![7u8; 1 << 20], 0o644));
    let err = slipway::format::initrd::write_initrd_limited(
        &tree,
        None,
        Compression::None,
        1 << 20,
        std::io::sink(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("1048576") && err.contains("iso"), "{err}");
}

#[test]
fn a_gzip_initrd_of_many_pieces_is_one_member_that_gzip_reads_back() {
    let mut tree = sample_tree();
    // About 6 MiB of varied text: several pieces for the parallel compressor.
    let text: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("line {i}: {}\n", i.wrapping_mul(2_654_435_761) % 9973).into_bytes())
        .collect();
    assert!(text.len() > 3 << 20);
    tree.insert("var/big.txt", Entry::file(text, 0o644));
    let plain = write_initrd(&tree, None, Compression::None, Vec::new()).unwrap();
    let packed = write_initrd(&tree, None, Compression::Gzip, Vec::new()).unwrap();
    assert!(
        packed.len() < plain.len() / 3,
        "{} of {}",
        packed.len(),
        plain.len()
    );
    let test = run_with_stdin(Command::new("gzip").arg("-t"), &packed);
    assert!(
        test.status.success(),
        "gzip -t: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    let unpacked = run_with_stdin(Command::new("gzip").args(["-d", "-c"]), &packed);
    assert!(
        unpacked.stdout == plain,
        "gzip -dc does not give the archive"
    );
    // One member: a decoder that stops after the first member still reads everything.
    let mut single = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&packed[..]), &mut single)
        .unwrap();
    assert!(single == plain, "the stream is more than one gzip member");
    assert_eq!(
        write_initrd(&tree, None, Compression::Gzip, Vec::new()).unwrap(),
        packed,
        "not reproducible"
    );
}
