//! Merging several manifests in order, LinuxKit's way: kernel fields from later files win, every
//! list is concatenated. The result remembers which file and entry each list item came from, so
//! that errors found after the merge still point at the line that caused them.

use super::path::{FieldPath, Seg};
use super::schema::{Kernel, Manifest, Trust};
use super::source::Source;

/// One parsed file.
#[derive(Clone, Debug)]
pub struct Document {
    pub source: Source,
    pub manifest: Manifest,
}

/// Several documents merged into one manifest.
#[derive(Clone, Debug)]
pub struct Merged {
    pub manifest: Manifest,
    pub documents: Vec<Document>,
    /// For each list section, the (document, index in that document) of every merged item.
    origins: Vec<(&'static str, Vec<(usize, usize)>)>,
}

const SECTIONS: [&str; 6] = [
    "init",
    "onboot",
    "onshutdown",
    "services",
    "files",
    "volumes",
];

impl Merged {
    /// The source and the file-local path of the value at a merged `path`.
    pub fn locate(&self, path: &FieldPath) -> (&Source, FieldPath) {
        let last = self.documents.len().saturating_sub(1);
        let Some(section) = path.section() else {
            return (&self.documents[last].source, path.clone());
        };
        if section == "kernel" {
            // The last file that sets the field (or any kernel key) is the one that counts.
            let field = match path.0.get(1) {
                Some(Seg::Key(k)) => Some(k.as_str()),
                _ => None,
            };
            let doc = self
                .documents
                .iter()
                .rposition(|d| {
                    d.manifest
                        .kernel
                        .as_ref()
                        .is_some_and(|k| field.is_none_or(|f| kernel_has(k, f)))
                })
                .unwrap_or(last);
            return (&self.documents[doc].source, path.clone());
        }
        let items = self
            .origins
            .iter()
            .find(|(s, _)| *s == section)
            .map(|(_, v)| v);
        match (items, path.0.get(1)) {
            (Some(items), Some(Seg::Index(i))) if *i < items.len() => {
                let (doc, local) = items[*i];
                let mut p = path.clone();
                p.0[1] = Seg::Index(local);
                (&self.documents[doc].source, p)
            }
            _ => (&self.documents[last].source, path.clone()),
        }
    }
}

fn kernel_has(k: &Kernel, field: &str) -> bool {
    match field {
        "image" => k.image.is_some(),
        "cmdline" => k.cmdline.is_some(),
        "binary" => k.binary.is_some(),
        "tar" => k.tar.is_some(),
        "ucode" => k.ucode.is_some(),
        "x-slipway" => k.slipway.is_some(),
        _ => false,
    }
}

/// Merges documents in order.
pub fn merge(documents: Vec<Document>) -> Merged {
    let mut out = Manifest::default();
    let mut origins: Vec<(&'static str, Vec<(usize, usize)>)> =
        SECTIONS.iter().map(|s| (*s, Vec::new())).collect();
    for (d, doc) in documents.iter().enumerate() {
        let m = &doc.manifest;
        if let Some(k) = &m.kernel {
            out.kernel = Some(merge_kernel(out.kernel.take(), k));
        }
        let lens = [
            m.init.len(),
            m.onboot.len(),
            m.onshutdown.len(),
            m.services.len(),
            m.files.len(),
            m.volumes.len(),
        ];
        for ((_, items), len) in origins.iter_mut().zip(lens) {
            items.extend((0..len).map(|i| (d, i)));
        }
        out.init.extend(m.init.iter().cloned());
        out.onboot.extend(m.onboot.iter().cloned());
        out.onshutdown.extend(m.onshutdown.iter().cloned());
        out.services.extend(m.services.iter().cloned());
        out.files.extend(m.files.iter().cloned());
        out.volumes.extend(m.volumes.iter().cloned());
        if let Some(t) = &m.trust {
            let acc = out.trust.get_or_insert_with(Trust::default);
            acc.image.extend(t.image.iter().cloned());
            acc.org.extend(t.org.iter().cloned());
        }
    }
    Merged {
        manifest: out,
        documents,
        origins,
    }
}

/// `image`, `cmdline` and `binary` are replaced by a later non-empty value; `tar`, `ucode` and
/// `x-slipway` by a later value that is present at all (so `ucode: ""` clears it, as in LinuxKit).
fn merge_kernel(base: Option<Kernel>, next: &Kernel) -> Kernel {
    let mut k = base.unwrap_or_default();
    let non_empty = |v: &Option<String>| v.as_ref().filter(|s| !s.is_empty()).cloned();
    if let Some(v) = non_empty(&next.image) {
        k.image = Some(v);
    }
    if let Some(v) = non_empty(&next.cmdline) {
        k.cmdline = Some(v);
    }
    if let Some(v) = non_empty(&next.binary) {
        k.binary = Some(v);
    }
    if next.tar.is_some() {
        k.tar = next.tar.clone();
    }
    if next.ucode.is_some() {
        k.ucode = next.ucode.clone();
    }
    if next.slipway.is_some() {
        k.slipway = next.slipway.clone();
    }
    k
}
