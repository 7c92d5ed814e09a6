//! `docker`: `NAME.docker`, the phase-1 root tree as a tar that `docker import` turns into an
//! image (`docker import NAME.docker IMAGE`, then `docker run IMAGE CMD`).
//!
//! Unlike the `tar` format it leaves out `boot/` (kernel, command line, microcode): a container
//! has no use for them, and `docker import` wants a root filesystem. Unlike LinuxKit's `docker`
//! output it carries no `Dockerfile`: `docker import` does not read one, and a file at `/` would
//! only land in the container. An entrypoint is set at import time if wanted
//! (`docker import --change 'CMD ["/init"]'`). The tar members are written as the `tar` format
//! writes them (fixed owners and times), so the output is reproducible and streams (`-o -`).

use std::io::Write;

use super::FormatError;
use super::tar::append_entry;
use crate::assemble::tree::Tree;

/// The output file's suffix after `NAME`.
pub const SUFFIX: &str = ".docker";

/// Writes `tree` as a `docker import` tar to `w` and returns `w`.
pub fn write_docker<W: Write>(tree: &Tree, w: W) -> Result<W, FormatError> {
    let mut builder = tar::Builder::new(w);
    for (path, entry) in tree.iter() {
        if path.is_empty() {
            continue;
        }
        append_entry(&mut builder, path, entry).map_err(|source| FormatError::Io {
            what: format!("{path} into the docker tar"),
            source,
        })?;
    }
    builder
        .into_inner()
        .map_err(FormatError::io("the end of the docker tar"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::tree::Entry;

    #[test]
    fn the_docker_tar_holds_the_tree_and_nothing_else() {
        let mut tree = Tree::new();
        tree.insert("bin/busybox", Entry::file(b"elf".to_vec(), 0o755));
        tree.insert("etc/hostname", Entry::file(b"x\n".to_vec(), 0o644));
        let bytes = write_docker(&tree, Vec::new()).unwrap();
        assert_eq!(bytes, write_docker(&tree, Vec::new()).unwrap());
        let mut archive = tar::Archive::new(&bytes[..]);
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(paths, ["bin/", "bin/busybox", "etc/", "etc/hostname"]);
    }
}
