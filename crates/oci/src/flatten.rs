//! Flattening: an image's layers applied in order into one filesystem.
//!
//! Layers may be gzip, zstd or plain tar (recognised by their magic bytes, which is more robust
//! than trusting every registry's media type spelling). Whiteouts (`.wh.NAME`) delete what lower
//! layers put there; an opaque marker (`.wh..wh..opq`) empties a directory of lower-layer content.
//! Hard links, symlinks, device nodes and FIFOs are kept.
//!
//! Layers are untrusted input. An entry is rejected, naming the image, layer digest and entry, when
//! its path is absolute or contains `..`, when a hard link names an absolute or `..` target, or when
//! a symlink followed while placing the entry would climb above the root. Symlinks met on the way
//! are resolved the way the container will see them: an absolute target starts again at the image
//! root, never at the host's.
//!
//! Layers are also bounded ([`Limits`]): the size of one entry, the unpacked size and entry count
//! of a whole image, and the length of names (whole paths and single components, link targets
//! included). The defaults are far above any real image; a layer beyond them is refused, naming
//! the image, layer and entry, before its content is written.
//!
//! Two sinks share that logic: [`flatten_into_tree`] (the image builder's in-memory tree) and
//! [`unpack_to_dir`] (a real directory, for the container engine).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use super::digest::Digest;
use super::resolve::ResolvedImage;
use super::store::{Store, StoreError};
use super::tree::{Entry, Kind, Tree};

/// How many symlinks one path may traverse (Linux's own limit).
const MAX_SYMLINK_HOPS: usize = 40;

/// Bounds on what flattening one image (all its layers together) may produce.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest single entry's content.
    pub max_entry_size: u64,
    /// The sum of every entry's content over all layers.
    pub max_total_size: u64,
    /// The longest entry path or link target, in bytes (Linux's PATH_MAX).
    pub max_path_len: usize,
    /// The longest path component, in bytes (Linux's NAME_MAX).
    pub max_name_len: usize,
    /// Entries over all layers, whiteouts included.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entry_size: 16 << 30,
            max_total_size: 64 << 30,
            max_path_len: 4096,
            max_name_len: 255,
            max_entries: 4_000_000,
        }
    }
}

/// What the layers applied so far used of the [`Limits`].
#[derive(Default)]
struct Usage {
    bytes: u64,
    entries: u64,
}

impl Usage {
    /// Counts one more entry of `size` bytes named `raw`, refusing it when it passes a limit.
    fn admit(
        &mut self,
        limits: &Limits,
        ctx: &Ctx,
        raw: &[u8],
        size: u64,
    ) -> Result<(), FlattenError> {
        self.entries += 1;
        if self.entries > limits.max_entries {
            return Err(ctx.reject(format!(
                "the image has more than {} entries (limit)",
                limits.max_entries
            )));
        }
        check_name(limits, ctx, "path", raw)?;
        if size > limits.max_entry_size {
            return Err(ctx.reject(format!(
                "entry size {size} bytes exceeds the limit of {} bytes",
                limits.max_entry_size
            )));
        }
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > limits.max_total_size {
            return Err(ctx.reject(format!(
                "the image unpacks to more than {} bytes (total size limit)",
                limits.max_total_size
            )));
        }
        Ok(())
    }
}

/// Refuses a path or link target longer than `max_path_len` or with a component longer than
/// `max_name_len`.
fn check_name(limits: &Limits, ctx: &Ctx, what: &str, raw: &[u8]) -> Result<(), FlattenError> {
    if raw.len() > limits.max_path_len {
        return Err(ctx.reject(format!(
            "{what} is {} bytes long, over the name length limit of {}",
            raw.len(),
            limits.max_path_len
        )));
    }
    if let Some(c) = raw
        .split(|b| *b == b'/')
        .find(|c| c.len() > limits.max_name_len)
    {
        return Err(ctx.reject(format!(
            "{what} has a {}-byte component, over the name length limit of {}",
            c.len(),
            limits.max_name_len
        )));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    #[error("image {image}: layer {layer}: entry {entry:?}: {reason}")]
    Entry {
        image: String,
        layer: Digest,
        entry: String,
        reason: String,
    },
    #[error("image {image}: layer {layer}: unreadable layer: {source}")]
    Layer {
        image: String,
        layer: Digest,
        source: io::Error,
    },
    #[error("image {image}: invalid layer digest: {reason}")]
    Manifest { image: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a layer entry is, after its header was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Symlink(String),
    /// Target path components, validated like entry paths.
    Hardlink(Vec<String>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    /// Where the entry's data starts in the (uncompressed) tar, and its size.
    offset: u64,
    size: u64,
}

/// Names the entry being applied, for errors.
struct Ctx<'a> {
    image: &'a str,
    layer: &'a Digest,
    entry: String,
}

impl Ctx<'_> {
    fn reject(&self, reason: impl Into<String>) -> FlattenError {
        FlattenError::Entry {
            image: self.image.to_string(),
            layer: self.layer.clone(),
            entry: self.entry.clone(),
            reason: reason.into(),
        }
    }
    fn io(&self, what: &str, e: io::Error) -> FlattenError {
        self.reject(format!("{what}: {e}"))
    }
}

/// What a path resolves to inside a sink, for symlink resolution.
enum Lookup {
    Missing,
    Dir,
    Symlink(String),
    Other,
}

/// A destination for flattened layers.
trait Sink {
    /// Answers what `path` (resolved, relative to the root) is, without following a final symlink.
    fn lookup(&self, ctx: &Ctx, path: &[String]) -> Result<Lookup, FlattenError>;
    /// Places `node` at `path` (parents resolved and created), replacing what is there.
    fn place(
        &mut self,
        ctx: &Ctx,
        path: &[String],
        node: &Node,
        meta: Meta,
        data: &mut dyn Read,
    ) -> Result<(), FlattenError>;
    /// Removes `path` and everything below it, if present.
    fn remove(&mut self, ctx: &Ctx, path: &[String]) -> Result<(), FlattenError>;
    /// The names directly inside directory `dir`.
    fn children(&self, ctx: &Ctx, dir: &[String]) -> Result<Vec<String>, FlattenError>;
    /// Creates a missing parent directory.
    fn mkdir(&mut self, ctx: &Ctx, path: &[String]) -> Result<(), FlattenError>;
}

/// Splits an entry path (or hard-link target) into components, refusing absolute paths and `..`.
fn clean_path(raw: &[u8]) -> Result<Vec<String>, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "path is not valid UTF-8".to_string())?;
    if s.starts_with('/') {
        return Err("absolute path escapes the root".into());
    }
    let mut out = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("path contains '..' and may escape the root".into()),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// Resolves `path` as a directory inside the root: every component that is a symlink is
/// followed (absolute targets restart at the root), and a `..` that would climb above the root is
/// an error. Missing components are fine (they will be created).
fn resolve_dir(sink: &dyn Sink, ctx: &Ctx, path: &[String]) -> Result<Vec<String>, FlattenError> {
    let mut todo: VecDeque<String> = path.iter().cloned().collect();
    let mut out: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                if out.pop().is_none() {
                    return Err(ctx.reject("a symlink on its path points outside the root"));
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
        match sink.lookup(ctx, &out)? {
            Lookup::Missing | Lookup::Dir => {}
            Lookup::Other => {
                return Err(ctx.reject(format!("{} is not a directory", out.join("/"))));
            }
            Lookup::Symlink(target) => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(ctx.reject("too many levels of symbolic links"));
                }
                out.pop();
                if target.starts_with('/') {
                    out.clear();
                }
                for part in target.split('/').rev() {
                    todo.push_front(part.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Resolves the parent of `path` and creates the missing directories; returns the full resolved
/// path (the final component itself is not followed).
fn prepare(sink: &mut dyn Sink, ctx: &Ctx, path: &[String]) -> Result<Vec<String>, FlattenError> {
    let (name, parent) = path.split_last().expect("non-empty path");
    let mut resolved = resolve_dir(sink, ctx, parent)?;
    for i in 1..=resolved.len() {
        if let Lookup::Missing = sink.lookup(ctx, &resolved[..i])? {
            sink.mkdir(ctx, &resolved[..i])?;
        }
    }
    resolved.push(name.clone());
    Ok(resolved)
}

/// Opens a layer blob and undoes its compression.
fn open_layer(store: &Store, layer: &Digest) -> Result<Box<dyn Read>, FlattenError> {
    let file = store.open_blob(layer)?;
    decompress(BufReader::with_capacity(1 << 20, file)).map_err(|source| FlattenError::Io {
        path: store.blob_path(layer),
        source,
    })
}

/// Recognises gzip and zstd by their magic bytes; anything else is read as a plain tar.
fn decompress<R: BufRead + 'static>(mut reader: R) -> io::Result<Box<dyn Read>> {
    let magic = reader.fill_buf()?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader)?)
    } else {
        Box::new(reader)
    })
}

/// Applies one more tar (plain, gzip or zstd) on top of `tree`, with the same rules as image
/// layers: used for tars carried inside images, such as a kernel image's `kernel.tar` of modules.
/// `name` identifies the tar in errors; the "layer" digest in errors is the tar's own.
pub fn apply_tar_to_tree(tree: Tree, name: &str, tar: Vec<u8>) -> Result<Tree, FlattenError> {
    let digest = Digest::of(&tar);
    let reader = decompress(io::Cursor::new(tar)).map_err(|source| FlattenError::Layer {
        image: name.to_string(),
        layer: digest.clone(),
        source,
    })?;
    let mut sink = TreeSink {
        tree,
        links: HashMap::new(),
        lazy: None,
    };
    apply_layer(
        name,
        &digest,
        reader,
        &mut sink,
        &Limits::default(),
        &mut Usage::default(),
    )?;
    Ok(sink.finish())
}

fn apply_layers(
    store: &Store,
    image: &ResolvedImage,
    sink: &mut dyn Sink,
    limits: &Limits,
) -> Result<(), FlattenError> {
    let mut usage = Usage::default();
    let layers = image.layers().map_err(|e| FlattenError::Manifest {
        image: image.reference.clone(),
        reason: e.to_string(),
    })?;
    for layer in &layers {
        apply_layer(
            &image.reference,
            layer,
            open_layer(store, layer)?,
            sink,
            limits,
            &mut usage,
        )?;
    }
    Ok(())
}

fn apply_layer(
    image: &str,
    layer: &Digest,
    reader: Box<dyn Read>,
    sink: &mut dyn Sink,
    limits: &Limits,
    usage: &mut Usage,
) -> Result<(), FlattenError> {
    let layer_err = |source| FlattenError::Layer {
        image: image.to_string(),
        layer: layer.clone(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(layer_err)?;
    apply_entries(image, layer, entries, sink, limits, usage)
}

fn apply_entries<'a, R: Read + 'a>(
    image: &str,
    layer: &Digest,
    entries: tar::Entries<'a, R>,
    sink: &mut dyn Sink,
    limits: &Limits,
    usage: &mut Usage,
) -> Result<(), FlattenError> {
    let layer_err = |source| FlattenError::Layer {
        image: image.to_string(),
        layer: layer.clone(),
        source,
    };
    // Paths this layer created: an opaque marker only hides what lower layers put there.
    let mut current: BTreeSet<String> = BTreeSet::new();
    for entry in entries {
        let mut entry = entry.map_err(layer_err)?;
        let raw = entry.path_bytes().into_owned();
        let ctx = Ctx {
            image,
            layer,
            entry: String::from_utf8_lossy(&raw).into_owned(),
        };
        usage.admit(limits, &ctx, &raw, entry.size())?;
        if let Some(target) = entry.link_name_bytes() {
            check_name(limits, &ctx, "link target", &target)?;
        }
        let path = clean_path(&raw).map_err(|r| ctx.reject(r))?;
        let Some((name, parent)) = path.split_last() else {
            continue;
        };
        if name == ".wh..wh..opq" {
            let dir = resolve_dir(sink, &ctx, parent)?;
            let prefix = if dir.is_empty() {
                String::new()
            } else {
                format!("{}/", dir.join("/"))
            };
            if !matches!(sink.lookup(&ctx, &dir)?, Lookup::Dir) && !dir.is_empty() {
                continue;
            }
            for child in sink.children(&ctx, &dir)? {
                let p = format!("{prefix}{child}");
                let kept = current.contains(&p)
                    || current
                        .range(format!("{p}/")..)
                        .next()
                        .is_some_and(|q| q.starts_with(&format!("{p}/")));
                if !kept {
                    let mut full = dir.clone();
                    full.push(child);
                    sink.remove(&ctx, &full)?;
                }
            }
            continue;
        }
        if name.starts_with(".wh..wh.") {
            continue; // aufs bookkeeping (e.g. .wh..wh.plnk), never content
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            if matches!(hidden, "" | "." | "..") {
                return Err(ctx.reject(format!(
                    "whiteout of {hidden:?} names no entry of the layer's directory"
                )));
            }
            let mut target = resolve_dir(sink, &ctx, parent)?;
            target.push(hidden.to_string());
            // A whiteout hides what lower layers put there, never an entry of its own layer
            // (OCI image spec, "Whiteouts").
            if !current.contains(&target.join("/")) {
                sink.remove(&ctx, &target)?;
            }
            continue;
        }
        let header = entry.header();
        let meta = Meta {
            mode: header.mode().map_err(layer_err)? & 0o7777,
            uid: header.uid().map_err(layer_err)? as u32,
            gid: header.gid().map_err(layer_err)? as u32,
            mtime: header.mtime().map_err(layer_err)?,
            offset: entry.raw_file_position(),
            size: entry.size(),
        };
        let device = |h: &tar::Header| -> Result<(u32, u32), FlattenError> {
            Ok((
                h.device_major().map_err(layer_err)?.unwrap_or(0),
                h.device_minor().map_err(layer_err)?.unwrap_or(0),
            ))
        };
        let node = match header.entry_type() {
            tar::EntryType::Directory => Node::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => Node::File,
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ctx.reject("symlink without a target"))?;
                Node::Symlink(
                    String::from_utf8(target.into_owned())
                        .map_err(|_| ctx.reject("symlink target is not UTF-8"))?,
                )
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ctx.reject("hard link without a target"))?;
                let target = clean_path(&target)
                    .map_err(|r| ctx.reject(format!("hard link target: {r}")))?;
                if target.is_empty() {
                    return Err(ctx.reject("hard link to the root"));
                }
                Node::Hardlink(target)
            }
            tar::EntryType::Char => {
                let (a, b) = device(header)?;
                Node::Char(a, b)
            }
            tar::EntryType::Block => {
                let (a, b) = device(header)?;
                Node::Block(a, b)
            }
            tar::EntryType::Fifo => Node::Fifo,
            other => return Err(ctx.reject(format!("unsupported tar entry type {other:?}"))),
        };
        let resolved = prepare(sink, &ctx, &path)?;
        sink.place(&ctx, &resolved, &node, meta, &mut entry)?;
        current.insert(resolved.join("/"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sink (a): the in-memory tree.

struct TreeSink {
    tree: Tree,
    /// Hard links and the file they pointed at when made: if a later layer replaces or removes
    /// the target, the link keeps that content (as a separate inode would on disk).
    links: HashMap<String, (String, Entry)>,
    /// Regular files whose contents are left in the tar for now (see [`apply_tar_file_lazily`]).
    lazy: Option<(LazyPredicate, Vec<LazyFile>)>,
}

type LazyPredicate = Box<dyn Fn(&str) -> bool>;

/// A regular file placed in the tree without its contents: [`LazyFile::placeholder`] (empty)
/// stands in for them until [`LazyFile::read`] fetches them from the tar.
#[derive(Clone, Debug)]
pub struct LazyFile {
    /// The file's path in the tree.
    pub path: String,
    /// Where its contents start in the tar, and their size.
    pub offset: u64,
    pub size: u64,
    /// The contents placed in the tree; still in it (`Arc::ptr_eq`) means no later layer,
    /// file or trim replaced the file.
    pub placeholder: Arc<Vec<u8>>,
}

impl LazyFile {
    /// The file's contents, read from `tar` (the file the entry was found in).
    pub fn read(&self, tar: &std::fs::File) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let size = usize::try_from(self.size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "entry too large"))?;
        let mut data = vec![0; size];
        tar.read_exact_at(&mut data, self.offset)?;
        Ok(data)
    }
}

/// Applies the plain (uncompressed) tar file `tar` on top of `tree` like [`apply_tar_to_tree`],
/// but reads only entry headers: the contents of regular files whose tree path `lazy` accepts
/// are left in the file (seeked over), and each such file gets an empty placeholder, listed in
/// the result for [`LazyFile::read`]. The kernel's 400 MB module tar is read this way, so that a
/// build reads only the modules it ships. `name` and `layer` identify the tar in errors.
pub fn apply_tar_file_lazily(
    tree: Tree,
    name: &str,
    layer: &Digest,
    tar: &std::fs::File,
    lazy: impl Fn(&str) -> bool + 'static,
) -> Result<(Tree, Vec<LazyFile>), FlattenError> {
    let mut sink = TreeSink {
        tree,
        links: HashMap::new(),
        lazy: Some((Box::new(lazy), Vec::new())),
    };
    let layer_err = |source| FlattenError::Layer {
        image: name.to_string(),
        layer: layer.clone(),
        source,
    };
    // Offsets are from the start of the file, where [`LazyFile::read`] reads them.
    io::Seek::rewind(&mut &*tar).map_err(layer_err)?;
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries_with_seek()
        .map_err(|source| FlattenError::Layer {
            image: name.to_string(),
            layer: layer.clone(),
            source,
        })?;
    apply_entries(
        name,
        layer,
        entries,
        &mut sink,
        &Limits::default(),
        &mut Usage::default(),
    )?;
    let lazy = sink.lazy.take().map(|(_, files)| files).unwrap_or_default();
    Ok((sink.finish(), lazy))
}

impl Sink for TreeSink {
    fn lookup(&self, _ctx: &Ctx, path: &[String]) -> Result<Lookup, FlattenError> {
        Ok(match self.tree.get(&path.join("/")).map(|e| &e.kind) {
            None => Lookup::Missing,
            Some(Kind::Dir) => Lookup::Dir,
            Some(Kind::Symlink(t)) => Lookup::Symlink(t.clone()),
            Some(_) => Lookup::Other,
        })
    }

    fn place(
        &mut self,
        ctx: &Ctx,
        path: &[String],
        node: &Node,
        meta: Meta,
        data: &mut dyn Read,
    ) -> Result<(), FlattenError> {
        let key = path.join("/");
        let kind = match node {
            Node::Dir => {
                if let Some(e) = self.tree.get_mut(&key).filter(|e| e.kind == Kind::Dir) {
                    (e.mode, e.uid, e.gid, e.mtime) = (meta.mode, meta.uid, meta.gid, meta.mtime);
                    return Ok(());
                }
                Kind::Dir
            }
            Node::File if self.lazy.as_ref().is_some_and(|(wanted, _)| wanted(&key)) => {
                let placeholder = Arc::new(Vec::new());
                let (_, files) = self.lazy.as_mut().expect("checked");
                files.push(LazyFile {
                    path: key.clone(),
                    offset: meta.offset,
                    size: meta.size,
                    placeholder: placeholder.clone(),
                });
                Kind::File(placeholder)
            }
            Node::File => {
                let mut buf = Vec::new();
                data.read_to_end(&mut buf)
                    .map_err(|e| ctx.io("reading file contents", e))?;
                Kind::File(Arc::new(buf))
            }
            Node::Symlink(t) => Kind::Symlink(t.clone()),
            Node::Hardlink(target) => {
                let (tname, tparent) = target.split_last().expect("non-empty");
                let mut t = resolve_dir(self, ctx, tparent)?;
                t.push(tname.clone());
                let mut tkey = t.join("/");
                let mut tentry =
                    self.tree.get(&tkey).cloned().ok_or_else(|| {
                        ctx.reject(format!("hard link target {tkey} does not exist"))
                    })?;
                if let Kind::Hardlink(first) = &tentry.kind {
                    tkey = first.clone();
                    tentry = self.tree.get(&tkey).cloned().ok_or_else(|| {
                        ctx.reject(format!("hard link target {tkey} does not exist"))
                    })?;
                }
                if tentry.kind == Kind::Dir {
                    return Err(ctx.reject(format!("hard link target {tkey} is a directory")));
                }
                if tkey == key {
                    return Ok(());
                }
                self.links.insert(key.clone(), (tkey.clone(), tentry));
                Kind::Hardlink(tkey)
            }
            Node::Char(major, minor) => Kind::CharDevice {
                major: *major,
                minor: *minor,
            },
            Node::Block(major, minor) => Kind::BlockDevice {
                major: *major,
                minor: *minor,
            },
            Node::Fifo => Kind::Fifo,
        };
        self.tree.insert(
            &key,
            Entry {
                kind,
                mode: meta.mode,
                uid: meta.uid,
                gid: meta.gid,
                mtime: meta.mtime,
            },
        );
        Ok(())
    }

    fn remove(&mut self, _ctx: &Ctx, path: &[String]) -> Result<(), FlattenError> {
        self.tree.remove(&path.join("/"));
        Ok(())
    }

    fn children(&self, _ctx: &Ctx, dir: &[String]) -> Result<Vec<String>, FlattenError> {
        let key = dir.join("/");
        let depth = if key.is_empty() { 1 } else { dir.len() + 1 };
        Ok(self
            .tree
            .children(&key)
            .filter(|(p, _)| p.split('/').count() == depth)
            .map(|(p, _)| p.rsplit('/').next().unwrap_or(p).to_string())
            .collect())
    }

    fn mkdir(&mut self, _ctx: &Ctx, path: &[String]) -> Result<(), FlattenError> {
        self.tree.insert(&path.join("/"), Entry::dir(0o755));
        Ok(())
    }
}

impl TreeSink {
    /// Replaces hard links whose target a later layer replaced or removed by the content they had.
    fn finish(mut self) -> Tree {
        for (link, (target, entry)) in self.links {
            let still_link = matches!(self.tree.get(&link).map(|e| &e.kind), Some(Kind::Hardlink(t)) if *t == target);
            if still_link && self.tree.get(&target) != Some(&entry) {
                self.tree.insert(&link, entry);
            }
        }
        self.tree
    }
}

/// The image's layers flattened into a tree (for the image builder).
pub fn flatten_into_tree(store: &Store, image: &ResolvedImage) -> Result<Tree, FlattenError> {
    flatten_into_tree_with(store, image, &Limits::default())
}

/// [`flatten_into_tree`] with other [`Limits`] than the defaults.
pub fn flatten_into_tree_with(
    store: &Store,
    image: &ResolvedImage,
    limits: &Limits,
) -> Result<Tree, FlattenError> {
    let mut sink = TreeSink {
        tree: Tree::new(),
        links: HashMap::new(),
        lazy: None,
    };
    apply_layers(store, image, &mut sink, limits)?;
    Ok(sink.finish())
}

// ---------------------------------------------------------------------------------------------
// Sink (b): a directory.
//
// Written by hand on rustix rather than with tar's `unpack_in`, because that follows symlinks a
// layer planted earlier and cannot apply whiteouts. Every path is first resolved component by
// component against the sink's own view (`resolve_dir`, above), then every operation happens
// relative to a parent directory opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): the
// kernel itself refuses to cross a symlink or leave the destination, so even a bug in the
// resolution above cannot write outside it.

struct DirSink {
    root: OwnedFd,
    /// Ownership can only be set by root; an unprivileged unpack keeps the caller's ids.
    can_chown: bool,
}

impl DirSink {
    fn open_dir(&self, ctx: &Ctx, path: &[String]) -> Result<OwnedFd, FlattenError> {
        let p = if path.is_empty() {
            ".".to_string()
        } else {
            path.join("/")
        };
        rustix::fs::openat2(
            &self.root,
            p.as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| ctx.io(&format!("opening {p} inside the destination"), e.into()))
    }

    fn parent(&self, ctx: &Ctx, path: &[String]) -> Result<(OwnedFd, String), FlattenError> {
        let (name, parent) = path.split_last().expect("non-empty path");
        Ok((self.open_dir(ctx, parent)?, name.clone()))
    }

    fn owner(&self, ctx: &Ctx, dir: &OwnedFd, name: &str, meta: Meta) -> Result<(), FlattenError> {
        if self.can_chown {
            rustix::fs::chownat(
                dir,
                name,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| ctx.io("setting ownership", e.into()))?;
        }
        Ok(())
    }

    fn times(&self, ctx: &Ctx, dir: &OwnedFd, name: &str, meta: Meta) -> Result<(), FlattenError> {
        let t = rustix::fs::Timespec {
            tv_sec: meta.mtime as i64,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| ctx.io("setting times", e.into()))
    }
}

impl Sink for DirSink {
    fn lookup(&self, ctx: &Ctx, path: &[String]) -> Result<Lookup, FlattenError> {
        if path.is_empty() {
            return Ok(Lookup::Dir);
        }
        let (dir, name) = match self.parent(ctx, path) {
            Ok(x) => x,
            Err(_) => return Ok(Lookup::Missing),
        };
        let st = match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(Lookup::Missing),
            Err(e) => return Err(ctx.io("stat", e.into())),
        };
        Ok(match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => Lookup::Dir,
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(&dir, name.as_str(), Vec::new())
                    .map_err(|e| ctx.io("readlink", e.into()))?;
                Lookup::Symlink(target.to_string_lossy().into_owned())
            }
            _ => Lookup::Other,
        })
    }

    fn place(
        &mut self,
        ctx: &Ctx,
        path: &[String],
        node: &Node,
        meta: Meta,
        data: &mut dyn Read,
    ) -> Result<(), FlattenError> {
        let (dir, name) = self.parent(ctx, path)?;
        let existing = self.lookup(ctx, path)?;
        match (&existing, node) {
            (Lookup::Missing, _) => {}
            (Lookup::Dir, Node::Dir) => {
                self.owner(ctx, &dir, &name, meta)?;
                rustix::fs::chmodat(
                    &dir,
                    name.as_str(),
                    Mode::from_raw_mode(meta.mode),
                    AtFlags::empty(),
                )
                .map_err(|e| ctx.io("chmod", e.into()))?;
                return Ok(());
            }
            _ => self.remove(ctx, path)?,
        }
        let mode = Mode::from_raw_mode(meta.mode);
        match node {
            Node::Dir => {
                rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o700))
                    .map_err(|e| ctx.io("mkdir", e.into()))?;
                self.owner(ctx, &dir, &name, meta)?;
                // chmod after chown: chown clears set-id bits.
                rustix::fs::chmodat(&dir, name.as_str(), mode, AtFlags::empty())
                    .map_err(|e| ctx.io("chmod", e.into()))?;
            }
            Node::File => {
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| ctx.io("create", e.into()))?;
                let mut file = File::from(fd);
                io::copy(data, &mut file).map_err(|e| ctx.io("writing file contents", e))?;
                if self.can_chown {
                    rustix::fs::fchown(
                        &file,
                        Some(rustix::fs::Uid::from_raw(meta.uid)),
                        Some(rustix::fs::Gid::from_raw(meta.gid)),
                    )
                    .map_err(|e| ctx.io("setting ownership", e.into()))?;
                }
                rustix::fs::fchmod(&file, mode).map_err(|e| ctx.io("chmod", e.into()))?;
                self.times(ctx, &dir, &name, meta)?;
            }
            Node::Symlink(target) => {
                rustix::fs::symlinkat(target.as_str(), &dir, name.as_str())
                    .map_err(|e| ctx.io("symlink", e.into()))?;
                self.owner(ctx, &dir, &name, meta)?;
                self.times(ctx, &dir, &name, meta)?;
            }
            Node::Hardlink(target) => {
                let (tname, tparent) = target.split_last().expect("non-empty");
                let tdir_path = resolve_dir(self, ctx, tparent)?;
                let mut t = tdir_path.clone();
                t.push(tname.clone());
                match self.lookup(ctx, &t)? {
                    Lookup::Missing => {
                        return Err(
                            ctx.reject(format!("hard link target {} does not exist", t.join("/")))
                        );
                    }
                    Lookup::Dir => {
                        return Err(
                            ctx.reject(format!("hard link target {} is a directory", t.join("/")))
                        );
                    }
                    _ => {}
                }
                let tdir = self.open_dir(ctx, &tdir_path)?;
                // No AT_SYMLINK_FOLLOW: linking to a symlink links the symlink itself, inside the root.
                rustix::fs::linkat(&tdir, tname.as_str(), &dir, name.as_str(), AtFlags::empty())
                    .map_err(|e| ctx.io("link", e.into()))?;
            }
            Node::Char(major, minor) | Node::Block(major, minor) => {
                let ft = if matches!(node, Node::Char(..)) {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                rustix::fs::mknodat(
                    &dir,
                    name.as_str(),
                    ft,
                    mode,
                    rustix::fs::makedev(*major, *minor),
                )
                .map_err(|e| ctx.io("mknod", e.into()))?;
                self.owner(ctx, &dir, &name, meta)?;
                // mknod's mode passes through the umask, and chown clears set-id bits: set the
                // exact mode last.
                rustix::fs::chmodat(&dir, name.as_str(), mode, AtFlags::empty())
                    .map_err(|e| ctx.io("chmod", e.into()))?;
                self.times(ctx, &dir, &name, meta)?;
            }
            Node::Fifo => {
                rustix::fs::mknodat(&dir, name.as_str(), FileType::Fifo, mode, 0)
                    .map_err(|e| ctx.io("mkfifo", e.into()))?;
                self.owner(ctx, &dir, &name, meta)?;
                rustix::fs::chmodat(&dir, name.as_str(), mode, AtFlags::empty())
                    .map_err(|e| ctx.io("chmod", e.into()))?;
                self.times(ctx, &dir, &name, meta)?;
            }
        }
        Ok(())
    }

    fn remove(&mut self, ctx: &Ctx, path: &[String]) -> Result<(), FlattenError> {
        match self.lookup(ctx, path)? {
            Lookup::Missing => Ok(()),
            Lookup::Dir => {
                let (dir, name) = self.parent(ctx, path)?;
                remove_tree_at(&dir, &name).map_err(|e| ctx.io("removing a directory", e))
            }
            _ => {
                let (dir, name) = self.parent(ctx, path)?;
                rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty())
                    .map_err(|e| ctx.io("unlink", e.into()))
            }
        }
    }

    fn children(&self, ctx: &Ctx, dir: &[String]) -> Result<Vec<String>, FlattenError> {
        let fd = self.open_dir(ctx, dir)?;
        let fd = rustix::fs::openat(
            &fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ctx.io("opendir", e.into()))?;
        let mut out = Vec::new();
        for entry in
            rustix::fs::Dir::read_from(fd.as_fd()).map_err(|e| ctx.io("readdir", e.into()))?
        {
            let entry = entry.map_err(|e| ctx.io("readdir", e.into()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn mkdir(&mut self, ctx: &Ctx, path: &[String]) -> Result<(), FlattenError> {
        let (dir, name) = self.parent(ctx, path)?;
        rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755))
            .map_err(|e| ctx.io("mkdir", e.into()))
    }
}

/// Removes the directory `name` of `parent` and everything below it, each step relative to a
/// descriptor opened without following symlinks: a path joined from strings could be redirected
/// by a concurrent rename, a descriptor cannot.
fn remove_tree_at(parent: &OwnedFd, name: &str) -> io::Result<()> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir.as_fd())? {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            children.push((entry.file_name().to_owned(), entry.file_type()));
        }
    }
    for (child, kind) in children {
        let kind = match kind {
            // Some filesystems leave the type out of directory entries.
            FileType::Unknown => FileType::from_raw_mode(
                rustix::fs::statat(&dir, child.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?.st_mode,
            ),
            kind => kind,
        };
        if kind == FileType::Directory {
            let child = child
                .into_string()
                .map_err(|_| io::Error::other("directory name is not UTF-8"))?;
            remove_tree_at(&dir, &child)?;
        } else {
            rustix::fs::unlinkat(&dir, child.as_c_str(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Unpacks the image's layers into `dest` (created if missing), never writing outside it.
pub fn unpack_to_dir(
    store: &Store,
    image: &ResolvedImage,
    dest: &Path,
) -> Result<(), FlattenError> {
    unpack_to_dir_with(store, image, dest, &Limits::default())
}

/// [`unpack_to_dir`] with other [`Limits`] than the defaults.
pub fn unpack_to_dir_with(
    store: &Store,
    image: &ResolvedImage,
    dest: &Path,
    limits: &Limits,
) -> Result<(), FlattenError> {
    let mut sink = open_dir_sink(dest)?;
    apply_layers(store, image, &mut sink, limits)
}

fn open_dir_sink(dest: &Path) -> Result<DirSink, FlattenError> {
    let io_err = |source| FlattenError::Io {
        path: dest.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dest).map_err(io_err)?;
    let root = rustix::fs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(e.into()))?;
    Ok(DirSink {
        root,
        can_chown: rustix::process::geteuid().is_root(),
    })
}

#[cfg(test)]
mod tests;
