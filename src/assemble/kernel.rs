//! The files a build takes from a kernel image (the kernel binary, its module tar, microcode),
//! kept unpacked in the store after the first build that uses the image.
//!
//! A kernel image is one gzip layer of ~110 MB holding a ~400 MB module tar; gunzipping it and
//! holding every module in memory was most of a warm build. The first build unpacks the image
//! once and writes the files it uses to `<store>/derived/kernel/<image digest>/`; later builds
//! read the kernel binary from there and only the headers of the module tar, seeking over every
//! module and reading back only those the image ships ([`slipway_oci::flatten::LazyFile`]).
//! Each file's fingerprint (size, mtime, ctime, inode, as for verified blobs) is recorded when it
//! is written; a file that no longer matches is refused and the image is unpacked again. `slipway
//! cache gc` removes the copies of images it removes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::root::AssembleError;
use super::tree::Kind;
use crate::oci::{self, ResolvedImage, Store};

/// The files of a kernel image a build asked for, by name; `None` where the image has no such
/// regular file.
pub(super) type KernelFiles = BTreeMap<String, Option<File>>;

/// What `index.json` of a cached image says: name -> (file in the directory, fingerprint), or
/// `None` for a name the image does not have.
type Recorded = BTreeMap<String, Option<(String, String)>>;

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

fn io_error(path: &Path, e: std::io::Error) -> AssembleError {
    AssembleError::Modules(format!("kernel cache {}: {e}", path.display()))
}

/// Opens the files `names` of the kernel image `image`, from the store's unpacked copy when it
/// has them all, otherwise by flattening the image (and recording them for the next build).
pub(super) fn kernel_files(
    store: &Store,
    image: &ResolvedImage,
    names: &[&str],
) -> Result<KernelFiles, AssembleError> {
    let base = store.root().join("derived").join("kernel");
    let dir = base.join(image.digest.hex());
    if let Some(files) = cached(&dir, names) {
        return Ok(files);
    }
    let started = std::time::Instant::now();
    let content = oci::flatten_into_tree(store, image)?;
    tracing::info!(
        "unpacked kernel image {} in {:.2?}",
        image.reference,
        started.elapsed()
    );
    fs::create_dir_all(&base).map_err(|e| io_error(&base, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(&base)
        .map_err(|e| io_error(&base, e))?;
    let mut recorded = Recorded::new();
    let mut files = KernelFiles::new();
    for (i, name) in names.iter().enumerate() {
        let data = match content.get(name).map(|e| &e.kind) {
            Some(Kind::File(data)) => data,
            _ => {
                recorded.insert(name.to_string(), None);
                files.insert(name.to_string(), None);
                continue;
            }
        };
        let file_name = format!("{i}");
        let path = tmp.path().join(&file_name);
        let mut f = File::create(&path).map_err(|e| io_error(&path, e))?;
        f.write_all(data).map_err(|e| io_error(&path, e))?;
        drop(f);
        let f = File::open(&path).map_err(|e| io_error(&path, e))?;
        let meta = f.metadata().map_err(|e| io_error(&path, e))?;
        recorded.insert(name.to_string(), Some((file_name, fingerprint(&meta))));
        files.insert(name.to_string(), Some(f));
    }
    let index = tmp.path().join("index.json");
    let json = serde_json::to_vec(&recorded).expect("a map of strings serialises");
    fs::write(&index, json).map_err(|e| io_error(&index, e))?;
    // The open files stay valid whatever happens to their names: a copy that another build put
    // in place first, or one that cannot be replaced, only costs the next build an unpack.
    // Renaming keeps the inodes, so the recorded fingerprints still hold.
    let _ = fs::remove_dir_all(&dir);
    let tmp = tmp.keep();
    if fs::rename(&tmp, &dir).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    Ok(files)
}

/// The cached files of `dir`, if it has every one of `names` unchanged since it was written.
fn cached(dir: &Path, names: &[&str]) -> Option<KernelFiles> {
    let recorded: Recorded =
        serde_json::from_slice(&fs::read(dir.join("index.json")).ok()?).ok()?;
    let mut files = KernelFiles::new();
    for name in names {
        let file = match recorded.get(*name)? {
            None => None,
            Some((file_name, print)) => {
                let path: PathBuf = dir.join(file_name);
                let f = File::open(&path).ok()?;
                if fingerprint(&f.metadata().ok()?) != *print {
                    tracing::warn!(
                        "{} changed since it was written; unpacking again",
                        path.display()
                    );
                    return None;
                }
                Some(f)
            }
        };
        files.insert(name.to_string(), file);
    }
    Some(files)
}
