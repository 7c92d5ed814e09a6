//! The manifest's `files` entries, added last so that they win over anything images brought.

use std::collections::BTreeMap;

use super::root::{AssembleError, manifest_error};
use super::tree::{Entry, Kind, Tree};
use crate::manifest::{self, Merged, path::FieldPath};

pub(super) fn add_files(
    tree: &mut Tree,
    merged: &Merged,
    ids: &BTreeMap<String, u32>,
    manifest_yaml: &str,
) -> Result<(), AssembleError> {
    for (i, f) in merged.manifest.files.iter().enumerate() {
        let at = FieldPath::root().key("files").index(i);
        let id = |r: &Option<manifest::IdRef>| {
            r.as_ref()
                .and_then(|r| manifest::resolve_id(ids, r))
                .unwrap_or(0)
        };
        let (uid, gid) = (id(&f.uid), id(&f.gid));
        let is_dir = f.directory == Some(true);
        // LinuxKit's defaults: files 0600, directories 0700 (validated octal by the manifest stage).
        let mode = f
            .mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .unwrap_or(if is_dir { 0o700 } else { 0o600 });
        let kind = if is_dir {
            Kind::Dir
        } else if let Some(target) = &f.symlink {
            Kind::Symlink(target.clone())
        } else if let Some(contents) = &f.contents {
            Kind::File(contents.clone().into_bytes().into())
        } else if let Some(meta) = &f.metadata {
            let bytes = match meta.as_str() {
                "json" => {
                    let value: serde_json::Value =
                        serde_saphyr::from_str(manifest_yaml).expect("the printed manifest parses");
                    serde_json::to_vec_pretty(&value).expect("JSON serialises")
                }
                _ => manifest_yaml.as_bytes().to_vec(),
            };
            Kind::File(bytes.into())
        } else if let Some(source) = &f.source {
            let path = expand_home(source);
            match std::fs::read(&path) {
                Ok(bytes) => Kind::File(bytes.into()),
                Err(_) if f.optional == Some(true) => continue,
                Err(e) => {
                    return Err(manifest_error(
                        merged,
                        &at.key("source"),
                        format!("cannot read {path}: {e}"),
                    ));
                }
            }
        } else {
            continue;
        };
        add_parents(tree, &f.path, mode, uid, gid);
        let mode = if matches!(kind, Kind::Symlink(_)) {
            0o777
        } else {
            mode
        };
        tree.insert(
            &f.path,
            Entry {
                kind,
                mode,
                uid,
                gid,
                mtime: super::tree::DEFAULT_MTIME,
            },
        );
    }
    Ok(())
}

/// Missing parents get the file's owner and its mode with search bits added where it is readable.
fn add_parents(tree: &mut Tree, path: &str, mode: u32, uid: u32, gid: u32) {
    let normal = super::tree::normalise(path);
    let parts: Vec<&str> = normal.split('/').collect();
    let dir_mode = mode | ((mode & 0o444) >> 2);
    for n in 1..parts.len() {
        let parent = parts[..n].join("/");
        if tree.get(&parent).is_none() {
            tree.insert(
                &parent,
                Entry {
                    kind: Kind::Dir,
                    mode: dir_mode,
                    uid,
                    gid,
                    mtime: super::tree::DEFAULT_MTIME,
                },
            );
        }
    }
}

fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => path.to_string(),
    }
}
