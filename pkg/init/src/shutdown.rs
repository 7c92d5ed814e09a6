//! What ends the machine, and the order in which the init winds it down.

use nix::sys::signal::Signal;

/// How the machine ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PowerOff,
    Reboot,
    Halt,
}

impl Action {
    /// The signals PID 1 takes, with busybox's meanings so that `busybox poweroff|reboot|halt`
    /// in a container sharing the host's pid namespace shut the machine down cleanly.
    /// SIGINT is what the kernel sends for ctrl-alt-del once the init has disabled the
    /// immediate reboot (`reboot(RB_DISABLE_CAD)`); like a keyboard reboot, it reboots.
    pub fn from_signal(signal: Signal) -> Option<Self> {
        match signal {
            Signal::SIGUSR2 => Some(Self::PowerOff),
            Signal::SIGTERM | Signal::SIGINT => Some(Self::Reboot),
            Signal::SIGUSR1 => Some(Self::Halt),
            _ => None,
        }
    }

    /// The inverse of [`Action::describe`].
    pub fn from_description(text: &str) -> Option<Self> {
        [Self::PowerOff, Self::Reboot, Self::Halt]
            .into_iter()
            .find(|a| a.describe() == text)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::PowerOff => "power off",
            Self::Reboot => "reboot",
            Self::Halt => "halt",
        }
    }
}

/// One step of the wind-down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Run each onshutdown container to completion, in order: they may still need the
    /// services (to deregister, to flush), so these run first.
    RunOnShutdown,
    /// Stop the services: SIGTERM, a grace period, then SIGKILL; delete their containers.
    StopServices,
    /// Every process left (orphans, stray shells): SIGTERM, grace, SIGKILL.
    KillRemaining,
    Sync,
    /// Unmount everything but /, deepest first; remount / read-only.
    Unmount,
    /// reboot(2); in test mode the init exits instead.
    End(Action),
}

/// The wind-down for `action`. Onboot containers are not in it: one that runs when the
/// request arrives is allowed to finish and the rest are skipped.
pub fn plan(action: Action) -> Vec<Step> {
    vec![
        Step::RunOnShutdown,
        Step::StopServices,
        Step::KillRemaining,
        Step::Sync,
        Step::Unmount,
        Step::End(action),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_signals_map_to_actions() {
        assert_eq!(Action::from_signal(Signal::SIGUSR2), Some(Action::PowerOff));
        assert_eq!(Action::from_signal(Signal::SIGTERM), Some(Action::Reboot));
        assert_eq!(Action::from_signal(Signal::SIGUSR1), Some(Action::Halt));
        assert_eq!(Action::from_signal(Signal::SIGINT), Some(Action::Reboot));
        assert_eq!(Action::from_signal(Signal::SIGCHLD), None);
        assert_eq!(Action::from_signal(Signal::SIGHUP), None);
    }

    #[test]
    fn onshutdown_runs_before_anything_is_stopped_and_reboot_comes_last() {
        let steps = plan(Action::PowerOff);
        let at = |s: Step| steps.iter().position(|x| *x == s).unwrap();
        assert_eq!(at(Step::RunOnShutdown), 0);
        assert!(at(Step::StopServices) < at(Step::KillRemaining));
        assert!(at(Step::KillRemaining) < at(Step::Sync));
        assert!(at(Step::Sync) < at(Step::Unmount));
        assert_eq!(steps.last(), Some(&Step::End(Action::PowerOff)));
        assert_eq!(plan(Action::Halt).last(), Some(&Step::End(Action::Halt)));
    }
}
