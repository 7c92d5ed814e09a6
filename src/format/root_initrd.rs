//! The small initrd of the formats whose root lives on a block device (`kernel+squashfs`,
//! `kernel+iso`): the image's `/init` and the kernel modules that find and mount that device,
//! nothing else. The init sees `root=` on the kernel command line, loads the drivers, waits for
//! the device, mounts it read-only and switches into it (`pkg/init`, `root.rs`); the root holds
//! the whole image, the same `/init` included, so the boot goes on from there as from an initrd.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::initrd::write_initrd;
use super::staged::Staged;
use super::{BootSpec, Compression, FormatError};
use crate::assemble::modules::root_device_modules;
use crate::assemble::tree::{Entry, Kind, Tree};

/// Where the init is, in the image and in the small initrd.
const INIT: &str = "init";

/// The directories the init mounts on before the root is there.
const MOUNT_POINTS: &[&str] = &["dev", "proc", "run", "sys"];

/// What the marker file says, for a person who finds it.
const MARKER_TEXT: &str = "This initrd mounts the root from the block device named by root= on \
the kernel command line (root=/dev/vda rootfstype=squashfs, for instance) and switches into it.\n";

/// The tree of the small initrd for the image `tree` (the phase-1 tree without its boot files).
pub fn small_initrd_tree(tree: &Tree) -> Result<Tree, FormatError> {
    let init = match tree.get(INIT) {
        Some(
            entry @ Entry {
                kind: Kind::File(_),
                ..
            },
        ) => entry.clone(),
        Some(Entry {
            kind: Kind::Hardlink(_),
            ..
        }) => {
            let target = super::cpio::resolve_hardlink(tree, INIT)?;
            let entry = tree.get(&target).cloned();
            entry.ok_or(FormatError::NotAFile(INIT.into()))?
        }
        Some(_) => return Err(FormatError::NotAFile(INIT.into())),
        None => return Err(FormatError::NoInit),
    };
    let mut small = root_device_modules(tree).map_err(|e| FormatError::Io {
        what: "the modules of the small initrd".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    small.insert(INIT, init);
    for dir in MOUNT_POINTS {
        small.insert(dir, Entry::dir(0o755));
    }
    small.insert(
        slipway_layout::ROOT_ON_DEVICE,
        Entry::file(MARKER_TEXT.as_bytes().to_vec(), 0o644),
    );
    Ok(small)
}

/// The four files of `kernel+squashfs` and `kernel+iso`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootFiles {
    pub kernel: PathBuf,
    pub cmdline: PathBuf,
    pub initrd: PathBuf,
    /// `NAME-squashfs.img` or `NAME-root.iso`.
    pub root: PathBuf,
}

impl RootFiles {
    /// The names for `NAME` in `dir`, `root_suffix` being `squashfs.img` or `root.iso`.
    pub fn paths(dir: &Path, name: &str, root_suffix: &str) -> RootFiles {
        // The same kernel, initrd and command line names as kernel+initrd (LinuxKit's).
        let shared = super::kernel_initrd::KernelInitrdFiles::paths(dir, name);
        RootFiles {
            kernel: shared.kernel,
            cmdline: shared.cmdline,
            initrd: shared.initrd,
            root: dir.join(format!("{name}-{root_suffix}")),
        }
    }
}

/// Stages the root image (written by `write_root`), the small initrd, the kernel and its
/// command line, in that order, for the caller to persist once the build is accepted.
pub fn stage_root_format(
    tree: &Tree,
    boot: &BootSpec,
    compression: Compression,
    files: &RootFiles,
    write_root: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> Result<(), FormatError>,
) -> Result<[Staged; 4], FormatError> {
    let small = small_initrd_tree(tree)?;
    let root = Staged::write(&files.root, write_root)?;
    let initrd = Staged::write(&files.initrd, |w| {
        write_initrd(&small, boot.ucode.as_deref(), compression, w)?;
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
    Ok([root, initrd, kernel, cmdline])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_initrd_holds_the_init_the_mount_points_and_the_marker_only() {
        let mut tree = Tree::new();
        tree.insert("init", Entry::file(b"\x7fELF init".to_vec(), 0o755));
        tree.insert(
            "containers/services/web/rootfs/bin/sh",
            Entry::file(b"sh".to_vec(), 0o755),
        );
        tree.insert("etc/hostname", Entry::file(b"x\n".to_vec(), 0o644));
        let small = small_initrd_tree(&tree).unwrap();
        let paths: Vec<&str> = small.iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "dev",
                "etc",
                "etc/slipway",
                "etc/slipway/root-on-device",
                "init",
                "proc",
                "run",
                "sys"
            ]
        );
        assert_eq!(small.get("init").unwrap().mode, 0o755);
    }

    #[test]
    fn an_image_without_an_init_cannot_have_a_small_initrd() {
        let mut tree = Tree::new();
        tree.insert("etc/hostname", Entry::file(b"x\n".to_vec(), 0o644));
        assert!(matches!(small_initrd_tree(&tree), Err(FormatError::NoInit)));
    }
}
