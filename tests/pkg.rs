//! `slipway pkg`: package folders built into images for real (Debian packages downloaded with
//! apt-get, a workspace crate built static), checked by reading the images back from the store,
//! and pushed to a real registry (Debian's docker-registry, one per test, via scripts/registry).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use assert_cmd::Command;
use slipway::oci::{Digest, Store};
use slipway::pkg::{self, BuildOptions, modules};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Downloaded .debs are kept across tests (named by checksum, so sharing is safe).
fn deb_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("slipway-debs")
}

fn opts() -> BuildOptions {
    BuildOptions {
        force: false,
        deb_cache: deb_cache(),
    }
}

fn slipway(cache: &Path) -> Command {
    let mut cmd = Command::cargo_bin("slipway").unwrap();
    cmd.arg("--cache")
        .arg(cache)
        .env_remove("SLIPWAY_CACHE")
        .env("SLIPWAY_DEB_CACHE", deb_cache())
        .env("DOCKER_CONFIG", cache.join("no-docker-config"));
    cmd
}

fn json_stdout(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "slipway failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

/// One file of a layer: type, mode, uid, gid, contents or link target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    data: Vec<u8>,
}

struct Image {
    config: serde_json::Value,
    files: BTreeMap<String, Item>,
}

fn untar(data: &[u8]) -> BTreeMap<String, Item> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(data);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let h = e.header().clone();
        let mut data = Vec::new();
        if let Some(link) = e.link_name().unwrap() {
            data = link.to_string_lossy().as_bytes().to_vec();
        } else {
            e.read_to_end(&mut data).unwrap();
        }
        out.insert(
            path,
            Item {
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                data,
            },
        );
    }
    out
}

/// Reads an image back from the store, checking every blob against its digest on the way.
fn read_image(store: &Store, reference: &str) -> Image {
    let desc = store
        .lookup(reference)
        .unwrap()
        .expect("the image is named in the store");
    let blob = |d: &str| {
        let d: Digest = d.parse().unwrap();
        let data = store.read_blob(&d).unwrap();
        assert_eq!(Digest::of(&data), d);
        data
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(desc.digest().as_ref())).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let gz = blob(layers[0]["digest"].as_str().unwrap());
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        Digest::of(&tar).to_string()
    );
    Image {
        config,
        files: untar(&tar),
    }
}

/// A docker-registry on a free loopback port, stopped on drop.
struct Registry {
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let out = StdCommand::new(root().join("scripts/registry"))
                .args(["start", "--port", &port.to_string()])
                .env("SLIPWAY_REGISTRY_DIR", dir.path())
                .output()
                .unwrap();
            if out.status.success() {
                return Registry { port, dir };
            }
            eprintln!(
                "registry start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        panic!("could not start docker-registry");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = StdCommand::new(root().join("scripts/registry"))
            .args(["stop", "--port", &self.port.to_string()])
            .env("SLIPWAY_REGISTRY_DIR", self.dir.path())
            .status();
    }
}

#[test]
fn busybox_builds_to_the_same_digest_twice_and_on_a_clean_store() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let dir = root().join("pkg/busybox");
    let build = |store: &Path, extra: &[&str]| {
        let out = slipway(store)
            .args(["pkg", "build", "--json"])
            .args(extra)
            .arg(&dir)
            .output()
            .unwrap();
        json_stdout(&out)["images"][0].clone()
    };
    let first = build(a.path(), &[]);
    assert_eq!(first["cached"], false);
    let again = build(a.path(), &[]);
    assert_eq!(again["cached"], true, "an unchanged package is not rebuilt");
    let clean = build(b.path(), &[]);
    assert_eq!(clean["cached"], false);
    let forced = build(a.path(), &["--force"]);
    assert_eq!(forced["cached"], false);
    for other in [&again, &clean, &forced] {
        assert_eq!(other["digest"], first["digest"]);
        assert_eq!(other["reference"], first["reference"]);
    }
    let tag = slipway(a.path())
        .args(["pkg", "show-tag"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(tag.status.success());
    let name = String::from_utf8(tag.stdout).unwrap();
    assert_eq!(
        format!("docker.io/{}", name.trim()),
        first["reference"].as_str().unwrap()
    );
    assert!(name.starts_with("slipway/busybox:"));
}

#[test]
fn busybox_image_has_the_static_binary_and_its_applet_links() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let built = pkg::build(&store, &root().join("pkg/busybox"), &opts()).unwrap();
    let image = read_image(&store, &built.reference);
    assert_eq!(image.config["architecture"], "amd64");
    assert_eq!(image.config["os"], "linux");
    let bb = &image.files["bin/busybox"];
    assert_eq!(
        (bb.kind, bb.mode, bb.uid),
        (tar::EntryType::Regular, 0o755, 0)
    );
    slipway::pkg::cargo::check_static(&bb.data).unwrap();
    for applet in ["bin/sh", "bin/ls", "sbin/poweroff", "bin/mount"] {
        let link = &image.files[applet];
        assert_eq!(link.kind, tar::EntryType::Symlink, "{applet}");
        assert_eq!(link.data, b"/bin/busybox", "{applet}");
    }
    // `paths: [/bin/busybox]` keeps the package's docs out.
    assert!(!image.files.keys().any(|p| p.starts_with("usr/share/doc")));
}

/// A package made in a temporary folder from its own files.
fn scratch_package(build_yml: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("build.yml"), build_yml).unwrap();
    std::fs::create_dir_all(d.path().join("rootfs/etc")).unwrap();
    std::fs::write(d.path().join("rootfs/etc/motd"), "hello\n").unwrap();
    std::fs::write(d.path().join("rootfs/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        d.path().join("rootfs/run.sh"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    d
}

const SCRATCH: &str = "image: scratch-test
org: example
config:
  pid: host
  binds: [/var:/var]
labels:
  org.example.note: kept
cmd: [/run.sh]
contents:
  - files: rootfs
    to: /
  - symlinks: {/bin/hello: /run.sh}
  - dirs: [/proc, /sys]
  - files: rootfs/etc/motd
    to: /etc/issue
    uid: 1000
    gid: 1000
";

#[test]
fn folder_files_config_label_and_links_end_up_in_the_image() {
    let pkgdir = scratch_package(SCRATCH);
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let built = pkg::build(&store, pkgdir.path(), &opts()).unwrap();
    assert!(
        built
            .reference
            .starts_with("docker.io/example/scratch-test:")
    );
    let image = read_image(&store, &built.reference);
    let labels = &image.config["config"]["Labels"];
    let config: serde_json::Value =
        serde_json::from_str(labels["org.mobyproject.config"].as_str().unwrap()).unwrap();
    assert_eq!(
        config,
        serde_json::json!({"pid": "host", "binds": ["/var:/var"]})
    );
    assert_eq!(labels["org.example.note"], "kept");
    assert_eq!(
        image.config["config"]["Cmd"],
        serde_json::json!(["/run.sh"])
    );
    let f = &image.files;
    // Modes come from the exec bit only (0700 on disk becomes 0755).
    assert_eq!((f["run.sh"].mode, f["etc/motd"].mode), (0o755, 0o644));
    assert_eq!(f["etc/motd"].data, b"hello\n");
    assert_eq!((f["etc/issue"].uid, f["etc/motd"].uid), (1000, 0));
    assert_eq!(f["bin/hello"].data, b"/run.sh");
    assert_eq!(f["proc"].kind, tar::EntryType::Directory);
}

#[test]
fn tag_follows_the_package_contents() {
    let pkgdir = scratch_package(SCRATCH);
    let t0 = pkg::show_tag(pkgdir.path()).unwrap();
    assert!(t0.starts_with("example/scratch-test:"), "{t0}");
    assert_eq!(pkg::show_tag(pkgdir.path()).unwrap(), t0);
    std::fs::write(pkgdir.path().join("rootfs/etc/motd"), "changed\n").unwrap();
    let t1 = pkg::show_tag(pkgdir.path()).unwrap();
    assert_ne!(t1, t0);
    // A rebuilt image under the new tag carries the new file.
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let built = pkg::build(&store, pkgdir.path(), &opts()).unwrap();
    assert_eq!(built.reference, format!("docker.io/{t1}"));
    assert_eq!(
        read_image(&store, &built.reference).files["etc/motd"].data,
        b"changed\n"
    );
}

/// A copy of the checkout's sources (what git tracks, plus new files it does not ignore), so a
/// test can write into "the checkout" without touching the real one.
fn copy_of_the_checkout() -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    let listed = StdCommand::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(listed.status.success(), "git ls-files failed");
    for rel in listed.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).unwrap());
        let from = root().join(rel);
        // Listed but deleted in the work tree.
        if !from.is_file() {
            continue;
        }
        let to = copy.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
    }
    copy
}

#[test]
fn an_in_image_crate_tag_covers_its_own_sources_not_the_checkout() {
    let checkout = copy_of_the_checkout();
    let at = |rel: &str| checkout.path().join(rel);
    let tag = || {
        let out = slipway(&at("cache"))
            .args(["pkg", "show-tag"])
            .arg(at("pkg/engine"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let t0 = tag();
    assert!(t0.starts_with("slipway/engine:"), "{t0}");
    // Build output, other packages, the builder's own files and the repository's docs and tests
    // are not what the engine is built from.
    for (rel, text) in [
        (
            "target/x86_64-unknown-linux-musl/image/slipway-init",
            "binary",
        ),
        ("pkg/bootloader/notes.txt", "unrelated"),
        ("pkg/busybox/extra/file", "unrelated"),
        ("src/extra.rs", "// the builder"),
        ("tests/extra.rs", "// a test"),
        ("README.md", "rewritten"),
    ] {
        std::fs::create_dir_all(at(rel).parent().unwrap()).unwrap();
        std::fs::write(at(rel), text).unwrap();
        assert_eq!(tag(), t0, "writing {rel} changed the engine's tag");
    }
    // A source the engine links is.
    let lib = at("crates/runtime/src/lib.rs");
    let mut text = std::fs::read_to_string(&lib).unwrap();
    text.push_str("\n// changed\n");
    std::fs::write(&lib, text).unwrap();
    let t1 = tag();
    assert_ne!(
        t1, t0,
        "changing crates/runtime/src left the engine's tag alone"
    );
    std::fs::write(at("crates/oci/src/new_module.rs"), "// new").unwrap();
    assert_ne!(
        tag(),
        t1,
        "a new file in crates/oci left the engine's tag alone"
    );
}

#[test]
fn bad_build_yml_is_reported_with_file_line_and_field() {
    let cache = tempfile::tempdir().unwrap();
    let cases = [
        (
            "image: x\ncontents:\n  - deb: busybox-static\n    pathz: [/bin/busybox]\n",
            ":4:",
            "contents[0].pathz",
        ),
        (
            "image: x\ncontents:\n  - files: rootfs\n    to: /\n  - crate: a\n    deb: b\n",
            ":5:",
            "contents[1]",
        ),
        (
            "image: x\nconfig: {pid: host}\ncontents:\n  - files: rootfs\n    to: relative\n",
            ":4:",
            "contents[0].to",
        ),
        (
            "image: x\ncontents:\n  - deb: busybox-static\n    paths: 7\n",
            ":4:",
            "contents[0].paths",
        ),
    ];
    for (text, line, field) in cases {
        let pkgdir = scratch_package(text);
        let out = slipway(cache.path())
            .args(["pkg", "build"])
            .arg(pkgdir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let file = pkgdir.path().join("build.yml");
        assert!(
            stderr.contains(&format!("{}{line}", file.display())),
            "{text}: {stderr}"
        );
        assert!(stderr.contains(field), "{text}: {stderr}");
    }
}

#[test]
fn an_unknown_debian_package_is_named_in_the_error() {
    let pkgdir = scratch_package("image: x\ncontents:\n  - deb: no-such-package-slipway\n");
    let err = pkg::show_tag(pkgdir.path()).unwrap_err().to_string();
    assert!(err.contains("no-such-package-slipway"), "{err}");
}

#[test]
fn built_package_is_pushed_to_a_real_registry_and_pulls_back_identical() {
    let registry = Registry::start();
    let host = format!("127.0.0.1:{}", registry.port);
    let a = tempfile::tempdir().unwrap();
    let dir = root().join("pkg/busybox");
    let built = json_stdout(
        &slipway(a.path())
            .args(["pkg", "build", "--json"])
            .arg(&dir)
            .output()
            .unwrap(),
    );
    let digest = built["images"][0]["digest"].as_str().unwrap().to_string();
    let pushed = json_stdout(
        &slipway(a.path())
            .args(["pkg", "push", "--json", "--registry", &host])
            .arg(&dir)
            .output()
            .unwrap(),
    );
    let name = pkg::show_tag(&dir).unwrap();
    let target = format!("{host}/{name}");
    assert_eq!(pushed["images"][0]["reference"], target.as_str());
    assert_eq!(pushed["images"][0]["digest"], digest.as_str());
    // A fresh store pulls it from the registry: same manifest digest, same files.
    let b = tempfile::tempdir().unwrap();
    let pulled = json_stdout(
        &slipway(b.path())
            .args(["cache", "pull", "--json", &target])
            .output()
            .unwrap(),
    );
    assert_eq!(pulled["images"][0]["digest"], digest.as_str());
    let original = read_image(
        &Store::open(a.path()).unwrap(),
        built["images"][0]["reference"].as_str().unwrap(),
    );
    let copy = read_image(&Store::open(b.path()).unwrap(), &target);
    assert_eq!(original.files, copy.files);
}

/// The load order modprobe derives from a modules.dep line: from the end to the start, then the
/// module itself.
fn dep_line<'a>(dep: &'a str, module: &str) -> Vec<&'a str> {
    let line = dep
        .lines()
        .find(|l| {
            l.split(':')
                .next()
                .unwrap()
                .ends_with(&format!("/{module}.ko"))
        })
        .unwrap();
    line.split_once(':').unwrap().1.split_whitespace().collect()
}

#[test]
fn kernel_package_has_bzimage_config_modules_index_and_version_label() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let built = pkg::build(&store, &root().join("kernel"), &opts()).unwrap();
    let image = read_image(&store, &built.reference);
    let version = image.config["config"]["Labels"]["org.slipway.kernel.version"]
        .as_str()
        .unwrap()
        .to_string();
    // The generic kernel: every driver a module, so that images boot on any machine.
    assert!(
        version.ends_with("-amd64") && !version.contains("cloud"),
        "{version}"
    );
    let kernel = &image.files["kernel"].data;
    assert_eq!(&kernel[0x202..0x206], b"HdrS", "/kernel is a bzImage");
    let config = String::from_utf8_lossy(&image.files["kernel.config"].data).into_owned();
    for driver in [
        "CONFIG_VIRTIO_NET=m",
        "CONFIG_SATA_AHCI=m",
        "CONFIG_E1000=m",
    ] {
        assert!(config.contains(driver), "kernel.config lacks {driver}");
    }

    let modules = untar(&image.files["kernel.tar"].data);
    let base = format!("lib/modules/{version}");
    let dep = String::from_utf8(modules[&format!("{base}/modules.dep")].data.clone()).unwrap();
    let alias = String::from_utf8(modules[&format!("{base}/modules.alias")].data.clone()).unwrap();
    for module in [
        "kernel/drivers/net/virtio_net.ko",
        "kernel/drivers/ata/ahci.ko",
        "kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
        "kernel/drivers/net/vmxnet3/vmxnet3.ko",
    ] {
        assert!(
            modules.contains_key(&format!("{base}/{module}")),
            "{module}: modules are uncompressed .ko"
        );
    }

    // virtio_net needs net_failover (which needs failover) and the virtio core, each loaded
    // before what needs it: modprobe loads a modules.dep line from its end.
    let deps = dep_line(&dep, "virtio_net");
    let name = |p: &str| {
        p.rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(".ko")
            .to_string()
    };
    let names: Vec<String> = deps.iter().map(|p| name(p)).collect();
    for needed in ["net_failover", "failover", "virtio", "virtio_ring"] {
        assert!(
            names.iter().any(|n| n == needed),
            "virtio_net deps {names:?} lack {needed}"
        );
    }
    for (i, d) in deps.iter().enumerate() {
        for dd in dep_line(&dep, &name(d)) {
            let j = deps
                .iter()
                .position(|x| *x == dd)
                .expect("dependencies are listed transitively");
            assert!(j > i, "{dd} must load before {d}");
        }
    }

    // The virtio-net PCI device's modalias finds virtio_pci; the virtio bus's device 1 finds virtio_net.
    let lookup = |modalias: &str| -> Vec<String> {
        alias
            .lines()
            .filter_map(|l| l.strip_prefix("alias "))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(pattern, _)| modules::alias_matches(pattern, modalias))
            .map(|(_, m)| m.to_string())
            .collect()
    };
    assert!(
        lookup("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00")
            .contains(&"virtio_pci".to_string())
    );
    assert_eq!(lookup("virtio:d00000001v00001AF4"), ["virtio_net"]);
    assert!(alias.contains("alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n"));

    // Cross-check against kmod's depmod (a test tool only; the build never runs it): the same
    // dependency sets, aliases and soft dependencies.
    let scratch = tempfile::tempdir().unwrap();
    let mut tree = tar::Archive::new(image.files["kernel.tar"].data.as_slice());
    tree.unpack(scratch.path()).unwrap();
    let moddir = scratch.path().join(&base);
    let ours = |f: &str| std::fs::read_to_string(moddir.join(f)).unwrap();
    let (our_dep, our_alias, our_softdep) = (
        ours("modules.dep"),
        ours("modules.alias"),
        ours("modules.softdep"),
    );
    let status = StdCommand::new("depmod")
        .arg("-b")
        .arg(scratch.path())
        .arg(&version)
        .status();
    assert!(
        status
            .expect("depmod (Debian kmod) is installed for this test")
            .success()
    );
    let sets = |text: &str| -> BTreeMap<String, std::collections::BTreeSet<String>> {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, d)| {
                (
                    m.to_string(),
                    d.split_whitespace().map(str::to_string).collect(),
                )
            })
            .collect()
    };
    let lines = |text: &str, prefix: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    assert_eq!(sets(&our_dep), sets(&ours("modules.dep")));
    assert_eq!(
        lines(&our_alias, "alias "),
        lines(&ours("modules.alias"), "alias ")
    );
    assert_eq!(
        lines(&our_softdep, "softdep "),
        lines(&ours("modules.softdep"), "softdep ")
    );
}

#[test]
fn init_package_builds_a_static_init_with_its_mount_points() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let built = pkg::build(&store, &root().join("pkg/init"), &opts()).unwrap();
    let image = read_image(&store, &built.reference);
    let init = &image.files["init"];
    assert_eq!((init.kind, init.mode), (tar::EntryType::Regular, 0o755));
    slipway::pkg::cargo::check_static(&init.data).unwrap();
    // --remap-path-prefix: the checkout's path does not leak into the binary.
    let checkout = root().to_string_lossy().into_owned();
    assert!(
        !init
            .data
            .windows(checkout.len())
            .any(|w| w == checkout.as_bytes()),
        "{checkout} is in /init"
    );
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var",
        "containers",
        "etc",
    ] {
        assert_eq!(image.files[d].kind, tar::EntryType::Directory, "/{d}");
    }
}
