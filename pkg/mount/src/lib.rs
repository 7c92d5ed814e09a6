//! `mountie [-label LABEL | -device DEVICE] [-type FSTYPE] PATH`: mounts the persistent state disk
//! at PATH, as LinuxKit's `mount` package does, run as an onboot container.
//!
//! The filesystem is the one labelled LABEL, or the one on DEVICE (its first partition when it
//! has partitions), or else the first filesystem found on the disks (by kernel name, partitions
//! in order). PATH is created if missing and made a shared mount, so that the mount, made in the
//! container on a bind of the host's `/var` (`rshared`), is the host's too and every container
//! started later that binds it sees the disk.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags, MountPropagationFlags};
use slipway_disk::{Content, SYS_BLOCK};

#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    label: Option<String>,
    device: Option<String>,
    fstype: Option<String>,
    path: String,
}

const USAGE: &str = "usage: mountie [-label LABEL | -device DEVICE] [-type FSTYPE] PATH";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut path = None;
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
                if path.replace(arg.to_string()).is_some() {
                    return Err(format!("one PATH only\n{USAGE}"));
                }
            }
            "label" | "l" => o.label = Some(value()?),
            "device" | "d" => o.device = Some(value()?),
            "type" | "t" => o.fstype = Some(value()?),
            "help" | "h" => return Err(USAGE.to_string()),
            _ => return Err(format!("unknown flag {arg}\n{USAGE}")),
        }
        i += 1;
    }
    if o.label.is_some() && o.device.is_some() {
        return Err(format!("-label and -device exclude each other\n{USAGE}"));
    }
    o.path = path.ok_or_else(|| format!("PATH is missing\n{USAGE}"))?;
    if !o.path.starts_with('/') {
        return Err(format!("{}: PATH must be absolute", o.path));
    }
    Ok(o)
}

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mountie: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mountie: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A device that holds a filesystem.
struct Found {
    name: String,
    node: std::path::PathBuf,
    fstype: String,
    label: String,
}

/// Every partition (or partitionless disk) with a filesystem, in disk and partition order.
fn filesystems() -> Vec<Found> {
    let mut found = Vec::new();
    for disk in slipway_disk::disks(Path::new(SYS_BLOCK)) {
        let devices: Vec<(String, u32, u32)> = if disk.partitions.is_empty() {
            vec![(disk.name.clone(), disk.major, disk.minor)]
        } else {
            disk.partitions
                .iter()
                .map(|p| (p.name.clone(), p.major, p.minor))
                .collect()
        };
        for (name, major, minor) in devices {
            let Ok(node) = slipway_disk::node(&name, major, minor) else {
                continue;
            };
            if let Ok(Content::Filesystem { fstype, label }) = slipway_disk::probe(&node) {
                found.push(Found {
                    name,
                    node,
                    fstype,
                    label,
                });
            }
        }
    }
    found
}

/// The filesystem the options name, looked for again for a few seconds: a disk formatted by the
/// onboot container just before may still be settling.
fn choose(o: &Options) -> Result<Found, String> {
    let started = Instant::now();
    loop {
        let all = filesystems();
        let chosen = all.into_iter().find(|f| match (&o.label, &o.device) {
            (Some(label), _) => &f.label == label,
            (None, Some(device)) => {
                let name = slipway_disk::device_name(device);
                f.name == name || f.name == slipway_disk::partition_name(name, 1)
            }
            (None, None) => true,
        });
        if let Some(found) = chosen {
            return Ok(found);
        }
        if started.elapsed() > Duration::from_secs(5) {
            return Err(match (&o.label, &o.device) {
                (Some(label), _) => format!("no filesystem labelled {label}"),
                (None, Some(device)) => format!("no filesystem on {device}"),
                (None, None) => "no disk holds a filesystem".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run(o: &Options) -> Result<(), String> {
    let found = choose(o)?;
    let fstype = o.fstype.clone().unwrap_or(found.fstype.clone());
    let path = Path::new(&o.path);
    std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", o.path))?;
    rustix::mount::mount(&found.node, path, fstype.as_str(), MountFlags::empty(), c"")
        .map_err(|e| format!("mounting /dev/{} ({fstype}) on {}: {e}", found.name, o.path))?;
    rustix::mount::mount_change(path, MountPropagationFlags::SHARED)
        .map_err(|e| format!("making {} a shared mount: {e}", o.path))?;
    let label = if found.label.is_empty() {
        String::new()
    } else {
        format!(", label {}", found.label)
    };
    println!(
        "mountie: /dev/{} ({fstype}{label}) mounted on {}",
        found.name, o.path
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn linuxkit_flags_are_understood() {
        let o = parse(&args("-label STATE /var/lib/state")).unwrap();
        assert_eq!(o.label.as_deref(), Some("STATE"));
        assert_eq!(o.path, "/var/lib/state");
        let o = parse(&args("--device=/dev/vdb /var/x")).unwrap();
        assert_eq!(o.device.as_deref(), Some("/dev/vdb"));
    }

    #[test]
    fn bad_command_lines_are_refused_with_the_reason() {
        for (line, expected) in [
            ("", "PATH is missing"),
            ("relative", "absolute"),
            ("-label A -device B /x", "exclude"),
            ("/a /b", "one PATH"),
            ("-nope /x", "unknown flag"),
        ] {
            let err = parse(&args(line)).unwrap_err();
            assert!(err.contains(expected), "{line:?}: {err}");
        }
    }
}
