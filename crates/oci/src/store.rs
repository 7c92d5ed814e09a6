//! The local content-addressed store: an OCI image layout shared by every slipway command.
//!
//! Layout: `ROOT/oci-layout`, `ROOT/index.json` (one descriptor per named image, the name in the
//! `org.opencontainers.image.ref.name` annotation as a full reference) and `ROOT/blobs/sha256/<hex>`.
//!
//! Invariants, so that several slipway processes can share one store:
//! - a blob is streamed to a temporary file beside its final place, verified, then renamed in, so a
//!   blob path that exists always holds exactly the bytes of its digest;
//! - a blob whose file changed after it was verified (size, mtime, ctime or inode differ from what
//!   `ROOT/verified/<hex>` recorded) is hashed again when opened; one that no longer matches its
//!   digest is refused and removed, so the next pull fetches it again;
//! - `index.json` is only rewritten under an exclusive lock on `ROOT/index.lock`, as a temporary
//!   file renamed into place, so readers never see a torn file and concurrent tags are not lost;
//! - garbage collection (`rm`, `clean`) takes `ROOT/gc.lock` exclusively, while anything that writes
//!   blobs before tagging them holds it shared ([`Store::guard`]), so blobs on their way into the
//!   index are never collected.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, ImageManifest, MediaType};

use super::digest::{Digest, Hasher};

/// The annotation that names an image in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("blob {expected} does not match its content: got {actual} (from {source_name})")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        source_name: String,
    },
    #[error(
        "{path}: blob {expected} changed after it was stored (its content is now {actual}); it was removed, pull the image again"
    )]
    Changed {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: not an OCI image layout ({reason})")]
    Layout { path: PathBuf, reason: String },
    #[error("index.json names a descriptor with an invalid digest: {0}")]
    BadDigest(#[from] super::digest::DigestParseError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An opened store. Cheap to clone; holds no open files.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// Holds the store's GC lock shared: while it lives, no `rm`/`clean` collects blobs. Take one
/// around "write blobs, then tag them".
#[derive(Debug)]
pub struct StoreGuard {
    _file: File,
}

impl Store {
    /// `$XDG_CACHE_HOME/slipway`, else `~/.cache/slipway`.
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("slipway");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".cache").join("slipway")
    }

    /// Opens the store at `root`, creating an empty layout if needed.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store {
            root: root.to_path_buf(),
        };
        fs::create_dir_all(store.blob_dir()).map_err(io_err(&store.blob_dir()))?;
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            let _lock = store.lock_file("index.lock", true)?;
            if !index.exists() {
                store.write_index(&empty_index())?;
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blob_dir().join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// A temporary file in the blob directory (same filesystem, so the final rename is atomic). It
    /// is deleted when dropped unless persisted, and by [`crate::interrupt::clean_up`] when the
    /// process is interrupted.
    pub fn temp_blob(&self) -> Result<TempBlob, StoreError> {
        let (file, tracked) = crate::interrupt::track_file(
            || {
                tempfile::Builder::new()
                    .prefix(".tmp-")
                    .tempfile_in(self.blob_dir())
            },
            |f| f.path().to_path_buf(),
        )
        .map_err(io_err(&self.blob_dir()))?;
        Ok(TempBlob {
            file,
            _tracked: tracked,
        })
    }

    /// Moves a fully written temporary file to its digest's path. The caller has verified it.
    pub fn commit_temp(&self, tmp: TempBlob, digest: &Digest) -> Result<(), StoreError> {
        let dest = self.blob_path(digest);
        let TempBlob {
            file: tmp,
            _tracked,
        } = tmp;
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        let file = tmp.persist(&dest).map_err(|e| StoreError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        drop(_tracked);
        let meta = file.metadata().map_err(io_err(&dest))?;
        self.record_verified(digest, &meta)
    }

    fn verified_path(&self, d: &Digest) -> PathBuf {
        self.root.join("verified").join(d.hex())
    }

    /// What a blob file looked like when its content was last checked against its digest. ctime
    /// is included because no one can set it back: a rewrite that restores size and mtime still
    /// shows.
    fn fingerprint(meta: &fs::Metadata) -> String {
        format!(
            "{} {} {} {} {} {}",
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.ino()
        )
    }

    fn record_verified(&self, d: &Digest, meta: &fs::Metadata) -> Result<(), StoreError> {
        let dir = self.root.join("verified");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        write_atomic(&self.verified_path(d), Self::fingerprint(meta).as_bytes())
    }

    /// Checks an opened blob file: unchanged since its last verification, or hashed again now.
    /// A blob that no longer matches its digest is removed and refused.
    fn check_blob(&self, d: &Digest, file: &mut File) -> Result<(), StoreError> {
        let path = self.blob_path(d);
        let meta = file.metadata().map_err(io_err(&path))?;
        let recorded = fs::read_to_string(self.verified_path(d)).unwrap_or_default();
        if recorded == Self::fingerprint(&meta) {
            return Ok(());
        }
        let actual = Digest::of_reader(&mut *file).map_err(io_err(&path))?;
        file.rewind().map_err(io_err(&path))?;
        if &actual != d {
            let _ = fs::remove_file(&path);
            let _ = fs::remove_file(self.verified_path(d));
            return Err(StoreError::Changed {
                path,
                expected: d.clone(),
                actual,
            });
        }
        self.record_verified(d, &meta)
    }

    /// Stores `data`, returning its digest. Atomic; storing an existing blob is a no-op.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(data);
        if !self.has_blob(&digest) {
            let mut tmp = self.temp_blob()?;
            tmp.write_all(data).map_err(io_err(tmp.path()))?;
            self.commit_temp(tmp, &digest)?;
        }
        Ok(digest)
    }

    /// Copies the file `src` into the store (streamed), verifying it against `expected` when given.
    /// On a mismatch nothing is left behind.
    pub fn put_blob_file(
        &self,
        src: &Path,
        expected: Option<&Digest>,
    ) -> Result<Digest, StoreError> {
        let file = File::open(src).map_err(io_err(src))?;
        self.put_blob_reader(file, expected, &src.display().to_string())
    }

    /// Streams `reader` into the store, verifying against `expected` when given. `source_name`
    /// names where the bytes came from in errors.
    pub fn put_blob_reader(
        &self,
        mut reader: impl Read,
        expected: Option<&Digest>,
        source_name: &str,
    ) -> Result<Digest, StoreError> {
        let mut tmp = self.temp_blob()?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|source| StoreError::Io {
                path: source_name.into(),
                source,
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io_err(tmp.path()))?;
        }
        let actual = hasher.finish();
        if let Some(expected) = expected
            && *expected != actual
        {
            // `tmp` is dropped here, which deletes it: the store stays as it was.
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
                source_name: source_name.to_string(),
            });
        }
        if !self.has_blob(&actual) {
            self.commit_temp(tmp, &actual)?;
        }
        Ok(actual)
    }

    /// A blob's bytes, checked against its digest when its file changed since it was verified.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut file = self.open_blob(d)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(io_err(&self.blob_path(d)))?;
        Ok(data)
    }

    /// A blob opened for reading, checked against its digest when its file changed since it was
    /// verified.
    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(d);
        let mut file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob(d.clone())
            } else {
                StoreError::Io { path, source: e }
            }
        })?;
        self.check_blob(d, &mut file)?;
        Ok(file)
    }

    /// Reads a JSON blob (manifest, index, config) and parses it.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, d: &Digest) -> Result<T, StoreError> {
        let data = self.read_blob(d)?;
        serde_json::from_slice(&data).map_err(|source| StoreError::Json {
            path: self.blob_path(d),
            source,
        })
    }

    /// Names `manifest` (an image manifest or index) `reference` in index.json, replacing any
    /// earlier descriptor of that name.
    pub fn tag(&self, reference: &str, manifest: Descriptor) -> Result<(), StoreError> {
        let reference = canonical(reference);
        let reference = reference.as_str();
        let _lock = self.lock_file("index.lock", true)?;
        let mut index = self.read_index()?;
        let mut entries: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| ref_name(d) != Some(reference))
            .cloned()
            .collect();
        let mut annotations = manifest.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME.to_string(), reference.to_string());
        let mut manifest = manifest;
        manifest.set_annotations(Some(annotations));
        entries.push(manifest);
        entries.sort_by(|a, b| ref_name(a).cmp(&ref_name(b)));
        index.set_manifests(entries);
        self.write_index(&index)
    }

    /// Removes the name `reference` from index.json; returns whether it was there. Blobs stay
    /// until [`Store::gc`].
    pub fn untag(&self, reference: &str) -> Result<bool, StoreError> {
        let reference = canonical(reference);
        let reference = reference.as_str();
        let _lock = self.lock_file("index.lock", true)?;
        let mut index = self.read_index()?;
        let before = index.manifests().len();
        let entries: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| ref_name(d) != Some(reference))
            .cloned()
            .collect();
        let removed = entries.len() != before;
        if removed {
            index.set_manifests(entries);
            self.write_index(&index)?;
        }
        Ok(removed)
    }

    /// The descriptor named `reference` (expanded like every reference: `alpine` is
    /// `docker.io/library/alpine:latest`).
    pub fn lookup(&self, reference: &str) -> Result<Option<Descriptor>, StoreError> {
        let reference = canonical(reference);
        let reference = reference.as_str();
        Ok(self
            .read_index()?
            .manifests()
            .iter()
            .find(|d| ref_name(d) == Some(reference))
            .cloned())
    }

    /// Every named image, sorted by name.
    pub fn images(&self) -> Result<Vec<(String, Descriptor)>, StoreError> {
        let mut out: Vec<_> = self
            .read_index()?
            .manifests()
            .iter()
            .filter_map(|d| ref_name(d).map(|n| (n.to_string(), d.clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Takes the GC lock shared, so blobs written before a tag survive a concurrent `rm`/`clean`.
    pub fn guard(&self) -> Result<StoreGuard, StoreError> {
        Ok(StoreGuard {
            _file: self.lock_file("gc.lock", false)?,
        })
    }

    /// Deletes every blob no named image reaches (and stale temporary files). Returns how many
    /// files were removed.
    pub fn gc(&self) -> Result<usize, StoreError> {
        let _gc = self.lock_file("gc.lock", true)?;
        let _index = self.lock_file("index.lock", true)?;
        let mut live = HashSet::new();
        for (_, desc) in self.images()? {
            self.reachable(&Digest::try_from(desc.digest())?, &mut live)?;
        }
        let mut removed = 0;
        let dir = self.blob_dir();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                removed += 1;
            }
        }
        // Files the builder keeps unpacked per image (`derived/<kind>/<image digest>/`).
        if let Ok(kinds) = fs::read_dir(self.root.join("derived")) {
            for kind in kinds.flatten() {
                for entry in fs::read_dir(kind.path()).into_iter().flatten().flatten() {
                    if !live.contains(&*entry.file_name().to_string_lossy()) {
                        let _ = fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
        let verified = self.root.join("verified");
        if let Ok(entries) = fs::read_dir(&verified) {
            for entry in entries.flatten() {
                if !live.contains(&*entry.file_name().to_string_lossy()) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(removed)
    }

    /// Removes every image and blob.
    pub fn clean(&self) -> Result<usize, StoreError> {
        {
            let _lock = self.lock_file("index.lock", true)?;
            self.write_index(&empty_index())?;
        }
        self.gc()
    }

    /// Adds the hex of every blob reachable from `digest` (an index, manifest, or leaf blob) that
    /// is present in the store: indexes pulled for one platform only hold that platform's manifest.
    pub fn reachable(&self, digest: &Digest, out: &mut HashSet<String>) -> Result<(), StoreError> {
        if !self.has_blob(digest) || !out.insert(digest.hex().to_string()) {
            return Ok(());
        }
        let data = self.read_blob(digest)?;
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&data) else {
            return Ok(());
        };
        if value.get("manifests").is_some() {
            if let Ok(index) = serde_json::from_slice::<ImageIndex>(&data) {
                for m in index.manifests() {
                    self.reachable(&Digest::try_from(m.digest())?, out)?;
                }
            }
        } else if value.get("config").is_some()
            && value.get("layers").is_some()
            && let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&data)
        {
            out.insert(
                Digest::try_from(manifest.config().digest())?
                    .hex()
                    .to_string(),
            );
            for l in manifest.layers() {
                out.insert(Digest::try_from(l.digest())?.hex().to_string());
            }
        }
        Ok(())
    }

    pub fn read_index(&self) -> Result<ImageIndex, StoreError> {
        let path = self.root.join("index.json");
        let data = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&data).map_err(|source| StoreError::Json { path, source })
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), StoreError> {
        let path = self.root.join("index.json");
        let data = serde_json::to_vec_pretty(index).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &data)
    }

    /// Opens `ROOT/name` and locks it (std's `File::lock`, flock(2) underneath: released when the
    /// file is closed, even if the process dies).
    fn lock_file(&self, name: &str, exclusive: bool) -> Result<File, StoreError> {
        let path = self.root.join(name);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        }
        .map_err(io_err(&path))?;
        Ok(file)
    }
}

/// The full spelling of a reference (`busybox` -> `docker.io/library/busybox:latest`); names that
/// do not parse as references are kept as given.
fn canonical(reference: &str) -> String {
    reference
        .parse::<oci_client::Reference>()
        .map(|r| r.whole())
        .unwrap_or_else(|_| reference.to_string())
}

/// The `org.opencontainers.image.ref.name` of a descriptor.
pub fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations().as_ref()?.get(REF_NAME).map(String::as_str)
}

fn empty_index() -> ImageIndex {
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::<Descriptor>::new())
        .build()
        .expect("all index fields set")
}

/// A blob being written: a named temporary file in the store, tracked for an interrupt's
/// clean-up (see [`crate::interrupt`]). The file is deleted before the tracking ends.
#[derive(Debug)]
pub struct TempBlob {
    file: tempfile::NamedTempFile,
    _tracked: crate::interrupt::Tracked,
}

impl std::ops::Deref for TempBlob {
    type Target = tempfile::NamedTempFile;
    fn deref(&self) -> &Self::Target {
        &self.file
    }
}

impl std::ops::DerefMut for TempBlob {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.file
    }
}

/// Writes `data` to a temporary file beside `path`, then renames it over `path`.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let (mut tmp, tracked) = crate::interrupt::track_file(
        || tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir),
        |f| f.path().to_path_buf(),
    )
    .map_err(io_err(dir))?;
    tmp.write_all(data).map_err(io_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    tmp.persist(path).map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    drop(tracked);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        (dir, store)
    }

    #[test]
    fn blobs_are_content_addressed_and_verified() {
        let (dir, store) = temp_store();
        let d = store.put_blob(b"hello").unwrap();
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");
        let src = dir.path().join("src");
        fs::write(&src, b"other bytes").unwrap();
        let err = store.put_blob_file(&src, Some(&d)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&d.to_string()) && msg.contains(&Digest::of(b"other bytes").to_string()),
            "{msg}"
        );
        // Nothing but the first blob: no temporary file, no second blob.
        let names: Vec<_> = fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(d.hex())]);
        assert_eq!(
            store.put_blob_file(&src, None).unwrap(),
            Digest::of(b"other bytes")
        );
    }

    #[test]
    fn a_blob_modified_after_it_was_stored_is_refused_on_read() {
        let (_dir, store) = temp_store();
        let d = store.put_blob(b"the layer as pulled").unwrap();
        // Unchanged: read as usual, opened as usual.
        assert_eq!(store.read_blob(&d).unwrap(), b"the layer as pulled");
        store.open_blob(&d).unwrap();
        // Same size, different bytes: only the file's metadata betrays it.
        fs::write(store.blob_path(&d), b"the layer as altered").unwrap();
        let err = store.open_blob(&d).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&d.to_string())
                && msg.contains(&Digest::of(b"the layer as altered").to_string())
                && msg.contains("changed after it was stored"),
            "{msg}"
        );
        assert!(!store.has_blob(&d), "the altered blob is removed");
        assert!(matches!(
            store.read_blob(&d),
            Err(StoreError::MissingBlob(_))
        ));
        // Touched but intact (metadata changed, content not): hashed again and accepted.
        let e = store.put_blob(b"intact").unwrap();
        fs::write(store.blob_path(&e), b"intact").unwrap();
        assert_eq!(store.read_blob(&e).unwrap(), b"intact");
    }

    #[test]
    fn tags_replace_and_untag_and_gc_collect() {
        let (_dir, store) = temp_store();
        let a = store.put_blob(b"{}").unwrap();
        let b = store.put_blob(b"[]").unwrap();
        store
            .tag(
                "docker.io/library/x:1",
                Descriptor::new(MediaType::ImageManifest, 2, a.to_oci()),
            )
            .unwrap();
        store
            .tag(
                "docker.io/library/x:1",
                Descriptor::new(MediaType::ImageManifest, 2, b.to_oci()),
            )
            .unwrap();
        let images = store.images().unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].1.digest().to_string(), b.to_string());
        assert_eq!(store.gc().unwrap(), 1, "the untagged blob is collected");
        assert!(!store.has_blob(&a) && store.has_blob(&b));
        assert!(store.untag("docker.io/library/x:1").unwrap());
        assert!(store.lookup("docker.io/library/x:1").unwrap().is_none());
        store.gc().unwrap();
        assert!(!store.has_blob(&b));
    }

    #[test]
    fn concurrent_tags_are_all_kept() {
        let (_dir, store) = temp_store();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = Store::open(store.root()).unwrap();
                std::thread::spawn(move || {
                    for j in 0..10 {
                        let d = store.put_blob(format!("{i}-{j}").as_bytes()).unwrap();
                        let desc = Descriptor::new(MediaType::ImageManifest, 3, d.to_oci());
                        store.tag(&format!("r/img{i}:{j}"), desc).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(store.images().unwrap().len(), 80);
    }
}
