//! LinuxKit's `ca-certificates`, `openntpd` and `swap` packages booted for real, in one QEMU (TCG)
//! boot of tests/data/system-packages.yml with a blank virtio disk and QEMU's user network:
//!
//! - ca-certificates (an init image): the booted root's /etc/ssl/certs/ca-certificates.crt has
//!   the SHA-256 of the bundle this test makes itself from Debian's `.deb` (dpkg-deb, Mozilla's
//!   certificates in name order), as many certificates as that package has, and OpenSSL verifies
//!   Let's Encrypt's ISRG Root X1 (the build host's copy) against it.
//! - openntpd: a fake NTP server in this test, at 10.0.2.2:123 for the guest (QEMU's user network
//!   forwards it to the host's 127.0.0.1), answers with the host's time plus 100 days; `ntpd -d
//!   -s` drops its privileges, queries it and sets the guest's clock, which is then 100 days ahead.
//! - swap: format and mount put the disk on /var/external; `/swap.sh --path /var/external/swap
//!   --size 32M` makes the swap file and /proc/swaps lists it.
//!
//! Also: each package builds to the same digest twice. Needs qemu-system-x86, dpkg-deb and openssl;
//! binds UDP port 123 on 127.0.0.1 (root).

mod qemu_direct;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qemu_direct::{assert_packages_reproducible, boot, cache, raw_drive, slipway};

const PACKAGES: &[&str] = &["pkg/ca-certificates", "pkg/openntpd", "pkg/swap"];

/// 100 days: how far ahead the fake NTP server's clock is.
const AHEAD: u64 = 100 * 86400;
/// Seconds from the NTP epoch (1900) to the Unix epoch.
const NTP_UNIX: u64 = 2_208_988_800;

/// The fake NTP server (RFC 5905 server mode, stratum 1): every request gets the host's time
/// plus [`AHEAD`] as receive and transmit time, and its own transmit time back as origin.
fn fake_ntp_server() {
    let socket = UdpSocket::bind("127.0.0.1:123").expect("binding UDP 127.0.0.1:123 (needs root)");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if n < 48 {
                continue;
            }
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let secs = now.as_secs() + AHEAD + NTP_UNIX;
            let frac = (u64::from(now.subsec_nanos()) << 32) / 1_000_000_000;
            let ts = ((secs & 0xffff_ffff) << 32) | frac;
            let mut reply = [0u8; 48];
            reply[0] = 4 << 3 | 4; // leap 0, version 4, mode 4 (server)
            reply[1] = 1; // stratum 1
            reply[2] = buf[2]; // poll
            reply[3] = 0xec; // precision 2^-20
            reply[12..16].copy_from_slice(b"LOCL");
            reply[16..24].copy_from_slice(&ts.to_be_bytes()); // reference
            reply[24..32].copy_from_slice(&buf[40..48]); // origin = the client's transmit
            reply[32..40].copy_from_slice(&ts.to_be_bytes()); // receive
            reply[40..48].copy_from_slice(&ts.to_be_bytes()); // transmit
            let _ = socket.send_to(&reply, peer);
        }
    });
}

/// Debian's bundle made independently of Slipway: the `.deb` unpacked by dpkg-deb, its Mozilla
/// certificates joined in name order. Returns the bundle's path (in `dir`) and its count.
fn expected_bundle(dir: &Path) -> (std::path::PathBuf, usize) {
    let spec = slipway::pkg::deb::resolve("ca-certificates", None).unwrap();
    let deb = slipway::pkg::deb::fetch(&spec, &slipway::pkg::default_deb_cache()).unwrap();
    let root = dir.join("ca-deb");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success(), "dpkg-deb -x {}", deb.display());
    let mozilla = root.join("usr/share/ca-certificates/mozilla");
    let mut names: Vec<_> = std::fs::read_dir(&mozilla)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut bundle = Vec::new();
    for name in &names {
        let mut pem = std::fs::read(mozilla.join(name)).unwrap();
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        bundle.extend(pem);
    }
    let path = dir.join("expected-ca-certificates.crt");
    std::fs::write(&path, bundle).unwrap();
    (path, names.len())
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn ca_certificates_openntpd_and_swap_do_their_jobs_in_a_booted_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = slipway(cache())
        .args(["build", "--name", "host", "--dir"])
        .arg(dir.path())
        .arg("tests/data/system-packages.yml")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    fake_ntp_server();
    let mut args = raw_drive(&disk, ",if=virtio");
    args.extend([
        "-netdev".to_string(),
        "user,id=net0".into(),
        "-device".into(),
        "virtio-net-pci,netdev=net0".into(),
    ]);
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let booted = boot(
        &dir.path().join("host"),
        "",
        &args,
        Duration::from_secs(300),
    );
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let text = &booted.console;

    // ca-certificates
    let (bundle, count) = expected_bundle(dir.path());
    assert!(count > 100, "Debian's package has {count} certificates");
    for marker in [
        format!("check: certificates={count}"),
        format!("check: bundle-sha256={}", sha256_hex(&bundle)),
    ] {
        assert!(text.contains(&marker), "no {marker:?}:\n{text}");
    }
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&bundle)
        .arg("/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt")
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // swap. /proc/swaps names the file from the root of its disk: the mount the swap container
    // opened it through went with that container. 32748 KiB is what the kernel counts usable in
    // a 32 MiB swap file (seen in its "Adding 32748k swap" line).
    assert!(
        text.contains("swap: /var/external/swap (32M) enabled")
            && text.contains("check: swaps=/swap file 32748 0")
            && text.contains("check: SwapTotal: 32748 kB"),
        "no swap file in /proc/swaps:\n{text}"
    );

    // openntpd
    for marker in [
        "check: ntpd: ntp engine ready",
        "check: ntpd: set local clock to",
    ] {
        assert!(text.contains(marker), "no {marker:?}:\n{text}");
    }
    let clock: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("check: clock="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no clock reported:\n{text}"));
    assert!(
        clock >= before + AHEAD && clock <= after + AHEAD,
        "the guest's clock {clock} is not the NTP server's ({} .. {}):\n{text}",
        before + AHEAD,
        after + AHEAD
    );
    assert!(booted.clean, "no clean poweroff:\n{text}");
}

#[test]
fn ca_certificates_openntpd_and_swap_build_to_the_same_digest_twice() {
    assert_packages_reproducible(PACKAGES);
}

/// swap.sh's refusals, run by the build host's busybox sh (the package's shell): each names what
/// is wrong and fails before touching anything.
#[test]
fn swap_sh_refuses_bad_arguments_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("swap");
    let outside = outside.to_str().unwrap();
    for (args, message) in [
        (vec!["--size", "1G"], "--path PATH is required"),
        (
            vec!["--path", outside, "--size", "1G"],
            "--path must be a file under /var",
        ),
        (vec!["--path", "/var/x/swap"], "--size SIZE is required"),
        (
            vec!["--path", "/var/x/swap", "--size", "12T"],
            "bad size '12T'",
        ),
        (vec!["--encrypt"], "--encrypt is not supported"),
        (vec!["--frobnicate"], "unknown option '--frobnicate'"),
        (
            vec![
                "--path",
                "/var/x/swap",
                "--size",
                "1M",
                "--condition",
                "disk:/x",
            ],
            "unknown condition 'disk:/x'",
        ),
    ] {
        let out = Command::new("busybox")
            .args(["sh", "pkg/swap/swap.sh"])
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(message),
            "{args:?}: {err}"
        );
    }
    assert!(!Path::new(outside).exists());
}
