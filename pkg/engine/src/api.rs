//! The engine's HTTP/JSON API on its unix socket. Paths are versioned:
//!
//! ```text
//! GET  /v1/containers[?label=K=V&label=K]  every container (ContainerInfo list), or those
//!                                          with every label given (K=V: that value; K: any)
//! POST /v1/containers                      body: crate::request::RunRequest (all but image
//!                                          optional): checked, pulled, created and started
//!                                          -> 201 ContainerInfo
//! GET  /v1/distribution?image=REF          the manifest digest REF names in its registry
//!                                          -> {"reference","digest","mediaType","size"}
//! GET  /v1/containers/NAME                 one container
//! DELETE /v1/containers/NAME               body {"timeout": SECS} optional: stop (when it
//!                                          runs) and remove a container made by run
//! POST /v1/containers/NAME/start           start it (after its dependencies)
//! POST /v1/containers/NAME/stop            body {"timeout": SECS} optional (default: the
//!                                          service's grace period, 10 s unless it sets one)
//! POST /v1/containers/NAME/restart         body {"timeout": SECS} optional
//! POST /v1/containers/NAME/kill            body {"signal": "SIGKILL" | "KILL" | 9}
//! GET  /v1/containers/NAME/logs[?follow=1&tail=N] text, one timestamped line per line of
//!                                          output; `tail`: only the last N lines of stdout and
//!                                          stderr kept so far (the engine's notes among them)
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
/// Request bodies are small JSON objects; a run request's files (secrets) make the largest.
const MAX_BODY: usize = 2 * crate::request::MAX_FILES_BYTES;
/// A client gets this long to send a request's headers, and again its body; a slower one is
/// cut off, so it cannot hold one of the [`MAX_CONNECTIONS`].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; the next waits in the socket's backlog until one ends.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, engine: Engine) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
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
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let engine = engine.clone();
                async move { Ok::<_, Infallible>(handle(&engine, request).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("API connection: {e}");
            }
        });
    }
}

/// A refused request: the status and message the client gets (public with [`parse`]).
pub struct ApiError(StatusCode, String);

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
        // An unknown path gets Docker's answer.
        Err(ApiError(StatusCode::NOT_FOUND, error)) if error.is_empty() => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "message": "page not found" }),
        ),
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

/// The largest timeout a request may give: a day (a larger one could overflow a deadline).
const MAX_TIMEOUT_SECS: u64 = 24 * 60 * 60;

/// The endpoints, matched by [`ROUTES`] (matchit: a maintained radix-tree router, so no
/// hand-written splitting of an attacker's path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Distribution,
    Containers,
    Container,
    Start,
    Stop,
    Restart,
    Kill,
    Logs,
    Exec,
}

fn routes() -> &'static matchit::Router<Endpoint> {
    static ROUTES: std::sync::OnceLock<matchit::Router<Endpoint>> = std::sync::OnceLock::new();
    ROUTES.get_or_init(|| {
        let mut router = matchit::Router::new();
        for (path, endpoint) in [
            ("/v1/distribution", Endpoint::Distribution),
            ("/v1/containers", Endpoint::Containers),
            ("/v1/containers/", Endpoint::Containers),
            ("/v1/containers/{name}", Endpoint::Container),
            ("/v1/containers/{name}/start", Endpoint::Start),
            ("/v1/containers/{name}/stop", Endpoint::Stop),
            ("/v1/containers/{name}/restart", Endpoint::Restart),
            ("/v1/containers/{name}/kill", Endpoint::Kill),
            ("/v1/containers/{name}/logs", Endpoint::Logs),
            ("/v1/containers/{name}/exec", Endpoint::Exec),
        ] {
            router
                .insert(path, endpoint)
                .expect("the API's routes do not conflict");
        }
        router
    })
}

/// A request, checked completely: what the engine is asked to do (public with [`parse`]).
#[derive(Debug)]
pub enum Call {
    /// Containers with all these labels (value `None`: any value).
    List(Vec<(String, Option<String>)>),
    Distribution(String),
    Run(Box<RunRequest>),
    Inspect(String),
    Remove(String, Option<Duration>),
    Start(String),
    Stop(String, Option<Duration>),
    Restart(String, Option<Duration>),
    Kill(String, Signal),
    Logs {
        name: String,
        follow: bool,
        tail: Option<usize>,
    },
    Exec(String, Vec<String>, Duration),
}

fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, String::new())
}

/// A percent-decoded container name from a path, checked before the path's shape and the
/// method, so `/v1/containers/../x/stop` is a bad name rather than an unknown path.
fn container_name(raw: &str) -> Result<String, ApiError> {
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| bad("container names are UTF-8"))?;
    if !valid_name(&name) {
        return Err(bad(format!("{name:?} is not a valid container name")));
    }
    Ok(name.into_owned())
}

/// The error for a path no route matches: a bad name, or Docker's 404.
fn unmatched(path: &str) -> ApiError {
    match path
        .strip_prefix("/v1/containers/")
        .map(|rest| rest.split('/').next())
    {
        Some(Some(raw)) if !raw.is_empty() => container_name(raw).err().unwrap_or_else(not_found),
        _ => not_found(),
    }
}

/// Reads the body, at most [`MAX_BODY`] bytes and within `limit` ([`BODY_TIMEOUT`]).
async fn read_body<B>(body: B, limit: Duration) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(limit, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY} bytes"),
        )),
        Ok(Err(e)) => Err(bad(format!("reading the request body: {e}"))),
        Err(_) => Err(ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                limit.as_secs()
            ),
        )),
    }
}

/// An optional JSON body: `None` when it is empty or only whitespace.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| bad(format!("request body: {e}")))
}

fn timeout(secs: Option<u64>) -> Result<Option<Duration>, ApiError> {
    match secs {
        Some(secs) if secs > MAX_TIMEOUT_SECS => Err(bad(format!(
            "timeout {secs} is larger than the limit, {MAX_TIMEOUT_SECS} seconds"
        ))),
        secs => Ok(secs.map(Duration::from_secs)),
    }
}

fn grace(body: &[u8]) -> Result<Option<Duration>, ApiError> {
    timeout(parse_body::<StopBody>(body)?.and_then(|b| b.timeout))
}

/// Turns a request into a [`Call`] without touching the engine: every path, method, query and
/// body gets a call or an error, never a panic (the tests below throw random ones at it).
/// Public for the fuzz target `router` (fuzz/), which only checks that it returns.
pub fn parse(method: &Method, path: &str, query: &str, body: &[u8]) -> Result<Call, ApiError> {
    let matched = routes().at(path).map_err(|_| unmatched(path))?;
    let endpoint = *matched.value;
    let name = match matched.params.get("name") {
        None => String::new(),
        Some(raw) => container_name(raw)?,
    };
    let queried = matches!(
        endpoint,
        Endpoint::Logs | Endpoint::Containers | Endpoint::Distribution
    );
    if !queried && !query.is_empty() {
        return Err(bad(format!("unknown query {query:?}")));
    }
    let allowed: &[Method] = match endpoint {
        Endpoint::Containers => &[Method::GET, Method::POST],
        Endpoint::Container => &[Method::GET, Method::DELETE],
        Endpoint::Logs | Endpoint::Distribution => &[Method::GET],
        _ => &[Method::POST],
    };
    if !allowed.contains(method) {
        return Err(method_not_allowed(method));
    }
    let call = match endpoint {
        Endpoint::Containers if *method == Method::GET => Call::List(labels(query)?),
        Endpoint::Distribution => Call::Distribution(image_query(query)?),
        Endpoint::Containers if !query.is_empty() => {
            return Err(bad(format!("unknown query {query:?}")));
        }
        Endpoint::Containers => Call::Run(Box::new(
            parse_body(body)?.ok_or_else(|| bad("run needs a body {\"image\": ...}"))?,
        )),
        Endpoint::Container if *method == Method::GET => Call::Inspect(name),
        Endpoint::Container => Call::Remove(name, grace(body)?),
        Endpoint::Logs => {
            let (follow, tail) = log_query(query)?;
            Call::Logs { name, follow, tail }
        }
        Endpoint::Start => {
            parse_body::<serde_json::Map<String, serde_json::Value>>(body)?
                .filter(|m| !m.is_empty())
                .map_or(Ok(()), |_| Err(bad("start takes no parameters")))?;
            Call::Start(name)
        }
        Endpoint::Stop => Call::Stop(name, grace(body)?),
        Endpoint::Restart => Call::Restart(name, grace(body)?),
        Endpoint::Exec => {
            let body: ExecBody =
                parse_body(body)?.ok_or_else(|| bad("exec needs a body {\"cmd\": [...]}"))?;
            if body.cmd.first().is_none_or(String::is_empty) {
                return Err(bad("cmd must name a command"));
            }
            let limit = timeout(body.timeout)?.unwrap_or(DEFAULT_EXEC_TIMEOUT);
            Call::Exec(name, body.cmd, limit)
        }
        Endpoint::Kill => {
            let body: KillBody =
                parse_body(body)?.ok_or_else(|| bad("kill needs a body {\"signal\": ...}"))?;
            let signal = match &body.signal {
                SignalArg::Number(n) => Signal::try_from(*n).ok(),
                SignalArg::Name(s) => parse_signal(s),
            }
            .ok_or_else(|| bad("unknown signal"))?;
            Call::Kill(name, signal)
        }
    };
    Ok(call)
}

async fn route<B>(engine: &Engine, request: Request<B>) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    // An unknown path is refused before its body is read.
    routes().at(path).map_err(|_| unmatched(path))?;
    let body = read_body(body, BODY_TIMEOUT).await?;
    let call = parse(&parts.method, path, query, &body)?;
    execute(engine, call).await
}

async fn execute(engine: &Engine, call: Call) -> Result<Response<Body>, ApiError> {
    let ok = StatusCode::OK;
    Ok(match call {
        Call::List(labels) => {
            let mut list = engine.list();
            list.retain(|c| {
                labels.iter().all(|(k, v)| match v {
                    None => c.labels.contains_key(k),
                    Some(v) => c.labels.get(k) == Some(v),
                })
            });
            json(ok, &list)
        }
        Call::Distribution(image) => json(ok, &engine.distribution(&image).await?),
        Call::Run(body) => json(StatusCode::CREATED, &engine.run(*body).await?),
        Call::Inspect(name) => json(ok, &engine.inspect(&name)?),
        Call::Remove(name, grace) => json(ok, &engine.remove(&name, grace).await?),
        Call::Start(name) => json(ok, &engine.start(&name).await?),
        Call::Stop(name, grace) => json(ok, &engine.stop(&name, grace).await?),
        Call::Restart(name, grace) => json(ok, &engine.restart(&name, grace).await?),
        Call::Kill(name, signal) => {
            engine.kill(&name, signal)?;
            json(ok, &engine.inspect(&name)?)
        }
        Call::Logs { name, follow, tail } => logs(engine, &name, follow, tail)?,
        Call::Exec(name, cmd, limit) => {
            let outcome = engine.exec(&name, &cmd, limit).await?;
            json(
                ok,
                &ExecReply {
                    exit_code: outcome.exit_code(),
                    timed_out: outcome.status.is_none(),
                    output: outcome.output,
                },
            )
        }
    })
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed here"),
    )
}

/// The pairs of a query, percent-decoded (`+` is a space, as forms write it).
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| bad("query parameters are UTF-8"))
            };
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// `label=K=V` and `label=K`, repeatable.
fn labels(query: &str) -> Result<Vec<(String, Option<String>)>, ApiError> {
    query_pairs(query)?
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "label" if !v.is_empty() => Ok(match v.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (v, None),
            }),
            _ => Err(bad(format!("unknown query parameter {k:?} (label=K=V)"))),
        })
        .collect()
}

/// `image=REF`, once.
fn image_query(query: &str) -> Result<String, ApiError> {
    match &query_pairs(query)?[..] {
        [(k, v)] if k == "image" && !v.trim().is_empty() => Ok(v.trim().to_owned()),
        _ => Err(bad("distribution needs ?image=REFERENCE")),
    }
}

/// `follow` and `tail` of a logs request.
fn log_query(query: &str) -> Result<(bool, Option<usize>), ApiError> {
    let (mut follow, mut tail) = (false, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("follow", "1" | "true") => follow = true,
            ("follow", "0" | "false") => follow = false,
            ("tail", "all") => tail = None,
            ("tail", n) => {
                tail = Some(n.parse().map_err(|_| {
                    bad(format!(
                        "tail must be a number of lines or \"all\", not {n:?}"
                    ))
                })?)
            }
            _ => return Err(bad(format!("unknown query parameter {pair:?}"))),
        }
    }
    Ok((follow, tail))
}

/// The last `tail` lines of output in `lines` (the engine's own notes among them do not
/// count), or all of them.
fn last_lines(mut lines: Vec<String>, tail: Option<usize>) -> Vec<String> {
    let Some(tail) = tail else { return lines };
    let mut seen = 0;
    let mut start = lines.len();
    while start > 0 && seen < tail {
        start -= 1;
        let kind = lines[start].split(' ').nth(1);
        if matches!(kind, Some("stdout" | "stderr")) {
            seen += 1;
        }
    }
    if tail == 0 {
        start = lines.len();
    }
    lines.drain(..start);
    lines
}

fn logs(
    engine: &Engine,
    name: &str,
    follow: bool,
    tail: Option<usize>,
) -> Result<Response<Body>, ApiError> {
    let logs = engine.logs(name)?;
    if !follow {
        let lines = last_lines(logs.snapshot(), tail);
        return Ok(full(StatusCode::OK, "text/plain", lines.concat()));
    }
    let (past, receiver) = logs.follow();
    let first = Frame::data(Bytes::from(last_lines(past, tail).concat()));
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
    use proptest::prelude::*;

    #[test]
    fn signals_parse_by_name_short_name_and_number() {
        assert_eq!(parse_signal("SIGKILL"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("999"), None);
    }

    fn status(method: Method, path: &str, query: &str, body: &str) -> StatusCode {
        match parse(&method, path, query, body.as_bytes()) {
            Ok(_) => StatusCode::OK,
            Err(ApiError(status, _)) => status,
        }
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405() {
        for path in [
            "",
            "*",
            "/",
            "/v2/containers",
            "/v1/containers/a/b/c",
            "/v1/containers/a/nope",
            "/v1/containers//stop",
            "/v1/containersx",
        ] {
            assert_eq!(
                status(Method::GET, path, "", ""),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        assert_eq!(
            status(Method::PUT, "/v1/containers/a", "", ""),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(Method::GET, "/v1/containers/a/stop", "", ""),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(Method::GET, "/v1/containers/..", "", ""),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(Method::POST, "/v1/containers/a%2F..%2Fb/stop", "", ""),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(Method::POST, "/v1/containers/%ff%fe/stop", "", ""),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(
                Method::POST,
                "/v1/containers/a/stop",
                "",
                r#"{"timeout": 1e30}"#
            ),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(
                Method::POST,
                "/v1/containers/a/stop",
                "",
                &format!(r#"{{"timeout": {}}}"#, u64::MAX)
            ),
            StatusCode::BAD_REQUEST
        );
        assert!(matches!(
            parse(&Method::GET, "/v1/containers/a%2Db/logs", "follow=1", b""),
            Ok(Call::Logs { name, follow: true, tail: None }) if name == "a-b"
        ));
        assert!(matches!(
            parse(
                &Method::GET,
                "/v1/containers/a/logs",
                "tail=2&follow=1",
                b""
            ),
            Ok(Call::Logs {
                follow: true,
                tail: Some(2),
                ..
            })
        ));
        assert_eq!(
            status(Method::GET, "/v1/containers/a/logs", "tail=-1", ""),
            StatusCode::BAD_REQUEST
        );
        let line = |kind: &str, text: &str| format!("2026-01-01T00:00:00.000Z {kind} {text}\n");
        let lines = vec![
            line("engine", "started"),
            line("stdout", "a"),
            line("stderr", "b"),
            line("engine", "exited"),
        ];
        assert_eq!(last_lines(lines.clone(), None), lines);
        assert_eq!(last_lines(lines.clone(), Some(1)), lines[2..]);
        assert_eq!(last_lines(lines.clone(), Some(2)), lines[1..]);
        assert_eq!(last_lines(lines.clone(), Some(9)), lines);
        assert!(last_lines(lines, Some(0)).is_empty());
        assert!(matches!(
            parse(&Method::POST, "/v1/containers/a/kill", "", br#"{"signal": "term"}"#),
            Ok(Call::Kill(name, Signal::SIGTERM)) if name == "a"
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bodies_are_capped_in_size_and_time() {
        let big = Full::new(Bytes::from(vec![b' '; MAX_BODY + 1]));
        let Err(ApiError(status, _)) = read_body(big, BODY_TIMEOUT).await else {
            panic!("a body over the cap was read");
        };
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let endless = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, Infallible>,
        >());
        let Err(ApiError(status, _)) = read_body(endless, Duration::from_millis(50)).await else {
            panic!("a body that never ends was read");
        };
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        let small = Full::new(Bytes::from_static(b"{}"));
        assert_eq!(
            &read_body(small, BODY_TIMEOUT).await.ok().unwrap()[..],
            b"{}"
        );
    }

    /// Pieces a hostile or careless client puts into paths, queries and bodies.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("/".to_owned()),
            Just("v1".to_owned()),
            Just("containers".to_owned()),
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("%".to_owned()),
            Just("%2F".to_owned()),
            Just("%ff".to_owned()),
            Just("%00".to_owned()),
            Just("{name}".to_owned()),
            Just("*".to_owned()),
            Just("stop".to_owned()),
            Just("logs".to_owned()),
            Just("exec".to_owned()),
            Just("kill".to_owned()),
            Just("follow=1".to_owned()),
            Just("&".to_owned()),
            Just("=".to_owned()),
            Just("{\"timeout\":".to_owned()),
            Just("{\"cmd\": [".to_owned()),
            Just("{\"signal\": ".to_owned()),
            Just("18446744073709551615".to_owned()),
            Just("-1".to_owned()),
            Just("1e400".to_owned()),
            Just("\"\"".to_owned()),
            Just("}".to_owned()),
            Just("]".to_owned()),
            Just("é".to_owned()),
            "\\PC{0,8}",
            any::<String>(),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(piece(), 0..12).prop_map(|p| p.concat())
    }

    fn method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::GET),
            Just(Method::POST),
            Just(Method::DELETE),
            Just(Method::PUT),
            Just(Method::HEAD),
            Just(Method::OPTIONS),
            Just(Method::CONNECT),
            "[A-Za-z!#$%&'*+.^_`|~-]{1,12}"
                .prop_filter_map("a token", |m| Method::from_bytes(m.as_bytes()).ok()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        /// Any request gets a call or an error answer; none makes the router panic, and a path
        /// outside the API is always 404.
        #[test]
        fn no_request_makes_the_router_panic(
            method in method(),
            path in text(),
            query in text(),
            body in prop_oneof![text().prop_map(String::into_bytes), any::<Vec<u8>>()],
            prefix in prop_oneof![Just(""), Just("/v1/containers/"), Just("/v1/containers/a/")],
        ) {
            let path = format!("{prefix}{path}");
            let answer = parse(&method, &path, &query, &body);
            if !path.starts_with("/v1/containers") {
                prop_assert!(matches!(answer, Err(ApiError(StatusCode::NOT_FOUND, _))));
            }
            if let Err(ApiError(status, message)) = answer {
                prop_assert!(status.is_client_error(), "{status} {message}");
            }
        }
    }
}
