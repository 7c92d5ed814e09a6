//! The bootable disks and ISOs: one build writes every such format from one phase-1 tree, each is
//! booted under QEMU (TCG, q35) with its own command line, as a user would attach it (`-cdrom`,
//! `-drive file=…,format=raw`), on SeaBIOS or OVMF, and must show the service's marker and power
//! off cleanly. Host tools check the structures (`sgdisk -v`, `fsck.fat -n`, `xorriso`), a second
//! build must give the same bytes, and bad requests fail before anything is written.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MARKER: &str = "slipway-bootdisk: the service ran";
/// Every format of this test, in one `-f`: every format there is, but the ones whose files
/// would collide with these (kernel+initrd and kernel+iso write kernel+squashfs's kernel,
/// initrd and command line).
const FORMATS: &str = "raw-bios,raw-efi,aws,iso-bios,iso-efi,iso-efi-initrd,iso,\
                       qcow2-bios,qcow2-efi,vhd,dynamic-vhd,vhdx,vmdk,gcp,docker,tar,\
                       tar-kernel-initrd,kernel+squashfs";
/// The files the build writes.
const FILES: usize = 21;
/// Disk formats get a fixed size, so the test also shows `--size` and sparse outputs: a whole
/// GiB, as gcp needs (sparse: it costs what the disk holds).
const DISK_SIZE: u64 = 1 << 30;
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn slipway() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("slipway").unwrap();
    cmd.current_dir(root())
        .env("SLIPWAY_CACHE", root().join("target/slipway-test-cache"));
    cmd
}

/// A kernel, the init (no engine: the init starts the one service) and a service that prints
/// the marker and powers the machine off.
fn manifest(dir: &Path) -> PathBuf {
    let path = dir.join("bootdisk.yml");
    std::fs::write(
        &path,
        format!(
            "kernel:\n  image: \"@pkg:{root}/kernel\"\n  cmdline: \"console=ttyS0 panic=-1\"\n\
             init:\n  - \"@pkg:{root}/pkg/init\"\n\
             services:\n  - name: marker\n    image: \"@pkg:{root}/pkg/busybox\"\n    pid: host\n\
             \x20   capabilities: [CAP_KILL]\n\
             \x20   devices:\n      - {{path: /dev/console, type: c, major: 5, minor: 1, mode: \"0620\"}}\n\
             \x20   command: [/bin/sh, -c, \"echo '{MARKER}' >/dev/console; poweroff\"]\n",
            root = root().display()
        ),
    )
    .unwrap();
    path
}

/// Builds every format into `out` (packages the store lacks, the bootloader included, are
/// built on the way).
fn build_into(out: &Path) {
    let work = tempfile::tempdir().unwrap();
    let size = DISK_SIZE.to_string();
    slipway()
        .args([
            "build", "-f", FORMATS, "--size", &size, "--name", "img", "--dir",
        ])
        .arg(out)
        .arg(manifest(work.path()))
        .timeout(Duration::from_secs(900))
        .assert()
        .success();
}

/// The outputs of one build, shared by the tests of this file.
fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("target/bootdisk-test/a");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        build_into(&dir);
        dir
    })
}

#[derive(Clone, Copy, Debug)]
enum Firmware {
    SeaBios,
    Ovmf,
}

#[derive(Clone, Copy, Debug)]
enum Attach {
    Cdrom,
    /// A raw disk.
    Disk,
    /// A disk in a container QEMU reads (`-drive format=`): qcow2, vpc, vhdx, vmdk.
    Image(&'static str),
}

/// Boots `file` and returns the console, failing the test unless the marker appears and the
/// machine powers off by itself.
fn boot(file: &Path, firmware: Firmware, attach: Attach) -> Result<Duration, String> {
    let state = tempfile::tempdir().unwrap();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-m",
        "512",
        "-nographic",
    ])
    .args(["-no-reboot", "-net", "none"]);
    if let Firmware::Ovmf = firmware {
        let vars = state.path().join("vars.fd");
        std::fs::copy(OVMF_VARS, &vars).unwrap();
        qemu.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
    }
    match attach {
        Attach::Cdrom => qemu.arg("-cdrom").arg(file),
        // snapshot: boots of one image run side by side and leave it as built.
        Attach::Disk => qemu
            .arg("-drive")
            .arg(format!("file={},format=raw,snapshot=on", file.display())),
        Attach::Image(format) => qemu.arg("-drive").arg(format!(
            "file={},format={format},snapshot=on",
            file.display()
        )),
    };
    let log = state.path().join("console");
    qemu.stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = qemu.spawn().expect("qemu-system-x86_64");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: String = console
        .lines()
        .rev()
        .take(25)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    let what = format!("{} on {firmware:?} as {attach:?}", file.display());
    match status {
        None => Err(format!(
            "{what}: no poweroff in 240 s; console ends with:\n{tail}"
        )),
        Some(s) if !s.success() => Err(format!("{what}: qemu {s}; console ends with:\n{tail}")),
        _ if !console.contains(MARKER) => {
            Err(format!("{what}: no marker; console ends with:\n{tail}"))
        }
        _ if !console.contains("reboot: Power down") => Err(format!(
            "{what}: no clean poweroff; console ends with:\n{tail}"
        )),
        _ => Ok(started.elapsed()),
    }
}

#[test]
fn every_bootable_format_boots_on_its_firmware_as_a_user_attaches_it() {
    use Attach::*;
    use Firmware::*;
    let dir = built();
    let boots: Vec<(&str, Firmware, Attach)> = vec![
        ("img-bios.img", SeaBios, Disk),
        ("img-efi.img", Ovmf, Disk),
        ("img.raw", SeaBios, Disk),
        ("img.raw", Ovmf, Disk),
        ("img.iso", SeaBios, Cdrom),
        ("img.iso", SeaBios, Disk),
        ("img-efi.iso", Ovmf, Cdrom),
        ("img-efi-initrd.iso", Ovmf, Cdrom),
        ("img-hybrid.iso", SeaBios, Cdrom),
        ("img-hybrid.iso", Ovmf, Cdrom),
        ("img-hybrid.iso", Ovmf, Disk),
        ("img.qcow2", SeaBios, Image("qcow2")),
        ("img-efi.qcow2", Ovmf, Image("qcow2")),
        ("img.vhd", SeaBios, Image("vpc")),
        ("img-dynamic.vhd", Ovmf, Image("vpc")),
        ("img.vhdx", Ovmf, Image("vhdx")),
        ("img.vmdk", SeaBios, Image("vmdk")),
        ("gcp/disk.raw", Ovmf, Disk),
    ];
    // gcp's disk as Compute Engine unpacks it.
    let gcp = dir.join("gcp");
    let _ = std::fs::remove_dir_all(&gcp);
    std::fs::create_dir_all(&gcp).unwrap();
    run(Command::new("tar")
        .arg("-xSzf")
        .arg(dir.join("img.img.tar.gz"))
        .arg("-C")
        .arg(&gcp));
    // Two guests at a time: TCG keeps a core busy per guest, and CI has two.
    let workers: usize = std::env::var("SLIPWAY_TEST_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((file, fw, attach)) = boots.get(i) else {
                        break;
                    };
                    let result = boot(&dir.join(file), *fw, *attach);
                    results.lock().unwrap().push((i, result));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    let mut failures = Vec::new();
    for (i, result) in results {
        let (file, fw, attach) = boots[i];
        match result {
            Ok(t) => eprintln!("booted {file} on {fw:?} as {attach:?} in {t:.1?}"),
            Err(e) => failures.push(e),
        }
    }
    eprintln!("{} boots in {:.1?}", boots.len(), started.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// `fsck.fat -n` of the partition at 1 MiB of `disk` (copied out, holes kept: fsck.fat takes no
/// offset).
fn fsck_partition(disk: &Path, size: u64) -> String {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut part = tempfile::NamedTempFile::new().unwrap();
    let mut from = std::fs::File::open(disk).unwrap();
    from.seek(SeekFrom::Start(1 << 20)).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        from.read_exact(&mut chunk[..n]).unwrap();
        if chunk[..n].iter().all(|&b| b == 0) {
            part.seek(SeekFrom::Current(n as i64)).unwrap();
        } else {
            part.write_all(&chunk[..n]).unwrap();
        }
        left -= n as u64;
    }
    part.as_file().set_len(size).unwrap();
    run(Command::new("fsck.fat").arg("-n").arg(part.path()))
}

#[test]
fn host_tools_accept_the_partition_tables_filesystems_and_el_torito_catalogs() {
    let dir = built();
    for gpt in ["img-efi.img", "img.raw"] {
        let text = run(Command::new("sgdisk").arg("-v").arg(dir.join(gpt)));
        assert!(
            text.contains("No problems found"),
            "sgdisk -v {gpt}:\n{text}"
        );
    }
    let text = run(Command::new("sgdisk").arg("-p").arg(dir.join("img.raw")));
    assert!(
        text.contains("EF00"),
        "the BIOS+EFI disk's partition is an ESP:\n{text}"
    );
    // FAT partitions: the MBR one fills the disk after 1 MiB, the GPT ones stop 1 MiB early.
    fsck_partition(&dir.join("img-bios.img"), DISK_SIZE - (1 << 20));
    fsck_partition(&dir.join("img-efi.img"), DISK_SIZE - (2 << 20));
    fsck_partition(&dir.join("img.raw"), DISK_SIZE - (2 << 20));
    let fdisk = run(Command::new("sfdisk")
        .arg("--dump")
        .arg(dir.join("img-bios.img")));
    assert!(
        fdisk.contains("bootable"),
        "the FAT partition is active:\n{fdisk}"
    );

    let report = |iso: &str| {
        run(Command::new("xorriso")
            .args(["-indev"])
            .arg(dir.join(iso))
            .args(["-report_el_torito", "plain"]))
    };
    let bios = report("img.iso");
    assert!(bios.contains("El Torito boot img :   1  BIOS"), "{bios}");
    assert!(bios.contains("isohybrid"), "{bios}");
    for iso in ["img-efi.iso", "img-efi-initrd.iso"] {
        let efi = report(iso);
        assert!(
            efi.contains("El Torito boot img :   1  UEFI"),
            "{iso}:\n{efi}"
        );
    }
    let hybrid = report("img-hybrid.iso");
    for want in ["boot img :   1  BIOS", "boot img :   2  UEFI", "GPT"] {
        assert!(
            hybrid.contains(want),
            "img-hybrid.iso lacks {want}:\n{hybrid}"
        );
    }
    let files = run(Command::new("xorriso")
        .args(["-indev"])
        .arg(dir.join("img-efi-initrd.iso"))
        .args(["-ls", "/"]));
    for want in ["'kernel'", "'initrd.img'", "'cmdline'"] {
        assert!(
            files.contains(want),
            "iso-efi-initrd lacks {want}:\n{files}"
        );
    }
}

#[test]
fn disk_outputs_have_the_requested_size_and_are_sparse() {
    use std::os::unix::fs::MetadataExt;
    let dir = built();
    for disk in ["img-bios.img", "img-efi.img", "img.raw"] {
        let meta = std::fs::metadata(dir.join(disk)).unwrap();
        assert_eq!(meta.len(), DISK_SIZE, "{disk}");
        assert!(
            meta.blocks() * 512 < DISK_SIZE * 3 / 4,
            "{disk} takes {} bytes of {}",
            meta.blocks() * 512,
            DISK_SIZE
        );
    }
}

/// The SHA-256 of a file, read in pieces (the disks are a GiB each).
fn digest(path: &Path) -> Vec<u8> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("{} is missing: {e}", path.display()));
    let mut hash = sha2::Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk).unwrap();
        if n == 0 {
            break hash.finalize().to_vec();
        }
        hash.update(&chunk[..n]);
    }
}

#[test]
fn two_builds_into_different_folders_are_byte_identical() {
    let first = built();
    let second = root().join("target/bootdisk-test/b");
    let _ = std::fs::remove_dir_all(&second);
    std::fs::create_dir_all(&second).unwrap();
    build_into(&second);
    let mut names: Vec<_> = std::fs::read_dir(first)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    names.retain(|n| n != "gcp");
    assert_eq!(names.len(), FILES, "{names:?}");
    for name in names {
        let a = digest(&first.join(&name));
        let b = digest(&second.join(&name));
        assert!(a == b, "{name:?} differs between two builds");
    }
    std::fs::remove_dir_all(&second).unwrap();
}

#[test]
fn a_size_too_small_names_both_sizes_and_writes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let assert = slipway()
        .args([
            "build", "-f", "raw-efi", "--size", "1MiB", "--name", "small", "--dir",
        ])
        .arg(&out)
        .arg(manifest(work.path()))
        .timeout(Duration::from_secs(900))
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(
        err.contains("--size 1048576 bytes (1.0 MiB) is too small for raw-efi")
            && err.contains("need a disk of at least"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_bootable_format_refuses_a_manifest_without_a_kernel() {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("nokernel.yml");
    std::fs::write(&path, "init:\n  - busybox:latest\n").unwrap();
    slipway()
        .args(["build", "-f", "tar,iso-efi", "--dir"])
        .arg(work.path().join("out"))
        .arg(&path)
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "format iso-efi boots the image and needs a kernel: the manifest has no `kernel:` section",
        ));
    assert!(!work.path().join("out").exists());
}

#[test]
fn an_unknown_format_lists_the_known_ones() {
    slipway()
        .args(["build", "-f", "raw-efi,floppy", "--dry-run", "-"])
        .write_stdin("init: [busybox:1]\n")
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "unknown format `floppy`: this version writes kernel+initrd, tar-kernel-initrd, tar, \
             kernel+squashfs, kernel+iso, iso-bios, iso-efi, iso-efi-initrd, iso, raw-bios, \
             raw-efi, aws, qcow2-bios, qcow2-efi, vhd, dynamic-vhd, vhdx, vmdk, gcp, docker",
        ));
}

#[test]
fn a_build_killed_while_writing_leaves_nothing_in_the_output_folder() {
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let path = work.path().join("big.yml");
    std::fs::write(
        &path,
        format!(
            "init:\n  - \"@pkg:{}/pkg/busybox\"\nfiles:\n  - path: big\n    source: {}\n",
            root().display(),
            big.display()
        ),
    )
    .unwrap();
    let out = work.path().join("out");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("slipway"))
        .current_dir(root())
        .env("SLIPWAY_CACHE", root().join("target/slipway-test-cache"))
        .args(["build", "-f", "tar", "--name", "big", "--dir"])
        .arg(&out)
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the build holds an output file open in the folder, then kill it mid-write.
    let fds = PathBuf::from(format!("/proc/{}/fd", child.id()));
    let started = Instant::now();
    let writing = loop {
        let open_there = std::fs::read_dir(&fds).ok().is_some_and(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .any(|target| target.starts_with(&out))
        });
        if open_there {
            break true;
        }
        if child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(300) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        writing,
        "the build ended before it was seen writing an output"
    );
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "a killed build left {left:?}");
}
