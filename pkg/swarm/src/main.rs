use clap::Parser;
use slipway_swarm::cli::{Cli, Verb};
use slipway_swarm::daemon::{Daemon, Options};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Verb::Daemon {
                state,
                engine,
                raft_tick,
                hostname,
                min_cert_expiry,
                config,
                executor,
            } => {
                daemon(
                    cli.socket,
                    state,
                    engine,
                    raft_tick,
                    hostname,
                    min_cert_expiry.into(),
                    config,
                    executor,
                )
                .await
            }
            Verb::Simulate {
                join,
                manager,
                nodes,
                parallel,
                state,
                hostname_prefix,
                advertise_addr,
            } => {
                log_to_stderr();
                slipway_swarm::simulate::run(slipway_swarm::simulate::Simulation {
                    join_token: join,
                    manager,
                    nodes,
                    parallel,
                    state,
                    hostname_prefix,
                    advertise_addr,
                })
                .await
            }
            verb => slipway_swarm::cli::run(&cli.socket, verb).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[allow(clippy::too_many_arguments)] // one per daemon flag, each passed straight through
async fn daemon(
    socket: std::path::PathBuf,
    state: std::path::PathBuf,
    engine: std::path::PathBuf,
    raft_tick: u64,
    hostname: Option<String>,
    min_cert_expiry: std::time::Duration,
    config: Vec<std::path::PathBuf>,
    executor: slipway_swarm::agent_tasks::ExecutorKind,
) -> anyhow::Result<()> {
    use anyhow::Context;
    log_to_stderr();
    // Bad settings are reported and ignored: the API still serves, `init`/`join` by hand work.
    let settings = slipway_swarm::settings::load(&config).unwrap_or_else(|e| {
        tracing::error!("settings: {e}");
        Default::default()
    });
    let hostname = hostname.or(settings.hostname.clone()).unwrap_or_else(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    });
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&socket);
    // Listen first: the API answers /_ping and /version before anything else is ready.
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    let daemon = Daemon::start(Options {
        state_dir: state,
        engine,
        raft_tick: std::time::Duration::from_millis(raft_tick.max(10)),
        hostname,
        min_cert_expiry,
        executor,
    })
    .await?;
    tracing::info!("serving the Docker Engine API on {}", socket.display());
    tokio::spawn(slipway_swarm::settings::apply(daemon.clone(), settings));
    let api = tokio::spawn(slipway_swarm::api::serve(listener, daemon));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = api => {}
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}
