//! The `kernel+initrd` format (the default) and `tar-kernel-initrd`.
//!
//! `kernel+initrd` writes three files next to each other, as LinuxKit does: `NAME-kernel`,
//! `NAME-initrd.img` (the microcode cpio, if any, then the compressed newc archive of the tree) and
//! `NAME-cmdline` (no trailing newline). `tar-kernel-initrd` puts the same three, plus a separate
//! `ucode.cpio`, into `NAME-initrd.tar` for tools that want a single artefact. Each file is written
//! to a temporary file in the destination folder and renamed into place, so a failed build never
//! leaves a half-written image under the final name.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::initrd::write_initrd;
use super::staged::Staged;
use super::tar::boot_mtime;
use super::{BootSpec, Compression, FormatError};
use crate::assemble::tree::{Entry, Tree};

/// The files `kernel+initrd` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelInitrdFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: PathBuf,
}

impl KernelInitrdFiles {
    /// The names `kernel+initrd` uses for `NAME` in `dir` (also what `slipway run` looks for).
    pub fn paths(dir: &Path, name: &str) -> KernelInitrdFiles {
        KernelInitrdFiles {
            kernel: dir.join(format!("{name}-kernel")),
            initrd: dir.join(format!("{name}-initrd.img")),
            cmdline: dir.join(format!("{name}-cmdline")),
        }
    }
}

/// Writes `NAME-kernel`, `NAME-initrd.img` and `NAME-cmdline` into `dir`.
pub fn write_kernel_initrd(
    tree: &Tree,
    boot: &BootSpec,
    compression: Compression,
    dir: &Path,
    name: &str,
) -> Result<KernelInitrdFiles, FormatError> {
    let files = KernelInitrdFiles::paths(dir, name);
    for staged in stage_kernel_initrd(tree, boot, compression, dir, name)? {
        staged.persist()?;
    }
    Ok(files)
}

/// Writes the three files of `kernel+initrd` beside their final names (initrd, kernel, command
/// line, in that order), for the caller to persist once the build is accepted.
pub fn stage_kernel_initrd(
    tree: &Tree,
    boot: &BootSpec,
    compression: Compression,
    dir: &Path,
    name: &str,
) -> Result<[Staged; 3], FormatError> {
    let files = KernelInitrdFiles::paths(dir, name);
    // The initrd first: it is the step that can be refused for its size.
    let initrd = Staged::write(&files.initrd, |w| {
        write_initrd(tree, boot.ucode.as_deref(), compression, w)?;
        Ok(())
    })?;
    let kernel = Staged::write(&files.kernel, |w| {
        w.write_all(&boot.kernel)
            .map_err(FormatError::io("the kernel"))
    })?;
    let cmdline = Staged::write(&files.cmdline, |w| {
        w.write_all(boot.cmdline.as_bytes())
            .map_err(FormatError::io("the kernel command line"))
    })?;
    Ok([initrd, kernel, cmdline])
}

/// Writes the `tar-kernel-initrd` stream (`kernel`, `initrd.img`, `cmdline`, and `ucode.cpio`
/// when there is one) to `w` and returns `w`. As in LinuxKit, `initrd.img` here holds no
/// microcode: the microcode travels beside it as `ucode.cpio`.
pub fn write_tar_kernel_initrd<W: Write>(
    tree: &Tree,
    boot: &BootSpec,
    compression: Compression,
    w: W,
) -> Result<W, FormatError> {
    // A tar header needs the member's size before its data, so the initrd is built in memory;
    // it is bounded by the initrd limit and held in RAM by the guest anyway.
    let initrd = write_initrd(tree, None, compression, Vec::new())?;
    let mtime = boot_mtime(tree);
    let member = |data: &[u8]| Entry {
        mtime,
        ..Entry::file(data.to_vec(), 0o644)
    };
    let mut members = vec![
        ("kernel", member(&boot.kernel)),
        ("initrd.img", member(&initrd)),
        ("cmdline", member(boot.cmdline.as_bytes())),
    ];
    if let Some(ucode) = &boot.ucode {
        members.push(("ucode.cpio", member(ucode)));
    }
    let mut builder = tar::Builder::new(w);
    for (path, entry) in &members {
        super::tar::append_entry(&mut builder, path, entry).map_err(|source| FormatError::Io {
            what: format!("{path} into the initrd tar"),
            source,
        })?;
    }
    builder
        .into_inner()
        .map_err(FormatError::io("the end of the initrd tar"))
}

/// Creates `path` through a temporary file in the same folder, renamed into place only when
/// `write` succeeded (and the data was flushed).
pub fn write_file_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&fs::File>) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    Staged::write(path, write)?.persist()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_initrd_leaves_no_files_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new();
        tree.insert("init", Entry::file(b"x".to_vec(), 0o755));
        let result = write_file_atomically(&dir.path().join("out-initrd.img"), |w| {
            super::super::initrd::write_initrd_limited(&tree, None, Compression::None, 10, w)?;
            Ok(())
        });
        assert!(matches!(result, Err(FormatError::InitrdTooLarge { .. })));
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "temporary or partial files left: {left:?}");
    }
}
