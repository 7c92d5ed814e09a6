//! The host packages of issue 10 booted for real (QEMU TCG, two boots in parallel):
//!
//! - `slipway run qemu --data JSON`: the metadata CD is found by `metadata` (after the network
//!   providers find nothing), its JSON tree lands in /run/config and sets the hostname; `sysctl`
//!   applied LinuxKit's defaults (read back in /proc/sys); `rngd -1` credited entropy from the
//!   virtio-rng; `poweroff` ended the boot.
//! - A fake metadata service on the host, reached by the guest at 169.254.169.254 through QEMU's
//!   `guestfwd`, answers garbage on AWS's and GCP's paths and OpenStack's metadata on its own:
//!   metadata reports each garbage answer, goes on, and writes OpenStack's userdata, keys and
//!   hostname; the boot goes on.
//!
//! Also: a missing `--data-file` is an error naming it; each package builds to the same digest
//! twice. Needs qemu-system-x86 and busybox (the guestfwd's per-connection `busybox nc`).

mod qemu_direct;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use qemu_direct::{assert_packages_reproducible, boot, cache, slipway};

const PACKAGES: &[&str] = &["pkg/metadata", "pkg/sysctl", "pkg/rngd", "pkg/poweroff"];

fn build(manifest: &str, dir: &Path, name: &str) {
    let out = slipway(cache())
        .args(["build", "--name", name, "--dir"])
        .arg(dir)
        .arg(manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building {manifest} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fake metadata service: garbage for AWS and GCP, OpenStack's answers.
fn fake_service() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = request.split(' ').nth(1).unwrap_or("").to_string();
            let body = match path.as_str() {
                "/openstack/latest/meta_data.json" => Some(
                    r#"{"uuid":"u-1","hostname":"osbox.novalocal","public_keys":{"k":"ssh-ed25519 AAAAC3Nza test@host"}}"#,
                ),
                "/openstack/latest/user_data" => Some("userdata from openstack"),
                p if p.starts_with("/openstack/") => None,
                _ => {
                    let _ = s.write_all(b"this is no HTTP at all\n");
                    continue;
                }
            };
            let answer = match body {
                Some(b) => format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len()),
                None => "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
            };
            let _ = s.write_all(answer.as_bytes());
        }
    });
    port
}

#[test]
fn metadata_from_a_cd_and_from_a_service_with_sysctl_rngd_and_poweroff() {
    let dir = tempfile::tempdir().unwrap();
    // Built one after the other: they share the store and its packages.
    build("tests/data/metadata-cd.yml", dir.path(), "cd");
    build("tests/data/metadata-http.yml", dir.path(), "http");

    let cd = {
        let target = dir.path().join("cd");
        let state = dir.path().join("cd-state");
        std::thread::spawn(move || {
            let data = r#"{"greeting":{"entries":{"hello":{"perm":"0640","content":"hi from the CD"}}},"hostname":{"content":"cdbox"}}"#;
            let out = slipway(cache())
                .args([
                    "run",
                    "qemu",
                    "--networking",
                    "none",
                    "--mem",
                    "512",
                    "--timeout",
                    "240",
                ])
                .arg("--state")
                .arg(&state)
                .args(["--data", data])
                .arg(&target)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        })
    };
    let port = fake_service();
    let net = vec![
        "-netdev".to_string(),
        format!(
            "user,id=net0,restrict=on,net=169.254.169.0/24,host=169.254.169.2,guestfwd=tcp:169.254.169.254:80-cmd:busybox nc 127.0.0.1 {port}"
        ),
        "-device".into(),
        "virtio-net-pci,netdev=net0".into(),
    ];
    let http = boot(&dir.path().join("http"), "", &net, Duration::from_secs(240));

    let (clean, text) = cd.join().unwrap();
    for marker in [
        "rngd: added 4096 bits of entropy from /dev/hwrng",
        "metadata: aws: not found",
        "metadata: cdrom: read config from /dev/sr0",
        "metadata: hostname set to cdbox",
        "check: inotify=524288 maxmap=262144 kptr=2",
        "check: hello=hi from the CD mode=640",
        "check: hostname=cdbox",
        "slipway-init: SIGUSR2 received: power off",
    ] {
        assert!(text.contains(marker), "CD boot: no {marker:?}:\n{text}");
    }
    assert!(clean, "CD boot: no clean poweroff:\n{text}");

    let text = &http.console;
    for marker in [
        "metadata: error: aws: GET /latest/meta-data/instance-id from 169.254.169.254:80: not an HTTP response",
        "metadata: error: gcp: GET /computeMetadata/v1/instance/hostname",
        "metadata: openstack: found metadata",
        "check: userdata=userdata from openstack",
        "check: keys=ssh-ed25519 AAAAC3Nza test@host",
        "check: hostname=osbox",
    ] {
        assert!(text.contains(marker), "HTTP boot: no {marker:?}:\n{text}");
    }
    assert!(http.clean, "HTTP boot: no clean poweroff:\n{text}");
}

#[test]
fn a_missing_data_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-userdata");
    let out = slipway(dir.path())
        .args(["run", "qemu", "--data-file"])
        .arg(&missing)
        .arg(dir.path().join("img"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("reading --data-file {}", missing.display()))
            && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn the_host_packages_build_to_the_same_digest_twice() {
    assert_packages_reproducible(PACKAGES);
}
