//! The restart supervisor: whether, and when, a slot whose task ended gets a new task, by the
//! task's `RestartPolicy` (condition `any` | `on-failure` | `none`, default `any`; `Delay`,
//! default 5 s; `MaxAttempts` within `Window`, 0 meaning unlimited and forever).

use std::time::{Duration, SystemTime};

use super::slots::Key;
use super::{Memory, timestamp};
use crate::model::{Task, TaskState};
use crate::objects::Service;

pub const DEFAULT_DELAY: Duration = Duration::from_secs(5);

fn nanos(n: Option<i64>) -> Option<Duration> {
    n.filter(|&n| n >= 0)
        .map(|n| Duration::from_nanos(n as u64))
}

pub enum Decision {
    Now,
    Later,
    /// The policy says no more: the task is shut down and its slot stays dead.
    Never,
}

/// Whether the ended `task` of `key` is to be replaced now; counts the restart when it is.
pub fn decide(
    service: &Service,
    key: &Key,
    task: &Task,
    memory: &mut Memory,
    now: SystemTime,
) -> Decision {
    let policy = task.spec.restart_policy.clone().unwrap_or_default();
    let restart = match policy.condition.as_deref() {
        Some("none") => false,
        Some("on-failure") => task.status.state != TaskState::Complete,
        _ => true,
    };
    if !restart {
        return Decision::Never;
    }
    let delay = nanos(policy.delay).unwrap_or(DEFAULT_DELAY);
    if now.duration_since(timestamp(task)).unwrap_or_default() < delay {
        return Decision::Later;
    }
    let history = memory
        .restarts
        .entry((service.id.clone(), key.as_string()))
        .or_default();
    if let Some(window) = nanos(policy.window).filter(|w| !w.is_zero()) {
        history.retain(|t| now.duration_since(*t).unwrap_or_default() < window);
    }
    let max = policy.max_attempts.unwrap_or(0);
    if max > 0 && history.len() as u64 >= max {
        return Decision::Never;
    }
    history.push(now);
    Decision::Now
}
