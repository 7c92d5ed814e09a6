//! `slipway run hyperv`: the PowerShell commands that create and start a Hyper-V VM for a VHDX,
//! VHD or ISO build.
//!
//! Hyper-V runs only on Windows, so Slipway does not start it: `slipway run hyperv` prints the
//! script. The VM's generation follows the image:
//! - a VHDX boots a generation 2 VM (UEFI; generation 2 attaches no VHD), so its disk must boot
//!   UEFI;
//! - a VHD (fixed or dynamic) boots a generation 1 VM (BIOS, IDE), so its disk must boot BIOS;
//! - an ISO boots generation 2 when it has an EFI boot entry, else generation 1.
//!
//! Hyper-V attaches no other disk container and cannot boot a bare kernel, so qcow2, VMDK, raw
//! disks and kernel+initrd builds are refused with what to build instead. Secure Boot is turned
//! off because Slipway's images are not signed.

use std::path::{Path, PathBuf};

use super::{BootSource, Boots, Container, RunError};

#[derive(Clone, Debug)]
pub struct HypervConfig {
    pub name: String,
    pub cpus: u32,
    pub mem_mib: u64,
    /// The virtual switch to connect to, or none for no network.
    pub switch: Option<String>,
}

/// The build outputs Hyper-V can use, in the order `run hyperv NAME` looks for them.
pub const SUFFIXES: &[&str] = &[
    ".vhdx",
    ".vhd",
    "-dynamic.vhd",
    "-efi.iso",
    "-hybrid.iso",
    ".iso",
    "-efi-initrd.iso",
];

/// What to give Hyper-V for `target`: the file itself, or the first of `NAME` + [`SUFFIXES`].
pub fn find_source(target: &Path) -> Result<BootSource, RunError> {
    if target.is_file() {
        return super::probe_file(target);
    }
    let (dir, name) = super::split_prefix(target);
    let candidates: Vec<PathBuf> = SUFFIXES
        .iter()
        .map(|s| dir.join(format!("{name}{s}")))
        .collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return super::probe_file(found);
    }
    let kernel = dir.join(format!("{name}-kernel"));
    if kernel.is_file() {
        return Err(RunError::Unsupported {
            backend: "hyperv",
            why: format!(
                "{} is a kernel+initrd build and Hyper-V cannot boot a bare kernel: \
                 build `-f vhdx` (generation 2) or `-f vhd` (generation 1)",
                target.display()
            ),
        });
    }
    Err(RunError::NotFound {
        target: target.to_path_buf(),
        tried: candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The VM generation for `source`, or why Hyper-V cannot boot it.
pub fn generation(source: &BootSource) -> Result<u8, RunError> {
    let refuse = |why: String| {
        Err(RunError::Unsupported {
            backend: "hyperv",
            why,
        })
    };
    match source {
        BootSource::KernelInitrd { .. } => refuse(
            "it cannot boot a bare kernel (kernel+initrd): build `-f vhdx` (generation 2) or \
             `-f vhd` (generation 1)"
                .into(),
        ),
        BootSource::Iso { boots, .. } => Ok(if boots.uefi { 2 } else { 1 }),
        BootSource::Disk {
            path,
            container: Container::Vhdx,
            boots,
        } => {
            if boots_only_bios(*boots) {
                return refuse(format!(
                    "{} boots only with BIOS, and a VHDX needs a generation 2 VM, which boots \
                     UEFI only: build `-f vhd` for generation 1",
                    path.display()
                ));
            }
            Ok(2)
        }
        BootSource::Disk {
            path,
            container: Container::Vpc { .. },
            boots,
        } => {
            if boots.uefi && !boots.bios {
                return refuse(format!(
                    "{} boots only with UEFI, and a VHD needs a generation 1 VM, which boots \
                     BIOS only: build `-f vhdx` for generation 2",
                    path.display()
                ));
            }
            Ok(1)
        }
        BootSource::Disk { path, .. } => refuse(format!(
            "{} is not a VHD or VHDX, the only disks Hyper-V attaches: build `-f vhdx` \
             (generation 2) or `-f vhd` (generation 1)",
            path.display()
        )),
    }
}

fn boots_only_bios(boots: Boots) -> bool {
    boots.bios && !boots.uefi
}

/// The PowerShell script (one command per line) for `source`.
pub fn script(config: &HypervConfig, source: &BootSource) -> Result<String, RunError> {
    let generation = generation(source)?;
    let name = ps_quote(&config.name);
    let mut lines = vec![format!(
        "New-VM -Name {name} -Generation {generation} -MemoryStartupBytes {}MB -NoVHD",
        config.mem_mib
    )];
    lines.push(format!(
        "Set-VMProcessor -VMName {name} -Count {}",
        config.cpus
    ));
    if generation == 2 {
        lines.push(format!(
            "Set-VMFirmware -VMName {name} -EnableSecureBoot Off"
        ));
    }
    match (source, generation) {
        (BootSource::Iso { path, .. }, 2) => {
            lines.push(format!(
                "Add-VMDvdDrive -VMName {name} -Path {}",
                ps_path(path)
            ));
            lines.push(format!(
                "Set-VMFirmware -VMName {name} -FirstBootDevice (Get-VMDvdDrive -VMName {name})"
            ));
        }
        (BootSource::Iso { path, .. }, _) => {
            // A generation 1 VM comes with a DVD drive at IDE 1:0.
            lines.push(format!(
                "Set-VMDvdDrive -VMName {name} -ControllerNumber 1 -ControllerLocation 0 -Path {}",
                ps_path(path)
            ));
            lines.push(format!(
                "Set-VMBios -VMName {name} -StartupOrder @('CD', 'IDE', 'LegacyNetworkAdapter', 'Floppy')"
            ));
        }
        (BootSource::Disk { path, .. }, 2) => {
            lines.push(format!(
                "Add-VMHardDiskDrive -VMName {name} -Path {}",
                ps_path(path)
            ));
            lines.push(format!(
                "Set-VMFirmware -VMName {name} -FirstBootDevice (Get-VMHardDiskDrive -VMName {name})"
            ));
        }
        (BootSource::Disk { path, .. }, _) => {
            // Generation 1 boots from IDE only.
            lines.push(format!(
                "Add-VMHardDiskDrive -VMName {name} -ControllerType IDE -ControllerNumber 0 \
                 -ControllerLocation 0 -Path {}",
                ps_path(path)
            ));
            lines.push(format!(
                "Set-VMBios -VMName {name} -StartupOrder @('IDE', 'CD', 'LegacyNetworkAdapter', 'Floppy')"
            ));
        }
        // generation() has refused it already.
        (BootSource::KernelInitrd { .. }, _) => {
            return Err(RunError::Unsupported {
                backend: "hyperv",
                why: "it cannot boot a bare kernel".into(),
            });
        }
    }
    match &config.switch {
        Some(switch) => lines.push(format!(
            "Connect-VMNetworkAdapter -VMName {name} -SwitchName {}",
            ps_quote(switch)
        )),
        None => lines.push(format!("Remove-VMNetworkAdapter -VMName {name}")),
    }
    // The serial console goes to a named pipe (Hyper-V has no stdio console).
    let pipe = ps_quote(&format!(r"\\.\pipe\{}-com1", config.name));
    lines.push(format!(
        "Set-VMComPort -VMName {name} -Number 1 -Path {pipe}"
    ));
    lines.push(format!("Start-VM -Name {name}"));
    Ok(lines.join("\n") + "\n")
}

fn ps_path(path: &Path) -> String {
    ps_quote(&path.to_string_lossy())
}

/// A PowerShell single-quoted string: nothing inside is expanded; a quote is written twice.
fn ps_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> HypervConfig {
        HypervConfig {
            name: name.into(),
            cpus: 2,
            mem_mib: 2048,
            switch: Some("Default Switch".into()),
        }
    }

    const BOTH: Boots = Boots {
        bios: true,
        uefi: true,
    };

    #[test]
    fn a_vhdx_becomes_a_generation_2_vm_booting_from_its_disk() {
        let source = BootSource::Disk {
            path: r"C:\img\lin'kit.vhdx".into(),
            container: Container::Vhdx,
            boots: BOTH,
        };
        assert_eq!(
            script(&config("lin'kit"), &source).unwrap(),
            "New-VM -Name 'lin''kit' -Generation 2 -MemoryStartupBytes 2048MB -NoVHD\n\
             Set-VMProcessor -VMName 'lin''kit' -Count 2\n\
             Set-VMFirmware -VMName 'lin''kit' -EnableSecureBoot Off\n\
             Add-VMHardDiskDrive -VMName 'lin''kit' -Path 'C:\\img\\lin''kit.vhdx'\n\
             Set-VMFirmware -VMName 'lin''kit' -FirstBootDevice (Get-VMHardDiskDrive -VMName 'lin''kit')\n\
             Connect-VMNetworkAdapter -VMName 'lin''kit' -SwitchName 'Default Switch'\n\
             Set-VMComPort -VMName 'lin''kit' -Number 1 -Path '\\\\.\\pipe\\lin''kit-com1'\n\
             Start-VM -Name 'lin''kit'\n"
        );
    }

    #[test]
    fn a_vhd_becomes_a_generation_1_vm_booting_from_ide() {
        let source = BootSource::Disk {
            path: "m.vhd".into(),
            container: Container::Vpc { fixed: true },
            boots: BOTH,
        };
        let config = HypervConfig {
            switch: None,
            ..config("m")
        };
        assert_eq!(
            script(&config, &source).unwrap(),
            "New-VM -Name 'm' -Generation 1 -MemoryStartupBytes 2048MB -NoVHD\n\
             Set-VMProcessor -VMName 'm' -Count 2\n\
             Add-VMHardDiskDrive -VMName 'm' -ControllerType IDE -ControllerNumber 0 -ControllerLocation 0 -Path 'm.vhd'\n\
             Set-VMBios -VMName 'm' -StartupOrder @('IDE', 'CD', 'LegacyNetworkAdapter', 'Floppy')\n\
             Remove-VMNetworkAdapter -VMName 'm'\n\
             Set-VMComPort -VMName 'm' -Number 1 -Path '\\\\.\\pipe\\m-com1'\n\
             Start-VM -Name 'm'\n"
        );
    }

    #[test]
    fn an_iso_picks_its_generation_from_its_boot_entries() {
        let efi = BootSource::Iso {
            path: "x-efi.iso".into(),
            boots: Boots {
                bios: false,
                uefi: true,
            },
        };
        let s = script(&config("x"), &efi).unwrap();
        assert!(
            s.contains("-Generation 2")
                && s.contains("Add-VMDvdDrive -VMName 'x' -Path 'x-efi.iso'")
        );
        let bios = BootSource::Iso {
            path: "x.iso".into(),
            boots: Boots {
                bios: true,
                uefi: false,
            },
        };
        let s = script(&config("x"), &bios).unwrap();
        assert!(
            s.contains("-Generation 1")
                && s.contains("Set-VMDvdDrive -VMName 'x' -ControllerNumber 1 -ControllerLocation 0 -Path 'x.iso'")
                && !s.contains("Set-VMFirmware"),
            "{s}"
        );
    }

    #[test]
    fn what_hyper_v_cannot_boot_is_refused_with_what_to_build() {
        let kernel = BootSource::KernelInitrd {
            kernel: "k".into(),
            initrd: "i".into(),
            cmdline: String::new(),
            root: None,
        };
        let err = script(&config("m"), &kernel).unwrap_err().to_string();
        assert!(
            err.contains("bare kernel") && err.contains("-f vhdx"),
            "{err}"
        );
        let qcow2 = BootSource::Disk {
            path: "m.qcow2".into(),
            container: Container::Qcow2,
            boots: BOTH,
        };
        let err = script(&config("m"), &qcow2).unwrap_err().to_string();
        assert!(err.contains("m.qcow2 is not a VHD or VHDX"), "{err}");
        let bios_vhdx = BootSource::Disk {
            path: "b.vhdx".into(),
            container: Container::Vhdx,
            boots: Boots {
                bios: true,
                uefi: false,
            },
        };
        let err = script(&config("b"), &bios_vhdx).unwrap_err().to_string();
        assert!(
            err.contains("generation 2") && err.contains("-f vhd"),
            "{err}"
        );
        let efi_vhd = BootSource::Disk {
            path: "e.vhd".into(),
            container: Container::Vpc { fixed: false },
            boots: Boots {
                bios: false,
                uefi: true,
            },
        };
        let err = script(&config("e"), &efi_vhd).unwrap_err().to_string();
        assert!(
            err.contains("generation 1") && err.contains("-f vhdx"),
            "{err}"
        );
    }

    #[test]
    fn run_hyperv_name_prefers_the_vhdx_over_other_outputs() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "m-kernel",
            "m-initrd.img",
            "m-cmdline",
            "m.iso",
            "m.vhd",
            "m.vhdx",
        ] {
            std::fs::write(dir.path().join(f), [0u8; 4096]).unwrap();
        }
        let picked = |dir: &Path| match find_source(&dir.join("m")).unwrap() {
            BootSource::Disk { path, .. } | BootSource::Iso { path, .. } => path,
            other => panic!("{other:?}"),
        };
        assert_eq!(picked(dir.path()), dir.path().join("m.vhdx"));
        std::fs::remove_file(dir.path().join("m.vhdx")).unwrap();
        assert_eq!(picked(dir.path()), dir.path().join("m.vhd"));
        std::fs::remove_file(dir.path().join("m.vhd")).unwrap();
        assert_eq!(picked(dir.path()), dir.path().join("m.iso"));
        std::fs::remove_file(dir.path().join("m.iso")).unwrap();
        let err = find_source(&dir.path().join("m")).unwrap_err().to_string();
        assert!(err.contains("kernel+initrd build"), "{err}");
    }
}
