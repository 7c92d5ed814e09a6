//! Which kernel modules an image ships.
//!
//! The kernel package carries every module of Debian's generic kernel (hundreds of megabytes);
//! an image needs a few dozen. Once the root tree is laid out (kernel tar, init images, `files:`),
//! [`trim`] keeps the modules of [`DEFAULT_MODULES`] that the kernel has, those the manifest's
//! `kernel: x-slipway: modules:` list adds, and those the image's `/etc/modules` and
//! `/etc/modules-load.d/*.conf` name — each with what it needs (the `modules.dep` closure and the
//! `pre:` soft dependencies) — and rewrites `modules.dep`, `modules.alias` and the other text
//! indexes for what is left, so that the init (and kmod, if an image brings it) never looks for
//! a module that is not there. A default module the kernel lacks is skipped: the default set
//! covers kernels of several configurations. A module a person named that the kernel lacks (and
//! does not have built in) fails the build, naming the module and where it was named.

use std::collections::{BTreeMap, BTreeSet};

use super::root::{AssembleError, manifest_error};
use super::tree::{Entry, Kind, Tree, normalise};
use crate::manifest::{Merged, ModuleSelection, path::FieldPath};
use crate::pkg::modules as modinfo;

/// Drivers for the machines an image is likely to boot on, and the filesystems Slipway's formats
/// and the init use. Names as the kernel spells them (`_`, not `-`).
pub const DEFAULT_MODULES: &[&str] = &[
    // QEMU/KVM, Firecracker, cloud hypervisors built on virtio.
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "virtio_balloon",
    // Disks and CD-ROMs of virtual and real machines.
    "nvme",
    "ahci",
    "ata_piix",
    "sd_mod",
    "sr_mod",
    "cdrom",
    // Hyper-V and Azure.
    "hv_vmbus",
    "hv_storvsc",
    "hv_netvsc",
    "hv_utils",
    "hv_balloon",
    "hyperv_keyboard",
    // VMware.
    "vmxnet3",
    "vmw_pvscsi",
    "vmw_balloon",
    // Xen and older EC2 instances.
    "xen_blkfront",
    "xen_netfront",
    // Network cards: QEMU's and VirtualBox's defaults, EC2 (ena), Google Cloud (gve).
    "e1000",
    "e1000e",
    "ena",
    "gve",
    // USB disks and keyboards on bare metal.
    "xhci_pci",
    "ehci_pci",
    "usb_storage",
    "uas",
    "usbhid",
    "hid_generic",
    // Filesystems: the disk formats (ext4, vfat for EFI, isofs, squashfs) and containers
    // (overlay). vfat needs the code page and character set it mounts with by default.
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_ascii",
    "nls_utf8",
    "isofs",
    "squashfs",
    "overlay",
];

/// What the small initrd of `kernel+squashfs` and `kernel+iso` needs to find and mount a root
/// on a block device: the disk and CD-ROM controllers of virtual machines and clouds (each with
/// its dependencies, `scsi_mod` under `sd_mod`, `nvme_core` under `nvme`, `libata` under `ahci`)
/// and the two root filesystems. Everything else loads from the root once it is mounted.
pub const ROOT_DEVICE_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "sr_mod",
    "nvme",
    "ahci",
    "ata_piix",
    "hv_storvsc",
    "vmw_pvscsi",
    "xen_blkfront",
    "squashfs",
    "isofs",
];

/// The modules directories of `tree` cut down to [`ROOT_DEVICE_MODULES`] (those the kernel has)
/// and what they need, with their indexes rewritten: the `lib/modules` part of the small initrd.
/// Modules built into the kernel need nothing; a kernel without a modules tree gives an empty
/// tree.
pub fn root_device_modules(tree: &Tree) -> Result<Tree, AssembleError> {
    let mut small = Tree::new();
    for dir in module_dirs(tree) {
        let index = Index::read(tree, &dir)?;
        let wanted = ROOT_DEVICE_MODULES
            .iter()
            .flat_map(|name| index.resolve(name).unwrap_or_default())
            .collect();
        let keep = index.closure(wanted);
        if let Some(entry) = tree.get(&dir) {
            small.insert(&dir, entry.clone());
        }
        for (path, entry) in tree.children(&dir) {
            small.insert(path, entry.clone());
        }
        index.write(&mut small, &dir, &keep);
    }
    Ok(small)
}

/// Where the image names modules to load at boot (read by the init, and by systemd-modules-load
/// for the directory).
const ETC_MODULES: &str = "etc/modules";
const ETC_MODULES_LOAD_D: &str = "etc/modules-load.d";

/// Index files rewritten here; depmod's binary indexes are dropped instead, since they would
/// describe modules that are no longer there and kmod prefers them over the text files.
const REWRITTEN: &[&str] = &[
    "modules.dep",
    "modules.alias",
    "modules.softdep",
    "modules.symbols",
    "modules.devname",
    "modules.order",
];

/// A module someone asked for by name, and where they did.
struct Named {
    name: String,
    origin: Origin,
}

enum Origin {
    /// `kernel.x-slipway.modules[i]`.
    Manifest(FieldPath),
    /// A line of a file in the image; `entry` is the `files:` entry that wrote it, if any.
    File {
        path: String,
        line: usize,
        entry: Option<usize>,
    },
}

/// Trims the modules directories of `tree` (`lib/modules/<release>/`) to what the image uses.
pub(super) fn trim(tree: &mut Tree, merged: &Merged) -> Result<(), AssembleError> {
    let selection = merged
        .manifest
        .kernel
        .as_ref()
        .and_then(|k| k.slipway.as_ref())
        .and_then(|x| x.modules.clone());
    let list_path = FieldPath::root()
        .key("kernel")
        .key("x-slipway")
        .key("modules");
    let mut named = Vec::new();
    let mut all = false;
    match &selection {
        Some(ModuleSelection::Set(s)) => all = s == "all",
        Some(ModuleSelection::List(names)) => {
            named.extend(names.iter().enumerate().map(|(i, name)| Named {
                name: name.clone(),
                origin: Origin::Manifest(list_path.index(i)),
            }))
        }
        None => {}
    }
    named.extend(etc_modules(tree, merged));

    let releases = module_dirs(tree);
    if releases.is_empty() {
        // Without a modules tree nothing can be checked: the kernel may have them built in.
        if let Some(ModuleSelection::List(names)) = &selection
            && !names.is_empty()
        {
            return Err(manifest_error(
                merged,
                &list_path,
                "the kernel image brings no modules (kernel.tar) to choose from".into(),
            ));
        }
        return Ok(());
    }
    for dir in releases {
        let index = Index::read(tree, &dir)?;
        let mut wanted = BTreeSet::new();
        for n in &named {
            match index.resolve(&n.name) {
                Some(found) => wanted.extend(found),
                None => return Err(missing(merged, &dir, n)),
            }
        }
        if all {
            continue;
        }
        for name in DEFAULT_MODULES {
            wanted.extend(index.resolve(name).unwrap_or_default());
        }
        let keep = index.closure(wanted);
        index.write(tree, &dir, &keep);
    }
    Ok(())
}

/// Whether [`trim`] reads modules' contents: for a modules directory without `modules.dep`,
/// whose indexes it generates from the modules themselves.
pub(super) fn reads_module_contents(tree: &Tree) -> bool {
    module_dirs(tree).iter().any(|dir| {
        !matches!(
            tree.get(&format!("{dir}/modules.dep")).map(|e| &e.kind),
            Some(Kind::File(_))
        )
    })
}

/// `lib/modules/<release>` (and the `/usr` spelling) directories that hold a kernel's modules.
fn module_dirs(tree: &Tree) -> Vec<String> {
    let mut dirs = Vec::new();
    for base in ["lib/modules", "usr/lib/modules"] {
        if !matches!(tree.get(base).map(|e| &e.kind), Some(Kind::Dir)) {
            continue;
        }
        for (path, entry) in tree.children(base) {
            let rel = &path[base.len() + 1..];
            if !rel.contains('/') && entry.kind == Kind::Dir {
                dirs.push(path.to_string());
            }
        }
    }
    dirs
}

/// The modules `/etc/modules` and `/etc/modules-load.d/*.conf` name: one per line, `#` and `;`
/// start comments (modules-load.d(5)); `/etc/modules` may give parameters after the name.
fn etc_modules(tree: &Tree, merged: &Merged) -> Vec<Named> {
    let mut files: Vec<String> = vec![ETC_MODULES.to_string()];
    files.extend(
        tree.children(ETC_MODULES_LOAD_D)
            .map(|(p, _)| p)
            .filter(|p| p.ends_with(".conf") && !p[ETC_MODULES_LOAD_D.len() + 1..].contains('/'))
            .map(str::to_string),
    );
    let mut named = Vec::new();
    for path in files {
        let Some(Kind::File(data)) = tree.get(&path).map(|e| &e.kind) else {
            continue;
        };
        // The last `files:` entry for a path is the one that wrote it.
        let entry = merged
            .manifest
            .files
            .iter()
            .rposition(|f| normalise(&f.path) == path);
        for (i, line) in String::from_utf8_lossy(data).lines().enumerate() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            if let Some(name) = line.split_whitespace().next() {
                named.push(Named {
                    name: name.to_string(),
                    origin: Origin::File {
                        path: path.clone(),
                        line: i + 1,
                        entry,
                    },
                });
            }
        }
    }
    named
}

/// The error for a named module the kernel has neither as a module nor built in.
fn missing(merged: &Merged, dir: &str, n: &Named) -> AssembleError {
    let release = dir.rsplit('/').next().unwrap_or(dir);
    let lacks = format!("kernel {release} has no module `{}`", n.name);
    match &n.origin {
        Origin::Manifest(at) => manifest_error(merged, at, lacks),
        Origin::File {
            path,
            line,
            entry: Some(i),
        } => manifest_error(
            merged,
            &FieldPath::root().key("files").index(*i),
            format!("/{path} line {line}: {lacks}"),
        ),
        Origin::File {
            path,
            line,
            entry: None,
        } => AssembleError::Modules(format!("/{path} line {line} (from an image): {lacks}")),
    }
}

/// What depmod's text indexes say about one kernel's modules.
struct Index {
    /// Module name -> its path (relative to the release directory) and the paths it needs.
    deps: BTreeMap<String, (String, Vec<String>)>,
    /// (pattern, module) from `modules.alias`.
    aliases: Vec<(String, String)>,
    /// Module -> the modules (or aliases) its `softdep ... pre:` names.
    pre: BTreeMap<String, Vec<String>>,
    /// Modules compiled into the kernel (`modules.builtin`).
    builtin: BTreeSet<String>,
}

/// The kernel's spelling of a module name or path: `kernel/drivers/block/virtio-blk.ko` is
/// `virtio_blk`, as are `virtio-blk.ko.xz` and `virtio-blk`.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = ["", ".gz", ".xz", ".zst"]
        .iter()
        .find_map(|c| base.strip_suffix(&format!(".ko{c}")))
        .unwrap_or(base);
    base.replace('-', "_")
}

pub(super) fn is_module_file(path: &str) -> bool {
    [".ko", ".ko.gz", ".ko.xz", ".ko.zst"]
        .iter()
        .any(|s| path.ends_with(s))
}

fn text(tree: &Tree, path: &str) -> Option<String> {
    match tree.get(path).map(|e| &e.kind) {
        Some(Kind::File(data)) => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

impl Index {
    /// Reads the indexes of `dir`; a kernel image without `modules.dep` gets it generated from
    /// the modules' `.modinfo`, as Slipway's own kernel package does.
    fn read(tree: &Tree, dir: &str) -> Result<Self, AssembleError> {
        let file = |name: &str| text(tree, &format!("{dir}/{name}"));
        let (dep, alias, softdep) = match file("modules.dep") {
            Some(dep) => (
                dep,
                file("modules.alias").unwrap_or_default(),
                file("modules.softdep").unwrap_or_default(),
            ),
            None => {
                let mut modules = Tree::new();
                for (p, e) in tree.children(dir) {
                    modules.insert(&p[dir.len() + 1..], e.clone());
                }
                let index = modinfo::index_tree(&modules)
                    .map_err(|e| AssembleError::Modules(e.to_string()))?;
                (index.dep, index.alias, index.softdep)
            }
        };
        let mut deps = BTreeMap::new();
        for line in dep.lines() {
            if let Some((module, needs)) = line.split_once(':') {
                let module = module.trim();
                deps.insert(
                    module_name(module),
                    (
                        module.to_string(),
                        needs.split_whitespace().map(str::to_string).collect(),
                    ),
                );
            }
        }
        let aliases = alias
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                match (w.next(), w.next(), w.next()) {
                    (Some("alias"), Some(pattern), Some(module)) => {
                        Some((pattern.to_string(), module_name(module)))
                    }
                    _ => None,
                }
            })
            .collect();
        let mut pre: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in softdep.lines() {
            let mut w = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (w.next(), w.next()) else {
                continue;
            };
            let mut in_pre = false;
            for word in w {
                match word {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    _ if in_pre => pre
                        .entry(module_name(module))
                        .or_default()
                        .push(word.to_string()),
                    _ => {}
                }
            }
        }
        let builtin = file("modules.builtin")
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
        Ok(Index {
            deps,
            aliases,
            pre,
            builtin,
        })
    }

    /// The modules a name stands for: the module itself, nothing if it is built in, or the
    /// modules that have it as an alias (`fs-overlay`). `None` if the kernel knows no such name.
    fn resolve(&self, name: &str) -> Option<Vec<String>> {
        let normal = module_name(name);
        if self.deps.contains_key(&normal) {
            return Some(vec![normal]);
        }
        if self.builtin.contains(&normal) {
            return Some(Vec::new());
        }
        let found: Vec<String> = self
            .aliases
            .iter()
            .filter(|(pattern, _)| modinfo::alias_matches(pattern, name))
            .map(|(_, module)| module.clone())
            .collect();
        (!found.is_empty()).then_some(found)
    }

    /// `wanted` and everything it needs: hard dependencies and `pre:` soft dependencies, which
    /// modprobe loads first (ext4's crc32c, for instance).
    fn closure(&self, wanted: BTreeSet<String>) -> BTreeSet<String> {
        let mut keep = BTreeSet::new();
        let mut todo: Vec<String> = wanted.into_iter().collect();
        while let Some(name) = todo.pop() {
            let Some((_, needs)) = self.deps.get(&name) else {
                continue;
            };
            if !keep.insert(name.clone()) {
                continue;
            }
            todo.extend(needs.iter().map(|p| module_name(p)));
            for soft in self.pre.get(&name).into_iter().flatten() {
                todo.extend(self.resolve(soft).unwrap_or_default());
            }
        }
        keep
    }

    /// Replaces the release directory `dir` with the modules in `keep` and indexes for them.
    fn write(&self, tree: &mut Tree, dir: &str, keep: &BTreeSet<String>) {
        let kept_paths: BTreeSet<&str> = keep
            .iter()
            .filter_map(|m| self.deps.get(m))
            .map(|(p, _)| p.as_str())
            .collect();
        let Some(dir_entry) = tree.get(dir).cloned() else {
            return;
        };
        let old: Vec<(String, Entry)> = tree
            .children(dir)
            .map(|(p, e)| (p[dir.len() + 1..].to_string(), e.clone()))
            .collect();
        // One removal and re-insertion instead of thousands of single removals.
        tree.remove(dir);
        tree.insert(dir, dir_entry);
        for (rel, entry) in &old {
            let keep_it = match &entry.kind {
                // Parents are created for what is kept; empty driver folders are not worth a byte.
                Kind::Dir => false,
                _ if is_module_file(rel) => kept_paths.contains(rel.as_str()),
                _ => !rel.ends_with(".bin") && !REWRITTEN.contains(&rel.as_str()),
            };
            if keep_it {
                tree.insert(&format!("{dir}/{rel}"), entry.clone());
            }
        }
        let kept_module = |m: &str| keep.contains(&module_name(m));
        for (rel, entry) in old {
            let Kind::File(data) = &entry.kind else {
                continue;
            };
            if !REWRITTEN.contains(&rel.as_str()) {
                continue;
            }
            let text = String::from_utf8_lossy(data);
            let filtered: String = text
                .lines()
                .filter(|line| {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    if line.starts_with('#') || words.is_empty() {
                        return true;
                    }
                    match rel.as_str() {
                        "modules.dep" => line
                            .split_once(':')
                            .is_some_and(|(m, _)| kept_paths.contains(m.trim())),
                        "modules.order" => kept_paths.contains(line.trim()),
                        // `alias PATTERN MODULE`, `alias symbol:NAME MODULE`.
                        "modules.alias" | "modules.symbols" => {
                            words.len() == 3 && kept_module(words[2])
                        }
                        "modules.softdep" => words.len() > 1 && kept_module(words[1]),
                        // `MODULE DEVNAME TYPEMAJOR:MINOR`.
                        _ => kept_module(words[0]),
                    }
                })
                .flat_map(|l| [l, "\n"])
                .collect();
            tree.insert(
                &format!("{dir}/{rel}"),
                Entry {
                    kind: Kind::File(filtered.into_bytes().into()),
                    ..entry
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Tree {
        let mut t = Tree::new();
        let d = "lib/modules/6.1.0-1-amd64";
        let files: &[(&str, &str)] = &[
            (
                "modules.dep",
                "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko\n\
                 kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\n\
                 kernel/crypto/crc32c_generic.ko:\n\
                 kernel/drivers/net/dummy.ko:\n\
                 kernel/drivers/net/ethernet/intel/e1000/e1000.ko:\n\
                 kernel/drivers/net/bonding/bonding.ko: kernel/drivers/net/tls.ko\n\
                 kernel/drivers/net/tls.ko:\n",
            ),
            (
                "modules.alias",
                "# Aliases extracted from modules themselves.\n\
                 alias fs-ext4 ext4\nalias crypto-crc32c crc32c_generic\n\
                 alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\nalias rtnl-link-dummy dummy\n",
            ),
            (
                "modules.softdep",
                "# Soft dependencies extracted from modules themselves.\n\
                 softdep ext4 pre: crypto-crc32c\n",
            ),
            ("modules.builtin", "kernel/fs/fat/vfat.ko\n"),
            ("modules.dep.bin", "stale"),
        ];
        for (name, text) in files {
            t.insert(&format!("{d}/{name}"), Entry::file(text.as_bytes(), 0o644));
        }
        for m in [
            "kernel/fs/ext4/ext4.ko",
            "kernel/fs/jbd2/jbd2.ko",
            "kernel/fs/mbcache.ko",
            "kernel/crypto/crc32c_generic.ko",
            "kernel/drivers/net/dummy.ko",
            "kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
            "kernel/drivers/net/bonding/bonding.ko",
            "kernel/drivers/net/tls.ko",
        ] {
            t.insert(&format!("{d}/{m}"), Entry::file(b"\x7fELF".to_vec(), 0o644));
        }
        t
    }

    fn shipped(t: &Tree) -> Vec<String> {
        t.iter()
            .filter(|(p, _)| is_module_file(p))
            .map(|(p, _)| module_name(p))
            .collect()
    }

    #[test]
    fn closure_follows_dependencies_and_pre_softdeps() {
        let t = tree();
        let index = Index::read(&t, "lib/modules/6.1.0-1-amd64").unwrap();
        let keep = index.closure(["ext4".to_string()].into());
        assert_eq!(
            keep.into_iter().collect::<Vec<_>>(),
            ["crc32c_generic", "ext4", "jbd2", "mbcache"]
        );
    }

    #[test]
    fn names_resolve_through_dashes_aliases_and_builtins() {
        let t = tree();
        let index = Index::read(&t, "lib/modules/6.1.0-1-amd64").unwrap();
        assert_eq!(index.resolve("crc32c-generic").unwrap(), ["crc32c_generic"]);
        assert_eq!(index.resolve("rtnl-link-dummy").unwrap(), ["dummy"]);
        assert!(index.resolve("vfat").unwrap().is_empty(), "built in");
        assert!(index.resolve("nope").is_none());
    }

    #[test]
    fn write_keeps_the_selection_and_rewrites_the_indexes() {
        let mut t = tree();
        let dir = "lib/modules/6.1.0-1-amd64";
        let index = Index::read(&t, dir).unwrap();
        let keep = index.closure(["e1000".to_string(), "bonding".to_string()].into());
        index.write(&mut t, dir, &keep);
        let mut names = shipped(&t);
        names.sort();
        assert_eq!(names, ["bonding", "e1000", "tls"]);
        let file = |n: &str| text(&t, &format!("{dir}/{n}")).unwrap();
        assert_eq!(
            file("modules.dep"),
            "kernel/drivers/net/ethernet/intel/e1000/e1000.ko:\n\
             kernel/drivers/net/bonding/bonding.ko: kernel/drivers/net/tls.ko\n\
             kernel/drivers/net/tls.ko:\n"
        );
        assert_eq!(
            file("modules.alias"),
            "# Aliases extracted from modules themselves.\n\
             alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n"
        );
        assert_eq!(
            file("modules.softdep"),
            "# Soft dependencies extracted from modules themselves.\n"
        );
        assert_eq!(file("modules.builtin"), "kernel/fs/fat/vfat.ko\n");
        assert!(t.get(&format!("{dir}/modules.dep.bin")).is_none());
        assert!(t.get(&format!("{dir}/kernel/fs/ext4")).is_none());
    }

    #[test]
    fn root_device_modules_keep_the_disk_drivers_and_their_needs_only() {
        let mut t = tree();
        let d = "lib/modules/6.1.0-1-amd64";
        t.insert(
            &format!("{d}/modules.dep"),
            Entry::file(
                b"kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko\n\
                  kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\n\
                  kernel/fs/squashfs/squashfs.ko:\n\
                  kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko\n\
                  kernel/drivers/virtio/virtio.ko:\n"
                    .to_vec(),
                0o644,
            ),
        );
        for m in [
            "kernel/fs/squashfs/squashfs.ko",
            "kernel/drivers/block/virtio_blk.ko",
            "kernel/drivers/virtio/virtio.ko",
        ] {
            t.insert(&format!("{d}/{m}"), Entry::file(b"\x7fELF".to_vec(), 0o644));
        }
        let small = root_device_modules(&t).unwrap();
        let mut names = shipped(&small);
        names.sort();
        assert_eq!(names, ["squashfs", "virtio", "virtio_blk"]);
        assert!(
            small.iter().all(|(p, _)| p.starts_with("lib")),
            "only modules"
        );
        let dep = text(&small, &format!("{d}/modules.dep")).unwrap();
        assert!(!dep.contains("ext4"), "{dep}");
        assert!(root_device_modules(&Tree::new()).unwrap().is_empty());
    }
}
