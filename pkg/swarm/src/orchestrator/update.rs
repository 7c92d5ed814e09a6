//! Rolling updates and rollbacks, server side as SwarmKit does them: the slots whose current
//! task runs an older spec are replaced `Parallelism` at a time (0: all at once); the next batch
//! starts when the last one runs and `Delay` passed. A replacement that ends within `Monitor`
//! of the batch counts as a failure; past `MaxFailureRatio`, `FailureAction` pauses the update,
//! rolls it back (the previous spec returns, with `RollbackConfig`) or continues. `Order`
//! `stop-first` shuts the old task down as the new one is created, and starts the new one only
//! once the old one stopped; `start-first` keeps the old one until the new one runs.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::slots::Key;
use super::{Memory, Plan, ended, new_task};
use crate::model::{Task, TaskSpec, TaskState, UpdateConfig};
use crate::objects::{ObjectCommand, Service, TaskOp, UpdateStatus};

#[derive(Default)]
pub struct Progress {
    /// The template this update rolls out; another one starts the count afresh.
    template: crate::shared::Shared<TaskSpec>,
    /// The new tasks of the batch in flight.
    batch: Vec<String>,
    /// When the whole batch ran.
    batch_running_at: Option<SystemTime>,
    /// Tasks of earlier batches still monitored, with when their batch ran.
    monitored: Vec<(String, SystemTime)>,
    /// The slots this update had to change when it began: the failure ratio's denominator, as
    /// in SwarmKit (5 slots, ratio 0.25: the second failure acts).
    total: usize,
    failed: HashSet<String>,
}

fn nanos(n: Option<i64>, default: Duration) -> Duration {
    n.filter(|&n| n >= 0)
        .map(|n| Duration::from_nanos(n as u64))
        .unwrap_or(default)
}

fn status(state: &str, message: String, stamp: &str, done: bool) -> UpdateStatus {
    UpdateStatus {
        state: state.into(),
        started_at: stamp.into(),
        completed_at: if done { stamp.into() } else { String::new() },
        message,
    }
}

#[allow(clippy::too_many_arguments)]
pub fn step(
    service: &Service,
    tasks: &std::collections::BTreeMap<String, Task>,
    dirty: &[(Key, &Task)],
    memory: &mut Memory,
    now: SystemTime,
    stamp: &str,
    plan: &mut Plan,
) {
    let state = service
        .update_status
        .as_ref()
        .map(|s| s.state.as_str())
        .unwrap_or("");
    if state == "paused" || state == "rollback_paused" {
        return;
    }
    let rolling_back = state.starts_with("rollback");
    let config: UpdateConfig = if rolling_back {
        service.spec.rollback_config.clone()
    } else {
        service.spec.update_config.clone()
    }
    .unwrap_or(UpdateConfig {
        parallelism: 1,
        ..UpdateConfig::default()
    });
    let progress = memory.updates.entry(service.id.clone()).or_default();
    if progress.template != service.spec.task_template {
        *progress = Progress {
            template: service.spec.task_template.clone(),
            total: dirty.len(),
            ..Progress::default()
        };
    }
    let monitor = nanos(config.monitor, Duration::from_secs(5));
    let delay = nanos(config.delay, Duration::ZERO);
    progress
        .monitored
        .retain(|(_, since)| now.duration_since(*since).unwrap_or_default() < monitor);
    // Failures among the new tasks.
    let watched: Vec<String> = progress
        .batch
        .iter()
        .cloned()
        .chain(progress.monitored.iter().map(|(id, _)| id.clone()))
        .collect();
    let mut failure: Option<String> = None;
    for id in watched {
        let ended_badly = tasks
            .get(&id)
            .is_some_and(|t| ended(t) && t.desired_state <= TaskState::Running);
        if ended_badly && progress.failed.insert(id.clone()) {
            failure = Some(id);
        }
    }
    if let Some(id) = failure {
        let ratio = config.max_failure_ratio.unwrap_or(0.0);
        let total = progress.total.max(1) as f64;
        if progress.failed.len() as f64 / total > ratio {
            let action = config.failure_action.as_deref().unwrap_or("pause");
            match (action, rolling_back) {
                ("continue", _) => {}
                ("rollback", false) => {
                    memory.updates.remove(&service.id);
                    plan.services.push(ObjectCommand::SetUpdateStatus {
                        id: service.id.clone(),
                        status: Some(status(
                            "rollback_started",
                            format!("update rolled back due to failure or early termination of task {id}"),
                            stamp,
                            false,
                        )),
                        rollback: true,
                        now: stamp.into(),
                    });
                    return;
                }
                _ => {
                    let paused = if rolling_back {
                        "rollback_paused"
                    } else {
                        "paused"
                    };
                    plan.services.push(ObjectCommand::SetUpdateStatus {
                        id: service.id.clone(),
                        status: Some(status(
                            paused,
                            format!(
                                "update paused due to failure or early termination of task {id}"
                            ),
                            stamp,
                            false,
                        )),
                        rollback: false,
                        now: stamp.into(),
                    });
                    return;
                }
            }
        }
    }
    // The batch in flight: every new task runs (or ended, counted above), then the delay.
    let running = |id: &String| {
        tasks
            .get(id)
            .is_none_or(|t| t.status.state >= TaskState::Running)
    };
    if !progress.batch.is_empty() {
        if !progress.batch.iter().all(running) {
            return;
        }
        let since = *progress.batch_running_at.get_or_insert(now);
        if now.duration_since(since).unwrap_or_default() < delay {
            return;
        }
        let batch = std::mem::take(&mut progress.batch);
        progress
            .monitored
            .extend(batch.into_iter().map(|id| (id, since)));
        progress.batch_running_at = None;
    }
    if dirty.is_empty() {
        let done = match state {
            "updating" => Some(("completed", "update completed")),
            "rollback_started" => Some(("rollback_completed", "rollback completed")),
            _ => None,
        };
        if let Some((state, message)) = done
            && progress.monitored.is_empty()
        {
            let started = service
                .update_status
                .as_ref()
                .map(|s| s.started_at.clone())
                .unwrap_or_default();
            let mut s = status(state, message.into(), stamp, true);
            s.started_at = started;
            plan.services.push(ObjectCommand::SetUpdateStatus {
                id: service.id.clone(),
                status: Some(s),
                rollback: false,
                now: stamp.into(),
            });
        }
        return;
    }
    let parallelism = if config.parallelism == 0 {
        dirty.len()
    } else {
        config.parallelism as usize
    }
    .min(super::MAX_CREATES_PER_ROUND);
    let start_first = config.order.as_deref() == Some("start-first");
    for (key, old) in dirty.iter().take(parallelism) {
        let mut task = match key {
            Key::Slot(n) => new_task(service, *n, "", stamp),
            Key::Node(id) => new_task(service, 0, id, stamp),
        };
        progress.batch.push(task.id.clone());
        if !start_first {
            plan.ops.push(TaskOp::Desired {
                id: old.id.clone(),
                state: TaskState::Shutdown,
            });
            // Stop-first: the new task is placed but waits, desired `ready`, until the old one
            // stopped (its container may take its grace period); `slots` then makes it
            // `running`. Otherwise both would run at once for a moment.
            task.desired_state = TaskState::Ready;
        }
        plan.ops.push(TaskOp::Create(Box::new(task)));
    }
}
