//! The real executor: a node's tasks as containers of the local Slipway engine, through its
//! API on a unix socket ([`super::engine_client`]).
//!
//! A task's container is named `SERVICE.SLOT.TASKID` (`SERVICE.NODEID.TASKID` for a global
//! service) and labelled `com.docker.swarm.task.id`, `.service.id`, `.node.id`, `.task.name`,
//! so every reconcile finds the containers again from the engine alone: after a restart of the
//! agent or of the engine nothing is created twice and nothing is forgotten. The engine's
//! restart policy is always `no`: a container that ended stays ended, and the manager's
//! restart supervisor makes a new task.
//!
//! Creating a container (pull, create, start) may take long, so it runs in a task of its own;
//! meanwhile the task reports `preparing`. Its outcome (a failure) is kept until the task is no
//! longer assigned.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use hyper::StatusCode;
use serde_json::json;

use super::engine_client::{ContainerInfo, Distribution, EngineClient, EngineClientError};
use super::{Assignment, BoxFuture, Executor, Observed};
use crate::model::{ContainerStatus, FileData, Task, TaskState, TaskStatus};
use crate::state::now_rfc3339;

pub const TASK_ID_LABEL: &str = "com.docker.swarm.task.id";
pub const SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";
pub const NODE_ID_LABEL: &str = "com.docker.swarm.node.id";
pub const TASK_NAME_LABEL: &str = "com.docker.swarm.task.name";
pub const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";

/// What became of a create that ended without a container.
#[derive(Debug, Clone)]
struct Failure {
    state: TaskState,
    err: String,
}

#[derive(Default)]
struct Creates {
    /// Tasks whose container is being created.
    running: BTreeSet<String>,
    /// Creates that failed, by task id.
    failed: HashMap<String, Failure>,
}

pub struct EngineExecutor {
    client: EngineClient,
    creates: Arc<Mutex<Creates>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The manifest digest `image` names in its registry, through the node's engine (for the
/// agent's `GET /distribution/{name}/json`).
pub async fn distribution(socket: &Path, image: &str) -> Result<Distribution, EngineClientError> {
    EngineClient::new(socket).distribution(image).await
}

impl EngineExecutor {
    /// The name of `task_id`'s container on this node.
    async fn task_container(&self, task_id: &str) -> Result<String, String> {
        let containers = self
            .client
            .list_labelled(TASK_ID_LABEL)
            .await
            .map_err(|e| e.to_string())?;
        containers
            .into_iter()
            .find(|c| c.labels.get(TASK_ID_LABEL).map(String::as_str) == Some(task_id))
            .map(|c| c.name)
            .ok_or_else(|| format!("task {task_id} has no container on this node"))
    }

    pub fn new(socket: PathBuf) -> Self {
        Self {
            client: EngineClient::new(socket),
            creates: Arc::default(),
        }
    }

    async fn reconcile_now(&self, assignment: &Assignment) -> Vec<Observed> {
        let containers = match self.client.list_labelled(TASK_ID_LABEL).await {
            Ok(list) => list,
            Err(e) => {
                // Without the engine nothing can be known: every task keeps its status, and
                // those not yet started fail to (they would wait forever otherwise).
                tracing::warn!("executor: {e}");
                return assignment
                    .tasks
                    .iter()
                    .map(|t| Observed {
                        task_id: t.id.clone(),
                        status: if t.status.state < TaskState::Preparing
                            && t.desired_state <= TaskState::Running
                        {
                            status(
                                t,
                                TaskState::Rejected,
                                "engine unavailable",
                                &e.to_string(),
                                None,
                            )
                        } else {
                            t.status.clone()
                        },
                    })
                    .collect();
            }
        };
        let by_task: HashMap<&str, &ContainerInfo> = containers
            .iter()
            .filter_map(|c| Some((c.labels.get(TASK_ID_LABEL)?.as_str(), c)))
            .collect();
        let assigned: BTreeSet<&str> = assignment.tasks.iter().map(|t| t.id.as_str()).collect();
        let mut work = tokio::task::JoinSet::new();
        // Containers of tasks no longer assigned go.
        for c in &containers {
            let task = c.labels.get(TASK_ID_LABEL).map(String::as_str);
            if task.is_some_and(|t| !assigned.contains(t)) {
                let client = self.client.clone();
                let name = c.name.clone();
                work.spawn(async move {
                    if let Err(e) = client.remove(&name).await {
                        tracing::warn!("executor: removing {name}: {e}");
                    }
                });
            }
        }
        {
            let mut creates = lock(&self.creates);
            creates
                .failed
                .retain(|id, _| assigned.contains(id.as_str()));
        }
        let mut observed = Vec::new();
        for task in &assignment.tasks {
            let container = by_task.get(task.id.as_str()).copied();
            let status = self.task(task, container, assignment, &mut work);
            observed.push(Observed {
                task_id: task.id.clone(),
                status,
            });
        }
        // Stops and removals finish before the statuses are returned; creates go on.
        while work.join_next().await.is_some() {}
        observed
    }

    /// One task: what to do about it (spawned on `work`) and its status now.
    fn task(
        &self,
        task: &Task,
        container: Option<&ContainerInfo>,
        assignment: &Assignment,
        work: &mut tokio::task::JoinSet<()>,
    ) -> TaskStatus {
        let ended_before = task.status.state >= TaskState::Complete;
        if task.desired_state >= TaskState::Shutdown {
            let Some(c) = container else {
                return if ended_before {
                    task.status.clone()
                } else {
                    status(task, TaskState::Shutdown, "shutdown", "", None)
                };
            };
            let client = self.client.clone();
            let name = c.name.clone();
            let live = matches!(
                c.state.as_str(),
                "waiting" | "starting" | "running" | "restarting"
            );
            if task.desired_state >= TaskState::Remove {
                work.spawn(async move {
                    if let Err(e) = client.remove(&name).await {
                        tracing::warn!("executor: removing {name}: {e}");
                    }
                });
            } else if live {
                work.spawn(async move {
                    if let Err(e) = client.stop(&name).await {
                        tracing::warn!("executor: stopping {name}: {e}");
                    }
                });
            }
            if ended_before {
                return task.status.clone();
            }
            // It had ended by itself before the stop: that end is its status.
            if c.state == "exited" {
                return from_container(task, c);
            }
            return status(
                task,
                TaskState::Shutdown,
                "shutdown",
                "",
                Some(container_status(c)),
            );
        }
        if ended_before {
            return task.status.clone();
        }
        if let Some(c) = container {
            return from_container(task, c);
        }
        // Desired `ready` (a stop-first update's replacement): not started before the old
        // task of its slot stopped and the manager says `running`.
        if task.desired_state < TaskState::Running {
            return task.status.clone();
        }
        {
            let creates = lock(&self.creates);
            if creates.running.contains(&task.id) {
                return status(task, TaskState::Preparing, "preparing", "", None);
            }
            if let Some(failure) = creates.failed.get(&task.id) {
                return status(
                    task,
                    failure.state,
                    &message(failure.state),
                    &failure.err,
                    None,
                );
            }
        }
        if task.status.state >= TaskState::Starting {
            // It was started, and the engine no longer has it.
            return status(
                task,
                TaskState::Failed,
                "failed",
                "task: the container is gone from the engine",
                None,
            );
        }
        let body = match run_request(task, assignment) {
            Ok(body) => body,
            Err(e) => return status(task, TaskState::Rejected, "rejected", &e, None),
        };
        lock(&self.creates).running.insert(task.id.clone());
        let client = self.client.clone();
        let creates = self.creates.clone();
        let id = task.id.clone();
        // Not on `work`: the reconcile returns `preparing` while the image is pulled.
        tokio::spawn(async move {
            let result = client.run(&body).await;
            let mut creates = lock(&creates);
            creates.running.remove(&id);
            let failure = match result {
                Ok(_) => None,
                // The name is taken: a create of an earlier agent is still under way.
                Err(EngineClientError::Refused {
                    status: StatusCode::CONFLICT,
                    ..
                }) => None,
                Err(EngineClientError::Refused { status, message })
                    if status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST =>
                {
                    Some(Failure {
                        state: TaskState::Rejected,
                        err: message,
                    })
                }
                Err(e) => Some(Failure {
                    state: TaskState::Failed,
                    err: e.to_string(),
                }),
            };
            if let Some(failure) = failure {
                tracing::warn!("executor: task {id}: {}", failure.err);
                creates.failed.insert(id, failure);
            }
        });
        status(task, TaskState::Preparing, "preparing", "", None)
    }
}

fn message(state: TaskState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn container_status(c: &ContainerInfo) -> ContainerStatus {
    ContainerStatus {
        container_id: c.name.clone(),
        pid: c.pid.unwrap_or(0),
        exit_code: c.exit_code.unwrap_or(0),
    }
}

/// A task's status from its container's.
fn from_container(task: &Task, c: &ContainerInfo) -> TaskStatus {
    let cs = Some(container_status(c));
    match (c.state.as_str(), c.health.as_deref()) {
        ("running", None | Some("healthy")) => status(task, TaskState::Running, "started", "", cs),
        ("running", Some("unhealthy")) => status(
            task,
            TaskState::Failed,
            "failed",
            &format!(
                "task: container is unhealthy: {}",
                c.health_output.as_deref().unwrap_or("")
            ),
            cs,
        ),
        ("running", Some(_)) | ("waiting" | "starting" | "restarting", _) => {
            status(task, TaskState::Starting, "starting", "", cs)
        }
        ("exited" | "stopped", _) if c.error.is_some() && c.exit_code.is_none() => status(
            task,
            TaskState::Failed,
            "failed",
            &format!(
                "starting container failed: {}",
                c.error.as_deref().unwrap_or("")
            ),
            cs,
        ),
        ("exited" | "stopped", _) => match c.exit_code {
            Some(0) => status(task, TaskState::Complete, "finished", "", cs),
            Some(code) => {
                let oom = if c.oom_killed == Some(true) {
                    " (out of memory)"
                } else {
                    ""
                };
                status(
                    task,
                    TaskState::Failed,
                    "failed",
                    &format!("task: non-zero exit ({code}){oom}"),
                    cs,
                )
            }
            None => status(
                task,
                TaskState::Failed,
                "failed",
                &format!(
                    "task: the container ended: {}",
                    c.last_exit.as_deref().unwrap_or("exit status unknown")
                ),
                cs,
            ),
        },
        _ => status(
            task,
            TaskState::Failed,
            "failed",
            c.error.as_deref().unwrap_or("the container cannot run"),
            cs,
        ),
    }
}

/// The status to report: the task's own when nothing changed (so its timestamp stays), and
/// never a state behind the one it has.
fn status(
    task: &Task,
    state: TaskState,
    message: &str,
    err: &str,
    container: Option<ContainerStatus>,
) -> TaskStatus {
    let old = &task.status;
    if state < old.state
        || (state == old.state
            && old.message == message
            && old.err == err
            && (container.is_none() || old.container_status == container))
    {
        return old.clone();
    }
    TaskStatus {
        timestamp: now_rfc3339(),
        state,
        message: message.to_owned(),
        err: err.to_owned(),
        container_status: container.or_else(|| old.container_status.clone()),
        port_status: old.port_status.clone(),
    }
}

/// A name the engine takes (letters, digits, `_.-`, at most 64) that holds the task's id.
fn container_name(task: &Task) -> String {
    let service = task
        .labels
        .get(SERVICE_NAME_LABEL)
        .cloned()
        .or_else(|| {
            task.name
                .rsplit_once('.')
                .map(|(service, _)| service.to_owned())
        })
        .unwrap_or_else(|| task.service_id.clone());
    let middle = if task.slot > 0 {
        task.slot.to_string()
    } else {
        task.node_id.clone()
    };
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let id = clean(&task.id);
    let room = 64usize.saturating_sub(id.len() + 1);
    let mut prefix = clean(&format!("{service}.{middle}"));
    prefix.truncate(room);
    let prefix = prefix.trim_start_matches(['.', '-']);
    if prefix.is_empty() {
        id
    } else {
        format!("{prefix}.{id}")
    }
}

/// Nanoseconds as the engine's duration text.
fn nanos(n: Option<i64>) -> Option<String> {
    n.filter(|n| *n > 0).map(|n| format!("{n}ns"))
}

/// The engine's run request for a task: Docker's ContainerSpec, the task's labels, its
/// secrets and configs as files on the container's tmpfs, the node's network.
fn run_request(task: &Task, assignment: &Assignment) -> Result<serde_json::Value, String> {
    let spec = task
        .spec
        .container_spec
        .as_ref()
        .ok_or("the task has no container spec")?;
    if spec.image.trim().is_empty() {
        return Err("the task's container spec names no image".to_owned());
    }
    let mut labels: BTreeMap<String, String> = spec.labels.clone();
    labels.insert(TASK_ID_LABEL.to_owned(), task.id.clone());
    labels.insert(SERVICE_ID_LABEL.to_owned(), task.service_id.clone());
    labels.insert(NODE_ID_LABEL.to_owned(), task.node_id.clone());
    let name = container_name(task);
    labels.insert(
        TASK_NAME_LABEL.to_owned(),
        name.rsplit_once('.')
            .map_or(name.clone(), |(n, _)| n.to_owned()),
    );
    let mut body = json!({
        "image": spec.image,
        "name": name,
        "restart": "no",
        "labels": labels,
        "network": "host",
        "env": spec.env,
    });
    if !spec.command.is_empty() {
        body["command"] = json!(spec.command);
        body["args"] = json!(spec.args);
    } else if !spec.args.is_empty() {
        body["args"] = json!(spec.args);
    }
    if !spec.dir.is_empty() {
        body["workdir"] = json!(spec.dir);
    }
    if !spec.user.is_empty() {
        body["user"] = json!(spec.user);
    }
    if !spec.hostname.is_empty() {
        body["hostname"] = json!(spec.hostname);
    }
    if let Some(init) = spec.init {
        body["init"] = json!(init);
    }
    if let Some(grace) = nanos(spec.stop_grace_period) {
        body["stopGracePeriod"] = json!(grace);
    }
    let mounts: Vec<_> = spec
        .mounts
        .iter()
        .map(|m| {
            let kind = if m.kind.is_empty() {
                "volume"
            } else {
                m.kind.as_str()
            };
            let mut mount = json!({"type": kind, "target": m.target, "readonly": m.read_only});
            if !m.source.is_empty() {
                mount["source"] = json!(m.source);
            }
            mount
        })
        .collect();
    body["mounts"] = json!(mounts);
    let mut files = Vec::new();
    fn find<'l>(
        list: &'l [FileData],
        id: &Option<String>,
        what: &str,
    ) -> Result<&'l FileData, String> {
        let id = id.as_deref().unwrap_or("");
        list.iter()
            .find(|f| f.id == id)
            .ok_or_else(|| format!("{what} {id} was not sent to this node"))
    }
    for (reference, secret) in spec
        .secrets
        .iter()
        .map(|r| (r, true))
        .chain(spec.configs.iter().map(|r| (r, false)))
    {
        let (data, default_dir) = if secret {
            (
                find(&assignment.secrets, &reference.secret_id, "secret")?,
                "/run/secrets/",
            )
        } else {
            (
                find(&assignment.configs, &reference.config_id, "config")?,
                "/",
            )
        };
        let Some(file) = &reference.file else {
            continue;
        };
        let target = if file.name.starts_with('/') {
            file.name.clone()
        } else {
            format!("{default_dir}{}", file.name)
        };
        let id = |s: &str| s.trim().parse::<u32>().unwrap_or(0);
        files.push(json!({
            "target": target,
            "data": base64::engine::general_purpose::STANDARD.encode(&data.data),
            "uid": id(&file.uid),
            "gid": id(&file.gid),
            "mode": if file.mode == 0 { 0o444 } else { file.mode },
        }));
    }
    body["files"] = json!(files);
    if let Some(limits) = task.spec.resources.as_ref().and_then(|r| r.limits.as_ref()) {
        let mut resources = json!({});
        if limits.memory_bytes > 0 {
            resources["memory"] = json!(limits.memory_bytes);
        }
        if limits.nano_cpus > 0 {
            resources["nanoCpus"] = json!(limits.nano_cpus);
        }
        if limits.pids > 0 {
            resources["pids"] = json!(limits.pids);
        }
        body["resources"] = resources;
    }
    if let Some(h) = &spec.healthcheck
        && !h.test.is_empty()
    {
        let mut health = json!({"test": h.test});
        for (key, value) in [
            ("interval", h.interval),
            ("timeout", h.timeout),
            ("startPeriod", h.start_period),
        ] {
            if let Some(v) = nanos(value) {
                health[key] = json!(v);
            }
        }
        if let Some(r) = h.retries.filter(|r| *r > 0) {
            health["retries"] = json!(r);
        }
        body["healthcheck"] = health;
    }
    Ok(body)
}

impl Executor for EngineExecutor {
    fn reconcile<'a>(&'a self, assignment: &'a Assignment) -> BoxFuture<'a, Vec<Observed>> {
        Box::pin(self.reconcile_now(assignment))
    }

    fn logs<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            let name = self.task_container(task_id).await?;
            let text = self.client.logs(&name).await.map_err(|e| e.to_string())?;
            Ok(text.lines().map(str::to_owned).collect())
        })
    }

    fn log_lines<'a>(
        &'a self,
        task_id: &'a str,
        follow: bool,
        tail: Option<u64>,
    ) -> BoxFuture<'a, Result<tokio::sync::mpsc::Receiver<String>, String>> {
        Box::pin(async move {
            let name = self.task_container(task_id).await?;
            self.client
                .log_lines(&name, follow, tail)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_fit_the_engine_and_hold_the_task_id() {
        let task = Task {
            id: "abcdefghijklmnopqrstuvwxy".to_owned(),
            name: "web.3".to_owned(),
            slot: 3,
            service_id: "svc".to_owned(),
            ..Default::default()
        };
        assert_eq!(container_name(&task), "web.3.abcdefghijklmnopqrstuvwxy");
        let long = Task {
            name: format!("{}.1", "x".repeat(80)),
            ..task
        };
        let name = container_name(&long);
        assert!(
            name.len() <= 64 && name.ends_with(".abcdefghijklmnopqrstuvwxy"),
            "{name}"
        );
    }
}
