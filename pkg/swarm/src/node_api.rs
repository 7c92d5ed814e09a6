//! The parts of the Docker Engine API a node answers through its own engine:
//!
//! ```text
//! GET /distribution/{name}/json     the manifest digest `name` has in its registry
//! ```
//!
//! Docker's CLI asks it on `service create` and `service update --image` to pin the image as
//! `NAME@sha256:...`; an error only makes the CLI warn and keep the unpinned name.

use std::collections::HashMap;

use hyper::Method;

use crate::api::json_reply;
use crate::daemon::{ApiError, Daemon};
use crate::executor::engine_client::EngineClientError;

type Reply = hyper::Response<http_body_util::Full<bytes::Bytes>>;

/// Answers `path` (without its version prefix) when it is one of this module's.
pub async fn route(
    daemon: &Daemon,
    method: &Method,
    path: &str,
    _q: &HashMap<String, String>,
) -> Option<Result<Reply, ApiError>> {
    // The name holds slashes and colons (`HOST:PORT/REPO:TAG`), so it is not one segment.
    let name = path.strip_prefix("/distribution/")?.strip_suffix("/json")?;
    if method != Method::GET {
        return None;
    }
    Some(distribution(daemon, name).await)
}

async fn distribution(daemon: &Daemon, name: &str) -> Result<Reply, ApiError> {
    if name.is_empty() || name.len() > 4096 {
        return Err(ApiError::new(
            400,
            format!("invalid reference format: {name:?}"),
        ));
    }
    if daemon.opts().executor != crate::agent_tasks::ExecutorKind::Engine {
        return Err(ApiError::new(
            501,
            "this agent runs no engine to ask registries (--executor fake)",
        ));
    }
    match crate::executor::engine::distribution(&daemon.opts().engine, name).await {
        Ok(d) => Ok(json_reply(200, &d.docker_json())),
        Err(EngineClientError::Refused { status, message }) => {
            Err(ApiError::new(status.as_u16(), message))
        }
        Err(e) => Err(ApiError::new(500, e.to_string())),
    }
}
