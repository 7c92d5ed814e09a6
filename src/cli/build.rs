//! `slipway build`: manifest(s) in, image formats out.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::Global;
use crate::manifest::{self, Source};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output formats, comma-separated or repeated (default: kernel+initrd; tar when -o is given).
    #[arg(short = 'f', long = "format", value_delimiter = ',', value_name = "F")]
    pub formats: Vec<String>,
    /// Folder the outputs are written to.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Write the one streamable output (tar) to FILE, or `-` for standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<String>,
    /// Base name of the outputs (default: the last manifest's file name without extension).
    #[arg(long)]
    pub name: Option<String>,
    /// Validate and merge the manifests, print the result as YAML, and stop (no network).
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON document describing the result on standard output.
    #[arg(long)]
    pub json: bool,
    /// Manifest files, merged in order; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
}

pub fn run(args: Args, _global: &Global) -> anyhow::Result<()> {
    let sources = read_sources(&args.files)?;
    let tagger = |dir: &Path| crate::pkg::show_tag(dir).map_err(|e| e.to_string());
    let merged = manifest::load(sources, &tagger)?;
    for doc in &merged.documents {
        if doc.manifest.trust.is_some() {
            tracing::warn!("{}: `trust` is accepted for compatibility and ignored", doc.source.name);
        }
    }
    let name = output_name(&args);
    if args.dry_run {
        let yaml = manifest::to_yaml(&merged.manifest);
        if args.json {
            let doc = serde_json::json!({ "name": name, "manifest": merged.manifest });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            print!("{yaml}");
        }
        return Ok(());
    }
    anyhow::bail!("building `{name}` needs the image assembler, which is not in this version yet; use --dry-run")
}

fn read_sources(files: &[String]) -> anyhow::Result<Vec<Source>> {
    files
        .iter()
        .map(|f| {
            if f == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).context("reading the manifest from standard input")?;
                return Ok(Source::new("<stdin>", text, None));
            }
            let text = std::fs::read_to_string(f).with_context(|| format!("reading manifest {f}"))?;
            let dir = Path::new(f).parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
            Ok(Source::new(f.clone(), text, dir.map(Path::to_path_buf)))
        })
        .collect()
}

/// LinuxKit's rule: `--name`, else the last manifest's base name, else `moby` for standard input.
fn output_name(args: &Args) -> String {
    if let Some(n) = &args.name {
        return n.clone();
    }
    match args.files.last().map(String::as_str) {
        Some("-") | None => "moby".to_string(),
        Some(f) => Path::new(f).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "moby".into()),
    }
}
