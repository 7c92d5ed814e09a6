//! `slipway run qemu FILE` boots a file by what it is, with the firmware its contents call for:
//! - the same BIOS boot sector as a raw disk, inside each container Slipway writes (QEMU's qcow2,
//!   vpc, vhdx and vmdk drivers), and as the El Torito image of an ISO named like a disk
//!   (`-cdrom`), under SeaBIOS. The boot sector prints a marker on the serial port and resets the
//!   machine, which `-no-reboot` turns into qemu's exit: well under a second of TCG each;
//! - a GPT disk whose ESP holds a tiny EFI application as `EFI/BOOT/BOOTX64.EFI`, raw and inside
//!   qcow2, VHDX and VMDK, and an ISO whose only El Torito entry is EFI, under OVMF, picked without
//!   `--uefi`. The application prints a marker and powers off through the runtime services.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::Command as Cli;
use slipway::format::vdisk::{self, DiskFormat};

const MARKER: &str = "SLIPWAY-BIOS-OK";

/// 16-bit code at 0x7C00: print the marker on COM1, then load an empty IDT and raise an
/// interrupt, a triple fault that resets the machine.
fn boot_sector() -> Vec<u8> {
    let mut code = vec![
        0xfc, // cld
        0x31, 0xc0, // xor ax, ax
        0x8e, 0xd8, // mov ds, ax
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xbe, 0x19, 0x7c, // mov si, 0x7c19 (the message)
        0xac, // lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz +3
        0xee, // out dx, al
        0xeb, 0xf8, // jmp lodsb
        0x0f, 0x01, 0x1e, 0x2b, 0x7c, // lidt [0x7c2b] (limit 0)
        0xcc, // int3
    ];
    assert_eq!(code.len(), 0x19);
    code.extend_from_slice(MARKER.as_bytes());
    code.extend_from_slice(b"\r\n\0");
    assert_eq!(code.len(), 0x2b);
    code.extend_from_slice(&[0; 6]); // the empty IDT descriptor
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xaa]);
    code
}

/// A PE32+ EFI application (x86-64) that writes `SLIPWAY-UEFI-OK` to COM1 and calls
/// `ResetSystem(EfiResetShutdown)`. Position-independent code, so it needs no relocations.
fn efi_application() -> Vec<u8> {
    #[rustfmt::skip]
    let mut code: Vec<u8> = vec![
        0x48, 0x89, 0xd3,                         // mov rbx, rdx (the system table)
        0x48, 0x8d, 0x35, 0x29, 0, 0, 0,          // lea rsi, [rip + 0x29] (the message)
        0x66, 0xba, 0xf8, 0x03,                   // mov dx, 0x3f8
        0xac,                                     // lodsb
        0x84, 0xc0,                               // test al, al
        0x74, 0x03,                               // jz +3
        0xee,                                     // out dx, al
        0xeb, 0xf8,                               // jmp lodsb
        0x48, 0x8b, 0x43, 0x58,                   // mov rax, [rbx + 0x58] (RuntimeServices)
        0x48, 0x8b, 0x40, 0x68,                   // mov rax, [rax + 0x68] (ResetSystem)
        0xb9, 0x02, 0, 0, 0,                      // mov ecx, 2 (EfiResetShutdown)
        0x31, 0xd2,                               // xor edx, edx
        0x45, 0x31, 0xc0,                         // xor r8d, r8d
        0x45, 0x31, 0xc9,                         // xor r9d, r9d
        0x48, 0x83, 0xec, 0x28,                   // sub rsp, 40 (shadow space, aligned)
        0xff, 0xd0,                               // call rax
        0xeb, 0xfe,                               // jmp $
    ];
    assert_eq!(code.len(), 0x33);
    code.extend_from_slice(b"SLIPWAY-UEFI-OK\r\n\0");
    code.resize(0x200, 0);

    let mut pe = vec![0u8; 0x200];
    pe[..2].copy_from_slice(b"MZ");
    pe[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
    let mut h: Vec<u8> = b"PE\0\0".to_vec();
    // COFF header: x86-64, one section, a PE32+ optional header, an executable image.
    for v in [0x8664u16, 1] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&[0; 12]);
    for v in [240u16, 0x0022] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    // Optional header.
    h.extend_from_slice(&0x20bu16.to_le_bytes());
    h.extend_from_slice(&[0, 0]);
    for v in [0x200u32, 0, 0, 0x1000, 0x1000] {
        h.extend_from_slice(&v.to_le_bytes()); // code size, data sizes, entry point, code base
    }
    h.extend_from_slice(&0x40_0000u64.to_le_bytes()); // image base
    for v in [0x1000u32, 0x200] {
        h.extend_from_slice(&v.to_le_bytes()); // section and file alignment
    }
    h.extend_from_slice(&[0; 12]); // versions
    for v in [0u32, 0x2000, 0x200, 0] {
        h.extend_from_slice(&v.to_le_bytes()); // win32 version, image size, headers size, checksum
    }
    h.extend_from_slice(&10u16.to_le_bytes()); // subsystem: EFI application
    h.extend_from_slice(&0u16.to_le_bytes());
    for _ in 0..4 {
        h.extend_from_slice(&0x1_0000u64.to_le_bytes()); // stack and heap
    }
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&[0; 128]); // no data directories
    // The one section.
    h.extend_from_slice(b".text\0\0\0");
    for v in [0x200u32, 0x1000, 0x200, 0x200, 0, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&0x6000_0020u32.to_le_bytes()); // code, execute, read
    pe[0x40..0x40 + h.len()].copy_from_slice(&h);
    pe.extend_from_slice(&code);
    pe
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// A FAT image of `mib` MiB holding the EFI application as `EFI/BOOT/BOOTX64.EFI`.
fn esp(dir: &Path, mib: u64) -> PathBuf {
    let esp = dir.join(format!("esp{mib}.img"));
    std::fs::File::create(&esp)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    run(Command::new("mkfs.vfat").args(["-n", "ESP"]).arg(&esp));
    let app = dir.join("BOOTX64.EFI");
    std::fs::write(&app, efi_application()).unwrap();
    run(Command::new("mmd")
        .arg("-i")
        .arg(&esp)
        .args(["::/EFI", "::/EFI/BOOT"]));
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&esp)
        .arg(&app)
        .arg("::/EFI/BOOT/BOOTX64.EFI"));
    esp
}

/// A 64 MiB GPT disk (no BIOS boot code) with that ESP at 1 MiB.
fn uefi_disk(dir: &Path) -> PathBuf {
    let disk = dir.join("uefi.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (Debian: fdisk)");
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"label: gpt\nstart=2048, size=40960, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n",
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let fat = std::fs::read(esp(dir, 20)).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::File::options().write(true).open(&disk).unwrap(),
        &fat,
        1 << 20,
    )
    .unwrap();
    disk
}

/// Boots each image with `slipway run qemu`, two at a time (the machine has two cores for
/// everyone), and checks each prints `marker`.
fn boot_all(dir: &Path, images: &[PathBuf], marker: &str) {
    for pair in images.chunks(2) {
        let results: Vec<(PathBuf, bool, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = pair
                .iter()
                .map(|image| {
                    let state = dir.join(format!(
                        "{}-state",
                        image.file_name().unwrap().to_string_lossy()
                    ));
                    s.spawn(move || {
                        let (ok, out) = boot(image, &state);
                        (image.clone(), ok, out)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (image, ok, out) in results {
            assert!(
                ok && out.contains(marker),
                "{} did not boot: {out}",
                image.display()
            );
        }
    }
}

#[test]
fn a_uefi_disk_boots_with_ovmf_from_every_container_and_an_efi_iso_from_cd() {
    let dir = tempfile::tempdir().unwrap();
    let raw = uefi_disk(dir.path());
    let mut images = vec![raw.clone()];
    for (format, name) in [
        (DiskFormat::Qcow2, "uefi-efi.qcow2"),
        (DiskFormat::Vhdx, "uefi.vhdx"),
        (DiskFormat::Vmdk, "uefi.vmdk"),
    ] {
        images.push(
            vdisk::convert(format, &raw, &dir.path().join(name))
                .unwrap()
                .persist()
                .unwrap(),
        );
    }
    let root = dir.path().join("iso-root");
    std::fs::create_dir(&root).unwrap();
    std::fs::copy(esp(dir.path(), 2), root.join("efi.img")).unwrap();
    let iso = dir.path().join("efi-cd.img");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&iso)
        .args(["-e", "efi.img", "-no-emul-boot"])
        .arg(&root));
    images.push(iso);
    boot_all(dir.path(), &images, "SLIPWAY-UEFI-OK");
}

fn boot(image: &Path, state: &Path) -> (bool, String) {
    let out = Cli::cargo_bin("slipway")
        .unwrap()
        .args([
            "run",
            "qemu",
            "--mem",
            "128",
            "--networking",
            "none",
            "--timeout",
            "60",
            "--state",
        ])
        .arg(state)
        .arg(image)
        .timeout(std::time::Duration::from_secs(90))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_bios_disk_boots_from_every_container_and_an_iso_from_cd() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("bios.raw");
    std::fs::write(&raw, boot_sector()).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&raw)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let mut images: Vec<PathBuf> = vec![raw.clone()];
    for (format, name) in [
        (DiskFormat::Qcow2, "bios.qcow2"),
        (DiskFormat::Vhd, "bios.vhd"),
        (DiskFormat::DynamicVhd, "bios-dynamic.vhd"),
        (DiskFormat::Vhdx, "bios.vhdx"),
        (DiskFormat::Vmdk, "bios.vmdk"),
    ] {
        images.push(
            vdisk::convert(format, &raw, &dir.path().join(name))
                .unwrap()
                .persist()
                .unwrap(),
        );
    }
    // The same code as a no-emulation El Torito image, in an ISO named like a disk.
    let root = dir.path().join("iso-root");
    std::fs::create_dir(&root).unwrap();
    let mut image = boot_sector();
    image.resize(2048, 0);
    std::fs::write(root.join("boot.bin"), image).unwrap();
    let iso = dir.path().join("cd.img");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&iso)
        .args(["-b", "boot.bin", "-no-emul-boot", "-boot-load-size", "4"])
        .arg(&root));
    images.push(iso);

    boot_all(dir.path(), &images, MARKER);
}
