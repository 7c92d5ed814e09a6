//! `sysctl`: LinuxKit's `sysctl` package for Slipway, an onboot container that applies every
//! `*.conf` of `/etc/sysctl.d` (the package's `00-linuxkit.conf` defaults, then whatever an image's
//! `files:` or binds add there), in file-name order, by writing `/proc/sys`.
//!
//! `sysctl [DIR]` (default `/etc/sysctl.d`). Lines are `key = value` (`a.b.c` or `a/b/c`); `#` and
//! `;` start comments; a leading `-` on the key (systemd's "ignore if absent") is accepted. A key
//! the kernel does not have, or a value it refuses, is reported with its file and line and the
//! others are still applied; the exit status says whether all were.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub const DIR: &str = "/etc/sysctl.d";
const PROC_SYS: &str = "/proc/sys";

/// One setting, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub optional: bool,
    pub origin: String,
}

/// The settings of one file's text; a line that is not `key = value` is an error naming it.
pub fn parse(text: &str, file: &str) -> (Vec<Setting>, Vec<String>) {
    let mut settings = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let origin = format!("{file}:{}", i + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            errors.push(format!("{origin}: not `key = value`: {line:?}"));
            continue;
        };
        let key = key.trim();
        let (key, optional) = match key.strip_prefix('-') {
            Some(k) => (k, true),
            None => (key, false),
        };
        let valid = !key.is_empty()
            && key
                .split(['.', '/'])
                .all(|part| !part.is_empty() && part != ".." && part != ".");
        if !valid {
            errors.push(format!("{origin}: bad key {key:?}"));
            continue;
        }
        settings.push(Setting {
            key: key.to_string(),
            value: value.trim().to_string(),
            optional,
            origin,
        });
    }
    (settings, errors)
}

/// `/proc/sys` path of a key: dots are separators unless the key uses slashes (then dots are
/// part of names, as in `net/ipv4/conf/eth0.100/forwarding`).
pub fn key_path(root: &Path, key: &str) -> PathBuf {
    if key.contains('/') {
        root.join(key)
    } else {
        root.join(key.replace('.', "/"))
    }
}

/// Applies every `*.conf` of `dir` to `proc_sys`; returns the error lines.
pub fn apply(dir: &Path, proc_sys: &Path, say: &mut dyn FnMut(String)) -> Vec<String> {
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect(),
        Err(e) => return vec![format!("reading {}: {e}", dir.display())],
    };
    files.sort();
    for file in files {
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("reading {}: {e}", file.display()));
                continue;
            }
        };
        let (settings, bad) = parse(&text, &file.display().to_string());
        errors.extend(bad);
        let mut applied = 0;
        for s in settings {
            let path = key_path(proc_sys, &s.key);
            match fs::write(&path, format!("{}\n", s.value)) {
                Ok(()) => applied += 1,
                Err(e) if s.optional && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("{}: {} = {}: {e}", s.origin, s.key, s.value)),
            }
        }
        say(format!("{}: {applied} settings applied", file.display()));
    }
    errors
}

pub fn main() -> ExitCode {
    let dir = std::env::args().nth(1).unwrap_or_else(|| DIR.to_string());
    let errors = apply(Path::new(&dir), Path::new(PROC_SYS), &mut |m| {
        println!("sysctl: {m}")
    });
    for e in &errors {
        println!("sysctl: error: {e}");
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_apply_in_order_and_bad_lines_are_named() {
        let etc = tempfile::tempdir().unwrap();
        let proc = tempfile::tempdir().unwrap();
        fs::create_dir_all(proc.path().join("fs/inotify")).unwrap();
        fs::create_dir_all(proc.path().join("net/ipv4/conf/eth0.100")).unwrap();
        fs::write(proc.path().join("fs/inotify/max_user_watches"), "8192\n").unwrap();
        fs::write(
            etc.path().join("00-a.conf"),
            "# c\nfs.inotify.max_user_watches = 1\nnonsense\n-no.such.key = 1\n",
        )
        .unwrap();
        fs::write(
            etc.path().join("10-b.conf"),
            "fs.inotify.max_user_watches=524288\n; c\nnet/ipv4/conf/eth0.100/x = 1\nno.such = 2\n../x = 1\n",
        )
        .unwrap();
        fs::write(
            etc.path().join("ignored.txt"),
            "fs.inotify.max_user_watches = 3\n",
        )
        .unwrap();
        let errors = apply(etc.path(), proc.path(), &mut |_| {});
        assert_eq!(
            fs::read_to_string(proc.path().join("fs/inotify/max_user_watches")).unwrap(),
            "524288\n"
        );
        assert_eq!(
            fs::read_to_string(proc.path().join("net/ipv4/conf/eth0.100/x")).unwrap(),
            "1\n"
        );
        let text = errors.join("\n");
        assert_eq!(errors.len(), 3, "{text}");
        assert!(text.contains("00-a.conf:3: not `key = value`"), "{text}");
        assert!(text.contains("10-b.conf:4: no.such = 2"), "{text}");
        assert!(text.contains("10-b.conf:5: bad key"), "{text}");
    }
}
