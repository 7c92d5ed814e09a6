//! The package tag: a hash of everything a package's image is made from.
//!
//! Inputs: a version string of this image writer, the mtime the layer will carry, the package
//! folder (every file's relative path, contents and exec bit; symlink targets), and per source the
//! things outside the folder that shape the image: for crates, the folders of the crate and of the
//! path crates it links, the registry crates it links (its share of Cargo.lock), the root
//! Cargo.toml's workspace settings (the `image` profile) and the rustc version; for Debian
//! packages, the exact version and the `.deb`'s SHA256 from apt's lists. Nothing here touches the
//! network, so `show-tag` is fast and works offline. Each field is length-prefixed so that no two
//! different input lists hash alike.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::PkgError;

/// Bumped whenever the way an image is written changes, so that old tags are not reused.
const FORMAT: &str = "slipway-pkg-2";

/// Length of the tag in hex characters (160 bits, like LinuxKit's git tree hashes).
const TAG_LEN: usize = 40;

pub struct TagHasher(Sha256);

impl Default for TagHasher {
    fn default() -> Self {
        let mut h = TagHasher(Sha256::new());
        h.field("format", FORMAT.as_bytes());
        h
    }
}

impl TagHasher {
    pub fn field(&mut self, name: &str, value: &[u8]) {
        for part in [name.as_bytes(), value] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
    }

    /// Every file below `dir` (sorted, relative paths). Folders named `target` and `.git` are skipped:
    /// they hold build output and history, not inputs. So is a folder with its own `Cargo.toml`:
    /// another crate, hashed on its own when the package builds from it.
    pub fn tree(&mut self, label: &str, dir: &Path) -> Result<(), PkgError> {
        let mut stack = vec![dir.to_path_buf()];
        let mut files = Vec::new();
        while let Some(d) = stack.pop() {
            let rd = std::fs::read_dir(&d).map_err(|source| PkgError::Io {
                path: d.clone(),
                source,
            })?;
            for e in rd {
                let e = e.map_err(|source| PkgError::Io {
                    path: d.clone(),
                    source,
                })?;
                let path = e.path();
                let ft = e.file_type().map_err(|source| PkgError::Io {
                    path: path.clone(),
                    source,
                })?;
                let name = e.file_name();
                if ft.is_dir() {
                    if name != "target" && name != ".git" && !path.join("Cargo.toml").exists() {
                        stack.push(path);
                    }
                } else {
                    files.push(path);
                }
            }
        }
        files.sort();
        for path in files {
            let rel = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let io = |source| PkgError::Io {
                path: path.clone(),
                source,
            };
            let meta = std::fs::symlink_metadata(&path).map_err(io)?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(io)?;
                self.field(
                    &format!("{label}:symlink:{rel}"),
                    target.to_string_lossy().as_bytes(),
                );
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                let data = std::fs::read(&path).map_err(io)?;
                self.field(
                    &format!("{label}:file:{rel}:{}", if exec { "x" } else { "-" }),
                    &data,
                );
            }
        }
        Ok(())
    }

    pub fn finish(self) -> String {
        let mut hex = hex::encode(self.0.finalize());
        hex.truncate(TAG_LEN);
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag_of(dir: &Path) -> String {
        let mut h = TagHasher::default();
        h.tree("pkg", dir).unwrap();
        h.finish()
    }

    #[test]
    fn tag_follows_contents_names_and_exec_bit_but_not_build_output() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "1").unwrap();
        let t0 = tag_of(d.path());
        assert_eq!(t0.len(), TAG_LEN);
        std::fs::create_dir(d.path().join("target")).unwrap();
        std::fs::write(d.path().join("target/junk"), "x").unwrap();
        assert_eq!(tag_of(d.path()), t0);
        std::fs::create_dir(d.path().join("other-crate")).unwrap();
        std::fs::write(d.path().join("other-crate/Cargo.toml"), "[package]").unwrap();
        assert_eq!(tag_of(d.path()), t0);
        std::fs::set_permissions(d.path().join("a"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let t1 = tag_of(d.path());
        assert_ne!(t1, t0);
        std::fs::write(d.path().join("a"), "2").unwrap();
        assert_ne!(tag_of(d.path()), t1);
        std::fs::rename(d.path().join("a"), d.path().join("b")).unwrap();
        assert_ne!(tag_of(d.path()), t1);
    }

    #[test]
    fn fields_are_unambiguous() {
        let mut a = TagHasher::default();
        a.field("ab", b"c");
        let mut b = TagHasher::default();
        b.field("a", b"bc");
        assert_ne!(a.finish(), b.finish());
    }
}
