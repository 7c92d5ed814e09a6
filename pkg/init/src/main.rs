//! Slipway's init: PID 1 of every image.
//!
//! It prepares the machine (API filesystems, read-only /, hostname, loopback, kernel modules),
//! runs the onboot containers in order, starts the services (until the engine does), prints the
//! boot's timeline, then waits: it reaps orphans and, on poweroff, reboot, halt, SIGTERM or
//! ctrl-alt-del, runs the onshutdown containers, stops everything, syncs, unmounts and calls
//! reboot(2).
//!
//! The initramfs stays where the kernel unpacked it: its rootfs is a tmpfs (or ramfs) already,
//! and the only reason to copy it elsewhere, pivot_root(2) for containers, is moot because the
//! runtime enters container roots without it on a ramdisk root (runc's `--no-pivot` way).
//!
//! `SLIPWAY_INIT_TEST=1` runs it as the PID 1 of a pid namespace on a host: the steps that need
//! a real boot (sysfs/devtmpfs/cgroup mounts, read-only /, modules, unmounting, reboot(2)) are
//! skipped and it exits instead of rebooting.
//!
//! A panic does not end it: see `guard` (it executes itself again and carries on waiting).

mod cmdline;
mod coldplug;
mod containers;
mod engine;
mod events;
mod guard;
mod hostname;
mod modprobe;
mod modules;
mod mounts;
mod net;
mod root;
mod services;
mod shutdown;
mod timeline;
mod volumes;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use events::Events;
use shutdown::{Action, Step};
use slipway_runtime::Runtime;
use timeline::Timeline;

const CONTAINERS: &str = slipway_layout::CONTAINERS;
const LOG_DIR: &str = "/run/log";
const STATE_DIR: &str = slipway_layout::INIT_STATE;
const GRACE: Duration = Duration::from_secs(10);

fn say(msg: impl std::fmt::Display) {
    println!("slipway-init: {msg}");
}

/// The container runtime (libcontainer) reports why a container could not start through
/// `tracing`, often from the container's own init process where no error value reaches us: send
/// it to the console. `slipway.log=debug` on the kernel command line says more.
fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let level = cmdline::parse(&cmdline)
        .into_iter()
        .find(|(k, _)| k == "slipway.log")
        .and_then(|(_, v)| v)
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    // libcgroups warns at every container start that it does not implement the rdma and misc
    // controllers the kernel offers; nothing is wrong and nobody can act on it. Its errors
    // still show, and everything does with slipway.log=info or debug.
    let mut filter = Targets::new().with_default(level);
    if level <= tracing::Level::WARN {
        filter = filter
            .with_target("libcgroups", tracing::Level::ERROR)
            .with_target(slipway_runtime::NO_SECCOMP_WARNINGS, tracing::Level::ERROR);
    }
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        // Opened per message: a container's init process reports from after its stdout was
        // redirected to the container's log, and the console is where a person looks.
        .with_writer(|| -> Box<dyn std::io::Write> {
            match fs::OpenOptions::new().write(true).open("/dev/console") {
                Ok(f) => Box::new(f),
                Err(_) => Box::new(std::io::stdout()),
            }
        })
        .with_ansi(false)
        .without_time()
        .finish()
        .with(filter);
    let _ = subscriber.try_init();
}

/// One binary is the init, the engine (and the engine's reaping shim), the state disk's `format`
/// and `mountie`, and the host packages' `metadata`, `sysctl` and `rngd`, told apart by the name
/// it is called by (busybox's way), so that an image carries one copy of the runtime, the
/// standard library and libc: the packages install the same file under each name and the
/// builder stores identical files once. Called by any other name (`/init`, `/sbin/init`), it is the init.
fn multi_call() -> Option<fn() -> std::process::ExitCode> {
    let arg0 = std::env::args_os().next()?;
    let name = Path::new(&arg0).file_name()?.to_str()?;
    match name {
        "slipway-engine" | slipway_engine::shim::NAME => Some(slipway_engine::cli::main),
        "format" => Some(slipway_disk::command::main),
        "mountie" => Some(slipway_mountie::main),
        "metadata" => Some(slipway_metadata::main),
        "sysctl" => Some(slipway_sysctl::main),
        "rngd" => Some(slipway_rngd::main),
        // The hook that binds the host's /dev on a container's (slipway-bundle's dev_bind_hook).
        "slipway-dev-bind" => Some(slipway_runtime::dev_bind::main),
        _ => None,
    }
}

fn main() {
    if let Some(program) = multi_call() {
        let failed = program() != std::process::ExitCode::SUCCESS;
        std::process::exit(i32::from(failed));
    }
    let started = timeline::now_ms();
    let test = std::env::var("SLIPWAY_INIT_TEST").as_deref() == Ok("1");
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(names) = modprobe::helper_call(&args) {
        std::process::exit(if modprobe::run(&names) { 0 } else { 1 });
    }
    if rustix::process::getpid().as_raw_nonzero().get() != 1 {
        eprintln!("slipway-init: must run as PID 1");
        std::process::exit(1);
    }
    guard::install(test);
    let resumed = guard::resume();
    init_logging();
    let switched = if test || resumed.is_some() {
        None
    } else {
        root::Switched::take_from_env()
    };
    if !test && switched.is_none() && resumed.is_none() {
        root::switch_if_asked(started, say);
    }
    // After a root switch, the kernel's part of the boot ended when the first init started.
    let started = switched.as_ref().map_or(started, |s| s.started_ms);
    let mut events = match Events::new() {
        Ok(e) => e,
        Err(e) => {
            // Without the signalfd the init can neither reap nor shut down cleanly.
            say(format_args!("cannot set up signal handling: {e}"));
            std::process::exit(1);
        }
    };
    let mut timeline = Timeline::default();
    let mut state = match resumed {
        Some(state) => {
            say(format_args!(
                "re-executed after a crash ({} so far): the boot is not repeated",
                guard::reexecs()
            ));
            if state.shutdown.is_some() {
                events.shutdown = state.shutdown;
            }
            state
        }
        None => {
            boot(test, started, switched.as_ref(), &mut timeline);
            let state = guard::State::default();
            state.save();
            state
        }
    };
    let resumed = guard::reexecs() > 0;
    let runtime = match Runtime::new(STATE_DIR) {
        Ok(r) => r,
        Err(e) => {
            say(e);
            wait_and_shutdown(&mut events, None, None, &mut state, test);
        }
    };
    let root = Path::new(CONTAINERS);
    let onboot = containers::list(&root.join("onboot")).unwrap_or_else(|e| {
        say(format_args!("reading {}/onboot: {e}", root.display()));
        Vec::new()
    });
    for (i, bundle) in onboot.iter().enumerate() {
        if i < state.onboot_started {
            continue;
        }
        if state.services_started {
            break;
        }
        if events.shutdown.is_some() {
            say(format_args!(
                "shutdown requested: onboot {} skipped",
                bundle.name
            ));
            continue;
        }
        // Counted before it runs: after a crash during it, it is not run a second time.
        state.onboot_started = i + 1;
        state.save();
        run_one(&runtime, &mut events, "onboot", bundle);
        timeline.mark(format!("onboot {}", bundle.name));
    }
    let services = if state.services_started {
        match state.engine {
            Some(pid) => {
                say(format_args!("adopting the engine (pid {pid})"));
                Running::Engine(engine::Supervised::adopt(pid, &mut events))
            }
            None => Running::Adopted(state.services.clone()),
        }
    } else if events.shutdown.is_some() {
        Running::Nothing
    } else {
        match engine::Engine::start(&mut events) {
            Some(Ok(engine)) => {
                timeline.mark("engine");
                say(format_args!("engine started (pid {})", engine.pid()));
                Running::Engine(engine::Supervised::new(engine))
            }
            started => {
                if let Some(Err(e)) = started {
                    say(format_args!(
                        "starting {}: {e}; starting the services myself",
                        engine::ENGINE
                    ));
                }
                let bundles = containers::list(&root.join("services")).unwrap_or_default();
                let direct = services::Services::start(
                    &runtime,
                    &mut events,
                    &bundles,
                    &Path::new(LOG_DIR).join("services"),
                );
                if let Some((name, ms)) = direct.first_started() {
                    timeline.mark_at(format!("first service {name}"), ms);
                }
                Running::Direct(direct)
            }
        }
    };
    state.services_started = true;
    match &services {
        Running::Engine(engine) => state.engine = engine.pid(),
        Running::Direct(direct) => state.services = direct.pids(),
        Running::Adopted(_) | Running::Nothing => {}
    }
    state.save();
    // The engine starts its services on its own schedule: the timeline waits for the first.
    let pending = if resumed {
        None
    } else {
        say("boot finished");
        match services {
            Running::Engine(_) => Some(FirstServiceWatch::new()),
            _ => {
                report(&timeline);
                None
            }
        }
    };
    guard::fault_point("after-boot");
    wait_and_shutdown(
        &mut events,
        Some((&runtime, services)),
        pending.map(|w| (w, timeline)),
        &mut state,
        test,
    );
}

fn report(timeline: &Timeline) {
    say(timeline.line());
    if let Err(e) = timeline.save(Path::new(timeline::JSON_PATH)) {
        say(format_args!("writing {}: {e}", timeline::JSON_PATH));
    }
}

/// Asks the engine, between two turns of the init's loop, when its first service started.
struct FirstServiceWatch {
    give_up: Instant,
}

/// How often the init asks, and how long one question may take (the loop is blocked meanwhile).
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
const WATCH_TIMEOUT: Duration = Duration::from_millis(250);
/// After this, the timeline is printed without a first service (one waiting for a dependency
/// that never becomes healthy, say).
const WATCH_PATIENCE: Duration = Duration::from_secs(120);

impl FirstServiceWatch {
    fn new() -> Self {
        Self {
            give_up: Instant::now() + WATCH_PATIENCE,
        }
    }

    /// True once the timeline is complete (the first service is in it, or will never be).
    fn poll(&self, timeline: &mut Timeline) -> bool {
        use engine::FirstService;
        match engine::first_service(Path::new(engine::SOCKET), WATCH_TIMEOUT) {
            Ok(FirstService::Started { name, unix_ms }) => {
                if let Some(ms) = timeline::boot_ms_of_wall_clock(unix_ms) {
                    timeline.mark_at(format!("first service {name}"), ms);
                }
                true
            }
            Ok(FirstService::None) => true,
            // Not listening yet, or nothing started yet.
            Ok(FirstService::NotYet) | Err(_) => Instant::now() >= self.give_up,
        }
    }
}

/// Who runs the services: the engine when the image has one, else the init itself.
enum Running {
    Nothing,
    Engine(engine::Supervised),
    Direct(services::Services),
    /// Services the init started before it re-executed itself: their main processes.
    Adopted(Vec<i32>),
}

/// How long the engine may take to stop every service (each gets its own grace period).
const ENGINE_PATIENCE: Duration = Duration::from_secs(60);

/// Mounts, read-only /, hostname, loopback, modules. Each failure is reported and the boot
/// goes on: a PID 1 that stops here leaves a machine nobody can look into. `started` is when
/// the init started, the end of the kernel's part of the boot.
fn boot(test: bool, started: u64, switched: Option<&root::Switched>, timeline: &mut Timeline) {
    for mnt in mounts::EARLY {
        if test && mnt.real_boot_only {
            continue;
        }
        // A root switch moved /proc, /sys, /dev and /run here already.
        if switched.is_some() && mounts::is_mount_point(Path::new(mnt.target)) {
            continue;
        }
        if let Err(e) = mounts::mount_one(mnt) {
            say(e);
        }
    }
    for target in mounts::SHARED {
        if let Err(e) = mounts::make_shared(target) {
            say(e);
        }
    }
    if let Err(e) = mounts::make_resolv_conf() {
        say(e);
    }
    if !test {
        if let Err(e) = mounts::remount_root_read_only() {
            say(e);
        }
        // Ctrl-alt-del becomes SIGINT to PID 1 (a clean reboot) instead of an immediate one.
        if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::CadOff) {
            say(format_args!("disabling ctrl-alt-del reboot: {e}"));
        }
        // The kernel's log (on the devtmpfs just mounted) tells when it had the initramfs
        // unpacked; its clock is the one of CLOCK_BOOTTIME's start, give or take a tick.
        if let Some(ms) = timeline::initramfs_unpacked_ms(Path::new("/dev/kmsg"))
            && ms <= started
        {
            timeline.mark_at("initramfs", ms);
        }
    }
    timeline.mark_at("kernel", started);
    if let Some(root) = switched {
        say(format_args!(
            "running on the root {} ({}, read-only)",
            root.device, root.fstype
        ));
        timeline.mark_at("root", root.mounted_ms);
    }
    timeline.mark("mounts");
    if !test {
        // Modules a container's mount or socket needs load on demand, through the init.
        if let Err(e) = modprobe::register() {
            say(format_args!(
                "registering as the kernel's module helper: {e}"
            ));
        }
        load_modules();
        timeline.mark("modules");
    }
    let mounted = volumes::mount_all(Path::new(slipway_layout::VOLUMES), say);
    if !mounted.is_empty() {
        say(format_args!("volumes mounted: {}", mounted.join(", ")));
    }
    let name = hostname::choose(Path::new("/"));
    match rustix::system::sethostname(name.as_bytes()) {
        Ok(()) => say(format_args!("hostname {name}")),
        Err(e) => say(format_args!("setting hostname {name}: {e}")),
    }
    if let Err(e) = net::loopback_up() {
        say(format_args!("bringing up lo: {e}"));
    }
}

/// Modules Slipway itself needs whatever the hardware: writable containers are overlays.
const REQUIRED_MODULES: &[&str] = &["overlay"];

fn load_modules() {
    let mut plug = match coldplug::Coldplug::open(say) {
        Ok(p) => p,
        Err(e) => {
            say(format_args!("no kernel modules: {e}"));
            return;
        }
    };
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let named: Vec<String> = REQUIRED_MODULES
        .iter()
        .map(|m| m.to_string())
        .chain(modules::named_in_etc(Path::new("/etc")))
        .chain(cmdline::modules(&cmdline::parse(&cmdline)))
        .collect();
    for e in plug.load_named(&named) {
        say(e);
    }
    plug.settle();
    let new = plug.loaded_since_open();
    say(format_args!(
        "loaded {} modules: {}",
        new.len(),
        new.join(" ")
    ));
}

fn run_one(runtime: &Runtime, events: &mut Events, kind: &str, bundle: &containers::Bundle) {
    use containers::Outcome;
    let log = Path::new(LOG_DIR)
        .join(kind)
        .join(format!("{}.log", bundle.name));
    let onboot = kind == "onboot";
    let default = if onboot {
        containers::ONBOOT_TIMEOUT
    } else {
        containers::ONSHUTDOWN_TIMEOUT
    };
    let timeout = containers::timeout_of(bundle).unwrap_or_else(|e| {
        say(format_args!(
            "{kind} {}: {e}; timeout {default:?}",
            bundle.name
        ));
        None
    });
    let limits = containers::Limits {
        timeout: timeout.unwrap_or(default),
        interrupted_by_shutdown: onboot,
    };
    say(format_args!("{kind} {} starting", bundle.name));
    match containers::run_to_completion(runtime, events, kind, bundle, &log, limits) {
        Ok(Outcome::Exited(status)) if status.success() => {
            say(format_args!("{kind} {} finished", bundle.name))
        }
        Ok(Outcome::Exited(status)) => say(format_args!("{kind} {} failed: {status}", bundle.name)),
        Ok(Outcome::TimedOut(after)) => say(format_args!(
            "{kind} {} timed out after {after:?}: killed",
            bundle.name
        )),
        Ok(Outcome::Interrupted) => say(format_args!(
            "{kind} {} still running {:?} after the shutdown request: killed",
            bundle.name,
            containers::SHUTDOWN_GRACE
        )),
        Err(e) => {
            say(format_args!("{kind} {} failed: {e:#}", bundle.name));
            containers::print_log_tail(&bundle.name, &log);
        }
    }
}

/// Reaps until a shutdown is requested, then winds the machine down.
/// `pending` is a timeline still waiting for the engine's first service: it is reported when
/// that is known, or at the shutdown request at the latest.
fn wait_and_shutdown(
    events: &mut Events,
    running: Option<(&Runtime, Running)>,
    mut pending: Option<(FirstServiceWatch, Timeline)>,
    state: &mut guard::State,
    test: bool,
) -> ! {
    // A shutdown that was under way when the init crashed: its onshutdown containers ran, or
    // ran partly, and are not run again.
    let resumed_shutdown = state.shutdown.is_some();
    let (runtime, mut services) = match running {
        Some((r, s)) => (Some(r), s),
        None => (None, Running::Nothing),
    };
    let action = loop {
        if let Some(action) = events.shutdown {
            break action;
        }
        let mut wait = match pending {
            Some(_) => WATCH_INTERVAL,
            None => Duration::from_secs(60),
        };
        if let Running::Engine(engine) = &services
            && let Some(at) = engine.next_start()
        {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        events.wait(wait);
        if events.shutdown.is_some() {
            continue;
        }
        if let Running::Engine(engine) = &mut services
            && engine.tend(events)
        {
            state.engine = engine.pid();
            state.save();
        }
        if let Some((watch, timeline)) = &mut pending
            && watch.poll(timeline)
        {
            report(timeline);
            pending = None;
        }
    };
    state.shutdown = Some(action);
    state.save();
    if let Some((_, timeline)) = pending {
        report(&timeline);
    }
    for step in shutdown::plan(action) {
        match step {
            Step::RunOnShutdown if resumed_shutdown => {}
            Step::RunOnShutdown => {
                if let Some(runtime) = runtime {
                    for bundle in containers::list(&Path::new(CONTAINERS).join("onshutdown"))
                        .unwrap_or_default()
                    {
                        run_one(runtime, events, "onshutdown", &bundle);
                    }
                }
            }
            Step::StopServices => match std::mem::replace(&mut services, Running::Nothing) {
                Running::Engine(engine) => engine.stop(events, ENGINE_PATIENCE),
                Running::Direct(s) => s.stop(events, GRACE),
                Running::Adopted(pids) => stop_adopted(events, &pids),
                Running::Nothing => {}
            },
            Step::KillRemaining => kill_remaining(events),
            Step::Sync => rustix::fs::sync(),
            Step::Unmount => {
                if !test {
                    for e in mounts::unmount_all() {
                        say(e);
                    }
                }
            }
            Step::End(action) => end(action, test),
        }
    }
    unreachable!("the plan ends with Step::End");
}

/// SIGTERM to the services an earlier run of the init started, and their grace period; what
/// is left goes with the final kill of every process.
fn stop_adopted(events: &mut Events, pids: &[i32]) {
    for &pid in pids {
        events.watch(pid);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let mut left: Vec<i32> = pids.to_vec();
    let deadline = Instant::now() + GRACE;
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|&pid| events.exit_of(pid).is_none() && pid_exists(pid));
        events.wait(Duration::from_millis(100));
    }
}

/// Whether `pid` is still a process (one reaped before the init re-executed is not).
fn pid_exists(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// kill(-1) from PID 1 reaches every process but itself (in its pid namespace).
fn kill_remaining(events: &mut Events) {
    let all = nix::unistd::Pid::from_raw(-1);
    let _ = nix::sys::signal::kill(all, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while events.reap() && Instant::now() < deadline {
        events.wait(Duration::from_millis(100));
    }
    let _ = nix::sys::signal::kill(all, nix::sys::signal::Signal::SIGKILL);
    while events.reap() && Instant::now() < deadline + Duration::from_secs(2) {
        events.wait(Duration::from_millis(50));
    }
}

fn end(action: Action, test: bool) -> ! {
    say(format_args!("{}", action.describe()));
    if test {
        std::process::exit(0);
    }
    let cmd = match action {
        Action::PowerOff => rustix::system::RebootCommand::PowerOff,
        Action::Reboot => rustix::system::RebootCommand::Restart,
        Action::Halt => rustix::system::RebootCommand::Halt,
    };
    let err = rustix::system::reboot(cmd);
    say(format_args!("reboot(2) failed: {err:?}"));
    // PID 1 must not exit: the kernel would panic. Sleep forever instead.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
