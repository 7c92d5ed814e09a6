//! Slipway: builds immutable, minimal Linux OS images from a LinuxKit-style manifest.
//!
//! The build is a one-way pipeline: [`manifest`] (parse, merge, validate) ->
//! [`oci`] (resolve and fetch images into the content-addressed store) ->
//! [`assemble`] (the phase-1 root tree) -> [`format`] (phase-2 writers).

pub mod assemble;
pub mod cli;
pub mod format;
pub mod manifest;
pub mod oci;
pub mod pkg;
pub mod run;
