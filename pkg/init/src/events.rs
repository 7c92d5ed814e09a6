//! PID 1's inbox: the signals it handles, read from a signalfd, and the exit statuses of the
//! children it reaps.
//!
//! Every handled signal is blocked and read synchronously: no async handlers in PID 1. All
//! children are reaped with `waitpid(-1, WNOHANG)` (orphans are re-parented to PID 1); the
//! statuses of watched processes (containers) are kept for their owners.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use slipway_runtime::ExitStatus;

use crate::shutdown::Action;

pub const HANDLED: [Signal; 5] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

pub struct Events {
    fd: SignalFd,
    watched: HashSet<i32>,
    exits: HashMap<i32, ExitStatus>,
    /// The first shutdown request; later ones do not change it.
    pub shutdown: Option<Action>,
}

impl Events {
    /// Blocks the handled signals and opens the signalfd. Call before any child is started.
    pub fn new() -> nix::Result<Self> {
        let mut mask = SigSet::empty();
        for s in HANDLED {
            mask.add(s);
        }
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Self {
            fd,
            watched: HashSet::new(),
            exits: HashMap::new(),
            shutdown: None,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Keep the exit status of `pid` when it is reaped.
    pub fn watch(&mut self, pid: i32) {
        self.watched.insert(pid);
    }

    /// The exit status of a watched process, once reaped (and forgets it).
    pub fn exit_of(&mut self, pid: i32) -> Option<ExitStatus> {
        self.reap();
        let status = self.exits.remove(&pid)?;
        self.watched.remove(&pid);
        Some(status)
    }

    /// Drains the signalfd: records shutdown requests and reaps children.
    pub fn read(&mut self) {
        while let Ok(Some(info)) = self.fd.read_signal() {
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            if let Some(action) = Action::from_signal(signal)
                && self.shutdown.is_none()
            {
                println!("slipway-init: {signal} received: {}", action.describe());
                self.shutdown = Some(action);
            }
        }
        self.reap();
    }

    /// Reaps every child that has ended. Returns false when there are no children left.
    pub fn reap(&mut self) -> bool {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => {
                    let Some(pid) = status.pid() else { return true };
                    if self.watched.contains(&pid.as_raw())
                        && let Some(exit) = ExitStatus::from_wait_status(status)
                    {
                        self.exits.insert(pid.as_raw(), exit);
                    }
                }
                Err(nix::Error::EINTR) => {}
                Err(_) => return false,
            }
        }
    }

    /// Waits up to `timeout` for a signal, then handles what arrived.
    pub fn wait(&mut self, timeout: std::time::Duration) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, ms);
        self.read();
    }
}
