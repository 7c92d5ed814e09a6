//! The `build.yml` of a package folder: its schema, and reading it with errors that name the file,
//! the line and the field.
//!
//! The file is deserialised strictly (unknown keys are errors, as in LinuxKit's `build.yml`), then
//! each `contents` item is checked to name exactly one source. serde-saphyr's `Spanned` keeps the
//! position of every item so that those checks, made after deserialising, can still point at a line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::PkgError;

/// The org an image gets when `build.yml` names none (LinuxKit's is `linuxkit`).
pub const DEFAULT_ORG: &str = "slipway";

/// `build.yml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    image: Spanned<String>,
    #[serde(default)]
    org: Option<Spanned<String>>,
    /// Free-form: becomes the JSON of the `org.mobyproject.config` label.
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    workdir: Option<String>,
    contents: Vec<Spanned<RawItem>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    #[serde(rename = "crate")]
    krate: Option<String>,
    files: Option<String>,
    deb: Option<String>,
    kernel: Option<String>,
    applets: Option<String>,
    symlinks: Option<BTreeMap<String, String>>,
    dirs: Option<Vec<String>>,
    concat: Option<String>,
    remove: Option<Vec<String>>,
    #[serde(rename = "build-env")]
    build_env: Option<BTreeMap<String, String>>,
    to: Option<String>,
    paths: Option<Vec<String>>,
    version: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
}

/// A checked `build.yml`.
#[derive(Debug, Clone)]
pub struct BuildFile {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    pub image: String,
    pub org: String,
    pub config: Option<serde_json::Value>,
    pub labels: BTreeMap<String, String>,
    pub env: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub workdir: Option<String>,
    pub contents: Vec<Item>,
}

/// One `contents` entry: where some files of the image come from. Later items overwrite earlier ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A binary crate of the workspace, built static, installed at `to`; `env` is added to the
    /// environment of `cargo build` (e.g. to link a C library statically).
    Crate {
        name: String,
        to: String,
        env: BTreeMap<String, String>,
    },
    /// A file or folder inside the package folder, copied to `to`.
    Files { from: String, to: String },
    /// A Debian package's files (all, or those at or below `paths`).
    Deb {
        package: String,
        version: Option<String>,
        paths: Option<Vec<String>>,
    },
    /// A Debian kernel package (a metapackage is resolved to its linux-image): `/kernel`,
    /// `/kernel.tar` (modules with a generated modules.dep) and `/kernel.config`.
    Kernel {
        package: String,
        version: Option<String>,
    },
    /// One symlink per applet of a multi-call binary already in the image (`busybox --list-full`).
    Applets { binary: String },
    /// Explicit symlinks: path -> target.
    Symlinks(BTreeMap<String, String>),
    /// Empty directories (mode 0755): mount points of a read-only root.
    Dirs(Vec<String>),
    /// One file (mode 0644) at `to` joining the regular files directly in the image's folder `dir`
    /// (as assembled by the items before), in byte order of their names, each ending with a
    /// newline: a bundle a Debian maintainer script would make (`update-ca-certificates`).
    Concat { dir: String, to: String },
    /// Paths (and everything below them) taken out of the image assembled so far; each must be
    /// there.
    Remove(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub source: Source,
    pub uid: u32,
    pub gid: u32,
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<BuildFile, PkgError> {
    let text = std::fs::read_to_string(path).map_err(|source| PkgError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses `text`, the contents of `path`.
pub fn parse(path: &Path, text: &str) -> Result<BuildFile, PkgError> {
    let mut failed: Option<(String, String)> = None;
    let raw: Result<Raw, serde_saphyr::Error> =
        serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize::<_, Raw>(de).map_err(|e| {
                let message = e.inner().to_string();
                // `Spanned` wraps values in a `value` field; the schema has no field of that name.
                let path = e
                    .path()
                    .to_string()
                    .split('.')
                    .filter(|s| *s != "value")
                    .collect::<Vec<_>>()
                    .join(".");
                failed = Some((
                    if path.is_empty() {
                        ".".to_string()
                    } else {
                        path
                    },
                    message.clone(),
                ));
                <serde_saphyr::Error as serde::de::Error>::custom(message)
            })
        });
    let raw = match raw {
        Ok(raw) => raw,
        Err(err) => {
            let (line, column) = err
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            let (field, message) = match failed {
                Some((field, message)) => (field, message),
                None => (".".to_string(), err.to_string()),
            };
            let (message, line, column) = split_location(&message, line, column);
            let field = match unknown_field(&message) {
                // serde_path_to_error stops at the mapping; the unknown key is the field at fault.
                Some(key) if field == "." => key,
                Some(key) if field.rsplit('.').next() == Some(key.as_str()) => field,
                Some(key) => format!("{field}.{key}"),
                None => field,
            };
            return Err(PkgError::BuildFile {
                file: path.to_path_buf(),
                line,
                column,
                field,
                message,
            });
        }
    };
    check(path, raw)
}

fn check(path: &Path, raw: Raw) -> Result<BuildFile, PkgError> {
    let at = |loc: &serde_saphyr::Location, field: String, message: String| PkgError::BuildFile {
        file: path.to_path_buf(),
        line: loc.line(),
        column: loc.column(),
        field,
        message,
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    if !name_ok(&raw.image.value) {
        return Err(at(
            &raw.image.referenced,
            "image".into(),
            format!(
                "`{}` is not a valid image name (lowercase letters, digits, `.`, `_`, `-`)",
                raw.image.value
            ),
        ));
    }
    let org = match &raw.org {
        Some(org) if !org.value.split('/').all(name_ok) => {
            return Err(at(
                &org.referenced,
                "org".into(),
                format!("`{}` is not a valid org name", org.value),
            ));
        }
        Some(org) => org.value.clone(),
        None => DEFAULT_ORG.to_string(),
    };
    if raw.contents.is_empty() {
        return Err(PkgError::BuildFile {
            file: path.to_path_buf(),
            line: raw.image.referenced.line(),
            column: 1,
            field: "contents".into(),
            message: "a package needs at least one contents item".into(),
        });
    }
    let mut contents = Vec::new();
    for (i, item) in raw.contents.into_iter().enumerate() {
        let loc = item.referenced;
        let field = format!("contents[{i}]");
        let it = item.value;
        let kinds: Vec<&str> = [
            ("crate", it.krate.is_some()),
            ("files", it.files.is_some()),
            ("deb", it.deb.is_some()),
            ("kernel", it.kernel.is_some()),
            ("applets", it.applets.is_some()),
            ("symlinks", it.symlinks.is_some()),
            ("dirs", it.dirs.is_some()),
            ("concat", it.concat.is_some()),
            ("remove", it.remove.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if kinds.len() != 1 {
            return Err(at(
                &loc,
                field,
                format!(
                    "an item names exactly one of `crate`, `files`, `deb`, `kernel`, `applets`, `symlinks`, `dirs`, `concat`, `remove` (found {})",
                    if kinds.is_empty() {
                        "none".to_string()
                    } else {
                        kinds.join(", ")
                    }
                ),
            ));
        }
        let not_for = |key: &str, set: bool| -> Result<(), PkgError> {
            if set {
                Err(at(
                    &loc,
                    format!("{field}.{key}"),
                    format!("`{key}` is not allowed with `{}`", kinds[0]),
                ))
            } else {
                Ok(())
            }
        };
        if kinds[0] != "crate" {
            not_for("build-env", it.build_env.is_some())?;
        }
        let source = match kinds[0] {
            "crate" | "files" | "concat" => {
                not_for("paths", it.paths.is_some())?;
                not_for("version", it.version.is_some())?;
                let Some(to) = it.to.clone() else {
                    return Err(at(
                        &loc,
                        format!("{field}.to"),
                        format!("`{}` needs `to:` (where it goes)", kinds[0]),
                    ));
                };
                if !to.starts_with('/') {
                    return Err(at(
                        &loc,
                        format!("{field}.to"),
                        format!("`{to}` must be an absolute path"),
                    ));
                }
                if let Some(dir) = it.concat {
                    if !dir.starts_with('/') {
                        return Err(at(
                            &loc,
                            format!("{field}.concat"),
                            format!("`{dir}` must be an absolute path (a folder of the image)"),
                        ));
                    }
                    Source::Concat { dir, to }
                } else if let Some(name) = it.krate {
                    Source::Crate {
                        name,
                        to,
                        env: it.build_env.unwrap_or_default(),
                    }
                } else {
                    let from = it.files.unwrap_or_default();
                    if from.starts_with('/') || from.split('/').any(|c| c == "..") {
                        return Err(at(
                            &loc,
                            format!("{field}.files"),
                            format!("`{from}` must be a relative path inside the package folder"),
                        ));
                    }
                    Source::Files { from, to }
                }
            }
            "deb" => {
                not_for("to", it.to.is_some())?;
                Source::Deb {
                    package: it.deb.unwrap_or_default(),
                    version: it.version,
                    paths: it.paths,
                }
            }
            "kernel" => {
                not_for("to", it.to.is_some())?;
                not_for("paths", it.paths.is_some())?;
                Source::Kernel {
                    package: it.kernel.unwrap_or_default(),
                    version: it.version,
                }
            }
            "applets" => {
                for (k, set) in [
                    ("to", it.to.is_some()),
                    ("paths", it.paths.is_some()),
                    ("version", it.version.is_some()),
                ] {
                    not_for(k, set)?;
                }
                Source::Applets {
                    binary: it.applets.unwrap_or_default(),
                }
            }
            other => {
                for (k, set) in [
                    ("to", it.to.is_some()),
                    ("paths", it.paths.is_some()),
                    ("version", it.version.is_some()),
                ] {
                    not_for(k, set)?;
                }
                if other == "dirs" {
                    Source::Dirs(it.dirs.unwrap_or_default())
                } else if other == "remove" {
                    let paths = it.remove.unwrap_or_default();
                    if let Some(bad) = paths.iter().find(|p| {
                        !p.starts_with('/')
                            || p.trim_matches('/').is_empty()
                            || p.split('/').any(|c| c == "..")
                    }) {
                        return Err(at(
                            &loc,
                            format!("{field}.remove"),
                            format!("`{bad}` must be an absolute path without `..`"),
                        ));
                    }
                    Source::Remove(paths)
                } else {
                    Source::Symlinks(it.symlinks.unwrap_or_default())
                }
            }
        };
        contents.push(Item {
            source,
            uid: it.uid.unwrap_or(0),
            gid: it.gid.unwrap_or(0),
        });
    }
    Ok(BuildFile {
        path: path.to_path_buf(),
        image: raw.image.value,
        org,
        config: raw.config,
        labels: raw.labels,
        env: raw.env,
        entrypoint: raw.entrypoint,
        cmd: raw.cmd,
        workdir: raw.workdir,
        contents,
    })
}

/// serde-saphyr appends " at line L column C" to its messages; move that into the error's fields.
fn split_location(message: &str, line: u64, column: u64) -> (String, u64, u64) {
    let first = message.lines().next().unwrap_or(message);
    let Some(i) = first.find(" at line ") else {
        return (first.to_string(), line, column);
    };
    let mut nums = first[i..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let l = nums.next().and_then(|s| s.parse().ok()).unwrap_or(line);
    let c = nums.next().and_then(|s| s.parse().ok()).unwrap_or(column);
    (first[..i].to_string(), l, c)
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (u64, String, String) {
        match parse(Path::new("pkg/x/build.yml"), text) {
            Err(PkgError::BuildFile {
                line,
                field,
                message,
                ..
            }) => (line, field, message),
            other => panic!("expected a build.yml error, got {other:?}"),
        }
    }

    #[test]
    fn a_full_build_file_parses() {
        let text = "image: init\norg: acme\nconfig:\n  pid: host\n  binds: [/a:/b]\ncontents:\n  - crate: slipway-init\n    to: /init\n  - files: rootfs/\n    to: /\n  - deb: busybox-static\n    paths: [/bin/busybox]\n  - applets: /bin/busybox\n";
        let bf = parse(Path::new("b.yml"), text).unwrap();
        assert_eq!(bf.org, "acme");
        assert_eq!(bf.config.unwrap()["pid"], "host");
        assert_eq!(bf.contents.len(), 4);
        assert_eq!(
            bf.contents[0].source,
            Source::Crate {
                name: "slipway-init".into(),
                to: "/init".into(),
                env: BTreeMap::new()
            }
        );
        assert_eq!(
            bf.contents[2].source,
            Source::Deb {
                package: "busybox-static".into(),
                version: None,
                paths: Some(vec!["/bin/busybox".into()])
            }
        );
    }

    #[test]
    fn unknown_key_names_line_and_field() {
        let (line, field, message) = err("image: a\ncontents:\n  - deb: x\n    pathz: [/a]\n");
        assert_eq!(line, 4);
        assert_eq!(field, "contents[0].pathz");
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn wrong_type_names_line_and_field() {
        let (line, field, _) = err("image: a\ncontents:\n  - deb: x\n    paths: 3\n");
        assert_eq!((line, field.as_str()), (4, "contents[0].paths"));
    }

    #[test]
    fn item_with_two_sources_is_rejected_at_its_line() {
        let (line, field, message) =
            err("image: a\ncontents:\n  - deb: x\n  - deb: y\n    crate: z\n    to: /z\n");
        assert_eq!((line, field.as_str()), (4, "contents[1]"));
        assert!(
            message.contains("deb, crate") || message.contains("crate, deb"),
            "{message}"
        );
    }

    #[test]
    fn crate_without_to_and_escaping_files_are_rejected() {
        assert_eq!(
            err("image: a\ncontents:\n  - crate: x\n").1,
            "contents[0].to"
        );
        assert_eq!(
            err("image: a\ncontents:\n  - files: ../etc\n    to: /\n").1,
            "contents[0].files"
        );
    }

    #[test]
    fn concat_and_remove_parse_and_bad_paths_are_rejected() {
        let bf = parse(
            Path::new("b.yml"),
            "image: a\ncontents:\n  - concat: /d\n    to: /f\n  - remove: [/d]\n",
        )
        .unwrap();
        assert_eq!(
            bf.contents[0].source,
            Source::Concat {
                dir: "/d".into(),
                to: "/f".into()
            }
        );
        assert_eq!(bf.contents[1].source, Source::Remove(vec!["/d".into()]));
        assert_eq!(
            err("image: a\ncontents:\n  - concat: /d\n").1,
            "contents[0].to"
        );
        assert_eq!(
            err("image: a\ncontents:\n  - concat: d\n    to: /f\n").1,
            "contents[0].concat"
        );
        for bad in ["/", "a", "/a/../b"] {
            let (line, field, _) = err(&format!("image: a\ncontents:\n  - remove: [\"{bad}\"]\n"));
            assert_eq!((line, field.as_str()), (3, "contents[0].remove"), "{bad}");
        }
    }

    #[test]
    fn bad_image_name_and_missing_field() {
        let (line, field, _) = err("org: x\nimage: Bad/Name\ncontents: []\n");
        assert_eq!((line, field.as_str()), (2, "image"));
        let (_, _, message) = err("image: a\n");
        assert!(message.contains("contents"), "{message}");
    }
}
