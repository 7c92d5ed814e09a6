//! Slipway: builds immutable, minimal Linux OS images from a LinuxKit-style manifest.
//!
//! The build is a one-way pipeline: [`manifest`] (parse, merge, validate) ->
//! [`oci`] (resolve and fetch images into the content-addressed store) ->
//! [`assemble`] (the phase-1 root tree) -> [`format`] (phase-2 writers).
//!
//! What the programs inside an image share with the builder lives in `crates/`: [`oci`] is the
//! `slipway-oci` crate (the engine pulls with it), the manifest's schema and the runtime config
//! are `slipway-bundle`, the image's fixed paths `slipway-layout`.

pub mod assemble;
pub mod cli;
pub mod format;
pub mod manifest;
pub mod pkg;
pub mod run;

pub use slipway_oci as oci;
