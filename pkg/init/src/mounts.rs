//! The filesystems of a booted image: the API filesystems, the read-only remount of / (the
//! initramfs, used where the kernel unpacked it), and the unmounts at shutdown.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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
///
/// `/run`, `/tmp` and `/var` are tmpfs, which the kernel lets grow to half the RAM each unless
/// told otherwise: three of them could promise 150% of the machine and one runaway writer
/// could take every page the services need. Their caps add up to 80% and leave a fifth of the
/// RAM to processes whatever is written: `/run` 25% (the writable layers of containers and
/// the engine's state live there), `/tmp` 15%, `/var` 40% (logs, and the images and stores
/// that `slipway-engine run` pulls). A tmpfs only uses the pages it holds, so the caps cost
/// nothing until they are reached; a state disk mounted under `/var` is not bounded by them.
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
        "mode=0755,size=25%",
        false,
    ),
    m(
        "/tmp",
        "tmpfs",
        MountFlags::NOSUID.union(MountFlags::NODEV),
        "mode=1777,size=15%",
        false,
    ),
    m(
        "/var",
        "tmpfs",
        MountFlags::NOSUID.union(MountFlags::NODEV),
        "mode=0755,size=40%",
        false,
    ),
    m("/sys/fs/cgroup", "cgroup2", NOSUID_NODEV_NOEXEC, "", true),
];

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn writable_tmpfs_mounts_are_capped_below_the_ram() {
        let mut total = 0;
        for target in ["/run", "/tmp", "/var"] {
            let mnt = early(target).unwrap();
            let size = mnt
                .data
                .split(',')
                .find_map(|o| o.strip_prefix("size="))
                .unwrap_or_else(|| panic!("{target} has no size= option"));
            total += size.strip_suffix('%').unwrap().parse::<u32>().unwrap();
        }
        assert!(total <= 80, "tmpfs caps add up to {total}% of the RAM");
    }
}

/// Where /etc/resolv.conf points (a symlink of the init image): made empty at boot so that a
/// container binding /etc/resolv.conf (LinuxKit's labels do) starts before any DHCP lease, and
/// dhcpcd's resolvconf replaces it when a lease brings resolvers.
pub const RESOLV_CONF: &str = "/run/resolvconf/resolv.conf";

pub fn make_resolv_conf() -> Result<(), Error> {
    let path = Path::new(RESOLV_CONF);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err("creating", dir))?;
    }
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(err("creating", path))
}

pub fn mount_one(mnt: &Mount) -> Result<(), Error> {
    let target = Path::new(mnt.target);
    fs::create_dir_all(target).map_err(err("creating mount point", target))?;
    let data =
        CString::new(mnt.data).map_err(|e| err("mount options of", target)(io::Error::other(e)))?;
    rustix::mount::mount(mnt.fstype, target, mnt.fstype, mnt.flags, data.as_c_str())
        .map_err(|e| err("mounting", target)(e.into()))
}

/// Whether something is mounted on `path`: it is on another device than its parent. The API
/// filesystems a root switch moved into place are, and are not mounted again.
pub fn is_mount_point(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (rustix::fs::stat(path), rustix::fs::stat(parent)) {
        (Ok(p), Ok(q)) => p.st_dev != q.st_dev,
        _ => false,
    }
}

/// The early mount of `target` (`/proc`, `/dev`, ...).
pub fn early(target: &str) -> Option<&'static Mount> {
    EARLY.iter().find(|m| m.target == target)
}

/// Mount points whose mounts are shared with the containers that bind them `rshared`: a state
/// disk that `mountie` mounts under /var in its container is the host's, and the later
/// containers' (LinuxKit shares the whole tree; /var is where persistent disks go).
pub const SHARED: &[&str] = &["/var"];

pub fn make_shared(target: &str) -> Result<(), Error> {
    let path = Path::new(target);
    rustix::mount::mount_change(path, rustix::mount::MountPropagationFlags::SHARED)
        .map_err(|e| err("making shared", path)(e.into()))
}

pub fn remount_root_read_only() -> Result<(), Error> {
    rustix::mount::mount_remount("/", MountFlags::RDONLY, "")
        .map_err(|e| err("remounting read-only", Path::new("/"))(e.into()))
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
}
