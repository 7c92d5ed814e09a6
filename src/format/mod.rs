//! Phase 2 of a build: output formats written from the phase-1 [`Tree`] and a small [`BootSpec`].
//!
//! Each format lives in its own file; the low-level writers they share (newc cpio, compression,
//! tar) sit beside them. Writers never see the manifest: everything they need is in the tree and
//! the boot spec, so a format cannot reach back into earlier stages of the pipeline.
//!
//! Every writer is reproducible by construction: entries come in path order, inode numbers are
//! assigned in that order, times come from the entries, and no compressor stamps a time or name.

pub mod compress;
pub mod cpio;
pub mod docker;
pub mod gcp;
pub mod initrd;
pub mod kernel_initrd;
pub mod parallel_gzip;
pub mod root_initrd;
pub mod root_iso;
pub mod squashfs;
pub mod staged;
pub mod tar;
pub mod vdisk;
// Bootable disks and ISOs.
pub mod bios_efi;
pub mod bootloader;
pub mod disk;
pub mod esp;
pub mod iso;
pub mod raw_bios;
pub mod raw_efi;
pub mod syslinux;
pub mod uki;

use std::path::PathBuf;

use crate::assemble::tree::{Kind, Tree};

pub use compress::Compression;

/// Where phase 1 leaves the kernel, its command line and the optional early microcode cpio.
/// Phase 2 takes them out of the tree (they never belong in the initrd) and into a [`BootSpec`].
pub const KERNEL_PATH: &str = "boot/kernel";
pub const CMDLINE_PATH: &str = "boot/cmdline";
pub const UCODE_PATH: &str = "boot/ucode.cpio";

/// What a bootable format needs besides the root filesystem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootSpec {
    /// The kernel image (a bzImage on x86_64).
    pub kernel: Vec<u8>,
    /// The kernel command line, without a trailing newline.
    pub cmdline: String,
    /// An uncompressed cpio with early microcode, prepended to the initrd when present
    /// (the kernel's early loader only looks at an uncompressed archive at the very start).
    pub ucode: Option<Vec<u8>>,
}

impl BootSpec {
    /// Moves `boot/kernel`, `boot/cmdline` and `boot/ucode.cpio` out of `tree` into a boot spec,
    /// so that the tree left behind is exactly what goes into the initrd. `boot/` itself stays if
    /// other files live there (device trees on arm64, for instance).
    pub fn split_from(tree: &mut Tree) -> Result<BootSpec, FormatError> {
        let kernel = take_file(tree, KERNEL_PATH)?.ok_or(FormatError::NoKernel)?;
        let cmdline = match take_file(tree, CMDLINE_PATH)? {
            Some(bytes) => String::from_utf8(bytes)
                .map_err(|_| FormatError::CmdlineNotUtf8)?
                .trim_end_matches('\n')
                .to_string(),
            None => String::new(),
        };
        let ucode = take_file(tree, UCODE_PATH)?;
        if tree.children("boot").next().is_none() && tree.get("boot").is_some() {
            tree.remove("boot");
        }
        Ok(BootSpec {
            kernel,
            cmdline,
            ucode,
        })
    }
}

fn take_file(tree: &mut Tree, path: &str) -> Result<Option<Vec<u8>>, FormatError> {
    let Some(entry) = tree.get(path) else {
        return Ok(None);
    };
    let bytes = match &entry.kind {
        Kind::File(data) => data.as_ref().clone(),
        _ => return Err(FormatError::NotAFile(path.to_string())),
    };
    tree.remove(path);
    Ok(Some(bytes))
}

/// Errors of the phase-2 writers. Each names the entry, file or limit involved.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "the image has no kernel: {KERNEL_PATH} is missing (does the manifest have a `kernel:` section?)"
    )]
    NoKernel,
    #[error(
        "the image has no /init: a root on a block device needs an init image (pkg/init) to mount it"
    )]
    NoInit,
    #[error("{CMDLINE_PATH} is not UTF-8 text")]
    CmdlineNotUtf8,
    #[error("{0} must be a regular file")]
    NotAFile(String),
    #[error(
        "{path} is {size} bytes; an initrd (newc cpio) holds files of at most {max} bytes (4 GiB - 1). \
         Use a disk or ISO format (raw-bios, raw-efi, iso-efi, qcow2-efi) for an image this large"
    )]
    FileTooLarge { path: String, size: u64, max: u64 },
    #[error(
        "the initrd would be larger than {limit} bytes (reached {size} bytes): the x86 boot protocol \
         gives the initrd a 32-bit size, so QEMU, GRUB and syslinux cannot load it. \
         Use a disk or ISO format (raw-bios, raw-efi, iso-efi, qcow2-efi) for an image this large"
    )]
    InitrdTooLarge { size: u64, limit: u64 },
    #[error("{path}: the hard link points to {target}, which is {why}")]
    BadHardlink {
        path: String,
        target: String,
        why: &'static str,
    },
    #[error("{path}: a name in a cpio archive must not contain a NUL byte")]
    NulInName { path: String },
    #[error("the tree has more than 4294967295 entries, more than newc inode numbers can count")]
    TooManyEntries,
    #[error("unknown compression {0:?} (expected gzip, zstd, xz or none)")]
    UnknownCompression(String),
    #[error("writing {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--size {} is too small for {format}: its files need a disk of at least {}",
        human(*requested), human(*needed)
    )]
    SizeTooSmall {
        format: String,
        requested: u64,
        needed: u64,
    },
    #[error("the bootloader image {image}: {message}")]
    Bootloader { image: String, message: String },
    #[error("partition table: {0}")]
    Partition(String),
    #[error("FAT filesystem: {0}")]
    Fat(String),
    #[error("installing SYSLINUX: {0}")]
    Syslinux(String),
    #[error("unified kernel image: {0}")]
    Uki(String),
    #[error("ISO 9660 image: {0}")]
    Iso(String),
    #[error("writing {path}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `N bytes (X MiB)`, for messages that compare sizes.
fn human(bytes: u64) -> String {
    format!(
        "{bytes} bytes ({})",
        bytesize::ByteSize(bytes).display().iec()
    )
}

impl FormatError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FormatError {
        let what = what.into();
        move |source| FormatError::Io { what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::tree::Entry;

    #[test]
    fn split_from_takes_the_boot_files_out_of_the_tree() {
        let mut tree = Tree::new();
        tree.insert("boot/kernel", Entry::file(b"bzImage".to_vec(), 0o644));
        tree.insert(
            "boot/cmdline",
            Entry::file(b"console=ttyS0\n".to_vec(), 0o644),
        );
        tree.insert("init", Entry::file(b"#!/bin/sh".to_vec(), 0o755));
        let boot = BootSpec::split_from(&mut tree).unwrap();
        assert_eq!(boot.kernel, b"bzImage");
        assert_eq!(boot.cmdline, "console=ttyS0");
        assert_eq!(boot.ucode, None);
        let paths: Vec<_> = tree.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["init"]);
    }

    #[test]
    fn split_from_without_a_kernel_is_an_error() {
        let mut tree = Tree::new();
        tree.insert("init", Entry::file(b"x".to_vec(), 0o755));
        assert!(matches!(
            BootSpec::split_from(&mut tree),
            Err(FormatError::NoKernel)
        ));
    }
}
