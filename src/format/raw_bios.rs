//! `raw-bios` (`NAME-bios.img`): an MBR disk for BIOS firmware. SYSLINUX's `mbr.bin` boots the
//! one, active, FAT partition; SYSLINUX, installed in it ([`super::syslinux`]), loads `/kernel`
//! and `/initrd.img` with the image's command line (`/syslinux.cfg`). The root is the initrd, in
//! RAM, as with `kernel+initrd`.

use super::FormatError;
use super::bootloader::BootMedia;
use super::disk::{self, Disk, PARTITION_START};
use super::esp::{self, FatFile, FatOptions};
use super::syslinux;

pub const FORMAT: &str = "raw-bios";
/// The volume label of Slipway's boot partitions.
pub const LABEL: &str = "SLIPWAY";

/// The files SYSLINUX boots from, at the root of a FAT volume: `ldlinux.sys` first, so that it
/// lies at the start of the data area in one piece.
pub fn syslinux_files<'a>(media: &'a BootMedia, sys: &'a [u8], cfg: &'a [u8]) -> Vec<FatFile<'a>> {
    vec![
        FatFile {
            path: "ldlinux.sys",
            data: sys,
        },
        FatFile {
            path: "ldlinux.c32",
            data: &media.bootloader.syslinux.ldlinux_c32,
        },
        FatFile {
            path: "syslinux.cfg",
            data: cfg,
        },
        FatFile {
            path: "kernel",
            data: media.kernel,
        },
        FatFile {
            path: "initrd.img",
            data: media.initrd,
        },
    ]
}

/// The disk, `size` bytes (`--size`) or what fits.
pub fn disk(media: &BootMedia, size: Option<u64>) -> Result<Disk, FormatError> {
    let sys = media.bootloader.syslinux.ldlinux_sys_file();
    let cfg = media.syslinux_cfg("");
    let files = syslinux_files(media, &sys, &cfg);
    let total = disk::disk_size(FORMAT, esp::min_size(&files), PARTITION_START, size)?;
    let options = FatOptions {
        label: LABEL,
        hidden_sectors: (PARTITION_START / disk::SECTOR) as u32,
    };
    let (mut fat, kind) = esp::build(&files, total - PARTITION_START, options, &media.seed)?;
    syslinux::install(&mut fat, &media.bootloader.syslinux)?;
    disk::mbr_disk(
        total,
        &fat,
        kind.mbr_type(),
        &media.bootloader.mbr_bin,
        &media.seed,
    )
}
