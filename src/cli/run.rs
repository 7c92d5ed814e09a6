//! `slipway run`: boot what `slipway build` produced.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::Global;
use crate::run::hyperkit::{self, HyperkitConfig};
use crate::run::hyperv::{self, HypervConfig};
use crate::run::qemu::{self, DiskSpec, Networking, Publish, QemuConfig};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Boot in QEMU (TCG unless --accel says otherwise), serial console on stdout. Exits 0 when
    /// the guest powers off, non-zero on a timeout or a qemu error.
    Qemu(QemuArgs),
    /// Print the HyperKit command line that boots a kernel+initrd build (run it on macOS).
    Hyperkit(HyperkitArgs),
    /// Print the PowerShell commands that create and start a Hyper-V VM for an ISO or disk
    /// image build (run them on Windows).
    Hyperv(HypervArgs),
}

#[derive(clap::Args, Debug)]
pub struct HyperkitArgs {
    /// Memory in MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub mem: u64,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,
    /// An existing raw disk image to attach (virtio-blk). Repeatable.
    #[arg(long, value_name = "PATH")]
    pub disk: Vec<PathBuf>,
    /// Guest networking: user (vmnet) or none.
    #[arg(long, default_value = "user", value_parser = parse_hyperkit_networking)]
    pub networking: Networking,
    /// State folder (pid file). Default: NAME-state.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// The build output: a NAME or PATH prefix (NAME-kernel, NAME-initrd.img, NAME-cmdline).
    pub target: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct HypervArgs {
    /// Memory in MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub mem: u64,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,
    /// The VM's name. Default: the image's file name.
    #[arg(long)]
    pub name: Option<String>,
    /// The virtual switch to connect the VM to; without it the VM has no network.
    #[arg(long, value_name = "SWITCH")]
    pub switch: Option<String>,
    /// The build output: a VHDX (generation 2), a VHD (generation 1) or an ISO, or a NAME that
    /// has one (NAME.vhdx, NAME.vhd, NAME-dynamic.vhd, then the ISOs).
    pub target: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct QemuArgs {
    /// Memory in MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub mem: u64,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,
    /// Extra disk: [file=]PATH[,size=S][,format=F][,bus=virtio|ahci|nvme]; created with qemu-img
    /// if it has a size and does not exist. Repeatable.
    #[arg(long, value_name = "DISK", value_parser = parse_disk)]
    pub disk: Vec<DiskSpec>,
    /// Forward a host port to the guest: [HOSTIP:]HOST:GUEST[/tcp|/udp]. Repeatable.
    #[arg(long, value_name = "PORTS", value_parser = parse_publish)]
    pub publish: Vec<Publish>,
    /// Guest networking: user (NAT, virtio-net), none, or socket,mcast=ADDR:PORT[,mac=MAC]
    /// (one Ethernet segment with every VM on that multicast group). Repeatable: one network
    /// card per value, in order (eth0, eth1, ...).
    #[arg(long, default_value = "user", value_parser = parse_networking)]
    pub networking: Vec<Networking>,
    /// The network card QEMU emulates: virtio-net-pci, e1000, e1000e, vmxnet3, rtl8139, ...
    #[arg(long, default_value = "virtio-net-pci", value_name = "MODEL", value_parser = parse_nic_model)]
    pub nic_model: String,
    /// State folder (pid file, created disks, UEFI variables). Default: NAME-state.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Userdata for the guest's `metadata` package: attached as a metadata CD (an ISO labelled
    /// `cidata` with a file `config`, as `linuxkit metadata create` writes it).
    #[arg(long, value_name = "STRING", conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Like --data, with the userdata read from FILE.
    #[arg(long, value_name = "FILE")]
    pub data_file: Option<PathBuf>,
    /// Kill the VM and fail if it has not powered off after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Interactive console: the terminal's input goes to the guest (Ctrl-A X quits).
    #[arg(long)]
    pub console: bool,
    /// Boot with UEFI firmware (OVMF) even when the image could boot BIOS. Without it the image
    /// decides: OVMF when it boots UEFI only (an EFI-only ISO, a GPT disk with an ESP and no
    /// BIOS boot code), SeaBIOS otherwise.
    #[arg(long)]
    pub uefi: bool,
    /// After the guest's boot, print its timeline (ms since the kernel started for each step:
    /// initramfs, kernel, mounts, modules, each onboot container, engine, first service), read
    /// from the line the init prints on the console.
    #[arg(long)]
    pub boot_report: bool,
    /// QEMU accelerator: tcg (default), kvm, or kvm:tcg. KVM is never probed: on some hosts it
    /// exists but hangs.
    #[arg(long, env = "SLIPWAY_QEMU_ACCEL", default_value = "tcg", value_parser = parse_accel)]
    pub accel: String,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64", value_name = "PATH")]
    pub qemu: PathBuf,
    /// The build output: a NAME or PATH prefix (kernel+squashfs, kernel+iso, kernel+initrd, then
    /// the ISO and disk formats, as LinuxKit looks for them), or the path of an ISO or a disk
    /// image (raw, qcow2, VHD, VHDX, VMDK; recognised by its contents).
    pub target: PathBuf,
}

fn parse_disk(s: &str) -> Result<DiskSpec, String> {
    s.parse().map_err(|e: crate::run::RunError| e.to_string())
}

fn parse_publish(s: &str) -> Result<Publish, String> {
    s.parse().map_err(|e: crate::run::RunError| e.to_string())
}

fn parse_networking(s: &str) -> Result<Networking, String> {
    s.parse().map_err(|e: crate::run::RunError| e.to_string())
}

/// HyperKit has vmnet or nothing: QEMU's socket network is not one of its options.
fn parse_hyperkit_networking(s: &str) -> Result<Networking, String> {
    match parse_networking(s)? {
        Networking::Socket { .. } => Err("expected user or none".into()),
        other => Ok(other),
    }
}

/// A QEMU device name, so that it cannot smuggle options into `-device`.
fn parse_nic_model(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(s.to_string())
    } else {
        Err("expected a QEMU network device such as e1000 or virtio-net-pci".into())
    }
}

fn parse_accel(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.split(':').all(|a| matches!(a, "tcg" | "kvm")) {
        Ok(s.to_string())
    } else {
        Err("expected tcg, kvm, kvm:tcg or tcg:kvm".into())
    }
}

pub fn run(cmd: Command, _global: &Global) -> anyhow::Result<()> {
    match cmd {
        Command::Qemu(args) => run_qemu(args),
        Command::Hyperkit(args) => print_hyperkit(args),
        Command::Hyperv(args) => print_hyperv(args),
    }
}

fn run_qemu(args: QemuArgs) -> anyhow::Result<()> {
    let data = match (&args.data, &args.data_file) {
        (Some(text), _) => Some(text.clone().into_bytes()),
        (None, Some(file)) => Some(
            std::fs::read(file)
                .with_context(|| format!("reading --data-file {}", file.display()))?,
        ),
        (None, None) => None,
    };
    let source = crate::run::find_boot_source(&args.target)?;
    let config = QemuConfig {
        qemu: args.qemu,
        mem_mib: args.mem,
        cpus: args.cpus,
        accel: args.accel,
        disks: args.disk,
        publish: args.publish,
        networking: args.networking,
        nic_model: args.nic_model,
        state_dir: args
            .state
            .unwrap_or_else(|| qemu::default_state_dir(&args.target)),
        timeout: args.timeout.map(Duration::from_secs),
        console: args.console,
        uefi: args.uefi,
        boot_report: args.boot_report,
        data,
        ..QemuConfig::default()
    };
    qemu::run(&config, &source)
        .with_context(|| format!("running {} in qemu", args.target.display()))
}

fn print_hyperkit(args: HyperkitArgs) -> anyhow::Result<()> {
    let source = crate::run::find_boot_source(&args.target)?;
    let config = HyperkitConfig {
        hyperkit: "hyperkit".into(),
        cpus: args.cpus,
        mem_mib: args.mem,
        state_dir: args
            .state
            .unwrap_or_else(|| qemu::default_state_dir(&args.target)),
        disks: args.disk,
        networking: args.networking,
    };
    let argv = hyperkit::command_line(&config, &source)?;
    println!("{}", crate::run::shell_words(&config.hyperkit, &argv));
    Ok(())
}

fn print_hyperv(args: HypervArgs) -> anyhow::Result<()> {
    let source = hyperv::find_source(&args.target)?;
    let name = args.name.unwrap_or_else(|| {
        let stem = args
            .target
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned());
        stem.unwrap_or_else(|| "slipway".into())
    });
    let config = HypervConfig {
        name,
        cpus: args.cpus,
        mem_mib: args.mem,
        switch: args.switch,
    };
    print!("{}", hyperv::script(&config, &source)?);
    Ok(())
}
