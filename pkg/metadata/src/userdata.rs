//! Writing what a provider found under `/run/config`, in LinuxKit's layout.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use serde_json::Value;

use super::Found;

/// Writes `found` below `config`; problems with single entries are reported through `say` and
/// skipped (LinuxKit's behaviour: one bad entry does not lose the others).
pub fn write(config: &Path, found: &Found, say: &mut dyn FnMut(String)) {
    for (rel, data) in &found.files {
        if !is_relative_name(rel) {
            say(format!(
                "error: refusing to write {} outside {}",
                rel.display(),
                config.display()
            ));
            continue;
        }
        let path = config.join(rel);
        let result = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&path, data));
        if let Err(e) = result {
            say(format!("error: writing {}: {e}", path.display()));
        }
    }
    let Some(data) = &found.userdata else {
        return;
    };
    let raw = config.join("userdata");
    if let Err(e) = write_mode(&raw, data, 0o644) {
        say(format!("error: writing {}: {e}", raw.display()));
        return;
    }
    say(format!("wrote {} ({} bytes)", raw.display(), data.len()));
    // Userdata that is not a JSON object is kept as it is, only in `userdata`.
    let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for (name, entry) in &root {
        tree(&config.join(name), name, entry, say);
    }
}

/// One entry of the JSON tree: `{"content": "...", "perm": "0600"}` is a file,
/// `{"entries": {...}, "perm": "0755"}` a folder.
fn tree(target: &Path, name: &str, entry: &Value, say: &mut dyn FnMut(String)) {
    let shown = target.display();
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        say(format!(
            "error: userdata: {name:?} is not a file name, skipped"
        ));
        return;
    }
    let content = entry.get("content");
    let entries = entry.get("entries");
    let perm = match entry.get("perm") {
        None => None,
        Some(Value::String(p)) => match u32::from_str_radix(p, 8) {
            Ok(m) if m <= 0o7777 => Some(m),
            _ => {
                say(format!("error: userdata: {shown}: bad perm {p:?}, skipped"));
                return;
            }
        },
        Some(other) => {
            say(format!(
                "error: userdata: {shown}: perm must be a string like \"0644\", not {other}"
            ));
            return;
        }
    };
    match (content, entries) {
        (Some(Value::String(text)), None) => {
            if let Err(e) = write_mode(target, text.as_bytes(), perm.unwrap_or(0o644)) {
                say(format!("error: writing {shown}: {e}"));
            } else {
                say(format!("wrote {shown}"));
            }
        }
        (None, Some(Value::Object(children))) => {
            let made = fs::create_dir_all(target).and_then(|()| {
                fs::set_permissions(target, fs::Permissions::from_mode(perm.unwrap_or(0o755)))
            });
            if let Err(e) = made {
                say(format!("error: creating {shown}: {e}"));
                return;
            }
            for (child, value) in children {
                tree(&target.join(child), child, value, say);
            }
        }
        _ => say(format!(
            "error: userdata: {shown} is invalid (needs a string \"content\" or an object \"entries\")"
        )),
    }
}

fn write_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    fs::write(path, data)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn is_relative_name(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_))) && p.components().next().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_userdata_becomes_files_and_folders_like_linuxkit() {
        let dir = tempfile::tempdir().unwrap();
        let json = br#"{"ssh":{"entries":{"authorized_keys":{"perm":"0600","content":"ssh-ed25519 AAA"}}},
            "hostname":{"content":"box"},"bad":{"perm":"99","content":"x"},"../up":{"content":"x"},"odd":[1]}"#;
        let found = Found {
            userdata: Some(json.to_vec()),
            files: vec![],
        };
        let mut said = Vec::new();
        write(dir.path(), &found, &mut |m| said.push(m));
        let keys = dir.path().join("ssh/authorized_keys");
        assert_eq!(fs::read_to_string(&keys).unwrap(), "ssh-ed25519 AAA");
        assert_eq!(
            fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("hostname")).unwrap(),
            "box"
        );
        assert_eq!(fs::read(dir.path().join("userdata")).unwrap(), json);
        assert!(!dir.path().join("bad").exists());
        assert!(!dir.path().parent().unwrap().join("up").exists());
        let text = said.join("\n");
        assert!(text.contains("bad perm \"99\""), "{text}");
        assert!(text.contains("\"../up\" is not a file name"), "{text}");
        assert!(text.contains("odd is invalid"), "{text}");
    }

    #[test]
    fn text_userdata_is_kept_raw() {
        let dir = tempfile::tempdir().unwrap();
        let found = Found {
            userdata: Some(b"#!/bin/sh\necho hi\n".to_vec()),
            files: vec![("ssh/authorized_keys".into(), b"k\n".to_vec())],
        };
        write(dir.path(), &found, &mut |_| {});
        assert_eq!(
            fs::read(dir.path().join("userdata")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::read(dir.path().join("ssh/authorized_keys")).unwrap(),
            b"k\n"
        );
    }
}
