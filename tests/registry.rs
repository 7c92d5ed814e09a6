//! The store, registry client and `slipway cache` against a real registry: Debian's
//! docker-registry, started per test on its own loopback port with its own data directory
//! through `scripts/registry`, and stopped when the test ends.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use assert_cmd::Command;
use oci_spec::image::{Descriptor, MediaType};
use slipway::oci::{self, Digest, PullOptions, Store};

/// A docker-registry on a free loopback port, killed on drop.
struct Registry {
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start(htpasswd: Option<&Path>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        // Another process may grab the port between this probe and the registry's bind; retry.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut cmd = StdCommand::new(script());
            cmd.args(["start", "--port", &port.to_string()])
                .env("SLIPWAY_REGISTRY_DIR", dir.path());
            if let Some(h) = htpasswd {
                cmd.arg("--htpasswd").arg(h);
            }
            let out = cmd.output().unwrap();
            if out.status.success() {
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    format!("127.0.0.1:{port}")
                );
                return Registry { port, dir };
            }
            eprintln!(
                "registry start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        panic!("could not start docker-registry");
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's own file for a blob.
    fn blob_data(&self, d: &Digest) -> PathBuf {
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = StdCommand::new(script())
            .args(["stop", "--port", &self.port.to_string()])
            .env("SLIPWAY_REGISTRY_DIR", self.dir.path())
            .status();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/registry")
}

fn slipway(cache: &Path) -> Command {
    let mut cmd = Command::cargo_bin("slipway").unwrap();
    cmd.arg("--cache")
        .arg(cache)
        .env_remove("SLIPWAY_CACHE")
        .env("DOCKER_CONFIG", cache.join("no-docker-config"));
    cmd
}

/// A gzip'd tar layer of `files` (path, contents).
fn layer(files: &[(&str, &[u8])]) -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, *data).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let diff_id = Digest::of(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// Puts an image with `layers` into the store; returns (manifest digest, manifest size).
fn put_image(store: &Store, arch: &str, layers: &[Vec<(&str, &[u8])>]) -> (Digest, u64) {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for files in layers {
        let (blob, diff_id) = layer(files);
        let d = store.put_blob(&blob).unwrap();
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": blob.len()
        }));
        diff_ids.push(diff_id.to_string());
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let config_d = store.put_blob(&config).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d.to_string(), "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    (store.put_blob(&manifest).unwrap(), manifest.len() as u64)
}

fn tag_manifest(store: &Store, name: &str, d: &Digest, size: u64) {
    store
        .tag(
            name,
            Descriptor::new(MediaType::ImageManifest, size, d.to_oci()),
        )
        .unwrap();
}

/// Every blob of the store, by name.
fn blobs(store: &Store) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn json_stdout(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn two_layer_image(store: &Store) -> (Digest, u64) {
    put_image(
        store,
        "amd64",
        &[
            vec![("etc/os-release", b"ID=slipway\n"), ("bin/tool", b"v1")],
            vec![("bin/tool", b"v2 from the upper layer")],
        ],
    )
}

#[test]
fn pushed_image_pulls_back_byte_identical_by_tag_and_by_digest() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let store = Store::open(&cache).unwrap();
    let (m, size) = two_layer_image(&store);
    tag_manifest(&store, "slipway/test:local", &m, size);
    let original = blobs(&store);
    assert_eq!(original.len(), 4, "two layers, a config and a manifest");

    let target = format!("{}/slipway/test:v1", reg.host());
    slipway(&cache)
        .args(["cache", "push", "slipway/test:local", &target])
        .assert()
        .success();
    slipway(&cache).args(["cache", "clean"]).assert().success();
    assert!(blobs(&store).is_empty());
    assert!(store.images().unwrap().is_empty());

    let out = slipway(&cache)
        .args(["cache", "pull", "--json", &target])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = json_stdout(&out);
    assert_eq!(doc["images"][0]["reference"], target);
    assert_eq!(doc["images"][0]["digest"], m.to_string());
    assert_eq!(blobs(&store), original, "pull by tag gives the same bytes");

    let ls = slipway(&cache)
        .args(["cache", "ls", "--json"])
        .output()
        .unwrap();
    let doc = json_stdout(&ls);
    assert_eq!(doc["images"][0]["reference"], target);
    assert_eq!(doc["images"][0]["digest"], m.to_string());

    slipway(&cache).args(["cache", "clean"]).assert().success();
    let by_digest = format!("{}/slipway/test@{m}", reg.host());
    slipway(&cache)
        .args(["cache", "pull", &by_digest])
        .assert()
        .success();
    assert_eq!(
        blobs(&store),
        original,
        "pull by digest gives the same bytes"
    );

    // A digest the registry does not have is an error, not a silent fallback.
    let wrong = format!("{}/slipway/test@{}", reg.host(), Digest::of(b"nope"));
    slipway(&cache)
        .args(["cache", "pull", &wrong])
        .assert()
        .failure();

    // Offline resolution uses the store alone; rm forgets the image and collects its blobs.
    let offline = PullOptions {
        offline: true,
        ..Default::default()
    };
    assert_eq!(
        oci::resolve(&store, &by_digest, &offline).unwrap().digest,
        m
    );
    assert!(
        oci::resolve(&store, &target, &offline).is_err(),
        "the tag was not pulled this time"
    );
    slipway(&cache)
        .args(["cache", "rm", &by_digest])
        .assert()
        .success();
    assert!(blobs(&store).is_empty());
    let err = oci::resolve(&store, &by_digest, &offline).unwrap_err();
    assert!(err.to_string().contains("--offline"), "{err}");
}

#[test]
fn basic_auth_works_and_a_wrong_password_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let htpasswd = tmp.path().join("htpasswd");
    let out = StdCommand::new("htpasswd")
        .args(["-Bbn", "alice", "s3cret"])
        .output()
        .expect("htpasswd (apache2-utils)");
    assert!(out.status.success());
    fs::write(&htpasswd, &out.stdout).unwrap();
    let reg = Registry::start(Some(&htpasswd));

    let docker_config = |dir: &Path, user_pass: &str| {
        fs::create_dir_all(dir).unwrap();
        let b64 = StdCommand::new("base64")
            .arg("-w0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        b64.stdin
            .as_ref()
            .unwrap()
            .write_all(user_pass.as_bytes())
            .unwrap();
        let encoded = String::from_utf8(b64.wait_with_output().unwrap().stdout).unwrap();
        let config = serde_json::json!({"auths": {reg.host(): {"auth": encoded}}});
        fs::write(dir.join("config.json"), config.to_string()).unwrap();
    };
    let good = tmp.path().join("good");
    let bad = tmp.path().join("bad");
    docker_config(&good, "alice:s3cret");
    docker_config(&bad, "alice:wrong");

    let cache = tmp.path().join("cache");
    let store = Store::open(&cache).unwrap();
    let (m, size) = two_layer_image(&store);
    tag_manifest(&store, "slipway/auth:local", &m, size);
    let target = format!("{}/private/img:1", reg.host());

    // Anonymous push is refused.
    let out = slipway(&cache)
        .args(["cache", "push", "slipway/auth:local", &target])
        .output()
        .unwrap();
    assert!(!out.status.success());

    slipway(&cache)
        .env("DOCKER_CONFIG", &good)
        .args(["cache", "push", "slipway/auth:local", &target])
        .assert()
        .success();
    slipway(&cache).args(["cache", "clean"]).assert().success();

    let out = slipway(&cache)
        .env("DOCKER_CONFIG", &bad)
        .args(["cache", "pull", &target])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("authentication to {} failed", reg.host())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&target) && stderr.contains("config.json"),
        "{stderr}"
    );
    assert!(store.images().unwrap().is_empty());

    slipway(&cache)
        .env("DOCKER_CONFIG", &good)
        .args(["cache", "pull", &target])
        .assert()
        .success();
    assert!(store.lookup(&target).unwrap().is_some());
}

#[test]
fn multi_arch_index_resolves_to_amd64_or_the_requested_arch() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let store = Store::open(&cache).unwrap();
    let (amd, amd_size) = put_image(&store, "amd64", &[vec![("arch", b"amd64")]]);
    let (arm, arm_size) = put_image(&store, "arm64", &[vec![("arch", b"arm64")]]);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm.to_string(), "size": arm_size,
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd.to_string(), "size": amd_size,
             "platform": {"os": "linux", "architecture": "amd64"}}
        ]
    }))
    .unwrap();
    let index_d = store.put_blob(&index).unwrap();
    store
        .tag(
            "slipway/multi:local",
            Descriptor::new(MediaType::ImageIndex, index.len() as u64, index_d.to_oci()),
        )
        .unwrap();

    let target = format!("{}/slipway/multi:1", reg.host());
    let pushed = oci::push(
        &store,
        "slipway/multi:local",
        &target,
        &PullOptions::default(),
    )
    .unwrap();
    assert_eq!(pushed, index_d);
    store.clean().unwrap();

    let out = slipway(&cache)
        .args(["cache", "pull", "--json", "--arch", "amd64", &target])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = json_stdout(&out);
    assert_eq!(doc["images"][0]["digest"], index_d.to_string());
    assert_eq!(doc["images"][0]["manifest"], amd.to_string());
    assert!(
        store.has_blob(&amd) && !store.has_blob(&arm),
        "only the selected platform is stored"
    );
    let image = oci::resolve(
        &store,
        &target,
        &PullOptions {
            offline: true,
            arch: "amd64".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let tree = oci::flatten_into_tree(&store, &image).unwrap();
    assert_eq!(
        tree.get("arch").unwrap().kind,
        slipway::assemble::tree::Kind::File(b"amd64".to_vec().into())
    );

    let image = oci::resolve(
        &store,
        &target,
        &PullOptions {
            arch: "arm64".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(image.digest, arm);
    let err = oci::resolve(
        &store,
        &target,
        &PullOptions {
            arch: "riscv64".into(),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("linux/riscv64") && err.to_string().contains("linux/amd64"),
        "{err}"
    );
}

#[test]
fn export_then_import_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let store = Store::open(&cache).unwrap();
    let (m, size) = two_layer_image(&store);
    tag_manifest(&store, "docker.io/slipway/archive:1", &m, size);
    let original = blobs(&store);
    let archive = tmp.path().join("out/image.tar");
    fs::create_dir_all(archive.parent().unwrap()).unwrap();
    slipway(&cache)
        .args(["cache", "export", "slipway/archive:1", "-o"])
        .arg(&archive)
        .assert()
        .success();
    let names: Vec<_> = fs::read_dir(archive.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        ["image.tar"],
        "no temporary file is left beside the archive"
    );

    slipway(&cache).args(["cache", "clean"]).assert().success();
    slipway(&cache)
        .args(["cache", "import"])
        .arg(&archive)
        .assert()
        .success();
    assert_eq!(blobs(&store), original);
    assert_eq!(
        store
            .lookup("docker.io/slipway/archive:1")
            .unwrap()
            .unwrap()
            .digest()
            .to_string(),
        m.to_string()
    );

    let dir = tmp.path().join("rootfs");
    slipway(&cache)
        .args(["cache", "unpack", "--offline", "slipway/archive:1"])
        .arg(&dir)
        .assert()
        .success();
    assert_eq!(
        fs::read(dir.join("bin/tool")).unwrap(),
        b"v2 from the upper layer"
    );

    // An archive whose blob does not match its name is refused and leaves nothing behind.
    slipway(&cache).args(["cache", "clean"]).assert().success();
    let tampered = tmp.path().join("tampered.tar");
    let mut builder = tar::Builder::new(fs::File::create(&tampered).unwrap());
    let mut input = tar::Archive::new(fs::File::open(&archive).unwrap());
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if path.to_string_lossy().contains(m.hex()) {
            data[10] ^= 0xff;
        }
        let mut h = entry.header().clone();
        builder.append_data(&mut h, &path, &data[..]).unwrap();
    }
    builder.finish().unwrap();
    drop(builder);
    let out = slipway(&cache)
        .args(["cache", "import"])
        .arg(&tampered)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&m.to_string()));
    assert!(!store.has_blob(&m));
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn blob_corrupted_in_the_registry_fails_the_pull_and_leaves_no_trace() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let store = Store::open(&cache).unwrap();
    let (m, size) = two_layer_image(&store);
    tag_manifest(&store, "slipway/corrupt:local", &m, size);
    let image = oci::resolve(
        &store,
        "slipway/corrupt:local",
        &PullOptions {
            offline: true,
            ..Default::default()
        },
    )
    .unwrap();
    let victim = image.layers().unwrap()[1].clone();
    let target = format!("{}/slipway/corrupt:1", reg.host());
    slipway(&cache)
        .args(["cache", "push", "slipway/corrupt:local", &target])
        .assert()
        .success();
    slipway(&cache).args(["cache", "clean"]).assert().success();

    let data_file = reg.blob_data(&victim);
    let good = fs::read(&data_file).unwrap();
    let mut bad = good.clone();
    for b in bad.iter_mut().skip(20) {
        *b = !*b;
    }
    fs::write(&data_file, &bad).unwrap();

    let out = slipway(&cache)
        .args(["cache", "pull", &target])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&target), "names the reference: {stderr}");
    assert!(
        stderr.contains(&victim.to_string()),
        "names the expected digest: {stderr}"
    );
    assert!(
        stderr.contains(&Digest::of(&bad).to_string()),
        "names the actual digest: {stderr}"
    );
    assert!(!store.has_blob(&victim));
    let leftovers: Vec<_> = blobs(&store)
        .into_keys()
        .filter(|n| n.starts_with('.') || *n == victim.hex())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(store.images().unwrap().is_empty());

    fs::write(&data_file, &good).unwrap();
    slipway(&cache)
        .args(["cache", "pull", &target])
        .assert()
        .success();
    assert!(store.has_blob(&victim));
    assert_eq!(
        store.lookup(&target).unwrap().unwrap().digest().to_string(),
        m.to_string()
    );
}
