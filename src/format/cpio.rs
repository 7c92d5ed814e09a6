//! The newc ("SVR4 new ascii") cpio writer every initrd is made of.
//!
//! Headers are built by the `cpio` crate's `newc::Builder`; this module decides what goes in them:
//! - inode numbers are assigned 1, 2, 3, ... in path order, so the same tree always gives the same
//!   bytes;
//! - hard links stay hard links (rather than LinuxKit's conversion to symlinks, which changes what
//!   `stat` and `readlink` say inside the guest): every member of a link group carries the same
//!   inode number and the group's link count, and the data travels on the *last* member in path
//!   order, the convention of GNU cpio. The kernel's unpacker (`init/initramfs.c`, `maybe_link`)
//!   creates the first member, links the others to it and writes the data when it comes; GNU
//!   `cpio -i` defers empty members until the data arrives. Both give one inode with the contents.
//! - device nodes keep their numbers in `rdev`; fifos keep their type;
//! - the archive ends with `TRAILER!!!`.
//!
//! The archive is planned before a byte is written, which gives its exact size up front: the zstd
//! frame records it, and a file too large for newc's 32-bit size field is refused before any output.

use std::collections::HashMap;
use std::io::{self, Write};

use cpio::newc::{Builder, ModeFileType};

use super::FormatError;
use crate::assemble::tree::{Kind, Tree, normalise};

/// The largest file a newc header can describe: its size field is 8 hex digits.
pub const MAX_FILE_SIZE: u64 = u32::MAX as u64;

const HEADER_LEN: u64 = 110;
const TRAILER_NAME: &str = "TRAILER!!!";

/// A planned archive: one record per tree entry, in path order, with its exact size.
pub struct CpioPlan<'a> {
    records: Vec<Record<'a>>,
    size: u64,
}

struct Record<'a> {
    name: &'a str,
    ino: u32,
    file_type: ModeFileType,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

/// Plans a newc archive of `tree` (the root entry `""` is left out: the kernel's rootfs exists).
pub fn plan(tree: &Tree) -> Result<CpioPlan<'_>, FormatError> {
    let groups = hardlink_groups(tree)?;
    let mut inodes: HashMap<String, u32> = HashMap::new();
    let mut next_ino: u32 = 1;
    let mut records = Vec::with_capacity(tree.len());
    let mut size = 0u64;

    for (path, entry) in tree.iter() {
        if path.is_empty() {
            continue;
        }
        if path.contains('\0') {
            return Err(FormatError::NulInName {
                path: path.to_string(),
            });
        }
        // A hard link takes its inode's metadata from the file it points to.
        let (inode_path, inode_entry) = match &entry.kind {
            Kind::Hardlink(_) => {
                let target = resolve_hardlink(tree, path)?;
                let Some(target_entry) = tree.get(&target) else {
                    unreachable!("resolve_hardlink returns an existing path")
                };
                (target, target_entry)
            }
            _ => (path.to_string(), entry),
        };
        let ino = match inodes.get(&inode_path) {
            Some(ino) => *ino,
            None => {
                let ino = next_ino;
                next_ino = next_ino.checked_add(1).ok_or(FormatError::TooManyEntries)?;
                inodes.insert(inode_path.clone(), ino);
                ino
            }
        };
        let (file_type, data, rdev): (ModeFileType, &[u8], (u32, u32)) = match &inode_entry.kind {
            Kind::Dir => (ModeFileType::Directory, &[], (0, 0)),
            Kind::File(contents) => {
                let data: &[u8] = match groups.get(&inode_path) {
                    // Only the last member of a link group carries the data.
                    Some(members) if members.last().map(String::as_str) != Some(path) => &[],
                    _ => contents.as_slice(),
                };
                (ModeFileType::Regular, data, (0, 0))
            }
            Kind::Symlink(target) => (ModeFileType::Symlink, target.as_bytes(), (0, 0)),
            Kind::CharDevice { major, minor } => (ModeFileType::Char, &[], (*major, *minor)),
            Kind::BlockDevice { major, minor } => (ModeFileType::Block, &[], (*major, *minor)),
            Kind::Fifo => (ModeFileType::Fifo, &[], (0, 0)),
            Kind::Hardlink(_) => unreachable!("hard links are resolved to files above"),
        };
        check_file_size(path, data.len() as u64)?;
        let nlink = groups
            .get(&inode_path)
            .map_or(1, |members| members.len() as u32);
        size += record_len(path.len() as u64, data.len() as u64);
        records.push(Record {
            name: path,
            ino,
            file_type,
            mode: inode_entry.mode & 0o7777,
            uid: inode_entry.uid,
            gid: inode_entry.gid,
            nlink,
            // newc has 32-bit times; anything past 2106 is clamped rather than wrapped.
            mtime: u32::try_from(inode_entry.mtime).unwrap_or(u32::MAX),
            rdev,
            data,
        });
    }
    size += record_len(TRAILER_NAME.len() as u64, 0);
    Ok(CpioPlan { records, size })
}

/// Refuses a file newc cannot describe, naming it and pointing at formats that can hold it.
pub fn check_file_size(path: &str, size: u64) -> Result<(), FormatError> {
    if size > MAX_FILE_SIZE {
        return Err(FormatError::FileTooLarge {
            path: path.to_string(),
            size,
            max: MAX_FILE_SIZE,
        });
    }
    Ok(())
}

impl CpioPlan<'_> {
    /// The exact number of bytes [`CpioPlan::write`] produces.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes the archive, trailer included.
    pub fn write<W: Write>(&self, mut w: W) -> io::Result<W> {
        for r in &self.records {
            let builder = Builder::new(r.name)
                .ino(r.ino)
                .mode(r.mode)
                .set_mode_file_type(clone_type(&r.file_type))
                .uid(r.uid)
                .gid(r.gid)
                .nlink(r.nlink)
                .mtime(r.mtime)
                .rdev_major(r.rdev.0)
                .rdev_minor(r.rdev.1);
            // plan() refused anything larger than u32::MAX.
            let mut writer = builder.write(w, r.data.len() as u32);
            writer.write_all(r.data)?;
            w = writer.finish()?;
        }
        cpio::newc::trailer(w)
    }
}

/// `ModeFileType` is not `Clone` in cpio 0.4.
fn clone_type(t: &ModeFileType) -> ModeFileType {
    match t {
        ModeFileType::Symlink => ModeFileType::Symlink,
        ModeFileType::Fifo => ModeFileType::Fifo,
        ModeFileType::Char => ModeFileType::Char,
        ModeFileType::Block => ModeFileType::Block,
        ModeFileType::NetworkSpecial => ModeFileType::NetworkSpecial,
        ModeFileType::Socket => ModeFileType::Socket,
        ModeFileType::Directory => ModeFileType::Directory,
        ModeFileType::Regular => ModeFileType::Regular,
    }
}

/// Header, NUL-terminated name and data, each padded to 4 bytes.
fn record_len(name_len: u64, data_len: u64) -> u64 {
    (HEADER_LEN + name_len + 1).next_multiple_of(4) + data_len.next_multiple_of(4)
}

/// For every file that has hard links: the file and all links to it, in path order.
fn hardlink_groups(tree: &Tree) -> Result<HashMap<String, Vec<String>>, FormatError> {
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    for (path, entry) in tree.iter() {
        if let Kind::Hardlink(_) = entry.kind {
            let target = resolve_hardlink(tree, path)?;
            groups
                .entry(target.clone())
                .or_insert_with(|| vec![target])
                .push(path.to_string());
        }
    }
    for members in groups.values_mut() {
        members.sort_unstable();
    }
    Ok(groups)
}

/// Follows a hard link (through chains of links, which layer tars can produce) to a regular file.
pub(crate) fn resolve_hardlink(tree: &Tree, path: &str) -> Result<String, FormatError> {
    let mut current = path.to_string();
    // Each step moves to a different entry; more steps than entries means a cycle.
    for _ in 0..=tree.len() {
        let Some(Kind::Hardlink(target)) = tree.get(&current).map(|e| &e.kind) else {
            break;
        };
        let target = normalise(target);
        let bad = |why| FormatError::BadHardlink {
            path: path.to_string(),
            target: target.clone(),
            why,
        };
        let entry = tree.get(&target).ok_or_else(|| bad("not in the image"))?;
        match entry.kind {
            Kind::File(_) => return Ok(target),
            Kind::Hardlink(_) => current = target,
            _ => return Err(bad("not a regular file")),
        }
    }
    Err(FormatError::BadHardlink {
        path: path.to_string(),
        target: current,
        why: "part of a cycle of links",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::tree::Entry;

    fn link(target: &str) -> Entry {
        Entry {
            kind: Kind::Hardlink(target.into()),
            ..Entry::file(vec![], 0o644)
        }
    }

    /// (name, ino, nlink, data) of every record, read back with the cpio crate's reader.
    fn read_back(bytes: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        loop {
            let mut reader = cpio::newc::Reader::new(rest).unwrap();
            if reader.entry().is_trailer() {
                return out;
            }
            let (name, ino, nlink) = (
                reader.entry().name().to_string(),
                reader.entry().ino(),
                reader.entry().nlink(),
            );
            let mut data = Vec::new();
            io::Read::read_to_end(&mut reader, &mut data).unwrap();
            out.push((name, ino, nlink, data));
            rest = reader.finish().unwrap();
        }
    }

    #[test]
    fn inodes_are_sequential_and_link_groups_share_one_with_data_on_the_last_member() {
        let mut tree = Tree::new();
        tree.insert("b/file", Entry::file(b"data".to_vec(), 0o644));
        tree.insert("a/link", link("b/file"));
        tree.insert("c/chain", link("a/link"));
        tree.insert("d", Entry::file(b"other".to_vec(), 0o644));
        let plan = plan(&tree).unwrap();
        let bytes = plan.write(Vec::new()).unwrap();
        assert_eq!(
            plan.size(),
            bytes.len() as u64,
            "planned size must be exact"
        );
        let records = read_back(&bytes);
        let got: Vec<_> = records
            .iter()
            .map(|(n, i, l, d)| (n.as_str(), *i, *l, d.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", 1, 1, &b""[..]),
                ("a/link", 2, 3, b""),
                ("b", 3, 1, b""),
                ("b/file", 2, 3, b""),
                ("c", 4, 1, b""),
                ("c/chain", 2, 3, b"data"),
                ("d", 5, 1, b"other"),
            ]
        );
    }

    #[test]
    fn hard_links_to_nothing_or_to_a_directory_or_in_a_cycle_are_refused() {
        let mut tree = Tree::new();
        tree.insert("x", link("missing"));
        let err = plan(&tree).err().unwrap().to_string();
        assert!(
            err.contains("x") && err.contains("missing") && err.contains("not in the image"),
            "{err}"
        );

        let mut tree = Tree::new();
        tree.insert("dir", Entry::dir(0o755));
        tree.insert("x", link("dir"));
        assert!(
            plan(&tree)
                .err()
                .unwrap()
                .to_string()
                .contains("not a regular file")
        );

        let mut tree = Tree::new();
        tree.insert("x", link("y"));
        tree.insert("y", link("x"));
        assert!(plan(&tree).err().unwrap().to_string().contains("cycle"));
    }
}
