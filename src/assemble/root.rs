//! Phase 1 proper: resolve every image the manifest names, then lay out the root tree — kernel
//! and modules, init images, container bundles, volumes, files and the pinned manifest — and
//! trim the kernel's modules to those the image uses ([`super::modules`]).
//!
//! ```text
//! /boot/kernel, /boot/cmdline, /boot/ucode.cpio     split out again by phase 2
//! /...                                              init images, unpacked in order
//! /containers/onboot/000-NAME/{config.json, rootfs/ | lower/ + tmp/ + rootfs/}
//! /containers/onshutdown/000-NAME/...
//! /containers/services/NAME/...
//! /containers/volumes/NAME/{lower/, tmp/, merged/}
//! /etc/slipway/manifest.yml                          every image pinned by digest
//! ```
//! A read-only container gets its image in `rootfs/`; a writable one gets it in `lower/`, and the
//! init mounts a tmpfs-backed overlay on `rootfs/` at boot (LinuxKit's layout).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;

use crate::assemble::parts::{Part, PartKind, Parts};
use crate::assemble::runtime_config::runtime_config;
use crate::assemble::shared::{Shared, share_identical_files};
use crate::assemble::tree::{Entry, Kind, Tree, normalise};
use crate::manifest::{self, Image, Manifest, ManifestError, Merged, label, path::FieldPath};
use crate::oci::{self, PullOptions, ResolvedImage, Store};

/// Where the resolved manifest is written in the image.
pub const MANIFEST_PATH: &str = slipway_layout::MANIFEST;

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Manifest(Box<ManifestError>),
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    #[error(transparent)]
    Flatten(#[from] oci::FlattenError),
    #[error("kernel image {image}: {reason}")]
    Kernel { image: String, reason: String },
    #[error("kernel modules: {0}")]
    Modules(String),
    #[error("{container}: {source}")]
    Label {
        container: String,
        source: label::LabelError,
    },
}

impl From<ManifestError> for AssembleError {
    fn from(e: ManifestError) -> Self {
        AssembleError::Manifest(Box::new(e))
    }
}

/// The root tree, and the manifest as built (every image pinned by digest).
pub struct Assembled {
    pub tree: Tree,
    pub resolved: Manifest,
    /// Which part of the manifest placed each path (for the size report).
    pub parts: Parts,
    /// What storing identical files once saved.
    pub shared: Shared,
}

/// Resolves the images of `merged` (cache first, then registries) and lays out the root tree.
pub fn assemble(
    merged: &Merged,
    store: &Store,
    pull: &PullOptions,
) -> Result<Assembled, AssembleError> {
    let m = &merged.manifest;
    let mut images: BTreeMap<String, ResolvedImage> = BTreeMap::new();
    let mut resolve = |reference: &str| -> Result<ResolvedImage, AssembleError> {
        if let Some(r) = images.get(reference) {
            return Ok(r.clone());
        }
        let r = oci::resolve(store, reference, pull)?;
        images.insert(reference.to_string(), r.clone());
        Ok(r)
    };
    let mut resolved = m.clone();
    let mut tree = Tree::new();
    let mut parts = Parts::new();
    let mut flattened = Flattened::default();
    let mut lazy_modules = None;

    if let Some(kernel) = &m.kernel
        && let Some(reference) = &kernel.image
    {
        let image = resolve(reference)?;
        let started = std::time::Instant::now();
        lazy_modules = add_kernel(&mut tree, store, &image, kernel)?;
        tracing::info!(
            "unpacked the kernel and its modules in {:.2?}",
            started.elapsed()
        );
        resolved.kernel.as_mut().expect("cloned").image = Some(pinned(&image));
        let part = parts.add(part_of(PartKind::Kernel, &image));
        let boot = [
            crate::format::KERNEL_PATH,
            crate::format::CMDLINE_PATH,
            crate::format::UCODE_PATH,
        ];
        parts.claim(part, boot);
        let part = parts.add(part_of(PartKind::Modules, &image));
        parts.claim_folder(part, "lib/modules");
    }
    for (i, reference) in m.init.iter().enumerate() {
        let image = resolve(reference)?;
        let rootfs = flattened.get(store, &image)?;
        tree.graft("", &rootfs);
        resolved.init[i] = pinned(&image);
        let part = parts.add(part_of(PartKind::Init, &image));
        parts.claim(part, rootfs.iter().map(|(path, _)| path));
    }
    base_layout(&mut tree);

    let ids = manifest::id_map(m);
    for (section, list) in [
        ("onboot", &m.onboot),
        ("onshutdown", &m.onshutdown),
        ("services", &m.services),
    ] {
        for (i, c) in list.iter().enumerate() {
            let image = resolve(&c.image)?;
            let dir = match section {
                "services" => format!("{}/{}", slipway_layout::SERVICES, c.name),
                _ => format!("{}/{section}/{i:03}-{}", slipway_layout::CONTAINERS, c.name),
            };
            let rootfs = flattened.get(store, &image)?;
            add_bundle(&mut tree, &image, rootfs, c, &ids, &dir, section)?;
            let kind = match section {
                "onboot" => PartKind::Onboot,
                "onshutdown" => PartKind::Onshutdown,
                _ => PartKind::Service,
            };
            let part = parts.add(Part {
                name: c.name.clone(),
                ..part_of(kind, &image)
            });
            parts.claim_folder(part, &dir);
            let pinned_ref = pinned(&image);
            match section {
                "onboot" => resolved.onboot[i].image = pinned_ref,
                "onshutdown" => resolved.onshutdown[i].image = pinned_ref,
                _ => resolved.services[i].image = pinned_ref,
            }
        }
    }
    for (i, v) in m.volumes.iter().enumerate() {
        // LinuxKit writes `format: oci` volumes as an OCI image layout; Slipway does not yet,
        // and a volume silently holding something else would mislead (a dry run accepts it).
        if v.format.as_deref() == Some("oci") {
            return Err(manifest_error(
                merged,
                &FieldPath::root().key("volumes").index(i).key("format"),
                format!(
                    "volume `{}`: `format: oci` (an OCI image layout, with `platforms`) is not                      supported yet; use `format: filesystem` (the image's files)",
                    v.name
                ),
            ));
        }
        let dir = format!("{}/{}", slipway_layout::VOLUMES, v.name);
        tree.insert(&format!("{dir}/lower"), Entry::dir(0o755));
        // The init mounts a writable overlay (upper layer on a tmpfs in `tmp/`) on `merged/`, or,
        // when there is no `tmp/`, binds `lower/` read-only there.
        if v.readonly != Some(true) {
            tree.insert(&format!("{dir}/tmp"), Entry::dir(0o755));
        }
        tree.insert(&format!("{dir}/merged"), Entry::dir(0o755));
        let mut part = Part {
            kind: PartKind::Volume,
            name: v.name.clone(),
            image: None,
        };
        if let Some(reference) = &v.image {
            let image = resolve(reference)?;
            let content = flattened.get(store, &image)?;
            tree.graft(&format!("{dir}/lower"), &content);
            resolved.volumes[i].image = Some(pinned(&image));
            part.image = Some(pinned(&image));
        }
        let part = parts.add(part);
        parts.claim_folder(part, &dir);
    }
    let yaml = manifest::to_yaml(&resolved);
    tree.insert(MANIFEST_PATH, Entry::file(yaml.clone().into_bytes(), 0o644));
    super::files::add_files(&mut tree, merged, &ids, &yaml)?;
    if let Some(lazy) = lazy_modules.take_if(|_| super::modules::reads_module_contents(&tree)) {
        lazy.load(&mut tree)?;
    }
    super::modules::trim(&mut tree, merged)?;
    if let Some(lazy) = lazy_modules {
        lazy.load(&mut tree)?;
    }
    if !m.files.is_empty() {
        let part = parts.add(Part {
            kind: PartKind::Files,
            name: "files".into(),
            image: None,
        });
        let paths: Vec<String> = m.files.iter().map(|f| normalise(&f.path)).collect();
        parts.claim(part, paths.iter().map(String::as_str));
    }
    let shared = share_identical_files(&mut tree);
    Ok(Assembled {
        tree,
        resolved,
        parts,
        shared,
    })
}

/// A report line for `image`, named by its reference.
fn part_of(kind: PartKind, image: &ResolvedImage) -> Part {
    Part {
        kind,
        name: image.reference.clone(),
        image: Some(pinned(image)),
    }
}

/// Each image is flattened once per build, however many containers use it; the copies handed
/// out share their file contents, which also makes sharing identical files cheap to detect.
#[derive(Default)]
struct Flattened {
    trees: HashMap<oci::Digest, Tree>,
}

impl Flattened {
    fn get(&mut self, store: &Store, image: &ResolvedImage) -> Result<Tree, AssembleError> {
        if let Some(tree) = self.trees.get(&image.digest) {
            return Ok(tree.clone());
        }
        let started = std::time::Instant::now();
        let tree = oci::flatten_into_tree(store, image)?;
        tracing::info!("flattened {} in {:.2?}", image.reference, started.elapsed());
        self.trees.insert(image.digest.clone(), tree.clone());
        Ok(tree)
    }
}

/// `REF@sha256:...`: the reference as written plus the digest it resolved to.
fn pinned(image: &ResolvedImage) -> String {
    match oci_client::Reference::from_str(&image.reference) {
        Ok(r) if r.digest().is_some() => image.reference.clone(),
        Ok(r) => format!(
            "{}/{}:{}@{}",
            r.registry(),
            r.repository(),
            r.tag().unwrap_or("latest"),
            image.top_digest()
        ),
        Err(_) => image.reference.clone(),
    }
}

/// The kernel's module tar, applied to the tree with every module file left in it for now:
/// [`LazyModules::load`] reads the ones the tree still holds once [`super::modules::trim`] chose.
pub(super) struct LazyModules {
    tar: std::fs::File,
    name: String,
    files: Vec<oci::flatten::LazyFile>,
}

impl LazyModules {
    /// Replaces every placeholder still in `tree` by the module's contents.
    pub(super) fn load(self, tree: &mut Tree) -> Result<(), AssembleError> {
        let mut read = 0u64;
        for lazy in &self.files {
            let Some(entry) = tree.get_mut(&lazy.path) else {
                continue;
            };
            let Kind::File(data) = &entry.kind else {
                continue;
            };
            if !Arc::ptr_eq(data, &lazy.placeholder) {
                continue;
            }
            let contents = lazy.read(&self.tar).map_err(|e| {
                AssembleError::Modules(format!("{}: reading {}: {e}", self.name, lazy.path))
            })?;
            read += contents.len() as u64;
            entry.kind = Kind::File(Arc::new(contents));
        }
        tracing::info!("read {read} bytes of modules from {}", self.name);
        Ok(())
    }
}

/// The kernel binary and command line go to `boot/` (phase 2 takes them out); the modules tarball
/// is applied to the root, its modules' contents left in it (the returned [`LazyModules`]).
fn add_kernel(
    tree: &mut Tree,
    store: &Store,
    image: &ResolvedImage,
    k: &manifest::Kernel,
) -> Result<Option<LazyModules>, AssembleError> {
    let fail = |reason: String| AssembleError::Kernel {
        image: image.reference.clone(),
        reason,
    };
    let binary = k
        .binary
        .as_deref()
        .filter(|b| !b.is_empty())
        .unwrap_or("kernel");
    let tar_name = match k.tar.as_deref() {
        Some("none") | Some("") => None,
        name => Some(name.unwrap_or("kernel.tar")),
    };
    let ucode = k.ucode.as_deref().filter(|u| !u.is_empty());
    let names: Vec<&str> = [Some(binary), tar_name, ucode]
        .into_iter()
        .flatten()
        .collect();
    let files = super::kernel::kernel_files(store, image, &names)?;
    let open = |name: &str, missing: String| -> Result<std::fs::File, AssembleError> {
        files
            .get(name)
            .and_then(Option::as_ref)
            .ok_or_else(|| fail(missing))?
            .try_clone()
            .map_err(|e| fail(format!("reading `{name}`: {e}")))
    };
    let read = |name: &str, missing: String| -> Result<(std::fs::File, Vec<u8>), AssembleError> {
        let mut file = open(name, missing)?;
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut data)
            .map_err(|e| fail(format!("reading `{name}`: {e}")))?;
        Ok((file, data))
    };
    let (_, kernel) = read(binary, format!("has no file `{binary}` (kernel.binary)"))?;
    tree.insert(crate::format::KERNEL_PATH, Entry::file(kernel, 0o644));
    tree.insert(
        crate::format::CMDLINE_PATH,
        Entry::file(k.cmdline.clone().unwrap_or_default().into_bytes(), 0o644),
    );
    let mut lazy = None;
    if let Some(name) = tar_name {
        let missing = format!("did not find kernel tar `{name}` in the kernel image");
        let mut file = open(name, missing)?;
        let label = format!("{}:{name}", image.reference);
        let mut magic = [0u8; 4];
        let plain = std::io::Read::read(&mut file, &mut magic)
            .map_err(|e| fail(format!("reading `{name}`: {e}")))?;
        let compressed =
            plain >= 2 && (magic.starts_with(&[0x1f, 0x8b]) || magic == [0x28, 0xb5, 0x2f, 0xfd]);
        std::io::Seek::rewind(&mut file).map_err(|e| fail(format!("reading `{name}`: {e}")))?;
        if compressed {
            // A compressed tar cannot be seeked into: it is unpacked whole, as any layer.
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut data)
                .map_err(|e| fail(format!("reading `{name}`: {e}")))?;
            let modules = oci::flatten::apply_tar_to_tree(Tree::new(), &label, data)?;
            tree.graft("", &modules);
        } else {
            // Errors name the kernel image's digest: the tar is a file of it, not a blob.
            let (modules, files) = oci::flatten::apply_tar_file_lazily(
                Tree::new(),
                &label,
                &image.digest,
                &file,
                super::modules::is_module_file,
            )?;
            tree.graft("", &modules);
            lazy = Some(LazyModules {
                tar: file,
                name: label,
                files,
            });
        }
    }
    if let Some(ucode) = ucode {
        let (_, data) = read(
            ucode,
            format!("has no microcode file `{ucode}` (kernel.ucode)"),
        )?;
        tree.insert(crate::format::UCODE_PATH, Entry::file(data, 0o644));
    }
    Ok(lazy)
}

/// The directories every Slipway root has, whatever the init images bring.
fn base_layout(tree: &mut Tree) {
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var",
        "etc",
        "containers",
    ] {
        if tree.get(dir).is_none() {
            tree.insert(dir, Entry::dir(if dir == "tmp" { 0o1777 } else { 0o755 }));
        }
    }
}

/// One container: its image (label defaults applied), `config.json` and rootfs layout.
fn add_bundle(
    tree: &mut Tree,
    image: &ResolvedImage,
    mut rootfs: Tree,
    c: &Image,
    ids: &BTreeMap<String, u32>,
    dir: &str,
    section: &str,
) -> Result<(), AssembleError> {
    let config = image.config.config().as_ref();
    let effective = match config
        .and_then(|cfg| cfg.labels().as_ref())
        .and_then(|l| l.get(label::LABEL))
    {
        Some(text) => {
            let l = label::parse_label(&image.reference, text).map_err(|source| {
                AssembleError::Label {
                    container: c.name.clone(),
                    source,
                }
            })?;
            label::apply_label(c, &l)
        }
        None => c.clone(),
    };
    let mut effective = effective;
    // A readable cgroup path per container instead of the runtime's generated one.
    effective
        .cgroups_path
        .get_or_insert_with(|| format!("/slipway/{section}/{}", c.name));
    let spec = runtime_config(&effective, config, ids);
    let mut json = serde_json::to_vec_pretty(&spec).expect("a JSON value serialises");
    json.push(b'\n');
    tree.insert(&format!("{dir}/config.json"), Entry::file(json, 0o644));

    container_filesystem(&mut rootfs);
    if effective.readonly == Some(true) {
        tree.insert(&format!("{dir}/rootfs"), Entry::dir(0o755));
        tree.graft(&format!("{dir}/rootfs"), &rootfs);
    } else {
        tree.insert(&format!("{dir}/lower"), Entry::dir(0o755));
        tree.graft(&format!("{dir}/lower"), &rootfs);
        tree.insert(&format!("{dir}/tmp"), Entry::dir(0o755));
        tree.insert(&format!("{dir}/rootfs"), Entry::dir(0o755));
    }
    Ok(())
}

/// LinuxKit's container filters: drop what a runtime provides or that leaks the build host, and
/// make sure the mount points and the files a runtime binds over exist.
fn container_filesystem(rootfs: &mut Tree) {
    for path in [
        ".dockerenv",
        "Dockerfile",
        "dev/console",
        "dev/pts",
        "dev/shm",
        "etc/hostname",
    ] {
        rootfs.remove(path);
    }
    for dir in ["dev", "dev/pts", "dev/shm", "etc", "proc", "sys", "tmp"] {
        if !matches!(rootfs.get(dir).map(|e| &e.kind), Some(Kind::Dir)) {
            rootfs.insert(dir, Entry::dir(if dir == "tmp" { 0o1777 } else { 0o755 }));
        }
    }
    rootfs.insert(
        "etc/hosts",
        Entry::file(
            b"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n".to_vec(),
            0o644,
        ),
    );
    rootfs.insert(
        "etc/resolv.conf",
        Entry::file(b"# no resolv.conf configured\n".to_vec(), 0o644),
    );
    if rootfs.get("etc/mtab").is_none() {
        rootfs.insert("etc/mtab", Entry::symlink("/proc/mounts"));
    }
}

/// Where the builder reports an error about a manifest value.
pub(super) fn manifest_error(merged: &Merged, path: &FieldPath, message: String) -> AssembleError {
    let (source, local) = merged.locate(path);
    ManifestError::value(source, &local, message).into()
}
