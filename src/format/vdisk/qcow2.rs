//! qcow2 version 3 (QEMU's own format; `qcow2-bios`, `qcow2-efi`).
//!
//! 64 KiB clusters, 16-bit refcounts, no backing file, no compression, no header extensions.
//! The file is laid out in one pass, every cluster used exactly once:
//!
//! ```text
//! header | L1 table | refcount table | refcount blocks | L2 tables | data clusters
//! ```
//!
//! Only clusters that hold a non-zero byte are stored; an unallocated cluster reads as zeros (there
//! is no backing file). Every L1 and L2 entry has the COPIED flag (refcount exactly 1), which is
//! what `qemu-img check` expects of an image without snapshots.

use super::{CHUNK, RawDisk, Sink, VdiskError};

const CLUSTER: u64 = CHUNK;
const CLUSTER_BITS: u32 = 16;
/// L2 entries per table (8-byte entries in one cluster).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// Refcount entries per refcount block (16-bit entries in one cluster).
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
const COPIED: u64 = 1 << 63;
const HEADER_LENGTH: u32 = 104;
/// Far below what the format allows; more than any image Slipway makes.
pub const MAX_SIZE: u64 = 32 << 40;

/// Where everything goes, in clusters.
struct Layout {
    l1_entries: u64,
    l1_clusters: u64,
    refcount_table: u64,
    refcount_table_clusters: u64,
    refcount_blocks: u64,
    /// The L1 indices that get an L2 table, in order.
    l2_tables: Vec<u64>,
    /// The data clusters (virtual cluster indices) that are stored, in order.
    data: Vec<u64>,
}

impl Layout {
    fn new(raw: &RawDisk) -> Layout {
        let clusters = raw.chunks();
        let l1_entries = clusters.div_ceil(L2_ENTRIES);
        let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER);
        let data: Vec<u64> = (0..clusters).filter(|&c| raw.is_used(c)).collect();
        let mut l2_tables: Vec<u64> = data.iter().map(|c| c / L2_ENTRIES).collect();
        l2_tables.dedup();
        // The refcount blocks count themselves and the table that lists them: grow until stable.
        let fixed = 1 + l1_clusters + l2_tables.len() as u64 + data.len() as u64;
        let (mut table, mut blocks) = (1, 1);
        loop {
            let total = fixed + table + blocks;
            let need_blocks = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let need_table = (need_blocks * 8).div_ceil(CLUSTER);
            if (need_blocks, need_table) == (blocks, table) {
                break;
            }
            (blocks, table) = (need_blocks.max(blocks), need_table.max(table));
        }
        Layout {
            l1_entries,
            l1_clusters,
            refcount_table: 1 + l1_clusters,
            refcount_table_clusters: table,
            refcount_blocks: blocks,
            l2_tables,
            data,
        }
    }

    fn first_refcount_block(&self) -> u64 {
        self.refcount_table + self.refcount_table_clusters
    }

    fn first_l2(&self) -> u64 {
        self.first_refcount_block() + self.refcount_blocks
    }

    fn first_data(&self) -> u64 {
        self.first_l2() + self.l2_tables.len() as u64
    }

    fn total(&self) -> u64 {
        self.first_data() + self.data.len() as u64
    }
}

/// Writes `raw` as a qcow2 v3 image.
pub fn write(raw: &RawDisk, w: &mut impl Sink) -> Result<(), VdiskError> {
    let layout = Layout::new(raw);

    let mut header = Vec::with_capacity(HEADER_LENGTH as usize);
    header.extend_from_slice(b"QFI\xfb");
    header.extend_from_slice(&3u32.to_be_bytes()); // version
    header.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
    header.extend_from_slice(&0u32.to_be_bytes()); // backing file size
    header.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    header.extend_from_slice(&raw.size().to_be_bytes());
    header.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    header.extend_from_slice(&(layout.l1_entries as u32).to_be_bytes());
    header.extend_from_slice(&CLUSTER.to_be_bytes()); // L1 table offset: cluster 1
    header.extend_from_slice(&(layout.refcount_table * CLUSTER).to_be_bytes());
    header.extend_from_slice(&(layout.refcount_table_clusters as u32).to_be_bytes());
    header.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    header.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
    header.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
    header.extend_from_slice(&0u64.to_be_bytes()); // compatible features
    header.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
    header.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16-bit
    header.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
    debug_assert_eq!(header.len(), HEADER_LENGTH as usize);
    // The zeros after the header are the end-of-extensions marker.
    write_clusters(w, &header, 1)?;

    let mut l1 = vec![0u8; (layout.l1_entries * 8) as usize];
    for (i, &index) in layout.l2_tables.iter().enumerate() {
        let offset = (layout.first_l2() + i as u64) * CLUSTER;
        l1[index as usize * 8..][..8].copy_from_slice(&(offset | COPIED).to_be_bytes());
    }
    write_clusters(w, &l1, layout.l1_clusters)?;

    let table: Vec<u8> = (0..layout.refcount_blocks)
        .flat_map(|b| ((layout.first_refcount_block() + b) * CLUSTER).to_be_bytes())
        .collect();
    write_clusters(w, &table, layout.refcount_table_clusters)?;

    // Every cluster of the file is used once; nothing after the last one.
    let mut block = vec![0u8; CLUSTER as usize];
    let total = layout.total();
    for b in 0..layout.refcount_blocks {
        block.fill(0);
        let first = b * REFCOUNTS_PER_BLOCK;
        for i in 0..REFCOUNTS_PER_BLOCK.min(total.saturating_sub(first)) {
            block[i as usize * 2..][..2].copy_from_slice(&1u16.to_be_bytes());
        }
        w.write_all(&block)
            .map_err(VdiskError::write("qcow2 metadata"))?;
    }

    let mut data_index = 0usize;
    for &index in &layout.l2_tables {
        block.fill(0);
        let first = index * L2_ENTRIES;
        while let Some(&cluster) = layout.data.get(data_index) {
            if cluster >= first + L2_ENTRIES {
                break;
            }
            let offset = (layout.first_data() + data_index as u64) * CLUSTER;
            block[((cluster - first) * 8) as usize..][..8]
                .copy_from_slice(&(offset | COPIED).to_be_bytes());
            data_index += 1;
        }
        w.write_all(&block)
            .map_err(VdiskError::write("qcow2 metadata"))?;
    }

    for &cluster in &layout.data {
        raw.read_chunk(cluster, &mut block)?;
        w.write_all(&block)
            .map_err(VdiskError::write("qcow2 data"))?;
    }
    Ok(())
}

/// Writes `bytes` padded with zeros to `clusters` clusters.
fn write_clusters(w: &mut impl Sink, bytes: &[u8], clusters: u64) -> Result<(), VdiskError> {
    let err = VdiskError::write("qcow2 metadata");
    w.write_all(bytes)
        .and_then(|_| w.write_zeros(clusters * CLUSTER - bytes.len() as u64))
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::super::tests::raw_disk;
    use super::*;

    fn be64(b: &[u8], at: usize) -> u64 {
        u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn a_qcow2_stores_only_the_used_clusters_and_maps_them() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 << 30; // two L2 tables' worth (512 MiB each) and more
        let path = raw_disk(dir.path(), size, &[(0, b"first"), (size - 512, b"last")]);
        let raw = RawDisk::open(&path).unwrap();
        let mut out = Vec::new();
        write(&raw, &mut out).unwrap();
        assert_eq!(&out[..4], b"QFI\xfb");
        assert_eq!(be64(&out, 24), size);
        // header, L1, refcount table, one refcount block, two L2 tables, two data clusters
        assert_eq!(out.len() as u64, 8 * CLUSTER);
        let l1 = CLUSTER as usize;
        let first_l2 = be64(&out, l1) & !COPIED;
        assert_eq!(first_l2, 4 * CLUSTER);
        let data0 = be64(&out, first_l2 as usize) & !COPIED;
        assert_eq!(&out[data0 as usize..][..5], b"first");
        let last_l1 = ((size / CLUSTER - 1) / L2_ENTRIES) as usize;
        let second_l2 = be64(&out, l1 + last_l1 * 8) & !COPIED;
        let entry = ((size / CLUSTER - 1) % L2_ENTRIES) as usize;
        let data1 = be64(&out, second_l2 as usize + entry * 8) & !COPIED;
        assert_eq!(
            &out[(data1 + CLUSTER - 512) as usize..][..4],
            b"last",
            "the last sector is in place"
        );
    }
}
