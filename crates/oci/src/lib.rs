//! Images: the local OCI store, registries, reference resolution and layer flattening.
//!
//! Everything that needs an image goes through here: [`resolve`] finds it (cache first, then the
//! registry), its blobs land verified in the [`Store`], and [`flatten`] turns its layers into one
//! filesystem, either the in-memory [`Tree`] of the image builder or a directory for the engine.
//!
//! Both the builder and the engine (`slipway-engine run IMAGE`) link this crate, so it carries
//! nothing only a terminal wants: progress bars are the `progress` feature, and errors are plain
//! `thiserror` types (the builder's CLI adds its diagnostics on top).

pub mod archive;
pub mod digest;
pub mod flatten;
pub mod interrupt;
mod progress;
pub mod registry;
pub mod resolve;
pub mod store;
pub mod tree;

use std::path::PathBuf;

pub use digest::Digest;
pub use flatten::{
    FlattenError, Limits, flatten_into_tree, flatten_into_tree_with, unpack_to_dir,
    unpack_to_dir_with,
};
pub use registry::NetOptions;
pub use resolve::{PullOptions, ResolvedImage, push, resolve};
pub use store::{Store, StoreError};
pub use tree::Tree;

/// Errors of resolving, pulling and pushing images. Each names the image reference involved.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("{reference}: not in the local store and --offline forbids the registry")]
    NotInCache { reference: String },
    #[error("{reference}: no manifest for linux/{arch} (available: {available})")]
    NoPlatform {
        reference: String,
        arch: String,
        available: String,
    },
    #[error("{reference}: manifest digest mismatch: expected {expected}, got {actual}")]
    ManifestDigestMismatch {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "{reference}: blob digest mismatch: expected {expected}, got {actual}; the blob was discarded"
    )]
    BlobDigestMismatch {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "{reference}: authentication to {registry} failed (credentials: {credentials}): {detail}"
    )]
    Auth {
        reference: String,
        registry: String,
        credentials: String,
        detail: String,
    },
    #[error(
        "{reference}: blob {digest}: {detail}; the blob was discarded (descriptor size {expected})"
    )]
    BlobSize {
        reference: String,
        digest: Digest,
        expected: u64,
        detail: String,
    },
    #[error("{reference}: the registry's manifest is larger than the {limit}-byte limit")]
    ManifestTooLarge { reference: String, limit: u64 },
    #[error("{reference}: registry {registry}: {detail}")]
    Network {
        reference: String,
        registry: String,
        detail: String,
    },
    #[error("{reference}: registry error: {source}")]
    Registry {
        reference: String,
        source: Box<oci_client::errors::OciDistributionError>,
    },
    #[error("{reference}: {reason}")]
    Invalid { reference: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}
