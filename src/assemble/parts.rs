//! Which part of the manifest put each path of the root tree there: the kernel and its modules,
//! each init image, each container bundle and volume, the `files` entries. Assembly records it as
//! it lays the tree out; the size report reads it back to say what the image is made of.
//!
//! Later claims win, as later inserts win in the tree: a `files` entry that replaces a file of an
//! init image belongs to the files.

use std::collections::HashMap;

use serde::Serialize;

use super::tree::normalise;

/// What kind of manifest part a [`Part`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartKind {
    /// The kernel binary, its command line and microcode (taken out of the root by the formats
    /// that boot it).
    Kernel,
    /// The kernel image's modules, unpacked into the root.
    Modules,
    /// One `init:` image, unpacked into the root.
    Init,
    Onboot,
    Onshutdown,
    Service,
    Volume,
    /// The manifest's `files` entries.
    Files,
    /// Paths no part placed: the base directories, the pinned manifest.
    Other,
}

impl PartKind {
    /// How the size report names the kind.
    pub fn label(self) -> &'static str {
        match self {
            PartKind::Kernel => "kernel",
            PartKind::Modules => "modules",
            PartKind::Init => "init",
            PartKind::Onboot => "onboot",
            PartKind::Onshutdown => "onshutdown",
            PartKind::Service => "services",
            PartKind::Volume => "volumes",
            PartKind::Files => "files",
            PartKind::Other => "other",
        }
    }
}

/// One part of the manifest and the image it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Part {
    pub kind: PartKind,
    /// The container or volume name; the image reference for kernel, modules and init images.
    pub name: String,
    /// The image, pinned by digest, when the part comes from one.
    pub image: Option<String>,
}

/// The parts of an image and the paths each one claimed.
#[derive(Clone, Debug, Default)]
pub struct Parts {
    parts: Vec<Part>,
    /// Path -> (claim order, part).
    exact: HashMap<String, (u64, usize)>,
    /// Folder prefix (with a trailing `/`) -> (claim order, part), for bundles and volumes.
    prefixes: Vec<(String, u64, usize)>,
    next: u64,
}

impl Parts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a part and returns its index, used to claim paths.
    pub fn add(&mut self, part: Part) -> usize {
        self.parts.push(part);
        self.parts.len() - 1
    }

    /// `part` placed these paths (normalised, relative, as the tree spells them).
    pub fn claim<'a>(&mut self, part: usize, paths: impl IntoIterator<Item = &'a str>) {
        let order = self.bump();
        for path in paths {
            self.exact.insert(normalise(path), (order, part));
        }
    }

    /// `part` owns everything below `folder`, and the folder itself.
    pub fn claim_folder(&mut self, part: usize, folder: &str) {
        let order = self.bump();
        // Paths as the tree keeps them: relative, whatever the caller spelled.
        self.prefixes
            .push((format!("{}/", normalise(folder)), order, part));
    }

    /// The part that last placed `path`, if any did.
    pub fn owner(&self, path: &str) -> Option<usize> {
        let exact = self.exact.get(path).copied();
        let folder = self
            .prefixes
            .iter()
            .filter(|(prefix, ..)| {
                path.starts_with(prefix.as_str()) || prefix.strip_suffix('/') == Some(path)
            })
            .map(|(_, order, part)| (*order, *part))
            .max();
        exact.max(folder).map(|(_, part)| part)
    }

    /// Every part, in the order assembly added them (the report's order).
    pub fn list(&self) -> &[Part] {
        &self.parts
    }

    fn bump(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(kind: PartKind, name: &str) -> Part {
        Part {
            kind,
            name: name.into(),
            image: None,
        }
    }

    #[test]
    fn the_latest_claim_owns_a_path() {
        let mut parts = Parts::new();
        let init = parts.add(part(PartKind::Init, "init"));
        let web = parts.add(part(PartKind::Service, "web"));
        let files = parts.add(part(PartKind::Files, "files"));
        parts.claim(init, ["etc/passwd", "containers/services/web/rootfs/x"]);
        parts.claim_folder(web, "containers/services/web");
        parts.claim(files, ["etc/passwd"]);
        assert_eq!(parts.owner("etc/passwd"), Some(files));
        assert_eq!(parts.owner("containers/services/web/rootfs/x"), Some(web));
        assert_eq!(parts.owner("containers/services/web"), Some(web));
        assert_eq!(parts.owner("containers/services/webby"), None);
        assert_eq!(parts.owner("etc/slipway/manifest.yml"), None);
        assert_eq!(parts.list().len(), 3);
    }
}
