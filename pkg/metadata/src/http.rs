//! Plain-HTTP GET for the link-local metadata services.
//!
//! Hand-written over `std::net::TcpStream` on purpose: the services of AWS, GCP and OpenStack
//! answer plain HTTP on 169.254.169.254, and an HTTP client crate (with its TLS and async stacks)
//! would cost the multi-call binary more than its whole 6 MB budget allows for this. The request
//! is HTTP/1.0 with `Connection: close`, so the body is what follows the headers up to EOF (or
//! `Content-Length`); every read and connect has a timeout, and the answer is bounded in size.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The largest answer read: userdata is limited to 16 KiB on AWS and 256 KiB on GCP.
const MAX_RESPONSE: u64 = 1 << 20;

/// What a GET returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// GET `path` from `addr` with `headers`, each step within `timeout`.
pub fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n", addr.ip());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending GET {path} to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the answer to GET {path} from {addr}: {e}"))?;
    if raw.len() as u64 > MAX_RESPONSE {
        return Err(format!(
            "GET {path} from {addr}: the answer is larger than {MAX_RESPONSE} bytes"
        ));
    }
    parse(&raw).map_err(|e| format!("GET {path} from {addr}: {e}"))
}

/// An HTTP/1.x response: status line, headers, body.
pub fn parse(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("not an HTTP response (no end of headers)")?;
    let head = std::str::from_utf8(&raw[..end])
        .map_err(|_| "not an HTTP response (headers are not text)")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP response: {:?}", truncate(status_line)));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| format!("bad HTTP status line {:?}", truncate(status_line)))?;
    let mut body = raw[end + 4..].to_vec();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad HTTP header line {:?}", truncate(line)));
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .trim()
                .parse()
                .map_err(|_| format!("bad Content-Length {:?}", truncate(value)))?;
            if len > body.len() {
                return Err(format!(
                    "the body is shorter ({} bytes) than its Content-Length ({len})",
                    body.len()
                ));
            }
            body.truncate(len);
        }
    }
    Ok(Response { status, body })
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_with_a_length_is_cut_to_it() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body: b"abc".to_vec()
            }
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for raw in [
            &b"garbage"[..],
            b"\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(parse(raw).is_err(), "{raw:?}");
        }
    }
}
