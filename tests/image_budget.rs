//! The size budgets of what Slipway itself puts in an image: every workspace crate a package of
//! `pkg/` installs, built exactly as `slipway pkg build` builds it (static musl, `--profile
//! image`, stripped, the package's build-env), each one static and within its crate's budget:
//! the init's multi-call binary (the init, the engine, format, mountie, metadata, ...) at most
//! 6 MB, the swarm agent at most 8 MB. Packages that install the same binary count it once, as
//! the image stores identical files once; a crate without a budget here fails the test.
//!
//! Slow on a cold target directory: the image profile (LTO, one codegen unit) builds the programs
//! and all their dependencies, which takes many minutes on a small machine; later runs, and the
//! package builds of the other tests, reuse that build.

use std::path::Path;

use sha2::Digest as _;
use slipway::pkg::buildfile::{self, Source};
use slipway::pkg::cargo;

/// The budget of each in-image crate, in bytes.
const BUDGETS: &[(&str, usize)] = &[("slipway-init", 6_000_000), ("slipway-swarm", 8_000_000)];

#[test]
fn in_image_programs_are_static_and_fit_their_size_budgets() {
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
    for (name, _) in BUDGETS {
        assert!(names.contains(name), "{name} is built from pkg/: {names:?}");
    }
    let distinct: std::collections::BTreeMap<_, (&str, usize)> = sizes
        .iter()
        .map(|(n, s, d)| (d.to_vec(), (n.as_str(), *s)))
        .collect();
    let report: String = sizes
        .iter()
        .map(|(n, s, d)| format!("{n}: {s} bytes, sha256 {}\n", hex::encode(&d[..6])))
        .collect();
    eprint!("{report}");
    for (name, size) in distinct.values() {
        let budget = BUDGETS
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| *b)
            .unwrap_or_else(|| panic!("{name} has no size budget in tests/image_budget.rs"));
        assert!(
            size <= &budget,
            "{name} takes {size} bytes, over its budget of {budget}:\n{report}"
        );
    }
}
