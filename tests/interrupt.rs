//! A build interrupted by Ctrl-C (SIGINT) or SIGTERM leaves no temporary file in the store or in
//! the output folder, and `--json -o -` keeps the stream clean.
//!
//! The registry is a small hand-written server on std's TcpListener: it has to stall in the middle
//! of a blob on purpose, which no real registry does.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use slipway::oci::Digest;

/// xorshift bytes: incompressible, so writing them takes a while.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A layer holding one file of `len` noise bytes.
fn layer(len: usize) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let data = noise(len, 5);
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    tar.append_data(&mut header, "bin/app", &data[..]).unwrap();
    tar.into_inner().unwrap()
}

/// Serves `test/app:1`, one layer; with `stall`, the layer stops after 1000 bytes and the
/// connection stays open. Returns the port.
fn serve(layer: Vec<u8>, stall: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer_d = Digest::of(&layer);
    let config_d = Digest::of(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d.to_string(), "size": layer.len()}]
    }))
    .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (layer, config, manifest) = (layer.clone(), config.clone(), manifest.clone());
            let (layer_d, config_d) = (layer_d.clone(), config_d.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut reader = BufReader::new(conn.try_clone()?);
                let mut line = String::new();
                reader.read_line(&mut line)?;
                let head = line.starts_with("HEAD");
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h)? == 0 || h == "\r\n" {
                        break;
                    }
                }
                let (ctype, body): (&str, &[u8]) = if path == "/v2/" {
                    ("application/json", b"{}")
                } else if path.contains("/manifests/") {
                    ("application/vnd.oci.image.manifest.v1+json", &manifest)
                } else if path.ends_with(config_d.as_str()) {
                    ("application/octet-stream", &config)
                } else if path.ends_with(layer_d.as_str()) {
                    ("application/octet-stream", &layer)
                } else {
                    write!(
                        conn,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )?;
                    return Ok(());
                };
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nDocker-Content-Digest: {}\r\nConnection: close\r\n\r\n",
                    body.len(),
                    Digest::of(body)
                )?;
                if head {
                    return Ok(());
                }
                if stall && body == &layer[..] {
                    conn.write_all(&body[..1000])?;
                    conn.flush()?;
                    std::thread::sleep(Duration::from_secs(120));
                    return Ok(());
                }
                conn.write_all(body)
            });
        }
    });
    port
}

struct Work {
    dir: tempfile::TempDir,
    port: u16,
}

impl Work {
    fn new(layer_bytes: usize, stall: bool) -> Work {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        let port = serve(layer(layer_bytes), stall);
        std::fs::write(
            dir.path().join("image.yml"),
            format!("init:\n  - 127.0.0.1:{port}/test/app:1\n"),
        )
        .unwrap();
        Work { dir, port }
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"));
        cmd.current_dir(self.dir.path())
            .env("SLIPWAY_CACHE", self.dir.path().join("store"))
            .args(["build", "--insecure-registry"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(args)
            .arg("image.yml");
        cmd
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Names in the store's blob folder and in `out/`, other than finished blobs.
    fn leftovers(&self) -> Vec<String> {
        let mut names = Vec::new();
        for dir in ["store/blobs/sha256", "out"] {
            let Ok(entries) = std::fs::read_dir(self.dir.path().join(dir)) else {
                continue;
            };
            for e in entries {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || dir == "out" {
                    names.push(format!("{dir}/{name}"));
                }
            }
        }
        names
    }
}

/// Waits until `ready` holds, failing the test if the build ends or 60 s pass first.
fn wait_for(child: &mut Child, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the build ended ({status}) before {what}: {err}");
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn interrupt(child: &mut Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the build outlived {signal}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!child.wait().unwrap().success());
}

fn has_temp_blob(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("store/blobs/sha256"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        })
        .unwrap_or(false)
}

#[test]
fn a_build_interrupted_during_the_pull_leaves_no_temporary_blob() {
    for signal in ["-INT", "-TERM"] {
        let work = Work::new(200_000, true);
        let mut child = work.spawn(&["-f", "tar", "--dir", "out"]);
        wait_for(&mut child, "a blob being pulled", || {
            has_temp_blob(work.dir.path())
        });
        interrupt(&mut child, signal);
        assert_eq!(work.leftovers(), Vec::<String>::new(), "after {signal}");
    }
}

/// The files the build has open in `dir` (an `O_TMPFILE` output shows as `dir/#inode (deleted)`).
fn open_in(pid: u32, dir: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)))
}

#[test]
fn a_build_interrupted_while_writing_leaves_nothing_in_the_output_folder() {
    // 48 MB of noise take long enough to write as gzip for the signal to land mid-write.
    let work = Work::new(48 << 20, false);
    let out = work.dir.path().join("out").canonicalize().unwrap();
    let mut child = work.spawn(&["-f", "tar", "--dir", "out"]);
    let pid = child.id();
    wait_for(&mut child, "an output being written", || open_in(pid, &out));
    interrupt(&mut child, "-INT");
    assert_eq!(work.leftovers(), Vec::<String>::new());
}

#[test]
fn json_with_output_to_standard_output_keeps_the_stream_a_tar() {
    let work = Work::new(10_000, false);
    let out = work.command(&["--json", "-o", "-"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut paths = Vec::new();
    let mut archive = tar::Archive::new(&out.stdout[..]);
    for entry in archive.entries().unwrap() {
        paths.push(entry.unwrap().path().unwrap().into_owned());
    }
    assert!(paths.iter().any(|p| p.ends_with("bin/app")), "{paths:?}");
    // The tar ends with its two zero blocks: nothing follows them.
    assert!(
        out.stdout.ends_with(&[0u8; 1024]),
        "the stream ends as a tar"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let json = &stderr[stderr.find("{\n").expect("a JSON document on stderr")..];
    let doc: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(doc["formats"][0], "tar");
}
