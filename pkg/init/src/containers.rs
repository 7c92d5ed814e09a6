//! The containers of the image, as the builder lays them out:
//! `/containers/{onboot,onshutdown}/NNN-NAME/` run to completion in name order,
//! `/containers/services/NAME/` run for the machine's life (see `services`).

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use slipway_runtime::{ExitStatus, Runtime, Stdio};

use crate::events::Events;

/// One bundle found in a containers directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The directory name: `000-NAME` for onboot, `NAME` for services.
    pub name: String,
    pub path: PathBuf,
}

impl Bundle {
    /// The container id: the kind and the name, in the characters libcontainer accepts.
    pub fn id(&self, kind: &str) -> String {
        let name: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_+-.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{kind}-{name}")
    }
}

/// The bundles of `dir` (a directory holding config.json), sorted by name so that the
/// builder's `NNN-` prefixes give the order. A missing directory has none.
pub fn list(dir: &Path) -> io::Result<Vec<Bundle>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut bundles = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if path.join("config.json").is_file() {
            bundles.push(Bundle {
                name: entry.file_name().to_string_lossy().into_owned(),
                path,
            });
        }
    }
    bundles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(bundles)
}

/// The annotation through which a container's `x-slipway: timeout:` reaches the init.
pub const TIMEOUT_ANNOTATION: &str = "org.slipway.timeout";
/// How long an onboot container may run when its bundle names no timeout: long enough for a
/// slow DHCP or a disk format, short enough that a hung step does not hold the boot forever.
pub const ONBOOT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Each onshutdown container's, likewise: a shutdown must end.
pub const ONSHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an onboot container still runs after a shutdown request before it is killed:
/// the container that asked for the poweroff (busybox `poweroff`) ends by itself at once.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The bundle's own timeout (`org.slipway.timeout` in its config.json), if it sets one.
pub fn timeout_of(bundle: &Bundle) -> Result<Option<Duration>, String> {
    let path = bundle.path.join("config.json");
    let text = fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    match spec.pointer("/annotations/org.slipway.timeout") {
        None => Ok(None),
        Some(serde_json::Value::String(t)) => humantime::parse_duration(t.trim())
            .map(Some)
            .map_err(|e| format!("{}: {TIMEOUT_ANNOTATION} {t:?}: {e}", path.display())),
        Some(other) => Err(format!(
            "{}: {TIMEOUT_ANNOTATION} is not a string: {other}",
            path.display()
        )),
    }
}

/// When the init stops waiting for a container.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    /// A shutdown request ends the wait (after [`SHUTDOWN_GRACE`]): onboot containers.
    pub interrupted_by_shutdown: bool,
}

/// How a container run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(ExitStatus),
    /// Killed when its timeout ran out.
    TimedOut(Duration),
    /// Killed because a shutdown was requested while it ran.
    Interrupted,
}

/// Runs one bundle to completion. Its stdout and stderr go through a pipe that the init copies
/// to `log` and, for onboot and onshutdown containers, to the console (the init's stdout).
/// Signals that arrive meanwhile are collected in `events`.
pub fn run_to_completion(
    runtime: &Runtime,
    events: &mut Events,
    kind: &str,
    bundle: &Bundle,
    log: &Path,
    limits: Limits,
) -> anyhow::Result<Outcome> {
    use anyhow::Context;
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut log_file =
        fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let (read, write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("creating a pipe")?;
    rustix::fs::fcntl_setfl(&read, rustix::fs::OFlags::NONBLOCK)
        .context("making the pipe non-blocking")?;
    let stdin: Option<OwnedFd> = fs::File::open("/dev/null").ok().map(Into::into);
    let stderr = write.try_clone().context("duplicating the pipe")?;
    let id = bundle.id(kind);
    let mut container = runtime.create_and_start(
        &id,
        &bundle.path,
        Stdio {
            stdin,
            stdout: Some(write),
            stderr: Some(stderr),
        },
    )?;
    let pid = container.pid()?;
    events.watch(pid);
    let mut pipe = fs::File::from(read);
    let mut console = io::stdout();
    let mut buf = [0u8; 8192];
    let mut open = true;
    let deadline = Instant::now() + limits.timeout;
    let mut interrupt_at: Option<Instant> = None;
    // Set once the container was killed, with what the kill is reported as and how long the
    // init still waits for the exit (SIGKILL cannot be ignored, but a process in the D state
    // does not die at once: the init must not hang on it either).
    let mut killed: Option<(Outcome, Instant)> = None;
    let status = loop {
        if open {
            // Copy everything available before looking at exits, so that the last lines
            // of a container that just ended are not lost.
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => {
                        open = false;
                        break;
                    }
                    Ok(n) => {
                        let _ = log_file.write_all(&buf[..n]);
                        let _ = console.write_all(&buf[..n]);
                        let _ = console.flush();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        if let Some(status) = events.exit_of(pid) {
            // The process is gone; a child it left behind may keep the pipe open, so stop
            // copying after what is buffered now.
            break Some(status);
        }
        let now = Instant::now();
        if limits.interrupted_by_shutdown && events.shutdown.is_some() && interrupt_at.is_none() {
            interrupt_at = Some(now + SHUTDOWN_GRACE);
        }
        match killed {
            Some((_, give_up)) if now >= give_up => break None,
            Some(_) => {}
            None => {
                let why = if now >= deadline {
                    Some(Outcome::TimedOut(limits.timeout))
                } else if interrupt_at.is_some_and(|at| now >= at) {
                    Some(Outcome::Interrupted)
                } else {
                    None
                };
                if let Some(why) = why {
                    // Every process of the container (its cgroup), or at least its first.
                    if container
                        .kill(nix::sys::signal::Signal::SIGKILL, true)
                        .is_err()
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    killed = Some((why, now + Duration::from_secs(5)));
                }
            }
        }
        let wake = match killed {
            Some((_, give_up)) => give_up,
            None => interrupt_at.map_or(deadline, |at| at.min(deadline)),
        };
        let ms = wake
            .saturating_duration_since(Instant::now())
            .as_millis()
            .clamp(1, i32::MAX as u128) as i32;
        let mut fds = vec![PollFd::new(events.fd(), PollFlags::POLLIN)];
        if open {
            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
        }
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e).context("waiting for container output"),
        }
        events.read();
    };
    let Some(status) = status else {
        // Killed, and still not reaped: deleting would wait for it. Its state stays behind.
        anyhow::bail!("{id}: still running 5 s after SIGKILL; left as it is");
    };
    container.set_exited(status);
    container.delete()?;
    Ok(match killed {
        Some((why, _)) => why,
        None => Outcome::Exited(status),
    })
}

/// How many lines of a container's log the console shows when it could not start: the
/// runtime's own explanation (a failed mount, a missing binary) is written there by the
/// container's init process, which no error value comes back from.
const TAIL_LINES: usize = 10;

/// Prints the last lines of a container's log file, prefixed with its name.
pub fn print_log_tail(name: &str, log: &Path) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
        println!("slipway-init: {name}| {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_are_ordered_by_name_and_need_a_config() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["010-second", "000-first", "020-no-config"] {
            fs::create_dir_all(dir.path().join(name)).unwrap();
        }
        fs::write(dir.path().join("010-second/config.json"), "{}").unwrap();
        fs::write(dir.path().join("000-first/config.json"), "{}").unwrap();
        let names: Vec<String> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["000-first", "010-second"]);
        assert!(list(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn ids_keep_only_characters_libcontainer_accepts() {
        let b = Bundle {
            name: "000-my app:1".into(),
            path: PathBuf::new(),
        };
        assert_eq!(b.id("onboot"), "onboot-000-my_app_1");
    }
}
