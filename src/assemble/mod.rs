//! Phase 1 of a build: the root filesystem tree every output format is written from.

pub mod tree;
