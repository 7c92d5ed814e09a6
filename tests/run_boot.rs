//! `slipway run qemu FILE` boots a file by what it is: the same BIOS boot sector as a raw disk,
//! inside each container Slipway writes (QEMU's qcow2, vpc, vhdx and vmdk drivers), and as the
//! El Torito image of an ISO given a disk's name (`-cdrom`). The boot sector prints a marker on
//! the serial port and resets the machine, which `-no-reboot` turns into qemu's exit: a boot
//! takes well under a second of TCG.

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
    let xorriso = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&iso)
        .args(["-b", "boot.bin", "-no-emul-boot", "-boot-load-size", "4"])
        .arg(&root)
        .output()
        .expect("xorriso");
    assert!(xorriso.status.success(), "{xorriso:?}");
    images.push(iso);

    // Two at a time: the machine has two cores for everyone.
    for pair in images.chunks(2) {
        let results: Vec<(PathBuf, bool, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = pair
                .iter()
                .map(|image| {
                    let state = dir.path().join(format!(
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
                ok && out.contains(MARKER),
                "{} did not boot: {out}",
                image.display()
            );
        }
    }
}
