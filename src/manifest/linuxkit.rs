//! `build --linuxkit`: LinuxKit's own package images (`linuxkit/NAME:TAG`) stand for this
//! project's packages, whatever the tag, so that LinuxKit's manifests build unchanged.
//!
//! The substitution runs on each parsed file before `@pkg:` templates: a `linuxkit/` reference
//! becomes the tag of the package folder it names (the tag `slipway pkg show-tag` prints, which
//! pins the package's inputs), so the build resolves it like any `@pkg:` image and builds it when
//! the store lacks it. LinuxKit's init list names the runtime twice (`linuxkit/runc`,
//! `linuxkit/containerd`), and Slipway has one engine for both: the second occurrence of the same
//! package in `init` is dropped.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::error::ManifestError;
use super::merge::Document;
use super::path::FieldPath;
use super::template::PkgTagger;

/// The folder that marks a project root: the init's package is always there.
const MARKER: &str = "pkg/init/build.yml";

/// The packages of a project root (`kernel/` and `pkg/NAME/`).
#[derive(Clone, Debug)]
pub struct Packages {
    root: PathBuf,
}

/// One `linuxkit/` image replaced by a package of the project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Substitution {
    /// Where, in the file's own terms (`init[1]`, `services[0].image`).
    pub file: String,
    pub path: String,
    /// The reference as written.
    pub from: String,
    /// The package folder, relative to the project root (`pkg/engine`).
    pub package: String,
    /// The package's image tag, or `None` when the entry was dropped as a repeat of an earlier
    /// `init` entry of the same package.
    pub tag: Option<String>,
}

impl fmt::Display for Substitution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(tag) => write!(
                f,
                "{}: {}: {} -> {} ({tag})",
                self.file, self.path, self.from, self.package
            ),
            None => write!(
                f,
                "{}: {}: {} -> {}, already in init: dropped",
                self.file, self.path, self.from, self.package
            ),
        }
    }
}

impl Packages {
    /// The project root `dir` itself (`--pkg-root`); it must hold the init's package.
    pub fn at(dir: &Path) -> Result<Packages, String> {
        if dir.join(MARKER).is_file() {
            Ok(Packages {
                root: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
            })
        } else {
            Err(format!(
                "{} is not a Slipway project root: it has no {MARKER}",
                dir.display()
            ))
        }
    }

    /// The first folder from `start` upward that is a project root.
    pub fn find(start: &Path) -> Result<Packages, String> {
        let start = std::path::absolute(start).unwrap_or_else(|_| start.to_path_buf());
        start
            .ancestors()
            .find_map(|dir| Packages::at(dir).ok())
            .ok_or_else(|| {
                format!(
                    "no Slipway project root (a folder with {MARKER}) in {} or above it: run \
                     from the checkout or pass --pkg-root DIR",
                    start.display()
                )
            })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The package folder (relative to the root) of a LinuxKit image name, `None` when the
    /// reference is not one of LinuxKit's packages.
    pub fn folder_of(reference: &str) -> Option<String> {
        let rest = ["docker.io/", "index.docker.io/", ""]
            .iter()
            .find_map(|registry| reference.strip_prefix(registry)?.strip_prefix("linuxkit/"))?;
        // `NAME:TAG`, `NAME@DIGEST` or `NAME:TAG@DIGEST`: the tag does not matter.
        let name = rest.split(['@', ':']).next().unwrap_or(rest);
        if name.is_empty() || name.contains('/') {
            return None;
        }
        Some(match name {
            "kernel" => "kernel".to_string(),
            "runc" | "containerd" => "pkg/engine".to_string(),
            other => format!("pkg/{other}"),
        })
    }

    /// The LinuxKit names this root can stand for, sorted (`linuxkit/busybox`, ...).
    pub fn available(&self) -> Vec<String> {
        let mut names = BTreeSet::new();
        if self.root.join("kernel/build.yml").is_file() {
            names.insert("linuxkit/kernel".to_string());
        }
        if let Ok(entries) = std::fs::read_dir(self.root.join("pkg")) {
            for entry in entries.flatten() {
                if entry.path().join("build.yml").is_file()
                    && let Some(name) = entry.file_name().to_str()
                {
                    names.insert(format!("linuxkit/{name}"));
                    if name == "engine" {
                        names.insert("linuxkit/runc".into());
                        names.insert("linuxkit/containerd".into());
                    }
                }
            }
        }
        names.into_iter().collect()
    }
}

/// Replaces every `linuxkit/` image reference of `doc` (kernel, init, containers, volumes) by its
/// package's tag. `seen_init` carries the init packages of earlier files across calls.
pub fn substitute(
    doc: &mut Document,
    packages: &Packages,
    tagger: PkgTagger<'_>,
    seen_init: &mut BTreeSet<String>,
) -> Result<Vec<Substitution>, ManifestError> {
    let source = doc.source.clone();
    let root = FieldPath::root();
    let mut done = Vec::new();
    let mut one = |path: FieldPath, value: &mut String| -> Result<Option<String>, ManifestError> {
        let Some(folder) = Packages::folder_of(value) else {
            return Ok(None);
        };
        let dir = packages.root.join(&folder);
        if !dir.join("build.yml").is_file() {
            return Err(ManifestError::value(
                &source,
                &path,
                format!(
                    "`{value}` has no package in {} (no {folder}/build.yml); the packages there \
                     are: {}",
                    packages.root.display(),
                    packages.available().join(", ")
                ),
            ));
        }
        let tag = tagger(&dir).map_err(|e| {
            ManifestError::value(&source, &path, format!("`{value}` ({folder}): {e}"))
        })?;
        done.push(Substitution {
            file: source.name.clone(),
            path: path.to_string(),
            from: value.clone(),
            package: folder.clone(),
            tag: Some(tag.clone()),
        });
        *value = tag;
        Ok(Some(folder))
    };
    let m = &mut doc.manifest;
    if let Some(image) = m.kernel.as_mut().and_then(|k| k.image.as_mut()) {
        one(root.key("kernel").key("image"), image)?;
    }
    let mut keep = Vec::with_capacity(m.init.len());
    let mut dropped = Vec::new();
    for (i, mut reference) in std::mem::take(&mut m.init).into_iter().enumerate() {
        let original = reference.clone();
        if let Some(folder) = one(root.key("init").index(i), &mut reference)?
            && !seen_init.insert(folder.clone())
        {
            dropped.push(Substitution {
                file: source.name.clone(),
                path: root.key("init").index(i).to_string(),
                from: original,
                package: folder,
                tag: None,
            });
            continue;
        }
        keep.push(reference);
    }
    m.init = keep;
    for (section, list) in [
        ("onboot", &mut m.onboot),
        ("onshutdown", &mut m.onshutdown),
        ("services", &mut m.services),
    ] {
        for (i, c) in list.iter_mut().enumerate() {
            one(root.key(section).index(i).key("image"), &mut c.image)?;
        }
    }
    for (i, v) in m.volumes.iter_mut().enumerate() {
        if let Some(image) = v.image.as_mut() {
            one(root.key("volumes").index(i).key("image"), image)?;
        }
    }
    // A dropped entry replaces its substitution line: the report says once what became of it.
    for d in dropped {
        done.retain(|s| s.path != d.path);
        done.push(d);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::Packages;

    #[test]
    fn linuxkit_names_map_to_package_folders_whatever_the_tag() {
        for (reference, folder) in [
            ("linuxkit/kernel:6.6.13", Some("kernel")),
            (
                "linuxkit/init:8eea386739975a43af558eec757a7dcb3a3d2e7b",
                Some("pkg/init"),
            ),
            ("linuxkit/runc:v1.1", Some("pkg/engine")),
            (
                "docker.io/linuxkit/containerd@sha256:00",
                Some("pkg/engine"),
            ),
            ("linuxkit/sshd", Some("pkg/sshd")),
            ("linuxkit/ca-certificates:x", Some("pkg/ca-certificates")),
            ("alpine:3.20", None),
            ("quay.io/linuxkit/init:1", None),
            ("linuxkit/a/b:1", None),
            ("linuxkit/:1", None),
        ] {
            assert_eq!(
                Packages::folder_of(reference).as_deref(),
                folder,
                "{reference}"
            );
        }
    }
}
