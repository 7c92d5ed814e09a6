//! The scheduler: places each task waiting for a node. Filters first (the node is ready and
//! active, its resources cover the reservations, the placement constraints and platforms hold,
//! host-mode published ports are free, the service's max replicas per node is not reached),
//! then spread: the node with the fewest tasks of the service, then the fewest tasks. A task
//! that fits nowhere stays `pending` with Docker's "no suitable node (...)" explanation, and is
//! placed on a later round as soon as a node fits.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::model::{Task, TaskSpec, TaskState, TaskStatus};
use crate::objects::TaskOp;
use crate::state::{Availability, ClusterState, Node, NodeState};

/// Tasks considered per round.
const MAX_PER_ROUND: usize = 20_000;

/// The filters, in the order their failures are explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Filter {
    Ready,
    Resources,
    Constraints,
    Platform,
    HostPort,
    MaxReplicas,
}

fn explain(filter: Filter, nodes: usize) -> String {
    let s = if nodes == 1 { "" } else { "s" };
    match filter {
        Filter::Ready => format!("{nodes} node{s} not available for new tasks"),
        Filter::Resources => format!("insufficient resources on {nodes} node{s}"),
        Filter::Constraints => format!("scheduling constraints not satisfied on {nodes} node{s}"),
        Filter::Platform => format!("unsupported platform on {nodes} node{s}"),
        Filter::HostPort => format!("host-mode port already in use on {nodes} node{s}"),
        Filter::MaxReplicas => "max replicas per node limit exceed".to_string(),
    }
}

/// What the live tasks already hold on one node.
#[derive(Default, Clone)]
struct Load {
    tasks: usize,
    per_service: HashMap<String, usize>,
    nano_cpus: i64,
    memory_bytes: i64,
    ports: Vec<(String, u32)>,
}

fn reservations(spec: &TaskSpec) -> (i64, i64) {
    spec.resources
        .as_ref()
        .and_then(|r| r.reservations.as_ref())
        .map(|r| (r.nano_cpus, r.memory_bytes))
        .unwrap_or((0, 0))
}

fn host_ports(state: &ClusterState, task: &Task) -> Vec<(String, u32)> {
    let Some(service) = state.objects.services.get(&task.service_id) else {
        return Vec::new();
    };
    service
        .spec
        .endpoint_spec
        .iter()
        .flat_map(|e| e.ports.iter())
        .filter(|p| p.publish_mode.as_deref() == Some("host"))
        .filter_map(|p| {
            Some((
                p.protocol.clone().unwrap_or_else(|| "tcp".into()),
                p.published_port.filter(|&n| n > 0)?,
            ))
        })
        .collect()
}

/// A task occupies its node from assignment until it ended, also while it is being stopped: a
/// stop-first update's new task waits (pending, "host-mode port already in use") for the old one
/// to free its port or reservation.
pub fn holds_node(task: &Task) -> bool {
    !task.node_id.is_empty()
        && task.status.state >= TaskState::Assigned
        && task.status.state < TaskState::Complete
}

/// Docker's constraint syntax: `key==value` or `key!=value`.
pub fn constraint_holds(node: &Node, constraint: &str) -> bool {
    let (key, equal, value) = if let Some((k, v)) = constraint.split_once("==") {
        (k, true, v)
    } else if let Some((k, v)) = constraint.split_once("!=") {
        (k, false, v)
    } else {
        return false;
    };
    let key = key.trim();
    let value = value.trim();
    let actual: Option<String> = match key.to_ascii_lowercase().as_str() {
        "node.id" => Some(node.id.clone()),
        "node.hostname" => Some(node.description.hostname.clone()),
        "node.role" => Some(node.spec.role.as_str().to_string()),
        "node.platform.os" => Some(node.description.os.clone()),
        "node.platform.arch" => Some(node.description.architecture.clone()),
        _ => {
            if let Some(label) = key.strip_prefix("node.labels.") {
                node.spec.labels.get(label).cloned()
            } else {
                // engine.labels: this agent's engine has none.
                None
            }
        }
    };
    let matches = actual.is_some_and(|a| {
        if key.eq_ignore_ascii_case("node.hostname") || key.starts_with("node.labels.") {
            a == value
        } else {
            a.eq_ignore_ascii_case(value)
        }
    });
    matches == equal
}

/// Constraints that cannot be parsed are refused when the service is created.
pub fn valid_constraint(constraint: &str) -> bool {
    let parts = constraint
        .split_once("==")
        .or_else(|| constraint.split_once("!="));
    parts.is_some_and(|(k, _)| {
        let k = k.trim().to_ascii_lowercase();
        [
            "node.id",
            "node.hostname",
            "node.role",
            "node.platform.os",
            "node.platform.arch",
        ]
        .contains(&k.as_str())
            || k.starts_with("node.labels.")
            || k.starts_with("engine.labels.")
    })
}

fn platform_ok(node: &Node, spec: &TaskSpec) -> bool {
    let platforms = spec
        .placement
        .as_ref()
        .map(|p| p.platforms.as_slice())
        .unwrap_or(&[]);
    if platforms.is_empty() {
        return true;
    }
    let arch = |a: &str| match a {
        "x86_64" | "amd64" => "amd64".to_string(),
        "aarch64" | "arm64" => "arm64".to_string(),
        other => other.to_string(),
    };
    platforms.iter().any(|p| {
        let os = p.get("OS").and_then(|v| v.as_str()).unwrap_or("");
        let a = p.get("Architecture").and_then(|v| v.as_str()).unwrap_or("");
        (os.is_empty() || os.eq_ignore_ascii_case(&node.description.os))
            && (a.is_empty() || arch(a) == arch(&node.description.architecture))
    })
}

fn check(
    state: &ClusterState,
    node: &Node,
    load: &Load,
    task: &Task,
    ports: &[(String, u32)],
) -> Result<(), Filter> {
    if node.state != NodeState::Ready || node.spec.availability != Availability::Active {
        return Err(Filter::Ready);
    }
    let (cpus, memory) = reservations(&task.spec);
    if (cpus > 0 && load.nano_cpus + cpus > node.description.nano_cpus)
        || (memory > 0 && load.memory_bytes + memory > node.description.memory_bytes)
    {
        return Err(Filter::Resources);
    }
    let placement = task.spec.placement.as_ref();
    if placement.is_some_and(|p| !p.constraints.iter().all(|c| constraint_holds(node, c))) {
        return Err(Filter::Constraints);
    }
    if !platform_ok(node, &task.spec) {
        return Err(Filter::Platform);
    }
    if ports.iter().any(|p| load.ports.contains(p)) {
        return Err(Filter::HostPort);
    }
    if let Some(max) = placement.and_then(|p| p.max_replicas).filter(|&m| m > 0)
        && load.per_service.get(&task.service_id).copied().unwrap_or(0) as u64 >= max
    {
        return Err(Filter::MaxReplicas);
    }
    let _ = state;
    Ok(())
}

/// The labels of `Placement.Preferences` (`{"Spread":{"SpreadDescriptor":"node.labels.rack"}}`),
/// outermost first: tasks are spread evenly over each label's values (nodes without the label
/// are one more value), then over the nodes.
fn spread_labels(spec: &TaskSpec) -> Vec<String> {
    spec.placement
        .as_ref()
        .map(|p| {
            p.preferences
                .iter()
                .filter_map(|p| p.get("Spread")?.get("SpreadDescriptor")?.as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn label_value<'a>(node: &'a Node, descriptor: &str) -> Option<&'a str> {
    let key = descriptor.strip_prefix("node.labels.")?;
    node.spec.labels.get(key).map(String::as_str)
}

/// One scheduling round over the whole state: the assignments and the pending reasons to write.
pub fn schedule(state: &ClusterState, now: &str) -> Vec<TaskOp> {
    schedule_with(state, now, &mut [])
}

/// Where a waiting task comes from: the store, or this round's new tasks (`fresh[i]`).
#[derive(Clone, Copy)]
enum Source {
    Stored,
    Fresh(usize),
}

/// A task without reservations, host ports, replica limit, spread preferences or a fixed node:
/// only the static filters (ready, constraints, platform) and the spread rank decide, so the
/// node is taken from a heap instead of a walk over all the nodes.
fn plain(task: &Task, ports: &[(String, u32)]) -> bool {
    reservations(&task.spec) == (0, 0)
        && ports.is_empty()
        && task.node_id.is_empty()
        && task
            .spec
            .placement
            .as_ref()
            .is_none_or(|p| p.max_replicas.is_none_or(|m| m == 0) && p.preferences.is_empty())
}

/// The static filters of one task spec on every node, and a min-heap of the nodes passing them
/// by (the service's tasks, all tasks, position). Keys only grow, so an entry found stale when
/// popped is pushed again with its current key.
struct Fast<'a> {
    service: &'a str,
    spec: &'a crate::shared::Shared<TaskSpec>,
    failures: BTreeMap<Filter, usize>,
    heap: BinaryHeap<Reverse<(usize, usize, usize)>>,
}

/// The scheduling round, also placing `fresh`, the tasks this round creates (not in the store
/// yet): a placed one gets its node and `assigned` status in place (an unplaceable one its
/// `pending` reason), so a new task is created and assigned by one Raft entry.
///
/// Per waiting task the nodes are walked once (filters, then the spread rank); the loads live in
/// a vector in the nodes' order and the task's service count per node is kept across the tasks
/// of one service, so a round of 20,000 tasks on 1,000 nodes makes no allocation per node. Plain
/// tasks (see [`plain`]) take their node from a heap: O(log nodes) each.
pub fn schedule_with(state: &ClusterState, now: &str, fresh: &mut [&mut Task]) -> Vec<TaskOp> {
    let nodes: Vec<&Node> = state.nodes.values().collect();
    let position: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut loads: Vec<Load> = vec![Load::default(); nodes.len()];
    // Each service's host ports, looked up once (not once per task).
    let mut ports_of: HashMap<&str, Vec<(String, u32)>> = HashMap::new();
    for task in state.objects.tasks.values().filter(|t| holds_node(t)) {
        if let Some(&i) = position.get(task.node_id.as_str()) {
            let ports = ports_of
                .entry(task.service_id.as_str())
                .or_insert_with(|| host_ports(state, task));
            add(&mut loads[i], task, ports);
        }
    }
    let mut decided: Vec<(usize, String, TaskStatus)> = Vec::new();
    let mut ops = Vec::new();
    {
        let fresh_tasks: Vec<&Task> = fresh.iter().map(|t| &**t).collect();
        let mut waiting: Vec<(&Task, Source)> = state
            .objects
            .tasks
            .values()
            .filter(|t| {
                t.status.state <= TaskState::Pending && t.desired_state <= TaskState::Running
            })
            .map(|t| (t, Source::Stored))
            .chain(
                fresh_tasks
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (*t, Source::Fresh(i))),
            )
            .collect();
        waiting.sort_by(|(a, _), (b, _)| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        // One round's decisions stay bounded; the rest wait a round.
        waiting.truncate(MAX_PER_ROUND);
        // The tasks of `counted` per node (the loads' per_service, without a lookup per node).
        let mut counted: Option<&str> = None;
        let mut of_service: Vec<usize> = Vec::new();
        let mut rank: Vec<usize> = Vec::new();
        let mut fast: Option<Fast> = None;
        for (task, source) in waiting {
            if counted != Some(task.service_id.as_str()) {
                counted = Some(task.service_id.as_str());
                of_service = loads
                    .iter()
                    .map(|l| l.per_service.get(&task.service_id).copied().unwrap_or(0))
                    .collect();
                fast = None;
            }
            let ports = host_ports(state, task);
            let mut failures: BTreeMap<Filter, usize> = BTreeMap::new();
            let mut best: Option<(usize, Vec<usize>)> = None;
            if plain(task, &ports) {
                if fast
                    .as_ref()
                    .is_none_or(|f| f.service != task.service_id || *f.spec != task.spec)
                {
                    let mut f = Fast {
                        service: &task.service_id,
                        spec: &task.spec,
                        failures: BTreeMap::new(),
                        heap: BinaryHeap::new(),
                    };
                    for (i, node) in nodes.iter().enumerate() {
                        match check(state, node, &loads[i], task, &ports) {
                            Ok(()) => f.heap.push(Reverse((of_service[i], loads[i].tasks, i))),
                            Err(filter) => *f.failures.entry(filter).or_default() += 1,
                        }
                    }
                    fast = Some(f);
                }
                let f = fast.as_mut().expect("built above");
                while let Some(Reverse((o, t, i))) = f.heap.pop() {
                    if (o, t) != (of_service[i], loads[i].tasks) {
                        f.heap.push(Reverse((of_service[i], loads[i].tasks, i)));
                        continue;
                    }
                    best = Some((i, Vec::new()));
                    break;
                }
                if best.is_none() {
                    failures = f.failures.clone();
                }
            } else {
                let spreads = spread_labels(&task.spec);
                // Per preference: the service's tasks on the nodes of each value of its label.
                let groups: Vec<HashMap<Option<&str>, usize>> = spreads
                    .iter()
                    .map(|label| {
                        let mut counts: HashMap<Option<&str>, usize> = HashMap::new();
                        for (i, node) in nodes.iter().enumerate() {
                            *counts.entry(label_value(node, label)).or_default() += of_service[i];
                        }
                        counts
                    })
                    .collect();
                for (i, node) in nodes.iter().enumerate() {
                    if !task.node_id.is_empty() && task.node_id != node.id {
                        continue;
                    }
                    let load = &loads[i];
                    match check(state, node, load, task, &ports) {
                        Ok(()) => {
                            rank.clear();
                            rank.extend(spreads.iter().zip(&groups).map(|(label, counts)| {
                                counts.get(&label_value(node, label)).copied().unwrap_or(0)
                            }));
                            rank.push(of_service[i]);
                            rank.push(load.tasks);
                            if best.as_ref().is_none_or(|(_, r)| rank < *r) {
                                best = Some((i, rank.clone()));
                            }
                        }
                        Err(filter) => *failures.entry(filter).or_default() += 1,
                    }
                }
            }
            let (node_id, status) = match best {
                Some((i, _)) => {
                    of_service[i] += 1;
                    add(&mut loads[i], task, &ports);
                    if let Some(f) = fast.as_mut() {
                        f.heap.push(Reverse((of_service[i], loads[i].tasks, i)));
                    }
                    let status = TaskStatus {
                        timestamp: now.to_string(),
                        state: TaskState::Assigned,
                        message: "scheduler assigned task to node".into(),
                        ..TaskStatus::default()
                    };
                    (Some(nodes[i].id.clone()), status)
                }
                None => {
                    let reasons: Vec<String> = failures
                        .iter()
                        .map(|(filter, count)| explain(*filter, *count))
                        .collect();
                    let err = if reasons.is_empty() {
                        "no suitable node".to_string()
                    } else {
                        format!("no suitable node ({})", reasons.join("; "))
                    };
                    if task.status.state == TaskState::Pending && task.status.err == err {
                        continue;
                    }
                    let status = TaskStatus {
                        timestamp: now.to_string(),
                        state: TaskState::Pending,
                        message: "pending task scheduling".into(),
                        err,
                        ..TaskStatus::default()
                    };
                    (None, status)
                }
            };
            match (source, node_id) {
                (Source::Fresh(i), node_id) => {
                    decided.push((i, node_id.unwrap_or_else(|| task.node_id.clone()), status))
                }
                (Source::Stored, Some(node_id)) => ops.push(TaskOp::Assign {
                    id: task.id.clone(),
                    node_id,
                    status,
                }),
                (Source::Stored, None) => ops.push(TaskOp::Status {
                    id: task.id.clone(),
                    status,
                }),
            }
        }
    }
    for (i, node_id, status) in decided {
        fresh[i].node_id = node_id;
        fresh[i].status = status;
    }
    ops
}

fn add(load: &mut Load, task: &Task, ports: &[(String, u32)]) {
    load.tasks += 1;
    match load.per_service.get_mut(&task.service_id) {
        Some(count) => *count += 1,
        None => {
            load.per_service.insert(task.service_id.clone(), 1);
        }
    }
    let (cpus, memory) = reservations(&task.spec);
    load.nano_cpus += cpus;
    load.memory_bytes += memory;
    load.ports.extend_from_slice(ports);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NodeDescription, NodeSpec, Role};

    fn node(id: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            id: id.into(),
            created_at: String::new(),
            updated_at: String::new(),
            version: 0,
            spec: NodeSpec {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                role: Role::Worker,
                ..NodeSpec::default()
            },
            description: NodeDescription {
                hostname: format!("host-{id}"),
                os: "linux".into(),
                architecture: "x86_64".into(),
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
            },
            state: NodeState::Ready,
            addr: String::new(),
            manager_addr: None,
            raft_id: 0,
        }
    }

    #[test]
    fn constraints_compare_ids_hostnames_roles_and_labels() {
        let n = node("abc", &[("zone", "a")]);
        assert!(constraint_holds(&n, "node.labels.zone==a"));
        assert!(!constraint_holds(&n, "node.labels.zone==b"));
        assert!(constraint_holds(&n, "node.labels.missing!=x"));
        assert!(constraint_holds(&n, "node.role==worker"));
        assert!(constraint_holds(&n, "node.role != manager"));
        assert!(constraint_holds(&n, "node.hostname==host-abc"));
        assert!(constraint_holds(&n, "node.id==abc"));
        assert!(!constraint_holds(&n, "garbage"));
        assert!(valid_constraint("node.labels.x==1"));
        assert!(!valid_constraint("node.bogus==1"));
    }

    #[test]
    fn tasks_spread_and_unplaceable_ones_explain_why() {
        let mut state = ClusterState::default();
        for id in ["n1", "n2", "n3"] {
            state.nodes.insert(id.into(), node(id, &[]));
        }
        state
            .objects
            .services
            .insert("s".into(), crate::objects::Service::default());
        for i in 0..6 {
            let id = format!("t{i}");
            state.objects.tasks.insert(
                id.clone(),
                Task {
                    id,
                    service_id: "s".into(),
                    created_at: format!("{i}"),
                    ..Task::default()
                },
            );
        }
        let ops = schedule(&state, "now");
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for op in &ops {
            let TaskOp::Assign { node_id, .. } = op else {
                panic!("{op:?}")
            };
            *per_node.entry(node_id.clone()).or_default() += 1;
        }
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
        let t = state.objects.tasks.get_mut("t0").unwrap();
        t.spec.placement = Some(crate::model::Placement {
            constraints: vec!["node.labels.zone==a".into()],
            ..Default::default()
        });
        let ops = schedule(&state, "now");
        let reason = ops.iter().find_map(|op| match op {
            TaskOp::Status { id, status } if id == "t0" => Some(status.err.clone()),
            _ => None,
        });
        assert_eq!(
            reason.as_deref(),
            Some("no suitable node (scheduling constraints not satisfied on 3 nodes)")
        );
    }

    #[test]
    fn host_ports_max_replicas_and_reservations_limit_placement() {
        let mut state = ClusterState::default();
        for id in ["n1", "n2"] {
            state.nodes.insert(id.into(), node(id, &[]));
        }
        let mut service = crate::objects::Service {
            id: "s".into(),
            ..Default::default()
        };
        service.spec.endpoint_spec = Some(crate::model::EndpointSpec {
            mode: None,
            ports: vec![crate::model::PortConfig {
                target_port: 80,
                published_port: Some(8080),
                publish_mode: Some("host".into()),
                ..Default::default()
            }],
        });
        state.objects.services.insert("s".into(), service);
        for i in 0..3 {
            let id = format!("t{i}");
            state.objects.tasks.insert(
                id.clone(),
                Task {
                    id,
                    service_id: "s".into(),
                    created_at: format!("{i}"),
                    ..Task::default()
                },
            );
        }
        let ops = schedule(&state, "now");
        let assigned = ops
            .iter()
            .filter(|op| matches!(op, TaskOp::Assign { .. }))
            .count();
        assert_eq!(assigned, 2, "one task per node on port 8080");
        let reason = ops.iter().find_map(|op| match op {
            TaskOp::Status { status, .. } => Some(status.err.clone()),
            _ => None,
        });
        assert_eq!(
            reason.as_deref(),
            Some("no suitable node (host-mode port already in use on 2 nodes)")
        );
        // Without the port: max one replica per node, and a reservation no node has.
        state
            .objects
            .services
            .get_mut("s")
            .unwrap()
            .spec
            .endpoint_spec = None;
        for t in state.objects.tasks.values_mut() {
            t.spec.placement = Some(crate::model::Placement {
                max_replicas: Some(1),
                ..Default::default()
            });
        }
        let ops = schedule(&state, "now");
        let reason = ops.iter().find_map(|op| match op {
            TaskOp::Status { status, .. } => Some(status.err.clone()),
            _ => None,
        });
        assert_eq!(
            reason.as_deref(),
            Some("no suitable node (max replicas per node limit exceed)")
        );
        for t in state.objects.tasks.values_mut() {
            t.spec.placement = None;
            t.spec.resources = Some(crate::model::ResourceRequirements {
                limits: None,
                reservations: Some(crate::model::Resources {
                    memory_bytes: 2 << 30,
                    ..Default::default()
                }),
            });
        }
        let ops = schedule(&state, "now");
        assert!(
            ops.iter()
                .all(|op| matches!(op, TaskOp::Status { status, .. }
            if status.err == "no suitable node (insufficient resources on 2 nodes)"))
        );
    }

    #[test]
    fn placement_preferences_spread_over_label_values_first() {
        // S26: rack=a on one node, rack=b on two; 4 replicas go 2 / 1 / 1.
        let mut state = ClusterState::default();
        state
            .nodes
            .insert("n1".into(), node("n1", &[("rack", "a")]));
        state
            .nodes
            .insert("n2".into(), node("n2", &[("rack", "b")]));
        state
            .nodes
            .insert("n3".into(), node("n3", &[("rack", "b")]));
        state
            .objects
            .services
            .insert("s".into(), crate::objects::Service::default());
        for i in 0..4 {
            let id = format!("t{i}");
            let mut task = Task {
                id: id.clone(),
                service_id: "s".into(),
                created_at: format!("{i}"),
                ..Task::default()
            };
            task.spec.placement = Some(crate::model::Placement {
                preferences: vec![
                    serde_json::json!({"Spread": {"SpreadDescriptor": "node.labels.rack"}}),
                ],
                ..Default::default()
            });
            state.objects.tasks.insert(id, task);
        }
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for op in schedule(&state, "now") {
            if let TaskOp::Assign { node_id, .. } = op {
                *per_node.entry(node_id).or_default() += 1;
            }
        }
        assert_eq!(
            per_node,
            BTreeMap::from([("n1".into(), 2), ("n2".into(), 1), ("n3".into(), 1)])
        );
    }

    #[test]
    fn plain_tasks_take_the_heap_and_land_where_the_walk_puts_them() {
        // Uneven loads: n1 holds 3 tasks, n2 1, n3 none, n4 is drained.
        let mut state = ClusterState::default();
        for id in ["n1", "n2", "n3", "n4"] {
            state.nodes.insert(id.into(), node(id, &[]));
        }
        state.nodes.get_mut("n4").unwrap().spec.availability = Availability::Drain;
        state
            .objects
            .services
            .insert("s".into(), crate::objects::Service::default());
        for (i, n) in ["n1", "n1", "n1", "n2"].iter().enumerate() {
            let id = format!("old{i}");
            state.objects.tasks.insert(
                id.clone(),
                Task {
                    id,
                    service_id: "s".into(),
                    node_id: n.to_string(),
                    created_at: "0".into(),
                    status: TaskStatus {
                        state: TaskState::Running,
                        ..TaskStatus::default()
                    },
                    ..Task::default()
                },
            );
        }
        let fresh_tasks = |preference: bool| -> Vec<Task> {
            (0..9)
                .map(|i| {
                    let mut t = Task {
                        id: format!("t{i}"),
                        service_id: "s".into(),
                        created_at: format!("{i}"),
                        ..Task::default()
                    };
                    if preference {
                        // A label no node has: every node is in the same group, so the rank is
                        // the plain one, computed by the walk.
                        t.spec.placement = Some(crate::model::Placement {
                            preferences: vec![serde_json::json!(
                                {"Spread": {"SpreadDescriptor": "node.labels.none"}}
                            )],
                            ..Default::default()
                        });
                    }
                    t
                })
                .collect()
        };
        let mut placed = Vec::new();
        for preference in [false, true] {
            let mut tasks = fresh_tasks(preference);
            let mut fresh: Vec<&mut Task> = tasks.iter_mut().collect();
            let ops = schedule_with(&state, "now", &mut fresh);
            assert!(ops.is_empty(), "{ops:?}");
            assert!(tasks.iter().all(|t| t.status.state == TaskState::Assigned));
            placed.push(tasks.iter().map(|t| t.node_id.clone()).collect::<Vec<_>>());
        }
        assert_eq!(placed[0], placed[1]);
        let count = |n: &str| placed[0].iter().filter(|p| *p == n).count();
        // 13 tasks over the 3 active nodes, the old ones counted: 5 / 4 / 4.
        assert_eq!((count("n1"), count("n2"), count("n3")), (2, 3, 4));
        assert_eq!(count("n4"), 0);
        // Nowhere to go: a fresh task gets its pending reason in place.
        for n in state.nodes.values_mut() {
            n.spec.availability = Availability::Drain;
        }
        let mut tasks = fresh_tasks(false);
        let mut fresh: Vec<&mut Task> = tasks.iter_mut().collect();
        assert!(schedule_with(&state, "now", &mut fresh).is_empty());
        assert!(tasks.iter().all(|t| t.status.state == TaskState::Pending
            && t.node_id.is_empty()
            && t.status.err == "no suitable node (4 nodes not available for new tasks)"));
    }
}
