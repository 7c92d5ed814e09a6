//! Talking to registries: the oci-client configuration (TLS unless loopback or
//! `--insecure-registry`), credentials from `~/.docker/config.json` and its helpers, and blob
//! transfers streamed to and from files (never whole layers in memory).
//!
//! Registries are untrusted: a blob is read up to its descriptor's size and not one byte more (a
//! longer, shorter or endless answer is refused and never enters the store), manifests are read up
//! to [`NetOptions::max_manifest_bytes`], every connection has connect and read timeouts, and
//! transient failures (5xx, 408, 429, resets, timeouts) are retried with exponential backoff;
//! other 4xx answers are final.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

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

/// Timeouts, retries and size caps of registry I/O. The defaults suit a slow link to a public
/// registry; tests shorten them.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// Establishing a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// The longest wait for the next bytes of an answer (not the whole transfer: layers are big).
    pub read_timeout: Duration,
    /// How many times a transient failure is retried (so `retries + 1` attempts in all).
    pub retries: usize,
    /// The first backoff delay; each retry doubles it (with jitter) up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// The largest manifest or index accepted. Real ones are a few KiB; the cap keeps a hostile
    /// registry from filling memory before the JSON parser ever sees the bytes.
    pub max_manifest_bytes: u64,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            retries: 4,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(15),
            max_manifest_bytes: 4 << 20,
        }
    }
}

/// A client bound to one registry, with the credentials found for it.
pub struct Registry {
    pub client: Client,
    pub auth: RegistryAuth,
    /// The registry host as written in references (`docker.io`, `127.0.0.1:5050`).
    pub host: String,
    /// Where the credentials came from, for error messages.
    pub auth_source: Option<String>,
    net: NetOptions,
    /// Manifests are read through reqwest directly (see [`Registry::manifest_raw`]), with the
    /// same timeouts as `client`.
    http: reqwest::Client,
    scheme: &'static str,
    /// The bearer token `authenticate` obtained, for the manifest requests made here.
    token: Mutex<Option<String>>,
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

/// One attempt's failure: worth retrying or final.
enum Failure {
    Transient(OciError),
    Final(OciError),
}

impl Failure {
    fn into_inner(self) -> OciError {
        match self {
            Failure::Transient(e) | Failure::Final(e) => e,
        }
    }
}

/// Whether an HTTP status may succeed when asked again: server errors, request timeout and rate
/// limiting. Every other 4xx is the registry's final answer.
fn transient_status(code: u16) -> bool {
    code >= 500 || code == 408 || code == 429
}

/// Whether an I/O or HTTP error is a network failure that may pass (reset, timeout, refused, cut).
fn transient_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<reqwest::Error>()
            && (r.is_timeout() || r.is_connect() || r.is_request() || r.is_body())
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The whole chain of an error on one line: reqwest's own message leaves out the cause
/// ("error sending request" without "operation timed out").
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<reqwest::Error>()
            .is_some_and(|r| r.is_timeout())
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

impl Registry {
    /// Fails when the HTTP client cannot be set up, in practice when the system has no CA
    /// certificates (the TLS verifier needs them even for a plain-HTTP registry).
    pub fn new(
        reference: &Reference,
        insecure: &[String],
        net: &NetOptions,
    ) -> Result<Registry, OciError> {
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
            connect_timeout: Some(net.connect_timeout),
            read_timeout: Some(net.read_timeout),
            ..Default::default()
        };
        let (auth, auth_source) = credentials(&host);
        // reqwest takes the process-wide rustls provider; ring is the one linked (see Cargo.toml).
        // A second install fails harmlessly: the first one stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Both builders fail the same way (no CA certificates): name the cause instead of letting
        // a default client panic, which is what `Client::new` and `unwrap_or_default` would do.
        let no_tls = |detail: String| OciError::Network {
            reference: reference.whole(),
            registry: host.clone(),
            detail: format!(
                "cannot set up the HTTP client: {detail} (is a CA bundle installed, e.g. the \
                 ca-certificates package at /etc/ssl/certs?)"
            ),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(net.connect_timeout)
            .read_timeout(net.read_timeout)
            .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| no_tls(chain(&e)))?;
        let client = Client::try_from(config).map_err(|e| no_tls(chain(&e)))?;
        Ok(Registry {
            client,
            auth,
            host,
            auth_source,
            net: net.clone(),
            http,
            scheme: if plain { "http" } else { "https" },
            token: Mutex::new(None),
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are spent, waiting an
    /// exponentially growing, jittered delay between attempts.
    async fn retrying<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, OciError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.net.min_backoff)
            .with_max_delay(self.net.max_backoff)
            .with_max_times(self.net.retries)
            .with_jitter();
        attempt
            .retry(backoff)
            .when(|f| matches!(f, Failure::Transient(_)))
            .notify(|f, delay| {
                if let Failure::Transient(e) = f {
                    tracing::warn!("{what}: {e}; retrying in {delay:?}");
                }
            })
            .await
            .map_err(Failure::into_inner)
    }

    /// Classifies an oci-client error as worth retrying or not.
    fn failure(&self, reference: &Reference, err: OciDistributionError) -> Failure {
        let transient = match &err {
            OciDistributionError::ServerError { code, .. } => transient_status(*code),
            OciDistributionError::RequestError(e) => transient_error(e),
            OciDistributionError::IoError(e) => transient_error(e),
            _ => false,
        };
        let mapped = self.network_err(reference, err);
        if transient {
            Failure::Transient(mapped)
        } else {
            Failure::Final(mapped)
        }
    }

    /// [`Registry::map_err`], except that network errors say their whole cause (a timeout says
    /// so, with the configured limit).
    fn network_err(&self, reference: &Reference, err: OciDistributionError) -> OciError {
        let source: Option<&(dyn std::error::Error + 'static)> = match &err {
            OciDistributionError::RequestError(e) => Some(e),
            OciDistributionError::IoError(e) => Some(e),
            _ => None,
        };
        match source {
            Some(e) => self.io_failure(reference, e),
            None => self.map_err(reference, err),
        }
    }

    fn io_failure(&self, reference: &Reference, e: &(dyn std::error::Error + 'static)) -> OciError {
        let detail = if is_timeout(e) {
            format!(
                "timed out (connect timeout {:?}, read timeout {:?}): {}",
                self.net.connect_timeout,
                self.net.read_timeout,
                chain(e)
            )
        } else {
            chain(e)
        };
        OciError::Network {
            reference: reference.whole(),
            registry: self.host.clone(),
            detail,
        }
    }

    /// Runs the token flow (bearer) or records basic credentials for `op` on `reference`'s repository.
    pub async fn authenticate(
        &self,
        reference: &Reference,
        op: RegistryOperation,
    ) -> Result<(), OciError> {
        let token = self
            .retrying(&format!("authenticating to {}", self.host), || async {
                self.client
                    .auth(reference, &self.auth, op)
                    .await
                    .map_err(|e| self.failure(reference, e))
            })
            .await?;
        if let Ok(mut slot) = self.token.lock() {
            *slot = token;
        }
        Ok(())
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

    /// Fetches a manifest or index exactly as the registry serves it, at most
    /// [`NetOptions::max_manifest_bytes`] long.
    ///
    /// Read here with reqwest rather than with oci-client's `pull_manifest_raw`, which buffers
    /// the whole answer before anything can look at its size.
    pub async fn manifest_raw(&self, reference: &Reference) -> Result<Vec<u8>, OciError> {
        self.retrying(
            &format!("fetching the manifest of {}", reference.whole()),
            || self.manifest_once(reference),
        )
        .await
    }

    async fn manifest_once(&self, reference: &Reference) -> Result<Vec<u8>, Failure> {
        let url = format!(
            "{scheme}://{registry}/v2/{repository}/manifests/{tag}{ns}",
            scheme = self.scheme,
            registry = reference.resolve_registry(),
            repository = reference.repository(),
            tag = reference
                .digest()
                .unwrap_or_else(|| reference.tag().unwrap_or("latest")),
            ns = reference
                .namespace()
                .map(|ns| format!("?ns={ns}"))
                .unwrap_or_default(),
        );
        let mut request = self
            .http
            .get(&url)
            .header(http::header::ACCEPT, MANIFEST_MEDIA_TYPES.join(", "));
        let token = self.token.lock().ok().and_then(|t| t.clone());
        request = match (&token, &self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, pass)) => request.basic_auth(user, Some(pass)),
            _ => request,
        };
        let io = |e: reqwest::Error| {
            let err = self.io_failure(reference, &e);
            if transient_error(&e) {
                Failure::Transient(err)
            } else {
                Failure::Final(err)
            }
        };
        let mut response = request.send().await.map_err(io)?;
        let status = response.status();
        let limit = if status.is_success() {
            self.net.max_manifest_bytes
        } else {
            // An error body is only read for its message.
            64 << 10
        };
        let too_large = || {
            Failure::Final(OciError::ManifestTooLarge {
                reference: reference.whole(),
                limit: self.net.max_manifest_bytes,
            })
        };
        if status.is_success() && response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(io)? {
            if body.len() as u64 + chunk.len() as u64 > limit {
                if status.is_success() {
                    return Err(too_large());
                }
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if status == http::StatusCode::OK {
            return Ok(body);
        }
        let err = if status == http::StatusCode::UNAUTHORIZED {
            OciDistributionError::UnauthorizedError { url }
        } else if let (true, Ok(envelope)) = (
            status.is_client_error(),
            serde_json::from_slice::<oci_client::errors::OciEnvelope>(&body),
        ) {
            OciDistributionError::RegistryError { envelope, url }
        } else {
            OciDistributionError::ServerError {
                code: status.as_u16(),
                url,
                message: String::from_utf8_lossy(&body).into_owned(),
            }
        };
        Err(self.failure(reference, err))
    }

    /// Streams blob `desc` into the store: temporary file, size and sha256 checked, renamed in.
    /// On any failure the temporary file is removed and the store is unchanged.
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
        self.retrying(
            &format!("fetching blob {digest} of {}", reference.whole()),
            || self.fetch_blob_once(store, reference, digest, media_type, size, bar),
        )
        .await
    }

    async fn fetch_blob_once(
        &self,
        store: &Store,
        reference: &Reference,
        digest: &Digest,
        media_type: &str,
        size: u64,
        bar: &Bar,
    ) -> Result<(), Failure> {
        let desc = OciDescriptor {
            digest: digest.to_string(),
            media_type: media_type.to_string(),
            size: size as i64,
            ..Default::default()
        };
        let wrong_size = |received: u64, longer: bool| {
            Failure::Final(OciError::BlobSize {
                reference: reference.whole(),
                digest: digest.clone(),
                expected: size,
                detail: if longer {
                    format!("the registry sent more than the {size} bytes its descriptor declares")
                } else {
                    format!(
                        "the registry sent {received} of the {size} bytes its descriptor declares"
                    )
                },
            })
        };
        let mut stream = self
            .client
            .pull_blob_stream(reference, &desc)
            .await
            .map_err(|e| self.failure(reference, e))?;
        if stream.content_length.is_some_and(|n| n > size) {
            return Err(wrong_size(0, true));
        }
        let tmp = store.temp_blob().map_err(|e| Failure::Final(e.into()))?;
        let tmp_path = tmp.path().to_path_buf();
        let io = |source| {
            Failure::Final(OciError::Io {
                path: tmp_path.clone(),
                source,
            })
        };
        let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(io)?);
        let mut hasher = Hasher::new();
        let mut received: u64 = 0;
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    // Never past the descriptor's size: an endless answer stops here.
                    if received + bytes.len() as u64 > size {
                        return Err(wrong_size(received, true));
                    }
                    received += bytes.len() as u64;
                    hasher.update(&bytes);
                    file.write_all(&bytes).await.map_err(io)?;
                    bar.inc(bytes.len() as u64);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        file.flush().await.map_err(io)?;
        drop(file);
        match failure {
            // oci-client's own verification reports a digest mismatch as a stream error after
            // the last chunk; the check below names both digests.
            Some(_) if received == size => {}
            // The answer ended early and cleanly; oci-client then reports the digest of the
            // part it saw, but the size is what is wrong.
            Some(e) if !transient_error(&e) => return Err(wrong_size(received, false)),
            Some(e) => {
                let transient = transient_error(&e);
                let err = self.io_failure(reference, &e);
                return Err(if transient {
                    Failure::Transient(err)
                } else {
                    Failure::Final(err)
                });
            }
            None if received < size => return Err(wrong_size(received, false)),
            None => {}
        }
        let actual = hasher.finish();
        if &actual != digest {
            // Dropping `tmp` deletes the partial file.
            return Err(Failure::Final(OciError::BlobDigestMismatch {
                reference: reference.whole(),
                expected: digest.clone(),
                actual,
            }));
        }
        store
            .commit_temp(tmp, digest)
            .map_err(|e| Failure::Final(e.into()))?;
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
