//! The leader's orchestration loop: every round it reads the applied state and writes, through
//! Raft, what brings the tasks in line with the services:
//!
//! - [`slots`]: replicated services keep tasks in slots 1..=Replicas (scaling down shuts the
//!   highest slots, scaling up keeps the others); global services keep one task per node that
//!   is ready, not drained and matches the constraints (pause keeps tasks, places none).
//! - [`restart`]: the restart supervisor (condition, delay, max attempts in a window); a task
//!   whose node went down or was drained is replaced at once, without the delay.
//! - [`update`]: rolling updates and rollbacks (parallelism, delay, monitor, failure ratio and
//!   action, stop-first or start-first order) and the service's `UpdateStatus`.
//! - history: `TaskHistoryRetentionLimit` tasks per slot are kept, older ended ones deleted.
//! - [`scheduler`]: places the tasks waiting for a node.
//!
//! The loop's memory (restart counts, the update in progress) lives on the leader only; a new
//! leader starts afresh from the replicated state, which holds everything else.

pub mod restart;
pub mod scheduler;
pub mod slots;
pub mod update;

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

use crate::daemon::{Daemon, Session};
use crate::model::{Task, TaskState, TaskStatus, Version};
use crate::objects::{ObjectCommand, Service, TaskOp};
use crate::state::{ClusterState, Command, now_rfc3339};

/// How often the leader reconciles.
const ROUND: Duration = Duration::from_millis(100);

/// New tasks per round: bounds one Raft entry (a service scaled to thousands converges over a
/// few rounds instead of one entry too large to replicate).
pub const MAX_CREATES_PER_ROUND: usize = 1000;

/// What the leader remembers between rounds.
#[derive(Default)]
pub struct Memory {
    /// Restarts per (service, slot key), for `MaxAttempts` within `Window`.
    pub restarts: HashMap<(String, String), Vec<SystemTime>>,
    /// The rolling update in progress per service.
    pub updates: HashMap<String, update::Progress>,
}

/// One round's writes.
#[derive(Default)]
pub struct Plan {
    pub ops: Vec<TaskOp>,
    pub services: Vec<ObjectCommand>,
    pub created: usize,
}

pub fn new_task(service: &Service, slot: u64, node_id: &str, now: &str) -> Task {
    Task {
        id: crate::ids::new_id(),
        version: Version::default(),
        created_at: now.to_string(),
        updated_at: now.to_string(),
        name: String::new(),
        labels: Default::default(),
        spec: service.spec.task_template.clone(),
        service_id: service.id.clone(),
        slot,
        node_id: node_id.to_string(),
        status: TaskStatus {
            timestamp: now.to_string(),
            state: TaskState::New,
            message: "created".into(),
            port_status: serde_json::json!({}),
            ..TaskStatus::default()
        },
        desired_state: TaskState::Running,
    }
}

pub fn ended(task: &Task) -> bool {
    task.status.state >= TaskState::Complete
}

pub fn timestamp(task: &Task) -> SystemTime {
    humantime::parse_rfc3339_weak(&task.status.timestamp).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Computes one round's writes from the applied state.
pub fn plan(state: &ClusterState, memory: &mut Memory, now: SystemTime, stamp: &str) -> Plan {
    let mut plan = Plan::default();
    let retention = state
        .cluster
        .as_ref()
        .and_then(|c| c.spec.orchestration.task_history_retention_limit)
        .unwrap_or(5)
        .max(1) as usize;
    for service in state.objects.services.values() {
        slots::reconcile(state, service, memory, now, stamp, retention, &mut plan);
    }
    // Tasks of removed services leave their nodes' assignments (the executors remove their
    // containers) and the store.
    for task in state.objects.tasks.values() {
        if !state.objects.services.contains_key(&task.service_id) {
            plan.ops.push(TaskOp::Delete {
                id: task.id.clone(),
            });
        }
    }
    memory
        .updates
        .retain(|id, _| state.objects.services.contains_key(id));
    plan.ops.extend(scheduler::schedule(state, stamp));
    plan
}

/// The loop, on every manager; it acts while this manager leads.
pub async fn run(daemon: Daemon, session: Weak<Session>) {
    let mut memory = Memory::default();
    loop {
        tokio::time::sleep(ROUND).await;
        let Some(s) = session.upgrade() else { return };
        let Some(parts) = s.manager() else {
            memory = Memory::default();
            continue;
        };
        let leading = {
            let metrics = parts.raft.metrics().borrow().clone();
            metrics.state == openraft::ServerState::Leader
        };
        if !leading {
            memory = Memory::default();
            continue;
        }
        let stamp = now_rfc3339();
        let plan = {
            let applied = parts.shared.read().unwrap_or_else(|e| e.into_inner());
            plan(&applied.state, &mut memory, SystemTime::now(), &stamp)
        };
        drop(parts);
        drop(s);
        let mut commands = plan.services;
        if !plan.ops.is_empty() {
            commands.push(ObjectCommand::Tasks {
                ops: plan.ops,
                now: stamp,
            });
        }
        for command in commands {
            if let Err(e) = daemon.propose(Command::Objects(Box::new(command))).await {
                tracing::warn!("orchestrator: {e}");
                break;
            }
        }
    }
}
