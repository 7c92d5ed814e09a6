//! Running a command inside a running container, for `exec` and health checks.
//!
//! It uses libcontainer's tenant builder rather than a hand-written setns sequence: the builder
//! reads the container's state (kept by slipway-runtime in the engine's state directory) and
//! its `config.json`, joins every namespace of the container's process in the order the kernel
//! needs (user first), joins its cgroup (so the command counts against its limits), applies its
//! capabilities, `noNewPrivileges` and seccomp profile, and changes into its root. It starts the
//! process with the same raw clone3 path as a container's creation, so, like that, it is called
//! from one thread. The engine does not call it itself: [`exec_in_child`] runs it in a helper
//! process (`slipway-engine exec-container`), whose child the command is (`CLONE_PARENT`) and
//! which reaps it through a pidfd, so a command that hangs while joining the container (or a
//! container whose namespaces cannot be entered) holds a helper up, never the engine's API.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitPidFlag, waitpid};
use slipway_runtime::ExitStatus;
use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;

/// Output kept from one command (stdout and stderr together); the rest is read and dropped.
pub const MAX_OUTPUT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("container {id}: the command is empty")]
    NoCommand { id: String },
    #[error("container {id}: reading {path}: {message}")]
    Config {
        id: String,
        path: PathBuf,
        message: String,
    },
    #[error("container {id}: starting {command:?}: {message}")]
    Start {
        id: String,
        command: Vec<String>,
        message: String,
    },
    #[error("container {id}: running {command:?}: {message}")]
    Helper {
        id: String,
        command: Vec<String>,
        message: String,
    },
    #[error("container {id}: waiting for {command:?} (pid {pid}): {message}")]
    Wait {
        id: String,
        command: Vec<String>,
        pid: i32,
        message: String,
    },
}

/// How a command run in a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// `None` when it was killed for running past its timeout.
    pub status: Option<ExitStatus>,
    /// stdout and stderr, interleaved as written, at most [`MAX_OUTPUT`] bytes.
    pub output: String,
}

impl ExecOutcome {
    pub fn success(&self) -> bool {
        self.status.is_some_and(ExitStatus::success)
    }

    /// The shell's convention (128 + signal); 137 for a command killed at its timeout, which
    /// is a SIGKILL.
    pub fn exit_code(&self) -> i32 {
        self.status.map_or(137, ExitStatus::code)
    }
}

/// The user the container's own process runs as (`process.user` of `bundle/config.json`):
/// commands run as that user too.
fn container_user(id: &str, bundle: &Path) -> Result<(u32, u32, Vec<u32>), ExecError> {
    let path = bundle.join("config.json");
    let err = |message: String| ExecError::Config {
        id: id.to_owned(),
        path: path.clone(),
        message,
    };
    let text = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
    let config: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
    let user = &config["process"]["user"];
    let id_of = |key: &str| user[key].as_u64().and_then(|n| u32::try_from(n).ok());
    let gids = user["additionalGids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| g.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect()
        })
        .unwrap_or_default();
    Ok((id_of("uid").unwrap_or(0), id_of("gid").unwrap_or(0), gids))
}

/// Runs `command` in the running container `id` (state under `state_dir`, created from
/// `bundle`), with stdin from /dev/null, and waits at most `timeout` for it; then it is
/// killed (SIGKILL) and reaped.
pub async fn exec(
    state_dir: &Path,
    id: &str,
    bundle: &Path,
    command: &[String],
    timeout: Duration,
) -> Result<ExecOutcome, ExecError> {
    if command.first().is_none_or(String::is_empty) {
        return Err(ExecError::NoCommand { id: id.to_owned() });
    }
    let start_err = |message: String| ExecError::Start {
        id: id.to_owned(),
        command: command.to_vec(),
        message,
    };
    let (uid, gid, gids) = container_user(id, bundle)?;
    let (out_r, out_w) = std::io::pipe().map_err(|e| start_err(format!("a pipe: {e}")))?;
    let err_w = out_w
        .try_clone()
        .map_err(|e| start_err(format!("a pipe: {e}")))?;
    let stdin =
        std::fs::File::open("/dev/null").map_err(|e| start_err(format!("/dev/null: {e}")))?;
    let children_before = children();
    let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state_dir)
        .map_err(|e| start_err(e.to_string()))?
        .with_stdin(OwnedFd::from(stdin))
        .with_stdout(OwnedFd::from(out_w))
        .with_stderr(OwnedFd::from(err_w))
        .as_tenant()
        .with_container_args(command.to_vec())
        .with_user(Some(uid))
        .with_group(Some(gid))
        .with_additional_gids(gids)
        .with_detach(true)
        .build();
    let pid = match built {
        Ok(pid) => pid.as_raw(),
        Err(e) => {
            reap_failed_start(&children_before);
            return Err(start_err(e.to_string()));
        }
    };
    let wait_err = |message: String| ExecError::Wait {
        id: id.to_owned(),
        command: command.to_vec(),
        pid,
        message,
    };
    let pidfd = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| wait_err("not a process id".to_owned()))
        .and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                .map_err(|e| wait_err(format!("pidfd_open: {e}")))
        });
    let pidfd = match pidfd.and_then(|fd| {
        // SAFETY: the AsyncFd owns the descriptor and keeps it open while registered.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| wait_err(e.to_string()))
    }) {
        Ok(fd) => fd,
        Err(e) => {
            // Without a pidfd the process cannot be watched: kill and reap it by pid (it is
            // our child, so the pid is not recycled before the waitpid).
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = waitpid(nix::unistd::Pid::from_raw(pid), None);
            return Err(e);
        }
    };
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(out_r));
    let output = async move {
        let mut kept = Vec::new();
        let Ok(mut reader) = reader else {
            return kept;
        };
        let mut chunk = [0u8; 4096];
        // Read to the end even past the limit: a writer blocked on a full pipe never exits.
        while let Ok(n) = reader.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            let room = MAX_OUTPUT.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..n.min(room)]);
        }
        kept
    };
    let output = tokio::spawn(output);
    // Reaps the process even when this future is dropped half-way (a health check cancelled
    // because its container stopped): it is the engine's child and must not stay a zombie.
    let mut reaper = Reaper { pid, done: false };
    let status = match tokio::time::timeout(timeout, reaped(&pidfd, pid)).await {
        Ok(status) => Some(status.map_err(wait_err)?),
        Err(_) => {
            let _ =
                rustix::process::pidfd_send_signal(pidfd.get_ref(), rustix::process::Signal::KILL);
            reaped(&pidfd, pid).await.map_err(wait_err)?;
            None
        }
    };
    reaper.done = true;
    // Children the command left behind may hold the pipe open; its output so far is enough.
    let output = match tokio::time::timeout(Duration::from_millis(200), output).await {
        Ok(Ok(bytes)) => bytes,
        _ => Vec::new(),
    };
    Ok(ExecOutcome {
        status,
        output: String::from_utf8_lossy(&output).into_owned(),
    })
}

/// What the helper prints: an [`ExecOutcome`] in JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct Reported {
    /// The exit code, or 128 + the signal; absent when the command timed out.
    code: Option<i32>,
    /// Set when a signal ended it.
    signal: Option<i32>,
    output: String,
}

/// The helper process's side: runs [`exec`] on a runtime of its own and prints the outcome as
/// one JSON line (errors go to stderr, and the exit code is 1).
pub fn helper_main(
    state_dir: &Path,
    id: &str,
    bundle: &Path,
    command: &[String],
    timeout: Duration,
) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("slipway-engine: starting tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(exec(state_dir, id, bundle, command, timeout)) {
        Ok(outcome) => {
            let reported = Reported {
                code: outcome.status.map(ExitStatus::code),
                signal: match outcome.status {
                    Some(ExitStatus::Signaled(signal)) => Some(signal as i32),
                    _ => None,
                },
                output: outcome.output,
            };
            println!(
                "{}",
                serde_json::to_string(&reported).expect("JSON values serialize")
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("slipway-engine: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs [`exec`] in a helper process (`PROGRAM exec-container ...`) and waits for its answer
/// without blocking the engine. The helper is killed (with its process group) when this future
/// is dropped, or when it outlives the command's timeout by [`HELPER_GRACE`].
pub async fn exec_in_child(
    program: &Path,
    state_dir: &Path,
    id: &str,
    bundle: &Path,
    command: &[String],
    timeout: Duration,
) -> Result<ExecOutcome, ExecError> {
    if command.first().is_none_or(String::is_empty) {
        return Err(ExecError::NoCommand { id: id.to_owned() });
    }
    let failed = |message: String| ExecError::Helper {
        id: id.to_owned(),
        command: command.to_vec(),
        message,
    };
    let mut child = tokio::process::Command::new(program);
    child
        .arg("exec-container")
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--id")
        .arg(id)
        .arg("--bundle")
        .arg(bundle)
        .arg("--timeout-ms")
        .arg(timeout.as_millis().to_string())
        .arg("--")
        .args(command);
    let output = crate::supervisor::helper_output(child, timeout + HELPER_GRACE)
        .await
        .map_err(failed)?;
    let reported: Reported = serde_json::from_slice(&output)
        .map_err(|e| failed(format!("unexpected helper output: {e}")))?;
    let status = match (reported.code, reported.signal) {
        (None, _) => None,
        (Some(_), Some(signal)) => nix::sys::signal::Signal::try_from(signal)
            .ok()
            .map(ExitStatus::Signaled),
        (Some(code), None) => Some(ExitStatus::Exited(code)),
    };
    Ok(ExecOutcome {
        status,
        output: reported.output,
    })
}

/// How long a helper may run past its command's timeout (joining the container, reaping).
pub const HELPER_GRACE: Duration = Duration::from_secs(10);

/// The engine's children (of every thread; the engine has one), from
/// `/proc/self/task/*/children`.
pub(crate) fn children() -> std::collections::BTreeSet<i32> {
    let mut pids = std::collections::BTreeSet::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids
}

/// When the tenant builder fails after it cloned the command's process (the command cannot be
/// executed, say), it returns no pid, but that process is our child (`CLONE_PARENT`) and
/// exits. Unreaped, it would stay a zombie in the container's pid namespace, and the
/// container's PID 1 cannot finish exiting until every process of its namespace is reaped:
/// the service could never stop. The engine runs on one thread and the build is synchronous,
/// so the children that appeared during it are exactly the builder's.
fn reap_failed_start(before: &std::collections::BTreeSet<i32>) {
    for pid in children().difference(before) {
        // It is exiting (or about to exec nothing): the blocking wait is short.
        let _ = waitpid(nix::unistd::Pid::from_raw(*pid), None);
    }
}

struct Reaper {
    pid: i32,
    done: bool,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.done {
            let pid = nix::unistd::Pid::from_raw(self.pid);
            // SIGKILL cannot be ignored, so the blocking wait is short.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// Waits for the pidfd to become readable (the process ended), then reaps it.
async fn reaped(pidfd: &AsyncFd<OwnedFd>, pid: i32) -> Result<ExitStatus, String> {
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => {
                if let Some(status) = ExitStatus::from_wait_status(status) {
                    return Ok(status);
                }
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.to_string()),
        }
        let mut guard = pidfd.readable().await.map_err(|e| e.to_string())?;
        guard.clear_ready();
    }
}
