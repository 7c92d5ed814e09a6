//! Reproducible tar streams (and gzip layers) written from a [`Tree`].
//!
//! Same tree, same bytes: entries in the tree's path order, one fixed mtime, numeric uid/gid only
//! (no user or group names), GNU long-name records for long paths, and a gzip header with mtime 0
//! and no file name. The gzip bytes also depend on the deflate implementation; the workspace pins
//! flate2's `zlib-rs` backend, so every machine running this build produces the same layer digest.

use std::io::{self, Write};

use flate2::{Compression, GzBuilder};
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use crate::assemble::tree::{DEFAULT_MTIME, Kind, Tree};

/// gzip level of package layers. Part of the layer digest: changing it changes every package's image.
const GZIP_LEVEL: u32 = 6;

/// The mtime of every entry: `SOURCE_DATE_EPOCH` when set (the reproducible-builds convention),
/// else [`DEFAULT_MTIME`].
pub fn mtime() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MTIME)
}

/// A gzip-compressed layer and the digests an image needs.
pub struct Layer {
    pub gz: Vec<u8>,
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

/// Writes `tree` as a tar to `out`, every entry with `mtime`.
pub fn write_tar<W: Write>(tree: &Tree, mtime: u64, out: W) -> io::Result<W> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Complete);
    for (path, entry) in tree.iter() {
        if path.is_empty() {
            continue;
        }
        let mut header = Header::new_gnu();
        header.set_mode(entry.mode & 0o7777);
        header.set_uid(u64::from(entry.uid));
        header.set_gid(u64::from(entry.gid));
        header.set_mtime(mtime);
        header.set_size(0);
        match &entry.kind {
            Kind::Dir => {
                header.set_entry_type(EntryType::Directory);
                builder.append_data(&mut header, format!("{path}/"), io::empty())?;
            }
            Kind::File(data) => {
                header.set_entry_type(EntryType::Regular);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            Kind::Symlink(target) => {
                header.set_entry_type(EntryType::Symlink);
                builder.append_link(&mut header, path, target)?;
            }
            Kind::Hardlink(target) => {
                header.set_entry_type(EntryType::Link);
                builder.append_link(&mut header, path, target)?;
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                let ty = if matches!(entry.kind, Kind::CharDevice { .. }) {
                    EntryType::Char
                } else {
                    EntryType::Block
                };
                header.set_entry_type(ty);
                header.set_device_major(*major)?;
                header.set_device_minor(*minor)?;
                builder.append_data(&mut header, path, io::empty())?;
            }
            Kind::Fifo => {
                header.set_entry_type(EntryType::Fifo);
                builder.append_data(&mut header, path, io::empty())?;
            }
        }
    }
    builder.into_inner()
}

/// `tree` as a plain tar in memory.
pub fn tar_bytes(tree: &Tree, mtime: u64) -> io::Result<Vec<u8>> {
    write_tar(tree, mtime, Vec::new())
}

/// `tree` as a gzip layer; the diff_id is hashed while the tar streams into the compressor.
pub fn gzip_layer(tree: &Tree, mtime: u64) -> io::Result<Layer> {
    let gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::new(GZIP_LEVEL));
    let tee = HashingWriter {
        inner: gz,
        hasher: Sha256::new(),
    };
    let tee = write_tar(tree, mtime, tee)?;
    let diff_id = format!("sha256:{}", hex::encode(tee.hasher.finalize()));
    let gz = tee.inner.finish()?;
    Ok(Layer { gz, diff_id })
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::tree::Entry;

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.insert("bin/busybox", Entry::file(b"\x7fELF".to_vec(), 0o755));
        t.insert("bin/sh", Entry::symlink("/bin/busybox"));
        let long = format!("lib/modules/{}/x.ko", "d".repeat(150));
        t.insert(&long, Entry::file(b"ko".to_vec(), 0o644));
        t
    }

    #[test]
    fn same_tree_gives_same_bytes_and_entries_are_sorted_with_fixed_metadata() {
        let a = gzip_layer(&sample(), 42).unwrap();
        let b = gzip_layer(&sample(), 42).unwrap();
        assert_eq!(a.gz, b.gz);
        assert_eq!(a.diff_id, b.diff_id);
        let tar = tar_bytes(&sample(), 42).unwrap();
        assert_eq!(
            a.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut names = Vec::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), 42);
            assert_eq!(e.header().username().unwrap(), Some(""));
            names.push(e.path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(names[..4], ["bin/", "bin/busybox", "bin/sh", "lib/"]);
        assert!(names.last().unwrap().ends_with("/x.ko") && names.last().unwrap().len() > 160);
    }

    #[test]
    fn different_mtime_changes_the_layer() {
        assert_ne!(
            gzip_layer(&sample(), 1).unwrap().diff_id,
            gzip_layer(&sample(), 2).unwrap().diff_id
        );
    }
}
