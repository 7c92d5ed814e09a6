//! `format [-type ext4] [-label LABEL] [-partition dos] [-force] [-verbose] [DEVICE]`: gives a
//! Slipway image its persistent state disk, as LinuxKit's `format` package does, run as an
//! onboot container.
//!
//! Without DEVICE it takes the first blank disk (by kernel name: no partition table, no
//! filesystem); a disk that already holds a filesystem labelled LABEL means the work was done on
//! an earlier boot, and nothing happens. With DEVICE, a disk that holds anything is left alone
//! unless `-force` says to erase it. The disk gets an MBR with one Linux partition over the whole
//! disk (from 1 MiB), then `mkfs.ext4` (Debian's e2fsprogs, in the same image) makes the
//! filesystem. The MBR is 512 bytes of a fixed layout, written by hand.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use crate::{Content, Disk, SYS_BLOCK};

/// The first partition starts at 1 MiB, as every partitioning tool aligns it.
const START_SECTOR: u64 = 2048;

#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    fstype: String,
    label: Option<String>,
    force: bool,
    verbose: bool,
    device: Option<String>,
}

const USAGE: &str = "usage: format [-type ext4|ext3|ext2] [-label LABEL] [-partition dos] [-force] [-verbose] [DEVICE]";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        fstype: "ext4".into(),
        ..Options::default()
    };
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let flag = arg.trim_start_matches('-');
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let mut value = || -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match name {
            _ if !arg.starts_with('-') => {
                if o.device.replace(arg.to_string()).is_some() {
                    return Err(format!("one DEVICE at most\n{USAGE}"));
                }
            }
            "type" | "t" => o.fstype = value()?,
            "label" | "l" => o.label = Some(value()?),
            "partition" => {
                let p = value()?;
                if p != "dos" && p != "mbr" {
                    return Err(format!(
                        "-partition {p}: this format writes dos (MBR) partition tables only"
                    ));
                }
            }
            "force" | "f" => o.force = true,
            "verbose" | "v" => o.verbose = true,
            "help" | "h" => return Err(USAGE.to_string()),
            _ => return Err(format!("unknown flag {arg}\n{USAGE}")),
        }
        i += 1;
    }
    if !["ext4", "ext3", "ext2"].contains(&o.fstype.as_str()) {
        return Err(format!(
            "-type {}: this image makes ext4, ext3 or ext2 filesystems",
            o.fstype
        ));
    }
    if let Some(label) = &o.label
        && label.len() > 16
    {
        return Err(format!(
            "-label {label}: an ext4 label has 16 bytes at most"
        ));
    }
    Ok(o)
}

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("format: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("format: {e}");
            ExitCode::FAILURE
        }
    }
}

fn say(msg: impl std::fmt::Display) {
    println!("format: {msg}");
}

/// What a disk holds: the disk itself, or its first partition when the kernel lists some.
fn content_of(disk: &Disk) -> Result<Content, String> {
    if !disk.partitions.is_empty() {
        return Ok(Content::PartitionTable);
    }
    let node = crate::node(&disk.name, disk.major, disk.minor)
        .map_err(|e| format!("creating a node for {}: {e}", disk.name))?;
    crate::probe(&node).map_err(|e| format!("reading /dev/{}: {e}", disk.name))
}

/// The label of each partition (or partitionless disk) that holds a filesystem.
fn labels(disks: &[Disk]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for disk in disks {
        let devices: Vec<(String, u32, u32)> = if disk.partitions.is_empty() {
            vec![(disk.name.clone(), disk.major, disk.minor)]
        } else {
            disk.partitions
                .iter()
                .map(|p| (p.name.clone(), p.major, p.minor))
                .collect()
        };
        for (name, major, minor) in devices {
            let Ok(node) = crate::node(&name, major, minor) else {
                continue;
            };
            if let Ok(Content::Filesystem { label, .. }) = crate::probe(&node) {
                found.push((name, label));
            }
        }
    }
    found
}

fn run(o: &Options) -> Result<(), String> {
    let disks = crate::disks(Path::new(SYS_BLOCK));
    if o.verbose {
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        say(format_args!("disks: {}", names.join(" ")));
    }
    let disk = match &o.device {
        Some(device) => {
            let name = crate::device_name(device);
            let disk = disks
                .iter()
                .find(|d| d.name == name)
                .ok_or_else(|| format!("{device} is not a disk this machine has"))?;
            let content = content_of(disk)?;
            if content != Content::Blank && !o.force {
                say(format_args!(
                    "{device} holds {}; left as it is (-force erases it)",
                    describe(&content)
                ));
                return Ok(());
            }
            disk.clone()
        }
        None => {
            if let Some(label) = &o.label
                && let Some((name, _)) = labels(&disks).into_iter().find(|(_, l)| l == label)
            {
                say(format_args!(
                    "/dev/{name} holds the filesystem labelled {label}: nothing to do"
                ));
                return Ok(());
            }
            let mut blank = None;
            for disk in &disks {
                if content_of(disk)? == Content::Blank {
                    blank = Some(disk.clone());
                    break;
                }
            }
            match blank {
                Some(disk) => disk,
                None => {
                    say("no blank disk: nothing to do");
                    return Ok(());
                }
            }
        }
    };
    format_disk(&disk, o)
}

fn describe(content: &Content) -> String {
    match content {
        Content::Blank => "nothing".into(),
        Content::PartitionTable => "a partition table".into(),
        Content::Filesystem { fstype, label } if label.is_empty() => {
            format!("an {fstype} filesystem")
        }
        Content::Filesystem { fstype, label } => format!("an {fstype} filesystem labelled {label}"),
    }
}

fn format_disk(disk: &Disk, o: &Options) -> Result<(), String> {
    let dev = format!("/dev/{}", disk.name);
    if disk.sectors < START_SECTOR * 2 {
        return Err(format!(
            "{dev} has {} sectors, too small for a partition",
            disk.sectors
        ));
    }
    let node = crate::node(&disk.name, disk.major, disk.minor)
        .map_err(|e| format!("creating a node for {dev}: {e}"))?;
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        .map_err(|e| format!("opening {dev}: {e}"))?;
    let io = |what: &str| {
        let what = format!("{what} {dev}");
        move |e: std::io::Error| format!("{what}: {e}")
    };
    // The old partition table, and anything an old filesystem left at the start, go.
    file.write_all(&vec![0u8; (START_SECTOR * 2 * 512) as usize])
        .map_err(io("erasing the start of"))?;
    file.seek(SeekFrom::Start(0)).map_err(io("seeking on"))?;
    file.write_all(&mbr(disk.sectors))
        .map_err(io("writing the partition table of"))?;
    file.sync_all().map_err(io("syncing"))?;
    reread_partitions(&file).map_err(io("re-reading the partition table of"))?;
    drop(file);
    let part_name = crate::partition_name(&disk.name, 1);
    let part_dev = wait_for_partition(disk, &part_name)?;
    let part = crate::node(&part_name, part_dev.0, part_dev.1)
        .map_err(|e| format!("creating a node for /dev/{part_name}: {e}"))?;
    let mut mkfs = Command::new("mke2fs");
    mkfs.args(["-t", &o.fstype, "-F", "-q"]);
    if let Some(label) = &o.label {
        mkfs.args(["-L", label]);
    }
    mkfs.arg(&part);
    let status = mkfs
        .status()
        .map_err(|e| format!("running mke2fs (e2fsprogs): {e}"))?;
    if !status.success() {
        return Err(format!(
            "mke2fs -t {} /dev/{part_name} failed: {status}",
            o.fstype
        ));
    }
    say(format_args!(
        "/dev/{part_name}: {} filesystem{}",
        o.fstype,
        o.label
            .as_ref()
            .map(|l| format!(" labelled {l}"))
            .unwrap_or_default()
    ));
    Ok(())
}

/// An MBR with one Linux (0x83) partition from [`START_SECTOR`] to the end of the disk (or to
/// the 2 TiB an MBR can describe).
fn mbr(sectors: u64) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    let length = (sectors - START_SECTOR).min(u32::MAX as u64) as u32;
    // A disk identifier, so that tools that show one have something to show.
    mbr[440..444].copy_from_slice(&(0x5119_0000u32 ^ length).to_le_bytes());
    let entry = &mut mbr[446..462];
    entry[0] = 0x00; // not bootable
    // CHS fields past what CHS can address: readers use the LBA fields.
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[4] = 0x83;
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&(START_SECTOR as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&length.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    mbr
}

/// BLKRRPART: the kernel reads the new table and adds the partition. The disk may be briefly
/// busy (a probe of the old content): retried for a second.
fn reread_partitions(file: &fs::File) -> std::io::Result<()> {
    const BLKRRPART: libc::c_ulong = 0x125f;
    let started = Instant::now();
    loop {
        // SAFETY: BLKRRPART takes no argument.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART as _, 0) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) || started.elapsed() > Duration::from_secs(1) {
            return Err(err);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The device number of the new partition, once sysfs lists it.
fn wait_for_partition(disk: &Disk, part: &str) -> Result<(u32, u32), String> {
    let path = Path::new(SYS_BLOCK).join(&disk.name).join(part).join("dev");
    let started = Instant::now();
    loop {
        if let Some(dev) = fs::read_to_string(&path)
            .ok()
            .and_then(|t| crate::parse_dev(&t))
        {
            return Ok(dev);
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "/dev/{part} did not appear after the partition table was written"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn linuxkit_flags_are_understood() {
        let o = parse(&args("-type ext4 -label STATE -force /dev/vdb")).unwrap();
        assert_eq!(
            o,
            Options {
                fstype: "ext4".into(),
                label: Some("STATE".into()),
                force: true,
                verbose: false,
                device: Some("/dev/vdb".into()),
            }
        );
        assert_eq!(
            parse(&args("--label=X")).unwrap().label.as_deref(),
            Some("X")
        );
        assert_eq!(parse(&[]).unwrap().fstype, "ext4");
    }

    #[test]
    fn what_cannot_be_done_is_refused_with_the_reason() {
        for (line, expected) in [
            ("-type xfs", "ext4, ext3 or ext2"),
            ("-partition gpt", "dos"),
            ("-label", "needs a value"),
            ("-label 12345678901234567", "16 bytes"),
            ("-bogus", "unknown flag"),
            ("/dev/a /dev/b", "one DEVICE"),
        ] {
            let err = parse(&args(line)).unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn the_mbr_has_one_linux_partition_from_one_mib_to_the_end() {
        let m = mbr(131072);
        assert_eq!(&m[510..], &[0x55, 0xaa]);
        assert_eq!(m[446 + 4], 0x83);
        assert_eq!(u32::from_le_bytes(m[454..458].try_into().unwrap()), 2048);
        assert_eq!(
            u32::from_le_bytes(m[458..462].try_into().unwrap()),
            131072 - 2048
        );
        assert_eq!(crate::recognise(&m, None), Content::PartitionTable);
        let huge = mbr(1 << 40);
        assert_eq!(
            u32::from_le_bytes(huge[458..462].try_into().unwrap()),
            u32::MAX
        );
    }
}
