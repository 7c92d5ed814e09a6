//! The leader's dispatcher: every node keeps an `Assignments` stream open with the leader and
//! receives its whole assignment again whenever it changes (its tasks whose desired state is not
//! `remove`, and only the secrets and configs those tasks use; for an agent that keeps its own
//! statuses, not when only a status it reported moved); the node's statuses come back
//! through `UpdateTaskStatus`, checked against the caller (a node reports its own tasks only),
//! stamped with the leader's clock and written through Raft.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::daemon::{Daemon, ManagerParts};
use crate::model::{FileData, Task, TaskState, TaskStatus};
use crate::objects::{FileKind, NodeTasks, ObjectCommand, TaskOp};
use crate::proto;
use crate::state::{ClusterState, Command, now_rfc3339};

/// How often the leader looks for a change in a node's assignment.
const POLL: Duration = Duration::from_millis(100);

/// A node's assignment on the wire: the leader writes it from references into its state (no
/// copy of each task), the node reads it into owned tasks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WireAssignment<T = Task> {
    pub tasks: Vec<T>,
    pub secrets: Vec<FileData>,
    pub configs: Vec<FileData>,
    /// Requests for task logs (see `crate::logs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_requests: Vec<crate::logs::LogRequest>,
    /// `tasks` holds only the tasks that changed since the stream's previous message, and
    /// `removed` the tasks the node no longer runs (secrets and configs are always whole).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incremental: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

impl WireAssignment {
    /// `self` applied to the assignment the stream gave so far (`base`, whole).
    pub fn merged_into(
        self,
        base: Option<&crate::executor::Assignment>,
    ) -> crate::executor::Assignment {
        if !self.incremental {
            return self.into();
        }
        let mut tasks = base.map(|b| b.tasks.clone()).unwrap_or_default();
        tasks.retain(|t| !self.removed.contains(&t.id));
        for task in self.tasks {
            match tasks.iter_mut().find(|t| t.id == task.id) {
                Some(known) => *known = task,
                None => tasks.push(task),
            }
        }
        crate::executor::Assignment {
            tasks,
            secrets: self.secrets,
            configs: self.configs,
        }
    }
}

impl From<WireAssignment> for crate::executor::Assignment {
    fn from(w: WireAssignment) -> Self {
        crate::executor::Assignment {
            tasks: w.tasks,
            secrets: w.secrets,
            configs: w.configs,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireStatus {
    pub task_id: String,
    pub status: TaskStatus,
}

pub fn assignment_for<'a>(state: &'a ClusterState, node_id: &str) -> WireAssignment<&'a Task> {
    let tasks: Vec<&Task> = state
        .objects
        .tasks
        .values()
        .filter(|t| t.node_id == node_id)
        .collect();
    assignment_of(state, tasks)
}

/// A node's whole assignment, its tasks found through the store's per-node index.
fn whole_assignment<'a>(
    state: &'a ClusterState,
    node: Option<&NodeTasks>,
) -> WireAssignment<&'a Task> {
    let tasks: Vec<&Task> = node
        .into_iter()
        .flat_map(|n| n.ids.keys())
        .filter_map(|id| state.objects.tasks.get(id))
        .collect();
    assignment_of(state, tasks)
}

/// A task the node runs or must stop: not yet removed, and placed.
fn in_assignment(task: &Task) -> bool {
    task.desired_state < TaskState::Remove && task.status.state >= TaskState::Assigned
}

/// The assignment made of `tasks` (the node's own, in any state).
fn assignment_of<'a>(state: &ClusterState, tasks: Vec<&'a Task>) -> WireAssignment<&'a Task> {
    let tasks: Vec<&Task> = tasks.into_iter().filter(|t| in_assignment(t)).collect();
    let (secrets, configs) = files_of(state, &tasks);
    WireAssignment {
        tasks,
        secrets,
        configs,
        log_requests: Vec::new(),
        incremental: false,
        removed: Vec::new(),
    }
}

/// The secrets and the configs `tasks` use, with their data.
fn files_of(state: &ClusterState, tasks: &[&Task]) -> (Vec<FileData>, Vec<FileData>) {
    let mut secrets = Vec::new();
    let mut configs = Vec::new();
    for (kind, out) in [
        (FileKind::Secret, &mut secrets),
        (FileKind::Config, &mut configs),
    ] {
        for (id, file) in state.objects.files(kind) {
            let used = tasks.iter().any(|t| {
                t.spec.container_spec.as_ref().is_some_and(|c| match kind {
                    FileKind::Secret => c.secrets.iter().any(|r| r.secret_id.as_ref() == Some(id)),
                    FileKind::Config => c.configs.iter().any(|r| r.config_id.as_ref() == Some(id)),
                })
            });
            if used {
                out.push(FileData {
                    id: id.clone(),
                    name: file.spec.name.clone(),
                    data: base64::engine::general_purpose::STANDARD
                        .decode(&file.spec.data)
                        .unwrap_or_default(),
                });
            }
        }
    }
    (secrets, configs)
}

/// One status batcher per leader (keyed by its `ManagerParts`).
fn per_leader<T: Default + Send + Sync + 'static>(
    registry: &'static Mutex<Vec<(Weak<ManagerParts>, Arc<T>)>>,
    parts: &Arc<ManagerParts>,
) -> Arc<T> {
    let mut all = registry.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|(w, _)| w.strong_count() > 0);
    if let Some((_, t)) = all
        .iter()
        .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(parts)))
    {
        return t.clone();
    }
    let t = Arc::new(T::default());
    all.push((Arc::downgrade(parts), t.clone()));
    t
}

static BATCHERS: Mutex<Vec<(Weak<ManagerParts>, Arc<StatusBatch>)>> = Mutex::new(Vec::new());

fn leader_parts(daemon: &Daemon) -> Result<Arc<ManagerParts>, Status> {
    let session = daemon
        .manager_session()
        .map_err(|e| Status::unavailable(e.message))?;
    let parts = session
        .manager()
        .ok_or_else(|| Status::unavailable("not a manager"))?;
    if parts.raft.metrics().borrow().state != openraft::ServerState::Leader {
        let view = daemon.view().map_err(|e| Status::unavailable(e.message))?;
        return Err(crate::daemon::not_leader(&view));
    }
    Ok(parts)
}

/// What the node's agent asked of its stream (`AssignmentsRequest`).
#[derive(Debug, Clone, Copy)]
pub struct StreamKind {
    pub keeps_own_statuses: bool,
    pub incremental: bool,
}

/// A task as its node knows it: see `node_view`.
type View = (u64, TaskState, Option<TaskState>);

/// What of a task a node must hear about again. An agent that keeps its own statuses need not
/// hear of those it reported (accepted to rejected), nor of `assigned` (a task's state when it
/// first reaches the node, sent then as a new task), only of the manager's later ones (remove,
/// orphaned) and of the desired state; another agent hears of every change.
fn node_view(task: &Task, kind: StreamKind) -> View {
    if !kind.keeps_own_statuses {
        return (task.version.index, task.desired_state, None);
    }
    (
        0,
        task.desired_state,
        (task.status.state > TaskState::Rejected).then_some(task.status.state),
    )
}

/// What an incremental stream sent so far.
#[derive(Default)]
struct Sent {
    /// Each task's `node_view` as last sent.
    tasks: HashMap<String, View>,
    /// The secrets and configs as last sent (serialized).
    files: Vec<u8>,
    /// The node's `NodeTasks::changed` when the stream looked last.
    since: u64,
}

impl Sent {
    /// What the stream's first message, the whole assignment `whole`, sent.
    fn after(whole: &WireAssignment<&Task>, node: Option<&NodeTasks>, kind: StreamKind) -> Sent {
        Sent {
            tasks: whole
                .tasks
                .iter()
                .map(|t| (t.id.clone(), node_view(t, kind)))
                .collect(),
            files: serde_json::to_vec(&(&whole.secrets, &whole.configs)).unwrap_or_default(),
            since: node.map_or(0, |n| n.changed),
        }
    }

    /// The message that brings the node from what was sent to its assignment now; `None` when
    /// nothing changed. Only the tasks changed since the last look are looked up (a node's 30
    /// tasks looked up in the store on every change were a tenth of the leader's work).
    fn next<'a>(
        &mut self,
        state: &'a ClusterState,
        node: Option<&NodeTasks>,
        kind: StreamKind,
        log_requests: Vec<crate::logs::LogRequest>,
    ) -> Option<WireAssignment<&'a Task>> {
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for (id, _) in node
            .into_iter()
            .flat_map(|n| &n.ids)
            .filter(|(_, at)| **at > self.since)
        {
            match state.objects.tasks.get(id).filter(|t| in_assignment(t)) {
                Some(task) => {
                    let view = node_view(task, kind);
                    if self.tasks.get(id) != Some(&view) {
                        self.tasks.insert(id.clone(), view);
                        changed.push(task);
                    }
                }
                None => {
                    if self.tasks.remove(id).is_some() {
                        removed.push(id.clone());
                    }
                }
            }
        }
        // Tasks deleted from the store, or moved off the node.
        self.tasks.retain(|id, _| {
            let here = node.is_some_and(|n| n.ids.contains_key(id));
            if !here {
                removed.push(id.clone());
            }
            here
        });
        self.since = node.map_or(self.since, |n| n.changed);
        let has_files = !state.objects.secrets.is_empty() || !state.objects.configs.is_empty();
        let (secrets, configs) = if has_files {
            let all: Vec<&Task> = self
                .tasks
                .keys()
                .filter_map(|id| state.objects.tasks.get(id))
                .collect();
            files_of(state, &all)
        } else {
            (Vec::new(), Vec::new())
        };
        let files = serde_json::to_vec(&(&secrets, &configs)).unwrap_or_default();
        if changed.is_empty()
            && removed.is_empty()
            && files == self.files
            && log_requests.is_empty()
        {
            return None;
        }
        self.files = files;
        Some(WireAssignment {
            tasks: changed,
            secrets,
            configs,
            log_requests,
            incremental: true,
            removed,
        })
    }
}

pub fn open_assignments(
    daemon: &Daemon,
    node_id: &str,
    kind: StreamKind,
) -> Result<ReceiverStream<Result<proto::AssignmentsMessage, Status>>, Status> {
    let parts = leader_parts(daemon)?;
    if !parts
        .shared
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .state
        .nodes
        .contains_key(node_id)
    {
        return Err(Status::not_found(format!("node {node_id} not found")));
    }
    let weak = Arc::downgrade(&parts);
    drop(parts);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let node_id = node_id.to_string();
    tokio::spawn(async move {
        let mut last: Option<Vec<u8>> = None;
        // An incremental stream's first message is the whole assignment, the next ones what
        // changed (most of the leader's work for 1,000 nodes was writing each node's 30 tasks
        // again for every task added, and most of theirs reading them).
        let mut sent: Option<Sent> = None;
        // The assignment is computed again only when one of the node's tasks changed (the
        // store notes the applied index of the last change of each node's tasks), or, for an
        // agent that keeps its own statuses, when what the node runs changed (a node's 30
        // tasks going running one by one no longer make it 30 whole assignments).
        let mut seen: Option<u64> = None;
        loop {
            let bytes = {
                let Some(parts) = weak.upgrade() else { return };
                if parts.raft.metrics().borrow().state != openraft::ServerState::Leader {
                    return;
                }
                let applied = parts.shared.read().unwrap_or_else(|e| e.into_inner());
                let mine = applied.by_node.node(&node_id);
                let changed = mine.map(|n| {
                    if kind.keeps_own_statuses {
                        n.placed
                    } else {
                        n.changed
                    }
                });
                let log_requests = crate::logs::take_requests(&node_id);
                if last.is_some() && changed == seen && log_requests.is_empty() {
                    None
                } else {
                    seen = changed;
                    let state = &applied.state;
                    let message = match sent.as_mut() {
                        Some(sent) => sent.next(state, mine, kind, log_requests),
                        None => {
                            let mut whole = whole_assignment(state, mine);
                            if kind.incremental {
                                sent = Some(Sent::after(&whole, mine, kind));
                            }
                            whole.log_requests = log_requests;
                            Some(whole)
                        }
                    };
                    if let Some(m) = &message {
                        tracing::trace!(
                            "assignment for {node_id}: {} tasks, {} removed",
                            m.tasks.len(),
                            m.removed.len()
                        );
                    }
                    message.map(|m| serde_json::to_vec(&m).unwrap_or_default())
                }
            };
            if let Some(bytes) = bytes
                && (sent.is_some() || last.as_ref() != Some(&bytes))
            {
                let message = proto::AssignmentsMessage {
                    assignment: bytes.clone(),
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
                last = Some(bytes);
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// A node's words about a task stay short in the Raft log.
fn truncate(text: &mut String) {
    const MAX: usize = 4096;
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

fn same(a: &TaskStatus, b: &TaskStatus) -> bool {
    a.state == b.state
        && a.message == b.message
        && a.err == b.err
        && a.container_status == b.container_status
}

pub async fn update_statuses(daemon: &Daemon, node_id: &str, payload: &[u8]) -> Result<(), Status> {
    let statuses: Vec<WireStatus> = serde_json::from_slice(payload)
        .map_err(|e| Status::invalid_argument(format!("bad statuses: {e}")))?;
    let parts = leader_parts(daemon)?;
    let now = now_rfc3339();
    let ops: Vec<TaskOp> = {
        let applied = parts.shared.read().unwrap_or_else(|e| e.into_inner());
        statuses
            .into_iter()
            .filter_map(|s| {
                let task = applied.state.objects.tasks.get(&s.task_id)?;
                // A node reports what its executor saw: from accepted to rejected, never the
                // manager's own states (pending, remove, orphaned).
                if task.node_id != node_id
                    || s.status.state < TaskState::Accepted
                    || s.status.state > TaskState::Rejected
                    || s.status.state < task.status.state
                    || same(&s.status, &task.status)
                {
                    return None;
                }
                let mut status = s.status;
                status.timestamp = now.clone();
                truncate(&mut status.message);
                truncate(&mut status.err);
                Some(TaskOp::Status {
                    id: s.task_id,
                    status,
                })
            })
            .collect()
    };
    if ops.is_empty() {
        return Ok(());
    }
    let batch = per_leader(&BATCHERS, &parts);
    drop(parts);
    batch.propose(daemon, ops, now).await
}

/// Group commit of the nodes' statuses: while one Raft entry is being written, the statuses
/// arriving from other nodes wait and go together in the next one (1,000 nodes reporting at
/// once make a few entries, not 1,000).
type Waiter = tokio::sync::oneshot::Sender<Result<(), Status>>;

#[derive(Default)]
pub struct StatusBatch {
    pending: Mutex<Vec<(Vec<TaskOp>, Waiter)>>,
    writer: tokio::sync::Mutex<()>,
}

impl StatusBatch {
    async fn propose(
        self: Arc<Self>,
        daemon: &Daemon,
        ops: Vec<TaskOp>,
        now: String,
    ) -> Result<(), Status> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ops, tx));
        // The write runs as a task of its own: a request whose client gave up is dropped by the
        // server, and when the batch it was writing went with it, every other node's statuses
        // in that batch failed too (they all sent them again a second later, one by one).
        let daemon = daemon.clone();
        tokio::spawn(async move {
            // Whoever holds the writer writes everything pending, ours included or not.
            let _writer = self.writer.lock().await;
            let waiting =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
            if waiting.is_empty() {
                return;
            }
            let mut ops = Vec::new();
            let mut senders = Vec::new();
            for (o, tx) in waiting {
                ops.extend(o);
                senders.push(tx);
            }
            let (count, started) = (ops.len(), std::time::Instant::now());
            let result = daemon
                .propose(Command::Objects(Box::new(ObjectCommand::Tasks {
                    ops,
                    now,
                })))
                .await
                .map(|_| ())
                .map_err(|e| Status::unavailable(e.message));
            tracing::debug!(
                "dispatcher: {count} statuses of {} nodes committed in {:?}",
                senders.len(),
                started.elapsed()
            );
            for tx in senders {
                let _ = tx.send(result.clone());
            }
        });
        rx.await
            .unwrap_or_else(|_| Err(Status::unavailable("the status batch was dropped")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerSpec, FileReference, TaskSpec};
    use crate::objects::{FileObject, FileSpec};

    fn task(id: &str, node: &str, secret: Option<&str>) -> Task {
        Task {
            id: id.into(),
            node_id: node.into(),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Assigned,
                ..TaskStatus::default()
            },
            spec: TaskSpec {
                container_spec: Some(ContainerSpec {
                    image: "busybox".into(),
                    secrets: secret
                        .map(|s| FileReference {
                            secret_id: Some(s.into()),
                            ..FileReference::default()
                        })
                        .into_iter()
                        .collect(),
                    ..ContainerSpec::default()
                }),
                ..TaskSpec::default()
            }
            .into(),
            ..Task::default()
        }
    }

    #[test]
    fn a_node_gets_its_own_tasks_and_only_the_secrets_they_use() {
        let mut state = ClusterState::default();
        for (id, name) in [("s1", "pw"), ("s2", "other")] {
            state.objects.secrets.insert(
                id.into(),
                FileObject {
                    id: id.into(),
                    spec: FileSpec {
                        name: name.into(),
                        data: "aHVudGVyMg==".into(),
                        ..FileSpec::default()
                    },
                    ..FileObject::default()
                },
            );
        }
        let tasks = [
            task("t1", "n1", Some("s1")),
            task("t2", "n2", Some("s2")),
            task("t3", "n1", None),
        ];
        for t in tasks {
            state.objects.tasks.insert(t.id.clone(), t);
        }
        let mut removed = task("t4", "n1", Some("s2"));
        removed.desired_state = TaskState::Remove;
        state.objects.tasks.insert("t4".into(), removed);
        let a = assignment_for(&state, "n1");
        let ids: Vec<&str> = a.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["t1", "t3"]);
        assert_eq!(a.secrets.len(), 1);
        assert_eq!(a.secrets[0].name, "pw");
        assert_eq!(a.secrets[0].data, b"hunter2");
        assert!(assignment_for(&state, "n3").tasks.is_empty());
        assert!(assignment_for(&state, "n3").secrets.is_empty());
    }

    #[test]
    fn an_incremental_stream_sends_changes_that_merge_into_the_whole_assignment() {
        use crate::objects::TasksByNode;
        let kind = StreamKind {
            keeps_own_statuses: true,
            incremental: true,
        };
        let mut state = ClusterState::default();
        for id in ["t1", "t2"] {
            state.objects.tasks.insert(id.into(), task(id, "n1", None));
        }
        // Through JSON, as the node reads them.
        let wire = |a: &WireAssignment<&Task>| -> WireAssignment {
            serde_json::from_slice(&serde_json::to_vec(a).unwrap()).unwrap()
        };
        let ids = |a: &crate::executor::Assignment| -> Vec<String> {
            let mut ids: Vec<String> = a.tasks.iter().map(|t| t.id.clone()).collect();
            ids.sort();
            ids
        };
        // Every task counted as changed at `index` (as after a snapshot).
        let by_node = |state: &ClusterState, index| TasksByNode::of(state, index);
        let index = by_node(&state, 1);
        let first = whole_assignment(&state, index.node("n1"));
        let mut sent = Sent::after(&first, index.node("n1"), kind);
        let node = wire(&first).merged_into(None);
        assert_eq!(ids(&node), ["t1", "t2"]);
        // Nothing changed since: nothing looked up, nothing sent.
        assert!(sent.next(&state, index.node("n1"), kind, vec![]).is_none());
        // A status the node reported itself is not sent back.
        state.objects.tasks.get_mut("t1").unwrap().status.state = TaskState::Running;
        let index = by_node(&state, 2);
        assert!(sent.next(&state, index.node("n1"), kind, vec![]).is_none());
        // A desired state, a new task and a task gone are.
        let tasks = &mut state.objects.tasks;
        tasks.get_mut("t1").unwrap().desired_state = TaskState::Shutdown;
        tasks.remove("t2");
        tasks.insert("t3".into(), task("t3", "n1", None));
        let index = by_node(&state, 3);
        let change = sent.next(&state, index.node("n1"), kind, vec![]).unwrap();
        let change_ids: Vec<&str> = change.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(change_ids, ["t1", "t3"]);
        assert_eq!(change.removed, ["t2"]);
        let node = wire(&change).merged_into(Some(&node));
        assert_eq!(ids(&node), ["t1", "t3"]);
        let t1 = node.tasks.iter().find(|t| t.id == "t1").unwrap();
        assert_eq!(t1.desired_state, TaskState::Shutdown);
        // The merge equals the whole assignment as an older agent gets it.
        let whole = wire(&assignment_for(&state, "n1")).merged_into(None);
        assert_eq!(ids(&whole), ids(&node));
        // A node left with no task hears that its last one is gone.
        state.objects.tasks.clear();
        let index = by_node(&state, 4);
        let change = sent.next(&state, index.node("n1"), kind, vec![]).unwrap();
        assert_eq!(change.removed.len(), 2);
        assert!(wire(&change).merged_into(Some(&node)).tasks.is_empty());
    }
}
