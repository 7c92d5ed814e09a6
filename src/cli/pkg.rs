//! `slipway pkg`: package folders into OCI images (`build`, `push`, `show-tag`).

use std::path::PathBuf;

use anyhow::Context;

use super::Global;
use crate::oci::{PullOptions, Store};
use crate::pkg::{self, BuildOptions};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Build package folders (each with a build.yml) into images in the local store.
    Build {
        #[command(flatten)]
        build: BuildArgs,
        /// Print one JSON document with each image's reference and digest on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Build (if needed) and push package images to a registry.
    Push {
        #[command(flatten)]
        build: BuildArgs,
        /// Push to this registry (`HOST:PORT`) as REGISTRY/ORG/IMAGE:TAG instead of the image's own name.
        #[arg(long, value_name = "HOST:PORT")]
        registry: Option<String>,
        /// Allow plain HTTP to this registry (loopback registries are always allowed).
        #[arg(long, value_name = "HOST")]
        insecure_registry: Vec<String>,
        /// Print one JSON document with each pushed reference and digest on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print a package's image name, ORG/IMAGE:TAG, without building it.
    ShowTag {
        /// The package folder.
        dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Package folders.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Rebuild even when the image is already in the store.
    #[arg(long)]
    force: bool,
    /// Where downloaded Debian packages are kept (default: $XDG_CACHE_HOME/slipway-debs).
    #[arg(long, env = "SLIPWAY_DEB_CACHE", value_name = "DIR")]
    deb_cache: Option<PathBuf>,
}

impl BuildArgs {
    fn options(&self) -> BuildOptions {
        BuildOptions {
            force: self.force,
            deb_cache: self
                .deb_cache
                .clone()
                .unwrap_or_else(pkg::default_deb_cache),
        }
    }
}

fn open_store(global: &Global) -> anyhow::Result<Store> {
    global.store()
}

pub fn run(cmd: Command, global: &Global) -> anyhow::Result<()> {
    match cmd {
        Command::ShowTag { dir } => {
            let name = pkg::show_tag(&dir).with_context(|| format!("package {}", dir.display()))?;
            println!("{name}");
        }
        Command::Build { build, json } => {
            let store = open_store(global)?;
            let opts = build.options();
            let mut images = Vec::new();
            for dir in &build.dirs {
                let built = pkg::build(&store, dir, &opts)
                    .with_context(|| format!("building package {}", dir.display()))?;
                if !json {
                    let note = if built.cached { " (already built)" } else { "" };
                    println!("{} {}{note}", built.reference, built.digest);
                }
                images.push(built);
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "images": images }))?
                );
            }
        }
        Command::Push {
            build,
            registry,
            insecure_registry,
            json,
        } => {
            let store = open_store(global)?;
            let opts = build.options();
            let pull = PullOptions {
                insecure_registries: insecure_registry,
                ..PullOptions::default()
            };
            let mut images = Vec::new();
            for dir in &build.dirs {
                let pushed = pkg::push(&store, dir, registry.as_deref(), &opts, &pull)
                    .with_context(|| format!("pushing package {}", dir.display()))?;
                if !json {
                    println!("{} {}", pushed.reference, pushed.digest);
                }
                images.push(pushed);
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "images": images }))?
                );
            }
        }
    }
    Ok(())
}
