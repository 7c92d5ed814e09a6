//! The bootloader files of the bootable formats, and what every such format writes.
//!
//! No byte of a boot format comes from the host: ISOLINUX, SYSLINUX, their MBRs and systemd's EFI
//! stub come from the `pkg/bootloader` image (Debian's `isolinux`, `syslinux-common`, `syslinux`
//! and `systemd-boot-efi`, pinned by the package's content tag), which `slipway build` resolves
//! like any `@pkg:` image and flattens into a [`Tree`]. [`Bootloader::from_tree`] picks the files
//! out of it; [`BootMedia`] adds the kernel, the initrd and the command line of the image being
//! built.

use super::FormatError;
use super::disk::Seed;
use super::syslinux::Embedded;
use crate::assemble::tree::{Kind, Tree};

pub const ISOLINUX_BIN: &str = "usr/lib/ISOLINUX/isolinux.bin";
pub const ISOHDPFX_BIN: &str = "usr/lib/ISOLINUX/isohdpfx.bin";
pub const LDLINUX_C32: &str = "usr/lib/syslinux/modules/bios/ldlinux.c32";
pub const MBR_BIN: &str = "usr/lib/syslinux/mbr/mbr.bin";
pub const GPTMBR_BIN: &str = "usr/lib/syslinux/mbr/gptmbr.bin";
pub const SYSLINUX_INSTALLER: &str = "usr/bin/syslinux";
pub const EFI_STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// The files of the bootloader image the formats use.
#[derive(Clone, Debug)]
pub struct Bootloader {
    /// ISOLINUX's El Torito boot image, and the core module it loads beside it.
    pub isolinux_bin: Vec<u8>,
    pub isolinux_ldlinux_c32: Vec<u8>,
    /// The isohybrid MBR (boots ISOLINUX from an ISO written to a disk).
    pub isohdpfx_bin: Vec<u8>,
    /// The MBR boot code of an MBR disk (boots the active partition).
    pub mbr_bin: Vec<u8>,
    /// The protective MBR boot code of a GPT disk (boots the partition marked legacy-bootable).
    pub gptmbr_bin: Vec<u8>,
    /// SYSLINUX for FAT volumes, out of the installer.
    pub syslinux: Embedded,
    /// systemd-boot's EFI stub, the base of the unified kernel image.
    pub efi_stub: Vec<u8>,
}

impl Bootloader {
    /// Picks the files out of the flattened bootloader image named `image`.
    pub fn from_tree(tree: &Tree, image: &str) -> Result<Bootloader, FormatError> {
        let file = |path: &str| -> Result<Vec<u8>, FormatError> {
            let mut entry = tree.get(path);
            // A layer may store a file as a hard link to another path.
            if let Some(Kind::Hardlink(target)) = entry.map(|e| &e.kind) {
                entry = tree.get(target.trim_start_matches('/'));
            }
            match entry.map(|e| &e.kind) {
                Some(Kind::File(data)) => Ok(data.as_ref().clone()),
                _ => Err(FormatError::Bootloader {
                    image: image.to_string(),
                    message: format!("it has no file /{path}"),
                }),
            }
        };
        let syslinux = Embedded::from_installer(&file(SYSLINUX_INSTALLER)?).map_err(|e| {
            FormatError::Bootloader {
                image: image.to_string(),
                message: format!("/{SYSLINUX_INSTALLER}: {e}"),
            }
        })?;
        Ok(Bootloader {
            isolinux_bin: file(ISOLINUX_BIN)?,
            isolinux_ldlinux_c32: file(LDLINUX_C32)?,
            isohdpfx_bin: file(ISOHDPFX_BIN)?,
            mbr_bin: file(MBR_BIN)?,
            gptmbr_bin: file(GPTMBR_BIN)?,
            syslinux,
            efi_stub: file(EFI_STUB)?,
        })
    }
}

/// Everything a bootable format writes: the kernel, the initrd (microcode first, made once per
/// build and shared by every format), the command line, the bootloader files, and what makes
/// the output reproducible (the build's time and a seed of the contents).
#[derive(Clone, Copy, Debug)]
pub struct BootMedia<'a> {
    pub name: &'a str,
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    pub cmdline: &'a str,
    /// The os-release the UKI carries.
    pub osrel: &'a [u8],
    pub bootloader: &'a Bootloader,
    /// Seconds since the epoch that date the ISO volumes (the tree's time).
    pub mtime: u64,
    pub seed: Seed,
}

impl BootMedia<'_> {
    /// SYSLINUX's and ISOLINUX's configuration: boot the one entry at once, console on the
    /// first serial port as well as the screen.
    pub fn syslinux_cfg(&self, dir: &str) -> Vec<u8> {
        format!(
            "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL {dir}/kernel\n  INITRD {dir}/initrd.img\n  APPEND {}\n",
            self.cmdline
        )
        .into_bytes()
    }

    /// The unified kernel image of this kernel, initrd and command line.
    pub fn uki(&self) -> Result<Vec<u8>, FormatError> {
        super::uki::build(
            &self.bootloader.efi_stub,
            super::uki::UkiParts {
                osrel: self.osrel,
                cmdline: self.cmdline,
                initrd: self.initrd,
                kernel: self.kernel,
            },
        )
    }
}
