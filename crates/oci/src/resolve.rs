//! Reference resolution: cache first, then the registry (`--pull` forces it, `--offline` forbids
//! it); multi-arch indexes narrowed to one platform; and pushing a stored image to a registry.
//!
//! The public functions block: each runs its own tokio runtime, on a separate thread when the
//! caller is already inside one (the CLI is synchronous; the engine is async).

use std::str::FromStr;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::{Reference, RegistryOperation};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use super::OciError;
use super::digest::Digest;
use super::progress::Progress;
use super::registry::{NetOptions, Registry};
use super::store::Store;

/// How many blobs download at once.
const PARALLEL_BLOBS: usize = 4;

/// How [`resolve`] may use the network.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Ask the registry even when the store has the image (`--pull`).
    pub pull: bool,
    /// Never ask the registry (`--offline`).
    pub offline: bool,
    /// Architecture picked from multi-arch indexes (`amd64`, `arm64`, ...); the OS is always linux.
    pub arch: String,
    /// Registries reached over plain HTTP besides loopback ones (`--insecure-registry HOST`).
    pub insecure_registries: Vec<String>,
    /// Timeouts, retries and size caps of registry I/O.
    pub net: NetOptions,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            pull: false,
            offline: false,
            arch: host_arch().to_string(),
            insecure_registries: Vec::new(),
            net: NetOptions::default(),
        }
    }
}

/// The host's architecture in OCI spelling.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// An image whose manifest, config and layers are all in the store.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The full reference (`docker.io/library/alpine:3.19`).
    pub reference: String,
    /// The digest of the platform's image manifest.
    pub digest: Digest,
    /// The multi-arch index the manifest was selected from, if the reference named one.
    pub index_digest: Option<Digest>,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
}

impl ResolvedImage {
    /// What the reference itself points at: the index for a multi-arch image, else the manifest.
    pub fn top_digest(&self) -> &Digest {
        self.index_digest.as_ref().unwrap_or(&self.digest)
    }

    /// The layer digests, bottom first.
    pub fn layers(&self) -> Result<Vec<Digest>, OciError> {
        self.manifest
            .layers()
            .iter()
            .map(|l| {
                Digest::try_from(l.digest()).map_err(|e| OciError::Invalid {
                    reference: self.reference.clone(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }
}

/// Parses and expands a reference (`busybox` -> `docker.io/library/busybox:latest`).
pub fn parse_reference(reference: &str) -> Result<Reference, OciError> {
    Reference::from_str(reference).map_err(|e| OciError::InvalidReference {
        reference: reference.to_string(),
        reason: e.to_string(),
    })
}

/// The canonical spelling of a reference, as recorded in the store.
pub fn full_reference(reference: &str) -> Result<String, OciError> {
    Ok(parse_reference(reference)?.whole())
}

/// Cache first, then the registry; returns the image (manifest for the chosen platform) with all
/// blobs local.
pub fn resolve(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
) -> Result<ResolvedImage, OciError> {
    let r = parse_reference(reference)?;
    let _guard = store.guard()?;
    if !opts.pull
        && let Some(image) = local(store, &r, &opts.arch)?
    {
        return Ok(image);
    }
    if opts.offline {
        return Err(OciError::NotInCache {
            reference: r.whole(),
        });
    }
    block_on(remote(store, &r, opts))
}

/// Pushes an image that is in the store (all its blobs) under `target`
/// (e.g. `127.0.0.1:5050/slipway/init:TAG`). A multi-arch index is pushed with every platform
/// manifest the store holds. The store also records the image under `target`.
pub fn push(
    store: &Store,
    reference: &str,
    target: &str,
    opts: &PullOptions,
) -> Result<Digest, OciError> {
    let r = parse_reference(reference)?;
    let t = parse_reference(target)?;
    let _guard = store.guard()?;
    let top = top_digest(store, &r)?.ok_or_else(|| OciError::NotInCache {
        reference: r.whole(),
    })?;
    let bytes = read_verified(store, &r, &top)?;
    let media_type = media_type_of(&bytes);
    block_on(async {
        let reg = Registry::new(&t, &opts.insecure_registries, &opts.net)?;
        reg.authenticate(&t, RegistryOperation::Push).await?;
        if is_index(&bytes) {
            let index: ImageIndex = parse_json(&r, &bytes)?;
            for child in index.manifests() {
                let d = oci_digest(&r, child)?;
                if store.has_blob(&d) {
                    push_manifest_and_blobs(store, &reg, &r, &t, &d).await?;
                }
            }
        } else {
            push_blobs_of(store, &reg, &r, &t, &bytes).await?;
        }
        reg.push_manifest(&t, bytes.clone(), &media_type).await
    })?;
    store.tag(
        &t.whole(),
        Descriptor::new(
            MediaType::from(media_type.as_str()),
            bytes.len() as u64,
            top.to_oci(),
        ),
    )?;
    Ok(top)
}

async fn push_manifest_and_blobs(
    store: &Store,
    reg: &Registry,
    r: &Reference,
    t: &Reference,
    d: &Digest,
) -> Result<(), OciError> {
    let bytes = read_verified(store, r, d)?;
    push_blobs_of(store, reg, r, t, &bytes).await?;
    let by_digest = Reference::with_digest(
        t.registry().to_string(),
        t.repository().to_string(),
        d.to_string(),
    );
    reg.push_manifest(&by_digest, bytes.clone(), &media_type_of(&bytes))
        .await
}

async fn push_blobs_of(
    store: &Store,
    reg: &Registry,
    r: &Reference,
    t: &Reference,
    manifest: &[u8],
) -> Result<(), OciError> {
    let m: ImageManifest = parse_json(r, manifest)?;
    let mut blobs = vec![oci_digest(r, m.config())?];
    for l in m.layers() {
        blobs.push(oci_digest(r, l)?);
    }
    for d in &blobs {
        if !store.has_blob(d) {
            return Err(OciError::Invalid {
                reference: r.whole(),
                reason: format!("blob {d} is not in the store"),
            });
        }
    }
    let uploads: Vec<_> = blobs
        .into_iter()
        .map(|d| async move { reg.push_blob(store, t, &d).await })
        .collect();
    futures_util::stream::iter(uploads)
        .buffer_unordered(PARALLEL_BLOBS)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The digest the reference names in the store: its pinned digest if the blob is present, else
/// the descriptor tagged with its full name.
fn top_digest(store: &Store, r: &Reference) -> Result<Option<Digest>, OciError> {
    if let Some(pinned) = r.digest() {
        let d = parse_digest(r, pinned)?;
        return Ok(store.has_blob(&d).then_some(d));
    }
    match store.lookup(&r.whole())? {
        Some(desc) => Ok(Some(oci_digest(r, &desc)?)),
        None => Ok(None),
    }
}

/// The image from the store alone, or `None` when any piece is missing.
fn local(store: &Store, r: &Reference, arch: &str) -> Result<Option<ResolvedImage>, OciError> {
    let Some(top) = top_digest(store, r)? else {
        return Ok(None);
    };
    let bytes = read_verified(store, r, &top)?;
    let (digest, index_digest, bytes) = if is_index(&bytes) {
        let index: ImageIndex = parse_json(r, &bytes)?;
        let child = select_platform(r, &index, arch)?;
        let d = oci_digest(r, &child)?;
        if !store.has_blob(&d) {
            return Ok(None);
        }
        let child_bytes = read_verified(store, r, &d)?;
        (d, Some(top), child_bytes)
    } else {
        (top, None, bytes)
    };
    let manifest: ImageManifest = parse_json(r, &bytes)?;
    let config_digest = oci_digest(r, manifest.config())?;
    for l in manifest.layers() {
        if !store.has_blob(&oci_digest(r, l)?) {
            return Ok(None);
        }
    }
    if !store.has_blob(&config_digest) {
        return Ok(None);
    }
    let config = parse_json(r, &store.read_blob(&config_digest)?)?;
    Ok(Some(ResolvedImage {
        reference: r.whole(),
        digest,
        index_digest,
        manifest,
        config,
    }))
}

async fn remote(
    store: &Store,
    r: &Reference,
    opts: &PullOptions,
) -> Result<ResolvedImage, OciError> {
    let reg = Registry::new(r, &opts.insecure_registries, &opts.net)?;
    reg.authenticate(r, RegistryOperation::Pull).await?;
    let top_bytes = reg.manifest_raw(r).await?;
    let top = Digest::of(&top_bytes);
    if let Some(pinned) = r.digest() {
        let expected = parse_digest(r, pinned)?;
        if expected != top {
            return Err(OciError::ManifestDigestMismatch {
                reference: r.whole(),
                expected,
                actual: top,
            });
        }
    }
    let (digest, index_digest, bytes) = if is_index(&top_bytes) {
        let index: ImageIndex = parse_json(r, &top_bytes)?;
        let child = select_platform(r, &index, &opts.arch)?;
        let d = oci_digest(r, &child)?;
        let by_digest = Reference::with_digest(
            r.registry().to_string(),
            r.repository().to_string(),
            d.to_string(),
        );
        let child_bytes = reg.manifest_raw(&by_digest).await?;
        let actual = Digest::of(&child_bytes);
        if actual != d {
            return Err(OciError::ManifestDigestMismatch {
                reference: r.whole(),
                expected: d,
                actual,
            });
        }
        (d, Some(top.clone()), child_bytes)
    } else {
        (top.clone(), None, top_bytes.clone())
    };
    let manifest: ImageManifest = parse_json(r, &bytes)?;
    let mut blobs = vec![(
        oci_digest(r, manifest.config())?,
        manifest.config().media_type().to_string(),
        manifest.config().size(),
    )];
    for l in manifest.layers() {
        blobs.push((oci_digest(r, l)?, l.media_type().to_string(), l.size()));
    }
    let progress = Progress::new();
    let reg = &reg;
    let downloads: Vec<_> = blobs
        .iter()
        .cloned()
        .map(|(d, mt, size)| {
            let bar = progress.bar(&d, size);
            async move {
                let result = reg.fetch_blob(store, r, &d, &mt, size, &bar).await;
                bar.finish_and_clear();
                result
            }
        })
        .collect();
    futures_util::stream::iter(downloads)
        .buffer_unordered(PARALLEL_BLOBS)
        .try_collect::<Vec<()>>()
        .await?;
    // Manifests go in last, so a manifest in the store implies its blobs were fetched. They are
    // stored byte for byte as served, which keeps their digests.
    store.put_blob(&bytes)?;
    store.put_blob(&top_bytes)?;
    let media_type = media_type_of(&top_bytes);
    store.tag(
        &r.whole(),
        Descriptor::new(
            MediaType::from(media_type.as_str()),
            top_bytes.len() as u64,
            top.to_oci(),
        ),
    )?;
    let config = parse_json(r, &store.read_blob(&blobs[0].0)?)?;
    Ok(ResolvedImage {
        reference: r.whole(),
        digest,
        index_digest,
        manifest,
        config,
    })
}

/// The linux/`arch` entry of an index (`x86_64` and `aarch64` are accepted as aliases).
pub fn select_platform(
    r: &Reference,
    index: &ImageIndex,
    arch: &str,
) -> Result<Descriptor, OciError> {
    let arch = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let found = index.manifests().iter().find(|m| {
        m.platform()
            .as_ref()
            .is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == arch)
    });
    found.cloned().ok_or_else(|| OciError::NoPlatform {
        reference: r.whole(),
        arch: arch.to_string(),
        available: index
            .manifests()
            .iter()
            .filter_map(|m| {
                m.platform()
                    .as_ref()
                    .map(|p| format!("{}/{}", p.os(), p.architecture()))
            })
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Whether manifest bytes are an index (OCI) or a manifest list (Docker).
pub fn is_index(bytes: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return false;
    };
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(mt) => mt.contains("index") || mt.contains("manifest.list"),
        None => v.get("manifests").is_some(),
    }
}

/// The media type a manifest declares, else the OCI type its shape implies.
pub fn media_type_of(bytes: &[u8]) -> String {
    let v = serde_json::from_slice::<serde_json::Value>(bytes).unwrap_or_default();
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(mt) => mt.to_string(),
        None if is_index(bytes) => "application/vnd.oci.image.index.v1+json".into(),
        None => "application/vnd.oci.image.manifest.v1+json".into(),
    }
}

fn read_verified(store: &Store, r: &Reference, d: &Digest) -> Result<Vec<u8>, OciError> {
    let bytes = store.read_blob(d)?;
    let actual = Digest::of(&bytes);
    if &actual != d {
        return Err(OciError::ManifestDigestMismatch {
            reference: r.whole(),
            expected: d.clone(),
            actual,
        });
    }
    Ok(bytes)
}

fn parse_json<T: serde::de::DeserializeOwned>(r: &Reference, bytes: &[u8]) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|e| OciError::Invalid {
        reference: r.whole(),
        reason: format!("invalid JSON: {e}"),
    })
}

fn parse_digest(r: &Reference, s: &str) -> Result<Digest, OciError> {
    s.parse()
        .map_err(|e: super::digest::DigestParseError| OciError::Invalid {
            reference: r.whole(),
            reason: e.to_string(),
        })
}

fn oci_digest(r: &Reference, d: &Descriptor) -> Result<Digest, OciError> {
    parse_digest(r, d.digest().as_ref())
}

/// Runs `fut` to completion from synchronous code, whether or not a tokio runtime is current:
/// inside one, blocking its thread would panic (or deadlock), so a scoped thread runs a fresh one.
pub fn block_on<F: std::future::Future + Send>(fut: F) -> F::Output
where
    F::Output: Send,
{
    let run = |fut: F| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building a tokio runtime")
            .block_on(fut)
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| run(fut))
                .join()
                .expect("registry thread panicked")
        })
    } else {
        run(fut)
    }
}
