//! One copy of identical content: regular files with the same bytes and the same metadata become
//! hard links to one file, so ten containers of one image (or two images sharing a library) cost
//! one copy in every format.
//!
//! Identity is by content: files are grouped by size and metadata first, and only files whose
//! group has several members are hashed (SHA-256), so the common case of unique files costs a
//! map insert. Files that differ in mode, owner or modification time stay apart, because hard
//! links share one inode and therefore one set of metadata.
//!
//! The first path of each group in path order keeps the data; the others become
//! [`Kind::Hardlink`]s to it. Hard links the images brought are folded into the same groups and
//! re-pointed, so every link names a file that comes before it in path order: what a tar reader
//! needs (it links to a member it has already extracted), and what newc readers accept.
//!
//! Sharing is safe because nothing writes to an image file in place at run time: the root is
//! read-only after boot, read-only containers run on it, and writable containers run on an
//! overlay whose copy-up gives the writer its own file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::tree::{Entry, Kind, Tree, normalise};
use crate::format::{CMDLINE_PATH, KERNEL_PATH, UCODE_PATH};

/// The boot files the formats take out of the tree: nothing may be a link to them.
const TAKEN_OUT: [&str; 3] = [KERNEL_PATH, CMDLINE_PATH, UCODE_PATH];

/// What sharing saved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shared {
    /// Paths that became hard links to an identical file.
    pub links: u64,
    /// Bytes of file content written once instead of once per path.
    pub bytes_saved: u64,
}

/// Metadata a hard link group must agree on, and the size that is compared before any hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Shape {
    len: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

/// Turns identical regular files of `tree` into hard links to one of them (see the module
/// documentation). Running it twice changes nothing the second time.
pub fn share_identical_files(tree: &mut Tree) -> Shared {
    // Each inode (a regular file and the hard links to it) by its file's path.
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, entry) in tree.iter() {
        if TAKEN_OUT.contains(&path) {
            continue;
        }
        match &entry.kind {
            Kind::File(_) => members
                .entry(path.to_string())
                .or_default()
                .push(path.to_string()),
            Kind::Hardlink(_) => {
                // A link that leads nowhere is left for the writers to report with its path.
                if let Some(target) = link_target(tree, path) {
                    members.entry(target).or_default().push(path.to_string());
                }
            }
            _ => {}
        }
    }

    let mut by_shape: HashMap<Shape, Vec<&str>> = HashMap::new();
    let mut contents: HashMap<&str, (Arc<Vec<u8>>, Entry)> = HashMap::new();
    for file in members.keys() {
        let Some(entry) = tree.get(file) else {
            continue;
        };
        let Kind::File(data) = &entry.kind else {
            continue;
        };
        // Empty files have no data to save, only names, which every link keeps anyway.
        if data.is_empty() {
            continue;
        }
        let shape = Shape {
            len: data.len() as u64,
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
        };
        by_shape.entry(shape).or_default().push(file);
        contents.insert(file, (data.clone(), entry.clone()));
    }

    // Identical inodes, each class in path order of its files.
    let mut classes: Vec<Vec<&str>> = Vec::new();
    let mut hashes: HashMap<*const Vec<u8>, [u8; 32]> = HashMap::new();
    for files in by_shape.into_values() {
        if files.len() < 2 {
            continue;
        }
        let mut by_hash: BTreeMap<[u8; 32], Vec<&str>> = BTreeMap::new();
        for file in files {
            let data = &contents[file].0;
            // Images flattened once per build hand out one allocation per file: hash it once.
            let hash = *hashes
                .entry(Arc::as_ptr(data))
                .or_insert_with(|| Sha256::digest(data.as_slice()).into());
            by_hash.entry(hash).or_default().push(file);
        }
        classes.extend(by_hash.into_values().filter(|c| c.len() > 1));
    }

    let mut shared = Shared::default();
    let mut relink: Vec<(String, Entry)> = Vec::new();
    let mut grouped: HashSet<&str> = HashSet::new();
    for class in classes {
        grouped.extend(class.iter().copied());
        let (data, entry) = contents[class[0]].clone();
        let mut paths: Vec<&String> = class.iter().flat_map(|f| &members[*f]).collect();
        paths.sort_unstable();
        let first = paths[0].clone();
        relink.push((
            first.clone(),
            Entry {
                kind: Kind::File(data.clone()),
                ..entry.clone()
            },
        ));
        for path in &paths[1..] {
            relink.push((
                (*path).clone(),
                Entry {
                    kind: Kind::Hardlink(first.clone()),
                    ..entry.clone()
                },
            ));
        }
        shared.links += class.len() as u64 - 1;
        shared.bytes_saved += (class.len() as u64 - 1) * data.len() as u64;
    }
    // Links the images brought: each now names its file directly, and that file is the first
    // member of its inode in path order (a tar reader cannot link to a member it has not seen).
    for (file, paths) in &members {
        if paths.len() < 2 || grouped.contains(file.as_str()) {
            continue;
        }
        let Some(entry) = tree.get(file).cloned() else {
            continue;
        };
        let mut paths = paths.clone();
        paths.sort_unstable();
        let first = paths[0].clone();
        for path in paths {
            let kind = if path == first {
                entry.kind.clone()
            } else {
                Kind::Hardlink(first.clone())
            };
            let current = tree.get(&path).map(|e| &e.kind);
            if current != Some(&kind) {
                relink.push((
                    path,
                    Entry {
                        kind,
                        ..entry.clone()
                    },
                ));
            }
        }
    }
    for (path, entry) in relink {
        tree.insert(&path, entry);
    }
    shared
}

/// The regular file a hard link leads to, through chains of links; `None` for a link to nothing,
/// to something else than a file, or in a cycle.
fn link_target(tree: &Tree, path: &str) -> Option<String> {
    let mut current = path.to_string();
    for _ in 0..=tree.len() {
        match &tree.get(&current)?.kind {
            Kind::Hardlink(target) => current = normalise(target),
            Kind::File(_) => return Some(current),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &[u8]) -> Entry {
        Entry::file(data.to_vec(), 0o755)
    }

    fn link(target: &str) -> Entry {
        Entry {
            kind: Kind::Hardlink(target.into()),
            ..file(b"")
        }
    }

    fn kind(tree: &Tree, path: &str) -> Kind {
        tree.get(path).unwrap().kind.clone()
    }

    #[test]
    fn identical_files_become_links_to_the_first_path() {
        let mut tree = Tree::new();
        for service in ["a", "b", "c"] {
            tree.insert(
                &format!("containers/services/{service}/rootfs/bin/busybox"),
                file(b"ELF busybox"),
            );
        }
        tree.insert("init", file(b"ELF init"));
        let shared = share_identical_files(&mut tree);
        assert_eq!(
            shared,
            Shared {
                links: 2,
                bytes_saved: 22
            }
        );
        let first = "containers/services/a/rootfs/bin/busybox";
        assert!(matches!(kind(&tree, first), Kind::File(d) if d.as_slice() == b"ELF busybox"));
        for service in ["b", "c"] {
            assert_eq!(
                kind(
                    &tree,
                    &format!("containers/services/{service}/rootfs/bin/busybox")
                ),
                Kind::Hardlink(first.into())
            );
        }
        assert!(matches!(kind(&tree, "init"), Kind::File(_)));
        assert_eq!(share_identical_files(&mut tree), Shared::default());
    }

    #[test]
    fn files_with_other_metadata_or_other_bytes_stay_apart() {
        let mut tree = Tree::new();
        tree.insert("a", file(b"same"));
        tree.insert("b", Entry::file(b"same".to_vec(), 0o644));
        tree.insert(
            "c",
            Entry {
                uid: 1,
                ..file(b"same")
            },
        );
        tree.insert(
            "d",
            Entry {
                mtime: 1,
                ..file(b"same")
            },
        );
        tree.insert("e", file(b"sane"));
        let before = tree.clone();
        assert_eq!(share_identical_files(&mut tree), Shared::default());
        assert_eq!(tree, before);
    }

    #[test]
    fn image_links_join_the_group_and_point_at_its_first_path() {
        let mut tree = Tree::new();
        // The image linked y/sh to z/busybox (a later path); a second image has the same file.
        tree.insert("one/z/busybox", file(b"ELF"));
        tree.insert("one/y/sh", link("one/z/busybox"));
        tree.insert("two/z/busybox", file(b"ELF"));
        tree.insert("two/a/chain", link("two/z/busybox"));
        share_identical_files(&mut tree);
        assert!(matches!(kind(&tree, "one/y/sh"), Kind::File(_)));
        for path in ["one/z/busybox", "two/a/chain", "two/z/busybox"] {
            assert_eq!(
                kind(&tree, path),
                Kind::Hardlink("one/y/sh".into()),
                "{path}"
            );
        }
    }

    #[test]
    fn an_images_own_links_are_reordered_even_without_a_twin() {
        let mut tree = Tree::new();
        tree.insert("z/busybox", file(b"ELF"));
        tree.insert("a/sh", link("z/busybox"));
        let shared = share_identical_files(&mut tree);
        assert_eq!(shared, Shared::default());
        assert!(matches!(kind(&tree, "a/sh"), Kind::File(_)));
        assert_eq!(kind(&tree, "z/busybox"), Kind::Hardlink("a/sh".into()));
    }

    #[test]
    fn the_boot_files_are_never_linked() {
        let mut tree = Tree::new();
        tree.insert(KERNEL_PATH, file(b"bzImage"));
        tree.insert("boot/vmlinuz", file(b"bzImage"));
        assert_eq!(share_identical_files(&mut tree), Shared::default());
    }

    #[test]
    fn a_broken_link_is_left_for_the_writers_to_report() {
        let mut tree = Tree::new();
        tree.insert("x", link("missing"));
        tree.insert("a", file(b"1"));
        tree.insert("b", file(b"1"));
        share_identical_files(&mut tree);
        assert_eq!(kind(&tree, "x"), Kind::Hardlink("missing".into()));
        assert_eq!(kind(&tree, "b"), Kind::Hardlink("a".into()));
    }
}
