//! A minimal init for containers (what `docker run --init` adds): run as a container's first
//! process, it starts the real command as its child, passes on the signals it receives, reaps
//! every process that ends under it and exits as the command did.
//!
//! It exists because a process that is PID 1 of its pid namespace gets no signal its code does
//! not handle: `sleep` run as a container's command ignores SIGTERM and waits out the whole grace
//! period. Under the shim the command is an ordinary process whose default actions apply, and
//! orphans re-parented to PID 1 do not pile up as zombies.
//!
//! The shim is a mode of the binary that holds this module, selected by its program name
//! ([`NAME`] as argv[0]); the runtime starts it from a descriptor (see slipway-runtime's
//! `Runtime::with_init`), so it needs no file in the container. It runs before anything else of
//! that binary: single-threaded, no async runtime, no allocation after the fork but std's own.
//! Signals are blocked and read from a signalfd, so no code runs in signal context.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, killpg, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

/// The program name that selects the shim.
pub const NAME: &str = "slipway-shim";

/// The signals passed on to the command. Left out: those that cannot be caught (KILL, STOP),
/// those the kernel raises for a fault of the shim itself (SEGV, BUS, ILL, FPE, TRAP, SYS, and
/// ABRT, which `abort` raises), the terminal job-control stops of the shim (TTIN, TTOU), and
/// CHLD, which is the shim's own business.
const FORWARDED: [Signal; 19] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGPIPE,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGSTKFLT,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGURG,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGWINCH,
    Signal::SIGIO,
    Signal::SIGPWR,
];

/// Runs `command` (the program, then its arguments) under the shim and returns the exit code
/// the shim must exit with: the command's own, or 128 + the signal that killed it (the shell's
/// convention); 127 when it cannot be started, 126 when it is not executable.
pub fn run(command: &[OsString]) -> i32 {
    let Some((program, args)) = command.split_first() else {
        say(format_args!("usage: {NAME} COMMAND [ARG]..."));
        return 127;
    };
    // Started from a descriptor, the process is named after the descriptor's number.
    let _ = nix::sys::prctl::set_name(c"slipway-shim");
    if nix::unistd::getpid().as_raw() != 1 {
        // Outside a pid namespace of its own, orphans come to the nearest subreaper instead.
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
    // An ignored SIGCHLD (inherited through exec) would make the kernel reap children itself,
    // and the command's status would be lost.
    // SAFETY: resetting a disposition to its default installs no handler.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGCHLD, nix::sys::signal::SigHandler::SigDfl) };
    let mut mask = SigSet::empty();
    for signal in FORWARDED.into_iter().chain([Signal::SIGCHLD]) {
        mask.add(signal);
    }
    // Blocked before the child exists, so no signal meant for it is lost in between (the
    // runtime starts the shim with every signal blocked, so none is lost before either); the
    // others are unblocked. The child starts with an empty mask.
    let signals = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&mask), None)
        .and_then(|()| SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC));
    let child = match spawn(program, args) {
        Ok(pid) => pid,
        Err(e) => {
            say(format_args!("{}: {e}", program.to_string_lossy()));
            return if e.kind() == std::io::ErrorKind::PermissionDenied {
                126
            } else {
                127
            };
        }
    };
    let signals = match signals {
        Ok(fd) => Some(fd),
        Err(e) => {
            say(format_args!("reading signals: {e}; none will be passed on"));
            None
        }
    };
    loop {
        if let Some(code) = reap(child) {
            return code;
        }
        let Some(fd) = &signals else {
            // Without a signalfd the shim can still wait for the command.
            if let Some(code) = wait_blocking(child) {
                return code;
            }
            continue;
        };
        match fd.read_signal() {
            Ok(Some(info)) => {
                let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                if signal != Signal::SIGCHLD {
                    forward(child, signal);
                }
            }
            Ok(None) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                say(format_args!("reading signals: {e}; none will be passed on"));
                if let Some(code) = wait_blocking(child) {
                    return code;
                }
            }
        }
    }
}

/// Starts the command in a process group of its own, so a signal reaches the processes it
/// starts as well; with a terminal on stdin, that group becomes the terminal's foreground. The
/// command starts with no signal blocked (std leaves the shim's mask in place).
fn spawn(program: &OsString, args: &[OsString]) -> std::io::Result<Pid> {
    let mut command = Command::new(program);
    command.args(args).process_group(0);
    let terminal = std::io::stdin().is_terminal();
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe system
    // calls (sigprocmask, getpid, tcsetpgrp) on sets on the stack, allocating nothing.
    unsafe {
        command.pre_exec(move || {
            if terminal {
                // A background group taking the terminal gets SIGTTOU unless it is blocked.
                let mut ttou = SigSet::empty();
                ttou.add(Signal::SIGTTOU);
                pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&ttou), None)?;
                let _ = nix::unistd::tcsetpgrp(std::io::stdin().as_fd(), nix::unistd::getpid());
            }
            pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            Ok(())
        });
    }
    let child = command.spawn()?;
    // The shim reaps with waitpid(-1) itself; std allows dropping a Child without waiting.
    Ok(Pid::from_raw(child.id() as i32))
}

/// Passes `signal` on to the command's process group, or to the command alone when it left
/// that group (or the group is gone).
fn forward(child: Pid, signal: Signal) {
    if killpg(child, signal).is_err() {
        let _ = nix::sys::signal::kill(child, signal);
    }
}

/// Reaps every process that has ended; the command's exit code once it is among them.
fn reap(child: Pid) -> Option<i32> {
    use rustix::process::{WaitOptions, wait};
    let mut code = None;
    loop {
        match wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => {
                if pid.as_raw_nonzero().get() == child.as_raw() {
                    code = exit_code(status).or(code);
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            // Nothing has ended (Ok(None)), or no child is left (ECHILD).
            _ => return code,
        }
    }
}

/// Blocks until the command ends, reaping whatever ends before it.
fn wait_blocking(child: Pid) -> Option<i32> {
    use rustix::process::{WaitOptions, wait};
    loop {
        match wait(WaitOptions::empty()) {
            Ok(Some((pid, status))) if pid.as_raw_nonzero().get() == child.as_raw() => {
                if let Some(code) = exit_code(status) {
                    return Some(code);
                }
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            // No child left: the command's status went elsewhere; report a failure.
            Err(_) => return Some(127),
        }
    }
}

fn exit_code(status: rustix::process::WaitStatus) -> Option<i32> {
    status
        .exit_status()
        .map(|code| code & 0xff)
        .or_else(|| status.terminating_signal().map(|signal| 128 + signal))
}

/// A line on stderr (the container's log). A failed write is ignored: the shim must not panic.
fn say(message: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr(), "{NAME}: {message}");
}
