//! The engine's HTTP/JSON API on its unix socket. Paths are versioned:
//!
//! ```text
//! GET  /v1/containers                      every container (ContainerInfo list)
//! POST /v1/containers                      body {"image": REF, "name": N, "cmd": [...],
//!                                          "restart": POLICY} (all but image optional):
//!                                          pull, create and start -> 201 ContainerInfo
//! GET  /v1/containers/NAME                 one container
//! DELETE /v1/containers/NAME               body {"timeout": SECS} optional: stop (when it
//!                                          runs) and remove a container made by run
//! POST /v1/containers/NAME/start           start it (after its dependencies)
//! POST /v1/containers/NAME/stop            body {"timeout": SECS} optional (default: the
//!                                          service's grace period, 10 s unless it sets one)
//! POST /v1/containers/NAME/restart         body {"timeout": SECS} optional
//! POST /v1/containers/NAME/kill            body {"signal": "SIGKILL" | "KILL" | 9}
//! GET  /v1/containers/NAME/logs[?follow=1] text, one timestamped line per line of output
//! POST /v1/containers/NAME/exec            body {"cmd": [...], "timeout": SECS (default 60)}
//!                                          -> {"exitCode": N, "output": "...", "timedOut": B}
//! ```
//!
//! Errors are `{"error": "..."}` with 400 (bad name, body, image reference or signal), 404 (no
//! such container or path; an image that cannot be pulled), 405 (wrong method) or 409 (the
//! container cannot do that now; the name is taken; a service of the image cannot be
//! removed). A request is
//! checked completely before anything is done, so a bad one changes nothing.

use std::convert::Infallible;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use nix::sys::signal::Signal;
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::sync::broadcast;

use crate::spec::valid_name;
use crate::supervisor::{Engine, EngineError, RunRequest};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How long an exec request's command may run when the request gives no timeout.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Request bodies are tiny JSON objects.
const MAX_BODY: usize = 64 * 1024;

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, engine: Engine) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("accepting an API connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let engine = engine.clone();
                async move { Ok::<_, Infallible>(handle(&engine, request).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("API connection: {e}");
            }
        });
    }
}

struct ApiError(StatusCode, String);

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match e {
            EngineError::NotFound(_) | EngineError::Pull(_) => StatusCode::NOT_FOUND,
            EngineError::Invalid(_) => StatusCode::BAD_REQUEST,
            EngineError::NotRunning(_)
            | EngineError::Broken { .. }
            | EngineError::ShuttingDown
            | EngineError::Exists(_)
            | EngineError::NotRemovable(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, e.to_string())
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()).boxed_unsync())
        .expect("a valid status and header")
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let mut body = serde_json::to_vec(value).expect("API values serialize");
    body.push(b'\n');
    full(status, "application/json", body)
}

async fn handle(engine: &Engine, request: Request<Incoming>) -> Response<Body> {
    match route(engine, request).await {
        Ok(response) => response,
        Err(ApiError(status, error)) => json(status, &serde_json::json!({ "error": error })),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopBody {
    timeout: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    cmd: Vec<String>,
    timeout: Option<u64>,
}

/// The answer to an exec request.
#[derive(Debug, serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecReply {
    /// The command's exit code (128 + signal when a signal ended it; 137 when it was killed
    /// at its timeout).
    pub exit_code: i32,
    /// stdout and stderr together, at most 64 KiB.
    pub output: String,
    pub timed_out: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillBody {
    signal: SignalArg,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SignalArg {
    Number(i32),
    Name(String),
}

/// `SIGKILL`, `KILL`, `kill` or `9`.
pub fn parse_signal(text: &str) -> Option<Signal> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = text.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).ok()
}

async fn read_body<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<Option<T>, ApiError> {
    let bytes = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| bad(format!("reading the request body: {e}")))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| bad(format!("request body: {e}")))
}

async fn route(engine: &Engine, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let Some(rest) = path.strip_prefix("/v1/containers") else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no such path {path}"),
        ));
    };
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    if rest.is_empty() || rest == "/" {
        return match *request.method() {
            Method::GET => Ok(json(StatusCode::OK, &engine.list())),
            Method::POST => {
                let body: RunRequest = read_body(request)
                    .await?
                    .ok_or_else(|| bad("run needs a body {\"image\": ...}"))?;
                Ok(json(StatusCode::CREATED, &engine.run(body).await?))
            }
            ref method => Err(method_not_allowed(method)),
        };
    }
    let name = percent_encoding::percent_decode_str(segments[0])
        .decode_utf8()
        .map_err(|_| bad("container names are UTF-8"))?;
    // The name is checked before the path's shape, so `/v1/containers/../x` is a bad name,
    // not an unknown path.
    if !valid_name(&name) {
        return Err(bad(format!("{name:?} is not a valid container name")));
    }
    let name = name.into_owned();
    let action = match segments.len() {
        1 => "",
        2 => segments[1],
        _ => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no such path {path}"),
            ));
        }
    };
    let method = request.method().clone();
    let expected = if matches!(action, "" | "logs") {
        Method::GET
    } else {
        Method::POST
    };
    if !matches!(
        action,
        "" | "logs" | "start" | "stop" | "restart" | "kill" | "exec"
    ) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no such path {path}"),
        ));
    }
    if action.is_empty() && method == Method::DELETE {
        let body: Option<StopBody> = read_body(request).await?;
        let grace = body.and_then(|b| b.timeout).map(Duration::from_secs);
        return Ok(json(StatusCode::OK, &engine.remove(&name, grace).await?));
    }
    if method != expected {
        return Err(method_not_allowed(&method));
    }
    match action {
        "" => Ok(json(StatusCode::OK, &engine.inspect(&name)?)),
        "logs" => logs(engine, &name, &query),
        "start" => {
            read_body::<serde_json::Map<String, serde_json::Value>>(request)
                .await?
                .filter(|m| !m.is_empty())
                .map_or(Ok(()), |_| Err(bad("start takes no parameters")))?;
            Ok(json(StatusCode::OK, &engine.start(&name).await?))
        }
        "stop" | "restart" => {
            let body: Option<StopBody> = read_body(request).await?;
            let grace = body.and_then(|b| b.timeout).map(Duration::from_secs);
            let info = if action == "stop" {
                engine.stop(&name, grace).await?
            } else {
                engine.restart(&name, grace).await?
            };
            Ok(json(StatusCode::OK, &info))
        }
        "exec" => {
            let body: ExecBody = read_body(request)
                .await?
                .ok_or_else(|| bad("exec needs a body {\"cmd\": [...]}"))?;
            if body.cmd.first().is_none_or(String::is_empty) {
                return Err(bad("cmd must name a command"));
            }
            let timeout = body
                .timeout
                .map_or(DEFAULT_EXEC_TIMEOUT, Duration::from_secs);
            let outcome = engine.exec(&name, &body.cmd, timeout).await?;
            Ok(json(
                StatusCode::OK,
                &ExecReply {
                    exit_code: outcome.exit_code(),
                    timed_out: outcome.status.is_none(),
                    output: outcome.output,
                },
            ))
        }
        _ => {
            let body: KillBody = read_body(request)
                .await?
                .ok_or_else(|| bad("kill needs a body {\"signal\": ...}"))?;
            let signal = match &body.signal {
                SignalArg::Number(n) => Signal::try_from(*n).ok(),
                SignalArg::Name(s) => parse_signal(s),
            }
            .ok_or_else(|| bad("unknown signal"))?;
            engine.kill(&name, signal)?;
            Ok(json(StatusCode::OK, &engine.inspect(&name)?))
        }
    }
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed here"),
    )
}

fn logs(engine: &Engine, name: &str, query: &str) -> Result<Response<Body>, ApiError> {
    let mut follow = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("follow", "1" | "true") => follow = true,
            ("follow", "0" | "false") => follow = false,
            _ => return Err(bad(format!("unknown query parameter {pair:?}"))),
        }
    }
    let logs = engine.logs(name)?;
    if !follow {
        return Ok(full(StatusCode::OK, "text/plain", logs.snapshot().concat()));
    }
    let (past, receiver) = logs.follow();
    let first = Frame::data(Bytes::from(past.concat()));
    let rest = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let text = match receiver.recv().await {
            Ok(line) => line,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                format!("... {n} lines skipped: this client read too slowly\n")
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(Frame::data(Bytes::from(text))), receiver))
    });
    let stream = futures_util::StreamExt::chain(
        futures_util::stream::iter([Ok::<_, Infallible>(first)]),
        rest,
    );
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "text/plain")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("a valid status and header"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_short_name_and_number() {
        assert_eq!(parse_signal("SIGKILL"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("999"), None);
    }
}
