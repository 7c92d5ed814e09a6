//! VHDX, dynamic (`vhdx`: Hyper-V generation 2 takes only VHDX), after Microsoft's [MS-VHDX]
//! (little-endian fields, CRC-32C checksums, GUIDs in Microsoft's mixed-endian byte order).
//!
//! ```text
//! 0        file type identifier ("vhdxfile", creator "Slipway")
//! 64 KiB   header 1        128 KiB  header 2 (the same, one sequence number higher)
//! 192 KiB  region table 1  256 KiB  region table 2 (the same): where the BAT and metadata are
//! 1 MiB    log (1 MiB, empty: the log GUID is zero, so there is nothing to replay)
//! 2 MiB    metadata region: block size, disk size, disk id, sector sizes
//! 3 MiB    BAT: one entry per 2 MiB payload block, a sector-bitmap entry after every 2048
//! ...      payload blocks holding data, 1 MiB aligned, in disk order
//! ```
//!
//! Blocks without data are `PAYLOAD_BLOCK_ZERO` (the state whose reads must return zeros; the
//! "not present" state leaves their contents undefined). Sector bitmap entries stay "not
//! present", as the specification requires of a disk without a parent.

use super::{RawDisk, Sink, VdiskError, copy_range};

/// The format's limit.
pub const MAX_SIZE: u64 = 64 << 40;
const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
const BLOCK: u64 = 2 * MIB;
const LOGICAL_SECTOR: u64 = 512;
const PHYSICAL_SECTOR: u32 = 4096;
/// Payload blocks per sector bitmap block: 2^23 sectors' worth.
const CHUNK_RATIO: u64 = (1 << 23) * LOGICAL_SECTOR / BLOCK;
const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u64 = MIB;
const METADATA_OFFSET: u64 = 2 * MIB;
const METADATA_LENGTH: u64 = MIB;
const BAT_OFFSET: u64 = 3 * MIB;

const PAYLOAD_BLOCK_ZERO: u64 = 2;
const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;

/// A GUID as the specification writes it, in the byte order VHDX stores it.
const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

const BAT_REGION: [u8; 16] = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
const METADATA_REGION: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
const FILE_PARAMETERS: [u8; 16] = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
const VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const VIRTUAL_DISK_ID: [u8; 16] = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
const LOGICAL_SECTOR_SIZE: [u8; 16] = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
const PHYSICAL_SECTOR_SIZE: [u8; 16] = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);

/// Metadata entry flags.
const IS_VIRTUAL_DISK: u32 = 1 << 1;
const IS_REQUIRED: u32 = 1 << 2;

/// CRC-32C (Castagnoli, reflected), the checksum of headers and region tables.
fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// The index of payload block `block` in the BAT (a sector bitmap entry follows every chunk).
fn bat_index(block: u64) -> u64 {
    block + block / CHUNK_RATIO
}

/// Writes `raw` as a dynamic VHDX with 2 MiB blocks.
pub fn write(raw: &RawDisk, w: &mut impl Sink) -> Result<(), VdiskError> {
    let err = || VdiskError::write("VHDX metadata");
    let blocks = raw.size().div_ceil(BLOCK);
    let bat_entries = blocks + blocks.div_ceil(CHUNK_RATIO);
    let bat_length = (bat_entries * 8).div_ceil(MIB) * MIB;
    let payload_start = BAT_OFFSET + bat_length;

    // File type identifier.
    let mut ident = vec![0u8; (64 * KIB) as usize];
    ident[..8].copy_from_slice(b"vhdxfile");
    for (i, unit) in "Slipway".encode_utf16().enumerate() {
        ident[8 + i * 2..][..2].copy_from_slice(&unit.to_le_bytes());
    }
    w.write_all(&ident).map_err(err())?;

    // Two headers, the second current.
    for sequence in [1u64, 2] {
        let mut h = vec![0u8; (4 * KIB) as usize];
        h[0..4].copy_from_slice(b"head");
        h[8..16].copy_from_slice(&sequence.to_le_bytes());
        h[16..32].copy_from_slice(&raw.uuid("vhdx file write guid"));
        h[32..48].copy_from_slice(&raw.uuid("vhdx data write guid"));
        // 48..64: log GUID zero, no log to replay; 64..66: log version 0.
        h[66..68].copy_from_slice(&1u16.to_le_bytes()); // version
        h[68..72].copy_from_slice(&(LOG_LENGTH as u32).to_le_bytes());
        h[72..80].copy_from_slice(&LOG_OFFSET.to_le_bytes());
        let crc = crc32c(&h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        w.write_all(&h).map_err(err())?;
        w.write_zeros(60 * KIB).map_err(err())?;
    }

    // Two identical region tables.
    let mut regions = vec![0u8; (64 * KIB) as usize];
    regions[0..4].copy_from_slice(b"regi");
    regions[8..12].copy_from_slice(&2u32.to_le_bytes());
    for (i, (id, offset, length)) in [
        (BAT_REGION, BAT_OFFSET, bat_length),
        (METADATA_REGION, METADATA_OFFSET, METADATA_LENGTH),
    ]
    .into_iter()
    .enumerate()
    {
        let e = &mut regions[16 + i * 32..][..32];
        e[0..16].copy_from_slice(&id);
        e[16..24].copy_from_slice(&offset.to_le_bytes());
        e[24..28].copy_from_slice(&(length as u32).to_le_bytes());
        e[28..32].copy_from_slice(&1u32.to_le_bytes()); // required
    }
    let crc = crc32c(&regions);
    regions[4..8].copy_from_slice(&crc.to_le_bytes());
    w.write_all(&regions).map_err(err())?;
    w.write_all(&regions).map_err(err())?;
    // Reserved space up to 1 MiB, then the empty log.
    w.write_zeros(MIB - 320 * KIB + LOG_LENGTH).map_err(err())?;

    // Metadata region: the table, then the items from 64 KiB on.
    let mut meta = vec![0u8; (64 * KIB + 40) as usize];
    meta[0..8].copy_from_slice(b"metadata");
    let items: [([u8; 16], Vec<u8>, u32); 5] = [
        (
            FILE_PARAMETERS,
            // block size; flags 0: blocks may be unallocated, no parent
            [(BLOCK as u32).to_le_bytes(), 0u32.to_le_bytes()].concat(),
            IS_REQUIRED,
        ),
        (
            VIRTUAL_DISK_SIZE,
            raw.size().to_le_bytes().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
        (
            VIRTUAL_DISK_ID,
            raw.uuid("vhdx virtual disk id").to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
        (
            LOGICAL_SECTOR_SIZE,
            (LOGICAL_SECTOR as u32).to_le_bytes().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
        (
            PHYSICAL_SECTOR_SIZE,
            PHYSICAL_SECTOR.to_le_bytes().to_vec(),
            IS_VIRTUAL_DISK | IS_REQUIRED,
        ),
    ];
    meta[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    let mut item_offset = 64 * KIB as usize;
    for (i, (id, value, flags)) in items.iter().enumerate() {
        let e = &mut meta[32 + i * 32..][..32];
        e[0..16].copy_from_slice(id);
        e[16..20].copy_from_slice(&(item_offset as u32).to_le_bytes());
        e[20..24].copy_from_slice(&(value.len() as u32).to_le_bytes());
        e[24..28].copy_from_slice(&flags.to_le_bytes());
        meta[item_offset..][..value.len()].copy_from_slice(value);
        item_offset += value.len();
    }
    w.write_all(&meta).map_err(err())?;
    w.write_zeros(METADATA_LENGTH - meta.len() as u64)
        .map_err(err())?;

    // The BAT, then the payload blocks in the order it names them.
    let mut bat = vec![0u8; bat_length as usize];
    let mut next = payload_start;
    let mut present = Vec::new();
    for block in 0..blocks {
        let entry = if raw.any_used(block * BLOCK, (block + 1) * BLOCK) {
            present.push(block);
            let e = next | PAYLOAD_BLOCK_FULLY_PRESENT;
            next += BLOCK;
            e
        } else {
            PAYLOAD_BLOCK_ZERO
        };
        bat[(bat_index(block) * 8) as usize..][..8].copy_from_slice(&entry.to_le_bytes());
    }
    w.write_all(&bat).map_err(err())?;
    for block in present {
        copy_range(raw, block * BLOCK, (block + 1) * BLOCK, w)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::raw_disk;
    use super::*;

    #[test]
    fn crc32c_matches_the_reference_value() {
        // The check value of CRC-32C (RFC 3720, B.4).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn known_guids_are_stored_mixed_endian() {
        assert_eq!(
            BAT_REGION,
            [
                0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd,
                0x4a, 0x08
            ]
        );
    }

    #[test]
    fn only_blocks_with_data_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let size = 8 * MIB;
        let path = raw_disk(dir.path(), size, &[(5 * MIB, b"data")]);
        let raw = RawDisk::open(&path).unwrap();
        let mut out = Vec::new();
        write(&raw, &mut out).unwrap();
        assert_eq!(out.len() as u64, 6 * MIB, "metadata (4 MiB) and one block");
        let bat = &out[BAT_OFFSET as usize..];
        let entry = |i: usize| u64::from_le_bytes(bat[i * 8..][..8].try_into().unwrap());
        assert_eq!(entry(0), PAYLOAD_BLOCK_ZERO);
        assert_eq!(entry(2), (4 * MIB) | PAYLOAD_BLOCK_FULLY_PRESENT);
        assert_eq!(&out[(4 * MIB + MIB) as usize..][..4], b"data");
    }
}
