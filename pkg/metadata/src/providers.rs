//! The network providers (AWS, GCP, OpenStack: all at the link-local 169.254.169.254) and `file=`.
//!
//! Each probes one well-known path first: no connection means the provider is absent; an answer
//! that is not HTTP, or not what the provider serves, is a failure with the path and what came
//! back; a 404 on an optional path (userdata, keys) means "none".

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::http::{self, Response};
use super::{Found, Outcome};

/// The link-local address every one of these clouds serves its metadata on.
pub const METADATA_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80));

/// Per connect and per read: a cloud's metadata service answers in milliseconds, and a machine
/// without one should not wait long per provider.
const TIMEOUT: Duration = Duration::from_secs(2);

const GCP_HEADERS: &[(&str, &str)] = &[("Metadata-Flavor", "Google")];

struct Service<'a> {
    addr: SocketAddr,
    headers: &'a [(&'a str, &'a str)],
}

impl Service<'_> {
    fn get(&self, path: &str) -> Result<Response, String> {
        http::get(self.addr, path, self.headers, TIMEOUT)
    }

    /// The body of `path` if it exists (200), None on 404, an error otherwise.
    fn optional(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
        let r = self.get(path)?;
        match r.status {
            200 => Ok(Some(r.body)),
            404 => Ok(None),
            s => Err(format!("GET {path}: HTTP status {s}")),
        }
    }

    /// The probe: Absent when nothing listens, Failed when something answers wrongly.
    fn probe(&self, path: &str) -> Result<Vec<u8>, Outcome> {
        let r = self.get(path).map_err(|e| {
            if e.starts_with("connecting") {
                Outcome::Absent(e)
            } else {
                Outcome::Failed(e)
            }
        })?;
        match r.status {
            200 => Ok(r.body),
            s => Err(Outcome::Absent(format!("GET {path}: HTTP status {s}"))),
        }
    }
}

fn text(body: &[u8], what: &str) -> Result<String, String> {
    let s = std::str::from_utf8(body).map_err(|_| format!("{what} is not UTF-8 text"))?;
    Ok(s.trim().to_string())
}

/// A value that goes into a file of its own, e.g. a hostname: one line of printable text.
fn one_line(body: &[u8], what: &str) -> Result<String, String> {
    let s = text(body, what)?;
    if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{what}: not a single line of text: {:?}",
            s.chars().take(80).collect::<String>()
        ));
    }
    Ok(s)
}

fn ok_or_failed(result: Result<Found, String>) -> Outcome {
    match result {
        Ok(found) => Outcome::Found(found),
        Err(e) => Outcome::Failed(e),
    }
}

/// AWS EC2's instance metadata service (IMDSv1 paths).
pub fn aws(addr: SocketAddr) -> Outcome {
    let svc = Service { addr, headers: &[] };
    let id = match svc.probe("/latest/meta-data/instance-id") {
        Ok(body) => body,
        Err(outcome) => return outcome,
    };
    ok_or_failed((|| {
        let mut found = Found::default();
        found.files.push((
            "instance_id".into(),
            one_line(&id, "instance-id")?.into_bytes(),
        ));
        for (path, file) in [
            ("hostname", "hostname"),
            ("instance-type", "instance_type"),
            ("local-ipv4", "local_ipv4"),
            ("public-ipv4", "public_ipv4"),
            ("placement/availability-zone", "availability_zone"),
        ] {
            if let Some(body) = svc.optional(&format!("/latest/meta-data/{path}"))? {
                found
                    .files
                    .push((file.into(), one_line(&body, path)?.into_bytes()));
            }
        }
        if let Some(key) = svc.optional("/latest/meta-data/public-keys/0/openssh-key")? {
            let key = text(&key, "public-keys/0/openssh-key")?;
            found.files.push((
                "ssh/authorized_keys".into(),
                format!("{key}\n").into_bytes(),
            ));
        }
        found.userdata = svc.optional("/latest/user-data")?;
        Ok(found)
    })())
}

/// Google Compute Engine's metadata server (it wants the `Metadata-Flavor: Google` header).
pub fn gcp(addr: SocketAddr) -> Outcome {
    let svc = Service {
        addr,
        headers: GCP_HEADERS,
    };
    let hostname = match svc.probe("/computeMetadata/v1/instance/hostname") {
        Ok(body) => body,
        Err(outcome) => return outcome,
    };
    ok_or_failed((|| {
        let mut found = Found::default();
        // GCE's hostname is the FQDN; the machine's name is its first label, as LinuxKit keeps it.
        let fqdn = one_line(&hostname, "instance/hostname")?;
        let short = fqdn.split('.').next().unwrap_or(&fqdn).to_string();
        found.files.push(("hostname".into(), short.into_bytes()));
        // `user:ssh-ed25519 AAA... comment` lines, project-wide then the instance's own.
        let mut keys = String::new();
        for path in [
            "project/attributes/ssh-keys",
            "instance/attributes/ssh-keys",
        ] {
            if let Some(body) = svc.optional(&format!("/computeMetadata/v1/{path}"))? {
                for line in text(&body, path)?.lines() {
                    let key = line.split_once(':').map_or(line, |(_, k)| k).trim();
                    if !key.is_empty() {
                        keys.push_str(key);
                        keys.push('\n');
                    }
                }
            }
        }
        if !keys.is_empty() {
            found
                .files
                .push(("ssh/authorized_keys".into(), keys.into_bytes()));
        }
        found.userdata = svc.optional("/computeMetadata/v1/instance/attributes/user-data")?;
        Ok(found)
    })())
}

/// OpenStack's metadata service (its own JSON, not the EC2-compatible paths).
pub fn openstack(addr: SocketAddr) -> Outcome {
    let svc = Service { addr, headers: &[] };
    let body = match svc.probe("/openstack/latest/meta_data.json") {
        Ok(body) => body,
        Err(outcome) => return outcome,
    };
    ok_or_failed((|| {
        let meta: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("/openstack/latest/meta_data.json is not JSON: {e}"))?;
        let mut found = Found::default();
        if let Some(host) = meta.get("hostname").and_then(|h| h.as_str()) {
            let host = one_line(host.as_bytes(), "meta_data.json: hostname")?;
            let short = host.split('.').next().unwrap_or(&host).to_string();
            found.files.push(("hostname".into(), short.into_bytes()));
        }
        if let Some(uuid) = meta.get("uuid").and_then(|h| h.as_str()) {
            found
                .files
                .push(("instance_id".into(), uuid.as_bytes().to_vec()));
        }
        if let Some(keys) = meta.get("public_keys").and_then(|k| k.as_object()) {
            let mut all = String::new();
            for key in keys.values().filter_map(|k| k.as_str()) {
                all.push_str(key.trim());
                all.push('\n');
            }
            if !all.is_empty() {
                found
                    .files
                    .push(("ssh/authorized_keys".into(), all.into_bytes()));
            }
        }
        found.userdata = svc.optional("/openstack/latest/user_data")?;
        Ok(found)
    })())
}

/// `file=PATH`: the userdata is that file.
pub fn file(path: &Path) -> Outcome {
    match std::fs::read(path) {
        Ok(data) => Outcome::Found(Found {
            userdata: Some(data),
            files: Vec::<(PathBuf, Vec<u8>)>::new(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Outcome::Absent(format!("{} does not exist", path.display()))
        }
        Err(e) => Outcome::Failed(format!("reading {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A local service answering each request with `answer(path)`.
    fn serve(answer: fn(&str) -> Vec<u8>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = req.split(' ').nth(1).unwrap_or("").to_string();
                let _ = s.write_all(&answer(&path));
            }
        });
        addr
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn aws_files_and_userdata() {
        let addr = serve(|path| match path {
            "/latest/meta-data/instance-id" => ok("i-123"),
            "/latest/meta-data/hostname" => ok("ip-10-0-0-1"),
            "/latest/meta-data/public-keys/0/openssh-key" => ok("ssh-ed25519 AAA me"),
            "/latest/user-data" => ok("{}"),
            _ => b"HTTP/1.0 404 Not Found\r\n\r\n".to_vec(),
        });
        let Outcome::Found(found) = aws(addr) else {
            panic!("not found")
        };
        assert_eq!(found.userdata.as_deref(), Some(&b"{}"[..]));
        assert!(
            found
                .files
                .contains(&("hostname".into(), b"ip-10-0-0-1".to_vec()))
        );
        assert!(found.files.contains(&(
            "ssh/authorized_keys".into(),
            b"ssh-ed25519 AAA me\n".to_vec()
        )));
    }

    #[test]
    fn a_service_answering_garbage_is_a_failure_naming_the_path() {
        let addr = serve(|_| b"garbage garbage".to_vec());
        let Outcome::Failed(e) = aws(addr) else {
            panic!("garbage accepted")
        };
        assert!(
            e.contains("/latest/meta-data/instance-id") && e.contains("not an HTTP response"),
            "{e}"
        );
        let Outcome::Failed(e) = openstack(serve(|_| ok("not json"))) else {
            panic!()
        };
        assert!(e.contains("meta_data.json is not JSON"), "{e}");
    }

    #[test]
    fn no_service_is_absent() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(matches!(gcp(addr), Outcome::Absent(_)));
    }
}
