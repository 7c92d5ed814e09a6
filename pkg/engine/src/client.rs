//! A client of the engine's API, for the `slipway-engine` subcommands and for tests: one
//! HTTP/1 request per connection to the unix socket.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the engine at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the engine at {socket}: {source}")]
    Http {
        socket: PathBuf,
        source: hyper::Error,
    },
    #[error("request {path}: {source}")]
    Request {
        path: String,
        source: hyper::http::Error,
    },
}

/// An answer: its status and whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `error` (or Docker's `message`) field of an error answer, or the body as text.
    pub fn error_message(&self) -> String {
        let json = self.json();
        match ["error", "message"]
            .iter()
            .find_map(|key| json.get(key).and_then(|e| e.as_str()))
        {
            Some(message) => message.to_owned(),
            None => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let http = |source| ClientError::Http {
            socket: self.socket.clone(),
            source,
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(http)?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "engine");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| ClientError::Request {
                path: path.to_owned(),
                source,
            })?;
        sender.send_request(request).await.map_err(http)
    }

    /// Sends a request and reads the whole answer. `path` is sent as is, so tests can send
    /// paths a well-behaved client never would.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Http {
                socket: self.socket.clone(),
                source,
            })?
            .to_bytes();
        Ok(Reply { status, body })
    }

    /// Sends a GET and hands each piece of the body to `sink` as it arrives (for `logs -f`).
    /// An error answer is returned whole instead.
    pub async fn stream(
        &self,
        path: &str,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<Reply, ClientError> {
        let response = self.send(Method::GET, path, None).await?;
        let status = response.status();
        let mut body = response.into_body();
        let mut kept = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| ClientError::Http {
                socket: self.socket.clone(),
                source,
            })?;
            if let Some(data) = frame.data_ref() {
                if status.is_success() {
                    sink(data);
                } else {
                    kept.extend_from_slice(data);
                }
            }
        }
        Ok(Reply {
            status,
            body: kept.into(),
        })
    }
}

/// The path of a container's resource, its name percent-encoded.
pub fn container_path(name: &str, action: &str) -> String {
    let name = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    if action.is_empty() {
        format!("/v1/containers/{name}")
    } else {
        format!("/v1/containers/{name}/{action}")
    }
}
