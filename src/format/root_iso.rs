//! `kernel+iso`: `NAME-kernel`, `NAME-cmdline`, a small `NAME-initrd.img` and the whole root as
//! `NAME-root.iso`, an ISO 9660 filesystem with Rock Ridge (POSIX modes, owners, times, symlinks,
//! device nodes, hard links and long names) and no bootloader: the small initrd
//! ([`super::root_initrd`]) mounts it read-only from the device `root=` names (a virtio disk, or a
//! CD-ROM drive as `/dev/sr0`).
//!
//! Written by the crate hadris-iso (3.0 line), which reads no clock: the volume is dated with the
//! tree's newest time and each entry with its own, so the same tree gives the same bytes. Level 3
//! keeps files of 4 GiB and more (several extents); the primary names are only a fallback for
//! readers without Rock Ridge, so they keep their case. Directories nested deeper than ISO 9660's
//! eight levels (a container's `usr/lib/...`) move into `/.rr_moved`, with Rock Ridge entries
//! that put them back where they belong for every Rock Ridge reader (the kernel's included); the
//! root thus shows one empty `/.rr_moved` more than the tree has.

use std::io::Write;

use hadris_fs::{
    Content, DateTime, DeviceNumber, FileType, Node, Owner, Permissions, SetAttr, WarningKind,
};
use hadris_iso::{IsoId, IsoLevel, IsoOptions, NameCase, Relocation};

use super::root_initrd::{RootFiles, stage_root_format};
use super::staged::Staged;
use super::tar::boot_mtime;
use super::{BootSpec, Compression, FormatError};
use crate::assemble::tree::{Entry, Kind, Tree};

/// The file name suffix of the root image.
pub const ROOT_SUFFIX: &str = "root.iso";

/// The volume name, as a reader (`blkid`, `isoinfo`) shows it.
const VOLUME_ID: &str = "SLIPWAY_ROOT";

/// Stages the four files of `kernel+iso` for `NAME` in `dir`: the ISO root, the small initrd,
/// the kernel and the command line.
pub fn stage_kernel_iso(
    tree: &Tree,
    boot: &BootSpec,
    compression: Compression,
    dir: &std::path::Path,
    name: &str,
) -> Result<[Staged; 4], FormatError> {
    let files = RootFiles::paths(dir, name, ROOT_SUFFIX);
    stage_root_format(tree, boot, compression, &files, |w| {
        w.flush().map_err(FormatError::io("the ISO root"))?;
        let file = w
            .get_ref()
            .try_clone()
            .map_err(FormatError::io("the ISO root"))?;
        write_root_iso(tree, file)
    })
}

/// Writes `tree` as an ISO 9660 image with Rock Ridge into `file`, from its start.
pub fn write_root_iso(tree: &Tree, file: std::fs::File) -> Result<(), FormatError> {
    let iso_tree = iso_tree(tree)?;
    let time = iso_time(boot_mtime(tree));
    let options = IsoOptions::new()
        .with_id(IsoId::Volume, VOLUME_ID)
        .with_level(IsoLevel::L3)
        .with_name_case(NameCase::Preserve)
        .with_rock_ridge()
        .with_relocation(Relocation::DotRrMoved)
        .with_time(time);
    let device = hadris_storage::host::FileDevice::new(file)
        .map_err(FormatError::io("the ISO root (opening it as a device)"))?;
    let report =
        hadris_iso::sync::write(device, &iso_tree, &options).map_err(|e| FormatError::Io {
            what: "the ISO root".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    // Renamed primary names and relocated deep directories are how ISO 9660 with Rock Ridge
    // works (readers see the Rock Ridge names and tree); a dropped field (a mode, an owner) or
    // a skipped node would be a root that differs from the manifest's, and is not written.
    let lost: Vec<String> = report
        .warnings()
        .iter()
        .filter(|w| matches!(w.kind(), WarningKind::Dropped(_) | WarningKind::Skipped))
        .map(|w| w.to_string())
        .collect();
    if let Some(first) = lost.first() {
        return Err(FormatError::Io {
            what: "the ISO root".into(),
            source: std::io::Error::other(format!(
                "{first} ({} such warning(s) in all)",
                lost.len()
            )),
        });
    }
    Ok(())
}

/// The phase-1 tree as hadris-iso's input tree. Hard links are added once every file is in, so
/// that a link may name a file that sorts after it.
fn iso_tree(tree: &Tree) -> Result<hadris_fs::Tree, FormatError> {
    let mut out = hadris_fs::Tree::new();
    let bad = |path: &str| {
        let path = path.to_string();
        move |e: hadris_fs::PathError| FormatError::Io {
            what: format!("{path} into the ISO root"),
            source: std::io::Error::other(e.to_string()),
        }
    };
    let mut links = Vec::new();
    for (path, entry) in tree.iter() {
        let node = match &entry.kind {
            Kind::Dir => Node::dir(),
            Kind::File(data) => Node::file(Content::bytes(data.as_slice())),
            Kind::Symlink(target) => Node::symlink(target.as_bytes()),
            Kind::CharDevice { major, minor } => Node::special(
                FileType::CharDevice,
                Some(DeviceNumber::new(*major, *minor)),
            ),
            Kind::BlockDevice { major, minor } => Node::special(
                FileType::BlockDevice,
                Some(DeviceNumber::new(*major, *minor)),
            ),
            Kind::Fifo => Node::special(FileType::Fifo, None),
            Kind::Hardlink(_) => {
                links.push(path);
                continue;
            }
        }
        .with_attrs(attrs(entry));
        if path.is_empty() {
            out.replace("", node).map_err(bad(path))?;
        } else {
            out.insert(path, node).map_err(bad(path))?;
        }
    }
    for path in links {
        let target = super::cpio::resolve_hardlink(tree, path)?;
        out.link(&target, path).map_err(bad(path))?;
    }
    Ok(out)
}

fn attrs(entry: &Entry) -> SetAttr {
    let time = iso_time(entry.mtime);
    SetAttr::new()
        .with_permissions(Permissions::new(entry.mode & 0o7777))
        .with_owner(Owner::new(entry.uid, entry.gid))
        .with_modified(time)
        .with_accessed(time)
        .with_created(time)
}

/// A tree time as hadris' date; one it cannot represent becomes the epoch.
fn iso_time(t: u64) -> DateTime {
    i64::try_from(t)
        .ok()
        .and_then(|t| DateTime::from_unix_seconds(t).ok())
        .or_else(|| DateTime::from_unix_seconds(0).ok())
        .expect("the epoch is a date")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut tree = Tree::new();
        tree.insert("", Entry::dir(0o755));
        tree.insert("init", Entry::file(b"\x7fELF".to_vec(), 0o755));
        tree.insert(
            "containers/services/a-service-with-a-long-name/rootfs/usr/lib/x86_64-linux-gnu/libsomething.so.1.2.3",
            Entry::file(b"lib".to_vec(), 0o644),
        );
        tree.insert(
            "bin/sh",
            Entry {
                kind: Kind::Hardlink("bin/zz-busybox".into()),
                ..Entry::file(Vec::new(), 0o755)
            },
        );
        tree.insert("bin/zz-busybox", Entry::file(vec![7u8; 5000], 0o755));
        tree.insert("etc/mtab", Entry::symlink("/proc/mounts"));
        tree.insert(
            "home/user/.profile",
            Entry {
                uid: 1000,
                gid: 100,
                ..Entry::file(b"PS1='$ '\n".to_vec(), 0o640)
            },
        );
        tree
    }

    fn write(tree: &Tree) -> Vec<u8> {
        let file = tempfile::tempfile().unwrap();
        write_root_iso(tree, file.try_clone().unwrap()).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::BufReader::new(&file), &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn the_same_tree_gives_the_same_bytes() {
        let a = write(&sample());
        assert!(a.len() > 16 * 2048, "{} bytes", a.len());
        assert_eq!(&a[16 * 2048 + 1..16 * 2048 + 6], b"CD001");
        assert_eq!(a, write(&sample()));
    }

    #[test]
    fn a_hard_link_to_a_later_file_is_one_file() {
        let iso = iso_tree(&sample()).unwrap();
        let sh = iso.entry("bin/sh").unwrap();
        assert_eq!(sh.links(), 2);
        assert_eq!(sh.id(), iso.entry("bin/zz-busybox").unwrap().id());
    }
}
