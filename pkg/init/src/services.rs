//! Services, until the engine (pkg/engine) takes them over: each bundle of
//! `/containers/services` is started once at the end of the boot with its output in
//! `/run/log/services/NAME.log`, and stopped at shutdown. No restarts, no health checks: that
//! is the engine's job, and this module goes away when the engine starts the services.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use slipway_runtime::{Container, Runtime, Stdio};

use crate::containers::Bundle;
use crate::events::Events;

pub struct Services {
    running: Vec<Container>,
    /// The first service that started and when (ms since the kernel started), for the timeline.
    first_started: Option<(String, u64)>,
}

impl Services {
    /// Starts every bundle; one that fails to start is reported and the others still start.
    pub fn start(
        runtime: &Runtime,
        events: &mut Events,
        bundles: &[Bundle],
        log_dir: &Path,
    ) -> Self {
        let _ = fs::create_dir_all(log_dir);
        let mut running = Vec::new();
        let mut first_started = None;
        for bundle in bundles {
            let log = log_dir.join(format!("{}.log", bundle.name));
            let started = fs::File::create(&log)
                .map_err(anyhow::Error::from)
                .and_then(|out| {
                    let err = out.try_clone()?;
                    let stdio = Stdio {
                        stdin: fs::File::open("/dev/null").ok().map(Into::into),
                        stdout: Some(out.into()),
                        stderr: Some(err.into()),
                    };
                    Ok(runtime.create_and_start(&bundle.id("service"), &bundle.path, stdio)?)
                });
            match started {
                Ok(container) => {
                    if first_started.is_none() {
                        first_started = Some((bundle.name.clone(), crate::timeline::now_ms()));
                    }
                    if let Ok(pid) = container.pid() {
                        events.watch(pid);
                        println!("slipway-init: service {} started (pid {pid})", bundle.name);
                    }
                    running.push(container);
                }
                Err(e) => {
                    println!(
                        "slipway-init: service {} failed to start: {e:#}",
                        bundle.name
                    );
                    crate::containers::print_log_tail(&bundle.name, &log);
                }
            }
        }
        Self {
            running,
            first_started,
        }
    }

    /// The services' main processes, for a re-executed init to stop at shutdown.
    pub fn pids(&self) -> Vec<i32> {
        self.running.iter().filter_map(|c| c.pid().ok()).collect()
    }

    pub fn first_started(&self) -> Option<(String, u64)> {
        self.first_started.clone()
    }

    /// SIGTERM to every service's processes, `grace` to end, then SIGKILL; deletes them.
    pub fn stop(self, events: &mut Events, grace: Duration) {
        let mut running = self.running;
        for c in &mut running {
            let _ = c.kill(Signal::SIGTERM, true);
        }
        let deadline = Instant::now() + grace;
        loop {
            for c in &mut running {
                if c.exit_status().is_none()
                    && let Some(status) = c.pid().ok().and_then(|pid| events.exit_of(pid))
                {
                    c.set_exited(status);
                }
            }
            if running.iter().all(|c| c.exit_status().is_some()) || Instant::now() >= deadline {
                break;
            }
            events.wait(Duration::from_millis(100));
        }
        for c in running {
            let id = c.id().to_owned();
            let status = c.exit_status();
            // delete() SIGKILLs what is left and reaps it.
            match c.delete() {
                Ok(()) => match status {
                    Some(s) => println!("slipway-init: service {id} stopped ({s})"),
                    None => println!("slipway-init: service {id} killed after {grace:?}"),
                },
                Err(e) => println!("slipway-init: {e}"),
            }
        }
    }
}
