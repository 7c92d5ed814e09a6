//! Replicated and global services as slots: a replicated service's slot is its number
//! (1..=Replicas), a global service's is a node. Each slot holds at most one current task (the
//! newest whose desired state is still `running`) and its history.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::{Memory, Plan, ended, new_task, restart, update};
use crate::model::{Task, TaskState};
use crate::objects::{Service, TaskOp};
use crate::state::{Availability, ClusterState, NodeState};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Slot(u64),
    Node(String),
}

impl Key {
    pub fn as_string(&self) -> String {
        match self {
            Key::Slot(n) => n.to_string(),
            Key::Node(id) => id.clone(),
        }
    }
}

pub fn is_global(service: &Service) -> bool {
    service
        .spec
        .mode
        .as_ref()
        .is_some_and(|m| m.global.is_some())
}

pub fn replicas(service: &Service) -> u64 {
    service
        .spec
        .mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .unwrap_or(1)
}

fn key_of(service: &Service, task: &Task) -> Key {
    if is_global(service) {
        Key::Node(task.node_id.clone())
    } else {
        Key::Slot(task.slot)
    }
}

/// A task's node is gone, down or drained: its task must run elsewhere.
fn node_lost(state: &ClusterState, task: &Task) -> bool {
    if task.node_id.is_empty() {
        return false;
    }
    match state.nodes.get(&task.node_id) {
        None => true,
        Some(node) => {
            node.state == NodeState::Down || node.spec.availability == Availability::Drain
        }
    }
}

/// A task ended and left the node (or the node cannot tell any more): its history entry may go.
fn finished(state: &ClusterState, task: &Task) -> bool {
    ended(task)
        || task.status.state < TaskState::Assigned
        || state
            .nodes
            .get(&task.node_id)
            .is_none_or(|n| n.state == NodeState::Down)
}

fn shutdown(plan: &mut Plan, task: &Task) {
    plan.ops.push(TaskOp::Desired {
        id: task.id.clone(),
        state: TaskState::Shutdown,
    });
}

/// The slots a service should have (`wanted`) and those where a new task may start (`open`).
enum Slots {
    /// 1..=Replicas, all open.
    Replicated(u64),
    /// The nodes that fit (not drained), and those active among them.
    Global {
        wanted: BTreeSet<Key>,
        open: BTreeSet<Key>,
    },
}

impl Slots {
    fn wanted(&self, key: &Key) -> bool {
        match (self, key) {
            (Slots::Replicated(n), Key::Slot(slot)) => (1..=*n).contains(slot),
            (Slots::Global { wanted, .. }, key) => wanted.contains(key),
            _ => false,
        }
    }

    fn open(&self, key: &Key) -> bool {
        match self {
            Slots::Replicated(_) => self.wanted(key),
            Slots::Global { open, .. } => open.contains(key),
        }
    }
}

pub fn reconcile(
    state: &ClusterState,
    service: &Service,
    memory: &mut Memory,
    now: SystemTime,
    stamp: &str,
    retention: usize,
    plan: &mut Plan,
) {
    let global = is_global(service);
    let updating = service
        .update_status
        .as_ref()
        .is_some_and(|u| u.state == "updating" || u.state == "rollback_started");
    if updating {
        plan.busy = true;
    }
    // The service's tasks in key order, each key's a run of `tasks` (a sort of one vector:
    // with 30,000 slots, a map of vectors cost a round more than everything else).
    let mut keyed: Vec<(Key, &Task)> = state
        .objects
        .tasks
        .values()
        .filter(|t| t.service_id == service.id)
        .map(|t| (key_of(service, t), t))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let (task_keys, tasks_in_order): (Vec<Key>, Vec<&Task>) = keyed.into_iter().unzip();
    // The slots this service should have, and where new tasks may start.
    let slots = if global {
        let constraints: &[String] = service
            .spec
            .task_template
            .placement
            .as_ref()
            .map(|p| p.constraints.as_slice())
            .unwrap_or(&[]);
        let fits = |n: &crate::state::Node| {
            n.state == NodeState::Ready
                && constraints
                    .iter()
                    .all(|c| super::scheduler::constraint_holds(n, c))
        };
        let wanted = state
            .nodes
            .values()
            .filter(|n| fits(n) && n.spec.availability != Availability::Drain)
            .map(|n| Key::Node(n.id.clone()))
            .collect();
        let open = state
            .nodes
            .values()
            .filter(|n| fits(n) && n.spec.availability == Availability::Active)
            .map(|n| Key::Node(n.id.clone()))
            .collect();
        Slots::Global { wanted, open }
    } else {
        Slots::Replicated(replicas(service))
    };
    let mut keys: Vec<Key> = match &slots {
        Slots::Replicated(n) => (1..=*n).map(Key::Slot).collect(),
        Slots::Global { wanted, .. } => wanted.iter().cloned().collect(),
    };
    keys.extend(task_keys.iter().cloned());
    keys.sort();
    keys.dedup();
    let mut dirty: Vec<(Key, &Task)> = Vec::new();
    let mut next = 0;
    for key in &keys {
        let first = next;
        while next < task_keys.len() && task_keys[next] == *key {
            next += 1;
        }
        let tasks = &tasks_in_order[first..next];
        let mut live: Vec<&Task> = tasks
            .iter()
            .copied()
            .filter(|t| t.desired_state <= TaskState::Running)
            .collect();
        live.sort_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
        if !slots.wanted(key) {
            for task in &live {
                shutdown(plan, task);
            }
            history(state, tasks, live.len(), retention, stamp, plan);
            continue;
        }
        let Some(current) = live.first().copied() else {
            // A slot whose task ended and may not restart (its policy) stays dead, as in
            // SwarmKit, until the service's spec changes.
            let newest = tasks
                .iter()
                .max_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
            let dead = newest.is_some_and(|t| {
                matches!(
                    t.status.state,
                    TaskState::Complete | TaskState::Failed | TaskState::Rejected
                ) && t.spec == service.spec.task_template
            });
            let created = usize::from(slots.open(key) && !dead);
            if created > 0 {
                create(service, key, stamp, plan);
            }
            history(state, tasks, created, retention, stamp, plan);
            continue;
        };
        // A slot in the middle of a replacement waits for statuses other than endings.
        if live.len() > 1 || current.desired_state == TaskState::Ready {
            plan.busy = true;
        }
        // A stop-first replacement (desired `ready`) may start once no other task of its slot
        // can still be running: each ended, never reached a node, or its node is down.
        if current.desired_state == TaskState::Ready
            && tasks
                .iter()
                .all(|t| t.id == current.id || finished(state, t))
        {
            plan.ops.push(TaskOp::Desired {
                id: current.id.clone(),
                state: TaskState::Running,
            });
        }
        // Older tasks of the slot: kept while a start-first replacement is not running yet.
        if current.status.state >= TaskState::Running {
            for old in &live[1..] {
                shutdown(plan, old);
            }
        }
        let replace = if !global && node_lost(state, current) && !ended(current) {
            true
        } else if ended(current) {
            match restart::decide(service, key, current, memory, now) {
                restart::Decision::Now => true,
                restart::Decision::Later => {
                    plan.busy = true;
                    false
                }
                restart::Decision::Never => {
                    shutdown(plan, current);
                    false
                }
            }
        } else {
            if current.spec != service.spec.task_template {
                dirty.push((key.clone(), current));
            }
            false
        };
        if replace {
            shutdown(plan, current);
            create(service, key, stamp, plan);
        }
        // The replaced task joins the history as its replacement arrives.
        history(
            state,
            tasks,
            live.len() + usize::from(replace),
            retention,
            stamp,
            plan,
        );
    }
    update::step(
        service,
        &state.objects.tasks,
        &dirty,
        memory,
        now,
        stamp,
        plan,
    );
}

pub fn create(service: &Service, key: &Key, stamp: &str, plan: &mut Plan) {
    if plan.created >= super::MAX_CREATES_PER_ROUND {
        plan.busy = true;
        return;
    }
    plan.created += 1;
    let task = match key {
        Key::Slot(n) => new_task(service, *n, "", stamp),
        Key::Node(id) => new_task(service, 0, id, stamp),
    };
    plan.ops.push(TaskOp::Create(Box::new(task)));
}

/// Keeps `retention` tasks per slot (the current one included); older ended ones are deleted,
/// and a task shut down before it reached a node is marked `shutdown`.
fn history(
    state: &ClusterState,
    tasks: &[&Task],
    live: usize,
    retention: usize,
    stamp: &str,
    plan: &mut Plan,
) {
    let mut dead: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| t.desired_state > TaskState::Running)
        .collect();
    for task in &dead {
        if task.status.state < TaskState::Assigned {
            plan.ops.push(TaskOp::Status {
                id: task.id.clone(),
                status: crate::model::TaskStatus {
                    timestamp: stamp.to_string(),
                    state: TaskState::Shutdown,
                    message: "shutdown".into(),
                    port_status: serde_json::json!({}),
                    ..Default::default()
                },
            });
        }
    }
    dead.sort_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
    let keep = retention.saturating_sub(live);
    for task in dead.iter().skip(keep) {
        if finished(state, task) {
            plan.ops.push(TaskOp::Delete {
                id: task.id.clone(),
            });
        }
    }
}
