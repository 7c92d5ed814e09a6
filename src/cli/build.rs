//! `slipway build`: manifest(s) in, image formats out.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::Global;
use super::cache::PullArgs;
use crate::assemble::sizes::{OutputSize, SizeReport};
use crate::assemble::{self, tree::Tree};
use crate::format::staged::Staged;
use crate::format::{self, BootSpec, Compression};
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
    /// Initrd compression: gzip, zstd, xz or none.
    #[arg(long, value_name = "C", default_value = "gzip")]
    pub compress: Compression,
    /// Fail the build, writing nothing, when the initrd (or the one file of another format) is
    /// larger than SIZE: bytes, or with a unit (`5M` = 5,000,000 bytes, `5MiB` = 5 x 2^20).
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<bytesize::ByteSize>,
    #[command(flatten)]
    pub pull: PullArgs,
    /// Manifest files, merged in order; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
}

/// The formats this version writes, in the order they are written.
const FORMATS: &[&str] = &[
    "kernel+initrd",
    "tar-kernel-initrd",
    "tar",
    "kernel+squashfs",
    "kernel+iso",
];

pub fn run(args: Args, global: &Global) -> anyhow::Result<()> {
    let formats = formats(&args)?;
    let sources = read_sources(&args.files)?;
    // Several containers usually share a package: ask for each folder's tag once.
    let tags = std::cell::RefCell::new(
        std::collections::HashMap::<PathBuf, Result<String, String>>::new(),
    );
    let tagger = |dir: &Path| {
        let key = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        tags.borrow_mut()
            .entry(key)
            .or_insert_with(|| crate::pkg::show_tag(dir).map_err(|e| e.to_string()))
            .clone()
    };
    let merged = manifest::load(sources, &tagger)?;
    for doc in &merged.documents {
        if doc.manifest.trust.is_some() {
            tracing::warn!(
                "{}: `trust` is accepted for compatibility and ignored",
                doc.source.name
            );
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

    let store = global.store()?;
    // `@pkg:` images are this checkout's own packages: build the ones the store lacks (an
    // unchanged package is never rebuilt: its tag is the hash of its inputs).
    let packages: Vec<(PathBuf, String)> = tags
        .borrow()
        .iter()
        .filter_map(|(dir, tag)| Some((dir.clone(), tag.as_ref().ok()?.clone())))
        .collect();
    for (dir, tag) in packages {
        // The tag was computed for the manifest a moment ago; computing it again (apt's lists for
        // Debian packages) cost a warm build as much as writing the image.
        if in_store(&store, &tag) {
            tracing::info!("{tag} is in the store already");
            continue;
        }
        let built = crate::pkg::build(&store, &dir, &crate::pkg::BuildOptions::default())
            .with_context(|| format!("building package {}", dir.display()))?;
        if !built.cached {
            eprintln!("built {} {}", built.reference, built.digest);
        }
    }
    let started = std::time::Instant::now();
    let assembled = assemble::assemble(&merged, &store, &args.pull.options())?;
    tracing::info!(
        "assembled the root in {:.2?}: {} entries, {} identical files stored once ({} bytes saved)",
        started.elapsed(),
        assembled.tree.len(),
        assembled.shared.links,
        assembled.shared.bytes_saved
    );
    let mut tree = assembled.tree;
    let mut report = SizeReport::measure(&tree, &assembled.parts);
    let boot = if tree.get(format::KERNEL_PATH).is_some() {
        Some(BootSpec::split_from(&mut tree)?)
    } else {
        None
    };
    if args.output.is_none() {
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("creating {}", args.dir.display()))?;
    }
    // Every output is staged first and renamed into place only once all are written and within
    // the budget, so a failed build leaves the folder as it was.
    let mut staged: Vec<Staged> = Vec::new();
    for f in &formats {
        let started = std::time::Instant::now();
        let outputs = write_format(f, &tree, boot.as_ref(), &args, &name)?;
        tracing::info!("wrote {f} in {:.2?}", started.elapsed());
        for output in outputs {
            report.outputs.push(OutputSize {
                path: output.path.clone(),
                format: f.clone(),
                bytes: output.bytes,
                budgeted: output.budgeted,
            });
            staged.extend(output.staged);
        }
    }
    report.max_size = args.max_size.map(|s| s.as_u64());
    eprint!("{report}");
    let over: Vec<String> = report
        .over_budget()
        .iter()
        .map(|o| format!("{} is {} bytes", o.path, o.bytes))
        .collect();
    let mut written: Vec<PathBuf> = Vec::new();
    if over.is_empty() {
        for output in staged {
            written.push(output.persist()?);
        }
    } else {
        drop(staged);
    }
    if args.json {
        let doc = serde_json::json!({
            "name": name,
            "formats": formats,
            "files": written,
            "size": report,
            "manifest": assembled.resolved,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for path in &written {
            eprintln!("wrote {}", path.display());
        }
    }
    if let Some(max) = report.max_size
        && !over.is_empty()
    {
        anyhow::bail!(
            "over the --max-size budget of {max} bytes ({}): {}; no output was written",
            bytesize::ByteSize(max).display().iec(),
            over.join(", ")
        );
    }
    Ok(())
}

/// Whether the store holds an image named `tag`, with its manifest.
fn in_store(store: &crate::oci::Store, tag: &str) -> bool {
    crate::oci::resolve::full_reference(tag)
        .ok()
        .and_then(|reference| store.lookup(&reference).ok().flatten())
        .and_then(|desc| crate::oci::Digest::try_from(desc.digest()).ok())
        .is_some_and(|digest| store.has_blob(&digest))
}

/// One output of a format: staged for renaming into place, or already streamed (`-o -`).
struct Output {
    path: String,
    bytes: u64,
    budgeted: bool,
    staged: Option<Staged>,
}

impl Output {
    fn staged(staged: Staged, budgeted: bool) -> Output {
        Output {
            path: staged.path().display().to_string(),
            bytes: staged.size(),
            budgeted,
            staged: Some(staged),
        }
    }
}

/// `-f` values, checked; the default is kernel+initrd, or tar when `-o` names one output.
fn formats(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut formats: Vec<String> = args
        .formats
        .iter()
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect();
    if formats.is_empty() {
        formats.push(
            if args.output.is_some() {
                "tar"
            } else {
                "kernel+initrd"
            }
            .to_string(),
        );
    }
    for f in &formats {
        if !FORMATS.contains(&f.as_str()) {
            anyhow::bail!(
                "unknown format `{f}`: this version writes {}",
                FORMATS.join(", ")
            );
        }
    }
    if args.output.is_some() && (formats.len() != 1 || formats[0] != "tar") {
        anyhow::bail!("-o writes one streamable output: use it with `-f tar` alone");
    }
    Ok(formats)
}

fn need_boot<'a>(boot: Option<&'a BootSpec>, format: &str) -> anyhow::Result<&'a BootSpec> {
    boot.ok_or_else(|| {
        anyhow::anyhow!("format {format} needs a kernel: add `kernel: image:` to the manifest")
    })
}

/// Writes one format's outputs (staged, except a stream to standard output).
fn write_format(
    f: &str,
    tree: &Tree,
    boot: Option<&BootSpec>,
    args: &Args,
    name: &str,
) -> anyhow::Result<Vec<Output>> {
    match f {
        "kernel+initrd" => {
            let [initrd, kernel, cmdline] = format::kernel_initrd::stage_kernel_initrd(
                tree,
                need_boot(boot, f)?,
                args.compress,
                &args.dir,
                name,
            )?;
            Ok(vec![
                Output::staged(kernel, false),
                Output::staged(initrd, true),
                Output::staged(cmdline, false),
            ])
        }
        "tar-kernel-initrd" => {
            let path = args.dir.join(format!("{name}-initrd.tar"));
            let boot = need_boot(boot, f)?;
            let staged = Staged::write(&path, |w| {
                format::kernel_initrd::write_tar_kernel_initrd(tree, boot, args.compress, w)
                    .map(|_| ())
            })?;
            Ok(vec![Output::staged(staged, true)])
        }
        "kernel+squashfs" | "kernel+iso" => {
            let boot = need_boot(boot, f)?;
            let stage = if f == "kernel+squashfs" {
                format::squashfs::stage_kernel_squashfs
            } else {
                format::root_iso::stage_kernel_iso
            };
            let [root, initrd, kernel, cmdline] =
                stage(tree, boot, args.compress, &args.dir, name)?;
            Ok(vec![
                Output::staged(kernel, false),
                Output::staged(initrd, true),
                Output::staged(cmdline, false),
                Output::staged(root, true),
            ])
        }
        _ => {
            let empty = BootSpec::default();
            let boot = boot.unwrap_or(&empty);
            match args.output.as_deref() {
                Some("-") => {
                    // A stream cannot be taken back: the budget is checked after the fact.
                    let stdout = Counted {
                        inner: std::io::BufWriter::new(std::io::stdout().lock()),
                        bytes: 0,
                    };
                    let mut w = format::tar::write_tar(tree, boot, stdout)?;
                    std::io::Write::flush(&mut w)?;
                    Ok(vec![Output {
                        path: "-".into(),
                        bytes: w.bytes,
                        budgeted: true,
                        staged: None,
                    }])
                }
                out => {
                    let path = out
                        .map(PathBuf::from)
                        .unwrap_or_else(|| args.dir.join(format!("{name}.tar")));
                    let staged = Staged::write(&path, |w| {
                        format::tar::write_tar(tree, boot, w).map(|_| ())
                    })?;
                    Ok(vec![Output::staged(staged, true)])
                }
            }
        }
    }
}

/// Counts what goes to standard output, for the size report.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: std::io::Write> std::io::Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn read_sources(files: &[String]) -> anyhow::Result<Vec<Source>> {
    files
        .iter()
        .map(|f| {
            if f == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the manifest from standard input")?;
                return Ok(Source::new("<stdin>", text, None));
            }
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading manifest {f}"))?;
            let dir = Path::new(f).parent().map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            });
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
        Some(f) => Path::new(f)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "moby".into()),
    }
}
