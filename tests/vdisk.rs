//! The virtual disk containers, the `gcp` archive and the `docker` tar, checked by the tools that
//! read them: `qemu-img` (check, info, compare against the raw disk), GNU tar, and a real dockerd.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use slipway::format::vdisk::{self, DiskFormat, FORMATS};

const MIB: u64 = 1 << 20;

/// A sparse raw disk with a known pattern: a boot sector, data crossing chunk and block
/// boundaries at odd offsets, a run of written zeros, holes, and the last sector.
fn pattern_disk(dir: &Path, size: u64) -> PathBuf {
    let path = dir.join("pattern.raw");
    let file = File::create(&path).unwrap();
    file.set_len(size).unwrap();
    let mut boot = [0u8; 512];
    boot[..7].copy_from_slice(b"\xeb\x63\x90BOOT");
    boot[510..].copy_from_slice(&[0x55, 0xaa]);
    file.write_all_at(&boot, 0).unwrap();
    let run: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    file.write_all_at(&run, 2 * MIB - 70_001).unwrap();
    file.write_all_at(&vec![0u8; MIB as usize], 10 * MIB)
        .unwrap();
    file.write_all_at(b"middle", 17 * MIB + 12_345).unwrap();
    let mut last = [0xa5u8; 512];
    last[..8].copy_from_slice(b"LASTSECT");
    file.write_all_at(&last, size - 512).unwrap();
    path
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e} (Debian: qemu-utils)"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn convert(format: DiskFormat, raw: &Path, out: &Path) -> PathBuf {
    vdisk::convert(format, raw, out)
        .unwrap_or_else(|e| panic!("converting to {format:?}: {e:#}"))
        .persist()
        .unwrap()
}

/// `qemu-img check`, `info` and `compare` agree that `image` is `raw` in `qemu_format`.
fn assert_qemu_img_agrees(raw: &Path, image: &Path, qemu_format: &str, size: u64) {
    let check = run(Command::new("qemu-img")
        .args(["check", "-f", qemu_format])
        .arg(image));
    // QEMU's vpc driver has no consistency check ("does not support checks", exit 63); its
    // reading of the image is what info and compare test.
    let unsupported = qemu_format == "vpc" && check.status.code() == Some(63);
    assert!(
        (check.status.success() && text(&check).contains("No errors were found")) || unsupported,
        "qemu-img check {}: {}",
        image.display(),
        text(&check)
    );
    eprintln!("qemu-img check {qemu_format}: {}", text(&check).trim());
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json", "-f", qemu_format])
        .arg(image));
    assert!(info.status.success(), "{}", text(&info));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], qemu_format, "{info}");
    assert_eq!(info["virtual-size"], size, "{info}");
    let compare = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", qemu_format])
        .arg(raw)
        .arg(image));
    assert!(
        compare.status.success(),
        "qemu-img compare {} {}: {}",
        raw.display(),
        image.display(),
        text(&compare)
    );
}

#[test]
fn every_container_holds_the_raw_disk_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let size = 48 * MIB;
    let raw = pattern_disk(dir.path(), size);
    // A dense copy of the same bytes: the containers must not depend on the holes.
    let dense = dir.path().join("dense.raw");
    std::fs::write(&dense, std::fs::read(&raw).unwrap()).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    for (name, suffix, format) in FORMATS {
        let file = format!("disk{suffix}");
        let first = convert(*format, &raw, &a.join(&file));
        assert_qemu_img_agrees(&raw, &first, format.qemu_name(), size);
        let second = convert(*format, &dense, &b.join(&file));
        assert!(
            std::fs::read(&first).unwrap() == std::fs::read(&second).unwrap(),
            "{name}: two conversions of the same disk differ"
        );
    }
    // Sparse outputs: a 48 MiB disk with about 0.5 MiB of data.
    use std::os::unix::fs::MetadataExt;
    for (name, suffix, _) in FORMATS {
        let meta = std::fs::metadata(a.join(format!("disk{suffix}"))).unwrap();
        assert!(
            meta.blocks() * 512 < 12 * MIB,
            "{name} occupies {} bytes on disk",
            meta.blocks() * 512
        );
    }
}

#[test]
fn a_larger_disk_spans_several_tables_in_every_container() {
    // 1.5 GiB: three qcow2 L2 tables, many VMDK grain tables, several VHD and VHDX BAT sectors.
    let dir = tempfile::tempdir().unwrap();
    let size = 1536 * MIB;
    let raw = pattern_disk(dir.path(), size);
    for (_, suffix, format) in FORMATS.iter().filter(|(n, _, _)| *n != "qcow2-efi") {
        let out = convert(*format, &raw, &dir.path().join(format!("big{suffix}")));
        assert_qemu_img_agrees(&raw, &out, format.qemu_name(), size);
        std::fs::remove_file(out).unwrap();
    }
}

#[test]
fn sizes_a_container_cannot_hold_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("odd.raw");
    File::create(&raw).unwrap().set_len(3 * MIB + 512).unwrap();
    for format in [DiskFormat::Vhd, DiskFormat::DynamicVhd] {
        let out = dir.path().join("odd.vhd");
        let err = vdisk::convert(format, &raw, &out).unwrap_err().to_string();
        assert!(
            err.contains("odd.raw") && err.contains("3146240 bytes") && err.contains("MiB"),
            "{err}"
        );
        assert!(!out.exists());
    }
    // The other containers take any whole number of sectors.
    let out = convert(DiskFormat::Vhdx, &raw, &dir.path().join("odd.vhdx"));
    assert_qemu_img_agrees(&raw, &out, "vhdx", 3 * MIB + 512);

    let ragged = dir.path().join("ragged.raw");
    std::fs::write(&ragged, [7u8; 1000]).unwrap();
    let err = vdisk::convert(DiskFormat::Qcow2, &ragged, &dir.path().join("r.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ragged.raw") && err.contains("512-byte sectors"),
        "{err}"
    );
}

#[test]
fn an_unreadable_raw_disk_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.raw");
    let err = format!(
        "{:#}",
        anyhow::Error::from(
            vdisk::convert(DiskFormat::Vmdk, &missing, &dir.path().join("m.vmdk")).unwrap_err()
        )
    );
    assert!(
        err.contains("missing.raw") && err.contains("No such file"),
        "{err}"
    );
    let err = vdisk::convert(DiskFormat::Qcow2, dir.path(), &dir.path().join("d.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn the_gcp_archive_unpacks_to_the_raw_disk_with_gnu_tar() {
    let dir = tempfile::tempdir().unwrap();
    let size = 1024 * MIB;
    let raw = pattern_disk(dir.path(), size);
    let out = slipway::format::gcp::convert(&raw, &dir.path().join("x.img.tar.gz"))
        .unwrap()
        .persist()
        .unwrap();
    let again = slipway::format::gcp::convert(&raw, &dir.path().join("y.img.tar.gz"))
        .unwrap()
        .persist()
        .unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&again).unwrap());
    let list = run(Command::new("tar").arg("-tvzf").arg(&out));
    assert!(list.status.success(), "{}", text(&list));
    let listing = String::from_utf8_lossy(&list.stdout);
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(
        listing.contains("disk.raw") && listing.contains(&size.to_string()),
        "{listing}"
    );
    let unpack = dir.path().join("unpack");
    std::fs::create_dir(&unpack).unwrap();
    let x = run(Command::new("tar")
        .arg("-xzf")
        .arg(&out)
        .arg("-C")
        .arg(&unpack));
    assert!(x.status.success(), "{}", text(&x));
    let unpacked = unpack.join("disk.raw");
    assert_eq!(std::fs::metadata(&unpacked).unwrap().len(), size);
    let cmp = run(Command::new("cmp").arg(&unpacked).arg(&raw));
    assert!(
        cmp.status.success(),
        "disk.raw differs from the raw disk: {}",
        text(&cmp)
    );
    // Sparse in, sparse out: the archive holds the data, not the gigabyte.
    let archived = std::fs::metadata(&out).unwrap().len();
    assert!(archived < MIB, "the archive is {archived} bytes");

    let small = dir.path().join("small.raw");
    File::create(&small).unwrap().set_len(64 * MIB).unwrap();
    let err = slipway::format::gcp::convert(&small, &dir.path().join("s.img.tar.gz"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("small.raw") && err.contains("whole number of GiB"),
        "{err}"
    );
}

/// A dockerd of the test's own (data, exec root and socket in a temporary folder), killed when
/// dropped.
struct Dockerd {
    child: std::process::Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Dockerd {
    fn start() -> Result<Dockerd, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("dockerd needs root".into());
        }
        // Short paths: the exec root holds unix sockets (108-byte limit).
        let dir = tempfile::Builder::new()
            .prefix("sd")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let host = format!("unix://{}/d.sock", dir.path().display());
        let log = File::create(dir.path().join("log")).map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("x"))
            .arg("--pidfile")
            .arg(dir.path().join("pid"))
            .args(["-H", &host])
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--storage-driver=vfs",
            ])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting dockerd (Debian: docker.io): {e}"))?;
        let mut dockerd = Dockerd {
            child,
            host,
            _dir: dir,
        };
        for _ in 0..120 {
            if dockerd.docker(&["version"]).status.success() {
                return Ok(dockerd);
            }
            if let Ok(Some(status)) = dockerd.child.try_wait() {
                let log = std::fs::read_to_string(dockerd._dir.path().join("log"));
                return Err(format!("dockerd exited with {status}: {log:?}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        Err("dockerd did not answer within 30 s".into())
    }

    fn docker(&self, args: &[&str]) -> Output {
        run(Command::new(docker_client())
            .args(["-H", &self.host])
            .args(args))
    }
}

/// Debian's client, which matches Debian's daemon; another on PATH otherwise.
fn docker_client() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn docker_imports_the_docker_tar_and_runs_a_command_from_it() {
    use slipway::assemble::tree::{Entry, Kind, Tree};
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian: busybox-static)");
    let mut tree = Tree::new();
    tree.insert("bin/busybox", Entry::file(busybox, 0o755));
    tree.insert("bin/sh", Entry::symlink("busybox"));
    tree.insert(
        "bin/echo",
        Entry {
            kind: Kind::Hardlink("bin/busybox".into()),
            ..Entry::file(Vec::new(), 0o755)
        },
    );
    tree.insert("etc/motd", Entry::file(b"from slipway\n".to_vec(), 0o644));
    tree.insert("tmp", Entry::dir(0o1777));
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("t.docker");
    let file = File::create(&tar).unwrap();
    slipway::format::docker::write_docker(&tree, std::io::BufWriter::new(file))
        .unwrap()
        .into_inner()
        .unwrap()
        .sync_all()
        .unwrap();

    let dockerd = match Dockerd::start() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPED: no dockerd could be started here: {why}");
            return;
        }
    };
    let image = "slipway-docker-format-test:1";
    let import = dockerd.docker(&["import", &tar.to_string_lossy(), image]);
    assert!(import.status.success(), "docker import: {}", text(&import));
    let ran = dockerd.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "/bin/busybox",
        "echo",
        "ok",
    ]);
    assert!(ran.status.success(), "docker run: {}", text(&ran));
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "ok\n");
    let cat = dockerd.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "/bin/sh",
        "-c",
        "cat /etc/motd; /bin/echo linked",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "from slipway\nlinked\n",
        "{}",
        text(&cat)
    );
    let _ = dockerd.docker(&["rmi", image]);
}
