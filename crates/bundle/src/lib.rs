//! Container bundles: the manifest's schema (data only) and the OCI runtime `config.json` Slipway
//! writes for each container from its manifest entry and its image's config.
//!
//! The builder writes every bundle of an image with [`runtime_config`]; the engine writes the
//! bundles of the containers `slipway-engine run` creates with the same function, so a container
//! behaves the same whichever made it. Reading, merging and validating manifests (YAML, located
//! diagnostics) stay in the builder: this crate has no dependency an in-image program would not
//! otherwise link.

pub mod capabilities;
pub mod runtime_config;
pub mod schema;

pub use runtime_config::runtime_config;
pub use schema::*;
