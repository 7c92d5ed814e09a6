//! The node's side of tasks, on every node (managers run tasks too): it keeps an `Assignments`
//! stream open with the leader, hands each assignment to the executor, reconciles again every
//! second (containers end on their own), and sends the leader every task status that changed.
//! Until the first assignment arrives after a start the executor is left alone, so an agent
//! restart never stops the tasks it finds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::daemon::{Daemon, Session};
use crate::dispatcher::{WireAssignment, WireStatus};
use crate::executor::{Assignment, Executor};
use crate::model::TaskStatus;
use crate::proto::{self, control_client::ControlClient};

const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// `--executor`: what runs the tasks of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExecutorKind {
    /// Containers through the local Slipway engine.
    #[default]
    Engine,
    /// No containers: tasks run at once (tests, scale runs).
    Fake,
}

/// The executor of `kind`; `None` when this build has none of that kind.
pub fn build(kind: ExecutorKind, engine: &Path) -> Option<Arc<dyn Executor>> {
    match kind {
        ExecutorKind::Fake => Some(Arc::new(crate::executor::fake::FakeExecutor::new())),
        ExecutorKind::Engine => Some(Arc::new(crate::executor::engine::EngineExecutor::new(
            engine.to_path_buf(),
        ))),
    }
}

fn same(a: &TaskStatus, b: &TaskStatus) -> bool {
    a.state == b.state
        && a.message == b.message
        && a.err == b.err
        && a.container_status == b.container_status
}

pub async fn run(daemon: Daemon, session: Weak<Session>, executor: Arc<dyn Executor>) {
    let latest: Arc<Mutex<Option<Arc<Assignment>>>> = Arc::default();
    let changed = Arc::new(tokio::sync::Notify::new());
    let reader = tokio::spawn(read_assignments(
        session.clone(),
        latest.clone(),
        changed.clone(),
        executor.clone(),
    ));
    let _abort = AbortOnDrop(reader);
    let _ = daemon;
    let mut sent: HashMap<String, TaskStatus> = HashMap::new();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
        let Some(assignment) = latest.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            if session.upgrade().is_none() {
                return;
            }
            continue;
        };
        // The leader does not send the assignment again for the statuses this node reported
        // (`keeps_own_statuses`): what it sent and the leader took is the task's status. The
        // assignment is copied only when such a status is not in it yet, and the copy kept.
        let behind = |task: &crate::model::Task| {
            sent.get(&task.id)
                .is_some_and(|s| s.state >= task.status.state && !same(s, &task.status))
        };
        let assignment = if assignment.tasks.iter().any(behind) {
            let mut copy = (*assignment).clone();
            for task in &mut copy.tasks {
                if let Some(s) = sent.get(&task.id)
                    && s.state >= task.status.state
                {
                    task.status = s.clone();
                }
            }
            let copy = Arc::new(copy);
            let mut latest = latest.lock().unwrap_or_else(|e| e.into_inner());
            if latest.as_ref().is_some_and(|l| Arc::ptr_eq(l, &assignment)) {
                *latest = Some(copy.clone());
            }
            copy
        } else {
            assignment
        };
        let observed = executor.reconcile(&assignment).await;
        let known: HashMap<&str, &TaskStatus> = assignment
            .tasks
            .iter()
            .map(|t| (t.id.as_str(), &t.status))
            .collect();
        sent.retain(|id, _| known.contains_key(id.as_str()));
        let changes: Vec<WireStatus> = observed
            .into_iter()
            .filter(|o| sent.get(&o.task_id).is_none_or(|s| !same(s, &o.status)))
            .filter(|o| {
                // Nothing to say about a task the manager already knows in this state.
                known
                    .get(o.task_id.as_str())
                    .is_none_or(|s| !same(s, &o.status))
            })
            .map(|o| WireStatus {
                task_id: o.task_id,
                status: o.status,
            })
            .collect();
        if changes.is_empty() {
            continue;
        }
        let Some(s) = session.upgrade() else { return };
        let Some(addr) = s.leader() else { continue };
        let Ok(channel) = s.channel(&addr) else {
            continue;
        };
        drop(s);
        tracing::trace!("sending {} task statuses", changes.len());
        let payload = serde_json::to_vec(&changes).unwrap_or_default();
        let mut request = tonic::Request::new(proto::UpdateTaskStatusRequest { statuses: payload });
        request.set_timeout(Duration::from_secs(5));
        match ControlClient::new(channel)
            .update_task_status(request)
            .await
        {
            Ok(_) => {
                for c in changes {
                    sent.insert(c.task_id, c.status);
                }
            }
            Err(e) => tracing::debug!("sending task statuses: {}", e.message()),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_assignments(
    session: Weak<Session>,
    latest: Arc<Mutex<Option<Arc<Assignment>>>>,
    changed: Arc<tokio::sync::Notify>,
    executor: Arc<dyn Executor>,
) {
    loop {
        let stream = {
            let Some(s) = session.upgrade() else { return };
            match s.leader().map(|addr| s.channel(&addr)) {
                Some(Ok(channel)) => Some(channel),
                _ => None,
            }
        };
        let Some(channel) = stream else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = match ControlClient::new(channel)
            .assignments(proto::AssignmentsRequest {
                keeps_own_statuses: true,
                incremental: true,
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::debug!("opening the assignments stream: {}", e.message());
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // What this stream gave so far (its first message is whole, the next ones changes).
        let mut base: Option<Arc<Assignment>> = None;
        while let Ok(Some(message)) = stream.message().await {
            match serde_json::from_slice::<WireAssignment>(&message.assignment) {
                Ok(mut wire) => {
                    let requests = std::mem::take(&mut wire.log_requests);
                    if !requests.is_empty() {
                        tokio::spawn(crate::logs::answer(
                            session.clone(),
                            executor.clone(),
                            requests,
                        ));
                    }
                    tracing::trace!(
                        "an assignment of {} tasks, {} removed",
                        wire.tasks.len(),
                        wire.removed.len()
                    );
                    let whole = Arc::new(wire.merged_into(base.as_deref()));
                    base = Some(whole.clone());
                    *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(whole);
                    changed.notify_one();
                }
                Err(e) => tracing::warn!("a malformed assignment: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
