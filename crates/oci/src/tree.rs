//! The phase-1 root filesystem: one sorted, canonical tree of entries.
//!
//! Everything that goes into an image (flattened init images, container bundles, volumes, `files`
//! entries, the kernel's modules) is inserted here; every output format (phase 2) reads it back in
//! path order. Keeping the tree in memory is deliberate: an initramfs lives in RAM at boot anyway,
//! and sorted iteration is what makes every format reproducible.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Fixed modification time of every entry unless `SOURCE_DATE_EPOCH` says otherwise
/// (2017-04-18T16:30:00Z, LinuxKit's constant, so images built by either tool compare well).
pub const DEFAULT_MTIME: u64 = 1_492_533_000;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A regular file; contents shared so that the same layer file placed twice costs nothing.
    File(Arc<Vec<u8>>),
    Symlink(String),
    /// A hard link to another path of the tree (relative, no leading `/`).
    Hardlink(String),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One filesystem entry. `mode` holds only the permission bits (0o7777); the type is `kind`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
}

impl Entry {
    pub fn dir(mode: u32) -> Self {
        Entry {
            kind: Kind::Dir,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
        }
    }
    pub fn file(contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        Entry {
            kind: Kind::File(Arc::new(contents.into())),
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
        }
    }
    pub fn symlink(target: impl Into<String>) -> Self {
        Entry {
            kind: Kind::Symlink(target.into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
        }
    }
}

/// A root filesystem keyed by normalised relative path (`etc/passwd`; the root itself is `""`).
/// Iteration is in byte order of the path, so a parent always precedes its children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces `path`, creating missing parent directories (mode 0755, root-owned).
    /// `path` may carry a leading `/`; it is normalised. Later inserts win, as in LinuxKit.
    pub fn insert(&mut self, path: &str, entry: Entry) {
        let path = normalise(path);
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if !matches!(self.entries.get(&parent).map(|e| &e.kind), Some(Kind::Dir)) {
                self.entries.insert(parent.clone(), Entry::dir(0o755));
            }
        }
        if let Some(Kind::Dir) = self.entries.get(&path).map(|e| &e.kind)
            && entry.kind != Kind::Dir
        {
            self.remove(&path);
        }
        self.entries.insert(path, entry);
    }

    /// Removes `path` and everything below it.
    pub fn remove(&mut self, path: &str) {
        let path = normalise(path);
        let prefix = format!("{path}/");
        self.entries
            .retain(|p, _| p != &path && !p.starts_with(&prefix));
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&normalise(path))
    }

    pub fn get_mut(&mut self, path: &str) -> Option<&mut Entry> {
        self.entries.get_mut(&normalise(path))
    }

    /// Entries in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Entries below `dir` (exclusive), in path order.
    pub fn children<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{}/", normalise(dir))
        };
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .filter(|(p, _)| !p.is_empty())
            .map(|(p, e)| (p.as_str(), e))
    }

    /// Copies every entry of `other` under `prefix` (a directory path, may be empty).
    pub fn graft(&mut self, prefix: &str, other: &Tree) {
        let prefix = normalise(prefix);
        for (p, e) in other.iter() {
            let target = match (prefix.is_empty(), p.is_empty()) {
                (_, true) => prefix.clone(),
                (true, false) => p.to_string(),
                (false, false) => format!("{prefix}/{p}"),
            };
            if target.is_empty() {
                continue;
            }
            let mut e = e.clone();
            if let Kind::Hardlink(t) = &e.kind
                && !prefix.is_empty()
            {
                e.kind = Kind::Hardlink(format!("{prefix}/{t}"));
            }
            self.insert(&target, e);
        }
    }

    /// Total size of the file contents, for size checks and progress.
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match &e.kind {
                Kind::File(data) => data.len() as u64,
                _ => 0,
            })
            .sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `/a//b/./c/` -> `a/b/c`. Callers that take paths from untrusted input (layers) must reject
/// `..` themselves before calling: here it is kept literally, never resolved.
pub fn normalise(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_creates_parents_and_iterates_sorted() {
        let mut t = Tree::new();
        t.insert("/usr/bin/sh", Entry::file(b"x".to_vec(), 0o755));
        t.insert("etc/hosts", Entry::file(b"h".to_vec(), 0o644));
        let paths: Vec<_> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["etc", "etc/hosts", "usr", "usr/bin", "usr/bin/sh"]);
    }

    #[test]
    fn replacing_a_directory_with_a_file_drops_its_children() {
        let mut t = Tree::new();
        t.insert("a/b/c", Entry::file(b"x".to_vec(), 0o644));
        t.insert("a/b", Entry::symlink("/x"));
        assert!(t.get("a/b/c").is_none());
        assert_eq!(t.get("a/b").unwrap().kind, Kind::Symlink("/x".into()));
    }

    #[test]
    fn graft_places_a_tree_under_a_prefix() {
        let mut inner = Tree::new();
        inner.insert("bin/sh", Entry::file(b"x".to_vec(), 0o755));
        inner.insert(
            "bin/ash",
            Entry {
                kind: Kind::Hardlink("bin/sh".into()),
                ..Entry::file(b"".to_vec(), 0o755)
            },
        );
        let mut t = Tree::new();
        t.graft("containers/onboot/000-a/rootfs", &inner);
        assert!(t.get("containers/onboot/000-a/rootfs/bin/sh").is_some());
        assert_eq!(
            t.get("containers/onboot/000-a/rootfs/bin/ash")
                .unwrap()
                .kind,
            Kind::Hardlink("containers/onboot/000-a/rootfs/bin/sh".into())
        );
    }
}
