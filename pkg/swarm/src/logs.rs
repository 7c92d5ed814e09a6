//! `GET /services/{id}/logs` and `/tasks/{id}/logs`: the lines come from the nodes that run
//! the tasks. Workers serve no gRPC, so the leader asks through what every node already holds
//! open with it: a log request rides in the node's next assignment (`WireAssignment::
//! log_requests`), the node's agent reads the lines from its executor and sends them back on
//! `UpdateTaskStatus` (a JSON object where statuses are an array), and the leader's API answers
//! them in Docker's multiplexed stream format (8-byte frame headers, stream 1 = stdout), each line
//! prefixed with the task's context when `details=1`, as dockerd does for a non-TTY service.
//! Only the leader serves logs (it holds the streams); another manager answers 503 naming it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::daemon::{ApiError, Daemon, Session};
use crate::executor::Executor;
use crate::model::Task;

type Reply = hyper::Response<http_body_util::Full<Bytes>>;

/// How long the API waits for a node's lines.
const WAIT: Duration = Duration::from_secs(10);
/// At most this many lines per task come back.
const MAX_LINES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRequest {
    pub id: String,
    pub task_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogReply {
    pub id: String,
    pub tasks: Vec<TaskLog>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskLog {
    pub task_id: String,
    #[serde(default)]
    pub lines: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Default)]
struct Hub {
    /// Requests not yet sent, by node ID.
    queued: HashMap<String, Vec<LogRequest>>,
    /// Requests waiting for their node's answer: request ID -> (node ID, answer).
    waiting: HashMap<String, (String, oneshot::Sender<LogReply>)>,
}

static HUB: LazyLock<Mutex<Hub>> = LazyLock::new(Mutex::default);
static NEXT: AtomicU64 = AtomicU64::new(1);

fn hub() -> std::sync::MutexGuard<'static, Hub> {
    HUB.lock().unwrap_or_else(|e| e.into_inner())
}

/// The leader's dispatcher: the requests to put in `node_id`'s next assignment.
pub fn take_requests(node_id: &str) -> Vec<LogRequest> {
    hub().queued.remove(node_id).unwrap_or_default()
}

/// The leader: a node's answer (only to a request made to that node).
pub fn deliver(node_id: &str, payload: &[u8]) -> Result<(), tonic::Status> {
    let reply: LogReply = serde_json::from_slice(payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("bad log reply: {e}")))?;
    let mut hub = hub();
    match hub.waiting.get(&reply.id) {
        Some((node, _)) if node == node_id => {}
        _ => return Ok(()),
    }
    if let Some((_, tx)) = hub.waiting.remove(&reply.id) {
        let _ = tx.send(reply);
    }
    Ok(())
}

/// Asks `node_id` for the lines of `task_ids`.
async fn ask(node_id: &str, task_ids: Vec<String>) -> Result<LogReply, String> {
    let id = format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let (tx, rx) = oneshot::channel();
    {
        let mut hub = hub();
        hub.waiting.insert(id.clone(), (node_id.to_owned(), tx));
        hub.queued
            .entry(node_id.to_owned())
            .or_default()
            .push(LogRequest {
                id: id.clone(),
                task_ids,
            });
    }
    let answer = tokio::time::timeout(WAIT, rx).await;
    let mut hub = hub();
    hub.waiting.remove(&id);
    if let Some(q) = hub.queued.get_mut(node_id) {
        q.retain(|r| r.id != id);
    }
    match answer {
        Ok(Ok(reply)) => Ok(reply),
        _ => Err(format!("node {node_id} did not answer within {WAIT:?}")),
    }
}

/// A node's agent: reads the lines from its executor and sends them to the leader.
pub async fn answer(
    session: Weak<Session>,
    executor: Arc<dyn Executor>,
    requests: Vec<LogRequest>,
) {
    for request in requests {
        let mut tasks = Vec::new();
        for task_id in request.task_ids {
            let (lines, error) = match executor.logs(&task_id).await {
                Ok(mut lines) => {
                    let skip = lines.len().saturating_sub(MAX_LINES);
                    lines.drain(..skip);
                    (lines, None)
                }
                Err(e) => (Vec::new(), Some(e)),
            };
            tasks.push(TaskLog {
                task_id,
                lines,
                error,
            });
        }
        let reply = LogReply {
            id: request.id,
            tasks,
        };
        let channel = {
            let Some(s) = session.upgrade() else { return };
            let Some(addr) = s.leader() else { continue };
            match s.channel(&addr) {
                Ok(c) => c,
                Err(_) => continue,
            }
        };
        let payload = serde_json::to_vec(&reply).unwrap_or_default();
        let mut request =
            tonic::Request::new(crate::proto::UpdateTaskStatusRequest { statuses: payload });
        request.set_timeout(Duration::from_secs(5));
        if let Err(e) = crate::proto::control_client::ControlClient::new(channel)
            .update_task_status(request)
            .await
        {
            tracing::debug!("sending task logs: {}", e.message());
        }
    }
}

fn truthy(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key)
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True"))
}

/// The API: the logs of a service's tasks (`service`) or of one task.
pub async fn serve(
    daemon: &Daemon,
    key: &str,
    service: bool,
    q: &HashMap<String, String>,
) -> Result<Reply, ApiError> {
    let view = daemon.view()?;
    let tasks: Vec<Task> = if service {
        let service = view
            .state
            .find_service(key)
            .map_err(|(s, m)| ApiError::new(s, m))?;
        let mut tasks: Vec<Task> = view
            .state
            .objects
            .tasks
            .values()
            .filter(|t| t.service_id == service.id && !t.node_id.is_empty())
            .cloned()
            .collect();
        tasks.sort_by(|a, b| (a.slot, &a.node_id, &a.id).cmp(&(b.slot, &b.node_id, &b.id)));
        tasks
    } else {
        let all = &view.state.objects.tasks;
        let task = all.get(key).or_else(|| {
            let mut found = all.values().filter(|t| t.id.starts_with(key));
            match (found.next(), found.next()) {
                (Some(t), None) if !key.is_empty() => Some(t),
                _ => None,
            }
        });
        vec![
            task.cloned()
                .ok_or_else(|| ApiError::new(404, format!("task {key} not found")))?,
        ]
    };
    if view.leader != Some(view.self_raft_id) {
        let leader = view.leader_addr().unwrap_or_default();
        return Err(ApiError::new(
            503,
            format!("logs are served by the swarm's leader ({leader}); ask it"),
        ));
    }
    drop(view);
    // Both streams when neither is asked for.
    let (mut stdout, mut stderr) = (truthy(q, "stdout"), truthy(q, "stderr"));
    if !stdout && !stderr {
        (stdout, stderr) = (true, true);
    }
    let details = truthy(q, "details");
    let timestamps = truthy(q, "timestamps");
    let tail: Option<usize> = q.get("tail").and_then(|t| t.parse().ok());
    let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
    for t in &tasks {
        by_node
            .entry(t.node_id.clone())
            .or_default()
            .push(t.id.clone());
    }
    let answers = futures_join(by_node).await;
    let mut out = BytesMut::new();
    for task in &tasks {
        let Some(log) = answers.get(&task.id) else {
            continue;
        };
        let lines: Vec<(u8, Option<&str>, &str)> = log
            .lines
            .iter()
            .filter_map(|l| output_line(l))
            .filter(|(stream, _, _)| if *stream == 1 { stdout } else { stderr })
            .collect();
        let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
        for (stream, time, line) in &lines[skip..] {
            let mut text = String::new();
            if timestamps && let Some(time) = time {
                text.push_str(time);
                text.push(' ');
            }
            if details {
                text.push_str(&format!(
                    "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={} ",
                    task.node_id, task.service_id, task.id
                ));
            }
            text.push_str(line);
            text.push('\n');
            frame(&mut out, *stream, text.as_bytes());
        }
    }
    hyper::Response::builder()
        .status(200)
        .header("Content-Type", "application/vnd.docker.multiplexed-stream")
        .header("Api-Version", crate::docker::API_VERSION)
        .body(http_body_util::Full::new(out.freeze()))
        .map_err(|e| ApiError::new(500, e.to_string()))
}

/// Asks every node at once; the answers by task ID (a node that did not answer gives none).
async fn futures_join(by_node: HashMap<String, Vec<String>>) -> HashMap<String, TaskLog> {
    let mut set = tokio::task::JoinSet::new();
    for (node, ids) in by_node {
        set.spawn(async move {
            ask(&node, ids).await.unwrap_or_else(|e| {
                tracing::info!("logs: {e}");
                LogReply::default()
            })
        });
    }
    let mut out = HashMap::new();
    while let Some(Ok(reply)) = set.join_next().await {
        for t in reply.tasks {
            out.insert(t.task_id.clone(), t);
        }
    }
    out
}

/// A line of the engine's container log, `TIME stdout|stderr TEXT`: its stream (1 or 2), time
/// and text; the engine's own events (`TIME engine ...`) are no output of the task. A line in
/// no such form (another executor's) is output on stdout.
fn output_line(line: &str) -> Option<(u8, Option<&str>, &str)> {
    let mut parts = line.splitn(3, ' ');
    let (Some(time), Some(kind)) = (parts.next(), parts.next()) else {
        return Some((1, None, line));
    };
    let text = parts.next().unwrap_or("");
    let stamped = time.len() >= 20 && time.as_bytes()[4] == b'-' && time.ends_with('Z');
    match kind {
        "stdout" if stamped => Some((1, Some(time), text)),
        "stderr" if stamped => Some((2, Some(time), text)),
        "engine" if stamped => None,
        _ => Some((1, None, line)),
    }
}

/// One frame of Docker's multiplexed stream: [stream, 0, 0, 0, size (big-endian u32)] + data.
fn frame(out: &mut BytesMut, stream: u8, data: &[u8]) {
    out.put_slice(&[stream, 0, 0, 0]);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
}

/// Splits Docker's multiplexed stream into its frames' payloads (a cut frame ends it).
pub fn frames(mut body: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while body.len() >= 8 {
        let size = u32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize;
        let Some(data) = body.get(8..8 + size) else {
            break;
        };
        out.push((body[0], data));
        body = &body[8 + size..];
    }
    out
}

/// The agent's `service logs SERVICE`: `NAME.SLOT.TASK@HOST | line`, as Docker's CLI prints.
pub async fn print_service_logs(socket: &std::path::Path, service: &str) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let inspected = crate::cli::call(socket, "GET", &format!("/services/{service}"), None).await?;
    let name = inspected["Spec"]["Name"]
        .as_str()
        .unwrap_or(service)
        .to_owned();
    let nodes = crate::cli::call(socket, "GET", "/nodes", None).await?;
    let hostname = |id: &str| {
        nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["ID"] == id)
            .and_then(|n| n["Description"]["Hostname"].as_str())
            .unwrap_or(id)
            .to_owned()
    };
    let tasks = crate::cli::call(socket, "GET", "/tasks", None).await?;
    let slot = |id: &str| {
        tasks
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["ID"] == id)
            .and_then(|t| t["Slot"].as_u64())
            .unwrap_or(0)
    };
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .uri(format!(
            "http://localhost/v1.41/services/{service}/logs?stdout=1&stderr=1&details=1"
        ))
        .header("Host", "localhost")
        .body(http_body_util::Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    if status >= 400 {
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        anyhow::bail!(
            "Error response from daemon: {}",
            value["message"].as_str().unwrap_or("")
        );
    }
    for (_, data) in frames(&body) {
        let text = String::from_utf8_lossy(data);
        let (context, line) = text.split_once(' ').unwrap_or(("", &text));
        let field = |key: &str| {
            context
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or("")
                .to_owned()
        };
        let task = field("com.docker.swarm.task.id");
        let node = field("com.docker.swarm.node.id");
        print!(
            "{name}.{}.{}@{}    | {line}",
            slot(&task),
            &task[..task.len().min(12)],
            hostname(&node)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_lines_become_output() {
        assert_eq!(
            output_line("2026-12-01T03:57:48.607Z stdout line one"),
            Some((1, Some("2026-12-01T03:57:48.607Z"), "line one"))
        );
        assert_eq!(
            output_line("2026-12-01T03:57:48.607Z stderr oops"),
            Some((2, Some("2026-12-01T03:57:48.607Z"), "oops"))
        );
        assert_eq!(
            output_line("2026-12-01T03:57:48.607Z engine started (pid 1)"),
            None
        );
        assert_eq!(output_line("fake task t1"), Some((1, None, "fake task t1")));
    }

    #[test]
    fn frames_are_dockers() {
        let mut out = BytesMut::new();
        frame(&mut out, 1, b"hi\n");
        assert_eq!(&out[..], b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n");
    }

    #[test]
    fn a_reply_reaches_only_its_asker_from_its_node() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let asking = tokio::spawn(ask("nodeA", vec!["t1".into()]));
            tokio::time::sleep(Duration::from_millis(20)).await;
            let requests = take_requests("nodeA");
            assert_eq!(requests.len(), 1);
            let reply = LogReply {
                id: requests[0].id.clone(),
                tasks: vec![TaskLog {
                    task_id: "t1".into(),
                    lines: vec!["x".into()],
                    error: None,
                }],
            };
            let bytes = serde_json::to_vec(&reply).unwrap();
            // Another node cannot answer it.
            deliver("nodeB", &bytes).unwrap();
            deliver("nodeA", &bytes).unwrap();
            let got = asking.await.unwrap().unwrap();
            assert_eq!(got.tasks[0].lines, ["x"]);
            assert!(deliver("nodeA", b"garbage").is_err());
        });
    }
}
