//! VHD, fixed (`vhd`: Hyper-V generation 1, Azure) and dynamic (`dynamic-vhd`), after Microsoft's
//! "Virtual Hard Disk Image Format Specification" (big-endian fields).
//!
//! - Fixed: the raw disk, then the 512-byte footer. Zero runs become holes in the output file.
//! - Dynamic: a copy of the footer, the dynamic disk header, the block allocation table (BAT), then
//!   for each 2 MiB block holding data its sector bitmap (all sectors present) and its data, then
//!   the footer. Zero blocks have no BAT entry and read as zeros.
//!
//! The footer's creator application is `win ` (Hyper-V's): readers, QEMU among them, take the disk
//! size from the footer's current-size field only for creators they know to mean it, and derive
//! it from the CHS geometry otherwise, which rounds most sizes down. The geometry is still filled
//! in, by the specification's algorithm, for BIOSes that ask for it.
//!
//! Azure takes only fixed VHDs whose size is a whole number of MiB; [`super::check`] demands that
//! of both kinds (for a dynamic VHD it also means no partial last block).

use super::{RawDisk, SECTOR, Sink, TIMESTAMP, VdiskError, copy_range};

/// The largest VHD: 2040 GiB (the format's own limit is just under 2 TiB).
pub const MAX_SIZE: u64 = 2040 << 30;
const BLOCK: u64 = 2 << 20;
/// Seconds between the Unix epoch and the VHD epoch (2000-01-01T00:00:00Z).
const VHD_EPOCH: u64 = 946_684_800;
const FIXED: u32 = 2;
const DYNAMIC: u32 = 3;
/// The dynamic disk header follows the footer copy; the BAT follows the header.
const HEADER_OFFSET: u64 = 512;
const BAT_OFFSET: u64 = 1536;
/// One bit per sector of a block, padded to whole sectors.
const BITMAP: u64 = (BLOCK / SECTOR / 8).div_ceil(SECTOR) * SECTOR;

/// The CHS geometry of a disk of `sectors` sectors, by the VHD specification's algorithm
/// (cylinders, heads, sectors per track). Disks above about 127 GiB get the largest geometry.
pub fn geometry(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(65535 * 16 * 255);
    let (spt, heads, cyl_times_heads);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cyl_times_heads = total / spt;
    } else {
        let mut s = 17;
        let mut cth = total / s;
        let mut h = cth.div_ceil(1024).max(4);
        if cth >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            cth = total / s;
        }
        if cth >= h * 1024 {
            s = 63;
            h = 16;
            cth = total / s;
        }
        (spt, heads, cyl_times_heads) = (s, h, cth);
    }
    ((cyl_times_heads / heads) as u16, heads as u8, spt as u8)
}

/// One's complement of the byte sum, the checksum of the footer and the dynamic header.
fn checksum(bytes: &[u8]) -> u32 {
    !bytes
        .iter()
        .fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)))
}

fn footer(raw: &RawDisk, disk_type: u32, data_offset: u64) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: the reserved bit, always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&data_offset.to_be_bytes());
    f[24..28].copy_from_slice(&((TIMESTAMP - VHD_EPOCH) as u32).to_be_bytes());
    f[28..32].copy_from_slice(b"win ");
    f[32..36].copy_from_slice(&0x000a_0000u32.to_be_bytes()); // creator version
    f[36..40].copy_from_slice(b"Wi2k"); // creator host OS
    f[40..48].copy_from_slice(&raw.size().to_be_bytes()); // original size
    f[48..56].copy_from_slice(&raw.size().to_be_bytes()); // current size
    let (c, h, s) = geometry(raw.size() / SECTOR);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&disk_type.to_be_bytes());
    f[68..84].copy_from_slice(&raw.uuid("vhd unique id"));
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// Writes `raw` as a fixed VHD.
pub fn write_fixed(raw: &RawDisk, w: &mut impl Sink) -> Result<(), VdiskError> {
    copy_range(raw, 0, raw.size(), w)?;
    w.write_all(&footer(raw, FIXED, u64::MAX))
        .map_err(VdiskError::write("VHD footer"))
}

/// Writes `raw` as a dynamic VHD with 2 MiB blocks.
pub fn write_dynamic(raw: &RawDisk, w: &mut impl Sink) -> Result<(), VdiskError> {
    let err = || VdiskError::write("VHD metadata");
    let blocks = raw.size().div_ceil(BLOCK);
    let bat_bytes = (blocks * 4).div_ceil(SECTOR) * SECTOR;
    let used: Vec<bool> = (0..blocks)
        .map(|b| raw.any_used(b * BLOCK, (b + 1) * BLOCK))
        .collect();

    let foot = footer(raw, DYNAMIC, HEADER_OFFSET);
    w.write_all(&foot).map_err(err())?;

    let mut header = [0u8; 1024];
    header[0..8].copy_from_slice(b"cxsparse");
    header[8..16].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: unused
    header[16..24].copy_from_slice(&BAT_OFFSET.to_be_bytes());
    header[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    header[28..32].copy_from_slice(&(blocks as u32).to_be_bytes());
    header[32..36].copy_from_slice(&(BLOCK as u32).to_be_bytes());
    let sum = checksum(&header);
    header[36..40].copy_from_slice(&sum.to_be_bytes());
    w.write_all(&header).map_err(err())?;

    let mut bat = vec![0xffu8; bat_bytes as usize];
    let mut next = BAT_OFFSET + bat_bytes;
    for (b, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        bat[b * 4..][..4].copy_from_slice(&((next / SECTOR) as u32).to_be_bytes());
        next += BITMAP + BLOCK;
    }
    w.write_all(&bat).map_err(err())?;

    let bitmap = [0xffu8; BITMAP as usize];
    for (b, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        w.write_all(&bitmap).map_err(err())?;
        let start = b as u64 * BLOCK;
        copy_range(raw, start, start + BLOCK, w)?;
    }
    w.write_all(&foot).map_err(err())
}

#[cfg(test)]
mod tests {
    use super::super::tests::raw_disk;
    use super::*;

    #[test]
    fn geometry_follows_the_specification() {
        // 64 MiB: 17 sectors per track, 8 heads.
        assert_eq!(geometry(131_072), (963, 8, 17));
        // 1 GiB: 63 sectors per track, 16 heads.
        assert_eq!(geometry(2_097_152), (2080, 16, 63));
        // Past 127 GiB everything is clamped to the largest geometry.
        assert_eq!(geometry(4 << 30), (65535, 16, 255));
    }

    #[test]
    fn footers_carry_the_size_and_a_valid_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = raw_disk(dir.path(), 4 << 20, &[(3 << 20, b"data")]);
        let raw = RawDisk::open(&path).unwrap();
        let mut fixed = Vec::new();
        write_fixed(&raw, &mut fixed).unwrap();
        assert_eq!(fixed.len(), (4 << 20) + 512);
        let f = &fixed[4 << 20..];
        assert_eq!(&f[..8], b"conectix");
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), 4 << 20);
        let mut zeroed = f.to_vec();
        zeroed[64..68].fill(0);
        assert_eq!(
            u32::from_be_bytes(f[64..68].try_into().unwrap()),
            checksum(&zeroed)
        );

        let mut dynamic = Vec::new();
        write_dynamic(&raw, &mut dynamic).unwrap();
        // footer, header, one sector of BAT, one block (bitmap + 2 MiB), footer
        assert_eq!(
            dynamic.len() as u64,
            512 + 1024 + 512 + BITMAP + BLOCK + 512
        );
        let bat = &dynamic[BAT_OFFSET as usize..][..8];
        assert_eq!(bat[..4], [0xff; 4], "block 0 holds no data");
        assert_eq!(u32::from_be_bytes(bat[4..8].try_into().unwrap()), 4);
        let block = 2048 + BITMAP as usize;
        assert_eq!(&dynamic[block + (1 << 20)..][..4], b"data");
    }
}
