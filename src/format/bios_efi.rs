//! The disk that boots on both firmwares (`aws`, `NAME.raw`; also what vhd, vmdk and gcp
//! convert): a GPT whose protective MBR carries SYSLINUX's `gptmbr.bin`, and one EFI system
//! partition, marked legacy-BIOS-bootable, holding both boot paths:
//!
//! - BIOS (SeaBIOS, Hyper-V generation 1, most clouds): `gptmbr.bin` boots the partition's boot
//!   sector, SYSLINUX, which loads `/kernel` and `/initrd.img` (`/syslinux.cfg`).
//! - UEFI (OVMF, Hyper-V generation 2): firmware starts `EFI/BOOT/BOOTX64.EFI`, the unified
//!   kernel image.
//!
//! The kernel and initrd are stored twice (as files and inside the UKI): SYSLINUX cannot boot a
//! PE image, and a UEFI-only loader cannot read SYSLINUX's configuration.

use super::FormatError;
use super::bootloader::BootMedia;
use super::disk::{self, Disk, PARTITION_START};
use super::esp::{self, FatFile, FatOptions};
use super::raw_bios::syslinux_files;
use super::raw_efi::{BOOTX64, GPT_OVERHEAD};
use super::syslinux;

/// The disk, `size` bytes (`--size`) or what fits; `format` names it in errors.
pub fn disk(media: &BootMedia, format: &str, size: Option<u64>) -> Result<Disk, FormatError> {
    let uki = media.uki()?;
    let sys = media.bootloader.syslinux.ldlinux_sys_file();
    let cfg = media.syslinux_cfg("");
    let mut files = syslinux_files(media, &sys, &cfg);
    files.push(FatFile {
        path: BOOTX64,
        data: &uki,
    });
    let total = disk::disk_size(format, esp::min_size(&files), GPT_OVERHEAD, size)?;
    let options = FatOptions {
        label: "ESP",
        hidden_sectors: (PARTITION_START / disk::SECTOR) as u32,
    };
    let (mut fat, _) = esp::build(&files, total - GPT_OVERHEAD, options, &media.seed)?;
    syslinux::install(&mut fat, &media.bootloader.syslinux)?;
    disk::gpt_disk(
        total,
        &fat,
        "ESP",
        true,
        Some(&media.bootloader.gptmbr_bin),
        &media.seed,
    )
}
