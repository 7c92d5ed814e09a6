//! `slipway run qemu`: boots a [`BootSource`] in `qemu-system-x86_64` with its serial console on
//! stdout, and turns the guest's end into an exit status.
//!
//! - Machine `q35`, `-no-reboot` (a guest reboot ends the run, as a power-off does), the serial
//!   console on stdio, no graphical display.
//! - Acceleration is TCG unless `--accel`/`SLIPWAY_QEMU_ACCEL` says otherwise: probing KVM by
//!   trying it costs a boot attempt, and on hosts where `/dev/kvm` exists but cannot run normal
//!   guests (nested or PVM hosts, see research/machine-probe.md) it hangs instead of failing.
//!   The value goes to `-machine accel=`, so `kvm:tcg` asks for KVM with a TCG fallback.
//! - Network: virtio-net-pci (or the `--nic-model` a test of other hardware asks for, such as
//!   e1000) on user-mode networking (`--publish` becomes `hostfwd`), a socket network shared by
//!   VMs, or none; `--networking` repeated gives one card per value, in that order (eth0, eth1,
//!   ...), e.g. a cluster's segment plus user-mode networking to reach the host.
//!   Disks: virtio-blk unless a `--disk` says `bus=ahci` or `bus=nvme` (each such disk gets its
//!   own controller). A `--disk` with a size that does not exist yet is created with
//!   `qemu-img create`.
//! - Firmware: SeaBIOS, unless the image boots UEFI only (an ISO whose El Torito catalog has
//!   only an EFI entry, a GPT disk with an ESP and no BIOS boot code; see [`super::probe`]) or
//!   `--uefi` asks for it. A disk that boots both ways boots BIOS.
//! - UEFI: OVMF's 4M code image read-only plus a private copy of its variable store in the
//!   state folder, so that boot entries the guest writes survive across runs of the same image.
//! - The boot disk goes in with its container's driver (`format=qcow2|vpc|vhdx|vmdk|raw`); the
//!   root image of kernel+squashfs or kernel+iso goes in read-only as the first virtio-blk disk.
//! - `--boot-report`: the console goes through slipway, which prints the guest's boot timeline
//!   as a table after the init's timeline line (see [`super::boot_report`]).
//! - qemu dies with slipway: it gets `PR_SET_PDEATHSIG(SIGKILL)`, so killing slipway (any
//!   signal, even SIGKILL) kills the VM; a `--timeout` kills it too and fails the run.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::{BootSource, RunError};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// How to run the VM. [`QemuConfig::default`] gives LinuxKit's defaults (1 CPU, 1024 MiB, user
/// networking, TCG).
#[derive(Clone, Debug)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub mem_mib: u64,
    pub cpus: u32,
    /// The `-machine accel=` value: `tcg`, `kvm`, or a fallback list such as `kvm:tcg`.
    pub accel: String,
    pub disks: Vec<DiskSpec>,
    pub publish: Vec<Publish>,
    /// One network card per entry, in order; `[None]` is no network.
    pub networking: Vec<Networking>,
    /// The QEMU device of the network card (`virtio-net-pci`, `e1000`, `vmxnet3`, ...).
    pub nic_model: String,
    /// Holds `qemu.pid`, created disks and the UEFI variable store. Default: `<target>-state`.
    pub state_dir: PathBuf,
    pub timeout: Option<Duration>,
    /// Interactive console: stdin goes to the guest (and Ctrl-A X quits qemu). Without it, stdin
    /// is not read and the console is output only, which is what scripts and CI want.
    pub console: bool,
    /// Boot with OVMF even when the image could boot BIOS.
    pub uefi: bool,
    /// Relay the console and print the boot timeline the guest's init reports.
    pub boot_report: bool,
    pub ovmf_code: PathBuf,
    pub ovmf_vars: PathBuf,
    /// `--data`/`--data-file`: the userdata of a metadata CD (`cidata`, one file `config`) that
    /// [`prepare`] writes into the state folder and the guest sees on virtio-scsi.
    pub data: Option<Vec<u8>>,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            qemu: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            mem_mib: 1024,
            cpus: 1,
            accel: "tcg".into(),
            disks: Vec::new(),
            publish: Vec::new(),
            networking: vec![Networking::User],
            nic_model: "virtio-net-pci".into(),
            state_dir: PathBuf::from("slipway-state"),
            timeout: None,
            console: false,
            uefi: false,
            boot_report: false,
            ovmf_code: OVMF_CODE.into(),
            ovmf_vars: OVMF_VARS.into(),
            data: None,
        }
    }
}

/// The state folder LinuxKit uses for a target: `out/minimal` -> `out/minimal-state`.
pub fn default_state_dir(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_os_string();
    s.push("-state");
    PathBuf::from(s)
}

/// `--disk [file=]PATH[,size=S][,format=F][,bus=B]`; a size without a path means
/// `<state>/diskN`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: Option<PathBuf>,
    /// Bytes.
    pub size: Option<u64>,
    pub format: Option<String>,
    pub bus: DiskBus,
}

/// The controller a disk hangs off, as the guest sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskBus {
    #[default]
    Virtio,
    /// SATA (`-device ahci` + `ide-hd`): VirtualBox, VMware and most bare metal.
    Ahci,
    Nvme,
}

impl FromStr for DiskSpec {
    type Err = RunError;
    fn from_str(s: &str) -> Result<Self, RunError> {
        let bad = |why: &str| RunError::BadOption {
            option: "--disk",
            value: s.to_string(),
            why: why.to_string(),
        };
        let mut disk = DiskSpec::default();
        for (i, part) in s.split(',').enumerate() {
            match part.split_once('=') {
                Some(("file", v)) => disk.path = Some(v.into()),
                Some(("size", v)) => {
                    disk.size =
                        Some(parse_size(v).ok_or_else(|| bad("size is N[K|M|G|T], G if no unit"))?)
                }
                Some(("format", v)) if is_word(v) => disk.format = Some(v.to_string()),
                Some(("format", _)) => {
                    return Err(bad("format must be a qemu format name (raw, qcow2, ...)"));
                }
                Some(("bus", v)) => {
                    disk.bus = match v {
                        "virtio" => DiskBus::Virtio,
                        "ahci" | "sata" => DiskBus::Ahci,
                        "nvme" => DiskBus::Nvme,
                        _ => return Err(bad("bus is virtio, ahci or nvme")),
                    }
                }
                None if i == 0 && !part.is_empty() => disk.path = Some(part.into()),
                _ => return Err(bad("expected [file=]PATH[,size=S][,format=F][,bus=B]")),
            }
        }
        if disk.path.is_none() && disk.size.is_none() {
            return Err(bad("give a path, a size, or both"));
        }
        Ok(disk)
    }
}

/// `4G`, `512M`, `10` (GiB, as in LinuxKit) -> bytes.
fn parse_size(s: &str) -> Option<u64> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().ok()?;
    let shift = match unit {
        "" | "G" | "g" => 30,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "T" | "t" => 40,
        _ => return None,
    };
    n.checked_mul(1 << shift).filter(|n| *n > 0)
}

fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `--publish [HOSTIP:]HOST:GUEST[/tcp|/udp]`, forwarded by user-mode networking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub host_addr: Option<String>,
    pub host: u16,
    pub guest: u16,
    pub udp: bool,
}

impl FromStr for Publish {
    type Err = RunError;
    fn from_str(s: &str) -> Result<Self, RunError> {
        let bad = || RunError::BadOption {
            option: "--publish",
            value: s.to_string(),
            why: "expected [HOSTIP:]HOST:GUEST[/tcp|/udp]".into(),
        };
        let (ports, udp) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, false),
            Some((p, "udp")) => (p, true),
            Some(_) => return Err(bad()),
            None => (s, false),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_addr, host, guest) = match parts[..] {
            [h, g] => (None, h, g),
            [a, h, g] if a.parse::<std::net::Ipv4Addr>().is_ok() => (Some(a.to_string()), h, g),
            _ => return Err(bad()),
        };
        Ok(Publish {
            host_addr,
            host: host.parse().map_err(|_| bad())?,
            guest: guest.parse().map_err(|_| bad())?,
            udp,
        })
    }
}

/// `--networking user|none|socket,mcast=ADDR:PORT[,mac=MAC]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Networking {
    #[default]
    User,
    None,
    /// QEMU's socket network on a multicast group: every VM started with the same group is on
    /// one Ethernet segment, without root or a bridge on the host (scripts/cluster). Each needs
    /// its own MAC address (QEMU gives every VM the same default).
    Socket {
        mcast: String,
        mac: Option<String>,
    },
}

impl FromStr for Networking {
    type Err = RunError;
    fn from_str(s: &str) -> Result<Self, RunError> {
        let bad = |why: &str| RunError::BadOption {
            option: "--networking",
            value: s.into(),
            why: why.into(),
        };
        match s {
            "user" => Ok(Networking::User),
            "none" => Ok(Networking::None),
            _ => {
                let Some(rest) = s.strip_prefix("socket,") else {
                    return Err(bad(
                        "expected user, none or socket,mcast=ADDR:PORT[,mac=MAC]",
                    ));
                };
                let (mut mcast, mut mac) = (None, None);
                for opt in rest.split(',') {
                    match opt.split_once('=') {
                        Some(("mcast", v)) if v.parse::<std::net::SocketAddrV4>().is_ok() => {
                            mcast = Some(v.to_string())
                        }
                        Some(("mac", v))
                            if v.len() == 17
                                && v.split(':').count() == 6
                                && v.split(':').all(|b| {
                                    b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit())
                                }) =>
                        {
                            mac = Some(v.to_string())
                        }
                        _ => {
                            return Err(bad(&format!(
                                "bad socket option {opt:?}: expected mcast=IPV4:PORT or mac=XX:XX:XX:XX:XX:XX"
                            )));
                        }
                    }
                }
                let mcast = mcast.ok_or_else(|| bad("socket networking needs mcast=ADDR:PORT"))?;
                Ok(Networking::Socket { mcast, mac })
            }
        }
    }
}

/// A disk as qemu gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedDisk {
    pub path: PathBuf,
    pub format: String,
    pub bus: DiskBus,
    pub readonly: bool,
}

/// Whether the VM starts OVMF: `--uefi`, or an image that boots UEFI only.
pub fn uses_uefi(config: &QemuConfig, source: &BootSource) -> bool {
    config.uefi || source.boots().is_some_and(|b| b.wants_uefi(false))
}

/// The disk format a file name suggests when none is given.
fn format_for(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("qcow2") => "qcow2",
        Some("vhd") => "vpc",
        Some("vhdx") => "vhdx",
        Some("vmdk") => "vmdk",
        _ => "raw",
    }
}

/// Creates the state folder, the disks that must be created and the UEFI variable store, and
/// returns the disks as qemu will see them (the boot disk, if any, first).
pub fn prepare(config: &QemuConfig, source: &BootSource) -> Result<Vec<ResolvedDisk>, RunError> {
    let state_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunError::State { path, source }
    };
    std::fs::create_dir_all(&config.state_dir).map_err(state_err(&config.state_dir))?;
    let mut disks = Vec::new();
    match source {
        BootSource::Disk {
            path, container, ..
        } => disks.push(ResolvedDisk {
            path: path.clone(),
            format: container.qemu_format().to_string(),
            bus: DiskBus::Virtio,
            readonly: false,
        }),
        BootSource::KernelInitrd {
            root: Some(root), ..
        } => disks.push(ResolvedDisk {
            path: root.path.clone(),
            format: "raw".into(),
            bus: DiskBus::Virtio,
            readonly: true,
        }),
        _ => {}
    }
    for (i, spec) in config.disks.iter().enumerate() {
        let path = spec
            .path
            .clone()
            .unwrap_or_else(|| config.state_dir.join(format!("disk{i}.qcow2")));
        let format = spec
            .format
            .clone()
            .unwrap_or_else(|| format_for(&path).to_string());
        if !path.exists() {
            let size = spec
                .size
                .ok_or_else(|| RunError::DiskWithoutSize { path: path.clone() })?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(state_err(parent))?;
            }
            run_tool(
                Command::new(&config.qemu_img)
                    .args(["create", "-q", "-f", &format])
                    .arg(&path)
                    .arg(size.to_string()),
            )?;
        }
        disks.push(ResolvedDisk {
            path,
            format,
            bus: spec.bus,
            readonly: false,
        });
    }
    if let Some(data) = &config.data {
        let iso = crate::format::iso::metadata_cd(data).map_err(|e| RunError::Tool {
            program: "the metadata CD writer".into(),
            detail: e.to_string(),
        })?;
        let path = config.state_dir.join(METADATA_CD);
        std::fs::write(&path, iso).map_err(state_err(&path))?;
    }
    if uses_uefi(config, source) {
        if !config.ovmf_code.is_file() {
            return Err(RunError::NoFirmware {
                path: config.ovmf_code.clone(),
            });
        }
        let vars = uefi_vars_path(config);
        if !vars.exists() {
            if !config.ovmf_vars.is_file() {
                return Err(RunError::NoFirmware {
                    path: config.ovmf_vars.clone(),
                });
            }
            std::fs::copy(&config.ovmf_vars, &vars).map_err(state_err(&vars))?;
        }
    }
    Ok(disks)
}

/// The metadata CD's file in the state folder (LinuxKit's is `data.iso` there too).
pub const METADATA_CD: &str = "data.iso";

/// The metadata CD on its own virtio-scsi controller: the kernel's default modules have
/// virtio_scsi and sr_mod, not AHCI.
fn metadata_cd_args(config: &QemuConfig) -> Vec<OsString> {
    let mut drive = OsString::from("file=");
    drive.push(qemu_escape(&config.state_dir.join(METADATA_CD)));
    drive.push(",format=raw,if=none,id=cidata,media=cdrom,readonly=on");
    vec![
        "-device".into(),
        "virtio-scsi-pci,id=scsi-cidata".into(),
        "-drive".into(),
        drive,
        "-device".into(),
        "scsi-cd,drive=cidata,bus=scsi-cidata.0".into(),
    ]
}

fn uefi_vars_path(config: &QemuConfig) -> PathBuf {
    config.state_dir.join("OVMF_VARS_4M.fd")
}

fn run_tool(cmd: &mut Command) -> Result<(), RunError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;
    if !out.status.success() {
        let detail = format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Err(RunError::Tool { program, detail });
    }
    Ok(())
}

/// The qemu arguments for `source` with `disks` from [`prepare`]. Pure, so it is tested as text.
pub fn command_line(
    config: &QemuConfig,
    source: &BootSource,
    disks: &[ResolvedDisk],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&["-machine", &format!("q35,accel={}", config.accel)]);
    if config.accel.starts_with("kvm") {
        push(&["-cpu", "host"]);
    }
    push(&[
        "-smp",
        &config.cpus.to_string(),
        "-m",
        &config.mem_mib.to_string(),
    ]);
    push(&["-no-reboot", "-display", "none"]);
    if config.console {
        // mon:stdio multiplexes the monitor onto the console: Ctrl-A C switches, Ctrl-A X quits.
        push(&["-serial", "mon:stdio"]);
    } else {
        push(&["-serial", "stdio", "-monitor", "none"]);
    }
    push(&["-device", "virtio-rng-pci"]);
    let pidfile = config.state_dir.join("qemu.pid");
    args.extend(["-pidfile".into(), pidfile.into_os_string()]);
    if uses_uefi(config, source) {
        let mut code = OsString::from("if=pflash,format=raw,unit=0,readonly=on,file=");
        code.push(qemu_escape(&config.ovmf_code));
        let mut vars = OsString::from("if=pflash,format=raw,unit=1,file=");
        vars.push(qemu_escape(&uefi_vars_path(config)));
        args.extend(["-drive".into(), code, "-drive".into(), vars]);
    }
    match source {
        BootSource::KernelInitrd {
            kernel,
            initrd,
            cmdline,
            ..
        } => {
            args.extend(["-kernel".into(), kernel.clone().into_os_string()]);
            args.extend(["-initrd".into(), initrd.clone().into_os_string()]);
            args.extend(["-append".into(), cmdline.into()]);
        }
        BootSource::Iso { path, .. } => {
            args.extend([
                "-cdrom".into(),
                path.clone().into_os_string(),
                "-boot".into(),
                "d".into(),
            ]);
        }
        BootSource::Disk { .. } => {}
    }
    for (index, disk) in disks.iter().enumerate() {
        let mut d = OsString::from("file=");
        d.push(qemu_escape(&disk.path));
        let id = format!("disk{index}");
        if disk.readonly {
            d.push(",readonly=on");
        }
        match disk.bus {
            DiskBus::Virtio => {
                d.push(format!(
                    ",format={},if=virtio,index={index},media=disk",
                    disk.format
                ));
                args.extend(["-drive".into(), d]);
            }
            DiskBus::Ahci => {
                d.push(format!(",format={},if=none,id={id}", disk.format));
                args.extend(["-drive".into(), d]);
                for device in [
                    format!("ahci,id=ahci{index}"),
                    format!("ide-hd,drive={id},bus=ahci{index}.0"),
                ] {
                    args.extend(["-device".into(), device.into()]);
                }
            }
            DiskBus::Nvme => {
                d.push(format!(",format={},if=none,id={id}", disk.format));
                args.extend(["-drive".into(), d]);
                args.extend([
                    "-device".into(),
                    format!("nvme,drive={id},serial={id}").into(),
                ]);
            }
        }
    }
    if config.data.is_some() {
        args.extend(metadata_cd_args(config));
    }
    if config.networking.iter().all(|n| *n == Networking::None) {
        args.extend(["-nic".into(), "none".into()]);
    }
    // `--publish` forwards through the first user-mode card.
    let first_user = config
        .networking
        .iter()
        .position(|n| *n == Networking::User);
    for (i, net) in config.networking.iter().enumerate() {
        let id = format!("net{i}");
        let mut device = format!("{},netdev={id}", config.nic_model);
        let netdev = match net {
            Networking::None => continue,
            Networking::User => {
                let mut netdev = format!("user,id={id}");
                if first_user == Some(i) {
                    for p in &config.publish {
                        let proto = if p.udp { "udp" } else { "tcp" };
                        let addr = p.host_addr.as_deref().unwrap_or("");
                        netdev
                            .push_str(&format!(",hostfwd={proto}:{addr}:{}-:{}", p.host, p.guest));
                    }
                }
                netdev
            }
            Networking::Socket { mcast, mac } => {
                if let Some(mac) = mac {
                    device.push_str(&format!(",mac={mac}"));
                }
                format!("socket,id={id},mcast={mcast}")
            }
        };
        args.extend([
            "-netdev".into(),
            netdev.into(),
            "-device".into(),
            device.into(),
        ]);
    }
    args
}

/// qemu option values are comma-separated; a literal comma in a file name is written twice.
fn qemu_escape(path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// `--publish` needs a user-mode card; `none` cannot be combined with a card.
fn check_networking(config: &QemuConfig) -> Result<(), RunError> {
    if !config.publish.is_empty() && !config.networking.contains(&Networking::User) {
        return Err(RunError::BadOption {
            option: "--publish",
            value: format!("{:?}", config.publish),
            why: "needs --networking user".into(),
        });
    }
    if config.networking.len() > 1 && config.networking.contains(&Networking::None) {
        return Err(RunError::BadOption {
            option: "--networking",
            value: "none".into(),
            why: "cannot be combined with a network card".into(),
        });
    }
    Ok(())
}

/// Boots `source` and waits: `Ok` when qemu exits 0 (the guest powered off, or rebooted, which
/// `-no-reboot` turns into an exit), an error when qemu fails or the timeout passes.
pub fn run(config: &QemuConfig, source: &BootSource) -> Result<(), RunError> {
    check_networking(config)?;
    let disks = prepare(config, source)?;
    let args = command_line(config, source, &disks);
    let program = config.qemu.to_string_lossy().into_owned();
    tracing::info!(
        "{program} {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut cmd = Command::new(&config.qemu);
    cmd.args(&args).stdin(if config.console {
        Stdio::inherit()
    } else {
        Stdio::null()
    });
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec; it only makes raw syscalls
    // (prctl, getppid) and allocates nothing, which is what async-signal safety requires.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // slipway may have died between fork and prctl; then nobody would ever kill qemu.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other("slipway exited while starting qemu"));
            }
            Ok(())
        });
    }
    if config.boot_report {
        cmd.stdout(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;
    // The relay ends at the pipe's end, when qemu exits (or is killed).
    let relay = child.stdout.take().map(|console| {
        std::thread::spawn(move || {
            let found = super::boot_report::relay(
                std::io::BufReader::new(console),
                std::io::stdout().lock(),
            );
            if found.is_none() {
                tracing::warn!("the guest printed no boot timeline on its console");
            }
        })
    });
    let result = wait(config, &mut child, &program);
    if let Some(relay) = relay {
        let _ = relay.join();
    }
    result
}

fn wait(
    config: &QemuConfig,
    child: &mut std::process::Child,
    program: &str,
) -> Result<(), RunError> {
    let started = Instant::now();
    let wait_err = |source| RunError::Wait {
        program: program.to_owned(),
        source,
    };
    loop {
        if let Some(status) = child.try_wait().map_err(wait_err)? {
            return if status.success() {
                Ok(())
            } else {
                Err(RunError::QemuFailed { status })
            };
        }
        if let Some(timeout) = config.timeout
            && started.elapsed() >= timeout
        {
            // Already exited in between is fine: kill then only reports an error we ignore.
            let _ = child.kill();
            child.wait().map_err(wait_err)?;
            return Err(RunError::Timeout {
                seconds: timeout.as_secs(),
            });
        }
        // Polling keeps this free of threads and signal handlers; 50 ms is far below boot times.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Boots, Container, RootImage};

    fn iso(path: &str) -> BootSource {
        BootSource::Iso {
            path: path.into(),
            boots: Boots {
                bios: true,
                uefi: false,
            },
        }
    }

    fn has_ovmf(args: &str) -> bool {
        args.contains("if=pflash")
    }

    #[test]
    fn the_firmware_follows_the_image_unless_uefi_is_forced() {
        let config = QemuConfig {
            state_dir: "/s".into(),
            ..QemuConfig::default()
        };
        let efi_only = BootSource::Iso {
            path: "/o/x-efi.iso".into(),
            boots: Boots {
                bios: false,
                uefi: true,
            },
        };
        assert!(has_ovmf(&text(&command_line(&config, &efi_only, &[]))));
        assert!(!has_ovmf(&text(&command_line(
            &config,
            &iso("/o/x.iso"),
            &[]
        ))));
        let both = BootSource::Disk {
            path: "/o/x.vhdx".into(),
            container: Container::Vhdx,
            boots: Boots {
                bios: true,
                uefi: true,
            },
        };
        assert!(!has_ovmf(&text(&command_line(&config, &both, &[]))));
        let forced = QemuConfig {
            uefi: true,
            ..config.clone()
        };
        assert!(has_ovmf(&text(&command_line(&forced, &both, &[]))));
    }

    #[test]
    fn a_disk_goes_in_with_its_containers_driver() {
        let dir = tempfile::tempdir().unwrap();
        let config = QemuConfig {
            state_dir: dir.path().join("s"),
            ..QemuConfig::default()
        };
        for (container, format) in [
            (Container::Qcow2, "qcow2"),
            (Container::Vpc { fixed: true }, "vpc"),
            (Container::Vpc { fixed: false }, "vpc"),
            (Container::Vhdx, "vhdx"),
            (Container::Vmdk, "vmdk"),
            (Container::Raw, "raw"),
        ] {
            let source = BootSource::Disk {
                path: "/o/disk".into(),
                container,
                boots: Boots {
                    bios: true,
                    uefi: false,
                },
            };
            let disks = prepare(&config, &source).unwrap();
            let args = text(&command_line(&config, &source, &disks));
            assert!(
                args.contains(&format!(
                    "-drive file=/o/disk,format={format},if=virtio,index=0,media=disk"
                )),
                "{args}"
            );
            assert!(
                !args.contains("-cdrom") && !args.contains("-kernel"),
                "{args}"
            );
        }
    }

    #[test]
    fn a_root_image_is_the_first_disk_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let config = QemuConfig {
            state_dir: dir.path().join("s"),
            disks: vec!["/d/data.img".parse().unwrap()],
            ..QemuConfig::default()
        };
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let source = BootSource::KernelInitrd {
            kernel: "/o/m-kernel".into(),
            initrd: "/o/m-initrd.img".into(),
            cmdline: "console=ttyS0 root=/dev/vda rootfstype=squashfs".into(),
            root: Some(RootImage {
                path: "/o/m-squashfs.img".into(),
                fstype: "squashfs",
            }),
        };
        let disks = prepare(
            &QemuConfig {
                disks: vec![],
                ..config.clone()
            },
            &source,
        )
        .unwrap();
        let mut all = disks.clone();
        all.push(ResolvedDisk {
            path: "/d/data.img".into(),
            format: "raw".into(),
            bus: DiskBus::Virtio,
            readonly: false,
        });
        let args = text(&command_line(&config, &source, &all));
        assert!(
            args.contains(
                "-append console=ttyS0 root=/dev/vda rootfstype=squashfs \
                 -drive file=/o/m-squashfs.img,readonly=on,format=raw,if=virtio,index=0,media=disk \
                 -drive file=/d/data.img,format=raw,if=virtio,index=1,media=disk"
            ),
            "{args}"
        );
    }

    fn text(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn data_attaches_a_cidata_cd_on_virtio_scsi() {
        let state = tempfile::tempdir().unwrap();
        let config = QemuConfig {
            state_dir: state.path().join("st"),
            data: Some(b"{}".to_vec()),
            networking: vec![Networking::None],
            ..QemuConfig::default()
        };
        let source = iso("x.iso");
        let disks = prepare(&config, &source).unwrap();
        let args = text(&command_line(&config, &source, &disks));
        let cd = state.path().join("st/data.iso");
        assert!(
            args.contains(&format!(
                "-device virtio-scsi-pci,id=scsi-cidata -drive file={},format=raw,if=none,id=cidata,\
                 media=cdrom,readonly=on -device scsi-cd,drive=cidata,bus=scsi-cidata.0",
                cd.display()
            )),
            "{args}"
        );
        let iso = std::fs::read(&cd).unwrap();
        assert_eq!(&iso[16 * 2048 + 1..16 * 2048 + 6], b"CD001");
    }

    #[test]
    fn socket_networking_puts_vms_on_one_multicast_segment() {
        let networking: Networking = "socket,mcast=230.0.0.1:1234,mac=52:54:00:00:00:02"
            .parse()
            .unwrap();
        let config = QemuConfig {
            state_dir: "/s".into(),
            networking: vec![networking, Networking::User],
            ..QemuConfig::default()
        };
        let source = BootSource::KernelInitrd {
            kernel: "/o/m-kernel".into(),
            initrd: "/o/m-initrd.img".into(),
            cmdline: "console=ttyS0".into(),
            root: None,
        };
        let args = text(&command_line(&config, &source, &[]));
        assert!(
            args.ends_with(
                "-netdev socket,id=net0,mcast=230.0.0.1:1234 \
                 -device virtio-net-pci,netdev=net0,mac=52:54:00:00:00:02 \
                 -netdev user,id=net1 -device virtio-net-pci,netdev=net1"
            ),
            "{args}"
        );
        let refused = |networking: Vec<Networking>, publish: &str| {
            let config = QemuConfig {
                networking,
                publish: publish.parse().into_iter().collect(),
                ..QemuConfig::default()
            };
            check_networking(&config).is_err()
        };
        assert!(refused(vec![Networking::None, Networking::User], ""));
        assert!(refused(vec![config.networking[0].clone()], "8080:80"));
        assert!(!refused(config.networking.clone(), "8080:80"));
        for bad in [
            "socket",
            "socket,mac=52:54:00:00:00:02",
            "socket,mcast=nowhere",
            "socket,mcast=230.0.0.1:1234,mac=52:54:00:00:00",
            "socket,mcast=230.0.0.1:1234,fd=3",
        ] {
            assert!(bad.parse::<Networking>().is_err(), "{bad}");
        }
    }

    #[test]
    fn kernel_initrd_command_line() {
        let config = QemuConfig {
            state_dir: "/s".into(),
            publish: vec![
                "8080:80".parse().unwrap(),
                "127.0.0.1:5353:53/udp".parse().unwrap(),
            ],
            ..QemuConfig::default()
        };
        let source = BootSource::KernelInitrd {
            kernel: "/o/m-kernel".into(),
            initrd: "/o/m-initrd.img".into(),
            cmdline: "console=ttyS0 quiet".into(),
            root: None,
        };
        let disks = [
            ResolvedDisk {
                path: "/d/a,b.qcow2".into(),
                format: "qcow2".into(),
                bus: DiskBus::Virtio,
                readonly: false,
            },
            ResolvedDisk {
                path: "/d/sata.img".into(),
                format: "raw".into(),
                bus: DiskBus::Ahci,
                readonly: false,
            },
            ResolvedDisk {
                path: "/d/n.img".into(),
                format: "raw".into(),
                bus: DiskBus::Nvme,
                readonly: false,
            },
        ];
        assert_eq!(
            text(&command_line(&config, &source, &disks)),
            "-machine q35,accel=tcg -smp 1 -m 1024 -no-reboot -display none -serial stdio -monitor none \
             -device virtio-rng-pci -pidfile /s/qemu.pid -kernel /o/m-kernel -initrd /o/m-initrd.img \
             -append console=ttyS0 quiet -drive file=/d/a,,b.qcow2,format=qcow2,if=virtio,index=0,media=disk \
             -drive file=/d/sata.img,format=raw,if=none,id=disk1 -device ahci,id=ahci1 \
             -device ide-hd,drive=disk1,bus=ahci1.0 \
             -drive file=/d/n.img,format=raw,if=none,id=disk2 -device nvme,drive=disk2,serial=disk2 \
             -netdev user,id=net0,hostfwd=tcp::8080-:80,hostfwd=udp:127.0.0.1:5353-:53 \
             -device virtio-net-pci,netdev=net0"
        );
    }

    #[test]
    fn uefi_kvm_console_iso_command_line() {
        let config = QemuConfig {
            state_dir: "/s".into(),
            accel: "kvm:tcg".into(),
            console: true,
            uefi: true,
            networking: vec![Networking::None],
            cpus: 2,
            mem_mib: 512,
            ..QemuConfig::default()
        };
        let args = text(&command_line(
            &config,
            &BootSource::Iso {
                path: "/o/x-efi.iso".into(),
                boots: Boots::default(),
            },
            &[],
        ));
        assert_eq!(
            args,
            "-machine q35,accel=kvm:tcg -cpu host -smp 2 -m 512 -no-reboot -display none -serial mon:stdio \
             -device virtio-rng-pci -pidfile /s/qemu.pid \
             -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,unit=1,file=/s/OVMF_VARS_4M.fd -cdrom /o/x-efi.iso -boot d -nic none"
        );
    }

    #[test]
    fn disk_specs_parse_like_linuxkit() {
        assert_eq!(
            "data.img,size=2G,format=raw".parse::<DiskSpec>().unwrap(),
            DiskSpec {
                path: Some("data.img".into()),
                size: Some(2 << 30),
                format: Some("raw".into()),
                bus: DiskBus::Virtio,
            }
        );
        assert_eq!(
            "size=64M,bus=ahci".parse::<DiskSpec>().unwrap().bus,
            DiskBus::Ahci
        );
        assert_eq!(
            "size=512M".parse::<DiskSpec>().unwrap(),
            DiskSpec {
                path: None,
                size: Some(512 << 20),
                ..DiskSpec::default()
            }
        );
        assert_eq!(
            "file=a.qcow2,size=1".parse::<DiskSpec>().unwrap().size,
            Some(1 << 30)
        );
        for bad in [
            "",
            "a,size=12Q",
            "a,colour=red",
            "a,format=qcow2;rm",
            "a,bus=floppy",
        ] {
            assert!(bad.parse::<DiskSpec>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn publish_specs_parse() {
        assert_eq!(
            "2222:22".parse::<Publish>().unwrap(),
            Publish {
                host_addr: None,
                host: 2222,
                guest: 22,
                udp: false
            }
        );
        assert!("2222".parse::<Publish>().is_err());
        assert!("a:22".parse::<Publish>().is_err());
        assert!("1:2/sctp".parse::<Publish>().is_err());
    }

    #[test]
    fn a_sized_disk_that_does_not_exist_is_created_with_qemu_img() {
        let dir = tempfile::tempdir().unwrap();
        let config = QemuConfig {
            state_dir: dir.path().join("state"),
            disks: vec![
                "size=16M".parse().unwrap(),
                format!("{}/raw.img,size=8M", dir.path().display())
                    .parse()
                    .unwrap(),
            ],
            ..QemuConfig::default()
        };
        let disks = prepare(&config, &iso("x.iso")).unwrap();
        assert_eq!(
            disks[0],
            ResolvedDisk {
                path: dir.path().join("state/disk0.qcow2"),
                format: "qcow2".into(),
                bus: DiskBus::Virtio,
                readonly: false,
            }
        );
        assert_eq!(
            &std::fs::read(&disks[0].path).unwrap()[..4],
            b"QFI\xfb",
            "not a qcow2 image"
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("raw.img")).unwrap().len(),
            8 << 20
        );
        let missing = QemuConfig {
            disks: vec!["nope.img".parse().unwrap()],
            ..config
        };
        assert!(matches!(
            prepare(&missing, &iso("x.iso")),
            Err(RunError::DiskWithoutSize { .. })
        ));
    }
}
