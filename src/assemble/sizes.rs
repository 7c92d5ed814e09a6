//! The size report: what an image is made of, part by part, and what its output files weigh.
//!
//! Sizes are bytes of file data, read from the root tree after identical files were shared: a
//! file stored once and linked from several places (two containers of one image) counts fully in
//! every part that holds it, and as *shared* in every part after the first, so the parts' sizes
//! less their shared bytes add up to what the image really carries. The kernel row is the kernel
//! binary (with its command line and microcode), which the boot formats keep outside the root.
//!
//! `slipway build` prints the report as a table on standard error and puts it in its `--json`
//! document; `--max-size` compares the output files against a budget.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use bytesize::ByteSize;
use serde::Serialize;

use super::parts::{Part, PartKind, Parts};
use super::tree::{Kind, Tree, normalise};

/// The report of one build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SizeReport {
    /// One row per part of the manifest, in manifest order, then `other` (paths no part placed:
    /// the base directories, the pinned manifest) when it holds any data.
    pub parts: Vec<PartSize>,
    /// File data in the root, each shared file counted once (the kernel row is not included).
    pub root_bytes: u64,
    /// File data that sharing saved: the same bytes would otherwise be stored again.
    pub shared_bytes: u64,
    /// The files the build wrote.
    pub outputs: Vec<OutputSize>,
    /// The budget `--max-size` set for each output in `outputs` marked `budgeted`.
    pub max_size: Option<u64>,
}

/// One part's row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartSize {
    #[serde(flatten)]
    pub part: Part,
    /// Paths holding file data (files and their hard links).
    pub files: u64,
    /// Its file data, each inode once.
    pub bytes: u64,
    /// Of `bytes`, what an earlier row already holds (stored once, linked here).
    pub shared: u64,
}

/// One output file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutputSize {
    /// The file as written (`-` for standard output).
    pub path: String,
    /// The format that wrote it.
    pub format: String,
    pub bytes: u64,
    /// Whether `--max-size` applies to it: the initrd of `kernel+initrd`, and the one file of
    /// every other format (the kernel and command line are not the image's content).
    pub budgeted: bool,
}

impl SizeReport {
    /// Measures `tree` (as assembled, boot files included) by the parts that placed its paths.
    pub fn measure(tree: &Tree, parts: &Parts) -> SizeReport {
        let other = parts.list().len();
        // Per row: the paths holding data, and each inode (the file a link leads to) with its size.
        let mut rows: BTreeMap<usize, (u64, BTreeMap<String, u64>)> = BTreeMap::new();
        for (path, entry) in tree.iter() {
            let inode = match &entry.kind {
                Kind::File(data) => Some((path.to_string(), data.len() as u64)),
                Kind::Hardlink(_) => linked_file(tree, path),
                _ => None,
            };
            let Some((inode, size)) = inode else {
                continue;
            };
            let row = rows.entry(parts.owner(path).unwrap_or(other)).or_default();
            row.0 += 1;
            row.1.insert(inode, size);
        }
        let mut seen: HashSet<String> = HashSet::new();
        let mut report = SizeReport {
            parts: Vec::new(),
            root_bytes: 0,
            shared_bytes: 0,
            outputs: Vec::new(),
            max_size: None,
        };
        let mut row = |part: Part, files: u64, inodes: BTreeMap<String, u64>| {
            let bytes = inodes.values().sum();
            let shared = inodes
                .into_iter()
                .filter(|(inode, _)| !seen.insert(inode.clone()))
                .map(|(_, size)| size)
                .sum();
            if part.kind != PartKind::Kernel {
                report.root_bytes += bytes - shared;
                report.shared_bytes += shared;
            }
            report.parts.push(PartSize {
                part,
                files,
                bytes,
                shared,
            });
        };
        for (i, part) in parts.list().iter().enumerate() {
            let (files, inodes) = rows.remove(&i).unwrap_or_default();
            row(part.clone(), files, inodes);
        }
        if let Some((files, inodes)) = rows.remove(&other) {
            let part = Part {
                kind: PartKind::Other,
                name: "other".into(),
                image: None,
            };
            row(part, files, inodes);
        }
        report
    }

    /// Outputs over the budget, if a budget was set.
    pub fn over_budget(&self) -> Vec<&OutputSize> {
        match self.max_size {
            Some(max) => self
                .outputs
                .iter()
                .filter(|o| o.budgeted && o.bytes > max)
                .collect(),
            None => Vec::new(),
        }
    }
}

/// The file a hard link leads to and its size, through chains of links.
fn linked_file(tree: &Tree, path: &str) -> Option<(String, u64)> {
    let mut current = path.to_string();
    for _ in 0..=tree.len() {
        match &tree.get(&current)?.kind {
            Kind::Hardlink(target) => current = normalise(target),
            Kind::File(data) => return Some((current, data.len() as u64)),
            _ => return None,
        }
    }
    None
}

fn size(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

/// `docker.io/slipway/busybox:<64 hex>@sha256:...` reads as `slipway/busybox:0123456789ab`:
/// the table names the image, the JSON document pins it.
fn short_image(reference: &str) -> String {
    let reference = reference.split('@').next().unwrap_or(reference);
    let reference = reference.strip_prefix("docker.io/").unwrap_or(reference);
    match reference.rsplit_once(':') {
        Some((name, tag)) if tag.len() > 16 && !tag.contains('/') => {
            format!("{name}:{}", &tag[..12])
        }
        _ => reference.to_string(),
    }
}

impl fmt::Display for SizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines: Vec<[String; 4]> = vec![[
            "PART".into(),
            "IMAGE".into(),
            "SIZE".into(),
            "SHARED".into(),
        ]];
        for p in &self.parts {
            let name = match p.part.kind {
                PartKind::Kernel
                | PartKind::Modules
                | PartKind::Init
                | PartKind::Files
                | PartKind::Other => p.part.kind.label().to_string(),
                kind => format!("{}/{}", kind.label(), p.part.name),
            };
            let image = p.part.image.as_deref().map(short_image).unwrap_or_default();
            let shared = match p.shared {
                0 => String::new(),
                s => size(s),
            };
            lines.push([name, image, size(p.bytes), shared]);
        }
        lines.push([
            "root".into(),
            "shared files counted once".into(),
            size(self.root_bytes),
            match self.shared_bytes {
                0 => String::new(),
                s => format!("saved {}", size(s)),
            },
        ]);
        for o in &self.outputs {
            let budget = match (self.max_size, o.budgeted) {
                (Some(max), true) if o.bytes > max => format!("over {}", size(max)),
                (Some(max), true) => format!("within {}", size(max)),
                _ => String::new(),
            };
            lines.push([o.path.clone(), o.format.clone(), size(o.bytes), budget]);
        }
        let width = |i: usize| lines.iter().map(|l| l[i].len()).max().unwrap_or(0);
        let (w0, w1, w2) = (width(0), width(1), width(2));
        for l in &lines {
            let line = format!("{:w0$}  {:w1$}  {:>w2$}  {}", l[0], l[1], l[2], l[3]);
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::tree::Entry;

    fn part(kind: PartKind, name: &str, image: &str) -> Part {
        Part {
            kind,
            name: name.into(),
            image: Some(image.into()),
        }
    }

    #[test]
    fn shared_files_count_once_and_show_as_shared_in_later_parts() {
        let mut tree = Tree::new();
        tree.insert("boot/kernel", Entry::file(vec![0; 1000], 0o644));
        tree.insert("init", Entry::file(vec![1; 300], 0o755));
        tree.insert(
            "containers/services/a/rootfs/bin/busybox",
            Entry::file(vec![2; 500], 0o755),
        );
        for service in ["a", "b"] {
            tree.insert(
                &format!("containers/services/{service}/rootfs/bin/sh"),
                Entry {
                    kind: Kind::Hardlink("containers/services/a/rootfs/bin/busybox".into()),
                    ..Entry::file(vec![], 0o755)
                },
            );
        }
        tree.insert("etc/slipway/manifest.yml", Entry::file(vec![3; 7], 0o644));
        let mut parts = Parts::new();
        let kernel = parts.add(part(PartKind::Kernel, "k", "slipway/kernel:1"));
        parts.claim(kernel, ["boot/kernel"]);
        let init = parts.add(part(PartKind::Init, "i", "slipway/init:1"));
        parts.claim(init, ["init"]);
        for name in ["a", "b"] {
            let p = parts.add(part(PartKind::Service, name, "slipway/busybox:1"));
            parts.claim_folder(p, &format!("containers/services/{name}"));
        }
        let report = SizeReport::measure(&tree, &parts);
        let rows: Vec<_> = report
            .parts
            .iter()
            .map(|p| (p.part.name.as_str(), p.files, p.bytes, p.shared))
            .collect();
        assert_eq!(
            rows,
            [
                ("k", 1, 1000, 0),
                ("i", 1, 300, 0),
                ("a", 2, 500, 0),
                ("b", 1, 500, 500),
                ("other", 1, 7, 0),
            ]
        );
        assert_eq!(report.root_bytes, 807);
        assert_eq!(report.shared_bytes, 500);
        let table = report.to_string();
        assert!(table.contains("services/b"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("services/b") && l.ends_with("500 B  500 B")),
            "{table}"
        );
    }

    #[test]
    fn the_budget_applies_to_budgeted_outputs_only() {
        let mut report = SizeReport::measure(&Tree::new(), &Parts::new());
        report.outputs = vec![
            OutputSize {
                path: "x-kernel".into(),
                format: "kernel+initrd".into(),
                bytes: 9_000_000,
                budgeted: false,
            },
            OutputSize {
                path: "x-initrd.img".into(),
                format: "kernel+initrd".into(),
                bytes: 4_000_000,
                budgeted: true,
            },
        ];
        report.max_size = Some(5_000_000);
        assert!(report.over_budget().is_empty());
        report.max_size = Some(3_000_000);
        assert_eq!(report.over_budget()[0].path, "x-initrd.img");
        assert!(report.to_string().contains("over 2.9 MiB"), "{report}");
    }

    #[test]
    fn long_package_tags_are_shortened_in_the_table() {
        let tag = "a".repeat(64);
        assert_eq!(
            short_image(&format!("docker.io/slipway/busybox:{tag}@sha256:{tag}")),
            "slipway/busybox:aaaaaaaaaaaa"
        );
        assert_eq!(
            short_image("localhost:5000/x/y:1.2"),
            "localhost:5000/x/y:1.2"
        );
    }
}
