//! Phase 1 of a build: resolve the manifest's images and lay out the root filesystem tree that
//! every output format is written from.

mod files;
pub mod modules;
pub mod root;
pub mod runtime_config;
pub mod tree;

pub use root::{AssembleError, Assembled, MANIFEST_PATH, assemble};
