//! Command-line front end: one file per subcommand. Each turns its arguments into the library's
//! options and calls one library function; the work lives in the library where tests can call it.

mod build;
mod cache;
mod pkg;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Builds immutable, minimal Linux OS images from a LinuxKit-style YAML manifest.
#[derive(Parser, Debug)]
#[command(name = "slipway", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand understands.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// The content-addressed image store (default: $XDG_CACHE_HOME/slipway).
    #[arg(long, global = true, env = "SLIPWAY_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Global {
    /// The image store every command shares.
    pub fn store(&self) -> anyhow::Result<crate::oci::Store> {
        use anyhow::Context;
        let root = self
            .cache
            .clone()
            .unwrap_or_else(crate::oci::Store::default_root);
        crate::oci::Store::open(&root)
            .with_context(|| format!("opening the image store {}", root.display()))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build an image from one or more manifests (merged in order).
    Build(build::Args),
    /// Boot a built image in a hypervisor (qemu; hyperkit and hyperv are recognised).
    #[command(subcommand)]
    Run(run::Command),
    /// Build, tag and push package images from folders under pkg/.
    #[command(subcommand)]
    Pkg(pkg::Command),
    /// Inspect and manage the local content-addressed image store.
    #[command(subcommand)]
    Cache(cache::Command),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    if !matches!(cli.command, Command::Run(_)) {
        clean_up_on_interrupt();
    }
    let result = match cli.command {
        Command::Build(args) => build::run(args, &cli.global),
        Command::Run(cmd) => run::run(cmd, &cli.global),
        Command::Pkg(cmd) => pkg::run(cmd, &cli.global),
        Command::Cache(cmd) => cache::run(cmd, &cli.global),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(err);
            ExitCode::FAILURE
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP, removes the temporary files of the outputs and the store
/// (see `slipway_oci::interrupt`) before dying of that signal. `run` keeps the default: its
/// QEMU child dies with it (parent-death signal) and it writes nothing to clean up.
fn clean_up_on_interrupt() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        tracing::warn!("cannot watch for Ctrl-C: an interrupt may leave temporary files");
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            crate::oci::interrupt::clean_up();
            // Dies of the signal, as without a handler (exit status 128 + signal for the shell).
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            std::process::exit(128 + signal);
        }
    });
}

/// Prints an error. Manifest errors carry source snippets and render through miette; everything
/// else prints its context chain.
fn report(err: anyhow::Error) {
    if let Some(diag) = err.downcast_ref::<crate::manifest::ManifestError>() {
        eprintln!("{:?}", miette::Report::new(diag.clone()));
        return;
    }
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}
