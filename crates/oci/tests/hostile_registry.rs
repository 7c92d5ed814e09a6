//! A hostile registry, in-process: a small HTTP/1.1 server on 127.0.0.1 that answers the
//! distribution API's three requests (`/v2/`, a manifest, its blobs) and misbehaves in one way per
//! test. Hand-written on std's TcpListener because the misbehaviours (a body longer than its
//! headers say, a body that never ends, an answer that stalls) are exactly what a well-behaved
//! server library refuses to produce.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use slipway_oci::{Digest, NetOptions, OciError, PullOptions, Store};

#[derive(Clone, Copy)]
enum Blob {
    /// The layer's exact bytes.
    Honest,
    /// The layer followed by 100 more bytes, with a matching Content-Length.
    Oversized,
    /// The layer without its last 10 bytes, with a matching Content-Length.
    Short,
    /// Bytes without end and without Content-Length.
    Endless,
    /// Headers and a few bytes, then silence.
    Stall,
    /// 503 for the first two requests, then the layer.
    FailTwice,
}

#[derive(Clone, Copy)]
enum Manifest {
    Honest,
    /// 404 with an OCI error body.
    Missing,
    /// A manifest that never ends.
    Endless,
}

struct Server {
    port: u16,
    layer: Vec<u8>,
    blob_requests: Arc<AtomicUsize>,
    manifest_requests: Arc<AtomicUsize>,
}

const LAYER_SIZE: usize = 64 << 10;

fn layer_bytes() -> Vec<u8> {
    (0..LAYER_SIZE).map(|i| (i * 7 % 251) as u8).collect()
}

fn serve(blob: Blob, manifest: Manifest) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let layer = layer_bytes();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer_d = Digest::of(&layer);
    let config_d = Digest::of(config);
    let manifest_body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d.to_string(), "size": layer.len()}]
    }))
    .unwrap();
    let blob_requests = Arc::new(AtomicUsize::new(0));
    let manifest_requests = Arc::new(AtomicUsize::new(0));
    let (br, mr) = (blob_requests.clone(), manifest_requests.clone());
    let served_layer = layer.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (layer, manifest_body, br, mr) = (
                served_layer.clone(),
                manifest_body.clone(),
                br.clone(),
                mr.clone(),
            );
            let (layer_d, config_d) = (layer_d.clone(), config_d.clone());
            std::thread::spawn(move || {
                let _ = handle(
                    conn,
                    blob,
                    manifest,
                    &layer,
                    &layer_d,
                    config,
                    &config_d,
                    &manifest_body,
                    &br,
                    &mr,
                );
            });
        }
    });
    Server {
        port,
        layer,
        blob_requests,
        manifest_requests,
    }
}

#[allow(clippy::too_many_arguments)]
fn handle(
    conn: TcpStream,
    blob: Blob,
    manifest: Manifest,
    layer: &[u8],
    layer_d: &Digest,
    config: &[u8],
    config_d: &Digest,
    manifest_body: &[u8],
    blob_requests: &AtomicUsize,
    manifest_requests: &AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    let respond = |out: &mut TcpStream, status: &str, ctype: &str, body: &[u8]| {
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        out.write_all(body)
    };
    if path == "/v2/" {
        return respond(&mut out, "200 OK", "application/json", b"{}");
    }
    if path.contains("/manifests/") {
        manifest_requests.fetch_add(1, Ordering::SeqCst);
        return match manifest {
            Manifest::Honest => respond(
                &mut out,
                "200 OK",
                "application/vnd.oci.image.manifest.v1+json",
                manifest_body,
            ),
            Manifest::Missing => respond(
                &mut out,
                "404 Not Found",
                "application/json",
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
            Manifest::Endless => {
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n"
                )?;
                let chunk = vec![b' '; 1 << 16];
                loop {
                    out.write_all(&chunk)?;
                }
            }
        };
    }
    if path.ends_with(config_d.as_str()) {
        return respond(&mut out, "200 OK", "application/octet-stream", config);
    }
    if !path.ends_with(layer_d.as_str()) {
        return respond(&mut out, "404 Not Found", "text/plain", b"no such blob");
    }
    let n = blob_requests.fetch_add(1, Ordering::SeqCst);
    match blob {
        Blob::Honest => respond(&mut out, "200 OK", "application/octet-stream", layer),
        Blob::FailTwice if n < 2 => respond(
            &mut out,
            "503 Service Unavailable",
            "text/plain",
            b"try later",
        ),
        Blob::FailTwice => respond(&mut out, "200 OK", "application/octet-stream", layer),
        Blob::Oversized => {
            let mut body = layer.to_vec();
            body.extend_from_slice(&[0u8; 100]);
            respond(&mut out, "200 OK", "application/octet-stream", &body)
        }
        Blob::Short => respond(
            &mut out,
            "200 OK",
            "application/octet-stream",
            &layer[..layer.len() - 10],
        ),
        Blob::Endless => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            )?;
            out.write_all(layer)?;
            let chunk = vec![0u8; 1 << 16];
            loop {
                out.write_all(&chunk)?;
            }
        }
        Blob::Stall => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                layer.len()
            )?;
            out.write_all(&layer[..1000])?;
            out.flush()?;
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        }
    }
}

fn fast_net() -> NetOptions {
    NetOptions {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(400),
        retries: 3,
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..Default::default()
    }
}

fn pull(
    server: &Server,
    store: &Store,
    net: NetOptions,
) -> Result<slipway_oci::ResolvedImage, OciError> {
    slipway_oci::resolve(
        store,
        &format!("127.0.0.1:{}/hostile/image:1", server.port),
        &PullOptions {
            net,
            ..Default::default()
        },
    )
}

/// The store holds no trace of the layer: neither the blob nor a temporary file.
fn assert_layer_absent(store: &Store, server: &Server) {
    assert!(
        !store.has_blob(&Digest::of(&server.layer)),
        "the layer never enters the store"
    );
    let leftovers: Vec<_> = std::fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary files left: {leftovers:?}"
    );
    assert!(store.images().unwrap().is_empty(), "nothing tagged");
}

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

#[test]
fn an_honest_registry_is_pulled() {
    let server = serve(Blob::Honest, Manifest::Honest);
    let (_dir, store) = temp_store();
    let image = pull(&server, &store, fast_net()).unwrap();
    assert_eq!(image.layers().unwrap(), [Digest::of(&server.layer)]);
    assert!(store.has_blob(&Digest::of(&server.layer)));
}

#[test]
fn an_oversized_blob_is_refused_and_never_stored() {
    let server = serve(Blob::Oversized, Manifest::Honest);
    let (_dir, store) = temp_store();
    let msg = pull(&server, &store, fast_net()).unwrap_err().to_string();
    assert!(
        msg.contains(&Digest::of(&server.layer).to_string())
            && msg.contains(&format!("more than the {LAYER_SIZE} bytes")),
        "{msg}"
    );
    assert_eq!(
        server.blob_requests.load(Ordering::SeqCst),
        1,
        "not retried"
    );
    assert_layer_absent(&store, &server);
}

#[test]
fn a_short_blob_is_refused_and_never_stored() {
    let server = serve(Blob::Short, Manifest::Honest);
    let (_dir, store) = temp_store();
    let msg = pull(&server, &store, fast_net()).unwrap_err().to_string();
    assert!(
        msg.contains(&Digest::of(&server.layer).to_string())
            && msg.contains(&format!(
                "sent {} of the {LAYER_SIZE} bytes",
                LAYER_SIZE - 10
            )),
        "{msg}"
    );
    assert_layer_absent(&store, &server);
}

#[test]
fn an_endless_blob_is_cut_at_its_descriptor_size() {
    let server = serve(Blob::Endless, Manifest::Honest);
    let (_dir, store) = temp_store();
    let started = Instant::now();
    let msg = pull(&server, &store, fast_net()).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("more than the {LAYER_SIZE} bytes")),
        "{msg}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "stopped early");
    assert_layer_absent(&store, &server);
}

#[test]
fn an_endless_manifest_is_cut_at_the_manifest_cap() {
    let server = serve(Blob::Honest, Manifest::Endless);
    let (_dir, store) = temp_store();
    let net = NetOptions {
        max_manifest_bytes: 1 << 20,
        ..fast_net()
    };
    let msg = pull(&server, &store, net).unwrap_err().to_string();
    assert!(msg.contains("larger than the 1048576-byte limit"), "{msg}");
    assert_eq!(
        server.manifest_requests.load(Ordering::SeqCst),
        1,
        "not retried"
    );
}

#[test]
fn a_stalling_registry_times_out_with_a_clear_error() {
    let server = serve(Blob::Stall, Manifest::Honest);
    let (_dir, store) = temp_store();
    let net = NetOptions {
        retries: 1,
        ..fast_net()
    };
    let started = Instant::now();
    let msg = pull(&server, &store, net).unwrap_err().to_string();
    assert!(
        msg.contains("timed out") && msg.contains("read timeout 400ms"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("127.0.0.1:{}", server.port)),
        "names the registry: {msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        server.blob_requests.load(Ordering::SeqCst),
        2,
        "a timeout is retried"
    );
    assert_layer_absent(&store, &server);
}

#[test]
fn a_registry_failing_twice_with_503_then_answering_is_retried() {
    let server = serve(Blob::FailTwice, Manifest::Honest);
    let (_dir, store) = temp_store();
    let image = pull(&server, &store, fast_net()).unwrap();
    assert_eq!(server.blob_requests.load(Ordering::SeqCst), 3);
    assert!(store.has_blob(&image.layers().unwrap()[0]));
}

#[test]
fn a_404_is_final_and_not_retried() {
    let server = serve(Blob::Honest, Manifest::Missing);
    let (_dir, store) = temp_store();
    let msg = pull(&server, &store, fast_net()).unwrap_err().to_string();
    assert!(
        msg.contains("manifest unknown") || msg.contains("MANIFEST_UNKNOWN"),
        "{msg}"
    );
    assert_eq!(
        server.manifest_requests.load(Ordering::SeqCst),
        1,
        "no retry"
    );
}
