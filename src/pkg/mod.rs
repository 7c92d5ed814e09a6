//! Package builds: a folder with a `build.yml` becomes an OCI image in the store.
//!
//! [`show_tag`] computes the image name from the package's inputs without building (and without
//! network); [`build`] assembles the files ([`buildfile::Source`]: static workspace crates, files of
//! the folder, Debian packages, kernels), writes one reproducible layer and names the image
//! `docker.io/ORG/IMAGE:TAG` in the store, unless that name is already there; [`push`] publishes it.
//! Same inputs, same tag, same image digest, on any machine.

pub mod buildfile;
pub mod cargo;
pub mod deb;
pub mod image;
pub mod kernel;
pub mod layer;
pub mod memo;
pub mod modules;
pub mod tag;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::assemble::tree::{Entry, Kind, Tree, normalise};
use crate::oci::{Digest, OciError, PullOptions, Store, StoreError};
use buildfile::{BuildFile, Source};

/// The label that carries a package's `config:` (container defaults), as LinuxKit names it.
pub const CONFIG_LABEL: &str = "org.mobyproject.config";

#[derive(Debug, thiserror::Error)]
pub enum PkgError {
    #[error("{}:{line}:{column}: {field}: {message}", file.display())]
    BuildFile {
        file: PathBuf,
        line: u64,
        column: u64,
        field: String,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Debian package {package}: {message}")]
    Apt { package: String, message: String },
    #[error("{}: SHA256 of Debian package {package} is {actual}, apt's lists say {expected}", deb.display())]
    DebChecksum {
        deb: PathBuf,
        package: String,
        expected: String,
        actual: String,
    },
    #[error("{}: {message}", deb.display())]
    Deb { deb: PathBuf, message: String },
    #[error("crate {krate}: {message}")]
    Cargo { krate: String, message: String },
    #[error("crate {krate}: {} is not statically linked: {message}", binary.display())]
    NotStatic {
        krate: String,
        binary: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Module(#[from] modules::ModuleError),
    #[error("{}: {message}", path.display())]
    Files { path: PathBuf, message: String },
    #[error("storing {reference}: {source}")]
    Store {
        reference: String,
        source: StoreError,
    },
    #[error(transparent)]
    Oci(#[from] OciError),
}

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Rebuild even when the image is already in the store.
    pub force: bool,
    /// Where downloaded `.deb` files are kept (named by checksum, so sharing it is safe).
    pub deb_cache: PathBuf,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            force: false,
            deb_cache: default_deb_cache(),
        }
    }
}

/// `$XDG_CACHE_HOME/slipway-debs`, else `~/.cache/slipway-debs`.
pub fn default_deb_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("slipway-debs")
}

/// The result of [`build`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Built {
    /// Full reference, as recorded in the store (`docker.io/slipway/busybox:<tag>`).
    pub reference: String,
    /// The image manifest's digest.
    pub digest: Digest,
    /// True when the image was already in the store and nothing was built.
    pub cached: bool,
}

/// A package with its inputs resolved: enough to name it, and to build it.
struct Plan {
    dir: PathBuf,
    file: BuildFile,
    /// `ORG/IMAGE:TAG`.
    name: String,
    /// Per `contents` item, what was resolved for it.
    inputs: Vec<Input>,
}

enum Input {
    None,
    Crate(cargo::CrateInputs),
    Deb(deb::DebSpec),
}

fn plan(dir: &Path) -> Result<Plan, PkgError> {
    let file = buildfile::load(&dir.join("build.yml"))?;
    let mut h = tag::TagHasher::default();
    h.field("mtime", layer::mtime().to_string().as_bytes());
    h.tree("pkg", dir)?;
    let mut inputs = Vec::new();
    for item in &file.contents {
        let input = match &item.source {
            Source::Crate { name, .. } => {
                let c = cargo::inputs(dir, name)?;
                for d in &c.dirs {
                    h.tree(
                        &format!(
                            "crate:{}",
                            d.strip_prefix(&c.workspace_root).unwrap_or(d).display()
                        ),
                        d,
                    )?;
                }
                h.field("workspace:Cargo.lock", c.locked.join("\n").as_bytes());
                h.field("workspace:Cargo.toml", c.workspace_settings.as_bytes());
                h.field("rustc", c.rustc.as_bytes());
                h.field("target", cargo::TARGET.as_bytes());
                h.field("link-script", cargo::LINK_SCRIPT.as_bytes());
                Input::Crate(c)
            }
            Source::Deb {
                package, version, ..
            } => Input::Deb(deb::resolve(package, version.as_deref())?),
            Source::Kernel { package, version } => {
                Input::Deb(deb::resolve_kernel(package, version.as_deref())?)
            }
            _ => Input::None,
        };
        if let Input::Deb(spec) = &input {
            h.field(
                "deb",
                format!("{} {} {}", spec.package, spec.version, spec.sha256).as_bytes(),
            );
        }
        inputs.push(input);
    }
    let name = format!("{}/{}:{}", file.org, file.image, h.finish());
    Ok(Plan {
        dir: dir.to_path_buf(),
        file,
        name,
        inputs,
    })
}

/// The package's image name, `ORG/IMAGE:TAG` (what `slipway pkg show-tag` prints and what
/// `@pkg:DIR` in a manifest expands to). Reads only local files and apt's local lists.
pub fn show_tag(dir: &Path) -> Result<String, PkgError> {
    Ok(plan(dir)?.name)
}

/// Builds the package in `dir` into `store`, unless an image of that name is there already.
pub fn build(store: &Store, dir: &Path, opts: &BuildOptions) -> Result<Built, PkgError> {
    let plan = plan(dir)?;
    let reference = crate::oci::resolve::full_reference(&plan.name)?;
    if !opts.force {
        let found = store.lookup(&reference).map_err(|source| PkgError::Store {
            reference: reference.clone(),
            source,
        })?;
        if let Some(desc) = found {
            let digest = Digest::try_from(desc.digest()).map_err(|e| PkgError::Store {
                reference: reference.clone(),
                source: StoreError::BadDigest(e),
            })?;
            if store.has_blob(&digest) {
                tracing::info!("{reference} is in the store already");
                return Ok(Built {
                    reference,
                    digest,
                    cached: true,
                });
            }
        }
    }
    tracing::info!("building {reference}");
    let mtime = layer::mtime();
    let (tree, extra_labels) = assemble(&plan, opts, mtime)?;
    let layer = layer::gzip_layer(&tree, mtime).map_err(|source| PkgError::Io {
        path: plan.dir.clone(),
        source,
    })?;
    let mut labels = plan.file.labels.clone();
    if let Some(config) = &plan.file.config {
        labels.insert(CONFIG_LABEL.to_string(), config.to_string());
    }
    labels.extend(extra_labels);
    let spec = image::ImageSpec {
        labels,
        env: plan.file.env.clone(),
        entrypoint: plan.file.entrypoint.clone(),
        cmd: plan.file.cmd.clone(),
        workdir: plan.file.workdir.clone(),
    };
    let digest = image::store_image(store, &reference, &spec, &layer)?;
    Ok(Built {
        reference,
        digest,
        cached: false,
    })
}

/// The image's files, item after item (later items overwrite earlier ones), and extra labels.
fn assemble(
    plan: &Plan,
    opts: &BuildOptions,
    mtime: u64,
) -> Result<(Tree, BTreeMap<String, String>), PkgError> {
    let mut tree = Tree::new();
    let mut labels = BTreeMap::new();
    for (item, input) in plan.file.contents.iter().zip(&plan.inputs) {
        if let Source::Remove(paths) = &item.source {
            for path in paths {
                if tree.get(path).is_none() {
                    return Err(PkgError::Files {
                        path: plan.file.path.clone(),
                        message: format!(
                            "remove: {path} is not in the image (items before it put no such path)"
                        ),
                    });
                }
                tree.remove(path);
            }
            continue;
        }
        let mut part = match (&item.source, input) {
            (Source::Crate { to, env, .. }, Input::Crate(c)) => {
                let mut t = Tree::new();
                t.insert(to, Entry::file(cargo::build(c, env)?, 0o755));
                t
            }
            (Source::Files { from, to }, _) => files_tree(&plan.dir.join(from), to)?,
            (Source::Deb { paths, .. }, Input::Deb(spec)) => {
                let path = deb::fetch(spec, &opts.deb_cache)?;
                let all = deb::unpack(&path)?;
                match paths {
                    Some(paths) => deb::select(&all, paths, &path)?,
                    None => all,
                }
            }
            (Source::Kernel { .. }, Input::Deb(spec)) => {
                let path = deb::fetch(spec, &opts.deb_cache)?;
                let (t, l) = kernel::kernel_files(&deb::unpack(&path)?, &path, mtime)?;
                labels.extend(l);
                t
            }
            (Source::Applets { binary }, _) => applets(&tree, binary, &plan.file.path)?,
            (Source::Concat { dir, to }, _) => {
                let mut t = Tree::new();
                t.insert(to, Entry::file(concat(&tree, dir, &plan.file.path)?, 0o644));
                t
            }
            (Source::Dirs(dirs), _) => {
                let mut t = Tree::new();
                for d in dirs {
                    t.insert(d, Entry::dir(0o755));
                }
                t
            }
            (Source::Symlinks(links), _) => {
                let mut t = Tree::new();
                for (path, target) in links {
                    t.insert(path, Entry::symlink(target.clone()));
                }
                t
            }
            _ => unreachable!("plan() resolves an input for every crate, deb and kernel item"),
        };
        if item.uid != 0 || item.gid != 0 {
            let paths: Vec<String> = part.iter().map(|(p, _)| p.to_string()).collect();
            for p in paths {
                if let Some(e) = part.get_mut(&p) {
                    e.uid = item.uid;
                    e.gid = item.gid;
                }
            }
        }
        tree.graft("", &part);
    }
    Ok((tree, labels))
}

/// A file or a folder of the package, placed at `to` (a folder's contents go below `to`).
/// Modes are normalised to 0755/0644 from the exec bit: checkouts differ in umask, and the tag
/// hashes only the exec bit.
fn files_tree(from: &Path, to: &str) -> Result<Tree, PkgError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PkgError::Io { path, source }
    };
    let mut tree = Tree::new();
    let meta = std::fs::symlink_metadata(from).map_err(io(from))?;
    let mut todo: Vec<(PathBuf, String)> = Vec::new();
    if meta.is_dir() {
        for e in std::fs::read_dir(from).map_err(io(from))? {
            let e = e.map_err(io(from))?;
            todo.push((
                e.path(),
                format!("{to}/{}", e.file_name().to_string_lossy()),
            ));
        }
    } else {
        let name = from
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest = if to.ends_with('/') {
            format!("{to}{name}")
        } else {
            to.to_string()
        };
        todo.push((from.to_path_buf(), dest));
    }
    while let Some((src, dest)) = todo.pop() {
        let meta = std::fs::symlink_metadata(&src).map_err(io(&src))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(io(&src))?;
            tree.insert(&dest, Entry::symlink(target.to_string_lossy().into_owned()));
        } else if ft.is_dir() {
            tree.insert(&dest, Entry::dir(0o755));
            for e in std::fs::read_dir(&src).map_err(io(&src))? {
                let e = e.map_err(io(&src))?;
                todo.push((
                    e.path(),
                    format!("{dest}/{}", e.file_name().to_string_lossy()),
                ));
            }
        } else if ft.is_file() {
            let data = std::fs::read(&src).map_err(io(&src))?;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            tree.insert(&dest, Entry::file(data, mode));
        } else {
            return Err(PkgError::Files {
                path: src,
                message: "only files, folders and symlinks can be packaged".into(),
            });
        }
    }
    Ok(tree)
}

/// The regular files directly in `dir` of `tree`, joined in byte order of their names (the tree's
/// order), each ending with a newline. Deterministic: names and bytes only.
fn concat(tree: &Tree, dir: &str, build_yml: &Path) -> Result<Vec<u8>, PkgError> {
    let err = |message: String| PkgError::Files {
        path: build_yml.to_path_buf(),
        message,
    };
    if !matches!(tree.get(dir).map(|e| &e.kind), Some(Kind::Dir)) {
        return Err(err(format!(
            "concat: {dir} is not a folder of the image (list the items that fill it before)"
        )));
    }
    let depth = normalise(dir).split('/').count() + 1;
    let mut out = Vec::new();
    let mut files = 0;
    for (path, entry) in tree.children(dir) {
        if path.split('/').count() != depth {
            continue;
        }
        if let Kind::File(data) = &entry.kind {
            out.extend_from_slice(data);
            if !data.is_empty() && !data.ends_with(b"\n") {
                out.push(b'\n');
            }
            files += 1;
        }
    }
    if files == 0 {
        return Err(err(format!("concat: {dir} has no files to join")));
    }
    Ok(out)
}

/// One symlink per applet of the multi-call binary at `binary` in `tree`, from the binary's own
/// `--list-full` (busybox). Existing paths are left alone. The binary is run on the build host:
/// it is a static x86_64 program, and its applet list is fixed by its bytes (which the tag hashes).
fn applets(tree: &Tree, binary: &str, build_yml: &Path) -> Result<Tree, PkgError> {
    let err = |message: String| PkgError::Files {
        path: build_yml.to_path_buf(),
        message,
    };
    let Some(Kind::File(data)) = tree.get(binary).map(|e| &e.kind) else {
        return Err(err(format!(
            "applets: {binary} is not a file of the image (list its package before it)"
        )));
    };
    let tmp = tempfile::tempdir().map_err(|source| PkgError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    // Multi-call binaries pick the applet from argv[0]: keep the binary's own name.
    let exe = tmp.path().join(
        Path::new(binary)
            .file_name()
            .unwrap_or("multicall".as_ref()),
    );
    std::fs::write(&exe, data.as_slice())
        .and_then(|_| std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)))
        .map_err(|source| PkgError::Io {
            path: exe.clone(),
            source,
        })?;
    let out = std::process::Command::new(&exe)
        .arg("--list-full")
        .output()
        .map_err(|e| err(format!("applets: running {binary} --list-full: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "applets: {binary} --list-full failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let target = format!("/{}", normalise(binary));
    let mut links = Tree::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = normalise(line.trim());
        if path.is_empty() || path.split('/').any(|c| c == "..") || tree.get(&path).is_some() {
            continue;
        }
        links.insert(&path, Entry::symlink(target.clone()));
    }
    if links.is_empty() {
        return Err(err(format!(
            "applets: {binary} --list-full listed no applets"
        )));
    }
    Ok(links)
}

/// The result of [`push`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pushed {
    /// Where it went (`127.0.0.1:5050/slipway/busybox:<tag>`).
    pub reference: String,
    pub digest: Digest,
}

/// Builds the package if needed, then pushes it to `registry` (`HOST:PORT`) as
/// `REGISTRY/ORG/IMAGE:TAG`, or to its canonical name (Docker Hub) when no registry is given.
pub fn push(
    store: &Store,
    dir: &Path,
    registry: Option<&str>,
    opts: &BuildOptions,
    pull: &PullOptions,
) -> Result<Pushed, PkgError> {
    let built = build(store, dir, opts)?;
    let name = show_tag(dir)?;
    let target = match registry {
        Some(r) => format!("{}/{name}", r.trim_end_matches('/')),
        None => built.reference.clone(),
    };
    let digest = crate::oci::push(store, &built.reference, &target, pull)?;
    Ok(Pushed {
        reference: crate::oci::resolve::full_reference(&target)?,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_joins_the_files_of_a_folder_in_name_order_with_newlines() {
        let mut t = Tree::new();
        t.insert("certs/b.crt", Entry::file(b"B".to_vec(), 0o644));
        t.insert("certs/a.crt", Entry::file(b"A\n".to_vec(), 0o644));
        t.insert("certs/sub/c.crt", Entry::file(b"C\n".to_vec(), 0o644));
        t.insert("certs/link", Entry::symlink("a.crt"));
        let yml = Path::new("pkg/x/build.yml");
        assert_eq!(concat(&t, "/certs", yml).unwrap(), b"A\nB\n");
        for (dir, message) in [
            ("/none", "concat: /none is not a folder of the image"),
            ("/certs/sub/c.crt", "is not a folder"),
        ] {
            let err = concat(&t, dir, yml).unwrap_err().to_string();
            assert!(err.contains(message) && err.contains("build.yml"), "{err}");
        }
        t.insert("empty", Entry::dir(0o755));
        let err = concat(&t, "/empty", yml).unwrap_err().to_string();
        assert!(err.contains("concat: /empty has no files to join"), "{err}");
    }
}
