//! The container engine (pkg/engine), when the image carries it: the init starts it after the
//! onboot containers and it owns the services from then on (restarts, dependencies, health
//! checks, the API on /run/slipway/engine.sock). At shutdown, after the onshutdown containers,
//! the init asks it to stop them (SIGTERM) and waits for it. For the boot's timeline, the init
//! asks the engine's API when it started its first service.
//!
//! The swarm agent (pkg/swarm, see `swarm.rs`) is another such daemon: started after the engine
//! and supervised the same way, so [`Engine`] and [`Supervised`] run any [`Program`].

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::unistd::Pid;

use crate::events::Events;

/// Where an init image puts the engine (`init: [.., @pkg:../pkg/engine]`).
pub const ENGINE: &str = slipway_layout::ENGINE;
/// The engine's API (its default `--socket`).
pub const SOCKET: &str = slipway_layout::ENGINE_SOCKET;

/// A daemon the init starts and watches: what it is called on the console, its binary, its
/// arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    pub path: &'static str,
    pub args: Vec<String>,
}

impl Program {
    pub fn engine() -> Program {
        Program {
            name: "engine",
            path: ENGINE,
            args: vec!["daemon".into()],
        }
    }
}

pub struct Engine {
    pid: i32,
    program: Program,
}

/// The first wait before the engine is started again, doubled after each quick death up to
/// [`MOST_BACKOFF`]; a run of [`STEADY`] or more starts the count again.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MOST_BACKOFF: Duration = Duration::from_secs(30);
const STEADY: Duration = Duration::from_secs(60);

/// The engine under the init's watch: when it dies outside a shutdown, the init says so on the
/// console and starts it again after a backoff. The services it ran keep running (they are the
/// init's children now); a new engine finds them in its state directory.
pub struct Supervised {
    running: Option<(Engine, Instant)>,
    /// What to start again while it is not running.
    program: Option<Program>,
    next_start: Option<Instant>,
    backoff: Duration,
}

impl Supervised {
    pub fn new(engine: Engine) -> Self {
        Self {
            running: Some((engine, Instant::now())),
            program: None,
            next_start: None,
            backoff: FIRST_BACKOFF,
        }
    }

    /// A daemon started by an earlier run of the init (before it re-executed itself).
    pub fn adopt(program: Program, pid: i32, events: &mut Events) -> Self {
        events.watch(pid);
        Self::new(Engine { pid, program })
    }

    /// The running engine's pid.
    pub fn pid(&self) -> Option<i32> {
        self.running.as_ref().map(|(e, _)| e.pid)
    }

    /// When [`Supervised::tend`] next has something to do.
    pub fn next_start(&self) -> Option<Instant> {
        self.next_start
    }

    /// Notices the engine's death and schedules its restart; starts it when the backoff has
    /// passed. Returns true when the engine's pid changed.
    pub fn tend(&mut self, events: &mut Events) -> bool {
        if let Some((engine, since)) = &self.running
            && let Some(status) = events.exit_of(engine.pid)
        {
            if since.elapsed() >= STEADY {
                self.backoff = FIRST_BACKOFF;
            }
            println!(
                "slipway-init: {} (pid {}) ended: {status}; restarting it in {:?}",
                engine.program.name, engine.pid, self.backoff
            );
            self.program = Some(engine.program.clone());
            self.running = None;
            self.next_start = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(MOST_BACKOFF);
            return true;
        }
        match self.next_start {
            Some(at) if Instant::now() >= at => {}
            _ => return false,
        }
        self.next_start = None;
        let Some(program) = self.program.take() else {
            return false;
        };
        match Engine::start_program(&program, events) {
            Some(Ok(engine)) => {
                println!(
                    "slipway-init: {} restarted (pid {})",
                    program.name, engine.pid
                );
                self.running = Some((engine, Instant::now()));
            }
            Some(Err(e)) => {
                println!(
                    "slipway-init: restarting {}: {e}; trying again in {:?}",
                    program.path, self.backoff
                );
                self.next_start = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MOST_BACKOFF);
                self.program = Some(program);
            }
            None => println!(
                "slipway-init: {} is gone; the {} is not restarted",
                program.path, program.name
            ),
        }
        true
    }

    /// Stops the engine if it runs ([`Engine::stop`]); a pending restart is dropped.
    pub fn stop(self, events: &mut Events, patience: Duration) {
        if let Some((engine, _)) = self.running {
            engine.stop(events, patience);
        }
    }
}

impl Engine {
    /// Starts the engine if the image has one. Its output goes to the console.
    pub fn start(events: &mut Events) -> Option<Result<Engine, std::io::Error>> {
        Self::start_program(&Program::engine(), events)
    }

    /// Starts `program` if the image has its binary. Its output goes to the console.
    pub fn start_program(
        program: &Program,
        events: &mut Events,
    ) -> Option<Result<Engine, std::io::Error>> {
        if !Path::new(program.path).exists() {
            return None;
        }
        let mut cmd = Command::new(program.path);
        cmd.args(&program.args);
        // SAFETY: between fork and exec only async-signal-safe calls: pthread_sigmask. The
        // init blocks the signals it reads through its signalfd, and a blocked mask is inherited;
        // the engine needs SIGTERM and SIGCHLD delivered.
        unsafe {
            cmd.pre_exec(|| {
                pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                    .map_err(std::io::Error::from)
            });
        }
        Some(cmd.spawn().map(|child| {
            let pid = child.id() as i32;
            // The init reaps every child itself (waitpid(-1)); the Child handle is dropped
            // without waiting, which std allows.
            events.watch(pid);
            Engine {
                pid,
                program: program.clone(),
            }
        }))
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// SIGTERM: the engine stops its services (each once its dependents have, the others side
    /// by side) and exits. It gets `patience` for that, then SIGKILL (the init's final kill of
    /// every process follows anyway).
    pub fn stop(self, events: &mut Events, patience: Duration) {
        let name = self.program.name;
        let pid = Pid::from_raw(self.pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Some(status) = events.exit_of(self.pid) {
                println!("slipway-init: {name} stopped ({status})");
                return;
            }
            events.wait(Duration::from_millis(100));
        }
        let _ = kill(pid, Signal::SIGKILL);
        println!("slipway-init: {name} killed after {patience:?}");
    }
}

/// What the engine's API says of its services' starts.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstService {
    /// The engine supervises no service.
    None,
    /// Services are configured, none has started yet.
    NotYet,
    /// The earliest start of a service: its name and the wall-clock time, ms since the epoch.
    Started { name: String, unix_ms: i64 },
}

/// Asks the engine (`GET /v1/containers`) which service started first. Every read and write is
/// bounded by `timeout`, so a busy or hung engine costs the caller at most that much per call.
pub fn first_service(socket: &Path, timeout: Duration) -> io::Result<FirstService> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // HTTP/1.0: the engine answers with a Content-Length body and closes the connection.
    stream.write_all(b"GET /v1/containers HTTP/1.0\r\nHost: engine\r\n\r\n")?;
    let mut response = Vec::new();
    // A sane list is a few KiB; more is not an answer worth parsing.
    stream.take(1 << 20).read_to_end(&mut response)?;
    parse_containers_response(&response)
}

fn parse_containers_response(response: &[u8]) -> io::Result<FirstService> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("engine API: {why}"));
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(bad(&format!("GET /v1/containers: {status}")));
    }
    let list: serde_json::Value =
        serde_json::from_str(body).map_err(|e| bad(&format!("GET /v1/containers: {e}")))?;
    let list = list
        .as_array()
        .ok_or_else(|| bad("GET /v1/containers: not a list"))?;
    if list.is_empty() {
        return Ok(FirstService::None);
    }
    let first = list
        .iter()
        .filter_map(|c| {
            let name = c.get("name")?.as_str()?;
            let at = humantime::parse_rfc3339(c.get("started_at")?.as_str()?).ok()?;
            let unix_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
            Some((name.to_owned(), i64::try_from(unix_ms).ok()?))
        })
        .min_by_key(|(_, ms)| *ms);
    Ok(match first {
        Some((name, unix_ms)) => FirstService::Started { name, unix_ms },
        None => FirstService::NotYet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn the_earliest_start_is_the_first_service() {
        let body = r#"[{"name":"web","started_at":"2026-01-01T00:00:01.500Z"},
                       {"name":"shell","started_at":null},
                       {"name":"db","started_at":"2026-01-01T00:00:01.250Z"}]"#;
        assert_eq!(
            parse_containers_response(&response(body)).unwrap(),
            FirstService::Started {
                name: "db".into(),
                unix_ms: 1_767_225_601_250
            }
        );
    }

    #[test]
    fn no_services_and_no_start_yet_are_told_apart() {
        assert_eq!(
            parse_containers_response(&response("[]")).unwrap(),
            FirstService::None
        );
        let waiting = r#"[{"name":"web","started_at":null}]"#;
        assert_eq!(
            parse_containers_response(&response(waiting)).unwrap(),
            FirstService::NotYet
        );
    }

    #[test]
    fn errors_and_garbage_are_errors_not_panics() {
        for bad in [
            &b"HTTP/1.0 500 Internal Server Error\r\n\r\n{}"[..],
            b"HTTP/1.0 200 OK\r\n\r\n{\"not\": \"a list\"}",
            b"HTTP/1.0 200 OK\r\n\r\n[{",
            b"no headers at all",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(parse_containers_response(bad).is_err(), "{bad:?}");
        }
    }
}
