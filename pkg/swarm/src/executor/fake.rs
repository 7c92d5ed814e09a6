//! A container-less executor (`--executor fake`): every task runs at once and runs until told
//! to stop, unless its environment steers it. Everything else (the Raft store, orchestrators,
//! scheduler, dispatcher and this node's session) is real, so tests and scale runs exercise the
//! whole manager side without an engine.
//!
//! Steering, through the task's `ContainerSpec.Env`:
//! - `SLIPWAY_FAKE_EXIT=N`: the task ends with exit code N (0: `complete`, else `failed`) after
//!   `SLIPWAY_FAKE_DELAY_MS` (default 500) of running.
//! - `SLIPWAY_FAKE_REJECT=message`: the task is `rejected` with that error.
//! - `SLIPWAY_FAKE_UNHEALTHY=1`: the task stays `starting`, as behind a health check that never
//!   passes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Assignment, BoxFuture, Executor, Observed};
use crate::model::{ContainerStatus, Task, TaskState, TaskStatus};

#[derive(Default)]
pub struct FakeExecutor {
    /// When each task this node runs started, and the status it reached.
    tasks: Mutex<HashMap<String, (Instant, TaskStatus)>>,
}

impl FakeExecutor {
    pub fn new() -> FakeExecutor {
        FakeExecutor::default()
    }
}

fn env<'a>(task: &'a Task, key: &str) -> Option<&'a str> {
    task.spec
        .container_spec
        .as_ref()?
        .env
        .iter()
        .find_map(|e| e.strip_prefix(key)?.strip_prefix('='))
}

fn status(state: TaskState, message: &str, exit_code: i64, err: String) -> TaskStatus {
    TaskStatus {
        timestamp: crate::state::now_rfc3339(),
        state,
        message: message.into(),
        err,
        container_status: Some(ContainerStatus {
            container_id: String::new(),
            pid: 0,
            exit_code,
        }),
        port_status: serde_json::json!({}),
    }
}

impl FakeExecutor {
    fn observe(&self, task: &Task) -> TaskStatus {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        // Desired `ready`: waits, as the engine executor does, for `running`.
        if task.desired_state < TaskState::Running && !tasks.contains_key(&task.id) {
            return task.status.clone();
        }
        let now = Instant::now();
        let (started, current) = tasks.entry(task.id.clone()).or_insert_with(|| {
            let initial = match env(task, "SLIPWAY_FAKE_REJECT") {
                Some(reason) => status(TaskState::Rejected, "rejected", 0, reason.to_string()),
                None if env(task, "SLIPWAY_FAKE_UNHEALTHY").is_some() => {
                    status(TaskState::Starting, "starting", 0, String::new())
                }
                None => status(TaskState::Running, "started", 0, String::new()),
            };
            (now, initial)
        });
        if current.state >= TaskState::Complete {
            return current.clone();
        }
        if task.desired_state >= TaskState::Shutdown {
            *current = status(TaskState::Shutdown, "shutdown", 0, String::new());
            return current.clone();
        }
        if let Some(code) = env(task, "SLIPWAY_FAKE_EXIT").and_then(|c| c.parse::<i64>().ok()) {
            let delay = env(task, "SLIPWAY_FAKE_DELAY_MS")
                .and_then(|d| d.parse().ok())
                .unwrap_or(500);
            if now.duration_since(*started) >= Duration::from_millis(delay) {
                *current = if code == 0 {
                    status(TaskState::Complete, "finished", 0, String::new())
                } else {
                    status(
                        TaskState::Failed,
                        "started",
                        code,
                        format!("task: non-zero exit ({code})"),
                    )
                };
            }
        }
        current.clone()
    }
}

impl Executor for FakeExecutor {
    fn reconcile<'a>(&'a self, assignment: &'a Assignment) -> BoxFuture<'a, Vec<Observed>> {
        Box::pin(async move {
            let observed: Vec<Observed> = assignment
                .tasks
                .iter()
                .map(|task| Observed {
                    task_id: task.id.clone(),
                    status: self.observe(task),
                })
                .collect();
            let assigned: std::collections::HashSet<&str> =
                assignment.tasks.iter().map(|t| t.id.as_str()).collect();
            let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            tasks.retain(|id, _| assigned.contains(id.as_str()));
            observed
        })
    }

    fn logs<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            if tasks.contains_key(task_id) {
                Ok(vec![format!("fake task {task_id}")])
            } else {
                Err(format!("task {task_id} is not on this node"))
            }
        })
    }
}
