//! `build --linuxkit`: LinuxKit's manifests, unchanged, build from this project's packages; and
//! the manifest's named volumes, mounted at boot (a manifest of LinuxKit's shape, booted).

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn slipway() -> Command {
    let mut cmd = Command::cargo_bin("slipway").unwrap();
    cmd.current_dir(root())
        .env("SLIPWAY_CACHE", root().join("target/slipway-test-cache"));
    cmd
}

/// The packages of the checkout, by folder name (every `pkg/NAME` with a build.yml): the test
/// covers the ones added later without a change.
fn packages() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("pkg"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("build.yml").is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn show_tag(dir: &str) -> String {
    let out = slipway().args(["pkg", "show-tag", dir]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// LinuxKit's usual head of a manifest: its kernel, and its init list naming the runtime twice.
const LINUXKIT_HEAD: &str = "kernel:\n  image: linuxkit/kernel:6.6.71\n  cmdline: \"console=ttyS0 panic=-1\"\n\
init:\n  - linuxkit/init:8eea386739975a43af558eec757a7dcb3a3d2e7b\n  - linuxkit/runc:667e7ea2c426a2460ca21e3da065a57dbb3369c9\n  - linuxkit/containerd:a988a1a8bcbacb2c0c4df8d0bbe7b83b9c4bd5bd\n";

#[test]
fn linuxkit_images_become_the_projects_packages_whatever_the_tag() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = LINUXKIT_HEAD.to_string();
    text.push_str("onboot:\n");
    for name in packages() {
        text.push_str(&format!(
            "  - name: {name}\n    image: linuxkit/{name}:0123456789abcdef\n"
        ));
    }
    let path = write(dir.path(), "lk.yml", &text);
    let out = slipway()
        .args(["build", "--dry-run", "--json", "--linuxkit"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &doc["manifest"];
    assert_eq!(m["kernel"]["image"], show_tag("kernel"));
    // init, runc and containerd: the init and the one engine, once.
    assert_eq!(
        m["init"],
        serde_json::json!([show_tag("pkg/init"), show_tag("pkg/engine")])
    );
    for (i, name) in packages().iter().enumerate() {
        assert_eq!(
            m["onboot"][i]["image"],
            show_tag(&format!("pkg/{name}")),
            "{name}"
        );
        assert!(
            stderr.contains(&format!(
                "onboot[{i}].image: linuxkit/{name}:0123456789abcdef -> pkg/{name}"
            )),
            "{name} reported:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("init[2]: linuxkit/containerd:a988a1a8bcbacb2c0c4df8d0bbe7b83b9c4bd5bd -> pkg/engine, already in init: dropped"),
        "{stderr}"
    );
    // Without --linuxkit the names stay registry references.
    slipway()
        .args(["build", "--dry-run"])
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("linuxkit/runc:667e7ea"));
}

#[test]
fn a_linuxkit_image_without_a_package_is_an_error_listing_the_packages() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "lk.yml",
        "onboot:\n  - name: x\n    image: linuxkit/no-such-package:v1\n",
    );
    let out = slipway()
        .args(["build", "--dry-run", "--linuxkit"])
        .arg(&path)
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).replace(['\n', '│', ' '], "");
    assert!(
        stderr.contains("lk.yml:3:12:onboot[0].image:`linuxkit/no-such-package:v1`hasnopackage"),
        "{stderr}"
    );
    for name in packages() {
        assert!(stderr.contains(&format!("linuxkit/{name}")), "{stderr}");
    }
}

#[test]
fn the_project_root_is_found_upward_or_given_with_pkg_root() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "lk.yml", LINUXKIT_HEAD);
    let from_sub = slipway()
        .current_dir(root().join("pkg/init/src"))
        .args(["build", "--dry-run", "--linuxkit"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(from_sub.status.success(), "{from_sub:?}");
    let elsewhere = || {
        let mut cmd = slipway();
        cmd.current_dir(dir.path());
        cmd.args(["build", "--dry-run", "--linuxkit"]);
        cmd
    };
    elsewhere()
        .arg(&path)
        .assert()
        .failure()
        .stderr(predicate::str::contains("no Slipway project root"));
    let given = elsewhere()
        .arg("--pkg-root")
        .arg(root())
        .arg(&path)
        .output()
        .unwrap();
    assert!(given.status.success(), "{given:?}");
    assert_eq!(given.stdout, from_sub.stdout);
}

#[test]
fn a_relative_mount_destination_is_accepted_with_a_warning() {
    // The shape of LinuxKit's test/cases/000_build/001_tarheaders.
    slipway()
        .args(["build", "--dry-run", "-"])
        .write_stdin(
            "services:\n  - name: t\n    image: linuxkit/ip:3c0676ee83a0dc739685be1253b8326f08581ef7\n    mounts:\n\
             \x20     - type: overlay\n        source: overlay\n        destination: writeable-host-etc\n\
             \x20       options: [rw, lowerdir=/etc, upperdir=/run/hostetc/upper, workdir=/run/hostetc/work]\n",
        )
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "<stdin>:7:22: services[0].mounts[0].destination: mount destination `writeable-host-etc` is relative: taken as `/writeable-host-etc`",
        ));
}

#[test]
fn an_oci_format_volume_is_refused_at_build_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "v.yml",
        "volumes:\n  - name: v\n    format: oci\n    platforms: [linux/amd64]\n",
    );
    slipway()
        .args(["build", "--dry-run"])
        .arg(&path)
        .assert()
        .success();
    slipway()
        .args(["build", "-f", "tar", "--dir"])
        .arg(dir.path())
        .arg(&path)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "v.yml:3:13: volumes[0].format: volume `v`: `format: oci`",
        ));
    assert!(!dir.path().join("v.tar").exists());
}

/// A LinuxKit-shaped manifest: a writer service fills an empty volume, a reader service sees it;
/// a read-only volume with an image's content shows the content and refuses writes.
#[test]
fn a_volume_written_by_one_service_is_read_by_another_after_a_linuxkit_build() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{LINUXKIT_HEAD}volumes:\n  - name: shared\n  - name: fixed\n    image: linuxkit/busybox:v1\n    readonly: true\n\
services:\n  - name: writer\n    image: linuxkit/busybox:v1\n    binds: [\"shared:/shared\"]\n\
\x20   command: [/bin/sh, -c, \"echo written-by-writer >/shared/msg; exec sleep 2147483647\"]\n\
\x20 - name: reader\n    image: linuxkit/busybox:v1\n    pid: host\n    capabilities: [CAP_KILL]\n\
\x20   binds: [\"shared:/shared\", \"fixed:/fixed:ro\"]\n\
\x20   devices:\n      - {{path: /dev/console, type: c, major: 5, minor: 1, mode: \"0620\"}}\n\
\x20   command:\n      - /bin/sh\n      - -c\n      - >-\n        for i in $(seq 120); do test -s /shared/msg && break; sleep 0.5; done;\n\
\x20       lower=$(test -x /fixed/bin/busybox && echo present);\n\
\x20       ro=$(touch /fixed/x 2>/dev/null && echo writable || echo refused);\n\
\x20       echo \"slipway-volume: msg=$(cat /shared/msg) lower=$lower ro=$ro\" >/dev/console;\n\
\x20       poweroff\n"
    );
    let path = write(dir.path(), "vol.yml", &text);
    slipway()
        .args(["build", "--linuxkit", "--name", "vol", "--dir"])
        .arg(dir.path())
        .arg(&path)
        .assert()
        .success();
    let out = slipway()
        .args(["run", "qemu", "--mem", "1024", "--timeout", "240"])
        .arg(dir.path().join("vol"))
        .timeout(std::time::Duration::from_secs(300))
        .output()
        .unwrap();
    let console =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        console.contains("slipway-volume: msg=written-by-writer lower=present ro=refused"),
        "{console}"
    );
    assert!(
        console.contains("volumes mounted: fixed, shared"),
        "{console}"
    );
}
