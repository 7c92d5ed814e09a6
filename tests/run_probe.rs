//! `slipway run` recognises images by their contents: disks made by the host's own tools
//! (sfdisk, mkfs.vfat, mtools) inside every container Slipway writes, and ISOs made by xorriso,
//! and picks QEMU's driver and firmware, Hyper-V's generation, or refuses, from what it finds.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::Command as Cli;
use slipway::format::vdisk::{self, DiskFormat};
use slipway::run::{BootSource, Boots, Container, probe_file, qemu};

fn sh(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A FAT file system image of `mib` MiB with `EFI/BOOT/BOOTX64.EFI`, by mkfs.vfat and mtools.
fn esp_image(dir: &Path, mib: u64) -> PathBuf {
    let esp = dir.join(format!("esp{mib}.img"));
    std::fs::File::create(&esp)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    sh(Command::new("mkfs.vfat").args(["-n", "ESP"]).arg(&esp));
    let loader = dir.join("BOOTX64.EFI");
    std::fs::write(&loader, b"MZ not really a loader").unwrap();
    sh(Command::new("mmd")
        .arg("-i")
        .arg(&esp)
        .args(["::/EFI", "::/EFI/BOOT"]));
    sh(Command::new("mcopy")
        .arg("-i")
        .arg(&esp)
        .arg(&loader)
        .arg("::/EFI/BOOT/BOOTX64.EFI"));
    esp
}

/// A 64 MiB GPT disk (sfdisk) whose ESP at 1 MiB holds `EFI/BOOT/BOOTX64.EFI`; with
/// `boot_code`, the MBR also gets some (as a BIOS+EFI disk has).
fn gpt_disk(dir: &Path, name: &str, boot_code: bool) -> PathBuf {
    let disk = dir.join(name);
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().expect("sfdisk (Debian: fdisk)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"label: gpt\nstart=2048, size=40960, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n",
        )
        .unwrap();
    assert!(child.wait().unwrap().success());
    let esp = std::fs::read(esp_image(dir, 20)).unwrap();
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    file.write_all_at(&esp, 1 << 20).unwrap();
    if boot_code {
        file.write_all_at(&[0xfa, 0x31, 0xc0, 0x8e, 0xd8], 0)
            .unwrap();
    }
    disk
}

#[test]
fn a_uefi_disk_is_recognised_inside_every_container() {
    let dir = tempfile::tempdir().unwrap();
    let raw = gpt_disk(dir.path(), "efi.raw", false);
    let hybrid = gpt_disk(dir.path(), "both.raw", true);
    let uefi_only = Boots {
        bios: false,
        uefi: true,
    };
    let both = Boots {
        bios: true,
        uefi: true,
    };
    for (format, container) in [
        (None, Container::Raw),
        (Some(DiskFormat::Qcow2), Container::Qcow2),
        (Some(DiskFormat::Vhd), Container::Vpc { fixed: true }),
        (
            Some(DiskFormat::DynamicVhd),
            Container::Vpc { fixed: false },
        ),
        (Some(DiskFormat::Vhdx), Container::Vhdx),
        (Some(DiskFormat::Vmdk), Container::Vmdk),
    ] {
        for (source, boots) in [(&raw, uefi_only), (&hybrid, both)] {
            let image = match format {
                None => source.clone(),
                Some(f) => {
                    let out = dir.path().join(format!(
                        "{}.{:?}",
                        source.file_stem().unwrap().to_string_lossy(),
                        f
                    ));
                    vdisk::convert(f, source, &out).unwrap().persist().unwrap()
                }
            };
            let found = probe_file(&image).unwrap();
            assert_eq!(
                found,
                BootSource::Disk {
                    path: image.clone(),
                    container,
                    boots
                },
                "{}",
                image.display()
            );
            let config = qemu::QemuConfig::default();
            assert_eq!(
                qemu::uses_uefi(&config, &found),
                boots == uefi_only,
                "{}",
                image.display()
            );
        }
    }
}

/// An ISO by xorriso with the given El Torito entries.
fn iso(dir: &Path, name: &str, bios: bool, efi: bool) -> PathBuf {
    let root = dir.join(format!("{name}-root"));
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/bios.img"), vec![0xf4u8; 2048]).unwrap();
    std::fs::copy(esp_image(dir, 2), root.join("boot/efi.img")).unwrap();
    let out = dir.join(name);
    let mut cmd = Command::new("xorriso");
    cmd.args(["-as", "mkisofs", "-quiet", "-o"]).arg(&out);
    if bios {
        cmd.args([
            "-b",
            "boot/bios.img",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
        ]);
    }
    if bios && efi {
        cmd.arg("-eltorito-alt-boot");
    }
    if efi {
        cmd.args(["-e", "boot/efi.img", "-no-emul-boot"]);
    }
    cmd.arg(&root);
    sh(&mut cmd);
    out
}

#[test]
fn an_isos_boot_entries_pick_the_firmware() {
    let dir = tempfile::tempdir().unwrap();
    let config = qemu::QemuConfig::default();
    for (name, bios, efi, want_uefi) in [
        ("efi.iso", false, true, true),
        ("bios.iso", true, false, false),
        ("both.iso", true, true, false),
        ("none.iso", false, false, false),
    ] {
        let path = iso(dir.path(), name, bios, efi);
        // Named as a disk: the contents decide.
        let disguised = dir.path().join(format!("{name}.img"));
        std::fs::rename(&path, &disguised).unwrap();
        let found = probe_file(&disguised).unwrap();
        assert_eq!(
            found,
            BootSource::Iso {
                path: disguised.clone(),
                boots: Boots { bios, uefi: efi }
            },
            "{name}"
        );
        assert_eq!(qemu::uses_uefi(&config, &found), want_uefi, "{name}");
        let forced = qemu::QemuConfig {
            uefi: true,
            ..qemu::QemuConfig::default()
        };
        assert!(qemu::uses_uefi(&forced, &found));
    }
}

fn slipway() -> Cli {
    Cli::cargo_bin("slipway").unwrap()
}

#[test]
fn run_hyperv_writes_a_generation_2_script_for_the_vhdx_and_refuses_a_bare_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let raw = gpt_disk(dir.path(), "m.raw", true);
    vdisk::convert(DiskFormat::Vhdx, &raw, &dir.path().join("m.vhdx"))
        .unwrap()
        .persist()
        .unwrap();
    vdisk::convert(DiskFormat::Vhd, &raw, &dir.path().join("m.vhd"))
        .unwrap()
        .persist()
        .unwrap();
    let out = slipway()
        .args(["run", "hyperv", "--switch", "External"])
        .arg(dir.path().join("m"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout).unwrap();
    let vhdx = dir.path().join("m.vhdx").display().to_string();
    assert_eq!(
        script.lines().collect::<Vec<_>>(),
        [
            "New-VM -Name 'm' -Generation 2 -MemoryStartupBytes 1024MB -NoVHD",
            "Set-VMProcessor -VMName 'm' -Count 1",
            "Set-VMFirmware -VMName 'm' -EnableSecureBoot Off",
            &format!("Add-VMHardDiskDrive -VMName 'm' -Path '{vhdx}'"),
            "Set-VMFirmware -VMName 'm' -FirstBootDevice (Get-VMHardDiskDrive -VMName 'm')",
            "Connect-VMNetworkAdapter -VMName 'm' -SwitchName 'External'",
            r"Set-VMComPort -VMName 'm' -Number 1 -Path '\\.\pipe\m-com1'",
            "Start-VM -Name 'm'",
        ]
    );
    // Given the VHD itself: generation 1, IDE.
    let out = slipway()
        .args(["run", "hyperv"])
        .arg(dir.path().join("m.vhd"))
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && script.contains("-Generation 1")
            && script.contains("-ControllerType IDE"),
        "{script}"
    );

    let kernel_only = dir.path().join("k");
    for f in ["k-kernel", "k-initrd.img", "k-cmdline"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let out = slipway()
        .args(["run", "hyperv"])
        .arg(&kernel_only)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot boot a bare kernel"),
        "{err}"
    );
}

#[test]
fn run_hyperkit_boots_kernel_initrd_and_refuses_a_disk() {
    let dir = tempfile::tempdir().unwrap();
    for (f, data) in [
        ("k-kernel", "x"),
        ("k-initrd.img", "x"),
        ("k-cmdline", "console=ttyS0\n"),
    ] {
        std::fs::write(dir.path().join(f), data).unwrap();
    }
    let out = slipway()
        .args(["run", "hyperkit", "--networking", "none"])
        .arg(dir.path().join("k"))
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && line.contains(&format!(
                "-f kexec,{0}/k-kernel,{0}/k-initrd.img,console=ttyS0",
                dir.path().display()
            )),
        "{line}"
    );

    let raw = gpt_disk(dir.path(), "d.raw", false);
    let qcow2 = vdisk::convert(DiskFormat::Qcow2, &raw, &dir.path().join("d.qcow2"))
        .unwrap()
        .persist()
        .unwrap();
    let out = slipway()
        .args(["run", "hyperkit"])
        .arg(&qcow2)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("HyperKit boots kernel+initrd only"),
        "{err}"
    );
}
