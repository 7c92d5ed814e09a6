//! `GET /services/{id}/logs` and `/tasks/{id}/logs`, served by any manager, as SwarmKit's log
//! broker does it: the leader brokers subscriptions, the nodes publish the lines.
//!
//! - The leader's broker ([`subscribe`]) puts a log request in the next assignment of each node
//!   that runs a task asked for (`WireAssignment::log_requests`; workers serve no gRPC, so the
//!   leader reaches them through what they hold open with it). With `follow` it looks again
//!   every [`TICK`] for new tasks (a task replaced, a replica added) and asks their nodes too;
//!   it ends when the service (or task) is gone from the store, as Docker's does.
//! - A node's agent ([`answer`]) reads the tasks' container logs from its executor (the
//!   engine's `logs?follow=1&tail=N`), keeps the lines asked for (stdout/stderr, `since`) and
//!   streams them to the leader on `PublishLogs`; the leader ends that call when the reader went
//!   away, and the node then stops reading.
//! - A manager that does not lead forwards the subscription to the leader over the mutual-TLS
//!   gRPC (`SubscribeLogs`, managers only) and relays what comes back.
//! - The API answers in Docker's multiplexed stream format (8-byte frame headers, stream 1 =
//!   stdout, 2 = stderr), each line prefixed with its RFC 3339 time when `timestamps=1` and with
//!   the task's context when `details=1`, as dockerd does for a non-TTY service; the stream ends
//!   when the client hangs up, which ends the subscription on the leader and the nodes' reads.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::daemon::{ApiError, Daemon, ManagerParts, Session};
use crate::executor::Executor;
use crate::proto::{self, control_client::ControlClient};

pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;
pub type StreamReply = hyper::Response<Body>;

/// Without `follow`: a node silent this long is given up.
const WAIT: Duration = Duration::from_secs(10);
/// With `follow`: how often the broker looks for new tasks (and for the target being gone).
const TICK: Duration = Duration::from_millis(500);
/// With `follow`: how long a node waits for a task's container to appear, trying every `RETRY`.
const APPEAR: Duration = Duration::from_secs(600);
const RETRY: Duration = Duration::from_secs(1);
/// A published message holds at most this many lines, or about this many bytes.
const BATCH_LINES: usize = 256;
const BATCH_BYTES: usize = 1024 * 1024;

/// What the client asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Options {
    #[serde(default)]
    pub follow: bool,
    /// Only lines written at or after this time (nanoseconds since the epoch).
    #[serde(default)]
    pub since_ns: Option<i128>,
    /// Only the last N lines of each task's log so far.
    #[serde(default)]
    pub tail: Option<u64>,
    #[serde(default)]
    pub stdout: bool,
    #[serde(default)]
    pub stderr: bool,
}

/// Whose logs: a service's tasks or one task (by full ID).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Target {
    Service(String),
    Task(String),
}

/// A subscription, as a manager forwards it to the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub target: Target,
    pub options: Options,
}

/// The leader to a node, in its assignment: publish these tasks' lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRequest {
    pub id: String,
    pub task_ids: Vec<String>,
    #[serde(default)]
    pub options: Options,
}

/// A node to the leader, on `PublishLogs`: lines for request `id`; `close` when it has no more.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Published {
    pub id: String,
    #[serde(default)]
    pub lines: Vec<LogLine>,
    #[serde(default)]
    pub close: bool,
}

/// One line of a task's output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub task_id: String,
    /// Filled in by the leader.
    #[serde(default)]
    pub node_id: String,
    #[serde(default)]
    pub service_id: String,
    /// 1 = stdout, 2 = stderr.
    pub stream: u8,
    /// RFC 3339 with nanoseconds, as Docker prints it.
    pub time: String,
    pub line: String,
}

// ---- the leader's broker ----------------------------------------------------------------------

enum Event {
    Lines(Vec<LogLine>),
    /// A node has sent all it will for this request.
    Closed(String),
}

struct Asked {
    node_id: String,
    task_ids: HashSet<String>,
    events: mpsc::Sender<Event>,
}

#[derive(Default)]
struct Hub {
    /// Requests not yet sent, by node ID.
    queued: HashMap<String, Vec<LogRequest>>,
    /// Requests a node may publish for, by request ID.
    asked: HashMap<String, Asked>,
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

/// A subscription's requests, forgotten by the hub when it ends (however it ends).
#[derive(Default)]
struct Requests(Vec<(String, String)>);

impl Requests {
    fn ask(
        &mut self,
        node_id: &str,
        task_ids: Vec<String>,
        options: &Options,
        events: &mpsc::Sender<Event>,
    ) -> String {
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut hub = hub();
        hub.asked.insert(
            id.clone(),
            Asked {
                node_id: node_id.to_owned(),
                task_ids: task_ids.iter().cloned().collect(),
                events: events.clone(),
            },
        );
        hub.queued
            .entry(node_id.to_owned())
            .or_default()
            .push(LogRequest {
                id: id.clone(),
                task_ids,
                options: options.clone(),
            });
        self.0.push((id.clone(), node_id.to_owned()));
        id
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        let mut hub = hub();
        for (id, node) in &self.0 {
            hub.asked.remove(id);
            if let Some(q) = hub.queued.get_mut(node) {
                q.retain(|r| &r.id != id);
                if q.is_empty() {
                    hub.queued.remove(node);
                }
            }
        }
    }
}

fn leads(parts: &ManagerParts) -> bool {
    parts.raft.metrics().borrow().state == openraft::ServerState::Leader
}

/// The tasks of `target` that have a node: (task, node, service) IDs; `None` when the target
/// is gone from the store.
fn targets(parts: &ManagerParts, target: &Target) -> Option<Vec<(String, String, String)>> {
    let applied = parts.shared.read().unwrap_or_else(|e| e.into_inner());
    let objects = &applied.state.objects;
    let triple = |t: &crate::model::Task| (t.id.clone(), t.node_id.clone(), t.service_id.clone());
    match target {
        Target::Service(id) => {
            objects.services.get(id)?;
            Some(
                objects
                    .tasks
                    .values()
                    .filter(|t| &t.service_id == id && !t.node_id.is_empty())
                    .map(triple)
                    .collect(),
            )
        }
        Target::Task(id) => {
            let t = objects.tasks.get(id)?;
            Some(if t.node_id.is_empty() {
                Vec::new()
            } else {
                vec![triple(t)]
            })
        }
    }
}

/// The leader: starts a subscription; its lines come in batches on the receiver, which ends
/// when the subscription does. Dropping the receiver ends it.
pub fn subscribe(
    daemon: &Daemon,
    subscription: Subscription,
) -> Result<mpsc::Receiver<Vec<LogLine>>, ApiError> {
    let session = daemon.manager_session()?;
    let parts = session
        .manager()
        .ok_or_else(|| ApiError::new(503, crate::daemon::NOT_A_MANAGER_WORKER))?;
    if !leads(&parts) {
        return Err(ApiError::new(503, crate::daemon::NO_LEADER));
    }
    let (out, lines) = mpsc::channel(16);
    tokio::spawn(broker(Arc::downgrade(&parts), subscription, out));
    Ok(lines)
}

async fn broker(
    parts: Weak<ManagerParts>,
    subscription: Subscription,
    out: mpsc::Sender<Vec<LogLine>>,
) {
    let Subscription { target, options } = subscription;
    let (events_tx, mut events) = mpsc::channel(64);
    let mut requests = Requests::default();
    // Task ID -> (node, service) of every task asked for.
    let mut asked: HashMap<String, (String, String)> = HashMap::new();
    let mut open: HashSet<String> = HashSet::new();
    let mut gone_at: Option<Instant> = None;
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        let silence = if options.follow { TICK * 4 } else { WAIT };
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Lines(mut lines)) => {
                    for line in &mut lines {
                        if let Some((node, service)) = asked.get(&line.task_id) {
                            line.node_id.clone_from(node);
                            line.service_id.clone_from(service);
                        }
                    }
                    if out.send(lines).await.is_err() {
                        return;
                    }
                }
                Some(Event::Closed(id)) => {
                    open.remove(&id);
                }
                None => return,
            },
            _ = ticks.tick(), if first || options.follow => {
                let Some(p) = parts.upgrade() else { return };
                if !leads(&p) {
                    return;
                }
                let found = targets(&p, &target);
                drop(p);
                let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
                match found {
                    None => {
                        gone_at.get_or_insert_with(Instant::now);
                    }
                    Some(tasks) => {
                        for (task, node, service) in tasks {
                            if let std::collections::hash_map::Entry::Vacant(e) =
                                asked.entry(task.clone())
                            {
                                by_node.entry(node.clone()).or_default().push(task);
                                e.insert((node, service));
                            }
                        }
                    }
                }
                // `tail` bounds the backlog when the client asks; a task found later has none
                // from before the request, so all its lines are new ones (else a task that
                // printed more than `tail` lines before the broker saw it loses its first ones).
                let later = Options {
                    tail: None,
                    ..options.clone()
                };
                let asking = if first { &options } else { &later };
                for (node, tasks) in by_node {
                    open.insert(requests.ask(&node, tasks, asking, &events_tx));
                }
                first = false;
            },
            _ = out.closed() => return,
            _ = tokio::time::sleep(silence), if !options.follow => return,
        }
        if !first && !options.follow && open.is_empty() {
            return;
        }
        // The target is gone: what its nodes still send is taken for a moment, then it ends.
        if gone_at.is_some_and(|t| open.is_empty() || t.elapsed() >= TICK * 4) {
            return;
        }
    }
}

/// The leader's `PublishLogs`: a node's lines for one request it was given, until it closes it
/// or the reader goes away; then the answer stream ends (with the error, if any).
pub fn publish(
    node_id: String,
    stream: tonic::Streaming<proto::LogsMessage>,
) -> ReceiverStream<Result<proto::LogsMessage, tonic::Status>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        if let Err(status) = relay_published(&node_id, stream).await {
            let _ = tx.send(Err(status)).await;
        }
    });
    ReceiverStream::new(rx)
}

async fn relay_published(
    node_id: &str,
    mut stream: tonic::Streaming<proto::LogsMessage>,
) -> Result<(), tonic::Status> {
    let mut current: Option<(String, HashSet<String>, mpsc::Sender<Event>)> = None;
    let result = relay_lines(node_id, &mut stream, &mut current).await;
    // Closed however it ended (a node restarting breaks its stream).
    if let Some((id, _, events)) = current {
        let _ = events.send(Event::Closed(id)).await;
    }
    result
}

async fn relay_lines(
    node_id: &str,
    stream: &mut tonic::Streaming<proto::LogsMessage>,
    current: &mut Option<(String, HashSet<String>, mpsc::Sender<Event>)>,
) -> Result<(), tonic::Status> {
    loop {
        let message = match &*current {
            None => stream.message().await?,
            Some((_, _, events)) => tokio::select! {
                m = stream.message() => m?,
                _ = events.closed() => return Ok(()),
            },
        };
        let Some(message) = message else {
            return Ok(());
        };
        let published: Published = serde_json::from_slice(&message.payload)
            .map_err(|e| tonic::Status::invalid_argument(format!("bad log message: {e}")))?;
        if current.is_none() {
            let hub = hub();
            let asked = hub
                .asked
                .get(&published.id)
                .filter(|a| a.node_id == node_id)
                .ok_or_else(|| {
                    tonic::Status::not_found(format!("no log request {}", published.id))
                })?;
            *current = Some((
                published.id.clone(),
                asked.task_ids.clone(),
                asked.events.clone(),
            ));
        }
        let Some((id, tasks, events)) = &*current else {
            return Ok(());
        };
        if &published.id != id {
            return Err(tonic::Status::invalid_argument(
                "one log request per PublishLogs call",
            ));
        }
        // Only lines of the tasks this node was asked for.
        let lines: Vec<LogLine> = published
            .lines
            .into_iter()
            .filter(|l| tasks.contains(&l.task_id) && matches!(l.stream, 1 | 2))
            .collect();
        if !lines.is_empty() && events.send(Event::Lines(lines)).await.is_err() {
            return Ok(());
        }
        if published.close {
            return Ok(());
        }
    }
}

/// The leader's `SubscribeLogs`, for another manager's API.
pub fn serve_subscription(
    daemon: &Daemon,
    payload: &[u8],
) -> Result<ReceiverStream<Result<proto::LogsMessage, tonic::Status>>, tonic::Status> {
    let subscription: Subscription = serde_json::from_slice(payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("bad log subscription: {e}")))?;
    let mut lines = subscribe(daemon, subscription).map_err(|e| {
        if e.status == 503 {
            tonic::Status::unavailable(e.message)
        } else {
            tonic::Status::internal(e.message)
        }
    })?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                b = lines.recv() => b,
                _ = tx.closed() => return,
            };
            let Some(batch) = batch else { return };
            let payload = serde_json::to_vec(&batch).unwrap_or_default();
            if tx.send(Ok(proto::LogsMessage { payload })).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

// ---- a node's agent ---------------------------------------------------------------------------

/// A node's agent: answers each log request of its assignment on its own `PublishLogs` call.
pub async fn answer(
    session: Weak<Session>,
    executor: Arc<dyn Executor>,
    requests: Vec<LogRequest>,
) {
    for request in requests {
        tokio::spawn(answer_one(session.clone(), executor.clone(), request));
    }
}

async fn answer_one(session: Weak<Session>, executor: Arc<dyn Executor>, request: LogRequest) {
    let channel = {
        let Some(s) = session.upgrade() else { return };
        let Some(addr) = s.leader() else { return };
        match s.channel(&addr) {
            Ok(c) => c,
            Err(_) => return,
        }
    };
    let (tx, rx) = mpsc::channel(4);
    let opened = ControlClient::new(channel)
        .max_encoding_message_size(crate::net::MAX_MESSAGE)
        .publish_logs(ReceiverStream::new(rx))
        .await;
    let mut answer = match opened {
        Ok(answer) => answer.into_inner(),
        Err(e) => {
            tracing::debug!("publishing task logs: {}", e.message());
            return;
        }
    };
    // The leader's answer stream ends when its reader went away (or it is no leader now).
    tokio::select! {
        _ = answer.message() => return,
        () = produce(executor, request, tx) => {}
    }
    if let Ok(Err(e)) = tokio::time::timeout(WAIT, answer.message()).await {
        tracing::debug!("publishing task logs: {}", e.message());
    }
}

/// Reads the tasks' lines and sends them in batches, then closes the request.
async fn produce(
    executor: Arc<dyn Executor>,
    request: LogRequest,
    tx: mpsc::Sender<proto::LogsMessage>,
) {
    let (lines_tx, mut lines) = mpsc::channel::<LogLine>(BATCH_LINES);
    // Dropped (aborting the readers) when the leader ends the call.
    let mut readers = tokio::task::JoinSet::new();
    for task_id in &request.task_ids {
        readers.spawn(read_task(
            executor.clone(),
            task_id.clone(),
            request.options.clone(),
            lines_tx.clone(),
        ));
    }
    drop(lines_tx);
    let send = |published: Published| {
        let tx = tx.clone();
        async move {
            let payload = serde_json::to_vec(&published).unwrap_or_default();
            tx.send(proto::LogsMessage { payload }).await.is_ok()
        }
    };
    // A first message even when there is nothing to say, so the leader knows the request.
    if !send(Published {
        id: request.id.clone(),
        ..Default::default()
    })
    .await
    {
        return;
    }
    while let Some(first) = lines.recv().await {
        let mut size = first.line.len();
        let mut batch = vec![first];
        while batch.len() < BATCH_LINES && size < BATCH_BYTES {
            match lines.try_recv() {
                Ok(line) => {
                    size += line.line.len();
                    batch.push(line);
                }
                Err(_) => break,
            }
        }
        let published = Published {
            id: request.id.clone(),
            lines: batch,
            close: false,
        };
        if !send(published).await {
            return;
        }
    }
    send(Published {
        id: request.id.clone(),
        lines: Vec::new(),
        close: true,
    })
    .await;
}

/// One task's lines, filtered as asked.
async fn read_task(
    executor: Arc<dyn Executor>,
    task_id: String,
    options: Options,
    out: mpsc::Sender<LogLine>,
) {
    let deadline = Instant::now() + APPEAR;
    let mut lines = loop {
        match executor
            .log_lines(&task_id, options.follow, options.tail)
            .await
        {
            Ok(lines) => break lines,
            Err(e) => {
                if !options.follow || Instant::now() >= deadline {
                    tracing::debug!("logs of task {task_id}: {e}");
                    return;
                }
                // Not started yet: its container may appear.
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = out.closed() => return,
                }
            }
        }
    };
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = out.closed() => return,
        };
        let Some(line) = line else { return };
        let Some((stream, time, text)) = output_line(&line) else {
            continue;
        };
        if !(if stream == 1 {
            options.stdout
        } else {
            options.stderr
        }) {
            continue;
        }
        let time = time
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .unwrap_or_else(SystemTime::now);
        if options.since_ns.is_some_and(|since| nanos(time) < since) {
            continue;
        }
        let line = LogLine {
            task_id: task_id.clone(),
            stream,
            time: humantime::format_rfc3339_nanos(time).to_string(),
            line: text.to_owned(),
            ..Default::default()
        };
        if out.send(line).await.is_err() {
            return;
        }
    }
}

fn nanos(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
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

// ---- the API, on any manager ------------------------------------------------------------------

fn truthy(q: &HashMap<String, String>, key: &str) -> bool {
    crate::api::truthy(q.get(key))
}

/// `since` as Docker's CLI sends it (`SECONDS[.NANOS]`), or an RFC 3339 time.
fn parse_since(text: &str) -> Result<i128, String> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
    let negative = secs.starts_with('-');
    let whole = secs.strip_prefix('-').unwrap_or(secs);
    if digits(whole) && (frac.is_empty() || (frac.len() <= 9 && digits(frac))) {
        let s: i128 = whole.parse().map_err(|e| format!("{e}"))?;
        let n: i128 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<9}").parse().map_err(|e| format!("{e}"))?
        };
        let total = s * 1_000_000_000 + n;
        return Ok(if negative { -total } else { total });
    }
    humantime::parse_rfc3339_weak(text)
        .map(nanos)
        .map_err(|e| format!("parsing time {text:?}: {e}"))
}

/// The query's options, refused as Docker refuses them.
fn options(q: &HashMap<String, String>) -> Result<Options, ApiError> {
    let (stdout, stderr) = (truthy(q, "stdout"), truthy(q, "stderr"));
    if !stdout && !stderr {
        return Err(ApiError::new(
            400,
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let tail = match q.get("tail").map(String::as_str) {
        None | Some("" | "all") => None,
        Some(n) => match n.parse::<i64>() {
            Ok(n) if n < 0 => None,
            Ok(n) => Some(n as u64),
            Err(e) => {
                return Err(ApiError::new(
                    400,
                    format!("tail value must be a positive integer or \"all\": {e}"),
                ));
            }
        },
    };
    let since_ns = match q.get("since").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(s) => Some(
            parse_since(s)
                .map_err(|e| ApiError::new(400, format!("could not parse since timestamp: {e}")))?,
        ),
    };
    Ok(Options {
        follow: truthy(q, "follow"),
        since_ns,
        tail,
        stdout,
        stderr,
    })
}

/// The API: the logs of a service's tasks (`service`) or of one task, as a stream.
pub async fn serve(
    daemon: &Daemon,
    key: &str,
    service: bool,
    q: &HashMap<String, String>,
) -> Result<StreamReply, ApiError> {
    let view = daemon.view()?;
    let target = if service {
        let service = view
            .state
            .find_service(key)
            .map_err(|(s, m)| ApiError::new(s, m))?;
        Target::Service(service.id.clone())
    } else {
        let all = &view.state.objects.tasks;
        let task = all.get(key).or_else(|| {
            let mut found = all.values().filter(|t| t.id.starts_with(key));
            match (found.next(), found.next()) {
                (Some(t), None) if !key.is_empty() => Some(t),
                _ => None,
            }
        });
        let task = task.ok_or_else(|| ApiError::new(404, format!("task {key} not found")))?;
        Target::Task(task.id.clone())
    };
    let leader = if view.leader == Some(view.self_raft_id) {
        None
    } else {
        Some(
            view.leader_addr()
                .ok_or_else(|| ApiError::new(503, crate::daemon::NO_LEADER))?,
        )
    };
    let session = view.session.clone();
    drop(view);
    let subscription = Subscription {
        target,
        options: options(q)?,
    };
    let lines = match leader {
        None => subscribe(daemon, subscription)?,
        Some(addr) => forward(&session, &addr, &subscription).await?,
    };
    let (body_tx, body_rx) = mpsc::channel(16);
    tokio::spawn(render(
        lines,
        truthy(q, "details"),
        truthy(q, "timestamps"),
        body_tx,
    ));
    let body = http_body_util::StreamBody::new(ReceiverStream::new(body_rx)).boxed_unsync();
    hyper::Response::builder()
        .status(200)
        .header("Content-Type", "application/vnd.docker.multiplexed-stream")
        .header("Api-Version", crate::docker::API_VERSION)
        .header("Docker-Experimental", "false")
        .header("Ostype", "linux")
        .body(body)
        .map_err(|e| ApiError::new(500, e.to_string()))
}

/// Another manager: the subscription through the leader's `SubscribeLogs`.
async fn forward(
    session: &Session,
    leader: &str,
    subscription: &Subscription,
) -> Result<mpsc::Receiver<Vec<LogLine>>, ApiError> {
    let channel = session.channel(leader)?;
    let payload =
        serde_json::to_vec(subscription).map_err(|e| ApiError::new(500, e.to_string()))?;
    let request = tonic::Request::new(proto::LogsMessage { payload });
    let mut stream = tokio::time::timeout(
        WAIT,
        ControlClient::new(channel)
            .max_decoding_message_size(crate::net::MAX_MESSAGE)
            .subscribe_logs(request),
    )
    .await
    .map_err(|_| ApiError::new(503, crate::daemon::NO_LEADER))?
    .map_err(|s| match s.code() {
        tonic::Code::InvalidArgument => ApiError::new(400, s.message()),
        tonic::Code::NotFound => ApiError::new(404, s.message()),
        tonic::Code::Unavailable => ApiError::new(503, crate::daemon::NO_LEADER),
        _ => ApiError::new(500, s.message()),
    })?
    .into_inner();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = tx.closed() => return,
            };
            let Ok(Some(message)) = message else { return };
            let Ok(batch) = serde_json::from_slice::<Vec<LogLine>>(&message.payload) else {
                tracing::warn!("logs: a malformed message from the leader");
                return;
            };
            if tx.send(batch).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Docker's multiplexed stream of the lines, until they end or the client goes away.
async fn render(
    mut lines: mpsc::Receiver<Vec<LogLine>>,
    details: bool,
    timestamps: bool,
    body: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
) {
    loop {
        let batch = tokio::select! {
            b = lines.recv() => b,
            _ = body.closed() => return,
        };
        let Some(batch) = batch else { return };
        let mut out = BytesMut::new();
        for l in batch {
            let mut text = String::with_capacity(l.line.len() + 1);
            if timestamps {
                text.push_str(&l.time);
                text.push(' ');
            }
            if details {
                text.push_str(&format!(
                    "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={} ",
                    l.node_id, l.service_id, l.task_id
                ));
            }
            text.push_str(&l.line);
            text.push('\n');
            frame(&mut out, l.stream, text.as_bytes());
        }
        if body.send(Ok(Frame::data(out.freeze()))).await.is_err() {
            return;
        }
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

/// What the agent's `service logs` asks for.
#[derive(Debug, Clone, Default)]
pub struct CliOptions {
    pub follow: bool,
    /// A number of lines or `all`.
    pub tail: Option<String>,
    /// RFC 3339, Unix seconds, or a duration before now (`10m`).
    pub since: Option<String>,
}

/// The CLI's `since` as the API takes it (Unix seconds.nanoseconds), as Docker's CLI sends it.
fn cli_since(text: &str) -> anyhow::Result<String> {
    let ns = match humantime::parse_duration(text) {
        Ok(ago) => nanos(
            SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| anyhow::anyhow!("--since {text}: too long ago"))?,
        ),
        Err(_) => parse_since(text).map_err(|e| anyhow::anyhow!("--since {text}: {e}"))?,
    };
    Ok(format!(
        "{}.{:09}",
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000)
    ))
}

/// The agent's `service logs SERVICE`: `NAME.SLOT.TASK@HOST | line`, as Docker's CLI prints,
/// each line as it comes.
pub async fn print_service_logs(
    socket: &std::path::Path,
    service: &str,
    options: &CliOptions,
) -> anyhow::Result<()> {
    use std::io::Write;
    let inspected = crate::cli::call(socket, "GET", &format!("/services/{service}"), None).await?;
    let name = inspected["Spec"]["Name"]
        .as_str()
        .unwrap_or(service)
        .to_owned();
    let mut nodes = serde_json::Value::Null;
    let mut tasks = serde_json::Value::Null;
    let mut query = "stdout=1&stderr=1&details=1".to_owned();
    if options.follow {
        query.push_str("&follow=1");
    }
    if let Some(tail) = &options.tail {
        query.push_str(&format!(
            "&tail={}",
            percent_encoding::utf8_percent_encode(tail, percent_encoding::NON_ALPHANUMERIC)
        ));
    }
    if let Some(since) = &options.since {
        query.push_str(&format!("&since={}", cli_since(since)?));
    }
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .uri(format!(
            "http://localhost/v1.41/services/{service}/logs?{query}"
        ))
        .header("Host", "localhost")
        .body(http_body_util::Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status >= 400 {
        let body = body.collect().await?.to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        anyhow::bail!(
            "Error response from daemon: {}",
            value["message"].as_str().unwrap_or("")
        );
    }
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        let mut used = 0;
        let mut out = String::new();
        for (_, data) in frames(&pending) {
            used += 8 + data.len();
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
            let find = |list: &serde_json::Value, id: &str| {
                list.as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["ID"] == id)
                    .cloned()
            };
            // Looked up again when a task or node is new (a follow sees new ones).
            if find(&tasks, &task).is_none() {
                tasks = crate::cli::call(socket, "GET", "/tasks", None).await?;
            }
            if find(&nodes, &node).is_none() {
                nodes = crate::cli::call(socket, "GET", "/nodes", None).await?;
            }
            let slot = find(&tasks, &task)
                .and_then(|t| t["Slot"].as_u64())
                .unwrap_or(0);
            let host = find(&nodes, &node)
                .and_then(|n| n["Description"]["Hostname"].as_str().map(str::to_owned))
                .unwrap_or(node);
            let short: String = task.chars().take(12).collect();
            out.push_str(&format!("{name}.{slot}.{short}@{host}    | {line}"));
        }
        pending.drain(..used);
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
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
    fn queries_are_read_and_refused_as_dockers() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let o = options(&q(&[
            ("stdout", "1"),
            ("follow", "1"),
            ("tail", "3"),
            ("since", "1764561600.5"),
        ]))
        .unwrap();
        assert!(o.follow && o.stdout && !o.stderr);
        assert_eq!(o.tail, Some(3));
        assert_eq!(o.since_ns, Some(1_764_561_600_500_000_000));
        assert_eq!(
            parse_since("2025-12-01T04:00:00Z"),
            Ok(1_764_561_600_000_000_000)
        );
        assert_eq!(
            options(&q(&[("stderr", "1"), ("tail", "all")]))
                .unwrap()
                .tail,
            None
        );
        for bad in [
            q(&[]),
            q(&[("stdout", "1"), ("tail", "x")]),
            q(&[("stdout", "1"), ("since", "yesterday")]),
            q(&[("stdout", "1"), ("since", "99999999999999999999999")]),
            q(&[("stdout", "1"), ("since", "1.1234567890")]),
        ] {
            assert_eq!(options(&bad).unwrap_err().status, 400, "{bad:?}");
        }
    }

    #[test]
    fn a_subscriptions_requests_are_forgotten_when_it_ends() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (events_tx, _events) = mpsc::channel(8);
            let mut requests = Requests::default();
            let id = requests.ask("nodeA", vec!["t1".into()], &Options::default(), &events_tx);
            let queued = take_requests("nodeA");
            assert_eq!(queued.len(), 1);
            assert_eq!(queued[0].id, id);
            assert!(hub().asked.get(&id).is_some_and(|a| a.node_id == "nodeA"));
            // The subscription's end forgets its requests.
            drop(requests);
            assert!(!hub().asked.contains_key(&id));
        });
    }
}
