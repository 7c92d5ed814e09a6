//! The container engine (pkg/engine), when the image carries it: the init starts it after the
//! onboot containers and it owns the services from then on (restarts, dependencies, health
//! checks, the API on /run/slipway/engine.sock). At shutdown, after the onshutdown containers,
//! the init asks it to stop them (SIGTERM) and waits for it.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::unistd::Pid;

use crate::events::Events;

/// Where an init image puts the engine (`init: [.., @pkg:../pkg/engine]`).
pub const ENGINE: &str = "/usr/bin/slipway-engine";

pub struct Engine {
    pid: i32,
}

impl Engine {
    /// Starts the engine if the image has one. Its output goes to the console.
    pub fn start(events: &mut Events) -> Option<Result<Engine, std::io::Error>> {
        if !Path::new(ENGINE).exists() {
            return None;
        }
        let mut cmd = Command::new(ENGINE);
        cmd.arg("daemon");
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
            Engine { pid }
        }))
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// SIGTERM: the engine stops its services (each once its dependents have, the others side
    /// by side) and exits. It gets `patience` for that, then SIGKILL (the init's final kill of
    /// every process follows anyway).
    pub fn stop(self, events: &mut Events, patience: Duration) {
        let pid = Pid::from_raw(self.pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Some(status) = events.exit_of(self.pid) {
                println!("slipway-init: engine stopped ({status})");
                return;
            }
            events.wait(Duration::from_millis(100));
        }
        let _ = kill(pid, Signal::SIGKILL);
        println!("slipway-init: engine killed after {patience:?}");
    }
}
