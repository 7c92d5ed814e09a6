//! Slipway's init: PID 1 of every image.
//!
//! It prepares the machine (root on a tmpfs, API filesystems, read-only /, hostname, loopback,
//! kernel modules), runs the onboot containers in order, starts the services (until the engine
//! does), then waits: it reaps orphans and, on poweroff, reboot, halt, SIGTERM or ctrl-alt-del,
//! runs the onshutdown containers, stops everything, syncs, unmounts and calls reboot(2).
//!
//! `SLIPWAY_INIT_TEST=1` runs it as the PID 1 of a pid namespace on a host: the steps that need
//! a real boot (root switch, sysfs/devtmpfs/cgroup mounts, read-only /, modules, unmounting,
//! reboot(2)) are skipped and it exits instead of rebooting.

mod cmdline;
mod containers;
mod engine;
mod events;
mod hostname;
mod modules;
mod mounts;
mod net;
mod services;
mod shutdown;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use events::Events;
use shutdown::{Action, Step};
use slipway_runtime::Runtime;

const CONTAINERS: &str = slipway_layout::CONTAINERS;
const LOG_DIR: &str = "/run/log";
const STATE_DIR: &str = slipway_layout::INIT_STATE;
const ROOT_MOVED: &str = "SLIPWAY_INIT_ROOT_MOVED";
const GRACE: Duration = Duration::from_secs(10);

fn say(msg: impl std::fmt::Display) {
    println!("slipway-init: {msg}");
}

/// The container runtime (libcontainer) reports why a container could not start through
/// `tracing`, often from the container's own init process where no error value reaches us: send
/// it to the console. `slipway.log=debug` on the kernel command line says more.
fn init_logging() {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let level = cmdline::parse(&cmdline)
        .into_iter()
        .find(|(k, _)| k == "slipway.log")
        .and_then(|(_, v)| v)
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
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
        .try_init();
}

fn main() {
    let test = std::env::var("SLIPWAY_INIT_TEST").as_deref() == Ok("1");
    if rustix::process::getpid().as_raw_nonzero().get() != 1 {
        eprintln!("slipway-init: must run as PID 1");
        std::process::exit(1);
    }
    if !test && std::env::var_os(ROOT_MOVED).is_none() && mounts::root_is_initramfs() {
        match mounts::switch_to_tmpfs_root() {
            Ok(()) => reexec(),
            Err(e) => say(format_args!(
                "{e}; containers will not be able to pivot_root"
            )),
        }
    }
    init_logging();
    let mut events = match Events::new() {
        Ok(e) => e,
        Err(e) => {
            // Without the signalfd the init can neither reap nor shut down cleanly.
            say(format_args!("cannot set up signal handling: {e}"));
            std::process::exit(1);
        }
    };
    boot(test);
    let runtime = match Runtime::new(STATE_DIR) {
        Ok(r) => r,
        Err(e) => {
            say(e);
            wait_and_shutdown(&mut events, None, test);
        }
    };
    let root = Path::new(CONTAINERS);
    for bundle in containers::list(&root.join("onboot")).unwrap_or_else(|e| {
        say(format_args!("reading {}/onboot: {e}", root.display()));
        Vec::new()
    }) {
        if events.shutdown.is_some() {
            say(format_args!(
                "shutdown requested: onboot {} skipped",
                bundle.name
            ));
            continue;
        }
        run_one(&runtime, &mut events, "onboot", &bundle);
    }
    let services = if events.shutdown.is_some() {
        Running::Nothing
    } else {
        match engine::Engine::start(&mut events) {
            Some(Ok(engine)) => {
                say(format_args!("engine started (pid {})", engine.pid()));
                Running::Engine(engine)
            }
            started => {
                if let Some(Err(e)) = started {
                    say(format_args!(
                        "starting {}: {e}; starting the services myself",
                        engine::ENGINE
                    ));
                }
                let bundles = containers::list(&root.join("services")).unwrap_or_default();
                Running::Direct(services::Services::start(
                    &runtime,
                    &mut events,
                    &bundles,
                    &Path::new(LOG_DIR).join("services"),
                ))
            }
        }
    };
    say("boot finished");
    wait_and_shutdown(&mut events, Some((&runtime, services)), test);
}

/// Who runs the services: the engine when the image has one, else the init itself.
enum Running {
    Nothing,
    Engine(engine::Engine),
    Direct(services::Services),
}

/// How long the engine may take to stop every service (each gets its own grace period).
const ENGINE_PATIENCE: Duration = Duration::from_secs(60);

fn reexec() -> ! {
    use std::os::unix::process::CommandExt;
    let arg0 = std::env::args().next().unwrap_or_else(|| "/init".into());
    let err = std::process::Command::new(&arg0)
        .env(ROOT_MOVED, "1")
        .exec();
    say(format_args!("re-executing {arg0} on the new root: {err}"));
    std::process::exit(1);
}

/// Mounts, read-only /, hostname, loopback, modules. Each failure is reported and the boot
/// goes on: a PID 1 that stops here leaves a machine nobody can look into.
fn boot(test: bool) {
    for mnt in mounts::EARLY {
        if test && mnt.real_boot_only {
            continue;
        }
        if let Err(e) = mounts::mount_one(mnt) {
            say(e);
        }
    }
    if !test {
        if let Err(e) = mounts::remount_root_read_only() {
            say(e);
        }
        // Ctrl-alt-del becomes SIGINT to PID 1 (a clean reboot) instead of an immediate one.
        if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::CadOff) {
            say(format_args!("disabling ctrl-alt-del reboot: {e}"));
        }
        load_modules();
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

/// How many coldplug passes: loading a bus driver (virtio_pci) makes new devices appear
/// (virtio-net, virtio-blk) whose drivers the next pass loads.
const COLDPLUG_PASSES: usize = 4;

fn load_modules() {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let dir = Path::new("/lib/modules").join(&release);
    let index = match modules::Index::load(&dir) {
        Ok(i) => i,
        Err(e) => {
            say(format_args!("no kernel modules: {e}"));
            return;
        }
    };
    let before = modules::loaded(Path::new("/sys/module"));
    // Modules asked for by name: a failure is worth a line on the console.
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let named: Vec<String> = REQUIRED_MODULES
        .iter()
        .map(|m| m.to_string())
        .chain(modules::named_in_etc(Path::new("/etc")))
        .chain(cmdline::modules(&cmdline::parse(&cmdline)))
        .collect();
    let mut tried: std::collections::HashSet<String> = std::collections::HashSet::new();
    for name in named {
        match index.resolve(&name) {
            Ok(found) => {
                for module in found {
                    if tried.insert(module.clone())
                        && let Err(e) = load_one(&index, &dir, &module)
                    {
                        say(e);
                    }
                }
            }
            Err(e) => say(e),
        }
    }
    // Coldplug: drivers for the devices present. A driver for absent hardware refuses to load
    // (ENODEV); like `modprobe -q` that is not reported.
    for _ in 0..COLDPLUG_PASSES {
        let wanted: Vec<String> = modules::device_modaliases(Path::new("/sys/devices"))
            .iter()
            .flat_map(|alias| index.matching(alias))
            .filter(|m| tried.insert(m.clone()))
            .collect();
        if wanted.is_empty() {
            break;
        }
        for module in wanted {
            let _ = load_one(&index, &dir, &module);
        }
    }
    let mut new: Vec<String> = modules::loaded(Path::new("/sys/module"))
        .difference(&before)
        .cloned()
        .collect();
    new.sort();
    say(format_args!(
        "loaded {} modules: {}",
        new.len(),
        new.join(" ")
    ));
}

/// Loads `module` and what it depends on, skipping what is loaded already.
fn load_one(index: &modules::Index, dir: &Path, module: &str) -> Result<(), modules::Error> {
    let order = index.load_order(
        &[module.to_string()],
        &modules::loaded(Path::new("/sys/module")),
    )?;
    for (name, path) in order {
        modules::insert(&name, &dir.join(path))?;
    }
    Ok(())
}

fn run_one(runtime: &Runtime, events: &mut Events, kind: &str, bundle: &containers::Bundle) {
    let log = Path::new(LOG_DIR)
        .join(kind)
        .join(format!("{}.log", bundle.name));
    say(format_args!("{kind} {} starting", bundle.name));
    match containers::run_to_completion(runtime, events, kind, bundle, &log) {
        Ok(status) if status.success() => say(format_args!("{kind} {} finished", bundle.name)),
        Ok(status) => say(format_args!("{kind} {} failed: {status}", bundle.name)),
        Err(e) => {
            say(format_args!("{kind} {} failed: {e:#}", bundle.name));
            containers::print_log_tail(&bundle.name, &log);
        }
    }
}

/// Reaps until a shutdown is requested, then winds the machine down.
fn wait_and_shutdown(events: &mut Events, running: Option<(&Runtime, Running)>, test: bool) -> ! {
    let action = loop {
        if let Some(action) = events.shutdown {
            break action;
        }
        events.wait(Duration::from_secs(60));
    };
    let (runtime, mut services) = match running {
        Some((r, s)) => (Some(r), s),
        None => (None, Running::Nothing),
    };
    for step in shutdown::plan(action) {
        match step {
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
