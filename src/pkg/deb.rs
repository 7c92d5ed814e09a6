//! Debian packages as a source of image files: resolving a package to an exact version and
//! `.deb` checksum from the local apt lists, downloading it with `apt-get download`, and unpacking
//! its `data.tar.*` into a [`Tree`] ourselves (the `ar` crate plus gzip/xz/zstd), so no dpkg,
//! no maintainer scripts and no root filesystem of the host is involved.
//!
//! Resolution reads only apt's local lists (`apt-cache show`), so a package's tag is computed
//! without network; only a build downloads.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::PkgError;
use crate::assemble::tree::{Entry, Kind, Tree, normalise};

/// A package pinned to what apt knows about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DebSpec {
    pub package: String,
    pub version: String,
    /// Hex SHA256 of the `.deb`, as the archive's Packages index states it.
    pub sha256: String,
    /// `Depends:` as written (used to resolve metapackages).
    pub depends: String,
}

/// Asks apt's local lists about `package` (`=version` when pinned), or the memo of its answers
/// while they are unchanged ([`super::memo`]).
pub fn resolve(package: &str, version: Option<&str>) -> Result<DebSpec, PkgError> {
    let arg = match version {
        Some(v) => format!("{package}={v}"),
        None => package.to_string(),
    };
    super::memo::apt(&arg, || ask_apt(package, &arg))
}

fn ask_apt(package: &str, arg: &str) -> Result<DebSpec, PkgError> {
    let apt = |message: String| PkgError::Apt {
        package: package.to_string(),
        message,
    };
    let out = Command::new("apt-cache")
        .args(apt_cache_options())
        .args(["show", "--no-all-versions", arg])
        .output()
        .map_err(|e| apt(format!("running apt-cache: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(apt(format!("apt-cache show {arg} failed: {}", err.trim())));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let stanza = text.split("\n\n").next().unwrap_or("");
    let field = |name: &str| {
        stanza
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(|v| v.trim().to_string())
    };
    let version = field("Version").ok_or_else(|| {
        apt(format!(
            "apt-cache show {arg}: no Version (is `apt-get update` needed?)"
        ))
    })?;
    let sha256 =
        field("SHA256").ok_or_else(|| apt(format!("apt-cache show {arg}: no SHA256 field")))?;
    Ok(DebSpec {
        package: package.to_string(),
        version,
        sha256,
        depends: field("Depends").unwrap_or_default(),
    })
}

/// apt-cache's options: its binary cache kept in `~/.cache/slipway/apt`. Where apt is set up not
/// to keep one (Debian's container images say `Dir::Cache::pkgcache ""`), every `apt-cache show`
/// parses all the lists again, 0.6 s each, and a build asks several; with the cache it takes a
/// tenth of that. apt checks the cache against the lists and rebuilds it when they change, and
/// writes it atomically, so builds running side by side share it safely. The folder is private
/// to the user: a cache planted by someone else would pin other checksums (which the download's
/// check would then refuse).
fn apt_cache_options() -> Vec<String> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        let dir = base.join("slipway/apt");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .ok()?;
        Some(dir)
    });
    match dir {
        Some(dir) => vec![
            "-o".into(),
            format!(
                "Dir::Cache::pkgcache={}",
                dir.join("pkgcache.bin").display()
            ),
            "-o".into(),
            format!(
                "Dir::Cache::srcpkgcache={}",
                dir.join("srcpkgcache.bin").display()
            ),
        ],
        None => Vec::new(),
    }
}

/// Resolves a kernel (meta)package: `linux-image-cloud-amd64` depends on exactly one
/// `linux-image-<abi>-cloud-amd64`, which holds the files.
pub fn resolve_kernel(package: &str, version: Option<&str>) -> Result<DebSpec, PkgError> {
    let spec = resolve(package, version)?;
    let real = spec
        .depends
        .split(',')
        .map(|alternatives| alternatives.split('|').next().unwrap_or("").trim())
        .map(|dep| dep.split_whitespace().next().unwrap_or(""))
        .find(|name| name.starts_with("linux-image-") && *name != package);
    match real {
        // Pin the real package to the version the metapackage asks for, when it says `(= V)`.
        Some(name) => {
            let pinned = spec
                .depends
                .split(',')
                .find(|d| d.trim().starts_with(name))
                .and_then(|d| d.split_once("(="))
                .map(|(_, v)| v.trim_end_matches([')', ' ']).trim().to_string());
            resolve(name, pinned.as_deref())
        }
        None => Ok(spec),
    }
}

/// Returns the path of the verified `.deb` for `spec` in `cache`, downloading it first if needed.
pub fn fetch(spec: &DebSpec, cache: &Path) -> Result<PathBuf, PkgError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PkgError::Io { path, source }
    };
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    // Named by checksum: a cached file is the right one exactly when its content hashes to it.
    let dest = cache.join(format!("{}_{}.deb", spec.package, spec.sha256));
    if dest.exists() && sha256_file(&dest)? == spec.sha256 {
        return Ok(dest);
    }
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache)
        .map_err(io(cache))?;
    let out = Command::new("apt-get")
        .args([
            "download",
            "-q",
            &format!("{}={}", spec.package, spec.version),
        ])
        .current_dir(tmp.path())
        .output()
        .map_err(|e| PkgError::Apt {
            package: spec.package.clone(),
            message: format!("running apt-get: {e}"),
        })?;
    if !out.status.success() {
        return Err(PkgError::Apt {
            package: spec.package.clone(),
            message: format!(
                "apt-get download {}={} failed: {}",
                spec.package,
                spec.version,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let downloaded = std::fs::read_dir(tmp.path())
        .map_err(io(tmp.path()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| PkgError::Apt {
            package: spec.package.clone(),
            message: "apt-get download produced no .deb file".into(),
        })?;
    let got = sha256_file(&downloaded)?;
    if got != spec.sha256 {
        return Err(PkgError::DebChecksum {
            deb: downloaded,
            package: spec.package.clone(),
            expected: spec.sha256.clone(),
            actual: got,
        });
    }
    std::fs::rename(&downloaded, &dest).map_err(io(&dest))?;
    Ok(dest)
}

fn sha256_file(path: &Path) -> Result<String, PkgError> {
    let io = |source| PkgError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    Ok(crate::oci::Digest::of_reader(std::io::BufReader::new(file))
        .map_err(io)?
        .hex()
        .to_string())
}

/// Unpacks the data archive of the `.deb` at `deb` into a tree (paths relative to `/`).
/// Entries keep the package's modes and numeric owners; mtimes are left to the layer writer.
pub fn unpack(deb: &Path) -> Result<Tree, PkgError> {
    let bad = |message: String| PkgError::Deb {
        deb: deb.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(deb).map_err(|source| PkgError::Io {
        path: deb.to_path_buf(),
        source,
    })?;
    let mut ar = ar::Archive::new(std::io::BufReader::new(file));
    while let Some(member) = ar.next_entry() {
        let member = member.map_err(|e| bad(format!("reading the ar archive: {e}")))?;
        let name = String::from_utf8_lossy(member.header().identifier())
            .trim_end_matches('/')
            .to_string();
        let reader: Box<dyn Read + '_> = match name.as_str() {
            "data.tar" => Box::new(member),
            "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(member)),
            "data.tar.xz" => Box::new(liblzma::read::XzDecoder::new(member)),
            "data.tar.zst" => Box::new(
                zstd::stream::read::Decoder::new(member)
                    .map_err(|e| bad(format!("{name}: {e}")))?,
            ),
            n if n.starts_with("data.tar") => {
                return Err(bad(format!("unsupported data archive `{n}`")));
            }
            _ => continue,
        };
        return tar_to_tree(reader).map_err(|m| bad(format!("{name}: {m}")));
    }
    Err(bad("no data.tar member".into()))
}

fn tar_to_tree(reader: impl Read) -> Result<Tree, String> {
    let mut tree = Tree::new();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let raw_path = entry
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        let path = checked(&raw_path)?;
        let header = entry.header();
        let mode = header.mode().map_err(|e| format!("{raw_path}: {e}"))? & 0o7777;
        let uid = header.uid().map_err(|e| format!("{raw_path}: {e}"))? as u32;
        let gid = header.gid().map_err(|e| format!("{raw_path}: {e}"))? as u32;
        let link = || -> Result<String, String> {
            let target = entry.link_name().map_err(|e| format!("{raw_path}: {e}"))?;
            Ok(target
                .ok_or_else(|| format!("{raw_path}: link without a target"))?
                .to_string_lossy()
                .into_owned())
        };
        let kind = match header.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(link()?),
            tar::EntryType::Link => Kind::Hardlink(checked(&link()?)?),
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                if header.entry_type() == tar::EntryType::Char {
                    Kind::CharDevice { major, minor }
                } else {
                    Kind::BlockDevice { major, minor }
                }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| format!("{raw_path}: {e}"))?;
                Kind::File(data.into())
            }
            other => return Err(format!("{raw_path}: unsupported tar entry type {other:?}")),
        };
        if path.is_empty() {
            continue;
        }
        tree.insert(
            &path,
            Entry {
                kind,
                mode,
                uid,
                gid,
                mtime: crate::assemble::tree::DEFAULT_MTIME,
            },
        );
    }
    Ok(tree)
}

/// Normalises a path from the archive, refusing any that climbs out of the root.
fn checked(raw: &str) -> Result<String, String> {
    if raw.split('/').any(|c| c == "..") {
        return Err(format!("entry `{raw}` escapes the root"));
    }
    Ok(normalise(raw))
}

/// Keeps only the entries at or below one of `paths` (and the directories leading to them).
pub fn select(tree: &Tree, paths: &[String], deb: &Path) -> Result<Tree, PkgError> {
    let mut out = Tree::new();
    for want in paths {
        let want = normalise(want);
        let mut found = false;
        if let Some(e) = tree.get(&want) {
            out.insert(&want, e.clone());
            found = true;
        }
        for (p, e) in tree.children(&want) {
            out.insert(p, e.clone());
            found = true;
        }
        if !found {
            return Err(PkgError::Deb {
                deb: deb.to_path_buf(),
                message: format!("the package has no `/{want}`"),
            });
        }
    }
    // A hard link whose target was left out becomes a copy of the target, never a dangling link.
    let links: Vec<(String, String)> = out
        .iter()
        .filter_map(|(p, e)| match &e.kind {
            Kind::Hardlink(t) if out.get(t).is_none() => Some((p.to_string(), t.clone())),
            _ => None,
        })
        .collect();
    for (path, target) in links {
        match tree.get(&target) {
            Some(e) => out.insert(&path, e.clone()),
            None => {
                return Err(PkgError::Deb {
                    deb: deb.to_path_buf(),
                    message: format!(
                        "/{path} is a hard link to /{target}, which the package does not have"
                    ),
                });
            }
        }
    }
    // Directories created on the way keep the package's modes where the package has them.
    let dirs: Vec<String> = out
        .iter()
        .filter(|(_, e)| e.kind == Kind::Dir)
        .map(|(p, _)| p.to_string())
        .collect();
    for d in dirs {
        if let (Some(orig), Some(e)) = (tree.get(&d), out.get_mut(&d)) {
            *e = orig.clone();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_escaping_the_root_are_refused() {
        assert!(checked("./usr/../../etc/passwd").is_err());
        assert_eq!(checked("./usr/bin/x").unwrap(), "usr/bin/x");
    }

    #[test]
    fn select_keeps_subtrees_and_reports_missing_paths() {
        let mut t = Tree::new();
        t.insert("bin/busybox", Entry::file(b"x".to_vec(), 0o755));
        t.insert(
            "usr/share/doc/busybox/copyright",
            Entry::file(b"c".to_vec(), 0o644),
        );
        let s = select(&t, &["/bin/busybox".into()], Path::new("x.deb")).unwrap();
        let paths: Vec<_> = s.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(paths, ["bin", "bin/busybox"]);
        t.insert(
            "bin/sh",
            Entry {
                kind: Kind::Hardlink("bin/busybox".into()),
                ..Entry::file(Vec::new(), 0o755)
            },
        );
        let s = select(&t, &["/bin/sh".into()], Path::new("x.deb")).unwrap();
        assert_eq!(
            s.get("bin/sh").unwrap().kind,
            Kind::File(b"x".to_vec().into()),
            "a link to a left-out file is a copy"
        );
        let err = select(&t, &["/sbin/nope".into()], Path::new("x.deb"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.deb") && err.contains("/sbin/nope"), "{err}");
    }
}
