//! Hostile layers against both flatten sinks: every escape attempt is rejected with the image,
//! layer and entry named, and nothing outside the destination changes.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use oci_spec::image::{Descriptor, MediaType};
use slipway::oci::{self, PullOptions, ResolvedImage, Store};

/// One raw tar entry; names are written byte for byte (the tar crate's safe setters would refuse
/// the hostile ones, which is the point of this test).
struct Raw<'a> {
    path: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    data: &'a [u8],
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        path,
        kind: tar::EntryType::Regular,
        link: "",
        data,
    }
}

fn raw_tar(entries: &[Raw]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..e.path.len()].copy_from_slice(e.path.as_bytes());
            gnu.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(if e.kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    b.into_inner().unwrap()
}

/// An image made of `layers` (plain tar), resolved from the store.
fn image(store: &Store, name: &str, layers: &[Vec<u8>]) -> ResolvedImage {
    let descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let d = store.put_blob(l).unwrap();
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": l.len()})
        })
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})).unwrap();
    let c = store.put_blob(&config).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c.to_string(), "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    let m = store.put_blob(&manifest).unwrap();
    store
        .tag(
            name,
            Descriptor::new(MediaType::ImageManifest, manifest.len() as u64, m.to_oci()),
        )
        .unwrap();
    oci::resolve(
        store,
        name,
        &PullOptions {
            offline: true,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Every path below `dir` with its contents (or link target), to compare before and after.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = fs::symlink_metadata(&p).unwrap();
            let key = p.strip_prefix(dir).unwrap().display().to_string();
            if meta.file_type().is_symlink() {
                out.insert(key, format!("-> {}", fs::read_link(&p).unwrap().display()));
            } else if meta.is_dir() {
                out.insert(key, "dir".into());
                stack.push(p);
            } else {
                out.insert(
                    key,
                    String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned(),
                );
            }
        }
    }
    out
}

#[test]
fn hostile_layers_are_rejected_by_both_sinks_and_nothing_outside_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    // The sentinel sits beside the destinations: `../sentinel` from any of them.
    let sentinel = tmp.path().join("work/sentinel");
    fs::create_dir_all(&sentinel).unwrap();
    fs::write(sentinel.join("keep"), b"unchanged").unwrap();
    let passwd_before = fs::read("/etc/passwd").unwrap();
    let before = snapshot(&tmp.path().join("work"));

    let symlink = |path, link| Raw {
        path,
        kind: tar::EntryType::Symlink,
        link,
        data: b"",
    };
    let hardlink = |path, link| Raw {
        path,
        kind: tar::EntryType::Link,
        link,
        data: b"",
    };
    let cases: Vec<(&str, Vec<Raw>, &str, &str)> = vec![
        (
            "dotdot",
            vec![file("../sentinel/evil", b"x")],
            "../sentinel/evil",
            "..",
        ),
        (
            "nested-dotdot",
            vec![file("a/../../sentinel/evil", b"x")],
            "a/../../sentinel/evil",
            "..",
        ),
        (
            "absolute",
            vec![file("/tmp/slipway-evil", b"x")],
            "/tmp/slipway-evil",
            "absolute",
        ),
        (
            "symlink-out",
            vec![symlink("out", "../sentinel"), file("out/evil", b"x")],
            "out/evil",
            "outside the root",
        ),
        (
            "symlink-chain-out",
            vec![
                symlink("a", "b/../.."),
                Raw {
                    path: "b",
                    kind: tar::EntryType::Directory,
                    link: "",
                    data: b"",
                },
                file("a/sentinel/evil", b"x"),
            ],
            "a/sentinel/evil",
            "outside the root",
        ),
        (
            "hardlink-passwd",
            vec![hardlink("pw", "/etc/passwd")],
            "pw",
            "absolute",
        ),
        (
            "hardlink-dotdot",
            vec![hardlink("keep", "../sentinel/keep")],
            "keep",
            "..",
        ),
        (
            "hardlink-through-symlink",
            vec![symlink("up", ".."), hardlink("keep", "up/sentinel/keep")],
            "keep",
            "outside the root",
        ),
        (
            "whiteout-empty",
            vec![file(".wh.", b"")],
            ".wh.",
            "whiteout",
        ),
        (
            "whiteout-dot",
            vec![file("sentinel/.wh..", b"")],
            "sentinel/.wh..",
            "whiteout",
        ),
        (
            "whiteout-dotdot",
            vec![file("a/.wh...", b"")],
            "a/.wh...",
            "whiteout",
        ),
    ];
    for (name, entries, entry, why) in cases {
        let img = image(&store, &format!("hostile/{name}:1"), &[raw_tar(&entries)]);
        let layer = img.layers().unwrap()[0].clone();
        let check = |err: oci::FlattenError, sink: &str| {
            let msg = err.to_string();
            assert!(
                msg.contains(&img.reference),
                "{name} ({sink}): names the image: {msg}"
            );
            assert!(
                msg.contains(&layer.to_string()),
                "{name} ({sink}): names the layer: {msg}"
            );
            assert!(
                msg.contains(entry),
                "{name} ({sink}): names the entry: {msg}"
            );
            assert!(msg.contains(why), "{name} ({sink}): says why: {msg}");
        };
        check(oci::flatten_into_tree(&store, &img).unwrap_err(), "tree");
        let dest = tmp.path().join("work").join(format!("dest-{name}"));
        check(oci::unpack_to_dir(&store, &img, &dest).unwrap_err(), "dir");
        fs::remove_dir_all(&dest).unwrap();
        assert_eq!(
            snapshot(&tmp.path().join("work")),
            before,
            "{name}: nothing outside the destination changed"
        );
    }
    assert!(!Path::new("/tmp/slipway-evil").exists());
    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd_before);
}

#[test]
fn absolute_symlinks_resolve_inside_the_image_root() {
    // `etc -> /private/etc` then `etc/hostname`: in the container that is /private/etc/hostname,
    // so that is where it goes, never to the host's /private or /etc.
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let entries = [
        Raw {
            path: "etc",
            kind: tar::EntryType::Symlink,
            link: "/private/etc",
            data: b"",
        },
        file("etc/hostname", b"slipway\n"),
    ];
    let img = image(&store, "absolute/symlink:1", &[raw_tar(&entries)]);
    let tree = oci::flatten_into_tree(&store, &img).unwrap();
    assert!(tree.get("private/etc/hostname").is_some());
    let dest = tmp.path().join("dest");
    oci::unpack_to_dir(&store, &img, &dest).unwrap();
    assert_eq!(
        fs::read(dest.join("private/etc/hostname")).unwrap(),
        b"slipway\n"
    );
    assert_eq!(
        fs::read_link(dest.join("etc")).unwrap(),
        Path::new("/private/etc")
    );
    assert!(!Path::new("/private/etc/hostname").exists());
}

#[test]
fn a_hostile_whiteout_never_removes_the_destination_it_unpacks_into() {
    // `.wh.` alone names the layer's own directory: at the top of a layer that is the folder a
    // user asked `slipway cache unpack` to fill, which may already hold their files.
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("store");
    let store = Store::open(&cache).unwrap();
    for (n, entry) in [".wh.", "etc/.wh..", "etc/.wh..."].into_iter().enumerate() {
        let layers = [
            raw_tar(&[file("etc/hostname", b"lower\n")]),
            raw_tar(&[file(entry, b"")]),
        ];
        let reference = format!("hostile/whiteout{n}:1");
        image(&store, &reference, &layers);
        let dest = tmp.path().join(format!("mine{n}"));
        fs::create_dir_all(&dest).unwrap();
        fs::write(dest.join("precious"), b"the user's own file").unwrap();
        let out = assert_cmd::Command::cargo_bin("slipway")
            .unwrap()
            .env("SLIPWAY_CACHE", &cache)
            .args(["cache", "unpack", "--offline", &reference])
            .arg(&dest)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{entry}: refused: {stderr}");
        assert!(
            stderr.contains(entry) && stderr.contains("whiteout"),
            "{entry}: {stderr}"
        );
        assert_eq!(
            fs::read(dest.join("precious")).unwrap(),
            b"the user's own file",
            "{entry}: the destination's own files survive"
        );
    }
}

#[test]
fn a_whiteout_hides_lower_layers_only_never_an_entry_of_its_own_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let lower = raw_tar(&[file("a", b"lower"), file("b", b"lower")]);
    // In the upper layer `a` is written and whited out; `.wh.b` hides the lower `b`.
    let upper = raw_tar(&[file("a", b"upper"), file(".wh.a", b""), file(".wh.b", b"")]);
    let img = image(&store, "whiteout/own:1", &[lower, upper]);
    let tree = oci::flatten_into_tree(&store, &img).unwrap();
    assert!(tree.get("a").is_some(), "own entry kept in the tree");
    assert!(tree.get("b").is_none(), "lower entry hidden in the tree");
    let dest = tmp.path().join("dest");
    oci::unpack_to_dir(&store, &img, &dest).unwrap();
    assert_eq!(fs::read(dest.join("a")).unwrap(), b"upper");
    assert!(!dest.join("b").exists());
}

/// One case per limit: the entries, the limits lowered to make them trip, the entry named and the
/// reason given.
#[test]
fn layers_beyond_the_limits_are_refused_naming_image_layer_and_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let small = oci::Limits {
        max_entry_size: 1000,
        max_total_size: 1500,
        max_path_len: 64,
        max_name_len: 16,
        max_entries: 5,
    };
    let long_path = "d/".repeat(40) + "f";
    let many: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
    let big = vec![b'x'; 1001];
    let half = vec![b'y'; 800];
    let cases: Vec<(&str, Vec<Raw>, &str, &str)> = vec![
        (
            "entry-size",
            vec![file("small", b"ok"), file("big", &big)],
            "big",
            "entry size 1001 bytes exceeds the limit of 1000",
        ),
        (
            "total-size",
            vec![file("a", &half), file("b", &half)],
            "b",
            "more than 1500 bytes (total size limit)",
        ),
        (
            "path-length",
            vec![file(&long_path, b"")],
            &long_path,
            "over the name length limit of 64",
        ),
        (
            "component-length",
            vec![file("a-name-of-twenty-bytes", b"")],
            "a-name-of-twenty-bytes",
            "22-byte component, over the name length limit of 16",
        ),
        (
            "link-target-length",
            vec![Raw {
                path: "l",
                kind: tar::EntryType::Symlink,
                link: "a-target-of-twenty-b",
                data: b"",
            }],
            "l",
            "link target has a 20-byte component",
        ),
        (
            "entry-count",
            many.iter().map(|n| file(n, b"")).collect(),
            "f5",
            "more than 5 entries",
        ),
    ];
    for (name, entries, entry, why) in cases {
        let img = image(&store, &format!("limits/{name}:1"), &[raw_tar(&entries)]);
        let layer = img.layers().unwrap()[0].clone();
        let check = |err: oci::FlattenError, sink: &str| {
            let msg = err.to_string();
            assert!(
                msg.contains(&img.reference) && msg.contains(&layer.to_string()),
                "{name} ({sink}): names image and layer: {msg}"
            );
            assert!(
                msg.contains(&format!("{entry:?}")),
                "{name} ({sink}): names the entry: {msg}"
            );
            assert!(msg.contains(why), "{name} ({sink}): says why: {msg}");
        };
        check(
            oci::flatten_into_tree_with(&store, &img, &small).unwrap_err(),
            "tree",
        );
        let dest = tmp.path().join(format!("dest-{name}"));
        check(
            oci::unpack_to_dir_with(&store, &img, &dest, &small).unwrap_err(),
            "dir",
        );
        // The defaults are generous: the same layer passes them.
        oci::flatten_into_tree(&store, &img).unwrap();
    }
}

#[test]
fn the_total_size_and_entry_count_span_all_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let data = vec![b'z'; 600];
    let layers = [
        raw_tar(&[file("a", &data)]),
        raw_tar(&[file("b", &data)]),
        raw_tar(&[file("c", &data)]),
    ];
    let img = image(&store, "limits/layers:1", &layers);
    let third = img.layers().unwrap()[2].clone();
    let limits = oci::Limits {
        max_total_size: 1500,
        ..Default::default()
    };
    let msg = oci::flatten_into_tree_with(&store, &img, &limits)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&third.to_string()) && msg.contains("\"c\"") && msg.contains("total size"),
        "{msg}"
    );
    let limits = oci::Limits {
        max_entries: 2,
        ..Default::default()
    };
    let msg = oci::flatten_into_tree_with(&store, &img, &limits)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&third.to_string()) && msg.contains("entries"),
        "{msg}"
    );
}

#[test]
fn device_nodes_keep_their_exact_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, mode, major, minor) in [
        ("dev/null", tar::EntryType::Char, 0o666, 1, 3),
        ("dev/loop9", tar::EntryType::Block, 0o660, 7, 9),
        ("dev/odd", tar::EntryType::Char, 0o4751, 1, 5),
        ("dev/pipe", tar::EntryType::Fifo, 0o622, 0, 0),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
    }
    let img = image(&store, "devices/modes:1", &[b.into_inner().unwrap()]);
    let tree = oci::flatten_into_tree(&store, &img).unwrap();
    for (path, mode) in [
        ("dev/null", 0o666),
        ("dev/loop9", 0o660),
        ("dev/odd", 0o4751),
        ("dev/pipe", 0o622),
    ] {
        assert_eq!(tree.get(path).unwrap().mode, mode, "tree {path}");
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping the directory sink: mknod needs root");
        return;
    }
    // The umask must not reach the result: make it strict for the unpack.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let dest = tmp.path().join("dest");
    let result = oci::unpack_to_dir(&store, &img, &dest);
    rustix::process::umask(old);
    result.unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for (path, mode, major_minor) in [
        ("dev/null", 0o666, Some((1, 3))),
        ("dev/loop9", 0o660, Some((7, 9))),
        ("dev/odd", 0o4751, Some((1, 5))),
        ("dev/pipe", 0o622, None),
    ] {
        let meta = fs::symlink_metadata(dest.join(path)).unwrap();
        assert_eq!(meta.mode() & 0o7777, mode, "dir {path}");
        if let Some((major, minor)) = major_minor {
            let ft = meta.file_type();
            assert!(ft.is_char_device() || ft.is_block_device(), "{path}");
            assert_eq!(
                (
                    rustix::fs::major(meta.rdev()),
                    rustix::fs::minor(meta.rdev())
                ),
                (major, minor),
                "{path}"
            );
        }
    }
}
