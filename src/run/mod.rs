//! Booting what `slipway build` produced, in a local hypervisor.
//!
//! [`find_boot_source`] turns a `NAME` or `PATH` into what to boot (kernel+initrd with an
//! optional root disk, an ISO or a disk image), the way `linuxkit run` does; a file is recognised
//! by its contents ([`probe`]), which also says which firmware it boots with. [`qemu`] boots it.
//! [`hyperkit`] (macOS) and [`hyperv`] (Windows) only build the command line or script, since
//! neither runs on Linux; LinuxKit's cloud backends are not implemented.

pub mod boot_report;
pub mod hyperkit;
pub mod hyperv;
pub mod probe;
pub mod qemu;

use std::path::{Path, PathBuf};

use crate::format::kernel_initrd::KernelInitrdFiles;
pub use probe::{Boots, Container};

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootSource {
    /// `NAME-kernel`, `NAME-initrd.img` and the contents of `NAME-cmdline`, plus the root file
    /// system image of `kernel+squashfs` or `kernel+iso` (`root=` is then on the command line).
    KernelInitrd {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
        root: Option<RootImage>,
    },
    /// A bootable ISO (`iso-bios`, `iso-efi`, ...), attached as a CD.
    Iso { path: PathBuf, boots: Boots },
    /// A bootable disk image (`raw-bios`, `raw-efi`, `qcow2-*`, `vhd`, ...), attached as the
    /// first disk with QEMU's driver for its container.
    Disk {
        path: PathBuf,
        container: Container,
        boots: Boots,
    },
}

impl BootSource {
    /// The firmware the image itself boots with (kernel+initrd needs none).
    pub fn boots(&self) -> Option<Boots> {
        match self {
            BootSource::KernelInitrd { .. } => None,
            BootSource::Iso { boots, .. } | BootSource::Disk { boots, .. } => Some(*boots),
        }
    }
}

/// The read-only root file system of `kernel+squashfs` (`NAME-squashfs.img`) or `kernel+iso`
/// (`NAME-root.iso`), attached as the first virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootImage {
    pub path: PathBuf,
    /// `squashfs` or `iso9660`, for `rootfstype=`.
    pub fstype: &'static str,
}

/// The root device the first virtio-blk disk becomes.
pub const ROOT_DEVICE: &str = "/dev/vda";

/// Errors of `slipway run`; each names the file, option or process involved.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "nothing to boot at {target}: tried {tried} (build one with `slipway build`, or give the path of an .iso or disk image)"
    )]
    NotFound { target: PathBuf, tried: String },
    #[error("{found} exists but {missing} does not: the build output is incomplete")]
    Incomplete { found: PathBuf, missing: PathBuf },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {option} {value:?}: {why}")]
    BadOption {
        option: &'static str,
        value: String,
        why: String,
    },
    #[error("disk {path} does not exist and has no size= to create it with")]
    DiskWithoutSize { path: PathBuf },
    #[error("creating {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed: {detail}")]
    Tool { program: String, detail: String },
    #[error("starting {program} (is it installed? Debian: qemu-system-x86, qemu-utils)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for {program}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("UEFI firmware {path} not found (Debian package ovmf)")]
    NoFirmware { path: PathBuf },
    #[error("the guest did not power off within {seconds} s; qemu was killed")]
    Timeout { seconds: u64 },
    #[error("{backend} cannot boot this: {why}")]
    Unsupported { backend: &'static str, why: String },
    #[error("qemu exited with {status}")]
    QemuFailed { status: std::process::ExitStatus },
}

/// Finds what to boot for `target`, like `linuxkit run`:
/// - `target` is an existing file: whatever its contents say it is ([`probe_file`]);
/// - `target-squashfs.img` exists: kernel+initrd with that squashfs as the root disk;
/// - `target-root.iso` exists: kernel+initrd with that ISO 9660 image as the root disk;
/// - `target-kernel` exists: kernel+initrd (`target-initrd.img`, `target-cmdline`);
/// - otherwise the ISO and disk outputs of `slipway build` named after `target`, in
///   [`IMAGE_SUFFIXES`] order, first found wins.
///
/// `target` is a path prefix, so a bare `NAME` means the build output in the current folder.
pub fn find_boot_source(target: &Path) -> Result<BootSource, RunError> {
    if target.is_file() {
        return probe_file(target);
    }
    let (dir, name) = split_prefix(target);
    let files = KernelInitrdFiles::paths(&dir, &name);
    for (suffix, fstype) in ROOT_IMAGES {
        let path = dir.join(format!("{name}{suffix}"));
        if path.is_file() {
            let root = RootImage { path, fstype };
            return kernel_initrd(&files, Some(root));
        }
    }
    if files.kernel.is_file() {
        return kernel_initrd(&files, None);
    }
    let candidates = image_candidates(&dir, &name, IMAGE_SUFFIXES);
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return probe_file(found);
    }
    let tried = ROOT_IMAGES
        .iter()
        .map(|(suffix, _)| dir.join(format!("{name}{suffix}")))
        .chain(std::iter::once(files.kernel.clone()))
        .chain(candidates)
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(RunError::NotFound {
        target: target.to_path_buf(),
        tried,
    })
}

/// The root file system images of `kernel+squashfs` and `kernel+iso`, looked for first.
pub const ROOT_IMAGES: [(&str, &str); 2] =
    [("-squashfs.img", "squashfs"), ("-root.iso", "iso9660")];

/// The output names of the formats that boot without `-kernel`, in the order `run` looks for
/// them: ISOs, then raw disks, then the disk containers.
pub const IMAGE_SUFFIXES: &[&str] = &[
    ".iso",
    "-efi.iso",
    "-hybrid.iso",
    "-efi-initrd.iso",
    "-bios.img",
    "-efi.img",
    ".qcow2",
    "-efi.qcow2",
    ".raw",
    ".vhd",
    "-dynamic.vhd",
    ".vhdx",
    ".vmdk",
];

fn image_candidates(dir: &Path, name: &str, suffixes: &[&str]) -> Vec<PathBuf> {
    suffixes
        .iter()
        .map(|suffix| dir.join(format!("{name}{suffix}")))
        .collect()
}

/// A kernel+initrd build, with the root image and its `root=` when there is one.
fn kernel_initrd(
    files: &KernelInitrdFiles,
    root: Option<RootImage>,
) -> Result<BootSource, RunError> {
    let found = root
        .as_ref()
        .map_or(files.kernel.clone(), |r| r.path.clone());
    for missing in [&files.kernel, &files.initrd, &files.cmdline] {
        if !missing.is_file() {
            return Err(RunError::Incomplete {
                found,
                missing: missing.clone(),
            });
        }
    }
    let cmdline = std::fs::read_to_string(&files.cmdline).map_err(|source| RunError::Read {
        path: files.cmdline.clone(),
        source,
    })?;
    let mut cmdline = cmdline.trim_end_matches('\n').to_string();
    // A command line that names its root already (the build may write it) is left alone.
    if let Some(root) = &root
        && !cmdline.split_whitespace().any(|w| w.starts_with("root="))
    {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(&format!("root={ROOT_DEVICE} rootfstype={}", root.fstype));
    }
    Ok(BootSource::KernelInitrd {
        kernel: files.kernel.clone(),
        initrd: files.initrd.clone(),
        cmdline,
        root,
    })
}

/// An image file, by its contents: an ISO boots as a CD, anything else as a disk in its
/// container's driver. When the firmware cannot be told (a container `qemu-img` cannot read, a
/// disk without a known boot loader), BIOS it is, and `--uefi` can say otherwise.
pub fn probe_file(path: &Path) -> Result<BootSource, RunError> {
    let container = probe::container(path)?;
    let boots = match container {
        Container::Iso => probe::iso_boots(path),
        _ => probe::disk_boots(path, container),
    }
    .unwrap_or_else(|e| {
        tracing::warn!(
            "cannot tell which firmware {} boots with ({e}); using BIOS (--uefi for UEFI)",
            path.display()
        );
        Boots::default()
    });
    let path = path.to_path_buf();
    Ok(match container {
        Container::Iso => BootSource::Iso { path, boots },
        _ => BootSource::Disk {
            path,
            container,
            boots,
        },
    })
}

/// `program` and `args` as one POSIX shell command line, quoting only what needs it, for printing
/// a command that the user runs elsewhere.
pub fn shell_words(program: &Path, args: &[std::ffi::OsString]) -> String {
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|word| {
            let word = word.to_string_lossy();
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:,=@%+".contains(c));
            if plain {
                word.into_owned()
            } else {
                format!("'{}'", word.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `out/minimal` -> (`out`, `minimal`); `minimal` -> (`.`, `minimal`).
pub(crate) fn split_prefix(target: &Path) -> (PathBuf, String) {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    (dir, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    fn kernel_files(dir: &Path, name: &str) {
        write(dir, &format!("{name}-kernel"), b"k");
        write(dir, &format!("{name}-initrd.img"), b"i");
        write(dir, &format!("{name}-cmdline"), b"console=ttyS0\n");
    }

    #[test]
    fn kernel_initrd_output_is_found_by_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        kernel_files(dir.path(), "minimal");
        let found = find_boot_source(&dir.path().join("minimal")).unwrap();
        assert_eq!(
            found,
            BootSource::KernelInitrd {
                kernel: dir.path().join("minimal-kernel"),
                initrd: dir.path().join("minimal-initrd.img"),
                cmdline: "console=ttyS0".into(),
                root: None,
            }
        );
    }

    #[test]
    fn a_squashfs_or_iso_root_comes_first_and_puts_root_on_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        kernel_files(dir.path(), "m");
        write(dir.path(), "m.iso", b"");
        let iso_root = write(dir.path(), "m-root.iso", b"");
        let BootSource::KernelInitrd { cmdline, root, .. } =
            find_boot_source(&dir.path().join("m")).unwrap()
        else {
            panic!("not kernel+initrd");
        };
        assert_eq!(cmdline, "console=ttyS0 root=/dev/vda rootfstype=iso9660");
        assert_eq!(
            root,
            Some(RootImage {
                path: iso_root,
                fstype: "iso9660"
            })
        );
        let squashfs = write(dir.path(), "m-squashfs.img", b"");
        let BootSource::KernelInitrd { cmdline, root, .. } =
            find_boot_source(&dir.path().join("m")).unwrap()
        else {
            panic!("not kernel+initrd");
        };
        assert_eq!(cmdline, "console=ttyS0 root=/dev/vda rootfstype=squashfs");
        assert_eq!(root.unwrap().path, squashfs);
        // A command line with its own root= keeps it.
        write(dir.path(), "m-cmdline", b"root=/dev/sda ro\n");
        let BootSource::KernelInitrd { cmdline, .. } =
            find_boot_source(&dir.path().join("m")).unwrap()
        else {
            panic!("not kernel+initrd");
        };
        assert_eq!(cmdline, "root=/dev/sda ro");
    }

    #[test]
    fn a_root_image_without_its_kernel_is_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "x-squashfs.img", b"");
        let err = find_boot_source(&dir.path().join("x"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x-squashfs.img exists") && err.contains("x-kernel"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_initrd_is_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x-kernel"), "k").unwrap();
        let err = find_boot_source(&dir.path().join("x")).unwrap_err();
        assert!(err.to_string().contains("x-initrd.img"), "{err}");
    }

    #[test]
    fn images_are_picked_in_linuxkit_order() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("n");
        // Create the candidates from last to first: each new one must win.
        for suffix in IMAGE_SUFFIXES.iter().rev() {
            let path = write(dir.path(), &format!("n{suffix}"), &[0; 4096]);
            let found = match find_boot_source(&prefix).unwrap() {
                BootSource::Disk { path, .. } | BootSource::Iso { path, .. } => path,
                other => panic!("{other:?}"),
            };
            assert_eq!(found, path, "{suffix}");
        }
        // kernel+initrd comes before every image.
        kernel_files(dir.path(), "n");
        assert!(matches!(
            find_boot_source(&prefix).unwrap(),
            BootSource::KernelInitrd { .. }
        ));
    }

    #[test]
    fn a_file_is_taken_for_what_its_bytes_say_not_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut iso = vec![0u8; 34816];
        iso[32768..32774].copy_from_slice(b"\x01CD001");
        let disguised = write(dir.path(), "looks-like-a-disk.img", &iso);
        assert!(matches!(
            find_boot_source(&disguised).unwrap(),
            BootSource::Iso { .. }
        ));
        let qcow = write(dir.path(), "disk.iso", b"QFI\xfb\0\0\0\x03");
        assert!(matches!(
            find_boot_source(&qcow).unwrap(),
            BootSource::Disk {
                container: Container::Qcow2,
                ..
            }
        ));
    }

    #[test]
    fn nothing_to_boot_lists_what_was_tried() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_boot_source(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope-kernel")
                && err.contains("nope.iso")
                && err.contains("nope-squashfs.img")
                && err.contains("nope.vmdk"),
            "{err}"
        );
    }
}
