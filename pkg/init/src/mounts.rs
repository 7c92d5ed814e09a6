//! The filesystems of a booted image: the move of the initramfs root onto a tmpfs, the API
//! filesystems, the read-only remount of /, and the unmounts at shutdown.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode};
use rustix::mount::{MountFlags, UnmountFlags};

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct Error {
    what: &'static str,
    path: PathBuf,
    source: io::Error,
}

fn err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error { what, path, source }
}

/// One mount of the boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mount {
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: &'static str,
    /// Needs the real machine (devtmpfs, sysfs, cgroup2); the test mode bind-mounts the
    /// host's instead.
    pub real_boot_only: bool,
}

const fn m(
    target: &'static str,
    fstype: &'static str,
    flags: MountFlags,
    data: &'static str,
    real: bool,
) -> Mount {
    Mount {
        target,
        fstype,
        flags,
        data,
        real_boot_only: real,
    }
}

const NOSUID_NODEV_NOEXEC: MountFlags = MountFlags::NOSUID
    .union(MountFlags::NODEV)
    .union(MountFlags::NOEXEC);

/// The API filesystems, parents before children.
pub const EARLY: &[Mount] = &[
    m("/proc", "proc", NOSUID_NODEV_NOEXEC, "", false),
    m("/sys", "sysfs", NOSUID_NODEV_NOEXEC, "", true),
    m("/dev", "devtmpfs", MountFlags::NOSUID, "mode=0755", true),
    m(
        "/dev/pts",
        "devpts",
        MountFlags::NOSUID.union(MountFlags::NOEXEC),
        "newinstance,ptmxmode=0666,mode=0620",
        true,
    ),
    m(
        "/dev/shm",
        "tmpfs",
        MountFlags::NOSUID.union(MountFlags::NODEV),
        "mode=1777",
        true,
    ),
    m(
        "/run",
        "tmpfs",
        MountFlags::NOSUID.union(MountFlags::NODEV),
        "mode=0755",
        false,
    ),
    m(
        "/tmp",
        "tmpfs",
        MountFlags::NOSUID.union(MountFlags::NODEV),
        "mode=1777",
        false,
    ),
    m(
        "/var",
        "tmpfs",
        MountFlags::NOSUID.union(MountFlags::NODEV),
        "mode=0755",
        false,
    ),
    m("/sys/fs/cgroup", "cgroup2", NOSUID_NODEV_NOEXEC, "", true),
];

pub fn mount_one(mnt: &Mount) -> Result<(), Error> {
    let target = Path::new(mnt.target);
    fs::create_dir_all(target).map_err(err("creating mount point", target))?;
    let data =
        CString::new(mnt.data).map_err(|e| err("mount options of", target)(io::Error::other(e)))?;
    rustix::mount::mount(mnt.fstype, target, mnt.fstype, mnt.flags, data.as_c_str())
        .map_err(|e| err("mounting", target)(e.into()))
}

pub fn remount_root_read_only() -> Result<(), Error> {
    rustix::mount::mount_remount("/", MountFlags::RDONLY, "")
        .map_err(|e| err("remounting read-only", Path::new("/"))(e.into()))
}

/// The initramfs root is the namespace's root mount, which pivot_root cannot leave; containers
/// need a root they can pivot away from. True when / is that rootfs (ramfs, or tmpfs without
/// a parent mount).
pub fn root_is_initramfs() -> bool {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let Ok(stat) = rustix::fs::statfs("/") else {
        return false;
    };
    if stat.f_type == RAMFS_MAGIC {
        return true;
    }
    // A tmpfs rootfs is the first line of the init's mountinfo and is its own parent's child
    // of nothing: its mount point is "/" and its parent id is not another line's id.
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let ids: Vec<(&str, &str, &str, &str)> = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some((f[0], f[1], f[4], *f.get(sep + 1)?))
        })
        .collect();
    ids.iter().any(|(_, parent, point, fstype)| {
        *point == "/"
            && (*fstype == "rootfs" || *fstype == "tmpfs")
            && !ids.iter().any(|(id, ..)| id == parent)
    })
}

/// Copies the tree at `from` into `to` (same filesystem only: mount points are not crossed),
/// keeping modes, owners, symlinks and device nodes. Hand-written because it must also copy
/// device nodes and stop at mount points, which copy crates do not do.
pub fn copy_tree(from: &Path, to: &Path, skip: &Path) -> Result<(), Error> {
    let root_dev = fs::symlink_metadata(from)
        .map_err(err("reading", from))?
        .dev();
    copy_dir(from, to, root_dev, skip)
}

fn copy_dir(from: &Path, to: &Path, dev: u64, skip: &Path) -> Result<(), Error> {
    for entry in fs::read_dir(from).map_err(err("reading", from))? {
        let entry = entry.map_err(err("reading", from))?;
        let src = entry.path();
        if src == skip {
            continue;
        }
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src).map_err(err("reading", &src))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&dst).map_err(err("creating", &dst))?;
            if meta.dev() == dev {
                copy_dir(&src, &dst, dev, skip)?;
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&src).map_err(err("reading", &src))?;
            std::os::unix::fs::symlink(target, &dst).map_err(err("creating", &dst))?;
        } else if ft.is_file() {
            fs::copy(&src, &dst).map_err(err("copying to", &dst))?;
        } else {
            let kind = FileType::from_raw_mode(meta.mode());
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &dst,
                kind,
                Mode::from_raw_mode(meta.mode()),
                meta.rdev(),
            )
            .map_err(|e| err("creating node", &dst)(e.into()))?;
        }
        std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()))
            .map_err(err("chown", &dst))?;
        if !ft.is_symlink() {
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(err("chmod", &dst))?;
        }
    }
    Ok(())
}

/// Moves the initramfs onto a fresh tmpfs and makes it / (switch_root): copy, move the mount
/// onto /, chroot. The caller re-executes itself afterwards so that nothing refers to the old
/// root. The old files are left: their memory is small next to a rebuilt image's, and deleting
/// them would take the only copy if anything above failed half way.
pub fn switch_to_tmpfs_root() -> Result<(), Error> {
    let new = Path::new("/.slipway-root");
    fs::create_dir_all(new).map_err(err("creating", new))?;
    rustix::mount::mount("tmpfs", new, "tmpfs", MountFlags::empty(), c"mode=0755")
        .map_err(|e| err("mounting", new)(e.into()))?;
    copy_tree(Path::new("/"), new, new)?;
    std::env::set_current_dir(new).map_err(err("entering", new))?;
    rustix::mount::mount_move(".", "/").map_err(|e| err("moving onto /", new)(e.into()))?;
    rustix::process::chroot(".").map_err(|e| err("chroot", new)(e.into()))?;
    std::env::set_current_dir("/").map_err(err("entering", Path::new("/")))?;
    Ok(())
}

/// Every mount point but /, deepest first (reverse mount order), from /proc/self/mountinfo.
pub fn mount_points_for_unmount(mountinfo: &str) -> Vec<String> {
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| *p != "/")
        .map(unescape)
        .collect();
    points.reverse();
    points
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match u8::from_str_radix(rest.get(i + 1..i + 4).unwrap_or(""), 8) {
            Ok(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            Err(_) => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Unmounts everything it can (lazily, so a busy mount does not stop the shutdown) and
/// remounts / read-only. Failures are returned for the console, not fatal.
pub fn unmount_all() -> Vec<Error> {
    let mut errors = Vec::new();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in mount_points_for_unmount(&info) {
        let path = PathBuf::from(&point);
        if let Err(e) = rustix::mount::unmount(&path, UnmountFlags::DETACH) {
            // EINVAL: already gone with a parent's lazy unmount.
            if e != rustix::io::Errno::INVAL && e != rustix::io::Errno::NOENT {
                errors.push(err("unmounting", &path)(e.into()));
            }
        }
    }
    if let Err(e) = remount_root_read_only() {
        errors.push(e);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmount_order_is_reverse_mount_order_without_root() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
23 22 0:5 / /proc rw - proc proc rw
24 22 0:6 / /sys rw - sysfs sysfs rw
25 24 0:7 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
26 22 0:8 / /mnt/with\\040space rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_points_for_unmount(info),
            ["/mnt/with space", "/sys/fs/cgroup", "/sys", "/proc"]
        );
    }

    #[test]
    fn parents_are_mounted_before_children() {
        for (i, mnt) in EARLY.iter().enumerate() {
            for parent in &EARLY[i + 1..] {
                assert!(
                    !mnt.target.starts_with(&format!("{}/", parent.target)),
                    "{} is mounted before its parent {}",
                    mnt.target,
                    parent.target
                );
            }
        }
    }

    #[test]
    fn copy_tree_keeps_modes_links_and_skips_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        fs::create_dir_all(from.join("bin")).unwrap();
        fs::write(from.join("bin/tool"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(from.join("bin/tool"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("bin/tool", from.join("link")).unwrap();
        fs::create_dir(from.join("target")).unwrap();
        let to = from.join("target");
        copy_tree(&from, &to, &to).unwrap();
        assert_eq!(
            fs::read_to_string(to.join("bin/tool")).unwrap(),
            "#!/bin/sh\n"
        );
        assert_eq!(
            fs::metadata(to.join("bin/tool")).unwrap().mode() & 0o7777,
            0o750
        );
        assert_eq!(
            fs::read_link(to.join("link")).unwrap(),
            Path::new("bin/tool")
        );
        assert!(!to.join("target").exists());
    }
}
