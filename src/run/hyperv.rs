//! `slipway run hyperv`: the PowerShell commands that create and start a Hyper-V VM for an ISO
//! or disk image build.
//!
//! Hyper-V runs only on Windows, so Slipway does not start it: `slipway run hyperv` prints the
//! script. Generation 2 VMs boot UEFI media only (`iso-efi`, `raw-efi`, a VHD(X) with an ESP);
//! Hyper-V cannot boot a bare kernel, so kernel+initrd builds are refused. Secure Boot is turned
//! off because Slipway's images are not signed.

use super::{BootSource, RunError};

#[derive(Clone, Debug)]
pub struct HypervConfig {
    pub name: String,
    pub cpus: u32,
    pub mem_mib: u64,
    /// The virtual switch to connect to, or none for no network.
    pub switch: Option<String>,
}

/// The PowerShell script (one command per line) for `source`.
pub fn script(config: &HypervConfig, source: &BootSource) -> Result<String, RunError> {
    let name = ps_quote(&config.name);
    let mut lines = vec![format!(
        "New-VM -Name {name} -Generation 2 -MemoryStartupBytes {}MB -NoVHD",
        config.mem_mib
    )];
    lines.push(format!(
        "Set-VMProcessor -VMName {name} -Count {}",
        config.cpus
    ));
    lines.push(format!(
        "Set-VMFirmware -VMName {name} -EnableSecureBoot Off"
    ));
    match source {
        BootSource::Iso(iso) => {
            lines.push(format!(
                "Add-VMDvdDrive -VMName {name} -Path {}",
                ps_quote(&iso.to_string_lossy())
            ));
            lines.push(format!(
                "Set-VMFirmware -VMName {name} -FirstBootDevice (Get-VMDvdDrive -VMName {name})"
            ));
        }
        BootSource::Disk(disk) => {
            lines.push(format!(
                "Add-VMHardDiskDrive -VMName {name} -Path {}",
                ps_quote(&disk.to_string_lossy())
            ));
            lines.push(format!(
                "Set-VMFirmware -VMName {name} -FirstBootDevice (Get-VMHardDiskDrive -VMName {name})"
            ));
        }
        BootSource::KernelInitrd { .. } => {
            return Err(RunError::Unsupported {
                backend: "hyperv",
                why: "it cannot boot a bare kernel; build an iso-efi or raw-efi image".into(),
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

/// A PowerShell single-quoted string: nothing inside is expanded; a quote is written twice.
fn ps_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_iso_becomes_a_generation_2_vm_booting_from_dvd() {
        let config = HypervConfig {
            name: "lin'kit".into(),
            cpus: 2,
            mem_mib: 2048,
            switch: Some("Default Switch".into()),
        };
        assert_eq!(
            script(&config, &BootSource::Iso(r"C:\img\x-efi.iso".into())).unwrap(),
            "New-VM -Name 'lin''kit' -Generation 2 -MemoryStartupBytes 2048MB -NoVHD\n\
             Set-VMProcessor -VMName 'lin''kit' -Count 2\n\
             Set-VMFirmware -VMName 'lin''kit' -EnableSecureBoot Off\n\
             Add-VMDvdDrive -VMName 'lin''kit' -Path 'C:\\img\\x-efi.iso'\n\
             Set-VMFirmware -VMName 'lin''kit' -FirstBootDevice (Get-VMDvdDrive -VMName 'lin''kit')\n\
             Connect-VMNetworkAdapter -VMName 'lin''kit' -SwitchName 'Default Switch'\n\
             Set-VMComPort -VMName 'lin''kit' -Number 1 -Path '\\\\.\\pipe\\lin''kit-com1'\n\
             Start-VM -Name 'lin''kit'\n"
        );
    }

    #[test]
    fn a_disk_boots_from_the_hard_disk_and_kernel_initrd_is_refused() {
        let config = HypervConfig {
            name: "m".into(),
            cpus: 1,
            mem_mib: 1024,
            switch: None,
        };
        let s = script(&config, &BootSource::Disk("m.vhdx".into())).unwrap();
        assert!(
            s.contains("Add-VMHardDiskDrive -VMName 'm' -Path 'm.vhdx'")
                && s.contains("Remove-VMNetworkAdapter")
        );
        let kernel = BootSource::KernelInitrd {
            kernel: "k".into(),
            initrd: "i".into(),
            cmdline: String::new(),
        };
        assert!(
            script(&config, &kernel)
                .unwrap_err()
                .to_string()
                .contains("bare kernel")
        );
    }
}
