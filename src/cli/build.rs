//! `slipway build`: manifest(s) in, image formats out.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::Global;
use super::cache::PullArgs;
use crate::assemble::sizes::{OutputSize, SizeReport};
use crate::assemble::{self, tree::Tree};
use crate::format::iso::IsoKind;
use crate::format::staged::Staged;
use crate::format::vdisk::DiskFormat;
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
    /// Print one JSON document describing the result on standard output (on standard error with
    /// `-o -`, whose standard output is the image).
    #[arg(long)]
    pub json: bool,
    /// Initrd compression: gzip, zstd, xz or none.
    #[arg(long, value_name = "C", default_value = "gzip")]
    pub compress: Compression,
    /// Size of the disk formats (raw-bios, raw-efi, aws, ...): bytes, or with a unit (`2GiB`).
    /// Default: what the files need, rounded up to 1 MiB. Disk outputs are sparse files.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<bytesize::ByteSize>,
    /// The bootloader image of the bootable disk and ISO formats: `@pkg:DIR` (built into the
    /// store when missing, like any `@pkg:` image) or an image reference.
    #[arg(long, value_name = "IMAGE", env = "SLIPWAY_BOOTLOADER", default_value = DEFAULT_BOOTLOADER)]
    pub bootloader: String,
    /// Fail the build, writing nothing, when the initrd (or the one file of another format) is
    /// larger than SIZE: bytes, or with a unit (`5M` = 5,000,000 bytes, `5MiB` = 5 x 2^20).
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<bytesize::ByteSize>,
    /// Build LinuxKit's manifests unchanged: every `linuxkit/NAME:TAG` image (any tag) is this
    /// project's package (`kernel/`, `pkg/init`, `pkg/engine` for runc and containerd,
    /// `pkg/NAME`), built when the store lacks it.
    #[arg(long)]
    pub linuxkit: bool,
    /// The project root `--linuxkit` takes packages from (default: the first folder from the
    /// current one upward that has pkg/init/build.yml).
    #[arg(long, value_name = "DIR", requires = "linuxkit")]
    pub pkg_root: Option<PathBuf>,
    #[command(flatten)]
    pub pull: PullArgs,
    /// Manifest files, merged in order; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
}

/// The bootloader package of this checkout (`pkg/bootloader`), unless `--bootloader` says
/// otherwise.
const DEFAULT_BOOTLOADER: &str = concat!("@pkg:", env!("CARGO_MANIFEST_DIR"), "/pkg/bootloader");

pub fn run(args: Args, global: &Global) -> anyhow::Result<()> {
    let name = output_name(&args);
    let formats = formats(&args, &name)?;
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
    let linuxkit = linuxkit_packages(&args)?;
    let (merged, substitutions) = manifest::load_with(sources, &tagger, linuxkit.as_ref())?;
    for s in &substitutions {
        eprintln!("linuxkit: {s}");
    }
    // Refused before any image is pulled or package built (a dry run only checks the manifest).
    if !args.dry_run
        && merged.manifest.kernel.is_none()
        && let Some(f) = formats.iter().find(|f| f.needs != Needs::Nothing)
    {
        anyhow::bail!(
            "format {} boots the image and needs a kernel: the manifest has no `kernel:` section",
            f.name
        );
    }
    // The bootloader image is one more `@pkg:` image when a bootable disk or ISO is asked for.
    let bootloader_ref = if !args.dry_run && formats.iter().any(|f| f.needs == Needs::Bootloader) {
        Some(
            match args.bootloader.strip_prefix(manifest::template::PREFIX) {
                Some(dir) => {
                    let dir = Path::new(dir);
                    if !dir.join("build.yml").is_file() {
                        anyhow::bail!(
                            "the bootloader package {} has no build.yml: pass --bootloader with the \
                         folder of Slipway's pkg/bootloader or an image built from it",
                            dir.display()
                        );
                    }
                    tagger(dir)
                        .map_err(|e| anyhow::anyhow!("bootloader package {}: {e}", dir.display()))?
                }
                None => args.bootloader.clone(),
            },
        )
    } else {
        None
    };
    for doc in &merged.documents {
        if doc.manifest.trust.is_some() {
            tracing::warn!(
                "{}: `trust` is accepted for compatibility and ignored",
                doc.source.name
            );
        }
    }
    if args.dry_run {
        let yaml = manifest::to_yaml(&merged.manifest);
        if args.json {
            let doc = serde_json::json!({ "name": name, "manifest": merged.manifest });
            let doc = serde_json::to_string_pretty(&doc)?;
            // With `-o -` the output is the stream on standard output: the document goes beside it.
            if args.output.as_deref() == Some("-") {
                eprintln!("{doc}");
            } else {
                println!("{doc}");
            }
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
    let bootloader = match &bootloader_ref {
        Some(reference) => {
            let image = crate::oci::resolve(&store, reference, &args.pull.options())
                .with_context(|| format!("resolving the bootloader image {reference}"))?;
            let files = crate::oci::flatten_into_tree(&store, &image)
                .with_context(|| format!("unpacking the bootloader image {reference}"))?;
            Some(format::bootloader::Bootloader::from_tree(
                &files, reference,
            )?)
        }
        None => None,
    };
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
    let mut writer = Writer::new(&tree, boot.as_ref(), &args, &name, bootloader.as_ref());
    writer.whole_gib = formats.iter().any(|f| f.name == "gcp");
    for f in &formats {
        let started = std::time::Instant::now();
        let outputs = (f.write)(&mut writer, f)?;
        tracing::info!("wrote {} in {:.2?}", f.name, started.elapsed());
        for output in outputs {
            // kernel+squashfs and kernel+iso write the same kernel, initrd and command line:
            // the second copy is dropped (see `check_collisions`).
            if report.outputs.iter().any(|o| o.path == output.path) {
                continue;
            }
            report.outputs.push(OutputSize {
                path: output.path.clone(),
                format: f.name.to_string(),
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
    let written: Vec<PathBuf> = if over.is_empty() {
        Staged::persist_all(staged)?
    } else {
        Vec::new()
    };
    if args.json {
        let doc = serde_json::json!({
            "name": name,
            "formats": formats.iter().map(|f| f.name).collect::<Vec<_>>(),
            "files": written,
            "size": report,
            "manifest": assembled.resolved,
        });
        let doc = serde_json::to_string_pretty(&doc)?;
        // With `-o -` the output is the stream on standard output: the document goes beside it.
        if args.output.as_deref() == Some("-") {
            eprintln!("{doc}");
        } else {
            println!("{doc}");
        }
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

/// The project root of `--linuxkit`, if asked for.
fn linuxkit_packages(args: &Args) -> anyhow::Result<Option<manifest::linuxkit::Packages>> {
    use manifest::linuxkit::Packages;
    if !args.linuxkit {
        return Ok(None);
    }
    let packages = match &args.pkg_root {
        Some(dir) => Packages::at(dir),
        None => Packages::find(&std::env::current_dir().context("the current folder")?),
    };
    packages
        .map(Some)
        .map_err(|e| anyhow::anyhow!("--linuxkit: {e}"))
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

/// What a format needs besides the root tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Nothing,
    /// The kernel (the manifest's `kernel:` section).
    Kernel,
    /// The kernel and the bootloader image (disks and ISOs).
    Bootloader,
}

/// One output format of `-f`: its name, the files it writes (`{name}` is `--name`), what it
/// needs, and its writer. Adding a format is adding one entry to [`FORMATS`].
struct Format {
    name: &'static str,
    files: &'static [&'static str],
    needs: Needs,
    write: fn(&mut Writer, &Format) -> anyhow::Result<Vec<Output>>,
}

impl Format {
    /// The path of its `i`-th file for `--name` in `dir`.
    fn file(&self, i: usize, dir: &Path, name: &str) -> PathBuf {
        dir.join(self.files[i].replace("{name}", name))
    }
}

/// Every format, with LinuxKit's `-f` names and file names, in the order they are written.
const FORMATS: &[Format] = &[
    Format {
        name: "kernel+initrd",
        files: &["{name}-kernel", "{name}-initrd.img", "{name}-cmdline"],
        needs: Needs::Kernel,
        write: |w, _| w.kernel_initrd(),
    },
    Format {
        name: "tar-kernel-initrd",
        files: &["{name}-initrd.tar"],
        needs: Needs::Kernel,
        write: |w, f| w.tar_kernel_initrd(f),
    },
    Format {
        name: "tar",
        files: &["{name}.tar"],
        needs: Needs::Nothing,
        write: |w, f| w.tar(f),
    },
    Format {
        name: "kernel+squashfs",
        files: &[
            "{name}-kernel",
            "{name}-initrd.img",
            "{name}-cmdline",
            "{name}-squashfs.img",
        ],
        needs: Needs::Kernel,
        write: |w, f| w.root_on_device(f, format::squashfs::stage_kernel_squashfs),
    },
    Format {
        name: "kernel+iso",
        files: &[
            "{name}-kernel",
            "{name}-initrd.img",
            "{name}-cmdline",
            "{name}-root.iso",
        ],
        needs: Needs::Kernel,
        write: |w, f| w.root_on_device(f, format::root_iso::stage_kernel_iso),
    },
    Format {
        name: "iso-bios",
        files: &["{name}.iso"],
        needs: Needs::Bootloader,
        write: |w, f| w.iso(f, IsoKind::Bios),
    },
    Format {
        name: "iso-efi",
        files: &["{name}-efi.iso"],
        needs: Needs::Bootloader,
        write: |w, f| w.iso(f, IsoKind::Efi),
    },
    Format {
        name: "iso-efi-initrd",
        files: &["{name}-efi-initrd.iso"],
        needs: Needs::Bootloader,
        write: |w, f| w.iso(f, IsoKind::EfiInitrd),
    },
    Format {
        name: "iso",
        files: &["{name}-hybrid.iso"],
        needs: Needs::Bootloader,
        write: |w, f| w.iso(f, IsoKind::Hybrid),
    },
    Format {
        name: "raw-bios",
        files: &["{name}-bios.img"],
        needs: Needs::Bootloader,
        write: |w, f| w.raw_disk(f, DiskKind::Bios),
    },
    Format {
        name: "raw-efi",
        files: &["{name}-efi.img"],
        needs: Needs::Bootloader,
        write: |w, f| w.raw_disk(f, DiskKind::Efi),
    },
    Format {
        name: "aws",
        files: &["{name}.raw"],
        needs: Needs::Bootloader,
        write: |w, f| w.raw_disk(f, DiskKind::BiosEfi),
    },
    Format {
        name: "qcow2-bios",
        files: &["{name}.qcow2"],
        needs: Needs::Bootloader,
        write: |w, f| w.converted(f, DiskKind::Bios, DiskFormat::Qcow2),
    },
    Format {
        name: "qcow2-efi",
        files: &["{name}-efi.qcow2"],
        needs: Needs::Bootloader,
        write: |w, f| w.converted(f, DiskKind::Efi, DiskFormat::Qcow2),
    },
    Format {
        name: "vhd",
        files: &["{name}.vhd"],
        needs: Needs::Bootloader,
        write: |w, f| w.converted(f, DiskKind::BiosEfi, DiskFormat::Vhd),
    },
    Format {
        name: "dynamic-vhd",
        files: &["{name}-dynamic.vhd"],
        needs: Needs::Bootloader,
        write: |w, f| w.converted(f, DiskKind::BiosEfi, DiskFormat::DynamicVhd),
    },
    Format {
        name: "vhdx",
        files: &["{name}.vhdx"],
        needs: Needs::Bootloader,
        write: |w, f| w.converted(f, DiskKind::BiosEfi, DiskFormat::Vhdx),
    },
    Format {
        name: "vmdk",
        files: &["{name}.vmdk"],
        needs: Needs::Bootloader,
        write: |w, f| w.converted(f, DiskKind::BiosEfi, DiskFormat::Vmdk),
    },
    Format {
        name: "gcp",
        files: &["{name}.img.tar.gz"],
        needs: Needs::Bootloader,
        write: |w, f| w.gcp(f),
    },
    Format {
        name: "docker",
        files: &["{name}.docker"],
        needs: Needs::Nothing,
        write: |w, f| w.docker(f),
    },
];

fn find_format(name: &str) -> Option<&'static Format> {
    FORMATS.iter().find(|f| f.name == name)
}

/// `-f` values, checked; the default is kernel+initrd, or tar when `-o` names one output.
fn formats(args: &Args, name: &str) -> anyhow::Result<Vec<&'static Format>> {
    let mut names: Vec<String> = args
        .formats
        .iter()
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect();
    if names.is_empty() {
        names.push(
            if args.output.is_some() {
                "tar"
            } else {
                "kernel+initrd"
            }
            .to_string(),
        );
    }
    let mut formats: Vec<&'static Format> = Vec::new();
    for n in &names {
        let Some(f) = find_format(n) else {
            anyhow::bail!(
                "unknown format `{n}`: this version writes {}",
                FORMATS
                    .iter()
                    .map(|f| f.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if !formats.iter().any(|g| g.name == f.name) {
            formats.push(f);
        }
    }
    if args.output.is_some()
        && (formats.len() != 1 || !["tar", "docker"].contains(&formats[0].name))
    {
        anyhow::bail!("-o writes one streamable output: use it with `-f tar` or `-f docker` alone");
    }
    check_collisions(&formats, name)?;
    Ok(formats)
}

/// Two formats that would write the same file are refused together, before anything is built.
fn check_collisions(formats: &[&Format], name: &str) -> anyhow::Result<()> {
    let mut owners: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for f in formats {
        for i in 0..f.files.len() {
            let file = f.file(i, Path::new(""), name).display().to_string();
            owners.entry(file).or_default().push(f.name);
        }
    }
    // The root-on-device formats write the same kernel, initrd and command line (the initrd
    // finds the root by `root=`, whatever the root's format), so they may be built together.
    let same_files = |fs: &Vec<&str>| {
        fs.iter()
            .all(|f| ["kernel+squashfs", "kernel+iso"].contains(f))
    };
    let clashes: Vec<String> = owners
        .iter()
        .filter(|(_, fs)| fs.len() > 1 && !same_files(fs))
        .map(|(file, fs)| format!("{file} ({})", fs.join(", ")))
        .collect();
    if !clashes.is_empty() {
        anyhow::bail!(
            "formats would write the same file: {}; build them in separate runs or with different --name",
            clashes.join("; ")
        );
    }
    Ok(())
}

/// A writer of a root on a block device: the root image, the initrd, the kernel, the command line.
type StageRoot =
    fn(&Tree, &BootSpec, Compression, &Path, &str) -> Result<[Staged; 4], format::FormatError>;

/// Which bootable disk a format writes or converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiskKind {
    /// `raw-bios`: MBR, FAT, SYSLINUX.
    Bios,
    /// `raw-efi`: GPT, an ESP with the UKI.
    Efi,
    /// `aws` (and what vhd, vmdk, gcp convert): GPT, one ESP that boots BIOS and UEFI.
    BiosEfi,
}

/// The state of one build's phase 2: the tree and boot spec, and what several formats share
/// (the initrd of the bootable formats, their disks), each made once, when first needed.
struct Writer<'a> {
    tree: &'a Tree,
    boot: Option<&'a BootSpec>,
    args: &'a Args,
    name: &'a str,
    bootloader: Option<&'a format::bootloader::Bootloader>,
    initrd: Option<Vec<u8>>,
    osrel: Option<Vec<u8>>,
    disks: std::collections::HashMap<DiskKind, format::disk::Disk>,
    /// Raw copies of the disks for the converters, in `scratch` (removed when the build ends).
    raw_files: std::collections::HashMap<DiskKind, PathBuf>,
    scratch: Option<(tempfile::TempDir, crate::oci::interrupt::Tracked)>,
    /// gcp is among the formats: Compute Engine takes whole GiB, so the BIOS+EFI disk's
    /// default size is rounded up to one (sparse: the extra costs no space).
    whole_gib: bool,
}

impl<'a> Writer<'a> {
    fn new(
        tree: &'a Tree,
        boot: Option<&'a BootSpec>,
        args: &'a Args,
        name: &'a str,
        bootloader: Option<&'a format::bootloader::Bootloader>,
    ) -> Self {
        Writer {
            tree,
            boot,
            args,
            name,
            bootloader,
            initrd: None,
            osrel: None,
            disks: Default::default(),
            raw_files: Default::default(),
            scratch: None,
            whole_gib: false,
        }
    }

    fn need_boot(&self, format: &str) -> anyhow::Result<&'a BootSpec> {
        self.boot.ok_or_else(|| {
            anyhow::anyhow!("format {format} needs a kernel: add `kernel: image:` to the manifest")
        })
    }

    /// What the bootable formats write: kernel, initrd (made once), command line, bootloader.
    fn media(&mut self, format: &str) -> anyhow::Result<format::bootloader::BootMedia<'_>> {
        let boot = self.need_boot(format)?;
        let bootloader = self
            .bootloader
            .ok_or_else(|| anyhow::anyhow!("format {format} needs the bootloader image"))?;
        if self.initrd.is_none() {
            let initrd = format::initrd::write_initrd(
                self.tree,
                boot.ucode.as_deref(),
                self.args.compress,
                Vec::new(),
            )?;
            self.initrd = Some(initrd);
        }
        if self.osrel.is_none() {
            let own = match self.tree.get("etc/os-release").map(|e| &e.kind) {
                Some(crate::assemble::tree::Kind::File(data)) => Some(data.as_ref().clone()),
                _ => None,
            };
            self.osrel = Some(own.unwrap_or_else(|| format::uki::default_osrel(self.name)));
        }
        let initrd = self.initrd.as_deref().expect("made above");
        Ok(format::bootloader::BootMedia {
            name: self.name,
            kernel: &boot.kernel,
            initrd,
            cmdline: &boot.cmdline,
            osrel: self.osrel.as_deref().expect("made above"),
            bootloader,
            mtime: format::tar::boot_mtime(self.tree),
            seed: format::disk::Seed::of(&[&boot.kernel, initrd, boot.cmdline.as_bytes()]),
        })
    }

    /// The bootable disk of `kind`, built once per build (raw formats write it, converters to
    /// qcow2, VHD, VMDK and gcp read it).
    fn disk(&mut self, kind: DiskKind, format: &str) -> anyhow::Result<&format::disk::Disk> {
        if !self.disks.contains_key(&kind) {
            let size = self.args.size.map(|s| s.as_u64());
            let whole_gib = self.whole_gib;
            let media = self.media(format)?;
            let disk = match kind {
                DiskKind::Bios => format::raw_bios::disk(&media, size)?,
                DiskKind::Efi => format::raw_efi::disk(&media, size)?,
                DiskKind::BiosEfi => {
                    let disk = format::bios_efi::disk(&media, format, size)?;
                    const GIB: u64 = 1 << 30;
                    if whole_gib && size.is_none() && disk.size() % GIB != 0 {
                        let whole = disk.size().div_ceil(GIB) * GIB;
                        format::bios_efi::disk(&media, format, Some(whole))?
                    } else {
                        disk
                    }
                }
            };
            self.disks.insert(kind, disk);
        }
        Ok(&self.disks[&kind])
    }

    fn kernel_initrd(&mut self) -> anyhow::Result<Vec<Output>> {
        let [initrd, kernel, cmdline] = format::kernel_initrd::stage_kernel_initrd(
            self.tree,
            self.need_boot("kernel+initrd")?,
            self.args.compress,
            &self.args.dir,
            self.name,
        )?;
        Ok(vec![
            Output::staged(kernel, false),
            Output::staged(initrd, true),
            Output::staged(cmdline, false),
        ])
    }

    fn tar_kernel_initrd(&mut self, f: &Format) -> anyhow::Result<Vec<Output>> {
        let path = f.file(0, &self.args.dir, self.name);
        let boot = self.need_boot(f.name)?;
        let staged = Staged::write(&path, |w| {
            format::kernel_initrd::write_tar_kernel_initrd(self.tree, boot, self.args.compress, w)
                .map(|_| ())
        })?;
        Ok(vec![Output::staged(staged, true)])
    }

    fn tar(&mut self, f: &Format) -> anyhow::Result<Vec<Output>> {
        let empty = BootSpec::default();
        let boot = self.boot.unwrap_or(&empty);
        let tree = self.tree;
        self.streamable(f, |w| format::tar::write_tar(tree, boot, w).map(|_| ()))
    }

    /// A format that can stream: to `-o -` (standard output), to `-o FILE`, or to its file.
    fn streamable(
        &mut self,
        f: &Format,
        write: impl Fn(&mut dyn std::io::Write) -> Result<(), format::FormatError>,
    ) -> anyhow::Result<Vec<Output>> {
        match self.args.output.as_deref() {
            Some("-") => {
                // A stream cannot be taken back: the budget is checked after the fact.
                let mut stdout = Counted {
                    inner: std::io::BufWriter::new(std::io::stdout().lock()),
                    bytes: 0,
                };
                write(&mut stdout)?;
                std::io::Write::flush(&mut stdout)?;
                Ok(vec![Output {
                    path: "-".into(),
                    bytes: stdout.bytes,
                    budgeted: true,
                    staged: None,
                }])
            }
            out => {
                let path = out
                    .map(PathBuf::from)
                    .unwrap_or_else(|| f.file(0, &self.args.dir, self.name));
                let staged = Staged::write(&path, |w| write(w))?;
                Ok(vec![Output::staged(staged, true)])
            }
        }
    }

    fn iso(&mut self, f: &Format, kind: format::iso::IsoKind) -> anyhow::Result<Vec<Output>> {
        let path = f.file(0, &self.args.dir, self.name);
        let bytes = format::iso::write(&self.media(f.name)?, kind)?;
        let staged = Staged::write(&path, |w| {
            std::io::Write::write_all(w, &bytes).map_err(format::FormatError::io(f.name))
        })?;
        Ok(vec![Output::staged(staged, true)])
    }

    /// A disk written as a sparse raw file.
    fn raw_disk(&mut self, f: &Format, kind: DiskKind) -> anyhow::Result<Vec<Output>> {
        let path = f.file(0, &self.args.dir, self.name);
        let disk = self.disk(kind, f.name)?;
        let staged = Staged::write(&path, |w| {
            disk.write_sparse(w, |w, size| w.get_ref().set_len(size))
                .map(|_| ())
                .map_err(format::FormatError::io(f.name))
        })?;
        Ok(vec![Output::staged(staged, true)])
    }

    /// The disk of `kind` as a sparse raw file in a temporary folder beside the outputs, written
    /// once per build for the converters (which read a raw disk, holes and all).
    fn raw_file(&mut self, kind: DiskKind, format: &str) -> anyhow::Result<PathBuf> {
        if let Some(path) = self.raw_files.get(&kind) {
            return Ok(path.clone());
        }
        if self.scratch.is_none() {
            let dir = crate::oci::interrupt::track_dir(
                || {
                    tempfile::Builder::new()
                        .prefix(".slipway-disks-")
                        .tempdir_in(&self.args.dir)
                },
                |d| d.path().to_path_buf(),
            )
            .with_context(|| format!("creating a scratch folder in {}", self.args.dir.display()))?;
            self.scratch = Some(dir);
        }
        let path = self
            .scratch
            .as_ref()
            .expect("made above")
            .0
            .path()
            .join(format!("{kind:?}.raw"));
        let disk = self.disk(kind, format)?;
        let mut file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        disk.write_sparse(&mut file, |f, size| f.set_len(size))
            .with_context(|| format!("writing {}", path.display()))?;
        self.raw_files.insert(kind, path.clone());
        Ok(path)
    }

    /// A disk converted to a virtual machine's container (qcow2, VHD, VHDX, VMDK).
    fn converted(
        &mut self,
        f: &Format,
        kind: DiskKind,
        to: DiskFormat,
    ) -> anyhow::Result<Vec<Output>> {
        let raw = self.raw_file(kind, f.name)?;
        let staged = format::vdisk::convert(to, &raw, &f.file(0, &self.args.dir, self.name))
            .with_context(|| format!("writing format {}", f.name))?;
        Ok(vec![Output::staged(staged, true)])
    }

    /// `disk.raw` (the BIOS+EFI disk) in a gzipped tar, as Google's image import takes it.
    fn gcp(&mut self, f: &Format) -> anyhow::Result<Vec<Output>> {
        let raw = self.raw_file(DiskKind::BiosEfi, f.name)?;
        let staged = format::gcp::convert(&raw, &f.file(0, &self.args.dir, self.name))
            .with_context(|| format!("writing format {}", f.name))?;
        Ok(vec![Output::staged(staged, true)])
    }

    /// The kernel, a small initrd that mounts the root from a block device, and that root.
    fn root_on_device(&mut self, f: &Format, stage: StageRoot) -> anyhow::Result<Vec<Output>> {
        let boot = self.need_boot(f.name)?;
        let [root, initrd, kernel, cmdline] = stage(
            self.tree,
            boot,
            self.args.compress,
            &self.args.dir,
            self.name,
        )?;
        Ok(vec![
            Output::staged(kernel, false),
            Output::staged(initrd, true),
            Output::staged(cmdline, false),
            Output::staged(root, true),
        ])
    }

    /// The root tree as a tar for `docker import` (no kernel: the host's runs it).
    fn docker(&mut self, f: &Format) -> anyhow::Result<Vec<Output>> {
        let tree = self.tree;
        self.streamable(f, |w| format::docker::write_docker(tree, w).map(|_| ()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(name: &'static str, files: &'static [&'static str]) -> Format {
        Format {
            name,
            files,
            needs: Needs::Kernel,
            write: |_, _| Ok(Vec::new()),
        }
    }

    #[test]
    fn formats_that_would_write_the_same_file_are_refused_together() {
        let initrd = fake(
            "kernel+initrd",
            &["{name}-kernel", "{name}-initrd.img", "{name}-cmdline"],
        );
        let squashfs = fake(
            "kernel+squashfs",
            &[
                "{name}-kernel",
                "{name}-cmdline",
                "{name}-initrd.img",
                "{name}-squashfs.img",
            ],
        );
        let tar = fake("tar", &["{name}.tar"]);
        let err = check_collisions(&[&initrd, &tar, &squashfs], "x")
            .unwrap_err()
            .to_string();
        for file in ["x-kernel", "x-initrd.img", "x-cmdline"] {
            assert!(
                err.contains(&format!("{file} (kernel+initrd, kernel+squashfs)")),
                "{err}"
            );
        }
        assert!(!err.contains("x.tar"), "{err}");
    }

    #[test]
    fn the_registered_formats_have_distinct_names_and_files() {
        // LinuxKit's file names: the root-on-device formats write kernel+initrd's kernel,
        // initrd and command line, so only one of the three can be asked for at a time.
        // kernel+squashfs and kernel+iso share those files and may be built together.
        let all: Vec<&Format> = FORMATS
            .iter()
            .filter(|f| f.name != "kernel+initrd")
            .collect();
        check_collisions(&all, "name").unwrap();
        let with_initrd: Vec<&Format> = FORMATS.iter().filter(|f| f.name != "kernel+iso").collect();
        assert!(check_collisions(&with_initrd, "name").is_err());
        let mut names: Vec<_> = FORMATS.iter().map(|f| f.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), FORMATS.len());
    }
}
