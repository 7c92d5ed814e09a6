//! `slipway-engine`'s command line: the daemon (`daemon`, the default) and its client subcommands.
//! A module of the library, so that the init's multi-call binary runs it when called by this name.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::client::{Client, container_path};
use crate::shim;
use crate::{ContainerInfo, DEFAULT_SOCKET, Engine, EngineConfig};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hyper::Method;
use slipway_layout as layout;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Parser)]
#[command(name = "slipway-engine", version, about = "Slipway's container engine")]
struct Cli {
    /// The API's unix socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: start the services and serve the API (the default).
    Daemon(DaemonArgs),
    /// List the containers.
    Ps,
    /// Show one container as JSON.
    Inspect { name: String },
    /// Print a container's log.
    Logs {
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        name: String,
    },
    /// Start a stopped container.
    Start { name: String },
    /// Stop a container: SIGTERM, then SIGKILL after the timeout.
    Stop {
        /// Seconds between SIGTERM and SIGKILL (default: the service's stopGracePeriod).
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
        name: String,
    },
    /// Stop and start a container.
    Restart {
        /// Seconds between SIGTERM and SIGKILL (default: the service's stopGracePeriod).
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
        name: String,
    },
    /// Run a command inside a running container; exits with the command's exit code.
    Exec {
        /// Seconds the command may run before it is killed.
        #[arg(short = 't', long = "timeout", default_value_t = 60)]
        timeout: u64,
        name: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Pull IMAGE, create a container from it and start it; prints its name.
    Run {
        /// The container's name (default: from the image's name, numbered).
        #[arg(long)]
        name: Option<String>,
        /// Restart policy: no, always, on-failure or on-failure:N.
        #[arg(long)]
        restart: Option<String>,
        image: String,
        /// The command instead of the image's entrypoint and cmd (after `--`).
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Stop (when it runs) and remove a container made by `run`.
    Rm {
        /// Seconds between SIGTERM and SIGKILL (default: the engine's grace period).
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
        name: String,
    },
    /// Pull and unpack an image (run by the daemon; prints {"reference","digest","config"}).
    #[command(hide = true)]
    PullImage {
        /// The OCI store to pull into.
        #[arg(long)]
        store: PathBuf,
        /// The image is unpacked into DEST/<manifest-digest-hex>/.
        #[arg(long)]
        dest: PathBuf,
        /// A registry reached over plain HTTP (repeatable).
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
        reference: String,
    },
    /// Print the manifest digest a reference names in its registry (run by the daemon).
    #[command(hide = true)]
    ResolveDigest {
        /// A registry reached over plain HTTP (repeatable).
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
        reference: String,
    },
    /// Create and start a container, print {"pid"} (run by the daemon: creating may block).
    #[command(hide = true)]
    CreateContainer {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        bundle: PathBuf,
        /// The init program the command runs under.
        #[arg(long)]
        init: Option<PathBuf>,
        #[arg(long)]
        stdout: PathBuf,
        #[arg(long)]
        stderr: PathBuf,
    },
    /// Run a command in a container, print its outcome as JSON (run by the daemon).
    #[command(hide = true)]
    ExecContainer {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        timeout_ms: u64,
        #[arg(required = true, last = true)]
        cmd: Vec<String>,
    },
    /// Send a signal to a container's main process.
    Kill {
        #[arg(short = 's', long = "signal", default_value = "SIGKILL")]
        signal: String,
        name: String,
    },
}

#[derive(clap::Args, Clone)]
struct DaemonArgs {
    /// The service bundles, one directory per service.
    #[arg(long, default_value = layout::SERVICES)]
    bundles: PathBuf,
    /// Each service's log goes to DIR/NAME.log.
    #[arg(long, default_value = layout::LOG_DIR)]
    log_dir: PathBuf,
    /// The runtime's state (one directory per container).
    #[arg(long, default_value = layout::ENGINE_STATE)]
    state_dir: PathBuf,
    /// The bundles of containers made by `run`.
    #[arg(long, default_value = layout::RUN_CONTAINERS)]
    containers: PathBuf,
    /// Unpacked images (the lower directories of `run`'s containers).
    #[arg(long, default_value = layout::RUN_IMAGES)]
    images: PathBuf,
    /// The OCI store `run` pulls images into.
    #[arg(long, default_value = layout::RUN_STORE)]
    store: PathBuf,
    /// Seconds a service gets between SIGTERM and SIGKILL when it is stopped, unless its bundle
    /// sets its own (org.slipway.stopGracePeriod) or the stop request gives one.
    #[arg(long, default_value_t = 10)]
    grace: u64,
    /// The directories of `run`'s volume mounts, one per volume name.
    #[arg(long, default_value = RUN_VOLUMES)]
    volumes: PathBuf,
    /// A registry (HOST:PORT) pulled from over plain HTTP although it is not on loopback
    /// (repeatable, like dockerd's); added to the settings file's `insecureRegistries`.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// The engine's settings: JSON `{"insecureRegistries": ["HOST:PORT", ...]}`; a missing file
    /// is no settings.
    #[arg(long, default_value = SETTINGS)]
    settings: PathBuf,
}

/// The directories of `run`'s volume mounts.
pub const RUN_VOLUMES: &str = "/var/lib/slipway/volumes";
/// The engine's settings file in an image (written by the manifest's `files`).
pub const SETTINGS: &str = "/etc/slipway/engine.json";

/// The settings file's contents.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Settings {
    #[serde(default)]
    insecure_registries: Vec<String>,
}

fn read_settings(path: &Path) -> anyhow::Result<Settings> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        Ok(text) => serde_json::from_slice(&text)
            .with_context(|| format!("{}: not the engine's settings", path.display())),
    }
}

impl Default for DaemonArgs {
    /// The defaults above: `slipway-engine` with no subcommand runs the daemon as the image's
    /// service.
    fn default() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: DaemonArgs,
        }
        Only::parse_from(["slipway-engine"]).args
    }
}

pub fn main() -> ExitCode {
    // Run as a container's init, this program is that and nothing else.
    let mut args = std::env::args_os();
    if args
        .next()
        .is_some_and(|arg0| Path::new(&arg0).file_name() == Some(OsStr::new(shim::NAME)))
    {
        std::process::exit(shim::run(&args.collect::<Vec<_>>()));
    }
    let cli = Cli::parse();
    // `RUST_LOG` in its `target=level,...` form (no regex-based span filters: the image carries
    // no regex engine for them).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::Targets>().ok())
        // The runtime's per-container chatter (cgroup manager, unsupported controllers) would
        // drown the engine's own lines.
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new()
                .with_default(tracing::Level::INFO)
                .with_target("libcgroups", tracing::Level::ERROR)
                .with_target("libcontainer", tracing::Level::WARN)
                .with_target(slipway_runtime::NO_SECCOMP_WARNINGS, tracing::Level::ERROR)
        });
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Its stderr is the machine's serial console: plain text.
        .with_ansi(false)
        .finish()
        .with(filter)
        .init();
    // Pulling runs its own multi-threaded runtime, so it happens before (and without) ours.
    if let Some(Command::ResolveDigest {
        insecure_registries,
        reference,
    }) = &cli.command
    {
        return match crate::run::resolve_digest(reference, insecure_registries) {
            Ok(resolved) => {
                println!(
                    "{}",
                    serde_json::to_string(&resolved).expect("JSON values serialize")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("slipway-engine: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::PullImage {
        store,
        dest,
        insecure_registries,
        reference,
    }) = &cli.command
    {
        return match crate::run::pull_image(store, dest, reference, insecure_registries) {
            Ok(pulled) => {
                println!(
                    "{}",
                    serde_json::to_string(&pulled).expect("JSON values serialize")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("slipway-engine: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // The daemon's helpers: each is one process doing one blocking thing, single-threaded
    // (libcontainer's clone3), without the daemon's runtime.
    match &cli.command {
        Some(Command::CreateContainer {
            state_dir,
            id,
            bundle,
            init,
            stdout,
            stderr,
        }) => {
            return crate::supervisor::create_helper_main(
                state_dir,
                id,
                bundle,
                init.as_deref(),
                stdout,
                stderr,
            );
        }
        Some(Command::ExecContainer {
            state_dir,
            id,
            bundle,
            timeout_ms,
            cmd,
        }) => {
            return crate::exec::helper_main(
                state_dir,
                id,
                bundle,
                cmd,
                Duration::from_millis(*timeout_ms),
            );
        }
        _ => {}
    }
    // One thread: see the supervisor module on libcontainer's clone3.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("slipway-engine: starting tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => daemon(&cli.socket, DaemonArgs::default()).await,
            Some(Command::Daemon(args)) => daemon(&cli.socket, args).await,
            Some(command) => client(Client::new(&cli.socket), command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slipway-engine: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Binds the socket under a temporary name and renames it into place, so a client never
/// connects to a half-set-up socket (and tests can wait for the path to appear).
fn bind(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    let dir = socket.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = socket.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)
        .with_context(|| format!("binding {}", tmp.display()))?;
    // Only root may drive the engine: the API starts and kills containers.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    std::fs::rename(&tmp, socket)
        .with_context(|| format!("renaming {} to {}", tmp.display(), socket.display()))?;
    Ok(listener)
}

async fn daemon(socket: &Path, args: DaemonArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let program = std::env::current_exe().context("finding this program (pull-image, init)")?;
    // Containers are created by helper processes and are their children; when a helper exits,
    // its container comes to the engine, which reaps it.
    nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
    let mut insecure_registries = read_settings(&args.settings)?.insecure_registries;
    insecure_registries.extend(args.insecure_registries.iter().cloned());
    let engine = Engine::load(&EngineConfig {
        bundles: args.bundles.clone(),
        log_dir: args.log_dir.clone(),
        state_dir: args.state_dir.clone(),
        containers: args.containers.clone(),
        images: args.images.clone(),
        store: args.store.clone(),
        puller: program.clone(),
        init: Some(program),
        stop_grace: Duration::from_secs(args.grace),
        volumes: args.volumes.clone(),
        insecure_registries,
    })?;
    let listener = bind(socket)?;
    tracing::info!(
        "listening on {}, services from {}",
        socket.display(),
        args.bundles.display()
    );
    tokio::spawn(crate::supervisor::reap_strays(engine.clone()));
    engine.spawn_supervisors();
    let server = tokio::spawn(crate::api::serve(listener, engine.clone()));
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping the services"),
        _ = int.recv() => tracing::info!("SIGINT: stopping the services"),
    }
    let took = engine.shutdown().await;
    server.abort();
    let _ = std::fs::remove_file(socket);
    tracing::info!("every service stopped in {} ms; exiting", took.as_millis());
    Ok(())
}

async fn client(client: Client, command: Command) -> anyhow::Result<()> {
    let (method, path, body) = match &command {
        Command::Daemon(_)
        | Command::PullImage { .. }
        | Command::ResolveDigest { .. }
        | Command::CreateContainer { .. }
        | Command::ExecContainer { .. } => unreachable!("handled by main"),
        Command::Run {
            name,
            restart,
            image,
            cmd,
        } => (
            Method::POST,
            "/v1/containers".to_owned(),
            Some(serde_json::json!({
                "image": image,
                "name": name,
                "restart": restart,
                "cmd": (!cmd.is_empty()).then_some(cmd),
            })),
        ),
        Command::Rm { time, name } => (
            Method::DELETE,
            container_path(name, ""),
            Some(serde_json::json!({ "timeout": time })),
        ),
        Command::Ps => (Method::GET, "/v1/containers".to_owned(), None),
        Command::Inspect { name } => (Method::GET, container_path(name, ""), None),
        Command::Logs { follow, name } => {
            let mut path = container_path(name, "logs");
            if *follow {
                path.push_str("?follow=1");
            }
            let mut stdout = std::io::stdout();
            let reply = client
                .stream(&path, |data| {
                    let _ = stdout.write_all(data);
                    let _ = stdout.flush();
                })
                .await?;
            if !reply.status.is_success() {
                bail!("{}", reply.error_message());
            }
            return Ok(());
        }
        Command::Start { name } => (Method::POST, container_path(name, "start"), None),
        Command::Stop { time, name } => (
            Method::POST,
            container_path(name, "stop"),
            Some(serde_json::json!({ "timeout": time })),
        ),
        Command::Restart { time, name } => (
            Method::POST,
            container_path(name, "restart"),
            Some(serde_json::json!({ "timeout": time })),
        ),
        Command::Exec { timeout, name, cmd } => (
            Method::POST,
            container_path(name, "exec"),
            Some(serde_json::json!({ "cmd": cmd, "timeout": timeout })),
        ),
        Command::Kill { signal, name } => (
            Method::POST,
            container_path(name, "kill"),
            Some(serde_json::json!({ "signal": signal })),
        ),
    };
    let body = body.map(|b| serde_json::to_vec(&b).expect("JSON values serialize"));
    let reply = client.request(method, &path, body).await?;
    if !reply.status.is_success() {
        bail!("{} ({})", reply.error_message(), reply.status);
    }
    match command {
        Command::Ps => {
            let list: Vec<serde_json::Value> = serde_json::from_slice(&reply.body)
                .context("the engine's container list is not JSON")?;
            println!(
                "{:<20} {:<11} {:<9} {:>7} {:>5} {:>8} {:<14} LAST EXIT",
                "NAME", "STATE", "HEALTH", "PID", "RUNS", "RESTARTS", "RESTART"
            );
            for c in list {
                let c: ContainerInfo = serde_json::from_value(c.clone())
                    .map_err(|e| anyhow::anyhow!("unexpected container entry {c}: {e}"))?;
                let health = match c.health {
                    Some(health) => serde_json::to_value(health)?
                        .as_str()
                        .unwrap_or("?")
                        .to_owned(),
                    None => "-".to_owned(),
                };
                println!(
                    "{:<20} {:<11} {:<9} {:>7} {:>5} {:>8} {:<14} {}",
                    c.name,
                    serde_json::to_value(c.state)?.as_str().unwrap_or("?"),
                    health,
                    c.pid.map_or("-".to_owned(), |p| p.to_string()),
                    c.runs,
                    c.restarts,
                    c.restart,
                    c.error.or(c.last_exit).unwrap_or_default()
                );
            }
        }
        Command::Exec { .. } => {
            let reply: crate::api::ExecReply = serde_json::from_slice(&reply.body)
                .context("the engine's exec answer is not JSON")?;
            let mut stdout = std::io::stdout();
            stdout.write_all(reply.output.as_bytes())?;
            stdout.flush()?;
            if reply.timed_out {
                eprintln!("slipway-engine: the command timed out and was killed");
            }
            // The exit code is the command's; 0..=255 fits a process exit status.
            std::process::exit(reply.exit_code.clamp(0, 255));
        }
        Command::Inspect { .. } => {
            println!("{}", serde_json::to_string_pretty(&reply.json())?);
        }
        Command::Run { .. } => {
            let info: ContainerInfo = serde_json::from_slice(&reply.body)
                .context("the engine's answer to run is not a container")?;
            println!("{}", info.name);
        }
        Command::Start { name }
        | Command::Rm { name, .. }
        | Command::Stop { name, .. }
        | Command::Restart { name, .. }
        | Command::Kill { name, .. } => println!("{name}"),
        Command::Daemon(_)
        | Command::PullImage { .. }
        | Command::ResolveDigest { .. }
        | Command::CreateContainer { .. }
        | Command::ExecContainer { .. }
        | Command::Logs { .. } => {}
    }
    Ok(())
}
