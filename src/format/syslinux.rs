//! SYSLINUX on a FAT volume, installed in-process: what `syslinux --install` does, without its
//! helpers.
//!
//! Why by hand: Debian ships `ldlinux.sys` and the FAT boot sector `ldlinux.bss` only inside its
//! installer binary (`/usr/bin/syslinux`), and that installer writes the files through the host's
//! mtools, which stamp them with the current time. Installing is small once the files are out:
//!
//! 1. `ldlinux.sys`, followed by two 512-byte ADV sectors (SYSLINUX's boot-once variables, empty
//!    here), is written as the first file of a fresh volume, with `ldlinux.c32` beside it.
//! 2. Its sectors are looked up in the FAT (directory entry, cluster chain).
//! 3. The patch area of `ldlinux.sys` (found by its magic) gets the sector count, the sector
//!    extents of the rest of the file, the ADV sectors and a checksum; the boot sector image gets
//!    the first sector's address.
//! 4. The volume's boot sector keeps its BPB and takes the jump, the OEM name and the code of
//!    SYSLINUX's boot sector.
//!
//! The three pieces are taken from the installer binary of the pinned bootloader image
//! ([`Embedded::from_installer`]): its `.rodata` holds their lengths (each after the same build
//! timestamp), its `.data` the bytes, each checked by its own signature.

use object::{Object, ObjectSection};

use super::FormatError;
use super::disk::{Disk, SECTOR};
use super::esp::FatLayout;

/// "A random number to identify ourselves with", at the start of the patch area.
const LDLINUX_MAGIC: u32 = 0x3eb2_02fe;
const ADV_MAGIC_HEAD: u32 = 0x5a2d_2fa5;
const ADV_MAGIC_SUM: u32 = 0xa304_1767;
const ADV_MAGIC_TAIL: u32 = 0xdd28_bf64;
/// The FAT boot sector's BPB lies between the jump and OEM name (0..11) and SYSLINUX's code,
/// which starts past the FAT32 extended BPB (90) and runs to the signature (510).
const BS_HEAD: usize = 11;
const BS_CODE: std::ops::Range<usize> = 90..510;
/// `ldlinux.sys` is loaded at 0x8000, after its first sector at 0x7e00.
const LOAD_ADDRESS: u64 = 0x8000;

/// The three files of a SYSLINUX installation, as the installer embeds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Embedded {
    /// The FAT boot sector (`ldlinux.bss`), 512 bytes.
    pub boot_sector: Vec<u8>,
    /// `ldlinux.sys`, unpatched.
    pub ldlinux_sys: Vec<u8>,
    /// `ldlinux.c32`, the matching core module.
    pub ldlinux_c32: Vec<u8>,
}

fn bad(message: impl Into<String>) -> FormatError {
    FormatError::Syslinux(message.into())
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn put(b: &mut [u8], at: usize, v: &[u8]) -> Result<(), FormatError> {
    b.get_mut(at..at + v.len())
        .ok_or_else(|| bad(format!("a patch at byte {at} is outside ldlinux.sys")))?
        .copy_from_slice(v);
    Ok(())
}

impl Embedded {
    /// Takes the files out of the `syslinux` installer (an ELF executable).
    pub fn from_installer(elf: &[u8]) -> Result<Embedded, FormatError> {
        let file = object::File::parse(elf).map_err(|e| bad(format!("the installer: {e}")))?;
        let section = |name: &str| -> Result<&[u8], FormatError> {
            file.section_by_name(name)
                .and_then(|s| s.data().ok())
                .ok_or_else(|| bad(format!("the installer has no {name} section")))
        };
        let (rodata, data) = (section(".rodata")?, section(".data")?);
        // (build time, 512), (build time, ldlinux.sys length), (build time, ldlinux.c32 length)
        let lengths = (0..(rodata.len() + 1).saturating_sub(24))
            .step_by(4)
            .find_map(|at| {
                let w: Vec<u32> = (0..6)
                    .map(|i| u32_at(rodata, at + 4 * i))
                    .collect::<Option<_>>()?;
                let same_time = w[0] == w[2] && w[2] == w[4] && w[0] != 0;
                let plausible = |n: u32| (SECTOR as u32..4 << 20).contains(&n);
                (same_time && w[1] == 512 && plausible(w[3]) && plausible(w[5]))
                    .then_some((w[3] as usize, w[5] as usize))
            })
            .ok_or_else(|| bad("the installer's .rodata has no lengths of its embedded files"))?;
        let boot_at = (0..data.len().saturating_sub(512))
            .find(|&at| {
                data[at] == 0xeb
                    && &data[at + 3..at + 11] == b"SYSLINUX"
                    && data[at + 510..at + 512] == [0x55, 0xaa]
            })
            .ok_or_else(|| bad("the installer's .data has no SYSLINUX boot sector"))?;
        let sys_at = boot_at + 512;
        let sys = data
            .get(sys_at..sys_at + lengths.0)
            .filter(|s| s.starts_with(b"\r\nSYSLINUX ") && patch_area(s).is_some())
            .ok_or_else(|| bad("ldlinux.sys does not follow the boot sector in the installer"))?;
        let c32_at = (sys_at + lengths.0..data.len().saturating_sub(4))
            .find(|&at| data[at..].starts_with(b"\x7fELF"))
            .ok_or_else(|| bad("the installer holds no ldlinux.c32 after ldlinux.sys"))?;
        let c32 = data
            .get(c32_at..c32_at + lengths.1)
            .ok_or_else(|| bad("ldlinux.c32 runs past the installer's .data"))?;
        Ok(Embedded {
            boot_sector: data[boot_at..boot_at + 512].to_vec(),
            ldlinux_sys: sys.to_vec(),
            ldlinux_c32: c32.to_vec(),
        })
    }

    /// `ldlinux.sys` as the volume must hold it before [`install`]: the image padded to whole
    /// sectors, then the two ADV sectors.
    pub fn ldlinux_sys_file(&self) -> Vec<u8> {
        let mut f = self.ldlinux_sys.clone();
        f.resize(self.ldlinux_sys.len().next_multiple_of(SECTOR as usize), 0);
        let adv = empty_adv();
        f.extend_from_slice(&adv);
        f.extend_from_slice(&adv);
        f
    }
}

/// The offset of the patch area in `ldlinux.sys` (dword-aligned, starts with the magic).
fn patch_area(sys: &[u8]) -> Option<usize> {
    (0..sys.len().min(4096))
        .step_by(4)
        .find(|&at| u32_at(sys, at) == Some(LDLINUX_MAGIC))
}

/// An ADV sector with no variables: head and tail magic, and a checksum that makes the dwords
/// between them sum to `ADV_MAGIC_SUM`.
fn empty_adv() -> [u8; 512] {
    let mut adv = [0u8; 512];
    adv[..4].copy_from_slice(&ADV_MAGIC_HEAD.to_le_bytes());
    // The payload is all zeros, so the checksum is the magic itself.
    adv[4..8].copy_from_slice(&ADV_MAGIC_SUM.to_le_bytes());
    adv[508..].copy_from_slice(&ADV_MAGIC_TAIL.to_le_bytes());
    adv
}

/// Installs SYSLINUX on `vol`, which already holds [`Embedded::ldlinux_sys_file`] as
/// `ldlinux.sys` in its root directory.
pub fn install(vol: &mut Disk, files: &Embedded) -> Result<(), FormatError> {
    let fat = FatLayout::read(vol).map_err(bad)?;
    let first = fat
        .find_root_file(vol, b"LDLINUX SYS")
        .ok_or_else(|| bad("the volume has no /ldlinux.sys"))?;
    let image_sectors = files.ldlinux_sys.len().div_ceil(SECTOR as usize);
    let total = image_sectors + 2;
    let sectors = fat.chain_sectors(vol, first, total);
    if sectors.len() < total {
        return Err(bad(format!(
            "/ldlinux.sys has {} sectors, {total} expected",
            sectors.len()
        )));
    }
    let mut sys = files.ldlinux_sys.clone();
    let mut boot = files.boot_sector.clone();
    let pa = patch_area(&sys).ok_or_else(|| bad("ldlinux.sys has no patch area"))?;
    let field = |at: usize| {
        u16_at(&sys, at)
            .map(usize::from)
            .ok_or_else(|| bad("ldlinux.sys is cut short"))
    };
    // struct patch_area: magic, instance, data_sectors@8, adv_sectors@10, dwords@12,
    // checksum@16, maxtransfer@20, epaoffset@22.
    let epa = field(pa + 22)?;
    // struct ext_patch_area: advptroffset@0, diroffset, dirlen, subvoloffset, subvollen,
    // secptroffset@10, secptrcnt@12, sect1ptr0@14, sect1ptr1@16, raidpatch.
    let (adv_ptrs, extents_at, extents_max) = (field(epa)?, field(epa + 10)?, field(epa + 12)?);
    let (sect1_lo, sect1_hi) = (field(epa + 14)?, field(epa + 16)?);

    // The boot sector loads the first sector itself.
    put(&mut boot, sect1_lo, &(sectors[0] as u32).to_le_bytes())?;
    put(
        &mut boot,
        sect1_hi,
        &((sectors[0] >> 32) as u32).to_le_bytes(),
    )?;
    let dwords = sys.len() / 4;
    put(&mut sys, pa + 8, &(image_sectors as u16).to_le_bytes())?;
    put(&mut sys, pa + 10, &2u16.to_le_bytes())?;
    put(&mut sys, pa + 12, &(dwords as u32).to_le_bytes())?;
    let extents = extents_of(&sectors[1..image_sectors]);
    if extents.len() > extents_max {
        return Err(bad(format!(
            "ldlinux.sys is in {} pieces; SYSLINUX can follow {extents_max}",
            extents.len()
        )));
    }
    for i in 0..extents_max {
        let (lba, len) = extents.get(i).copied().unwrap_or((0, 0));
        put(&mut sys, extents_at + 10 * i, &lba.to_le_bytes())?;
        put(&mut sys, extents_at + 10 * i + 8, &len.to_le_bytes())?;
    }
    put(&mut sys, adv_ptrs, &sectors[image_sectors].to_le_bytes())?;
    put(
        &mut sys,
        adv_ptrs + 8,
        &sectors[image_sectors + 1].to_le_bytes(),
    )?;
    // The dwords of the image, checksum included, must sum to the magic.
    put(&mut sys, pa + 16, &0u32.to_le_bytes())?;
    let sum = (0..dwords).fold(0u32, |s, i| {
        s.wrapping_add(u32_at(&sys, 4 * i).unwrap_or(0))
    });
    put(
        &mut sys,
        pa + 16,
        &LDLINUX_MAGIC.wrapping_sub(sum).to_le_bytes(),
    )?;

    let io = |e| FormatError::Io {
        what: "SYSLINUX into the volume".into(),
        source: e,
    };
    for (i, chunk) in sys.chunks(SECTOR as usize).enumerate() {
        vol.write_at(sectors[i] * SECTOR, chunk).map_err(io)?;
    }
    let mut bs = [0u8; 512];
    vol.read_at(0, &mut bs);
    bs[..BS_HEAD].copy_from_slice(&boot[..BS_HEAD]);
    bs[BS_CODE].copy_from_slice(&boot[BS_CODE]);
    vol.write_at(0, &bs).map_err(io)?;
    if fat.bits == 32 {
        // Keep the FAT32 backup boot sector equal to the boot sector.
        let backup = u16_at(&bs, 50).unwrap_or(0) as u64;
        if backup != 0 {
            vol.write_at(backup * SECTOR, &bs).map_err(io)?;
        }
    }
    Ok(())
}

/// Runs of consecutive sectors, as (first sector, count), each under 64 KiB (one BIOS read), and
/// whose last sector lies in the same 64 KiB segment of the load address as the sector before it
/// (the rule SYSLINUX's own installer applies).
fn extents_of(sectors: &[u64]) -> Vec<(u64, u16)> {
    let mut out: Vec<(u64, u16)> = Vec::new();
    let mut start_addr = LOAD_ADDRESS;
    for (i, &s) in sectors.iter().enumerate() {
        let addr = LOAD_ADDRESS + i as u64 * SECTOR;
        if let Some((lba, len)) = out.last_mut() {
            let grown = (*len as u64 + 1) * SECTOR;
            if s == *lba + *len as u64
                && grown < 0x10000
                && addr >> 16 == (start_addr + grown - 1) >> 16
            {
                *len += 1;
                continue;
            }
        }
        start_addr = addr;
        out.push((s, 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_split_at_gaps_and_64k_boundaries() {
        let sectors: Vec<u64> = (100..300).chain(500..510).collect();
        let ex = extents_of(&sectors);
        // An extent holds at most 127 sectors (under 64 KiB).
        assert_eq!(ex[0], (100, 127));
        assert_eq!(ex[1], (227, 73));
        assert_eq!(
            ex.iter().map(|e| e.1 as usize).sum::<usize>(),
            sectors.len()
        );
        assert_eq!(ex.last(), Some(&(500, 10)));
    }

    #[test]
    fn the_empty_adv_checks() {
        let adv = empty_adv();
        let sum = (1..127).fold(0u32, |s, i| s.wrapping_add(u32_at(&adv, 4 * i).unwrap()));
        assert_eq!(sum, ADV_MAGIC_SUM);
    }

    #[test]
    fn an_installer_without_embedded_files_is_refused() {
        let err = Embedded::from_installer(b"not an ELF").unwrap_err();
        assert!(err.to_string().contains("installer"), "{err}");
    }
}
