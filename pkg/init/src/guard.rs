//! PID 1 survives its own bugs. The image profile aborts on panic, and an init that ends makes
//! the kernel panic: so a panic hook reports the bug on the console and executes the init again
//! in place (same pid, same children, the handled signals still blocked and pending). The new
//! init finds what the old one had done in [`STATE`] and only waits, reaps and shuts down: it
//! adopts the engine or the services that run and does not boot again. When that cannot be
//! done (no state yet, too many crashes, the executable gone), the hook winds the machine down
//! by itself and powers off instead of handing the kernel a dead init.
//!
//! The re-executed init is told by [`MARKER`] in its environment; the state file must exist as
//! well, and it lives on the `/run` tmpfs the init mounts itself, so a kernel command line
//! (which can set environment variables of the init) cannot make a fresh boot skip its steps.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::shutdown::Action;

/// What the init has done so far, as the re-executed init needs it.
pub const STATE: &str = "/run/slipway/init-state.json";
/// In the re-executed init's environment: how many times the init was re-executed.
pub const MARKER: &str = "SLIPWAY_INIT_REEXEC";
/// After this many re-executions the machine powers off: a bug that comes back at once would
/// otherwise loop for ever with nobody told.
const MOST_REEXECS: u32 = 5;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// How many onboot containers were started (a crash during one leaves it counted: it is
    /// not run twice).
    pub onboot_started: usize,
    /// The services are started: by the engine (its pid) or by the init (their pids).
    pub services_started: bool,
    pub engine: Option<i32>,
    /// The swarm agent's pid, when the init started one after the engine.
    pub swarm: Option<i32>,
    pub services: Vec<i32>,
    /// A shutdown was under way.
    pub shutdown: Option<Action>,
}

impl State {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "onboot_started": self.onboot_started,
            "services_started": self.services_started,
            "engine": self.engine,
            "swarm": self.swarm,
            "services": self.services,
            "shutdown": self.shutdown.map(Action::describe),
        })
    }

    fn from_json(v: &serde_json::Value) -> Option<Self> {
        let shutdown = match v.get("shutdown")? {
            serde_json::Value::Null => None,
            s => Some(Action::from_description(s.as_str()?)?),
        };
        Some(Self {
            onboot_started: usize::try_from(v.get("onboot_started")?.as_u64()?).ok()?,
            services_started: v.get("services_started")?.as_bool()?,
            engine: match v.get("engine")? {
                serde_json::Value::Null => None,
                p => Some(i32::try_from(p.as_i64()?).ok()?),
            },
            swarm: v
                .get("swarm")
                .and_then(serde_json::Value::as_i64)
                .and_then(|p| i32::try_from(p).ok()),
            services: v
                .get("services")?
                .as_array()?
                .iter()
                .map(|p| i32::try_from(p.as_i64()?).ok())
                .collect::<Option<_>>()?,
            shutdown,
        })
    }

    /// Writes the state for a re-executed init (write and rename: a crash never leaves half).
    pub fn save(&self) {
        let tmp = format!("{STATE}.new");
        let written = fs::create_dir_all("/run/slipway")
            .and_then(|()| fs::write(&tmp, self.to_json().to_string()))
            .and_then(|()| fs::rename(&tmp, STATE));
        if let Err(e) = written {
            crate::say(format_args!("saving {STATE}: {e}"));
        }
    }
}

/// How many times this init was re-executed (0 on a normal boot).
pub fn reexecs() -> u32 {
    std::env::var(MARKER)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The state an earlier run of the init left, when this one is its re-execution.
pub fn resume() -> Option<State> {
    if reexecs() == 0 {
        return None;
    }
    let text = fs::read(STATE).ok()?;
    State::from_json(&serde_json::from_slice(&text).ok()?)
}

/// Installs the panic hook. `test` is the SLIPWAY_INIT_TEST mode: the init exits instead of
/// calling reboot(2) when it cannot re-execute.
pub fn install(test: bool) {
    let reexecs = reexecs();
    std::panic::set_hook(Box::new(move |info| {
        console(&format!("slipway-init: BUG: {info}"));
        let why = if reexecs >= MOST_REEXECS {
            format!("the init crashed {} times", reexecs + 1)
        } else if fs::metadata(STATE).is_err() {
            "the crash came before the boot's state was saved".to_owned()
        } else {
            let err = reexecute(reexecs + 1);
            format!("re-executing the init: {err}")
        };
        console(&format!("slipway-init: {why}; powering off"));
        power_off(test)
    }));
}

/// The init's stdout is the console (the kernel opens /dev/console for it). Never `println!`
/// here: a failing write would panic inside the panic hook.
fn console(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// execve(2) of the init's own executable with the same arguments; the signal mask (every
/// handled signal blocked) and pending signals carry over, so no shutdown request is lost.
/// std's `Command::exec` would unblock every signal first. Returns only on failure.
fn reexecute(count: u32) -> nix::Error {
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| nix::Error::EINVAL);
    let build = || -> Result<(Vec<CString>, Vec<CString>), nix::Error> {
        let args = std::env::args_os()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            // The fault that caused this crash must not fire again in the new init.
            if k == MARKER || k == FAULT {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(cstr(&kv)?);
        }
        env.push(cstr(format!("{MARKER}={count}").as_bytes())?);
        Ok((args, env))
    };
    let (args, env) = match build() {
        Ok(x) => x,
        Err(e) => return e,
    };
    let mut err = nix::Error::ENOENT;
    // /proc/self/exe is the file this init runs from even if /init was replaced.
    for path in [c"/proc/self/exe", c"/init"] {
        match nix::unistd::execve(path, &args, &env) {
            Err(e) => err = e,
            Ok(never) => match never {},
        }
    }
    err
}

/// What the shutdown does, without the parts a crashed init cannot be trusted with (containers,
/// the engine's API): every process gets SIGTERM, then SIGKILL, the disks are synced and the
/// machine powers off.
fn power_off(test: bool) -> ! {
    let all = nix::unistd::Pid::from_raw(-1);
    let _ = nix::sys::signal::kill(all, nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_secs(2));
    let _ = nix::sys::signal::kill(all, nix::sys::signal::Signal::SIGKILL);
    rustix::fs::sync();
    if test {
        std::process::exit(70);
    }
    let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The fault switch of the tests: `SLIPWAY_INIT_FAULT=NAME` panics at the point called NAME.
/// Only in builds with the `fault-injection` feature, which no image build enables (the
/// kernel command line can set the init's environment).
const FAULT: &str = "SLIPWAY_INIT_FAULT";

#[cfg(feature = "fault-injection")]
pub fn fault_point(name: &str) {
    if std::env::var(FAULT).as_deref() == Ok(name) {
        panic!("injected fault at {name}");
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fault_point(_name: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_its_json() {
        let s = State {
            onboot_started: 3,
            services_started: true,
            engine: Some(42),
            swarm: Some(43),
            services: vec![7, 8],
            shutdown: Some(Action::PowerOff),
        };
        assert_eq!(State::from_json(&s.to_json()), Some(s));
        assert_eq!(
            State::from_json(&State::default().to_json()),
            Some(State::default())
        );
        assert_eq!(State::from_json(&serde_json::json!({"engine": "x"})), None);
    }
}
