//! A root on a block device (`kernel+squashfs`, `kernel+iso`): the init, started from the small
//! initrd, mounts the root that `root=` names and switches into it.
//!
//! `root=/dev/vda` (or `/dev/sda`, `/dev/nvme0n1`, `/dev/sr0`), `rootfstype=squashfs|iso9660|...`
//! (without it, each filesystem the kernel knows is tried) and `rootwait=SECONDS` (`rootwait`
//! alone: forever; default 30 s) on the kernel command line, as the kernel itself reads them.
//! The init mounts /proc, /sys, /dev and /run, loads the filesystem's module and the drivers of
//! the devices present (still listening for new devices while it waits for the root's), mounts
//! the root read-only, moves the four API filesystems into it, deletes the initramfs's files (the
//! RAM they hold is freed), moves the root onto `/`, chroots and executes the root's own `/init`
//! (switch_root's semantics). That init finds the API filesystems mounted, learns from
//! [`ENV`] which root it runs on, and boots as from an initrd.
//!
//! A failure prints what went wrong and which block devices exist, then the init exits: the
//! kernel panics, and `panic=N` on the command line reboots the machine after N seconds.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::mount::MountFlags;

use crate::cmdline;
use crate::coldplug::Coldplug;
use crate::mounts;
use crate::timeline;

/// What the init of the small initrd tells the root's init: `DEVICE FSTYPE STARTED_MS
/// MOUNTED_MS`, the two times in milliseconds since the kernel started.
pub const ENV: &str = "SLIPWAY_ROOT";

/// How long the root's device may take to appear unless `rootwait` says otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// The API filesystems moved into the new root, in this order.
const MOVED: &[&str] = &["/proc", "/sys", "/dev", "/run"];

/// Where the root is mounted before it becomes `/`.
const NEW_ROOT: &str = "/newroot";

/// The filesystems tried, in order, when `rootfstype=` is not given: Slipway's two root formats
/// first, then whatever else the kernel knows.
const LIKELY: &[&str] = &["squashfs", "iso9660"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this initrd holds only what mounts the root: add root=/dev/vda (or /dev/sda, \
         /dev/nvme0n1, /dev/sr0) and rootfstype=squashfs (or iso9660) to the kernel command line"
    )]
    NoRootGiven,
    #[error("{0}")]
    BadParameter(String),
    #[error(
        "root device {device} did not appear within {waited} s (block devices present: {present}); \
         is the disk attached, on a controller the initrd has a driver for (virtio-blk, \
         virtio-scsi, NVMe, SATA, Hyper-V, VMware, Xen)? rootwait=SECONDS waits longer"
    )]
    NoDevice {
        device: String,
        waited: u64,
        present: String,
    },
    #[error("mounting the root {device} ({fstype}) read-only on {NEW_ROOT}: {source}")]
    Mount {
        device: String,
        fstype: String,
        source: io::Error,
    },
    #[error("the root {0} has no /init to continue the boot with")]
    NoInit(String),
    #[error("{what}: {source}")]
    Step { what: String, source: io::Error },
}

fn step(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Step { what, source }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub device: String,
    pub fstype: Option<String>,
    /// None: wait forever.
    pub wait: Option<Duration>,
}

/// `root=`, `rootfstype=` and `rootwait` from the command line (the last of each wins, as in
/// the kernel); None without `root=`.
pub fn request(params: &[(String, Option<String>)]) -> Result<Option<Request>, Error> {
    let mut device = None;
    let mut fstype = None;
    let mut wait = Some(DEFAULT_WAIT);
    for (key, value) in params {
        match (key.as_str(), value.as_deref()) {
            ("root", Some(v)) => device = Some(v.to_string()),
            ("rootfstype", Some(v)) if !v.is_empty() => fstype = Some(v.to_string()),
            ("rootwait", None) => wait = None,
            ("rootwait", Some(v)) => {
                let secs: u64 = v.parse().map_err(|_| {
                    Error::BadParameter(format!(
                        "rootwait={v}: expected a number of seconds, or rootwait alone to wait \
                         forever"
                    ))
                })?;
                wait = Some(Duration::from_secs(secs));
            }
            _ => {}
        }
    }
    let Some(device) = device else {
        return Ok(None);
    };
    if !device.starts_with("/dev/") || device.contains("/../") || device.len() <= 5 {
        return Err(Error::BadParameter(format!(
            "root={device}: name the device by its path, /dev/vda for instance"
        )));
    }
    Ok(Some(Request {
        device,
        fstype,
        wait,
    }))
}

/// What the root's init learns from [`ENV`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    pub device: String,
    pub fstype: String,
    /// When the first init started: the end of the kernel's part of the boot.
    pub started_ms: u64,
    pub mounted_ms: u64,
}

impl Switched {
    fn to_env(&self) -> String {
        format!(
            "{} {} {} {}",
            self.device, self.fstype, self.started_ms, self.mounted_ms
        )
    }

    fn parse(text: &str) -> Option<Switched> {
        let mut words = text.split(' ');
        let switched = Switched {
            device: words.next()?.to_string(),
            fstype: words.next()?.to_string(),
            started_ms: words.next()?.parse().ok()?,
            mounted_ms: words.next()?.parse().ok()?,
        };
        words.next().is_none().then_some(switched)
    }

    /// The root the first init switched to, if it did (and forgets it, so that the processes
    /// the init starts do not inherit it).
    pub fn take_from_env() -> Option<Switched> {
        let text = std::env::var(ENV).ok()?;
        // SAFETY: called at the start of main, before the init starts any thread.
        unsafe { std::env::remove_var(ENV) };
        Self::parse(&text)
    }
}

/// True when `/` is the initramfs (a ramfs or tmpfs), where a root switch can happen.
#[allow(clippy::unnecessary_cast)] // f_type's integer type differs between architectures
fn in_initramfs() -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    rustix::fs::statfs("/").is_ok_and(|s| matches!(s.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC))
}

/// Switches to the root `root=` names, if the init runs from an initramfs and the command line
/// names one. Returns when the boot goes on from the initramfs; after a failure it prints the
/// reason and exits (a kernel panic).
pub fn switch_if_asked(started_ms: u64, say: impl Fn(String) + Copy) {
    if !in_initramfs() {
        return;
    }
    let Err(e) = try_switch(started_ms, say) else {
        return;
    };
    say(format!("cannot mount the root: {e}"));
    say("giving up: the kernel panics now (panic=SECONDS on its command line reboots)".into());
    std::process::exit(1);
}

fn try_switch(started_ms: u64, say: impl Fn(String) + Copy) -> Result<(), Error> {
    if let Some(proc_mount) = mounts::early("/proc")
        && !mounts::is_mount_point(Path::new("/proc"))
    {
        mounts::mount_one(proc_mount).map_err(|e| Error::Step {
            what: "mounting /proc".into(),
            source: io::Error::other(e.to_string()),
        })?;
    }
    let text = fs::read_to_string("/proc/cmdline").map_err(step("reading /proc/cmdline"))?;
    let request = match request(&cmdline::parse(&text))? {
        Some(r) => r,
        None if Path::new(slipway_layout::ROOT_ON_DEVICE).exists() => {
            return Err(Error::NoRootGiven);
        }
        None => return Ok(()),
    };
    for target in &MOVED[1..] {
        if let Some(m) = mounts::early(target) {
            mounts::mount_one(m).map_err(|e| Error::Step {
                what: format!("mounting {target}"),
                source: io::Error::other(e.to_string()),
            })?;
        }
    }
    let fstype = mount_root(&request, say)?;
    let switched = Switched {
        device: request.device.clone(),
        fstype,
        started_ms,
        mounted_ms: timeline::now_ms(),
    };
    say(format!(
        "root {} ({}) mounted read-only; switching to it",
        switched.device, switched.fstype
    ));
    enter_new_root()?;
    let err = std::process::Command::new("/init")
        .env(ENV, switched.to_env())
        .exec();
    Err(Error::Step {
        what: format!("executing /init of the root {}", switched.device),
        source: err,
    })
}

/// Loads the drivers, waits for the device, mounts it on [`NEW_ROOT`]; returns the filesystem.
fn mount_root(request: &Request, say: impl Fn(String) + Copy) -> Result<String, Error> {
    let mut plug = match Coldplug::open(say) {
        Ok(p) => Some(p),
        Err(e) => {
            // A kernel with every driver built in needs no modules.
            say(format!("no kernel modules: {e}"));
            None
        }
    };
    if let Some(plug) = &mut plug {
        let names: Vec<String> = match &request.fstype {
            Some(fs) if !known_filesystems().contains(fs) => vec![format!("fs-{fs}")],
            Some(_) => Vec::new(),
            None => vec!["squashfs".into(), "isofs".into()],
        };
        let errors = plug.load_named(&names);
        if request.fstype.is_some() {
            for e in errors {
                say(e.to_string());
            }
        }
        plug.settle();
    }
    let device = Path::new(&request.device);
    let since = Instant::now();
    while !device.exists() {
        if request.wait.is_some_and(|w| since.elapsed() >= w) {
            return Err(Error::NoDevice {
                device: request.device.clone(),
                waited: since.elapsed().as_secs(),
                present: block_devices(),
            });
        }
        // Some controllers (NVMe) add their disks from a worker after the driver loaded; a
        // disk behind a bus that just appeared needs one more driver.
        if !plug.as_mut().is_some_and(Coldplug::poll) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fs::create_dir_all(NEW_ROOT).map_err(step(format!("creating {NEW_ROOT}")))?;
    let candidates: Vec<String> = match &request.fstype {
        Some(fs) => vec![fs.clone()],
        None => {
            let mut all: Vec<String> = LIKELY.iter().map(|s| s.to_string()).collect();
            all.extend(
                known_filesystems()
                    .into_iter()
                    .filter(|f| !LIKELY.contains(&f.as_str())),
            );
            all
        }
    };
    let mut last = None;
    for fstype in candidates {
        match rustix::mount::mount(device, NEW_ROOT, fstype.as_str(), MountFlags::RDONLY, c"") {
            Ok(()) => return Ok(fstype),
            Err(e) => {
                last = Some(Error::Mount {
                    device: request.device.clone(),
                    fstype,
                    source: e.into(),
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Mount {
        device: request.device.clone(),
        fstype: "any".into(),
        source: io::Error::other("the kernel knows no block device filesystem"),
    }))
}

/// The filesystems the kernel has that live on a device (`/proc/filesystems` without `nodev`).
fn known_filesystems() -> Vec<String> {
    fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("nodev"))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The block devices the kernel has, for the message when the root's is missing.
fn block_devices() -> String {
    let mut names: Vec<String> = fs::read_dir("/sys/class/block")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" ")
    }
}

/// Moves the API filesystems into the new root, frees the initramfs and makes the new root `/`.
fn enter_new_root() -> Result<(), Error> {
    let new_root = Path::new(NEW_ROOT);
    if !new_root.join("init").is_file() {
        let device = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(NEW_ROOT))
            .and_then(|l| l.split(" - ").nth(1))
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("the device")
            .to_string();
        return Err(Error::NoInit(device));
    }
    for target in MOVED {
        let to = new_root.join(&target[1..]);
        rustix::mount::mount_move(*target, &to)
            .map_err(|e| step(format!("moving {target} to {}", to.display()))(e.into()))?;
    }
    let root_dev = fs::symlink_metadata("/").map_err(step("reading /"))?.dev();
    remove_initramfs(Path::new("/"), root_dev, new_root);
    std::env::set_current_dir(new_root).map_err(step(format!("entering {NEW_ROOT}")))?;
    rustix::mount::mount_move(".", "/")
        .map_err(|e| step(format!("moving {NEW_ROOT} onto /"))(e.into()))?;
    rustix::process::chroot(".").map_err(|e| step("chroot into the new root")(e.into()))?;
    std::env::set_current_dir("/").map_err(step("entering the new /"))?;
    Ok(())
}

/// Deletes the initramfs's files (those on `dev`), except `keep`: what switch_root does, so
/// that the RAM they hold goes back to the system. Failures are skipped: nothing depends on it.
fn remove_initramfs(dir: &Path, dev: u64, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev || path == keep {
            continue;
        }
        if meta.is_dir() {
            remove_initramfs(&path, dev, keep);
            let _ = fs::remove_dir(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(line: &str) -> Result<Option<Request>, Error> {
        request(&cmdline::parse(line))
    }

    #[test]
    fn root_fstype_and_wait_come_from_the_command_line() {
        assert_eq!(req("console=ttyS0 quiet").unwrap(), None);
        assert_eq!(
            req("root=/dev/vda rootfstype=squashfs").unwrap(),
            Some(Request {
                device: "/dev/vda".into(),
                fstype: Some("squashfs".into()),
                wait: Some(DEFAULT_WAIT),
            })
        );
        let r = req("root=/dev/sda root=/dev/nvme0n1 rootwait=5")
            .unwrap()
            .unwrap();
        assert_eq!(r.device, "/dev/nvme0n1", "the last root= wins");
        assert_eq!(r.fstype, None);
        assert_eq!(r.wait, Some(Duration::from_secs(5)));
        assert_eq!(req("root=/dev/sr0 rootwait").unwrap().unwrap().wait, None);
    }

    #[test]
    fn bad_root_parameters_are_explained() {
        for line in [
            "root=LABEL=x",
            "root=/dev/",
            "root=vda",
            "root=/dev/vda rootwait=soon",
        ] {
            let err = req(line).unwrap_err().to_string();
            assert!(err.contains("root"), "{line}: {err}");
        }
    }

    #[test]
    fn the_switch_is_handed_over_through_the_environment() {
        let s = Switched {
            device: "/dev/vda".into(),
            fstype: "squashfs".into(),
            started_ms: 812,
            mounted_ms: 1040,
        };
        assert_eq!(Switched::parse(&s.to_env()), Some(s));
        assert_eq!(Switched::parse("/dev/vda squashfs 1"), None);
        assert_eq!(Switched::parse("/dev/vda squashfs x 2"), None);
    }

    #[test]
    fn the_missing_device_message_names_it_and_what_exists() {
        let e = Error::NoDevice {
            device: "/dev/vda".into(),
            waited: 30,
            present: "sda sr0".into(),
        }
        .to_string();
        assert!(
            e.contains("/dev/vda") && e.contains("30 s") && e.contains("sda sr0"),
            "{e}"
        );
    }
}
