//! The node's side of tasks: an executor turns the tasks a manager assigned to this node into
//! containers and reports what they do. The agent calls `reconcile` whenever its assignment
//! changes and every few seconds; it forwards each status that changed to the dispatcher.
//!
//! Implementations: the real one drives the local Slipway engine's API; a fake one (for scale
//! tests) runs no container.

pub mod engine;
pub mod engine_client;
pub mod fake;

use std::future::Future;
use std::pin::Pin;

use crate::model::{FileData, Task, TaskStatus};

/// What a node was told to run: every task assigned to it whose `DesiredState` is not yet
/// `remove`, with the secrets and configs those tasks use (and no other).
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    pub tasks: Vec<Task>,
    pub secrets: Vec<FileData>,
    pub configs: Vec<FileData>,
}

/// A task's status as the node sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub task_id: String,
    pub status: TaskStatus,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Executor: Send + Sync + 'static {
    /// Brings the node's containers in line with `assignment`, then returns the status of every
    /// assigned task:
    /// - `DesiredState` `running` (or `ready`): the container exists and runs (pulled, created
    ///   and started once; a container that ended is *not* started again: the task reports
    ///   `complete` or `failed` with `ContainerStatus.ExitCode`, and the manager's restart
    ///   supervisor makes a new task). States pass `preparing` (pull) → `starting` → `running`;
    ///   with a health check the task stays `starting` until healthy and `failed` when
    ///   unhealthy.
    /// - `DesiredState` `shutdown` or later: the container is stopped (its grace period) and the
    ///   task reports `shutdown` (or its end state if it had ended first).
    /// - A container of a task no longer assigned is stopped and removed; so is a task's
    ///   container once the task's `DesiredState` is `remove`.
    ///
    /// It must be idempotent and survive a restart of the agent or of the engine: containers
    /// are found again by their labels (`com.docker.swarm.task.id`, `.service.id`,
    /// `.node.id`), never duplicated. Errors become a task's `failed`/`rejected` status with
    /// `Err` set, never a panic.
    fn reconcile<'a>(&'a self, assignment: &'a Assignment) -> BoxFuture<'a, Vec<Observed>>;

    /// A task's container log, one line per entry, for `/services/{id}/logs` and
    /// `/tasks/{id}/logs`.
    fn logs<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<Vec<String>, String>>;

    /// A task's container log as it comes: the last `tail` lines kept so far (all of them
    /// without), then, with `follow`, each new line until the container's log ends or the
    /// receiver is dropped. By default what `logs` gives, once.
    fn log_lines<'a>(
        &'a self,
        task_id: &'a str,
        follow: bool,
        tail: Option<u64>,
    ) -> BoxFuture<'a, Result<tokio::sync::mpsc::Receiver<String>, String>> {
        let _ = follow;
        Box::pin(async move {
            let mut lines = self.logs(task_id).await?;
            if let Some(tail) = tail {
                let skip = lines
                    .len()
                    .saturating_sub(usize::try_from(tail).unwrap_or(usize::MAX));
                lines.drain(..skip);
            }
            let (tx, rx) = tokio::sync::mpsc::channel(lines.len().max(1));
            for line in lines {
                let _ = tx.try_send(line);
            }
            Ok(rx)
        })
    }
}
