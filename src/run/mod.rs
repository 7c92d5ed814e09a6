//! Booting what `slipway build` produced, in a local hypervisor.
//!
//! [`find_boot_source`] turns a `NAME` or `PATH` into what to boot (kernel+initrd, an ISO or a
//! disk image), the way `linuxkit run` does; [`qemu`] boots it. [`hyperkit`] (macOS) and
//! [`hyperv`] (Windows) only build the command line or script, since neither runs on Linux;
//! LinuxKit's cloud backends are not implemented.

pub mod boot_report;
pub mod hyperkit;
pub mod hyperv;
pub mod qemu;

use std::path::{Path, PathBuf};

use crate::format::kernel_initrd::KernelInitrdFiles;

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootSource {
    /// `NAME-kernel`, `NAME-initrd.img` and the contents of `NAME-cmdline`.
    KernelInitrd {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
    },
    /// A bootable ISO (`iso-bios`, `iso-efi`, ...).
    Iso(PathBuf),
    /// A bootable disk image (`raw-bios`, `raw-efi`, `qcow2-*`, ...), attached as the first disk.
    Disk(PathBuf),
}

/// Errors of `slipway run`; each names the file, option or process involved.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "nothing to boot at {target}: tried {tried} (build one with `slipway build`, or give the path of an .iso or disk image)"
    )]
    NotFound { target: PathBuf, tried: String },
    #[error("{kernel} exists but {missing} does not: the kernel+initrd build output is incomplete")]
    Incomplete { kernel: PathBuf, missing: PathBuf },
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
/// - `target` is an existing file: an `.iso` boots as a CD, anything else as a disk image;
/// - `target-kernel` exists: kernel+initrd (`target-initrd.img`, `target-cmdline`);
/// - otherwise the disk and ISO outputs of `slipway build` named after `target`, first found wins.
///
/// `target` is a path prefix, so a bare `NAME` means the build output in the current folder.
pub fn find_boot_source(target: &Path) -> Result<BootSource, RunError> {
    if target.is_file() {
        return Ok(if has_extension(target, "iso") {
            BootSource::Iso(target.to_path_buf())
        } else {
            BootSource::Disk(target.to_path_buf())
        });
    }
    let (dir, name) = split_prefix(target);
    let files = KernelInitrdFiles::paths(&dir, &name);
    if files.kernel.is_file() {
        for missing in [&files.initrd, &files.cmdline] {
            if !missing.is_file() {
                return Err(RunError::Incomplete {
                    kernel: files.kernel.clone(),
                    missing: missing.clone(),
                });
            }
        }
        let cmdline = std::fs::read_to_string(&files.cmdline).map_err(|source| RunError::Read {
            path: files.cmdline.clone(),
            source,
        })?;
        return Ok(BootSource::KernelInitrd {
            kernel: files.kernel,
            initrd: files.initrd,
            cmdline: cmdline.trim_end_matches('\n').to_string(),
        });
    }
    // LinuxKit's output names for the image formats that boot without -kernel.
    let candidates: Vec<PathBuf> = [
        ".iso",
        "-efi.iso",
        "-efi-initrd.iso",
        "-bios.img",
        "-efi.img",
        "-efi.qcow2",
        ".qcow2",
        ".raw",
    ]
    .iter()
    .map(|suffix| dir.join(format!("{name}{suffix}")))
    .collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return find_boot_source(found);
    }
    let tried = std::iter::once(&files.kernel)
        .chain(&candidates)
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(RunError::NotFound {
        target: target.to_path_buf(),
        tried,
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

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// `out/minimal` -> (`out`, `minimal`); `minimal` -> (`.`, `minimal`).
fn split_prefix(target: &Path) -> (PathBuf, String) {
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

    #[test]
    fn kernel_initrd_output_is_found_by_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("minimal");
        for (suffix, data) in [
            ("-kernel", "k"),
            ("-initrd.img", "i"),
            ("-cmdline", "console=ttyS0\n"),
        ] {
            std::fs::write(format!("{}{suffix}", prefix.display()), data).unwrap();
        }
        let found = find_boot_source(&prefix).unwrap();
        assert_eq!(
            found,
            BootSource::KernelInitrd {
                kernel: dir.path().join("minimal-kernel"),
                initrd: dir.path().join("minimal-initrd.img"),
                cmdline: "console=ttyS0".into(),
            }
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
    fn iso_and_disk_paths_and_names_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("a.iso");
        let disk = dir.path().join("b-efi.qcow2");
        std::fs::write(&iso, "iso").unwrap();
        std::fs::write(&disk, "qcow").unwrap();
        assert_eq!(
            find_boot_source(&iso).unwrap(),
            BootSource::Iso(iso.clone())
        );
        assert_eq!(
            find_boot_source(&dir.path().join("a")).unwrap(),
            BootSource::Iso(iso)
        );
        assert_eq!(
            find_boot_source(&dir.path().join("b")).unwrap(),
            BootSource::Disk(disk)
        );
    }

    #[test]
    fn nothing_to_boot_lists_what_was_tried() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_boot_source(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope-kernel") && err.contains("nope.iso"),
            "{err}"
        );
    }
}
