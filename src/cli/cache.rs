//! `slipway cache`: the local content-addressed image store.

use std::path::PathBuf;

use anyhow::Context;

use super::Global;
use crate::oci::{self, PullOptions};

/// How commands that need images may reach registries; shared by every command that resolves
/// image references.
#[derive(clap::Args, Debug, Clone)]
pub struct PullArgs {
    /// Ask the registry even when the image is in the local store.
    #[arg(long, conflicts_with = "offline")]
    pub pull: bool,
    /// Never contact a registry; fail if an image is not in the local store.
    #[arg(long)]
    pub offline: bool,
    /// Architecture picked from multi-arch images (default: the host's).
    #[arg(long, value_name = "ARCH", default_value = oci::resolve::host_arch())]
    pub arch: String,
    /// Reach this registry over plain HTTP (loopback registries always are). Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
}

impl PullArgs {
    pub fn options(&self) -> PullOptions {
        PullOptions {
            pull: self.pull,
            offline: self.offline,
            arch: self.arch.clone(),
            insecure_registries: self.insecure_registries.clone(),
            ..PullOptions::default()
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List the images in the store.
    Ls {
        /// Print one JSON document on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Fetch images from their registries into the store (always asks the registry).
    Pull {
        #[arg(required = true, value_name = "REF")]
        references: Vec<String>,
        #[command(flatten)]
        pull: PullArgs,
        /// Print one JSON document on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Push an image from the store to a registry under another name.
    Push {
        #[arg(value_name = "REF")]
        reference: String,
        #[arg(value_name = "TARGET")]
        target: String,
        #[command(flatten)]
        pull: PullArgs,
    },
    /// Forget images, then delete the blobs no remaining image uses.
    Rm {
        #[arg(required = true, value_name = "REF")]
        references: Vec<String>,
    },
    /// Delete every image and blob.
    Clean,
    /// Import the images of an OCI archive (a tar of an OCI image layout).
    Import {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Export an image and its blobs as an OCI archive.
    Export {
        #[arg(value_name = "REF")]
        reference: String,
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Flatten an image's layers into a directory (resolving it like `build` does).
    Unpack {
        #[arg(value_name = "REF")]
        reference: String,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        pull: PullArgs,
    },
}

pub fn run(cmd: Command, global: &Global) -> anyhow::Result<()> {
    let store = global.store()?;
    match cmd {
        Command::Ls { json } => {
            let images = store.images()?;
            if json {
                let list: Vec<_> = images
                    .iter()
                    .map(|(name, d)| {
                        serde_json::json!({
                            "reference": name,
                            "digest": d.digest().to_string(),
                            "mediaType": d.media_type().to_string(),
                            "size": d.size(),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "images": list }))?
                );
            } else {
                for (name, d) in images {
                    println!("{name}\t{}", d.digest());
                }
            }
        }
        Command::Pull {
            references,
            pull,
            json,
        } => {
            let mut opts = pull.options();
            opts.pull = !opts.offline;
            let mut out = Vec::new();
            for r in &references {
                let image =
                    oci::resolve(&store, r, &opts).with_context(|| format!("pulling {r}"))?;
                if !json {
                    println!("{}\t{}", image.reference, image.top_digest());
                }
                out.push(serde_json::json!({
                    "reference": image.reference,
                    "digest": image.top_digest().to_string(),
                    "manifest": image.digest.to_string(),
                }));
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "images": out }))?
                );
            }
        }
        Command::Push {
            reference,
            target,
            pull,
        } => {
            let digest = oci::push(&store, &reference, &target, &pull.options())
                .with_context(|| format!("pushing {reference} to {target}"))?;
            println!("{}\t{digest}", oci::resolve::full_reference(&target)?);
        }
        Command::Rm { references } => {
            for r in &references {
                let full = oci::resolve::full_reference(r)?;
                if !store.untag(&full)? {
                    anyhow::bail!("{full}: not in the store {}", store.root().display());
                }
            }
            store.gc()?;
        }
        Command::Clean => {
            let removed = store.clean()?;
            eprintln!("removed {removed} blobs from {}", store.root().display());
        }
        Command::Import { file } => {
            let images = oci::archive::import(&store, &file)
                .with_context(|| format!("importing {}", file.display()))?;
            for (name, digest) in images {
                println!("{name}\t{digest}");
            }
        }
        Command::Export { reference, output } => {
            oci::archive::export(&store, &reference, &output)
                .with_context(|| format!("exporting {reference} to {}", output.display()))?;
        }
        Command::Unpack {
            reference,
            dir,
            pull,
        } => {
            let image = oci::resolve(&store, &reference, &pull.options())
                .with_context(|| format!("resolving {reference}"))?;
            oci::unpack_to_dir(&store, &image, &dir)
                .with_context(|| format!("unpacking {} into {}", image.reference, dir.display()))?;
        }
    }
    Ok(())
}
