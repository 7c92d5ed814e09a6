//! The manifest: LinuxKit's YAML schema, read with positions, merged across files and validated.
//!
//! `load` is the whole stage: parse each file (syntax and type errors located), expand `@pkg:`
//! templates, merge in order, and check every rule. The result feeds image resolution.

// A ManifestError carries the file's text for its snippet. It is created once per failed build
// and never on a hot path, so boxing it everywhere would buy nothing.
#![allow(clippy::result_large_err)]

mod error;
pub mod label;
pub mod linuxkit;
mod merge;
mod parse;
pub mod path;
mod source;
pub mod template;
mod validate;

// The schema itself (data only) lives in slipway-bundle, which the engine shares.
pub use slipway_bundle::{capabilities, schema};

pub use error::ManifestError;
pub use merge::{Document, Merged};
pub use schema::*;
pub use source::{Pos, Source};
pub use template::PkgTagger;
pub use validate::{id_map, parse_duration};

/// Parses one file (no templates, no validation).
pub fn parse_document(source: Source) -> Result<Document, ManifestError> {
    let manifest = parse::parse::<Manifest>(&source)?;
    Ok(Document { source, manifest })
}

/// Parses, expands templates, merges and validates several manifest files, in order.
pub fn load(sources: Vec<Source>, tagger: PkgTagger<'_>) -> Result<Merged, ManifestError> {
    load_with(sources, tagger, None).map(|(merged, _)| merged)
}

/// [`load`], with LinuxKit's package images replaced by the project's own packages first
/// (`build --linuxkit`) when `linuxkit` is given; returns what was replaced.
pub fn load_with(
    sources: Vec<Source>,
    tagger: PkgTagger<'_>,
    linuxkit: Option<&linuxkit::Packages>,
) -> Result<(Merged, Vec<linuxkit::Substitution>), ManifestError> {
    let mut docs = Vec::with_capacity(sources.len());
    let mut substitutions = Vec::new();
    let mut seen_init = std::collections::BTreeSet::new();
    for source in sources {
        let mut doc = parse_document(source)?;
        if let Some(packages) = linuxkit {
            substitutions.extend(linuxkit::substitute(
                &mut doc,
                packages,
                tagger,
                &mut seen_init,
            )?);
        }
        template::expand(&mut doc, tagger)?;
        docs.push(doc);
    }
    let merged = merge::merge(docs);
    validate::validate(&merged)?;
    Ok((merged, substitutions))
}

/// Prints a manifest as YAML (the form `build --dry-run` shows, and that parses back the same).
pub fn to_yaml(manifest: &Manifest) -> String {
    serde_saphyr::to_string(manifest).expect("a manifest always serialises")
}
