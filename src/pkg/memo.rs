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
    let conf = std::env::var_os("APT_CONFIG").map(PathBuf::from);
    let mut files = vec![PathBuf::from("/var/lib/dpkg/status")];
    files.extend(conf.clone());
    let mut fingerprint = files_fingerprint(
        &[Path::new("/etc/apt"), Path::new("/var/lib/apt/lists")],
        &files,
    );
    if let Some(conf) = conf {
        fingerprint.push_str(&format!(" APT_CONFIG={}", conf.display()));
    }
    fingerprint
}

/// A hash of the inode, size, mtime and ctime of every file below `dirs` (apt's `partial` folder
/// and lock files aside) and of `files`.
fn files_fingerprint(dirs: &[&Path], files: &[PathBuf]) -> String {
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
    let mut stack: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
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
    for f in files {
        stat(f);
    }
    lines.sort();
    sha256_hex(lines.join("\n").as_bytes())
}

impl Memo {
    /// The answer for `arg` while apt's state is `fingerprint` (answers for another state are
    /// dropped).
    fn apt_answer(&mut self, fingerprint: &str, arg: &str) -> Option<DebSpec> {
        if self.apt_fingerprint != fingerprint {
            self.apt_fingerprint = fingerprint.to_string();
            self.apt.clear();
        }
        self.apt.get(arg).cloned()
    }

    /// The answer kept under `key`, when every file it was read from is as it was.
    fn crate_answer(&self, key: &str) -> Option<CrateInputs> {
        self.crates
            .iter()
            .find(|a| a.key == key)
            .filter(|a| a.files.iter().all(|(p, h)| file_hash(p) == *h))
            .map(|a| a.inputs.clone())
    }

    /// Keeps `inputs`, cargo's answer for the package in `dir`, under `key`, with the hashes of
    /// the files it comes from.
    fn keep_crate(&mut self, key: String, dir: &Path, inputs: &CrateInputs) {
        let mut paths = cargo_settings_files(dir, &inputs.workspace_root);
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
        self.crates.retain(|a| a.key != key);
        self.crates.push(CrateAnswer {
            key,
            files,
            inputs: inputs.clone(),
        });
        let excess = self.crates.len().saturating_sub(MAX_CRATES);
        self.crates.drain(..excess);
    }
}

/// apt's answer for `arg` (`package` or `package=version`): the memo's, or `ask`'s (then kept).
pub fn apt(
    arg: &str,
    ask: impl FnOnce() -> Result<DebSpec, PkgError>,
) -> Result<DebSpec, PkgError> {
    static FINGERPRINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let fingerprint = FINGERPRINT.get_or_init(apt_fingerprint);
    if let Some(spec) = with_memo(|m| m.apt_answer(fingerprint, arg)) {
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
    if let Some(mut inputs) = with_memo(|m| m.crate_answer(&key)) {
        inputs.rustc = rustc.to_string();
        return Ok(inputs);
    }
    let inputs = ask()?;
    with_memo(|m| {
        m.keep_crate(key, &dir, &inputs);
        save(m);
    });
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(version: &str) -> DebSpec {
        DebSpec {
            package: "busybox-static".into(),
            version: version.into(),
            sha256: "00".repeat(32),
            depends: String::new(),
        }
    }

    #[test]
    fn apt_answers_hold_only_for_the_state_they_were_read_in() {
        let lists = tempfile::tempdir().unwrap();
        let list = lists.path().join("deb.debian.org_Packages");
        std::fs::write(&list, "Package: busybox-static\n").unwrap();
        let before = files_fingerprint(&[lists.path()], &[]);
        let mut memo = Memo::default();
        assert_eq!(memo.apt_answer(&before, "busybox-static"), None);
        memo.apt.insert("busybox-static".into(), spec("1"));
        assert_eq!(memo.apt_answer(&before, "busybox-static"), Some(spec("1")));
        // `apt-get update` replaces a list: another state, and the answers of the old one go.
        std::fs::write(
            lists.path().join("new"),
            "Package: busybox-static\nVersion: 2\n",
        )
        .unwrap();
        std::fs::rename(lists.path().join("new"), &list).unwrap();
        let after = files_fingerprint(&[lists.path()], &[]);
        assert_ne!(before, after);
        assert_eq!(memo.apt_answer(&after, "busybox-static"), None);
        assert_eq!(memo.apt_answer(&before, "busybox-static"), None);
        // apt's download area is not its state.
        std::fs::create_dir(lists.path().join("partial")).unwrap();
        std::fs::write(lists.path().join("partial/x"), "x").unwrap();
        assert_eq!(files_fingerprint(&[lists.path()], &[]), after);
    }

    #[test]
    fn crate_answers_hold_while_the_manifests_are_unchanged() {
        let ws = tempfile::tempdir().unwrap();
        let root = ws.path().canonicalize().unwrap();
        let krate = root.join("crates/a");
        let pkg = root.join("pkg/a");
        std::fs::create_dir_all(&krate).unwrap();
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(root.join("Cargo.toml"), "[workspace]\n").unwrap();
        std::fs::write(root.join("Cargo.lock"), "version = 4\n").unwrap();
        std::fs::write(krate.join("Cargo.toml"), "[package]\nname = \"a\"\n").unwrap();
        let inputs = CrateInputs {
            name: "a".into(),
            workspace_root: root.clone(),
            dirs: vec![krate.clone()],
            locked: vec![],
            workspace_settings: String::new(),
            bin: "a".into(),
            rustc: String::new(),
        };
        let mut memo = Memo::default();
        assert!(memo.crate_answer("k").is_none());
        memo.keep_crate("k".into(), &pkg, &inputs);
        assert_eq!(memo.crate_answer("k").unwrap().dirs, vec![krate.clone()]);
        assert!(memo.crate_answer("other").is_none());
        // A crate's manifest, the lock file, or a cargo config that appears: asked again.
        for (file, text) in [
            (
                krate.join("Cargo.toml"),
                "[package]\nname = \"a\"\n[dependencies]\nb = { path = \"../b\" }\n",
            ),
            (root.join("Cargo.lock"), "version = 4\n[[package]]\n"),
            (root.join(".cargo/config.toml"), "[patch.crates-io]\n"),
        ] {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, text).unwrap();
            assert!(
                memo.crate_answer("k").is_none(),
                "{} changed",
                file.display()
            );
            memo.keep_crate("k".into(), &pkg, &inputs);
            assert!(memo.crate_answer("k").is_some());
        }
        assert_eq!(memo.crates.len(), 1);
    }
}
