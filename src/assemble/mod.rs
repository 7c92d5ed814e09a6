//! Phase 1 of a build: resolve the manifest's images and lay out the root filesystem tree that
//! every output format is written from.

mod files;
mod kernel;
pub mod modules;
pub mod parts;
pub mod root;
pub mod shared;
pub mod sizes;

// The root tree is defined beside the flattening that fills it (slipway-oci), the runtime config
// beside the schema it reads (slipway-bundle, which the engine shares); this stage uses both.
pub use slipway_bundle::runtime_config;
pub use slipway_oci::tree;

pub use root::{AssembleError, Assembled, MANIFEST_PATH, assemble};
