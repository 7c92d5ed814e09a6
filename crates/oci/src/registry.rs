//! Talking to registries: the oci-client configuration (TLS unless loopback or
//! `--insecure-registry`), credentials from `~/.docker/config.json` and its helpers, and blob
//! transfers streamed to and from files (never whole layers in memory).

use std::net::IpAddr;
use std::path::Path;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::io::AsyncWriteExt;

use super::OciError;
use super::digest::{Digest, Hasher};
use super::progress::Bar;
use super::store::Store;

/// Media types slipway accepts for manifests, most specific first.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A client bound to one registry, with the credentials found for it.
pub struct Registry {
    pub client: Client,
    pub auth: RegistryAuth,
    /// The registry host as written in references (`docker.io`, `127.0.0.1:5050`).
    pub host: String,
    /// Where the credentials came from, for error messages.
    pub auth_source: Option<String>,
}

/// True for `localhost`, `127.0.0.0/8` and `::1`, with or without a port: the only registries
/// reached over plain HTTP without being named by `--insecure-registry`.
pub fn is_loopback(host: &str) -> bool {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':')
            .map(|(h, p)| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            })
            .unwrap_or(host)
    };
    name == "localhost"
        || name
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

impl Registry {
    pub fn new(reference: &Reference, insecure: &[String]) -> Registry {
        let host = reference.registry().to_string();
        let resolved = reference.resolve_registry().to_string();
        let plain = is_loopback(&host) || insecure.iter().any(|i| i == &host || i == &resolved);
        let config = ClientConfig {
            protocol: if plain {
                ClientProtocol::HttpsExcept(vec![resolved])
            } else {
                ClientProtocol::Https
            },
            // A stream push needs its size up front; slipway always knows it (the blob is a file).
            use_monolithic_push: true,
            ..Default::default()
        };
        let (auth, auth_source) = credentials(&host);
        // reqwest takes the process-wide rustls provider; ring is the one linked (see Cargo.toml).
        // A second install fails harmlessly: the first one stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registry {
            client: Client::new(config),
            auth,
            host,
            auth_source,
        }
    }

    /// Runs the token flow (bearer) or records basic credentials for `op` on `reference`'s repository.
    pub async fn authenticate(
        &self,
        reference: &Reference,
        op: RegistryOperation,
    ) -> Result<(), OciError> {
        match self.client.auth(reference, &self.auth, op).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.map_err(reference, e)),
        }
    }

    /// Turns an oci-client error into one that names the reference and, for auth failures, says
    /// where the credentials came from.
    pub fn map_err(&self, reference: &Reference, err: OciDistributionError) -> OciError {
        let reference_s = reference.whole();
        let denied = match &err {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => true,
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        oci_client::errors::OciErrorCode::Unauthorized
                            | oci_client::errors::OciErrorCode::Denied
                    )
                })
            }
            _ => false,
        };
        if denied {
            return OciError::Auth {
                reference: reference_s,
                registry: self.host.clone(),
                credentials: self
                    .auth_source
                    .clone()
                    .unwrap_or_else(|| "none (anonymous)".into()),
                detail: err.to_string(),
            };
        }
        OciError::Registry {
            reference: reference_s,
            source: Box::new(err),
        }
    }

    /// Fetches a manifest or index exactly as the registry serves it.
    pub async fn manifest_raw(&self, reference: &Reference) -> Result<Vec<u8>, OciError> {
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| self.map_err(reference, e))?;
        Ok(bytes.to_vec())
    }

    /// Streams blob `desc` into the store: temporary file, sha256 checked, renamed in. On any
    /// failure the temporary file is removed and the store is unchanged.
    pub async fn fetch_blob(
        &self,
        store: &Store,
        reference: &Reference,
        digest: &Digest,
        media_type: &str,
        size: u64,
        bar: &Bar,
    ) -> Result<(), OciError> {
        if store.has_blob(digest) {
            bar.inc(size);
            return Ok(());
        }
        let desc = OciDescriptor {
            digest: digest.to_string(),
            media_type: media_type.to_string(),
            size: size as i64,
            ..Default::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(reference, &desc)
            .await
            .map_err(|e| self.map_err(reference, e))?;
        let tmp = store.temp_blob()?;
        let tmp_path = tmp.path().to_path_buf();
        let io = |source| OciError::Io {
            path: tmp_path.clone(),
            source,
        };
        let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(io)?);
        let mut hasher = Hasher::new();
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    hasher.update(&bytes);
                    file.write_all(&bytes).await.map_err(io)?;
                    bar.inc(bytes.len() as u64);
                }
                // oci-client's own verification reports a mismatch as a stream error after the
                // last chunk; the check below names both digests, so remember it and go on.
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        file.flush().await.map_err(io)?;
        drop(file);
        let actual = hasher.finish();
        if &actual != digest && (failure.is_none() || stream_was_complete(&tmp_path, size)) {
            // Dropping `tmp` deletes the partial file.
            return Err(OciError::BlobDigestMismatch {
                reference: reference.whole(),
                expected: digest.clone(),
                actual,
            });
        }
        if let Some(source) = failure {
            return Err(OciError::Io {
                path: tmp_path,
                source,
            });
        }
        store.commit_temp(tmp, digest)?;
        Ok(())
    }

    /// Uploads a blob from the store unless the registry already has it.
    pub async fn push_blob(
        &self,
        store: &Store,
        target: &Reference,
        digest: &Digest,
    ) -> Result<(), OciError> {
        let exists = self
            .client
            .blob_exists(target, digest.as_str())
            .await
            .map_err(|e| self.map_err(target, e))?;
        if exists {
            return Ok(());
        }
        let path = store.blob_path(digest);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|source| OciError::Io {
                path: path.clone(),
                source,
            })?;
        let size = file
            .metadata()
            .await
            .map_err(|source| OciError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        // Stream the file in 1 MiB chunks: layers can be large and must not sit in memory.
        let stream = futures_util::stream::unfold(file, |mut file| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), file))
                }
                Err(e) => Some((Err(OciDistributionError::IoError(e)), file)),
            }
        });
        self.client
            .push_blob_stream(target, stream, digest.as_str(), Some(size))
            .await
            .map_err(|e| self.map_err(target, e))?;
        Ok(())
    }

    pub async fn push_manifest(
        &self,
        target: &Reference,
        bytes: Vec<u8>,
        media_type: &str,
    ) -> Result<(), OciError> {
        let content_type =
            http::HeaderValue::from_str(media_type).map_err(|_| OciError::Invalid {
                reference: target.whole(),
                reason: format!("bad media type {media_type:?}"),
            })?;
        self.client
            .push_manifest_raw(target, bytes, content_type)
            .await
            .map_err(|e| self.map_err(target, e))?;
        Ok(())
    }
}

fn stream_was_complete(path: &Path, size: u64) -> bool {
    std::fs::metadata(path)
        .map(|m| m.len() >= size)
        .unwrap_or(false)
}

/// Credentials for `host` from the Docker config (`$DOCKER_CONFIG/config.json` or
/// `~/.docker/config.json`), including `credsStore`/`credHelpers` helpers; anonymous when none.
fn credentials(host: &str) -> (RegistryAuth, Option<String>) {
    // Docker Hub's credentials are stored under its historical v1 URL.
    let keys: Vec<String> =
        if host == "docker.io" || host == "index.docker.io" || host == "registry-1.docker.io" {
            vec![
                "https://index.docker.io/v1/".into(),
                "index.docker.io".into(),
                "docker.io".into(),
            ]
        } else {
            vec![
                host.to_string(),
                format!("https://{host}"),
                format!("http://{host}"),
            ]
        };
    let config_dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker")));
    let source = config_dir
        .map(|d| d.join("config.json").display().to_string())
        .unwrap_or_default();
    for key in keys {
        match docker_credential::get_credential(&key) {
            Ok(docker_credential::DockerCredential::UsernamePassword(user, pass)) => {
                return (
                    RegistryAuth::Basic(user, pass),
                    Some(format!("{source} (entry {key})")),
                );
            }
            Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
                return (
                    RegistryAuth::Bearer(token),
                    Some(format!("{source} (identity token for {key})")),
                );
            }
            Err(e) => tracing::debug!("no credentials for {key}: {e:?}"),
        }
    }
    (RegistryAuth::Anonymous, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_loopback() {
        for h in [
            "localhost",
            "localhost:5050",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "registry.local:5000",
            "[2001:db8::1]:5000",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
