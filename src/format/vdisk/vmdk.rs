//! VMDK, streamOptimized (`vmdk`: VMware, VirtualBox, OVF/OVA imports), after VMware's "Virtual
//! Disk Format 5.0" (little-endian fields, 512-byte sectors).
//!
//! One monolithic sparse extent that is written front to back, which is what the
//! streamOptimized variant exists for:
//!
//! ```text
//! sector 0    sparse extent header (grain directory "at the end")
//! sector 1    the embedded text descriptor (createType="streamOptimized"), padded to 64 KiB
//! ...         one grain marker (virtual sector, compressed size) + zlib data per 64 KiB grain
//!             that holds data, each padded to a sector
//! ...         each grain table behind a GT marker (one table per 32 MiB of disk)
//! ...         the grain directory behind a GD marker
//! end - 1536  footer marker, the header again with the grain directory's offset, end-of-stream
//! ```
//!
//! Grains without data are not stored (their grain table entry is zero, which reads as zeros).
//! Every grain is compressed whole, also the last one past the disk's end: readers (QEMU among
//! them) expect each grain to inflate to exactly 64 KiB.

use std::io::Write;

use flate2::Compression;
use flate2::write::ZlibEncoder;

use super::{CHUNK, RawDisk, SECTOR, Sink, VdiskError};

/// Grain table entries are 32-bit sector offsets into the file, so the file (and in practice the
/// disk) stays below 2 TiB.
pub const MAX_SIZE: u64 = 2 << 40;
const GRAIN: u64 = CHUNK;
const GRAIN_SECTORS: u64 = GRAIN / SECTOR;
const GTES_PER_GT: u64 = 512;
/// Header and descriptor take the first grain's worth of sectors, as VMware's writers do.
const OVERHEAD_SECTORS: u64 = GRAIN_SECTORS;
const DESCRIPTOR_SECTORS: u64 = 20;
const GD_AT_END: u64 = u64::MAX;

const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

fn header(raw: &RawDisk, gd_offset: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes()); // version 3: compressed grains
    // Valid newline test, compressed grains, markers.
    h[8..12].copy_from_slice(&(1u32 | 1 << 16 | 1 << 17).to_le_bytes());
    h[12..20].copy_from_slice(&(raw.size() / SECTOR).to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes()); // descriptor offset
    h[36..44].copy_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
    // 48..56: no redundant grain directory.
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&OVERHEAD_SECTORS.to_le_bytes());
    h[73..77].copy_from_slice(b"\n \r\n"); // the newline detection characters
    h[77..79].copy_from_slice(&1u16.to_le_bytes()); // deflate
    h
}

/// The embedded descriptor. `extent` is the extent's (the file's own) name.
fn descriptor(raw: &RawDisk, extent: &str) -> String {
    let id = raw.uuid("vmdk content id");
    // CID ffffffff means "no parent" in parentCID; a content id never takes it.
    let cid = u32::from_le_bytes(id[..4].try_into().unwrap_or_default()).min(0xffff_fffe);
    let extent = if extent.chars().all(|c| !c.is_control() && c != '"') {
        extent
    } else {
        "disk.vmdk"
    };
    let sectors = raw.size() / SECTOR;
    // IDE geometry: 16 heads, 63 sectors per track, at most 16383 cylinders.
    let cylinders = (sectors / (16 * 63)).clamp(1, 16383);
    let long_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\
         \n\
         # Extent description\n\
         RW {sectors} SPARSE \"{extent}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.adapterType = \"ide\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"16\"\n\
         ddb.geometry.sectors = \"63\"\n\
         ddb.longContentID = \"{long_id}\"\n"
    )
}

/// A metadata marker: how many sectors of metadata follow, and their type.
fn marker(sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[0..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

/// Writes `raw` as a streamOptimized VMDK whose descriptor names the extent `extent`.
pub fn write(raw: &RawDisk, extent: &str, w: &mut impl Sink) -> Result<(), VdiskError> {
    let err = || VdiskError::write("VMDK metadata");
    let desc = descriptor(raw, extent);
    let desc_bytes = desc.len() as u64;
    if desc_bytes > DESCRIPTOR_SECTORS * SECTOR {
        return Err(VdiskError::Write {
            what: "VMDK descriptor",
            source: std::io::Error::other(format!(
                "the descriptor is {desc_bytes} bytes; the extent name is too long"
            )),
        });
    }
    w.write_all(&header(raw, GD_AT_END)).map_err(err())?;
    w.write_all(desc.as_bytes()).map_err(err())?;
    w.write_zeros((OVERHEAD_SECTORS - 1) * SECTOR - desc_bytes)
        .map_err(err())?;
    let mut sector = OVERHEAD_SECTORS;

    let grains = raw.chunks();
    let mut table = vec![0u32; grains.div_ceil(GTES_PER_GT) as usize * GTES_PER_GT as usize];
    let mut buf = vec![0u8; GRAIN as usize];
    for grain in (0..grains).filter(|&g| raw.is_used(g)) {
        raw.read_chunk(grain, &mut buf)?;
        let mut z = ZlibEncoder::new(Vec::with_capacity(GRAIN as usize / 2), Compression::new(6));
        z.write_all(&buf).map_err(VdiskError::write("VMDK grain"))?;
        let data = z.finish().map_err(VdiskError::write("VMDK grain"))?;
        let mut grain_marker = Vec::with_capacity(12 + data.len());
        grain_marker.extend_from_slice(&(grain * GRAIN_SECTORS).to_le_bytes());
        grain_marker.extend_from_slice(&(data.len() as u32).to_le_bytes());
        grain_marker.extend_from_slice(&data);
        let padded = (grain_marker.len() as u64).div_ceil(SECTOR) * SECTOR;
        table[grain as usize] = sector_offset(sector)?;
        w.write_all(&grain_marker)
            .and_then(|_| w.write_zeros(padded - grain_marker.len() as u64))
            .map_err(VdiskError::write("VMDK grain"))?;
        sector += padded / SECTOR;
    }

    let gt_sectors = GTES_PER_GT * 4 / SECTOR;
    let mut directory = Vec::new();
    for gt in table.chunks(GTES_PER_GT as usize) {
        w.write_all(&marker(gt_sectors, MARKER_GT)).map_err(err())?;
        sector += 1;
        directory.push(sector_offset(sector)?);
        let bytes: Vec<u8> = gt.iter().flat_map(|e| e.to_le_bytes()).collect();
        w.write_all(&bytes).map_err(err())?;
        sector += gt_sectors;
    }

    let gd_bytes: Vec<u8> = directory.iter().flat_map(|e| e.to_le_bytes()).collect();
    let gd_sectors = (gd_bytes.len() as u64).div_ceil(SECTOR);
    w.write_all(&marker(gd_sectors, MARKER_GD)).map_err(err())?;
    sector += 1;
    let gd_offset = sector;
    w.write_all(&gd_bytes)
        .and_then(|_| w.write_zeros(gd_sectors * SECTOR - gd_bytes.len() as u64))
        .map_err(err())?;

    w.write_all(&marker(1, MARKER_FOOTER)).map_err(err())?;
    w.write_all(&header(raw, gd_offset)).map_err(err())?;
    w.write_all(&marker(0, MARKER_EOS)).map_err(err())
}

fn sector_offset(sector: u64) -> Result<u32, VdiskError> {
    u32::try_from(sector).map_err(|_| VdiskError::Write {
        what: "VMDK grain table",
        source: std::io::Error::other("the image outgrew the 2 TiB a VMDK grain table can address"),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::raw_disk;
    use super::*;
    use std::io::Read;

    #[test]
    fn grains_are_compressed_and_found_through_the_footer() {
        let dir = tempfile::tempdir().unwrap();
        let size = 40 << 20; // two grain tables
        let path = raw_disk(dir.path(), size, &[(size - 512, b"last sector")]);
        let raw = RawDisk::open(&path).unwrap();
        let mut out = Vec::new();
        write(&raw, "x.vmdk", &mut out).unwrap();
        assert_eq!(&out[..4], b"KDMV");
        assert!(String::from_utf8_lossy(&out[512..1024]).contains("RW 81920 SPARSE \"x.vmdk\""));
        let footer = &out[out.len() - 1024..out.len() - 512];
        let gd = u64::from_le_bytes(footer[56..64].try_into().unwrap()) as usize * 512;
        let gt1 = u32::from_le_bytes(out[gd + 4..gd + 8].try_into().unwrap()) as usize * 512;
        let last = (size / GRAIN - 1) % GTES_PER_GT;
        let entry = gt1 + last as usize * 4;
        let grain = u32::from_le_bytes(out[entry..entry + 4].try_into().unwrap()) as usize * 512;
        let lba = u64::from_le_bytes(out[grain..grain + 8].try_into().unwrap());
        assert_eq!(lba, (size - GRAIN) / 512);
        let len = u32::from_le_bytes(out[grain + 8..grain + 12].try_into().unwrap()) as usize;
        let mut data = Vec::new();
        flate2::read::ZlibDecoder::new(&out[grain + 12..grain + 12 + len])
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(data.len() as u64, GRAIN);
        assert_eq!(&data[GRAIN as usize - 512..][..11], b"last sector");
    }
}
