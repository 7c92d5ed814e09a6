//! The size budget of what Slipway itself puts in an image: every workspace crate a package of
//! `pkg/` installs (the init, the engine, format, mountie, any helper added later), built exactly
//! as `slipway pkg build` builds it (static musl, `--profile image`, the package's build-env),
//! each one static, and together at most 6 MB. Packages that install the same binary (the init's
//! multi-call binary serves as the engine, format and mountie too) count it once, as the image
//! stores identical files once.
//!
//! Slow on a cold target directory: the image profile (LTO, one codegen unit) builds the programs
//! and all their dependencies, which takes many minutes on a small machine; later runs, and the
//! package builds of the other tests, reuse that build.

use std::path::Path;

use sha2::Digest as _;
use slipway::pkg::buildfile::{self, Source};
use slipway::pkg::cargo;

/// The budget, in bytes.
const BUDGET: usize = 6_000_000;

#[test]
fn in_image_programs_are_static_and_fit_the_size_budget() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut packages: Vec<_> = std::fs::read_dir(root.join("pkg"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("build.yml").is_file())
        .collect();
    packages.sort();
    let mut sizes = Vec::new();
    for dir in &packages {
        let file = buildfile::load(&dir.join("build.yml")).unwrap();
        for item in file.contents {
            if let Source::Crate { name, env, .. } = item.source {
                let inputs = cargo::inputs(dir, &name).unwrap();
                // `build` refuses a binary with an interpreter or shared-library dependencies.
                let binary = cargo::build(&inputs, &env)
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                let digest = sha2::Sha256::digest(&binary);
                sizes.push((name, binary.len(), digest));
            }
        }
    }
    let names: Vec<&str> = sizes.iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(
        names.contains(&"slipway-init"),
        "the init is built from pkg/: {names:?}"
    );
    let distinct: std::collections::BTreeMap<_, usize> =
        sizes.iter().map(|(_, s, d)| (d.to_vec(), *s)).collect();
    let total: usize = distinct.values().sum();
    let report: String = sizes
        .iter()
        .map(|(n, s, d)| format!("{n}: {s} bytes, sha256 {}\n", hex::encode(&d[..6])))
        .collect();
    eprintln!("{report}total of distinct binaries: {total} bytes (budget {BUDGET})");
    assert!(
        total <= BUDGET,
        "the in-image programs take {total} bytes, over the budget of {BUDGET}:\n{report}"
    );
}
