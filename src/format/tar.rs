//! The `tar` format: the phase-1 tree as one tar stream, `boot/kernel` and `boot/cmdline` (and
//! `boot/ucode.cpio`) included, like LinuxKit's `tar` output. Also the small tar writer the
//! `tar-kernel-initrd` format uses.
//!
//! GNU headers (long names and link targets through `L`/`K` records, device numbers), written by
//! the `tar` crate with every field set from the entry: no user or group names, no host times.

use std::io::Write;

use tar::{EntryType, Header};

use super::{BootSpec, CMDLINE_PATH, FormatError, KERNEL_PATH, UCODE_PATH};
use crate::assemble::tree::{DEFAULT_MTIME, Entry, Kind, Tree, normalise};

/// Writes `tree` plus the boot files of `boot` as a tar stream to `w` and returns `w`.
pub fn write_tar<W: Write>(tree: &Tree, boot: &BootSpec, w: W) -> Result<W, FormatError> {
    let mtime = boot_mtime(tree);
    let mut full = tree.clone();
    let file = |data: &[u8]| Entry {
        mtime,
        ..Entry::file(data.to_vec(), 0o644)
    };
    full.insert(KERNEL_PATH, file(&boot.kernel));
    full.insert(CMDLINE_PATH, file(boot.cmdline.as_bytes()));
    if let Some(ucode) = &boot.ucode {
        full.insert(UCODE_PATH, file(ucode));
    }
    let mut builder = tar::Builder::new(w);
    for (path, entry) in full.iter() {
        if path.is_empty() {
            continue;
        }
        append_entry(&mut builder, path, entry).map_err(|source| FormatError::Io {
            what: format!("{path} into the tar stream"),
            source,
        })?;
    }
    builder
        .into_inner()
        .map_err(FormatError::io("the end of the tar stream"))
}

/// The time stamped on files the tree does not hold itself (boot files, tar-kernel-initrd
/// members): the newest time in the tree, which is `SOURCE_DATE_EPOCH` when phase 1 honoured it.
pub fn boot_mtime(tree: &Tree) -> u64 {
    tree.iter()
        .map(|(_, e)| e.mtime)
        .max()
        .unwrap_or(DEFAULT_MTIME)
}

/// A tar builder's view of one member: writes `entry` at `path`.
pub fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    entry: &Entry,
) -> std::io::Result<()> {
    let mut header = Header::new_gnu();
    header.set_mode(entry.mode & 0o7777);
    header.set_uid(entry.uid.into());
    header.set_gid(entry.gid.into());
    header.set_mtime(entry.mtime);
    header.set_size(0);
    match &entry.kind {
        Kind::Dir => {
            header.set_entry_type(EntryType::Directory);
            builder.append_data(&mut header, format!("{path}/"), std::io::empty())
        }
        Kind::File(data) => {
            header.set_entry_type(EntryType::Regular);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, path, data.as_slice())
        }
        Kind::Symlink(target) => {
            header.set_entry_type(EntryType::Symlink);
            builder.append_link(&mut header, path, target)
        }
        Kind::Hardlink(target) => {
            header.set_entry_type(EntryType::Link);
            builder.append_link(&mut header, path, normalise(target))
        }
        Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
            let block = matches!(entry.kind, Kind::BlockDevice { .. });
            header.set_entry_type(if block {
                EntryType::Block
            } else {
                EntryType::Char
            });
            header.set_device_major(*major)?;
            header.set_device_minor(*minor)?;
            builder.append_data(&mut header, path, std::io::empty())
        }
        Kind::Fifo => {
            header.set_entry_type(EntryType::Fifo);
            builder.append_data(&mut header, path, std::io::empty())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_holds_the_tree_and_the_boot_files() {
        let mut tree = Tree::new();
        tree.insert("bin/busybox", Entry::file(b"elf".to_vec(), 0o755));
        tree.insert(
            "bin/sh",
            Entry {
                kind: Kind::Hardlink("bin/busybox".into()),
                ..Entry::file(vec![], 0o755)
            },
        );
        tree.insert(
            "dev/console",
            Entry {
                kind: Kind::CharDevice { major: 5, minor: 1 },
                ..Entry::dir(0o600)
            },
        );
        let long = format!("a/{}/file", "x".repeat(150));
        tree.insert(&long, Entry::file(b"long".to_vec(), 0o644));
        let boot = BootSpec {
            kernel: b"bzImage".to_vec(),
            cmdline: "console=ttyS0".into(),
            ucode: None,
        };
        let bytes = write_tar(&tree, &boot, Vec::new()).unwrap();
        assert_eq!(
            bytes,
            write_tar(&tree, &boot, Vec::new()).unwrap(),
            "tar output is not reproducible"
        );

        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            if path == "boot/kernel" {
                assert_eq!(data, b"bzImage");
            }
            if path == "boot/cmdline" {
                assert_eq!(data, b"console=ttyS0");
            }
            if path == "bin/sh" {
                assert_eq!(kind, EntryType::Link);
                assert_eq!(
                    entry.link_name().unwrap().unwrap().to_str(),
                    Some("bin/busybox")
                );
            }
            if path == "dev/console" {
                assert_eq!(kind, EntryType::Char);
                assert_eq!(entry.header().device_major().unwrap(), Some(5));
            }
            seen.push(path);
        }
        assert!(seen.contains(&long), "long path missing: {seen:?}");
        assert!(
            seen.iter().any(|p| p == "boot/kernel") && seen.iter().any(|p| p == "boot/cmdline")
        );
    }
}
