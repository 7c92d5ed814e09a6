//! `kernel+squashfs`: `NAME-kernel`, `NAME-cmdline`, a small `NAME-initrd.img` and the whole root
//! as `NAME-squashfs.img`, a SquashFS 4.0 image the kernel mounts read-only from a block device
//! (virtio-blk, virtio-scsi, NVMe): nothing of the root is copied into RAM. The small initrd
//! ([`super::root_initrd`]) mounts it from the device `root=` names.
//!
//! Written by the crate backhand, made reproducible here: the image and every inode get the
//! tree's times (never the clock), entries go in in path order, ids in first-use order.
//!
//! SquashFS inodes cannot be shared by two names through backhand, so a hard link becomes a file
//! of its own whose data blocks are those of its target (backhand stores identical file data
//! once). backhand recognises identical data by length and 64-bit xxHash alone; a tree holding
//! two different files of the same length and hash (which a hostile layer could craft) would get
//! one file's data under both names, so such a tree is written without that sharing.

use std::collections::HashMap;
use std::io::{Seek, Write};
use std::sync::Arc;

use backhand::compression::Compressor;
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};

use super::root_initrd::{RootFiles, stage_root_format};
use super::staged::Staged;
use super::tar::boot_mtime;
use super::{BootSpec, Compression, FormatError};
use crate::assemble::tree::{Kind, Tree};

/// The file name suffix of the root image.
pub const ROOT_SUFFIX: &str = "squashfs.img";

/// backhand's (and mksquashfs's) data block size: files smaller than this are packed into
/// shared fragment blocks and never deduplicated.
const BLOCK_SIZE: u32 = backhand::DEFAULT_BLOCK_SIZE;

/// The longest name the kernel's SquashFS reader takes (`SQUASHFS_NAME_LEN`).
const MAX_NAME: usize = 256;

/// Stages the four files of `kernel+squashfs` for `NAME` in `dir`: the squashfs root, the small
/// initrd, the kernel and the command line.
pub fn stage_kernel_squashfs(
    tree: &Tree,
    boot: &BootSpec,
    compression: Compression,
    dir: &std::path::Path,
    name: &str,
) -> Result<[Staged; 4], FormatError> {
    let files = RootFiles::paths(dir, name, ROOT_SUFFIX);
    stage_root_format(tree, boot, compression, &files, |w| {
        write_squashfs(tree, compression, w)?;
        Ok(())
    })
}

/// Writes `tree` as a SquashFS image to `w` (from its current position on) and returns `w`.
/// `none` has no SquashFS counterpart the kernel mounts: it writes gzip, as the default does.
pub fn write_squashfs<W: Write + Seek>(
    tree: &Tree,
    compression: Compression,
    mut w: W,
) -> Result<W, FormatError> {
    let err = |e: backhand::BackhandError| FormatError::Io {
        what: "the squashfs root".into(),
        source: std::io::Error::other(e),
    };
    let mut fs = FilesystemWriter::default();
    fs.set_time(clamp_time(boot_mtime(tree)));
    fs.set_block_size(BLOCK_SIZE);
    let compressor = match compression {
        Compression::Gzip | Compression::None => Compressor::Gzip,
        Compression::Zstd => Compressor::Zstd,
        Compression::Xz => Compressor::Xz,
    };
    fs.set_compressor(FilesystemCompressor::new(compressor, None).map_err(err)?);
    fs.set_no_duplicate_files(!has_hash_collision(tree));
    for (path, entry) in tree.iter() {
        let header = NodeHeader::new(
            (entry.mode & 0o7777) as u16,
            entry.uid,
            entry.gid,
            clamp_time(entry.mtime),
        );
        if let Some(name) = path.rsplit('/').next()
            && name.len() > MAX_NAME
        {
            return Err(FormatError::Io {
                what: format!("{path} into the squashfs root"),
                source: std::io::Error::other(format!(
                    "a name of {} bytes; the kernel reads SquashFS names of at most {MAX_NAME}",
                    name.len()
                )),
            });
        }
        if path.is_empty() {
            fs.set_root_mode(header.permissions);
            fs.set_root_uid(header.uid);
            fs.set_root_gid(header.gid);
            continue;
        }
        let pushed = match &entry.kind {
            Kind::Dir => fs.push_dir(path, header),
            Kind::File(data) => fs.push_file(data.as_slice(), path, header),
            Kind::Hardlink(_) => {
                let target = super::cpio::resolve_hardlink(tree, path)?;
                let Some(Kind::File(data)) = tree.get(&target).map(|e| &e.kind) else {
                    return Err(FormatError::NotAFile(target));
                };
                fs.push_file(data.as_slice(), path, header)
            }
            Kind::Symlink(target) => fs.push_symlink(target.as_str(), path, header),
            Kind::CharDevice { major, minor } => {
                fs.push_char_device(device_number(*major, *minor), path, header)
            }
            Kind::BlockDevice { major, minor } => {
                fs.push_block_device(device_number(*major, *minor), path, header)
            }
            Kind::Fifo => fs.push_fifo(path, header),
        };
        pushed.map_err(|e| FormatError::Io {
            what: format!("{path} into the squashfs root"),
            source: std::io::Error::other(e),
        })?;
    }
    fs.write(&mut w).map_err(err)?;
    Ok(w)
}

/// SquashFS times are 32-bit (until 2106); a later time saturates instead of wrapping.
fn clamp_time(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

/// The kernel's `new_encode_dev`, which SquashFS device inodes store.
fn device_number(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// Whether two different file contents of at least a block share a length and an xxHash64
/// (seed 0), which backhand would take for one.
fn has_hash_collision(tree: &Tree) -> bool {
    let mut seen: HashMap<(usize, u64), &Arc<Vec<u8>>> = HashMap::new();
    for (_, entry) in tree.iter() {
        let Kind::File(data) = &entry.kind else {
            continue;
        };
        if data.len() < BLOCK_SIZE as usize {
            continue;
        }
        let key = (data.len(), xxhash_rust::xxh64::xxh64(data, 0));
        match seen.get(&key) {
            Some(other) if !Arc::ptr_eq(other, data) && other.as_slice() != data.as_slice() => {
                return true;
            }
            Some(_) => {}
            None => {
                seen.insert(key, data);
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::tree::Entry;
    use std::io::Cursor;

    fn sample() -> Tree {
        let mut tree = Tree::new();
        tree.insert("", Entry::dir(0o755));
        tree.insert("init", Entry::file(b"\x7fELF".to_vec(), 0o755));
        tree.insert("bin/busybox", Entry::file(vec![7u8; 300_000], 0o755));
        tree.insert(
            "bin/sh",
            Entry {
                kind: Kind::Hardlink("bin/busybox".into()),
                ..Entry::file(Vec::new(), 0o755)
            },
        );
        tree.insert("etc/mtab", Entry::symlink("/proc/mounts"));
        tree.insert(
            "dev/console",
            Entry {
                kind: Kind::CharDevice { major: 5, minor: 1 },
                ..Entry::file(Vec::new(), 0o600)
            },
        );
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

    fn read_back(bytes: &[u8]) -> backhand::FilesystemReader<'static> {
        backhand::FilesystemReader::from_reader(Cursor::new(bytes.to_vec())).unwrap()
    }

    #[test]
    fn the_image_holds_every_entry_with_its_metadata() {
        let bytes = write_squashfs(&sample(), Compression::Gzip, Cursor::new(Vec::new()))
            .unwrap()
            .into_inner();
        let fs = read_back(&bytes);
        let mut found = HashMap::new();
        for node in fs.files() {
            found.insert(node.fullpath.display().to_string(), node);
        }
        let profile = &found["/home/user/.profile"];
        assert_eq!(
            (
                profile.header.permissions,
                profile.header.uid,
                profile.header.gid
            ),
            (0o640, 1000, 100)
        );
        assert_eq!(
            profile.header.mtime,
            crate::assemble::tree::DEFAULT_MTIME as u32
        );
        let sh = &found["/bin/sh"];
        let backhand::InnerNode::File(file) = &sh.inner else {
            panic!("/bin/sh is not a file");
        };
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut fs.file(file).reader(), &mut data).unwrap();
        assert_eq!(
            data,
            vec![7u8; 300_000],
            "a hard link keeps its target's data"
        );
        assert!(matches!(
            &found["/etc/mtab"].inner,
            backhand::InnerNode::Symlink(s) if s.link.as_os_str() == "/proc/mounts"
        ));
        assert!(matches!(
            &found["/dev/console"].inner,
            backhand::InnerNode::CharacterDevice(d) if d.device_number == device_number(5, 1)
        ));
        assert_eq!(fs.mod_time, crate::assemble::tree::DEFAULT_MTIME as u32);
    }

    #[test]
    fn the_same_tree_gives_the_same_bytes_and_hard_links_cost_no_data() {
        let write = |tree: &Tree| {
            write_squashfs(tree, Compression::Zstd, Cursor::new(Vec::new()))
                .unwrap()
                .into_inner()
        };
        let a = write(&sample());
        assert_eq!(a, write(&sample()));
        let mut without_link = sample();
        without_link.remove("bin/sh");
        let b = write(&without_link);
        assert!(
            a.len() < b.len() + 4096,
            "the link's data is stored again: {} vs {}",
            a.len(),
            b.len()
        );
    }

    #[test]
    fn device_numbers_are_encoded_as_the_kernel_decodes_them() {
        assert_eq!(device_number(5, 1), 0x501);
        assert_eq!(device_number(259, 0x12345), 0x12310345);
    }

    #[test]
    fn colliding_contents_are_noticed_and_identical_ones_are_not() {
        let mut tree = Tree::new();
        let big = vec![1u8; BLOCK_SIZE as usize];
        tree.insert("a", Entry::file(big.clone(), 0o644));
        tree.insert("b", Entry::file(big, 0o644));
        assert!(!has_hash_collision(&tree));
    }

    #[test]
    fn a_name_squashfs_cannot_hold_is_an_error_naming_it() {
        let mut tree = sample();
        let long = "x".repeat(300);
        tree.insert(&format!("etc/{long}"), Entry::file(b"x".to_vec(), 0o644));
        let result = std::panic::catch_unwind(|| {
            write_squashfs(&tree, Compression::Gzip, Cursor::new(Vec::new())).map(|_| ())
        });
        let err = result.expect("no panic").unwrap_err();
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(text.contains(&long) && text.contains("300 bytes"), "{text}");
    }
}
