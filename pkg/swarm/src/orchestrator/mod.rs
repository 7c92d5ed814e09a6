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

/// New tasks per round (a service scaled to tens of thousands converges over a few rounds).
pub const MAX_CREATES_PER_ROUND: usize = 20_000;

/// Task operations per Raft entry: an entry stays around 300 KB, so an AppendEntries of a few
/// entries usually arrives within openraft's timeout of one heartbeat interval.
const OPS_PER_ENTRY: usize = 500;

/// How long the loop waits for its writes to commit before it plans again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the leader remembers between rounds.
#[derive(Default)]
pub struct Memory {
    /// Restarts per (service, slot key), for `MaxAttempts` within `Window`.
    pub restarts: HashMap<(String, String), Vec<SystemTime>>,
    /// The rolling update in progress per service.
    pub updates: HashMap<String, update::Progress>,
}

/// How long the loop may rest while nothing it acts on changes (a safety net: see
/// `store::Applied::wake`).
const IDLE_MAX: Duration = Duration::from_secs(1);

/// One round's writes.
#[derive(Default)]
pub struct Plan {
    pub ops: Vec<TaskOp>,
    pub services: Vec<ObjectCommand>,
    pub created: usize,
    /// The next round has work whatever the store says: creations held back by the cap, an
    /// update or a slot's replacement under way (they move on a task's `running`), a restart
    /// waiting for its delay.
    pub busy: bool,
}

impl Plan {
    /// Nothing to write and nothing under way: the next round may wait for a change that
    /// wakes the loop.
    fn idle(&self) -> bool {
        self.ops.is_empty() && self.services.is_empty() && !self.busy
    }
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
    // The new tasks are placed in the same round: created and assigned by one entry.
    let ops = {
        let mut fresh: Vec<&mut Task> = plan
            .ops
            .iter_mut()
            .filter_map(|op| match op {
                TaskOp::Create(task) => Some(&mut **task),
                _ => None,
            })
            .collect();
        scheduler::schedule_with(state, stamp, &mut fresh)
    };
    plan.ops.extend(ops);
    plan
}

/// Runs `work` (long and CPU-bound) so that the runtime's other tasks go on meanwhile, where the
/// runtime can (`block_in_place` needs the multi-thread runtime).
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// The loop, on every manager; it acts while this manager leads.
pub async fn run(_daemon: Daemon, session: Weak<Session>) {
    let mut memory = Memory::default();
    // Whether the last round found nothing to do, the store's wake index it saw, and when it
    // ran: a round costs a walk over every task (tens of milliseconds at 30,000), so while
    // nodes only report their tasks running it is not planned again.
    let mut rest: Option<(u64, tokio::time::Instant)> = None;
    loop {
        tokio::time::sleep(ROUND).await;
        let Some(s) = session.upgrade() else { return };
        let Some(parts) = s.manager() else {
            memory = Memory::default();
            rest = None;
            continue;
        };
        let leading = {
            let metrics = parts.raft.metrics().borrow().clone();
            metrics.state == openraft::ServerState::Leader
        };
        if !leading {
            memory = Memory::default();
            rest = None;
            continue;
        }
        let stamp = now_rfc3339();
        let started = std::time::Instant::now();
        // Long work on a runtime thread: the runtime moves its other tasks elsewhere meanwhile.
        // Planned under the read lock, not on a clone: a clone alive while the state machine
        // applies makes it copy the whole task map (see `Shared`).
        let planned = blocking(|| {
            let applied = parts.shared.read().unwrap_or_else(|e| e.into_inner());
            if let Some((seen, since)) = rest
                && seen == applied.wake
                && since.elapsed() < IDLE_MAX
            {
                return None;
            }
            let plan = plan(&applied.state, &mut memory, SystemTime::now(), &stamp);
            tracing::debug!(
                "orchestrator: planned {} task operations ({} new tasks) over {} tasks in {:?}",
                plan.ops.len(),
                plan.created,
                applied.state.objects.tasks.len(),
                started.elapsed()
            );
            Some((plan, applied.wake))
        });
        let Some((plan, wake)) = planned else {
            continue;
        };
        let written = plan.ops.len() + plan.services.len();
        let planned = std::time::Instant::now();
        rest = plan.idle().then(|| (wake, tokio::time::Instant::now()));
        drop(s);
        // The service updates, then the task operations in entries of at most OPS_PER_ENTRY,
        // all handed to Raft at once (in order) and then awaited: one commit's latency per
        // round, not one per entry.
        let mut commands: Vec<ObjectCommand> = plan.services;
        let mut ops = plan.ops;
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(OPS_PER_ENTRY));
            commands.push(ObjectCommand::Tasks {
                ops,
                now: stamp.clone(),
            });
            ops = rest;
        }
        let mut pending = Vec::new();
        for command in commands {
            match parts
                .raft
                .client_write_ff(Command::Objects(Box::new(command)))
                .await
            {
                Ok(rx) => pending.push(rx),
                Err(e) => {
                    tracing::warn!("orchestrator: {e}");
                    break;
                }
            }
        }
        drop(parts);
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        for rx in pending {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(e))) => tracing::warn!("orchestrator: {e}"),
                Ok(Err(_)) => tracing::warn!("orchestrator: Raft dropped a write"),
                Err(_) => tracing::warn!("orchestrator: a write timed out"),
            }
        }
        if written > 0 {
            tracing::debug!(
                "orchestrator: {written} writes committed {:?} after the plan",
                planned.elapsed()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerSpec, Replicated, RestartPolicy, ServiceMode, ServiceSpec};
    use crate::state::{Node, NodeDescription, NodeSpec, NodeState};

    fn state_with(replicas: u64) -> ClusterState {
        let mut state = ClusterState::default();
        for id in ["n1", "n2"] {
            state.nodes.insert(
                id.into(),
                Node {
                    id: id.into(),
                    created_at: String::new(),
                    updated_at: String::new(),
                    version: 0,
                    spec: NodeSpec::default(),
                    description: NodeDescription::default(),
                    state: NodeState::Ready,
                    addr: String::new(),
                    manager_addr: None,
                    raft_id: 0,
                },
            );
        }
        let mut spec = ServiceSpec {
            name: "web".into(),
            mode: Some(ServiceMode {
                replicated: Some(Replicated {
                    replicas: Some(replicas),
                }),
                ..ServiceMode::default()
            }),
            ..ServiceSpec::default()
        };
        spec.task_template.container_spec = Some(ContainerSpec {
            image: "busybox".into(),
            ..ContainerSpec::default()
        });
        spec.task_template.restart_policy = Some(RestartPolicy {
            condition: Some("none".into()),
            delay: Some(60_000_000_000),
            ..RestartPolicy::default()
        });
        let service = Service {
            id: "s".into(),
            spec,
            ..Service::default()
        };
        state.objects.services.insert("s".into(), service);
        state
    }

    fn apply(state: &mut ClusterState, plan: Plan, index: &mut u64) {
        for command in plan.services.into_iter().chain([ObjectCommand::Tasks {
            ops: plan.ops,
            now: now_rfc3339(),
        }]) {
            *index += 1;
            state.objects.apply(*index, command);
        }
    }

    fn run_rounds(state: &mut ClusterState, memory: &mut Memory, index: &mut u64) {
        for _ in 0..3 {
            let p = plan(state, memory, SystemTime::now(), &now_rfc3339());
            apply(state, p, index);
        }
    }

    fn set_state(state: &mut ClusterState, id: &str, s: TaskState, index: &mut u64) {
        *index += 1;
        state.objects.apply(
            *index,
            ObjectCommand::Tasks {
                ops: vec![TaskOp::Status {
                    id: id.into(),
                    status: TaskStatus {
                        timestamp: now_rfc3339(),
                        state: s,
                        ..TaskStatus::default()
                    },
                }],
                now: now_rfc3339(),
            },
        );
    }

    fn live(state: &ClusterState) -> Vec<&Task> {
        state
            .objects
            .tasks
            .values()
            .filter(|t| t.desired_state <= TaskState::Running)
            .collect()
    }

    #[test]
    fn slots_scale_nodes_lost_replace_at_once_and_dead_slots_stay_dead() {
        let mut state = state_with(3);
        let mut memory = Memory::default();
        let mut index = 0;
        run_rounds(&mut state, &mut memory, &mut index);
        let mut slots: Vec<u64> = live(&state).iter().map(|t| t.slot).collect();
        slots.sort();
        assert_eq!(slots, [1, 2, 3]);
        assert!(
            live(&state)
                .iter()
                .all(|t| t.status.state == TaskState::Assigned)
        );
        let ids: Vec<String> = live(&state).iter().map(|t| t.id.clone()).collect();
        for id in &ids {
            set_state(&mut state, id, TaskState::Running, &mut index);
        }
        // Scale down to 1: slot 1 stays, 2 and 3 go.
        state
            .objects
            .services
            .get_mut("s")
            .unwrap()
            .spec
            .mode
            .as_mut()
            .unwrap()
            .replicated = Some(Replicated { replicas: Some(1) });
        run_rounds(&mut state, &mut memory, &mut index);
        let l = live(&state);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].slot, 1);
        let first = l[0].id.clone();
        let node = l[0].node_id.clone();
        // Its node goes down: replaced at once despite the 60 s delay and condition none.
        state.nodes.get_mut(&node).unwrap().state = NodeState::Down;
        run_rounds(&mut state, &mut memory, &mut index);
        let l = live(&state);
        assert_eq!(l.len(), 1);
        assert_ne!(l[0].id, first);
        assert_ne!(l[0].node_id, node);
        // It completes: condition none, so it is shut down and nothing replaces it.
        let second = l[0].id.clone();
        set_state(&mut state, &second, TaskState::Complete, &mut index);
        run_rounds(&mut state, &mut memory, &mut index);
        assert!(live(&state).is_empty());
        assert_eq!(
            state.objects.tasks[&second].desired_state,
            TaskState::Shutdown
        );
    }
}
