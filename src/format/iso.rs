//! The ISO formats, written by `hadris-iso` (ISO 9660 with Rock Ridge and Joliet, El Torito,
//! hybrid partition tables). Its 3.0 line reads no clock: the volume is dated with the build's
//! time and its GPT GUIDs come from a seed of the contents, so the same image gives the same
//! bytes.
//!
//! | `-f` | file | boots |
//! |---|---|---|
//! | `iso-bios` | `NAME.iso` | ISOLINUX from El Torito (BIOS from CD), isohybrid MBR (BIOS from disk) |
//! | `iso-efi` | `NAME-efi.iso` | El Torito EFI entry: a FAT image with the UKI as `EFI/BOOT/BOOTX64.EFI` |
//! | `iso-efi-initrd` | `NAME-efi-initrd.iso` | as `iso-efi`, plus `/kernel`, `/initrd.img`, `/cmdline` as files |
//! | `iso` | `NAME-hybrid.iso` | both El Torito entries, and a GPT (hybrid MBR) whose EFI system partition is the same FAT image: BIOS and UEFI, from CD and from disk |
//!
//! Every one carries the kernel and the initrd (the root in RAM), like `kernel+initrd`.

use hadris_fs::{Content, DateTime, Node, Tree};
use hadris_iso::{
    AppendedPartition, BootEntry, BootInfo, ElTorito, Hybrid, IsoId, IsoLevel, IsoOptions,
};
use hadris_storage::{BlockSize, MemDevice};

use super::FormatError;
use super::bootloader::BootMedia;
use super::disk::SECTOR;
use super::esp::{self, FatFile, FatOptions};
use super::raw_efi::BOOTX64;

/// Which ISO to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsoKind {
    Bios,
    Efi,
    EfiInitrd,
    Hybrid,
}

const ISOLINUX_DIR: &str = "isolinux";
const BOOT_DIR: &str = "boot";
const EFI_IMAGE: &str = "boot/efi.img";
/// El Torito counts a boot image in 512-byte sectors, in 16 bits.
const MAX_LOAD_SECTORS: u64 = 0xffff;

fn bad(e: impl std::fmt::Display) -> FormatError {
    FormatError::Iso(e.to_string())
}

fn add(tree: &mut Tree, path: &str, data: &[u8]) -> Result<(), FormatError> {
    tree.insert(path, Node::file(Content::bytes(data.to_vec())))
        .map_err(|e| bad(format!("{path}: {e}")))
}

/// The FAT image of the EFI entry: the UKI as `EFI/BOOT/BOOTX64.EFI`, no larger than it needs.
fn efi_image(media: &BootMedia) -> Result<Vec<u8>, FormatError> {
    let uki = media.uki()?;
    let files = [FatFile {
        path: BOOTX64,
        data: &uki,
    }];
    let options = FatOptions {
        label: "ESP",
        hidden_sectors: 0,
    };
    let (fat, _) = esp::build_fitting(&files, None, options, &media.seed)?;
    Ok(fat.to_vec())
}

/// The EFI entry of `image`: its whole size, or `1` when it is larger than El Torito can count,
/// which UEFI firmware (edk2) reads as "to the end of the medium"; the FAT inside knows its size.
fn efi_entry(entry: BootEntry, image_len: usize) -> BootEntry {
    let sectors = (image_len as u64).div_ceil(SECTOR);
    entry.with_load_size(if sectors > MAX_LOAD_SECTORS {
        1
    } else {
        sectors as u16
    })
}

/// Writes the ISO of `kind`.
pub fn write(media: &BootMedia, kind: IsoKind) -> Result<Vec<u8>, FormatError> {
    let mut tree = Tree::new();
    let bios = matches!(kind, IsoKind::Bios | IsoKind::Hybrid);
    let mut el_torito = ElTorito::new();
    if bios {
        let cfg = media.syslinux_cfg(&format!("/{BOOT_DIR}"));
        add(
            &mut tree,
            &format!("{ISOLINUX_DIR}/isolinux.bin"),
            &media.bootloader.isolinux_bin,
        )?;
        add(
            &mut tree,
            &format!("{ISOLINUX_DIR}/ldlinux.c32"),
            &media.bootloader.isolinux_ldlinux_c32,
        )?;
        add(&mut tree, &format!("{ISOLINUX_DIR}/isolinux.cfg"), &cfg)?;
        add(&mut tree, &format!("{BOOT_DIR}/kernel"), media.kernel)?;
        add(&mut tree, &format!("{BOOT_DIR}/initrd.img"), media.initrd)?;
        el_torito = el_torito
            .with_entry(
                BootEntry::bios(&format!("{ISOLINUX_DIR}/isolinux.bin"))
                    .with_load_size(4)
                    .with_boot_info(BootInfo::Table),
            )
            .with_catalog_path(&format!("{ISOLINUX_DIR}/boot.cat"));
    }
    if kind == IsoKind::EfiInitrd {
        add(&mut tree, "kernel", media.kernel)?;
        add(&mut tree, "initrd.img", media.initrd)?;
        add(&mut tree, "cmdline", media.cmdline.as_bytes())?;
    }
    let mut hybrid = None;
    match kind {
        IsoKind::Bios => {
            hybrid = Some(Hybrid::mbr().with_bootstrap(&media.bootloader.isohdpfx_bin));
        }
        IsoKind::Efi | IsoKind::EfiInitrd => {
            let image = efi_image(media)?;
            el_torito = el_torito
                .with_entry(efi_entry(BootEntry::uefi(EFI_IMAGE), image.len()))
                .with_catalog_path(&format!("{BOOT_DIR}/boot.cat"));
            add(&mut tree, EFI_IMAGE, &image)?;
        }
        IsoKind::Hybrid => {
            // One FAT image serves as the El Torito EFI image and as the GPT's EFI system
            // partition, stored once.
            let image = efi_image(media)?;
            el_torito = el_torito.with_entry(efi_entry(BootEntry::uefi_appended(0), image.len()));
            hybrid = Some(
                Hybrid::gpt_hybrid_mbr()
                    .with_bootstrap(&media.bootloader.isohdpfx_bin)
                    .with_appended(AppendedPartition::esp(Content::bytes(image))),
            );
        }
    }
    let time = DateTime::from_unix_seconds(media.mtime as i64).map_err(bad)?;
    let mut options = IsoOptions::new()
        .with_id(IsoId::Volume, "SLIPWAY")
        .with_id(IsoId::Application, "SLIPWAY")
        .with_level(IsoLevel::L3)
        .with_joliet()
        .with_rock_ridge()
        .with_time(time)
        .with_seed(media.seed.u64("iso guids"))
        .with_el_torito(el_torito);
    if let Some(h) = hybrid {
        options = options.with_hybrid(h);
    }
    let size = hadris_iso::plan(&tree, &options).map_err(bad)?.size();
    let size = usize::try_from(size).map_err(bad)?;
    let mut device = MemDevice::new(
        vec![0u8; size],
        BlockSize::new(2048).expect("2048 is a block size"),
    );
    hadris_iso::sync::write(&mut device, &tree, &options).map_err(bad)?;
    Ok(device.into_inner())
}

/// The volume label of a metadata CD: cloud-init's NoCloud label, which LinuxKit's `metadata`
/// (and Slipway's) look for.
pub const METADATA_LABEL: &str = "cidata";

/// A metadata CD as `linuxkit metadata create` writes it: an ISO 9660 volume labelled `cidata`
/// holding one file, `config`, with `data`. Dated at the epoch, so the same data gives the same
/// bytes.
pub fn metadata_cd(data: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut tree = Tree::new();
    add(&mut tree, "config", data)?;
    let options = IsoOptions::new()
        .with_id(IsoId::Volume, METADATA_LABEL)
        .with_id(IsoId::Application, "SLIPWAY")
        .with_level(IsoLevel::L3)
        .with_joliet()
        .with_rock_ridge()
        .with_time(DateTime::from_unix_seconds(0).map_err(bad)?)
        .with_seed(0);
    let size = hadris_iso::plan(&tree, &options).map_err(bad)?.size();
    let size = usize::try_from(size).map_err(bad)?;
    let mut device = MemDevice::new(
        vec![0u8; size],
        BlockSize::new(2048).expect("2048 is a block size"),
    );
    hadris_iso::sync::write(&mut device, &tree, &options).map_err(bad)?;
    Ok(device.into_inner())
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn a_metadata_cd_is_labelled_cidata_and_holds_config() {
        let iso = metadata_cd(b"{\"hello\":1}").unwrap();
        let pvd = &iso[16 * 2048..17 * 2048];
        assert_eq!(&pvd[1..6], b"CD001");
        assert_eq!(String::from_utf8_lossy(&pvd[40..72]).trim(), "cidata");
        assert!(iso.windows(11).any(|w| w == b"{\"hello\":1}"));
        assert_eq!(
            iso,
            metadata_cd(b"{\"hello\":1}").unwrap(),
            "not reproducible"
        );
    }
}
