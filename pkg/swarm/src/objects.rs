//! Services, tasks, secrets and configs in the replicated state, and the commands that change
//! them ([`ObjectCommand`], carried by `state::Command::Objects`). Like the rest of the state,
//! applying a command is deterministic: IDs and times come with the command. Task states only
//! move forward (a late status report never takes a task back), and so do desired states.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::{ServiceSpec, Task, TaskState, TaskStatus, Version};
pub use crate::shared::Shared;
use crate::state::{ClusterState, CommandResult, OUT_OF_SEQUENCE};

/// Docker's `UpdateStatus` of a service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateStatus {
    /// `updating` | `paused` | `completed` | `rollback_started` | `rollback_paused` |
    /// `rollback_completed`
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub started_at: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub completed_at: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    #[serde(rename = "ID")]
    pub id: String,
    pub version: Version,
    pub created_at: String,
    pub updated_at: String,
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
}

/// A secret or a config (`SecretSpec`/`ConfigSpec`: `Name`, `Labels`, `Data` in base64).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FileSpec {
    #[serde(default, deserialize_with = "crate::state::nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "crate::state::nullable")]
    pub labels: BTreeMap<String, String>,
    /// Base64, as sent; never answered for secrets.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FileObject {
    #[serde(rename = "ID")]
    pub id: String,
    pub version: Version,
    pub created_at: String,
    pub updated_at: String,
    pub spec: FileSpec,
}

// Secret data never reaches a log line.
impl std::fmt::Debug for FileObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileObject")
            .field("id", &self.id)
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

/// The service/task part of the cluster state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Objects {
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    #[serde(default)]
    pub tasks: Shared<BTreeMap<String, Task>>,
    #[serde(default)]
    pub secrets: BTreeMap<String, FileObject>,
    #[serde(default)]
    pub configs: BTreeMap<String, FileObject>,
}

/// `secret` or `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    Secret,
    Config,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }
}

/// One change to a task; a batch of them is one Raft entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TaskOp {
    Create(Box<Task>),
    /// The scheduler's decision (only for a task still waiting for a node).
    Assign {
        id: String,
        node_id: String,
        status: TaskStatus,
    },
    /// A status from the node, or the manager's; ignored when it would go backwards.
    Status {
        id: String,
        status: TaskStatus,
    },
    /// Only ever raised.
    Desired {
        id: String,
        state: TaskState,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ObjectCommand {
    CreateService {
        service: Box<Service>,
    },
    UpdateService {
        id: String,
        version: Option<u64>,
        spec: Box<ServiceSpec>,
        /// `rollback=previous`: the previous spec becomes the spec (and the spec the previous).
        rollback: bool,
        now: String,
    },
    SetUpdateStatus {
        id: String,
        status: Option<UpdateStatus>,
        /// An automatic rollback puts the previous spec back.
        rollback: bool,
        now: String,
    },
    RemoveService {
        id: String,
    },
    CreateFile {
        kind: FileKind,
        object: Box<FileObject>,
    },
    RemoveFile {
        kind: FileKind,
        id: String,
    },
    Tasks {
        ops: Vec<TaskOp>,
        now: String,
    },
}

fn refused(status: u16, message: impl Into<String>) -> CommandResult {
    CommandResult::Refused {
        status,
        message: message.into(),
    }
}

const NAME_CONFLICT: &str =
    "rpc error: code = AlreadyExists desc = name conflicts with an existing object";

impl Objects {
    pub fn files(&self, kind: FileKind) -> &BTreeMap<String, FileObject> {
        match kind {
            FileKind::Secret => &self.secrets,
            FileKind::Config => &self.configs,
        }
    }

    fn files_mut(&mut self, kind: FileKind) -> &mut BTreeMap<String, FileObject> {
        match kind {
            FileKind::Secret => &mut self.secrets,
            FileKind::Config => &mut self.configs,
        }
    }

    /// The services whose spec refers to a secret or config.
    pub fn users_of(&self, kind: FileKind, id: &str) -> Vec<&Service> {
        self.services
            .values()
            .filter(|s| {
                s.spec
                    .task_template
                    .container_spec
                    .as_ref()
                    .is_some_and(|c| {
                        let refs = match kind {
                            FileKind::Secret => &c.secrets,
                            FileKind::Config => &c.configs,
                        };
                        refs.iter().any(|r| match kind {
                            FileKind::Secret => r.secret_id.as_deref() == Some(id),
                            FileKind::Config => r.config_id.as_deref() == Some(id),
                        })
                    })
            })
            .collect()
    }

    /// Makes each task's spec share its service's template (or previous template) when equal:
    /// after a snapshot is read, as `TaskOp::Create` does for every new task.
    pub fn share_specs(&mut self) {
        let services = &self.services;
        for task in self.tasks.values_mut() {
            if let Some(service) = services.get(&task.service_id) {
                task.spec.share_with(&service.spec.task_template);
                if let Some(previous) = &service.previous_spec {
                    task.spec.share_with(&previous.task_template);
                }
            }
        }
    }

    pub fn apply(&mut self, index: u64, command: ObjectCommand) -> CommandResult {
        match command {
            ObjectCommand::CreateService { mut service } => {
                if self
                    .services
                    .values()
                    .any(|s| s.spec.name == service.spec.name)
                {
                    return refused(409, NAME_CONFLICT);
                }
                service.version.index = index;
                self.services.insert(service.id.clone(), *service);
            }
            ObjectCommand::UpdateService {
                id,
                version,
                spec,
                rollback,
                now,
            } => {
                if self
                    .services
                    .values()
                    .any(|s| s.id != id && s.spec.name == spec.name)
                {
                    return refused(409, NAME_CONFLICT);
                }
                let Some(service) = self.services.get_mut(&id) else {
                    return refused(404, format!("service {id} not found"));
                };
                if version.is_some_and(|v| v != service.version.index) {
                    return refused(500, OUT_OF_SEQUENCE);
                }
                if rollback {
                    let Some(previous) = service.previous_spec.take() else {
                        return refused(
                            400,
                            "rpc error: code = FailedPrecondition desc = service does not have a previous spec",
                        );
                    };
                    service.previous_spec = Some(std::mem::replace(&mut service.spec, previous));
                    service.update_status = Some(UpdateStatus {
                        state: "rollback_started".into(),
                        started_at: now.clone(),
                        completed_at: String::new(),
                        message: "manually requested rollback".into(),
                    });
                } else {
                    let old = std::mem::replace(&mut service.spec, *spec);
                    if old.task_template != service.spec.task_template {
                        service.update_status = Some(UpdateStatus {
                            state: "updating".into(),
                            started_at: now.clone(),
                            completed_at: String::new(),
                            message: "update in progress".into(),
                        });
                    }
                    service.previous_spec = Some(old);
                }
                service.version.index = index;
                service.updated_at = now;
            }
            ObjectCommand::SetUpdateStatus {
                id,
                status,
                rollback,
                now,
            } => {
                let Some(service) = self.services.get_mut(&id) else {
                    return refused(404, format!("service {id} not found"));
                };
                if rollback && let Some(previous) = service.previous_spec.take() {
                    service.previous_spec = Some(std::mem::replace(&mut service.spec, previous));
                }
                service.update_status = status;
                service.version.index = index;
                service.updated_at = now;
            }
            ObjectCommand::RemoveService { id } => {
                if self.services.remove(&id).is_none() {
                    return refused(404, format!("service {id} not found"));
                }
                for task in self.tasks.values_mut().filter(|t| t.service_id == id) {
                    task.desired_state = task.desired_state.max(TaskState::Remove);
                    task.version.index = index;
                }
            }
            ObjectCommand::CreateFile { kind, mut object } => {
                let files = self.files_mut(kind);
                if files.values().any(|f| f.spec.name == object.spec.name) {
                    return refused(409, NAME_CONFLICT);
                }
                object.version.index = index;
                files.insert(object.id.clone(), *object);
            }
            ObjectCommand::RemoveFile { kind, id } => {
                let users: Vec<String> = self
                    .users_of(kind, &id)
                    .iter()
                    .map(|s| s.spec.name.clone())
                    .collect();
                let Some(file) = self.files(kind).get(&id) else {
                    return refused(404, format!("{} {id} not found", kind.as_str()));
                };
                if !users.is_empty() {
                    return refused(
                        400,
                        format!(
                            "rpc error: code = InvalidArgument desc = {} '{}' is in use by the following service: {}",
                            kind.as_str(),
                            file.spec.name,
                            users.join(", ")
                        ),
                    );
                }
                self.files_mut(kind).remove(&id);
            }
            ObjectCommand::Tasks { ops, now } => {
                for op in ops {
                    self.apply_task_op(index, op, &now);
                }
            }
        }
        CommandResult::Ok
    }

    fn apply_task_op(&mut self, index: u64, op: TaskOp, now: &str) {
        match op {
            TaskOp::Create(mut task) => {
                let Some(service) = self.services.get(&task.service_id) else {
                    return;
                };
                if self.tasks.contains_key(&task.id) {
                    return;
                }
                task.spec.share_with(&service.spec.task_template);
                task.version.index = index;
                self.tasks.insert(task.id.clone(), *task);
            }
            TaskOp::Assign {
                id,
                node_id,
                status,
            } => {
                let Some(task) = self.tasks.get_mut(&id) else {
                    return;
                };
                if task.status.state > TaskState::Pending
                    || (!task.node_id.is_empty() && task.node_id != node_id)
                {
                    return;
                }
                task.node_id = node_id;
                task.status = status;
                task.version.index = index;
                task.updated_at = now.to_string();
            }
            TaskOp::Status { id, status } => {
                let Some(task) = self.tasks.get_mut(&id) else {
                    return;
                };
                if status.state < task.status.state {
                    return;
                }
                task.status = status;
                task.version.index = index;
                task.updated_at = now.to_string();
            }
            TaskOp::Desired { id, state } => {
                let Some(task) = self.tasks.get_mut(&id) else {
                    return;
                };
                if state <= task.desired_state {
                    return;
                }
                task.desired_state = state;
                task.version.index = index;
                task.updated_at = now.to_string();
            }
            TaskOp::Delete { id } => {
                self.tasks.remove(&id);
            }
        }
    }
}

/// The tasks of each node, kept by the state machine as it applies (on every manager, so a new
/// leader has it at once): a node's `Assignments` stream looks only at its own entry, and does
/// any work only when `changed` moved. Before, each of 1,000 streams looked up its node's tasks
/// by ID and cloned their IDs on every applied index, and the whole by-node grouping was rebuilt
/// per index: most of the leader's CPU at 30,000 tasks.
#[derive(Debug, Default)]
pub struct TasksByNode {
    nodes: HashMap<String, NodeTasks>,
}

#[derive(Debug, Default)]
pub struct NodeTasks {
    /// The IDs of the tasks bound to the node (in any state, until deleted), each with the
    /// last applied index that changed it: an incremental assignment stream looks up only the
    /// tasks changed since its last message.
    pub ids: BTreeMap<String, u64>,
    /// The last applied index that changed one of them.
    pub changed: u64,
    /// The last applied index that changed what the node must run: a task added or removed, a
    /// desired state, a status the node did not report (not a status from accepted to rejected
    /// of a task the node holds already, which only the node reports).
    pub placed: u64,
}

/// A task as `TasksByNode::before` saw it: its node, desired state and state.
type Before = Option<(String, TaskState, TaskState)>;

/// What `TasksByNode::before` saw, for `after`.
pub enum Touched {
    /// The task IDs a command names, each as it was before the command.
    Tasks(Vec<(String, Before)>),
    /// A command that may change any task: everything is counted again.
    All,
    Nothing,
}

impl TasksByNode {
    pub fn of(state: &ClusterState, index: u64) -> TasksByNode {
        let mut by_node = TasksByNode::default();
        for task in state.objects.tasks.values() {
            if !task.node_id.is_empty() {
                let node = by_node.nodes.entry(task.node_id.clone()).or_default();
                node.ids.insert(task.id.clone(), index);
                node.changed = index;
                node.placed = index;
            }
        }
        by_node
    }

    pub fn node(&self, node_id: &str) -> Option<&NodeTasks> {
        self.nodes.get(node_id)
    }

    /// Called before `command` is applied to `state`.
    pub fn before(state: &ClusterState, command: &crate::state::Command) -> Touched {
        use crate::state::Command;
        match command {
            Command::Objects(o) => match &**o {
                ObjectCommand::Tasks { ops, .. } => Touched::Tasks(
                    ops.iter()
                        .map(|op| {
                            let id = match op {
                                TaskOp::Create(t) => &t.id,
                                TaskOp::Assign { id, .. }
                                | TaskOp::Status { id, .. }
                                | TaskOp::Desired { id, .. }
                                | TaskOp::Delete { id } => id,
                            };
                            let before = state
                                .objects
                                .tasks
                                .get(id)
                                .filter(|t| !t.node_id.is_empty())
                                .map(|t| (t.node_id.clone(), t.desired_state, t.status.state));
                            (id.clone(), before)
                        })
                        .collect(),
                ),
                ObjectCommand::RemoveService { .. } => Touched::All,
                _ => Touched::Nothing,
            },
            Command::Restore { .. } => Touched::All,
            _ => Touched::Nothing,
        }
    }

    /// Called after the command `before` saw was applied at `index`.
    pub fn after(&mut self, state: &ClusterState, touched: Touched, index: u64) {
        match touched {
            Touched::Nothing => {}
            Touched::All => {
                let old = std::mem::replace(self, TasksByNode::of(state, index));
                // A node that lost all its tasks must see that too.
                for (id, _) in old.nodes {
                    let node = self.nodes.entry(id).or_default();
                    node.changed = index;
                    node.placed = index;
                }
            }
            Touched::Tasks(ids) => {
                for (id, before) in ids {
                    let task = state.objects.tasks.get(&id);
                    let node_now = task.map(|t| t.node_id.as_str()).filter(|n| !n.is_empty());
                    let reported = match (&before, task) {
                        (Some((node, desired, was)), Some(t)) => {
                            *node == t.node_id
                                && *desired == t.desired_state
                                && *was >= TaskState::Assigned
                                && (TaskState::Accepted..=TaskState::Rejected)
                                    .contains(&t.status.state)
                        }
                        _ => false,
                    };
                    if let Some((before, _, _)) = before
                        && Some(before.as_str()) != node_now
                        && let Some(node) = self.nodes.get_mut(&before)
                    {
                        node.ids.remove(&id);
                        node.changed = index;
                        node.placed = index;
                    }
                    if let Some(now) = node_now {
                        let node = match self.nodes.get_mut(now) {
                            Some(node) => node,
                            None => self.nodes.entry(now.to_string()).or_default(),
                        };
                        match node.ids.get_mut(&id) {
                            Some(at) => *at = index,
                            None => {
                                node.ids.insert(id, index);
                            }
                        }
                        node.changed = index;
                        if !reported {
                            node.placed = index;
                        }
                    }
                }
            }
        }
    }
}

/// Accessors on the whole cluster state.
impl ClusterState {
    /// A service by ID, name or unique ID prefix, as Docker resolves `/services/{id}`.
    pub fn find_service(&self, key: &str) -> Result<&Service, (u16, String)> {
        let services = &self.objects.services;
        if let Some(s) = services.get(key) {
            return Ok(s);
        }
        if let Some(s) = services.values().find(|s| s.spec.name == key) {
            return Ok(s);
        }
        let prefixed: Vec<&Service> = services
            .values()
            .filter(|s| !key.is_empty() && s.id.starts_with(key))
            .collect();
        match prefixed.len() {
            1 => Ok(prefixed[0]),
            0 => Err((404, format!("service {key} not found"))),
            n => Err((
                404,
                format!("service {key} is ambiguous ({n} matches found)"),
            )),
        }
    }

    pub fn find_file(&self, kind: FileKind, key: &str) -> Result<&FileObject, (u16, String)> {
        let files = self.objects.files(kind);
        if let Some(f) = files.get(key) {
            return Ok(f);
        }
        if let Some(f) = files.values().find(|f| f.spec.name == key) {
            return Ok(f);
        }
        let prefixed: Vec<&FileObject> = files
            .values()
            .filter(|f| !key.is_empty() && f.id.starts_with(key))
            .collect();
        match prefixed.len() {
            1 => Ok(prefixed[0]),
            0 => Err((404, format!("{} {key} not found", kind.as_str()))),
            n => Err((
                404,
                format!("{} {key} is ambiguous ({n} matches found)", kind.as_str()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, service: &str) -> Task {
        Task {
            id: id.into(),
            service_id: service.into(),
            slot: 1,
            desired_state: TaskState::Running,
            ..Task::default()
        }
    }

    fn status(state: TaskState) -> TaskStatus {
        TaskStatus {
            state,
            ..TaskStatus::default()
        }
    }

    #[test]
    fn task_states_never_go_back_and_versions_are_checked() {
        let mut o = Objects::default();
        let service = Service {
            id: "s1".into(),
            spec: ServiceSpec {
                name: "web".into(),
                ..ServiceSpec::default()
            },
            ..Service::default()
        };
        assert_eq!(
            o.apply(
                1,
                ObjectCommand::CreateService {
                    service: Box::new(service.clone())
                }
            ),
            CommandResult::Ok
        );
        let mut dup = service.clone();
        dup.id = "s2".into();
        assert_eq!(
            o.apply(
                2,
                ObjectCommand::CreateService {
                    service: Box::new(dup)
                }
            ),
            refused(409, NAME_CONFLICT)
        );
        let ops = |ops| ObjectCommand::Tasks {
            ops,
            now: String::new(),
        };
        o.apply(3, ops(vec![TaskOp::Create(Box::new(task("t1", "s1")))]));
        o.apply(
            4,
            ops(vec![TaskOp::Status {
                id: "t1".into(),
                status: status(TaskState::Running),
            }]),
        );
        o.apply(
            5,
            ops(vec![TaskOp::Status {
                id: "t1".into(),
                status: status(TaskState::Starting),
            }]),
        );
        assert_eq!(o.tasks["t1"].status.state, TaskState::Running);
        let update = |version| ObjectCommand::UpdateService {
            id: "s1".into(),
            version: Some(version),
            spec: Box::new(service.spec.clone()),
            rollback: false,
            now: String::new(),
        };
        assert_eq!(o.apply(6, update(2)), refused(500, OUT_OF_SEQUENCE));
        assert_eq!(o.apply(7, update(1)), CommandResult::Ok);
        assert_eq!(o.services["s1"].version.index, 7);
        o.apply(8, ObjectCommand::RemoveService { id: "s1".into() });
        assert_eq!(o.tasks["t1"].desired_state, TaskState::Remove);
    }

    #[test]
    fn the_tasks_by_node_follow_every_command_that_moves_a_task() {
        use crate::state::Command;
        let mut state = ClusterState::default();
        let mut by_node = TasksByNode::of(&state, 0);
        let mut index = 0;
        let mut apply = |state: &mut ClusterState, by_node: &mut TasksByNode, command| {
            index += 1;
            let touched = TasksByNode::before(state, &command);
            state.apply(index, command);
            by_node.after(state, touched, index);
            index
        };
        let ids = |by_node: &TasksByNode, node: &str| -> Vec<String> {
            by_node
                .node(node)
                .map(|n| n.ids.keys().cloned().collect())
                .unwrap_or_default()
        };
        let service = Service {
            id: "s1".into(),
            ..Service::default()
        };
        let create = Command::Objects(Box::new(ObjectCommand::CreateService {
            service: Box::new(service),
        }));
        apply(&mut state, &mut by_node, create);
        let tasks = |ops| {
            Command::Objects(Box::new(ObjectCommand::Tasks {
                ops,
                now: "t".into(),
            }))
        };
        let i = apply(
            &mut state,
            &mut by_node,
            tasks(vec![
                TaskOp::Create(Box::new(task("t1", "s1"))),
                TaskOp::Create(Box::new(task("t2", "s1"))),
            ]),
        );
        assert!(by_node.node("n1").is_none());
        let assign = |id: &str, node: &str| TaskOp::Assign {
            id: id.into(),
            node_id: node.into(),
            status: status(TaskState::Assigned),
        };
        let i2 = apply(
            &mut state,
            &mut by_node,
            tasks(vec![assign("t1", "n1"), assign("t2", "n2")]),
        );
        assert!(i2 > i);
        assert_eq!(ids(&by_node, "n1"), ["t1"]);
        assert_eq!(ids(&by_node, "n2"), ["t2"]);
        assert_eq!(by_node.node("n1").map(|n| n.changed), Some(i2));
        // A status of t2 moves n2 only.
        let i3 = apply(
            &mut state,
            &mut by_node,
            tasks(vec![TaskOp::Status {
                id: "t2".into(),
                status: status(TaskState::Running),
            }]),
        );
        assert_eq!(by_node.node("n1").map(|n| n.changed), Some(i2));
        assert_eq!(by_node.node("n2").map(|n| n.changed), Some(i3));
        // ... and, reported by the node, does not change what n2 runs.
        assert_eq!(by_node.node("n2").map(|n| n.placed), Some(i2));
        // A deleted task leaves its node, which sees the change.
        let i4 = apply(
            &mut state,
            &mut by_node,
            tasks(vec![TaskOp::Delete { id: "t1".into() }]),
        );
        assert!(ids(&by_node, "n1").is_empty());
        assert_eq!(by_node.node("n1").map(|n| n.changed), Some(i4));
        // Removing the service raises every task's desired state: every node sees it.
        let remove = Command::Objects(Box::new(ObjectCommand::RemoveService { id: "s1".into() }));
        let i5 = apply(&mut state, &mut by_node, remove);
        assert_eq!(by_node.node("n2").map(|n| n.changed), Some(i5));
        assert_eq!(by_node.node("n2").map(|n| n.placed), Some(i5));
        assert_eq!(ids(&by_node, "n2"), ["t2"]);
        // Built again from the state, the index says the same.
        let rebuilt = TasksByNode::of(&state, i5);
        assert_eq!(ids(&rebuilt, "n2"), ["t2"]);
        assert!(ids(&rebuilt, "n1").is_empty());
    }
}
