//! A small client of the local Slipway engine's HTTP/JSON API on its unix socket (see the
//! engine's `api` module): one HTTP/1 request per connection. Hand-written over hyper's
//! connection API rather than linking the engine crate, which carries libcontainer; the few
//! shapes the executor reads are declared here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use tokio::net::UnixStream;

/// How long one API call may take; a run waits for a pull, which may be long.
pub const CALL_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum EngineClientError {
    #[error("connecting to the engine at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the engine at {socket}: {message}")]
    Http { socket: PathBuf, message: String },
    #[error("the engine did not answer {path} within {secs} s")]
    Timeout { path: String, secs: u64 },
    /// The engine refused the request: its status and error message.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
    #[error("the engine's answer to {path} is not what was expected: {message}")]
    Unexpected { path: String, message: String },
}

/// What the engine says about a container (the fields the executor reads).
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    /// waiting | starting | running | restarting | exited | stopped | failed
    pub state: String,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub last_exit: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// starting | healthy | unhealthy, while it runs with a health check.
    #[serde(default)]
    pub health: Option<String>,
    #[serde(default)]
    pub health_output: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub image_digest: Option<String>,
    #[serde(default)]
    pub oom_killed: Option<bool>,
}

/// The engine's answer to `GET /v1/distribution`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Distribution {
    pub reference: String,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

impl Distribution {
    /// Docker's answer to `GET /distribution/{name}/json`: the descriptor, and the node's
    /// platform (the engine resolves a multi-platform index to the node's architecture).
    pub fn docker_json(&self) -> serde_json::Value {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        serde_json::json!({
            "Descriptor": {
                "mediaType": self.media_type,
                "digest": self.digest,
                "size": self.size,
            },
            "Platforms": [{"architecture": architecture, "os": "linux"}],
        })
    }
}

#[derive(Debug, Clone)]
pub struct EngineClient {
    socket: PathBuf,
}

/// `/v1/containers/NAME[/ACTION]`, the name percent-encoded.
pub fn container_path(name: &str, action: &str) -> String {
    let name = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    if action.is_empty() {
        format!("/v1/containers/{name}")
    } else {
        format!("/v1/containers/{name}/{action}")
    }
}

fn query_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl EngineClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One request; the status and whole body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), EngineClientError> {
        let call = async {
            let http = |e: &dyn std::fmt::Display| EngineClientError::Http {
                socket: self.socket.clone(),
                message: e.to_string(),
            };
            let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
                EngineClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                }
            })?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| http(&e))?;
            tokio::spawn(connection);
            let bytes = body
                .map(|b| Bytes::from(serde_json::to_vec(b).expect("JSON values serialize")))
                .unwrap_or_default();
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, "engine")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(bytes))
                .map_err(|e| http(&e))?;
            let response = sender.send_request(request).await.map_err(|e| http(&e))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| http(&e))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(CALL_LIMIT, call)
            .await
            .map_err(|_| EngineClientError::Timeout {
                path: path.to_owned(),
                secs: CALL_LIMIT.as_secs(),
            })?
    }

    /// A request whose success answer is JSON of type `T`; an error answer is `Refused`.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, EngineClientError> {
        let (status, bytes) = self.request(method, path, body).await?;
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| EngineClientError::Unexpected {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The containers carrying label `key` (any value).
    pub async fn list_labelled(&self, key: &str) -> Result<Vec<ContainerInfo>, EngineClientError> {
        let path = format!("/v1/containers?label={}", query_value(key));
        self.call(Method::GET, &path, None).await
    }

    /// Pulls, creates and starts a container (`POST /v1/containers`).
    pub async fn run(&self, body: &serde_json::Value) -> Result<ContainerInfo, EngineClientError> {
        self.call(Method::POST, "/v1/containers", Some(body)).await
    }

    /// Stops a container with its own grace period.
    pub async fn stop(&self, name: &str) -> Result<ContainerInfo, EngineClientError> {
        self.call(Method::POST, &container_path(name, "stop"), None)
            .await
    }

    /// Stops (when it runs) and removes a container.
    pub async fn remove(&self, name: &str) -> Result<(), EngineClientError> {
        match self
            .call::<serde_json::Value>(Method::DELETE, &container_path(name, ""), None)
            .await
        {
            Err(EngineClientError::Refused {
                status: StatusCode::NOT_FOUND,
                ..
            }) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// A container's log, as text.
    pub async fn logs(&self, name: &str) -> Result<String, EngineClientError> {
        let (status, bytes) = self
            .request(Method::GET, &container_path(name, "logs"), None)
            .await?;
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A container's log line by line as the engine sends it (`tail`: only the last lines kept
    /// so far; `follow`: then each new line, until the container is removed or the receiver is
    /// dropped).
    pub async fn log_lines(
        &self,
        name: &str,
        follow: bool,
        tail: Option<u64>,
    ) -> Result<tokio::sync::mpsc::Receiver<String>, EngineClientError> {
        /// A line longer than this (the engine cuts its lines shorter) is passed on in pieces.
        const LONGEST: usize = 64 * 1024;
        let mut path = container_path(name, "logs");
        let mut query = Vec::new();
        if follow {
            query.push("follow=1".to_owned());
        }
        if let Some(tail) = tail {
            query.push(format!("tail={tail}"));
        }
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let http = |e: &dyn std::fmt::Display| EngineClientError::Http {
            socket: self.socket.clone(),
            message: e.to_string(),
        };
        let open = async {
            let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
                EngineClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                }
            })?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| http(&e))?;
            tokio::spawn(connection);
            let request = Request::builder()
                .method(Method::GET)
                .uri(&path)
                .header(hyper::header::HOST, "engine")
                .body(Full::new(Bytes::new()))
                .map_err(|e| http(&e))?;
            sender.send_request(request).await.map_err(|e| http(&e))
        };
        let response = tokio::time::timeout(Duration::from_secs(30), open)
            .await
            .map_err(|_| EngineClientError::Timeout {
                path: path.clone(),
                secs: 30,
            })??;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = tokio::time::timeout(Duration::from_secs(30), body.collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(refused(status, &bytes));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut pending: Vec<u8> = Vec::new();
            loop {
                let frame = tokio::select! {
                    frame = body.frame() => frame,
                    _ = tx.closed() => return,
                };
                let Some(Ok(frame)) = frame else { break };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                pending.extend_from_slice(&data);
                let mut start = 0;
                while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
                    let line = String::from_utf8_lossy(&pending[start..start + end]).into_owned();
                    start += end + 1;
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
                pending.drain(..start);
                if pending.len() > LONGEST {
                    let line = String::from_utf8_lossy(&pending).into_owned();
                    pending.clear();
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
            if !pending.is_empty() {
                let _ = tx
                    .send(String::from_utf8_lossy(&pending).into_owned())
                    .await;
            }
        });
        Ok(rx)
    }

    pub async fn distribution(&self, image: &str) -> Result<Distribution, EngineClientError> {
        let path = format!("/v1/distribution?image={}", query_value(image));
        self.call(Method::GET, &path, None).await
    }
}

fn refused(status: StatusCode, body: &[u8]) -> EngineClientError {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = ["error", "message"]
        .iter()
        .find_map(|k| json.get(k).and_then(|m| m.as_str()))
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    EngineClientError::Refused { status, message }
}
