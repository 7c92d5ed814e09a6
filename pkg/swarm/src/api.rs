//! The Docker Engine API (1.41) on the agent's unix socket, for what the agent implements:
//!
//! ```text
//! GET|HEAD /_ping            GET /version        GET /info (its Swarm section live)
//! GET  /swarm                POST /swarm/init    POST /swarm/join    POST /swarm/leave?force=
//! POST /swarm/update?version=&rotateWorkerToken=&rotateManagerToken=&rotateManagerUnlockKey=
//! GET  /swarm/unlockkey      POST /swarm/unlock
//! GET  /nodes[?filters=]     GET /nodes/{id}     POST /nodes/{id}/update?version=
//! DELETE /nodes/{id}?force=
//! ```
//!
//! Services, tasks, secrets and configs are `services_api`'s; `/distribution` is `node_api`'s.
//!
//! Every path may carry Docker's version prefix (`/v1.41/nodes`). Errors are Docker's
//! `{"message": "..."}` with Docker's status codes; unknown paths get `page not found` (404); a
//! body that is not the JSON an endpoint takes gets 400. Nothing a client sends can panic the
//! daemon: bodies are bounded, parsed into typed structs, and every lookup is checked.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::UnixListener;

use crate::daemon::{ApiError, Daemon, InitRequest, JoinRequest};
use crate::docker::{self, API_VERSION};
use crate::state::{NodeSpec, Role, SwarmSpec};

const MAX_BODY: usize = 1024 * 1024;
const MAX_CONNECTIONS: usize = 128;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A client gets this long to send a body; a slower one gets 400 and cannot hold a connection.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = Response<Full<Bytes>>;

pub async fn serve(listener: UnixListener, daemon: Daemon) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let daemon = daemon.clone();
                async move { Ok::<_, Infallible>(handle_streaming(&daemon, request).await) }
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

fn reply(status: u16, body: Bytes, content_type: Option<&str>) -> Reply {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Api-Version", API_VERSION)
        .header("Docker-Experimental", "false")
        .header("Ostype", "linux")
        .header("Server", concat!("Docker/", "20.10.24-slipway (linux)"));
    if let Some(content_type) = content_type {
        builder = builder.header("Content-Type", content_type);
    }
    builder
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

pub(crate) fn json_reply(status: u16, value: &Value) -> Reply {
    reply(
        status,
        Bytes::from(value.to_string()),
        Some("application/json"),
    )
}

fn error_reply(e: &ApiError) -> Reply {
    json_reply(e.status, &json!({ "message": e.message }))
}

pub(crate) fn empty(status: u16) -> Reply {
    reply(status, Bytes::new(), None)
}

fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for pair in request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        map.insert(decode(key), decode(value));
    }
    map
}

pub(crate) fn truthy(value: Option<&String>) -> bool {
    matches!(
        value.map(|v| v.to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "yes")
    )
}

pub(crate) fn version_param(q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    match q.get("version") {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::new(
                400,
                format!(
                    "invalid version '{v}': strconv.ParseUint: parsing \"{v}\": invalid syntax"
                ),
            )
        }),
    }
}

pub(crate) async fn body<T: DeserializeOwned + Default>(
    request: Request<Incoming>,
) -> Result<T, ApiError> {
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::new(
            400,
            format!("request body too large (over {MAX_BODY} bytes)"),
        ));
    }
    let collected = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(request.into_body(), MAX_BODY).collect(),
    )
    .await
    .map_err(|_| ApiError::new(400, "timed out reading the request body"))?
    .map_err(|e| ApiError::new(400, format!("reading the request body: {e}")))?
    .to_bytes();
    if collected.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&collected).map_err(|e| ApiError::new(400, format!("invalid JSON: {e}")))
}

/// Splits off Docker's `/v1.NN` prefix; a version newer than ours is refused as Docker does.
fn strip_version(path: &str) -> Result<&str, ApiError> {
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok(path);
    };
    let (version, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let parsed: Option<(u32, u32)> = version
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    match parsed {
        Some((major, minor)) => {
            if (major, minor) > (1, 41) {
                return Err(ApiError::new(
                    400,
                    format!(
                        "client version {version} is too new. Maximum supported API version is {API_VERSION}"
                    ),
                ));
            }
            Ok(tail)
        }
        None => Ok(path),
    }
}

/// Log requests are answered as a stream (`crate::logs`), everything else in one piece.
async fn handle_streaming(daemon: &Daemon, request: Request<Incoming>) -> crate::logs::StreamReply {
    if request.method() == Method::GET
        && let Ok(path) = strip_version(request.uri().path())
        && let [kind @ ("services" | "tasks"), key, "logs"] = path
            .trim_end_matches('/')
            .split('/')
            .skip(1)
            .collect::<Vec<_>>()
            .as_slice()
    {
        let q = query(&request);
        return match crate::logs::serve(daemon, key, *kind == "services", &q).await {
            Ok(reply) => reply,
            Err(e) => error_reply(&e).map(BodyExt::boxed_unsync),
        };
    }
    handle(daemon, request).await.map(BodyExt::boxed_unsync)
}

pub async fn handle(daemon: &Daemon, request: Request<Incoming>) -> Reply {
    match route(daemon, request).await {
        Ok(reply) => reply,
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!("API: {}", e.message);
            }
            error_reply(&e)
        }
    }
}

async fn route(daemon: &Daemon, request: Request<Incoming>) -> Result<Reply, ApiError> {
    let method = request.method().clone();
    let full_path = request.uri().path().to_string();
    let path = strip_version(&full_path)?;
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let q = query(&request);
    if let Some(reply) = crate::node_api::route(daemon, &method, path, &q).await {
        return reply;
    }
    let not_found = || Err(ApiError::new(404, "page not found"));
    match (&method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => {
            let swarm = match daemon.session() {
                None if daemon.is_locked() => "locked",
                None if daemon.local_error().is_some() => "error",
                None => "inactive",
                Some(s) if s.manager().is_some() => "active/manager",
                Some(_) => "active/worker",
            };
            let mut r = reply(
                200,
                if method == Method::HEAD {
                    Bytes::new()
                } else {
                    Bytes::from_static(b"OK")
                },
                Some("text/plain; charset=utf-8"),
            );
            r.headers_mut()
                .insert("Swarm", hyper::header::HeaderValue::from_static(swarm));
            r.headers_mut().insert(
                "Cache-Control",
                hyper::header::HeaderValue::from_static("no-cache, no-store, must-revalidate"),
            );
            Ok(r)
        }
        (&Method::GET, ["version"]) => Ok(json_reply(200, &docker::version())),
        (&Method::GET, ["info"]) => Ok(json_reply(200, &docker::info(daemon))),
        (&Method::GET, ["swarm"]) => {
            let view = daemon.view()?;
            Ok(json_reply(200, &docker::swarm(&view)))
        }
        (&Method::POST, ["swarm", "init"]) => {
            let init: InitRequest = body(request).await?;
            let node_id = daemon.init(init).await?;
            Ok(json_reply(200, &json!(node_id)))
        }
        (&Method::POST, ["swarm", "join"]) => {
            let join: JoinRequest = body(request).await?;
            daemon.join(join).await?;
            Ok(empty(200))
        }
        (&Method::POST, ["swarm", "leave"]) => {
            daemon.leave(truthy(q.get("force"))).await?;
            Ok(empty(200))
        }
        (&Method::POST, ["swarm", "update"]) => {
            let version = version_param(&q)?;
            let spec: SwarmSpec = body(request).await?;
            daemon
                .update_swarm(
                    version,
                    spec,
                    truthy(q.get("rotateWorkerToken")),
                    truthy(q.get("rotateManagerToken")),
                    truthy(q.get("rotateManagerUnlockKey")),
                )
                .await?;
            Ok(empty(200))
        }
        (&Method::GET, ["swarm", "unlockkey"]) => {
            Ok(json_reply(200, &json!({"UnlockKey": daemon.unlock_key()?})))
        }
        (&Method::POST, ["swarm", "unlock"]) => {
            let unlock: UnlockRequest = body(request).await?;
            daemon.unlock(&unlock.unlock_key).await?;
            Ok(empty(200))
        }
        (&Method::GET, ["nodes"]) => {
            let view = daemon.view()?;
            let filters = parse_filters(q.get("filters"))?;
            let nodes: Vec<Value> = view
                .state
                .nodes
                .values()
                .filter(|n| node_matches(n, &filters))
                .map(|n| docker::node(&view, n))
                .collect();
            Ok(json_reply(200, &Value::Array(nodes)))
        }
        (&Method::GET, ["nodes", key]) => {
            let view = daemon.view()?;
            let node = view
                .state
                .find_node(key)
                .map_err(|(s, m)| ApiError::new(s, m))?;
            Ok(json_reply(200, &docker::node(&view, node)))
        }
        (&Method::POST, ["nodes", key, "update"]) => {
            let version = version_param(&q)?;
            let spec: NodeSpec = body(request).await?;
            daemon.update_node(key, version, spec).await?;
            Ok(empty(200))
        }
        (&Method::DELETE, ["nodes", key]) => {
            daemon.remove_node(key, truthy(q.get("force"))).await?;
            Ok(empty(200))
        }
        _ => match crate::services_api::route(daemon, &method, &segments, &q, request).await {
            Some(reply) => reply,
            None => not_found(),
        },
    }
}

/// Docker's `/swarm/unlock` body.
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UnlockRequest {
    #[serde(default, deserialize_with = "crate::state::nullable")]
    unlock_key: String,
}

pub(crate) type Filters = HashMap<String, Vec<String>>;

/// Docker's `filters` parameter: `{"role":{"manager":true}}` (or the old `{"role":["manager"]}`).
fn parse_filters(raw: Option<&String>) -> Result<Filters, ApiError> {
    parse_filters_for(
        raw,
        &["id", "name", "role", "membership", "node.label", "label"],
    )
}

/// Docker's `filters`, with the keys an endpoint takes.
pub(crate) fn parse_filters_for(
    raw: Option<&String>,
    allowed: &[&str],
) -> Result<Filters, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(Filters::new());
    };
    let value: Value = serde_json::from_str(raw)
        .map_err(|e| ApiError::new(400, format!("invalid filter: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::new(400, "invalid filter: not an object"));
    };
    let mut filters = Filters::new();
    for (key, values) in map {
        let list = match values {
            Value::Object(set) => set
                .into_iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k)
                .collect(),
            Value::Array(items) => items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => return Err(ApiError::new(400, format!("invalid filter '{key}'"))),
        };
        if !allowed.contains(&key.as_str()) {
            return Err(ApiError::new(400, format!("invalid filter '{key}'")));
        }
        filters.insert(key, list);
    }
    Ok(filters)
}

fn node_matches(node: &crate::state::Node, filters: &Filters) -> bool {
    filters.iter().all(|(key, values)| {
        values.is_empty()
            || values.iter().any(|v| match key.as_str() {
                "id" => node.id.starts_with(v.as_str()),
                "name" => {
                    node.description.hostname.starts_with(v.as_str())
                        || node.spec.name.starts_with(v.as_str())
                }
                "role" => {
                    (node.spec.role == Role::Manager && v == "manager")
                        || (node.spec.role == Role::Worker && v == "worker")
                }
                "membership" => v == "accepted",
                "node.label" | "label" => match v.split_once('=') {
                    Some((k, val)) => node.spec.labels.get(k).is_some_and(|x| x == val),
                    None => node.spec.labels.contains_key(v.as_str()),
                },
                _ => false,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes_are_stripped_and_newer_ones_refused() {
        assert_eq!(strip_version("/v1.41/nodes").unwrap(), "/nodes");
        assert_eq!(strip_version("/v1.24/swarm/init").unwrap(), "/swarm/init");
        assert_eq!(strip_version("/nodes").unwrap(), "/nodes");
        assert_eq!(strip_version("/version").unwrap(), "/version");
        assert_eq!(strip_version("/v1.99/info").unwrap_err().status, 400);
    }

    #[test]
    fn filters_take_both_of_dockers_forms_and_refuse_garbage() {
        let f = parse_filters(Some(&r#"{"role":{"manager":true}}"#.to_string())).unwrap();
        assert_eq!(f["role"], vec!["manager"]);
        let f = parse_filters(Some(&r#"{"name":["h1"]}"#.to_string())).unwrap();
        assert_eq!(f["name"], vec!["h1"]);
        assert!(parse_filters(Some(&"{".to_string())).is_err());
        assert!(parse_filters(Some(&r#"{"bogus":["x"]}"#.to_string())).is_err());
        assert!(parse_filters(Some(&"[1]".to_string())).is_err());
    }
}
