//! Workspace crates as a source of image files: finding a crate's sources (for the package tag)
//! and building it as a static binary (for the image).
//!
//! The binary is built static against musl with the `image` profile of the root Cargo.toml.
//! Because `--target` is explicit, RUSTFLAGS reach only the target crates, not build scripts;
//! `--remap-path-prefix` keeps the checkout path out of the binary so that two checkouts in
//! different folders build the same bytes.
//!
//! What the image's size budget (6 MB for everything Slipway puts in an image) costs:
//! - musl instead of glibc: a static glibc brings 0.9 MB of C (its resolver, locales, printf,
//!   the dynamic loader it keeps for NSS), musl a tenth of that.
//! - No PIE (`relocation-model=static`): a static PIE carries 0.5 MB of relocations to apply at
//!   start. The price is a fixed load address for the program's own code; stack, heap and mmap
//!   stay randomized, and the programs take no input from the network but the engine's
//!   root-only socket and the registry responses it pulls (parsed by memory-safe code).
//! - lld with identical code folding: generic code that monomorphizes to the same machine
//!   instructions is kept once (Rust promises nothing about function pointer identity).
//! - No unwind tables (`image.ld`): the programs abort on panic and never unwind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::PkgError;

/// The triple image binaries are built for (musl, static; `rustup target add` installs it).
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// The linker script added to every image binary's link, and where it is. Its text is part of
/// the package tag.
pub const LINK_SCRIPT: &str = include_str!("image.ld");
const LINK_SCRIPT_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/pkg/image.ld");

/// The code generation and link flags of image binaries (see the module comment), apart from
/// the path remapping. The target, the flags and [`LINK_SCRIPT`] are part of the package tag.
pub fn image_rustflags() -> Result<String, PkgError> {
    // rustup's lld, through the gcc-ld shim that `cc -fuse-ld=lld` finds with -B.
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| cargo_err("rustc", format!("running rustc --print sysroot: {e}")))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    let gcc_ld = Path::new(&sysroot).join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld");
    Ok(format!(
        "-C target-feature=+crt-static -C relocation-model=static \
         -C link-arg=-B{} -C link-arg=-fuse-ld=lld -C link-arg=-Wl,--icf=all \
         -C link-arg=-Wl,-T,{LINK_SCRIPT_PATH} -C link-arg=-Wl,--no-eh-frame-hdr",
        gcc_ld.display()
    ))
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<MetaPackage>,
    workspace_root: PathBuf,
}

#[derive(Deserialize)]
struct MetaPackage {
    name: String,
    targets: Vec<MetaTarget>,
}

#[derive(Deserialize)]
struct MetaTarget {
    name: String,
    kind: Vec<String>,
}

/// A workspace crate and what its binary is built from.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct CrateInputs {
    pub name: String,
    pub workspace_root: PathBuf,
    /// The folders of the crate and of every path crate its binary links, sorted.
    pub dirs: Vec<PathBuf>,
    /// The registry crates its binary links (`name vVERSION`, with the source unless it is
    /// crates.io; sorted): its share of Cargo.lock.
    pub locked: Vec<String>,
    /// The root Cargo.toml without its own package's sections and the member list: the profiles,
    /// patches and workspace settings a build of this crate reads.
    pub workspace_settings: String,
    /// The binary target's name.
    pub bin: String,
    /// `rustc -vV`: a different compiler makes a different binary.
    pub rustc: String,
}

fn cargo_err(krate: &str, message: String) -> PkgError {
    PkgError::Cargo {
        krate: krate.to_string(),
        message,
    }
}

/// Locates `name` in the workspace that contains `dir`, and what its binary links. Nothing
/// touches the network (`--offline`): the lock file and the local registry cache must have
/// everything, as they do once the workspace has been built. cargo's answers are kept in the memo
/// while the files they come from are unchanged ([`super::memo`]).
pub fn inputs(dir: &Path, name: &str) -> Result<CrateInputs, PkgError> {
    let rustc = super::memo::rustc_version()?;
    super::memo::crate_inputs(dir, name, &rustc, || ask_cargo(dir, name, &rustc))
}

fn ask_cargo(dir: &Path, name: &str, rustc: &str) -> Result<CrateInputs, PkgError> {
    let out = cargo(
        dir,
        name,
        &[
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ],
    )?;
    let meta: Metadata = serde_json::from_slice(&out)
        .map_err(|e| cargo_err(name, format!("parsing cargo metadata: {e}")))?;
    let root = meta
        .packages
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| cargo_err(name, "no such crate in the workspace".into()))?;
    let bin = root
        .targets
        .iter()
        .find(|t| t.kind.iter().any(|k| k == "bin"))
        .map(|t| t.name.clone())
        .ok_or_else(|| cargo_err(name, "the crate has no binary target".into()))?;
    let (dirs, locked) = linked(dir, name)?;
    let workspace_settings = workspace_settings(name, &meta.workspace_root.join("Cargo.toml"))?;
    Ok(CrateInputs {
        name: name.to_string(),
        workspace_root: meta.workspace_root,
        dirs,
        locked,
        workspace_settings,
        bin,
        rustc: rustc.to_string(),
    })
}

/// Runs `cargo ARGS` in `dir` and returns its output.
fn cargo(dir: &Path, krate: &str, args: &[&str]) -> Result<Vec<u8>, PkgError> {
    let out = Command::new("cargo")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| cargo_err(krate, format!("running cargo {}: {e}", args[0])))?;
    if !out.status.success() {
        return Err(cargo_err(
            krate,
            format!(
                "cargo {}: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(out.stdout)
}

/// The packages `name`'s binary links: normal and build dependencies, transitively, with the
/// features a build of `name` alone selects (`cargo tree -p`; `cargo metadata` would unify them
/// with every other member's). Dev-dependencies build only tests, never the image's program.
/// Returns the folders of the path crates and the registry crates as `name version [source]`.
fn linked(dir: &Path, name: &str) -> Result<(Vec<PathBuf>, Vec<String>), PkgError> {
    let out = cargo(
        dir,
        name,
        &[
            "tree",
            "--offline",
            "--locked",
            "-p",
            name,
            "-e",
            "normal,build",
            "--target",
            TARGET,
            "--prefix",
            "none",
            "--format",
            "{p}",
        ],
    )?;
    let mut dirs = BTreeSet::new();
    let mut locked = BTreeSet::new();
    for line in String::from_utf8_lossy(&out).lines() {
        // `NAME vVERSION[ (SOURCE)][ (proc-macro)][ (*)]`: the package id, then markers.
        let id = line
            .trim()
            .trim_end_matches(" (*)")
            .trim_end_matches(" (proc-macro)");
        if id.is_empty() {
            continue;
        }
        match id.split_once(" (") {
            Some((_, source)) if source.starts_with('/') => {
                dirs.insert(PathBuf::from(source.trim_end_matches(')')));
            }
            _ => {
                locked.insert(id.to_string());
            }
        }
    }
    if dirs.is_empty() {
        return Err(cargo_err(name, "cargo tree listed no crate folder".into()));
    }
    Ok((dirs.into_iter().collect(), locked.into_iter().collect()))
}

/// The root Cargo.toml as a build of another member sees it: the root package's own sections
/// (its dependencies, targets, features) and the member list are dropped, so that changing the
/// builder's dependencies does not rename the packages of the programs inside images.
fn workspace_settings(krate: &str, manifest: &Path) -> Result<String, PkgError> {
    let text = std::fs::read_to_string(manifest).map_err(|source| PkgError::Io {
        path: manifest.to_path_buf(),
        source,
    })?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| cargo_err(krate, format!("{}: {e}", manifest.display())))?;
    for key in [
        "package",
        "lib",
        "bin",
        "test",
        "bench",
        "example",
        "features",
        "dependencies",
        "dev-dependencies",
        "build-dependencies",
        "target",
        "badges",
        "lints",
    ] {
        doc.remove(key);
    }
    if let Some(workspace) = doc.get_mut("workspace").and_then(|w| w.as_table_like_mut()) {
        for key in ["members", "exclude", "default-members"] {
            workspace.remove(key);
        }
    }
    Ok(doc.to_string())
}

/// Builds the crate static and returns the binary's bytes, after checking it has no interpreter
/// and no shared-library dependencies.
pub fn build(inputs: &CrateInputs, env: &BTreeMap<String, String>) -> Result<Vec<u8>, PkgError> {
    let name = &inputs.name;
    // Remap the checkout and cargo's home (crate sources are compiled from there): panic
    // locations would otherwise make the binary depend on where things sit on this machine.
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let rustflags = format!(
        "{} --remap-path-prefix={}=/slipway --remap-path-prefix={}=/cargo",
        image_rustflags()?,
        inputs.workspace_root.display(),
        cargo_home.display()
    );
    let out = Command::new("cargo")
        .args([
            "build",
            "--locked",
            "--profile",
            "image",
            "-p",
            name,
            "--bin",
            &inputs.bin,
            "--target",
            TARGET,
        ])
        .args(["--message-format", "json-render-diagnostics"])
        .env("RUSTFLAGS", rustflags)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .envs(env)
        .current_dir(&inputs.workspace_root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| cargo_err(name, format!("running cargo build: {e}")))?;
    if !out.status.success() {
        return Err(cargo_err(
            name,
            "cargo build failed (its output is above)".into(),
        ));
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["reason"] == "compiler-artifact" && v["target"]["name"] == inputs.bin.as_str()
        })
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| cargo_err(name, "cargo build reported no executable".into()))?;
    let data = std::fs::read(&exe).map_err(|source| PkgError::Io {
        path: exe.clone(),
        source,
    })?;
    check_static(&data).map_err(|message| PkgError::NotStatic {
        krate: name.clone(),
        binary: exe,
        message,
    })?;
    Ok(data)
}

/// A static executable has no `PT_INTERP` (no dynamic loader) and no `DT_NEEDED` libraries.
pub fn check_static(data: &[u8]) -> Result<(), String> {
    use object::read::elf::{Dyn, FileHeader, ProgramHeader};
    let elf = object::read::elf::ElfFile64::<object::Endianness>::parse(data)
        .map_err(|e| format!("not a 64-bit ELF file: {e}"))?;
    let endian = elf.endian();
    for ph in elf.elf_program_headers() {
        if ph.p_type(endian) == object::elf::PT_INTERP {
            let interp = ph.data(endian, data).unwrap_or(&[]);
            return Err(format!(
                "it asks for the dynamic loader {}",
                String::from_utf8_lossy(interp).trim_end_matches('\0')
            ));
        }
    }
    let sections = elf
        .elf_header()
        .sections(endian, data)
        .map_err(|e| format!("reading sections: {e}"))?;
    let dynamic = sections
        .dynamic(endian, data)
        .map_err(|e| format!("reading .dynamic: {e}"))?;
    if let Some((entries, _)) = dynamic
        && entries
            .iter()
            .any(|d| d.tag(endian) == object::elf::DT_NEEDED)
    {
        return Err("it needs shared libraries (DT_NEEDED)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_not_static() {
        // Any dynamically linked program of the host will do; /bin/sh always exists on Debian.
        let sh = std::fs::read(std::fs::canonicalize("/bin/sh").unwrap()).unwrap();
        let err = check_static(&sh).unwrap_err();
        assert!(err.contains("dynamic loader"), "{err}");
    }

    #[test]
    fn busybox_static_is_static() {
        let Ok(bb) = std::fs::read("/bin/busybox") else {
            panic!("busybox-static is in scripts/debian-packages.txt; /bin/busybox must exist")
        };
        check_static(&bb).unwrap();
    }

    #[test]
    fn workspace_crate_inputs_include_the_crate_folder() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let i = inputs(here, "slipway").unwrap();
        assert!(i.dirs.contains(&here.to_path_buf()));
        assert!(i.dirs.contains(&here.join("crates/oci")));
        assert_eq!(i.bin, "slipway");
        assert!(i.rustc.contains("rustc"));
        assert!(i.locked.iter().any(|l| l.starts_with("miette ")));
        assert!(
            inputs(here, "no-such-crate")
                .unwrap_err()
                .to_string()
                .contains("no-such-crate")
        );
    }

    #[test]
    fn an_in_image_crate_links_only_its_own_dependencies() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let engine = inputs(here, "slipway-engine").unwrap();
        // The builder, the init and the engine's test-only dependencies are not inputs.
        assert!(
            !engine.dirs.contains(&here.to_path_buf()),
            "{:?}",
            engine.dirs
        );
        assert!(!engine.dirs.contains(&here.join("pkg/init")));
        assert!(engine.dirs.contains(&here.join("pkg/engine")));
        assert!(engine.dirs.contains(&here.join("crates/runtime")));
        for builder_only in [
            "miette ",
            "indicatif ",
            "serde-saphyr ",
            "cpio ",
            "liblzma ",
        ] {
            assert!(
                !engine.locked.iter().any(|l| l.starts_with(builder_only)),
                "{builder_only}"
            );
        }
        assert!(engine.locked.iter().any(|l| l.starts_with("libcontainer ")));
        // The image profile is an input; the builder's own dependencies are not.
        assert!(engine.workspace_settings.contains("[profile.image]"));
        assert!(!engine.workspace_settings.contains("miette"));
        assert!(!engine.workspace_settings.contains("members"));
    }
}
