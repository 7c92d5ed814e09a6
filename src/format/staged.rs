//! Outputs written beside their final name and renamed into place only when the whole build
//! agrees: a failed write, a refused size or a blown `--max-size` budget never leaves a
//! half-written or unwanted file under an output's name (an older file of that name stays as it
//! was until the rename replaces it).

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::FormatError;

/// An output in a temporary file in its destination folder. Dropping it removes the file.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    tmp: tempfile::NamedTempFile,
    size: u64,
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
        let tmp = tempfile::Builder::new()
            .prefix(".slipway-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(out_err)?;
        {
            let mut w = BufWriter::new(tmp.as_file());
            write(&mut w)?;
            w.flush().map_err(out_err)?;
        }
        let file = tmp.as_file();
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(out_err)?;
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

    /// Renames the output into place and returns its path.
    pub fn persist(self) -> Result<PathBuf, FormatError> {
        let Staged { path, tmp, .. } = self;
        tmp.persist(&path).map_err(|e| FormatError::Output {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(path)
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
        drop(dropped);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.img"], "a dropped output leaves nothing behind");
    }
}
