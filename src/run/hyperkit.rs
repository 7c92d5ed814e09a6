//! `slipway run hyperkit`: the HyperKit (macOS) command line for a kernel+initrd build.
//!
//! HyperKit runs only on macOS, so Slipway does not start it: it builds the command line, which
//! `slipway run hyperkit` prints for the user to run there. HyperKit boots a kernel directly
//! (`-f kexec,KERNEL,INITRD,CMDLINE`); it has no BIOS or UEFI, so ISOs and disk images cannot boot.
//! The root image of kernel+squashfs or kernel+iso is the first virtio-blk disk (`/dev/vda`, as
//! the command line's `root=` says).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::qemu::Networking;
use super::{BootSource, RunError};

#[derive(Clone, Debug)]
pub struct HyperkitConfig {
    pub hyperkit: PathBuf,
    pub cpus: u32,
    pub mem_mib: u64,
    pub state_dir: PathBuf,
    /// Existing disk images, attached as virtio-blk (raw only: HyperKit reads no qcow2 here).
    pub disks: Vec<PathBuf>,
    /// `user` becomes a virtio-net device on macOS's vmnet (HyperKit needs root for it).
    pub networking: Networking,
}

/// The hyperkit arguments for `source`.
pub fn command_line(
    config: &HyperkitConfig,
    source: &BootSource,
) -> Result<Vec<OsString>, RunError> {
    let (kernel, initrd, cmdline, root) = match source {
        BootSource::KernelInitrd {
            kernel,
            initrd,
            cmdline,
            root,
        } => (kernel, initrd, cmdline, root),
        BootSource::Iso { path, .. } | BootSource::Disk { path, .. } => {
            return Err(RunError::Unsupported {
                backend: "hyperkit",
                why: format!(
                    "{} is an ISO or disk image, and HyperKit boots kernel+initrd only (it has \
                     no firmware to boot an ISO or a disk): build `-f kernel+initrd`",
                    path.display()
                ),
            });
        }
    };
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    // -A: ACPI tables (power-off works), -u: RTC in UTC.
    push(&["-A", "-u"]);
    push(&[
        "-c",
        &config.cpus.to_string(),
        "-m",
        &format!("{}M", config.mem_mib),
    ]);
    push(&[
        "-s",
        "0:0,hostbridge",
        "-s",
        "31,lpc",
        "-l",
        "com1,stdio",
        "-s",
        "1:0,virtio-rnd",
    ]);
    if config.networking == Networking::User {
        push(&["-s", "2:0,virtio-net"]);
    }
    let root = root.as_ref().map(|r| &r.path);
    for (slot, disk) in (3..).zip(root.into_iter().chain(&config.disks)) {
        args.extend(["-s".into(), slot_arg(slot, "virtio-blk", disk)]);
    }
    args.extend([
        "-F".into(),
        config.state_dir.join("hyperkit.pid").into_os_string(),
    ]);
    // HyperKit splits this at the first three commas: the command line may contain more.
    let mut kexec = OsString::from("kexec,");
    kexec.push(kernel);
    kexec.push(",");
    kexec.push(initrd);
    kexec.push(",");
    kexec.push(cmdline);
    args.extend(["-f".into(), kexec]);
    Ok(args)
}

fn slot_arg(slot: u32, device: &str, path: &Path) -> OsString {
    let mut s = OsString::from(format!("{slot}:0,{device},"));
    s.push(path);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::shell_words;

    #[test]
    fn kernel_initrd_becomes_a_kexec_command_line() {
        let config = HyperkitConfig {
            hyperkit: "hyperkit".into(),
            cpus: 2,
            mem_mib: 512,
            state_dir: "/s".into(),
            disks: vec!["/d/data.img".into()],
            networking: Networking::User,
        };
        let source = BootSource::KernelInitrd {
            kernel: "/o/m-kernel".into(),
            initrd: "/o/m-initrd.img".into(),
            cmdline: "console=ttyS0 a=b,c".into(),
            root: None,
        };
        assert_eq!(
            shell_words(&config.hyperkit, &command_line(&config, &source).unwrap()),
            "hyperkit -A -u -c 2 -m 512M -s 0:0,hostbridge -s 31,lpc -l com1,stdio -s 1:0,virtio-rnd \
             -s 2:0,virtio-net -s 3:0,virtio-blk,/d/data.img -F /s/hyperkit.pid \
             -f 'kexec,/o/m-kernel,/o/m-initrd.img,console=ttyS0 a=b,c'"
        );
    }

    #[test]
    fn an_iso_is_refused() {
        let config = HyperkitConfig {
            hyperkit: "hyperkit".into(),
            cpus: 1,
            mem_mib: 1024,
            state_dir: "/s".into(),
            disks: vec![],
            networking: Networking::None,
        };
        let iso = BootSource::Iso {
            path: "x.iso".into(),
            boots: crate::run::Boots::default(),
        };
        let err = command_line(&config, &iso).unwrap_err();
        assert!(
            err.to_string().contains("x.iso is an ISO or disk image"),
            "{err}"
        );
        let disk = BootSource::Disk {
            path: "x.qcow2".into(),
            container: crate::run::Container::Qcow2,
            boots: crate::run::Boots::default(),
        };
        let err = command_line(&config, &disk).unwrap_err();
        assert!(err.to_string().contains("kernel+initrd only"), "{err}");
    }

    #[test]
    fn a_squashfs_root_is_the_first_virtio_disk() {
        let config = HyperkitConfig {
            hyperkit: "hyperkit".into(),
            cpus: 1,
            mem_mib: 1024,
            state_dir: "/s".into(),
            disks: vec!["/d/data.img".into()],
            networking: Networking::None,
        };
        let source = BootSource::KernelInitrd {
            kernel: "/o/m-kernel".into(),
            initrd: "/o/m-initrd.img".into(),
            cmdline: "console=ttyS0 root=/dev/vda rootfstype=squashfs".into(),
            root: Some(crate::run::RootImage {
                path: "/o/m-squashfs.img".into(),
                fstype: "squashfs",
            }),
        };
        let line = shell_words(&config.hyperkit, &command_line(&config, &source).unwrap());
        assert!(
            line.contains(
                "-s 3:0,virtio-blk,/o/m-squashfs.img -s 4:0,virtio-blk,/d/data.img -F /s/hyperkit.pid \
                 -f 'kexec,/o/m-kernel,/o/m-initrd.img,console=ttyS0 root=/dev/vda rootfstype=squashfs'"
            ),
            "{line}"
        );
    }
}
