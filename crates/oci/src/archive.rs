//! OCI archives: a tar of an OCI image layout, for moving images without a registry
//! (`slipway cache export` / `import`). Blobs are streamed and verified on import like downloads.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex};

use super::OciError;
use super::digest::Digest;
use super::resolve::parse_reference;
use super::store::{REF_NAME, Store, StoreError, ref_name};

/// containerd's annotation for the full image name; `ref.name` is sometimes only a tag.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error(transparent)]
    Oci(#[from] OciError),
}

/// Writes the image `reference` (as stored: the whole index if it is multi-arch) with every blob
/// it reaches in the store to `out`, via a temporary file renamed into place.
pub fn export(store: &Store, reference: &str, out: &Path) -> Result<Digest, ArchiveError> {
    let r = parse_reference(reference)?;
    let full = r.whole();
    let _guard = store.guard().map_err(|source| ArchiveError::Store {
        path: out.into(),
        source,
    })?;
    let desc = match r.digest() {
        Some(_) => None,
        None => store.lookup(&full).map_err(|source| ArchiveError::Store {
            path: out.into(),
            source,
        })?,
    };
    let (top, mut desc) = match (desc, r.digest()) {
        (Some(d), _) => (
            Digest::try_from(d.digest()).map_err(|e| invalid(out, e.to_string()))?,
            d,
        ),
        (None, Some(pinned)) => {
            let d: Digest = pinned
                .parse()
                .map_err(|e: super::digest::DigestParseError| invalid(out, e.to_string()))?;
            let bytes = store.read_blob(&d).map_err(|_| OciError::NotInCache {
                reference: full.clone(),
            })?;
            let mt = super::resolve::media_type_of(&bytes);
            (
                d.clone(),
                Descriptor::new(mt.as_str().into(), bytes.len() as u64, d.to_oci()),
            )
        }
        (None, None) => return Err(OciError::NotInCache { reference: full }.into()),
    };
    let mut annotations = desc.annotations().clone().unwrap_or_default();
    annotations.insert(REF_NAME.into(), full.clone());
    annotations.insert(CONTAINERD_NAME.into(), full.clone());
    desc.set_annotations(Some(annotations));

    let mut blobs = HashSet::new();
    store
        .reachable(&top, &mut blobs)
        .map_err(|source| ArchiveError::Store {
            path: out.into(),
            source,
        })?;
    let mut blobs: Vec<String> = blobs.into_iter().collect();
    blobs.sort();

    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io_err = |source| ArchiveError::Io {
        path: out.to_path_buf(),
        source,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err)?;
    {
        let mut tar = tar::Builder::new(BufWriter::new(tmp.as_file()));
        tar.mode(tar::HeaderMode::Deterministic);
        append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io_err)?;
        let mut index: ImageIndex =
            serde_json::from_str(r#"{"schemaVersion":2,"manifests":[]}"#).expect("static JSON");
        index.set_media_type(Some(oci_spec::image::MediaType::ImageIndex));
        index.set_manifests(vec![desc]);
        let index_json = serde_json::to_vec_pretty(&index).expect("index serialises");
        append_bytes(&mut tar, "index.json", &index_json).map_err(io_err)?;
        for hex in &blobs {
            let path = store.root().join("blobs/sha256").join(hex);
            let mut f = File::open(&path).map_err(|source| ArchiveError::Io {
                path: path.clone(),
                source,
            })?;
            tar.append_file(format!("blobs/sha256/{hex}"), &mut f)
                .map_err(io_err)?;
        }
        tar.into_inner().map_err(io_err)?.flush().map_err(io_err)?;
    }
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(out).map_err(|e| io_err(e.error))?;
    Ok(top)
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data)
}

fn invalid(path: &Path, reason: String) -> ArchiveError {
    ArchiveError::Invalid {
        path: path.to_path_buf(),
        reason,
    }
}

/// Imports every named image of the archive `file` into the store; returns (reference, digest)
/// of each. Every blob is verified against its file name; nothing is tagged unless the archive
/// holds every blob its images need.
pub fn import(store: &Store, file: &Path) -> Result<Vec<(String, Digest)>, ArchiveError> {
    let f = File::open(file).map_err(|source| ArchiveError::Io {
        path: file.into(),
        source,
    })?;
    let _guard = store.guard().map_err(|source| ArchiveError::Store {
        path: file.into(),
        source,
    })?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, f));
    let io_err = |source| ArchiveError::Io {
        path: file.to_path_buf(),
        source,
    };
    let mut index: Option<ImageIndex> = None;
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = path.trim_start_matches("./");
        if path == "index.json" {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(io_err)?;
            index = Some(
                serde_json::from_slice(&data)
                    .map_err(|e| invalid(file, format!("index.json: {e}")))?,
            );
        } else if let Some(hex) = path.strip_prefix("blobs/sha256/")
            && entry.header().entry_type().is_file()
        {
            let expected: Digest = format!("sha256:{hex}")
                .parse()
                .map_err(|e: super::digest::DigestParseError| invalid(file, e.to_string()))?;
            let name = format!("{} ({path})", file.display());
            store
                .put_blob_reader(&mut entry, Some(&expected), &name)
                .map_err(|source| ArchiveError::Store {
                    path: file.into(),
                    source,
                })?;
        }
    }
    let index = index.ok_or_else(|| invalid(file, "no index.json: not an OCI archive".into()))?;
    let mut imported = Vec::new();
    for desc in index.manifests() {
        let name = desc
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CONTAINERD_NAME).cloned())
            .or_else(|| ref_name(desc).map(str::to_string))
            .ok_or_else(|| {
                invalid(
                    file,
                    format!("manifest {} has no name annotation", desc.digest()),
                )
            })?;
        let full = parse_reference(&name)?.whole();
        let digest = Digest::try_from(desc.digest()).map_err(|e| invalid(file, e.to_string()))?;
        if !store.has_blob(&digest) {
            return Err(invalid(
                file,
                format!("{full}: manifest blob {digest} is missing from the archive"),
            ));
        }
        store
            .tag(&full, desc.clone())
            .map_err(|source| ArchiveError::Store {
                path: file.into(),
                source,
            })?;
        imported.push((full, digest));
    }
    Ok(imported)
}
