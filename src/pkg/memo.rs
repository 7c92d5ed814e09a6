//! A memo of what package tags ask other programs, so that a warm build runs none of them.
//!
//! A tag needs `apt-cache show` per Debian package (0.2 s of CPU each: apt rebuilds its policy
//! for every call) and `cargo metadata` + `cargo tree` per workspace crate. Together they cost a
//! warm `slipway build` of examples/minimal.yml three times the CPU of the rest of the build. Their
//! answers change only when the files they read change, so each answer is kept with a fingerprint
//! of those files and reused while the fingerprint holds:
//! - apt: inode, size, mtime and ctime of every file in apt's lists folder, of dpkg's status file
//!   and of every file under /etc/apt (apt checks its own binary cache the same way), with
//!   `APT_CONFIG`. apt's default folders are assumed: a configuration that moves them is itself a
//!   file under /etc/apt, so changing it is seen, but not changes in the moved folders.
//! - cargo: the contents of the Cargo.toml of the crate and of every path crate its binary links,
//!   the workspace's Cargo.toml and Cargo.lock, cargo's config files and rust-toolchain files in
//!   the package folder's ancestors and in `CARGO_HOME`, the `rustc -vV` output and the `CARGO*`
//!   and `RUST*` environment (apart from what cargo sets for a build script or test).
//!
//! The memo is one JSON file, `memo.json` in `~/.cache/slipway/` (private to the user, as apt's
//! binary cache beside it), replaced atomically; one that does not parse is ignored. Builds side by
//! side may each write theirs: the last one wins and the other's answers are asked again next time.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::PkgError;
use super::cargo::CrateInputs;
use super::deb::DebSpec;

/// Bumped when the memo's meaning changes, so an older file is ignored.
const VERSION: u32 = 1;

/// Answers kept for crates: enough for every package of a few checkouts.
const MAX_CRATES: usize = 64;

#[derive(Default, Serialize, Deserialize)]
struct Memo {
    version: u32,
    /// apt's answers, valid while `apt_fingerprint` is apt's state.
    apt_fingerprint: String,
    apt: BTreeMap<String, DebSpec>,
    /// Crate answers, oldest first.
    crates: Vec<CrateAnswer>,
}

#[derive(Serialize, Deserialize)]
struct CrateAnswer {
    /// Folder, crate name, toolchain and environment.
    key: String,
    /// The files the answer was read from, with the SHA256 of their content (`None`: absent).
    files: Vec<(PathBuf, Option<String>)>,
    inputs: CrateInputs,
}

/// The memo file, or `None` when there is no home folder to keep it in.
fn path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("slipway/memo.json"))
}

/// One process reads the file once and writes it after each new answer.
static MEMO: Mutex<Option<Memo>> = Mutex::new(None);

fn with_memo<T>(f: impl FnOnce(&mut Memo) -> T) -> T {
    let mut guard = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    let memo = guard.get_or_insert_with(|| {
        path()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Memo>(&b).ok())
            .filter(|m| m.version == VERSION)
            .unwrap_or(Memo {
                version: VERSION,
                ..Memo::default()
            })
    });
    f(memo)
}

/// Writes the memo (best effort: a memo that cannot be written only costs time).
fn save(memo: &Memo) {
    use std::os::unix::fs::DirBuilderExt;
    let Some(path) = path() else { return };
    let Some(dir) = path.parent() else { return };
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .is_err()
    {
        return;
    }
    let Ok(json) = serde_json::to_vec(memo) else {
        return;
    };
    let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) else {
        return;
    };
    if std::io::Write::write_all(&mut tmp, &json).is_ok() {
        let _ = tmp.persist(&path);
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// apt's state as its file metadata: see the module comment.
fn apt_fingerprint() -> String {
    let mut lines = Vec::new();
    let mut stat = |p: &Path| {
        if let Ok(m) = std::fs::metadata(p)
            && m.is_file()
        {
            lines.push(format!(
                "{} {} {} {}.{} {}.{}",
                p.display(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ));
        }
    };
    let mut stack = vec![
        PathBuf::from("/etc/apt"),
        PathBuf::from("/var/lib/apt/lists"),
    ];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            // apt's download area and lock, not its lists.
            if p.ends_with("partial") || p.ends_with("lock") {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else {
                stat(&p);
            }
        }
    }
    stat(Path::new("/var/lib/dpkg/status"));
    if let Some(conf) = std::env::var_os("APT_CONFIG") {
        stat(Path::new(&conf));
        lines.push(format!("APT_CONFIG={}", conf.to_string_lossy()));
    }
    lines.sort();
    sha256_hex(lines.join("\n").as_bytes())
}

/// apt's answer for `arg` (`package` or `package=version`): the memo's, or `ask`'s (then kept).
pub fn apt(
    arg: &str,
    ask: impl FnOnce() -> Result<DebSpec, PkgError>,
) -> Result<DebSpec, PkgError> {
    static FINGERPRINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let fingerprint = FINGERPRINT.get_or_init(apt_fingerprint);
    let known = with_memo(|m| {
        if m.apt_fingerprint != *fingerprint {
            m.apt_fingerprint = fingerprint.clone();
            m.apt.clear();
        }
        m.apt.get(arg).cloned()
    });
    if let Some(spec) = known {
        return Ok(spec);
    }
    let spec = ask()?;
    with_memo(|m| {
        m.apt.insert(arg.to_string(), spec.clone());
        save(m);
    });
    Ok(spec)
}

/// `rustc -vV`, asked once per process.
pub fn rustc_version() -> Result<String, PkgError> {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(v) = VERSION.get() {
        return Ok(v.clone());
    }
    let out = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|e| PkgError::Cargo {
            krate: "rustc".into(),
            message: format!("running rustc -vV: {e}"),
        })?;
    let v = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(VERSION.get_or_init(|| v).clone())
}

/// The environment cargo and rustup read, without what cargo sets for the program it runs.
fn cargo_env() -> String {
    const SET_BY_CARGO: [&str; 7] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_TARGET_TMPDIR",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
    ];
    let mut vars: Vec<String> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            let ours = k.starts_with("CARGO") || k.starts_with("RUST");
            (ours && !SET_BY_CARGO.iter().any(|p| k.starts_with(p)))
                .then(|| format!("{k}={}", v.to_string_lossy()))
        })
        .collect();
    vars.sort();
    vars.join("\n")
}

fn file_hash(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| sha256_hex(&b))
}

/// The files besides the crates' manifests that shape cargo's answer for a package in `dir`.
fn cargo_settings_files(dir: &Path, workspace_root: &Path) -> Vec<PathBuf> {
    let mut files = vec![
        workspace_root.join("Cargo.toml"),
        workspace_root.join("Cargo.lock"),
    ];
    for a in dir.ancestors() {
        for name in [
            ".cargo/config",
            ".cargo/config.toml",
            "rust-toolchain",
            "rust-toolchain.toml",
        ] {
            files.push(a.join(name));
        }
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = home {
        files.push(home.join("config"));
        files.push(home.join("config.toml"));
    }
    files
}

/// cargo's answer for crate `name` of the package in `dir` (its `rustc` field is `rustc`): the
/// memo's, or `ask`'s (then kept).
pub fn crate_inputs(
    dir: &Path,
    name: &str,
    rustc: &str,
    ask: impl FnOnce() -> Result<CrateInputs, PkgError>,
) -> Result<CrateInputs, PkgError> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let key = sha256_hex(format!("{}\n{name}\n{rustc}\n{}", dir.display(), cargo_env()).as_bytes());
    let known = with_memo(|m| {
        m.crates
            .iter()
            .find(|a| a.key == key)
            .filter(|a| a.files.iter().all(|(p, h)| file_hash(p) == *h))
            .map(|a| a.inputs.clone())
    });
    if let Some(mut inputs) = known {
        inputs.rustc = rustc.to_string();
        return Ok(inputs);
    }
    let inputs = ask()?;
    let mut paths = cargo_settings_files(&dir, &inputs.workspace_root);
    paths.extend(inputs.dirs.iter().map(|d| d.join("Cargo.toml")));
    paths.sort();
    paths.dedup();
    let files = paths
        .into_iter()
        .map(|p| {
            let h = file_hash(&p);
            (p, h)
        })
        .collect();
    with_memo(|m| {
        m.crates.retain(|a| a.key != key);
        m.crates.push(CrateAnswer {
            key,
            files,
            inputs: inputs.clone(),
        });
        let excess = m.crates.len().saturating_sub(MAX_CRATES);
        m.crates.drain(..excess);
        save(m);
    });
    Ok(inputs)
}
