//! `raw-efi` (`NAME-efi.img`): a GPT disk for UEFI firmware, with one EFI system partition that
//! holds the unified kernel image as `EFI/BOOT/BOOTX64.EFI`, the path firmware starts when it
//! has no boot entry of its own. No bootloader and no configuration: the UKI carries the kernel,
//! the initrd and the command line.

use super::FormatError;
use super::bootloader::BootMedia;
use super::disk::{self, Disk, MIB, PARTITION_START};
use super::esp::{self, FatFile, FatOptions};

pub const FORMAT: &str = "raw-efi";
/// Where firmware looks for a removable medium's (or a new disk's) loader on x86_64.
pub const BOOTX64: &str = "EFI/BOOT/BOOTX64.EFI";
/// The partition starts at 1 MiB and ends 1 MiB before the end, which leaves room for the
/// backup GPT.
pub const GPT_OVERHEAD: u64 = PARTITION_START + MIB;

/// The disk, `size` bytes (`--size`) or what fits.
pub fn disk(media: &BootMedia, size: Option<u64>) -> Result<Disk, FormatError> {
    let uki = media.uki()?;
    let files = [FatFile {
        path: BOOTX64,
        data: &uki,
    }];
    let total = disk::disk_size(FORMAT, esp::min_size(&files), GPT_OVERHEAD, size)?;
    let options = FatOptions {
        label: "ESP",
        hidden_sectors: (PARTITION_START / disk::SECTOR) as u32,
    };
    let (fat, _) = esp::build(&files, total - GPT_OVERHEAD, options, &media.seed)?;
    disk::gpt_disk(total, &fat, "ESP", false, None, &media.seed)
}
