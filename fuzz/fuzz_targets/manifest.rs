//! The manifest loader on arbitrary text: the go-yaml pre-pass and position index
//! (`Source::new`), parsing, template expansion, merging and validation, and the rendering of the
//! error. Every input must end in a manifest or an error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use slipway::manifest::{self, Source};

fuzz_target!(|text: &str| {
    let source = Source::new("fuzz.yml", text, Some("/nonexistent".into()));
    let tagger = |_: &Path| Ok::<_, String>("example.org/pkg:fuzz".to_string());
    match manifest::load(vec![source], &tagger) {
        Ok(merged) => {
            // What `build --dry-run` prints must print without panicking.
            let _ = manifest::to_yaml(&merged.manifest);
        }
        Err(e) => {
            // The error as the CLI shows it: message, snippet and label positions.
            let _ = format!("{:?}", miette::Report::new(e));
        }
    }
});
