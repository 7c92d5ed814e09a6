//! Outputs written beside their final name and renamed into place only when the whole build
//! agrees: a failed write, a refused size or a blown `--max-size` budget never leaves a
//! half-written or unwanted file under an output's name (an older file of that name stays as it
//! was until the rename replaces it).
//!
//! Where the filesystem allows, the temporary file has no name at all (`O_TMPFILE`) until it is
//! persisted, so a build killed mid-write (Ctrl-C, SIGKILL) leaves nothing behind either. Where it
//! does not, the named temporary file is tracked by [`crate::oci::interrupt`], whose clean-up the
//! CLI runs on SIGINT and SIGTERM.
//!
//! Each output is fsynced before it is renamed, and its folder after the renames, so that a crash
//! just after a build shows either the old outputs or the complete new ones.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::FormatError;

/// An output in a temporary file in its destination folder. Dropping it removes the file.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    tmp: Temp,
    size: u64,
}

#[derive(Debug)]
enum Temp {
    /// An `O_TMPFILE` file: no name until [`Staged::persist`] links it into the folder.
    Unnamed {
        dir: PathBuf,
        file: fs::File,
    },
    Named(tempfile::NamedTempFile, crate::oci::interrupt::Tracked),
}

impl Temp {
    fn new(dir: &Path) -> std::io::Result<Temp> {
        use rustix::fs::{Mode, OFlags};
        // Linking an unnamed file goes through /proc; without it, fall back to a named file.
        if Path::new("/proc/self/fd").is_dir()
            && let Ok(fd) = rustix::fs::openat(
                rustix::fs::CWD,
                dir,
                OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        {
            return Ok(Temp::Unnamed {
                dir: dir.to_path_buf(),
                file: fs::File::from(fd),
            });
        }
        let (tmp, tracked) = crate::oci::interrupt::track_file(
            || {
                tempfile::Builder::new()
                    .prefix(".slipway-")
                    .suffix(".tmp")
                    .tempfile_in(dir)
            },
            |f| f.path().to_path_buf(),
        )?;
        Ok(Temp::Named(tmp, tracked))
    }

    fn file(&self) -> &fs::File {
        match self {
            Temp::Unnamed { file, .. } => file,
            Temp::Named(tmp, _) => tmp.as_file(),
        }
    }

    fn persist(self, path: &Path) -> std::io::Result<()> {
        match self {
            Temp::Named(tmp, _tracked) => tmp.persist(path).map(|_| ()).map_err(|e| e.error),
            Temp::Unnamed { dir, file } => {
                use std::os::fd::AsRawFd;
                // Give it a hidden name beside the output, then rename it over the output: the
                // output's name never shows a partial file.
                let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
                for attempt in 0u32.. {
                    let name = dir.join(format!(".slipway-{}-{attempt}.tmp", std::process::id()));
                    // The name exists only between these two calls; an interrupt there removes it.
                    let linked = crate::oci::interrupt::track_file(
                        || {
                            rustix::fs::linkat(
                                rustix::fs::CWD,
                                proc_path.as_str(),
                                rustix::fs::CWD,
                                &name,
                                rustix::fs::AtFlags::SYMLINK_FOLLOW,
                            )
                            .map_err(std::io::Error::from)
                        },
                        |_| name.clone(),
                    );
                    match linked {
                        Ok(((), _tracked)) => {
                            return fs::rename(&name, path).inspect_err(|_| {
                                let _ = fs::remove_file(&name);
                            });
                        }
                        Err(e)
                            if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 1000 =>
                        {
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                unreachable!("the loop returns")
            }
        }
    }
}

impl Staged {
    /// Writes an output meant for `path` into a temporary file beside it. The result is readable
    /// by everyone (0644), as a build output should be.
    pub fn write(
        path: &Path,
        write: impl FnOnce(&mut BufWriter<&fs::File>) -> Result<(), FormatError>,
    ) -> Result<Staged, FormatError> {
        let out_err = |source| FormatError::Output {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = Temp::new(dir).map_err(out_err)?;
        {
            let mut w = BufWriter::new(tmp.file());
            write(&mut w)?;
            w.flush().map_err(out_err)?;
        }
        let file = tmp.file();
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(out_err)?;
        file.sync_all().map_err(out_err)?;
        let size = file.metadata().map_err(out_err)?.len();
        Ok(Staged {
            path: path.to_path_buf(),
            tmp,
            size,
        })
    }

    /// The name the output gets when it is persisted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes, as written.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Renames the output into place, syncs its folder and returns its path.
    pub fn persist(self) -> Result<PathBuf, FormatError> {
        Ok(Staged::persist_all(vec![self])?.remove(0))
    }

    /// Renames all outputs into place, then syncs each folder once so the renames are durable.
    /// An interrupt (see [`crate::oci::interrupt`]) waits for the renames to end.
    pub fn persist_all(outputs: Vec<Staged>) -> Result<Vec<PathBuf>, FormatError> {
        crate::oci::interrupt::uninterrupted(|| {
            let mut written = Vec::with_capacity(outputs.len());
            let mut dirs: Vec<PathBuf> = Vec::new();
            for Staged { path, tmp, .. } in outputs {
                tmp.persist(&path).map_err(|source| FormatError::Output {
                    path: path.clone(),
                    source,
                })?;
                let dir = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
                written.push(path);
            }
            for dir in dirs {
                fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|source| FormatError::Output { path: dir, source })?;
            }
            Ok(written)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_output_appears_only_when_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.img");
        let staged = Staged::write(&path, |w| {
            w.write_all(b"12345").map_err(FormatError::io("test data"))
        })
        .unwrap();
        assert_eq!(staged.size(), 5);
        assert!(!path.exists());
        assert_eq!(staged.persist().unwrap(), path);
        assert_eq!(fs::read(&path).unwrap(), b"12345");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );

        let dropped = Staged::write(&dir.path().join("other.img"), |_| Ok(())).unwrap();
        // Until it is persisted, a staged output has no name in the folder (O_TMPFILE).
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(dropped);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.img"], "a dropped output leaves nothing behind");
    }
}
