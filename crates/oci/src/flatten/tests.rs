use std::io::Cursor;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::*;

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
}

fn layer_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h.set_mode(0o644);
        h.set_size(0);
        let (path, data): (&str, &[u8]) = match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o750);
                (p, b"")
            }
            E::File(p, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                (p, d)
            }
            E::Symlink(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name(t).unwrap();
                (p, b"")
            }
            E::Hardlink(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_link_name(t).unwrap();
                (p, b"")
            }
            E::Char(p, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                h.set_mode(0o666);
                (p, b"")
            }
            E::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                (p, b"")
            }
        };
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Applies the layers to a tree sink and to a directory sink; returns both.
fn apply_both(layers: &[Vec<u8>]) -> (Tree, tempfile::TempDir) {
    let mut tree = TreeSink {
        tree: Tree::new(),
        links: HashMap::new(),
        lazy: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut dsink = open_dir_sink(dir.path()).unwrap();
    for l in layers {
        let d = Digest::of(l);
        apply_layer(
            "test/image:1",
            &d,
            Box::new(Cursor::new(l.clone())),
            &mut tree,
            &Limits::default(),
            &mut Usage::default(),
        )
        .unwrap();
        apply_layer(
            "test/image:1",
            &d,
            Box::new(Cursor::new(l.clone())),
            &mut dsink,
            &Limits::default(),
            &mut Usage::default(),
        )
        .unwrap();
    }
    (tree.finish(), dir)
}

fn file_data(tree: &Tree, path: &str) -> Vec<u8> {
    match &tree
        .get(path)
        .unwrap_or_else(|| panic!("{path} missing"))
        .kind
    {
        Kind::File(d) => d.to_vec(),
        other => panic!("{path}: {other:?}"),
    }
}

#[test]
fn whiteouts_remove_lower_entries() {
    let lower = layer_tar(&[
        E::File("etc/a", b"a"),
        E::File("etc/b", b"b"),
        E::Dir("var"),
        E::File("var/x/y", b"y"),
    ]);
    let upper = layer_tar(&[E::File("etc/.wh.a", b""), E::File(".wh.var", b"")]);
    let (tree, dir) = apply_both(&[lower, upper]);
    assert!(
        tree.get("etc/a").is_none() && tree.get("var").is_none() && tree.get("var/x/y").is_none()
    );
    assert_eq!(file_data(&tree, "etc/b"), b"b");
    assert!(
        tree.iter().all(|(p, _)| !p.contains(".wh.")),
        "whiteout markers are not content"
    );
    assert!(!dir.path().join("etc/a").exists() && !dir.path().join("var").exists());
    assert_eq!(std::fs::read(dir.path().join("etc/b")).unwrap(), b"b");
}

#[test]
fn opaque_directories_hide_lower_content_but_keep_their_own() {
    let lower = layer_tar(&[
        E::File("d/old", b"o"),
        E::File("d/sub/old", b"o"),
        E::File("keep", b"k"),
    ]);
    let upper = layer_tar(&[
        E::Dir("d"),
        E::File("d/new", b"n"),
        E::File("d/.wh..wh..opq", b""),
    ]);
    let (tree, dir) = apply_both(&[lower, upper]);
    assert!(tree.get("d/old").is_none() && tree.get("d/sub").is_none());
    assert_eq!(file_data(&tree, "d/new"), b"n");
    assert_eq!(file_data(&tree, "keep"), b"k");
    let mut names: Vec<_> = std::fs::read_dir(dir.path().join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["new"]);
}

#[test]
fn hard_links_share_content_and_survive_target_replacement() {
    let lower = layer_tar(&[
        E::File("bin/busybox", b"BB"),
        E::Hardlink("bin/sh", "bin/busybox"),
    ]);
    let (tree, dir) = apply_both(std::slice::from_ref(&lower));
    assert_eq!(
        tree.get("bin/sh").unwrap().kind,
        Kind::Hardlink("bin/busybox".into())
    );
    let a = std::fs::metadata(dir.path().join("bin/busybox")).unwrap();
    let b = std::fs::metadata(dir.path().join("bin/sh")).unwrap();
    assert_eq!(a.ino(), b.ino(), "one inode");
    assert_eq!(a.nlink(), 2);

    // A later layer replacing the target leaves the link with the old content, as on disk.
    let upper = layer_tar(&[E::File("bin/busybox", b"NEW")]);
    let (tree, dir) = apply_both(&[lower, upper]);
    assert_eq!(file_data(&tree, "bin/sh"), b"BB");
    assert_eq!(file_data(&tree, "bin/busybox"), b"NEW");
    assert_eq!(std::fs::read(dir.path().join("bin/sh")).unwrap(), b"BB");
}

#[test]
fn symlinks_are_kept_and_followed_inside_the_root() {
    let l = layer_tar(&[
        E::Dir("usr/lib"),
        E::Symlink("lib", "usr/lib"),
        E::File("lib/libc.so", b"libc"),
        E::Symlink("bin/sh", "/bin/busybox"),
    ]);
    let (tree, dir) = apply_both(&[l]);
    assert_eq!(
        tree.get("lib").unwrap().kind,
        Kind::Symlink("usr/lib".into())
    );
    assert_eq!(file_data(&tree, "usr/lib/libc.so"), b"libc");
    assert_eq!(
        tree.get("bin/sh").unwrap().kind,
        Kind::Symlink("/bin/busybox".into())
    );
    assert_eq!(
        std::fs::read(dir.path().join("usr/lib/libc.so")).unwrap(),
        b"libc"
    );
    assert_eq!(
        std::fs::read_link(dir.path().join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(tree.get("usr/lib").unwrap().mode, 0o750);
}

#[test]
fn device_nodes_and_fifos_are_kept() {
    let l = layer_tar(&[E::Char("dev/null", 1, 3), E::Fifo("run/fifo")]);
    let (tree, dir) = apply_both(&[l]);
    assert_eq!(
        tree.get("dev/null").unwrap().kind,
        Kind::CharDevice { major: 1, minor: 3 }
    );
    assert_eq!(tree.get("dev/null").unwrap().mode, 0o666);
    assert_eq!(tree.get("run/fifo").unwrap().kind, Kind::Fifo);
    let m = std::fs::symlink_metadata(dir.path().join("dev/null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), rustix::fs::makedev(1, 3));
    assert!(
        std::fs::symlink_metadata(dir.path().join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn gzip_zstd_and_plain_layers_are_all_read() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let plain = layer_tar(&[E::File("plain", b"p")]);
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&layer_tar(&[E::File("gzip", b"g")])).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(
        &layer_tar(&[E::File("zstd", b"z"), E::File(".wh.plain", b"")])[..],
        3,
    )
    .unwrap();
    let mut tree = TreeSink {
        tree: Tree::new(),
        links: HashMap::new(),
        lazy: None,
    };
    for blob in [plain, gz, zst] {
        let d = store.put_blob(&blob).unwrap();
        apply_layer(
            "test/image:1",
            &d,
            open_layer(&store, &d).unwrap(),
            &mut tree,
            &Limits::default(),
            &mut Usage::default(),
        )
        .unwrap();
    }
    let tree = tree.finish();
    assert_eq!(file_data(&tree, "gzip"), b"g");
    assert_eq!(file_data(&tree, "zstd"), b"z");
    assert!(
        tree.get("plain").is_none(),
        "the zstd layer's whiteout applied"
    );
}

#[test]
fn entry_paths_are_checked() {
    assert_eq!(clean_path(b"./a//b/").unwrap(), ["a", "b"]);
    assert!(clean_path(b"/etc/passwd").is_err());
    assert!(clean_path(b"a/../../b").is_err());
    assert!(clean_path(b"\xff").is_err());
}

#[test]
fn a_tar_inside_an_image_applies_onto_a_tree_with_the_same_rules() {
    let mut base = Tree::new();
    base.insert("lib/modules/old.ko", Entry::file(b"old".to_vec(), 0o644));
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&layer_tar(&[
            E::File("lib/modules/new.ko", b"new"),
            E::File("lib/modules/.wh.old.ko", b""),
        ]))
        .unwrap();
        e.finish().unwrap()
    };
    let tree = apply_tar_to_tree(base, "kernel:kernel.tar", gz).unwrap();
    assert_eq!(file_data(&tree, "lib/modules/new.ko"), b"new");
    assert!(tree.get("lib/modules/old.ko").is_none());
    let hostile = layer_tar(&[E::Symlink("up", ".."), E::File("up/x", b"x")]);
    let err = apply_tar_to_tree(Tree::new(), "kernel:kernel.tar", hostile).unwrap_err();
    assert!(
        err.to_string().contains("kernel:kernel.tar") && err.to_string().contains("up/x"),
        "{err}"
    );
}

/// A lazily applied tar gives the same tree as an eager one once its placeholders are read back,
/// and reads no contents of the files it was told to leave.
#[test]
fn lazy_tar_file_matches_the_eager_tree() {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("lib/modules/1/kernel/a.ko", &b"module a"[..]),
        ("lib/modules/1/modules.dep", b"kernel/a.ko:\n"),
        ("lib/modules/1/kernel/b.ko", b"module bb"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    }
    let bytes = b.into_inner().unwrap();
    let eager = apply_tar_to_tree(Tree::new(), "t", bytes.clone()).unwrap();
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, &bytes).unwrap();
    let layer = Digest::of(b"t");
    let (mut lazy, files) =
        apply_tar_file_lazily(Tree::new(), "t", &layer, &file, |p| p.ends_with(".ko")).unwrap();
    assert_eq!(files.len(), 2);
    assert_ne!(lazy, eager, "module contents are not read yet");
    for f in &files {
        let entry = lazy.get_mut(&f.path).unwrap();
        entry.kind = Kind::File(Arc::new(f.read(&file).unwrap()));
    }
    assert_eq!(lazy, eager);
}
