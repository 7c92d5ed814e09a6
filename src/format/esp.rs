//! FAT filesystems: the EFI system partition of the EFI disks, the boot partition of the BIOS
//! disk and the El Torito EFI image of the ISOs, written through `fatfs` into a sparse [`Disk`].
//!
//! `fatfs` is built without `chrono`, so every timestamp is its fixed default (1980-01-01) and no
//! clock reaches the image; the volume id comes from the content ([`Seed`]). Clusters are 4 KiB
//! and `fatfs` picks FAT12, FAT16 or FAT32 from the cluster count, as the specification says;
//! UEFI and SYSLINUX read all three.

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};

use super::FormatError;
use super::disk::{Disk, MIB, SECTOR, Seed, round_up};

const CLUSTER: u64 = 4096;

/// One file of a FAT volume: its path (`EFI/BOOT/BOOTX64.EFI`) and contents.
#[derive(Clone, Copy, Debug)]
pub struct FatFile<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
}

/// Which FAT the volume got (it decides the MBR partition type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatKind {
    Fat12,
    Fat16,
    Fat32,
}

impl FatKind {
    /// The MBR partition type of a volume of this kind (LBA-addressed variants).
    pub fn mbr_type(self) -> u8 {
        match self {
            FatKind::Fat12 => 0x01,
            FatKind::Fat16 => 0x0e,
            FatKind::Fat32 => 0x0c,
        }
    }
}

/// The directories `files` need, parents first.
fn directories<'a>(files: &[FatFile<'a>]) -> BTreeSet<&'a str> {
    let mut dirs = BTreeSet::new();
    for f in files {
        let mut at = f.path;
        while let Some((parent, _)) = at.rsplit_once('/') {
            dirs.insert(parent);
            at = parent;
        }
    }
    dirs
}

/// The smallest volume that holds `files`, with room to spare for the FAT's own structures
/// (counted as for FAT32, the largest), rounded up to 1 MiB.
pub fn min_size(files: &[FatFile]) -> u64 {
    let data_clusters: u64 = files
        .iter()
        .map(|f| (f.data.len() as u64).div_ceil(CLUSTER))
        .sum::<u64>()
        + directories(files).len() as u64
        + 16;
    let fats = 2 * round_up((data_clusters + 2) * 4, SECTOR);
    let reserved = 32 * SECTOR;
    let root = 512 * 32;
    let total = reserved + fats + root + data_clusters * CLUSTER;
    round_up(total + total / 50 + MIB / 2, MIB)
}

/// Options of a volume.
#[derive(Clone, Copy, Debug)]
pub struct FatOptions<'a> {
    /// At most 11 characters, upper case.
    pub label: &'a str,
    /// Where the volume starts on its disk, in sectors: the BPB's "hidden sectors", which boot
    /// code (SYSLINUX's) adds to the sectors it reads.
    pub hidden_sectors: u32,
}

/// Formats a `size`-byte volume and writes `files` into it, in order (a file that must be
/// contiguous, such as `ldlinux.sys`, goes first). Returns the volume and its FAT kind.
pub fn build(
    files: &[FatFile],
    size: u64,
    options: FatOptions,
    seed: &Seed,
) -> Result<(Disk, FatKind), FormatError> {
    let mut disk = Disk::new(size);
    let fat = |what: String| move |e: std::io::Error| FormatError::Fat(format!("{what}: {e}"));
    let mut label = [b' '; 11];
    for (dst, src) in label.iter_mut().zip(options.label.bytes()) {
        *dst = src.to_ascii_uppercase();
    }
    let sectors = u32::try_from(size / SECTOR).map_err(|_| {
        FormatError::Fat(format!(
            "a volume of {size} bytes is larger than FAT allows"
        ))
    })?;
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .bytes_per_cluster(CLUSTER as u32)
            .total_sectors(sectors)
            .volume_id(seed.u32("fat volume id"))
            .volume_label(label),
    )
    .map_err(fat("formatting".into()))?;
    disk.seek(SeekFrom::Start(0))
        .map_err(FormatError::io("the FAT volume"))?;
    let kind = {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
            .map_err(fat("mounting the new volume".into()))?;
        let kind = match fs.fat_type() {
            fatfs::FatType::Fat12 => FatKind::Fat12,
            fatfs::FatType::Fat16 => FatKind::Fat16,
            fatfs::FatType::Fat32 => FatKind::Fat32,
        };
        {
            let root = fs.root_dir();
            for dir in directories(files) {
                root.create_dir(dir)
                    .map_err(fat(format!("creating {dir}")))?;
            }
            for f in files {
                let mut file = root
                    .create_file(f.path)
                    .map_err(fat(format!("creating {}", f.path)))?;
                file.truncate()
                    .map_err(fat(format!("creating {}", f.path)))?;
                file.write_all(f.data).map_err(fat(format!(
                    "writing {} ({} bytes) into a {size}-byte volume",
                    f.path,
                    f.data.len()
                )))?;
                file.flush().map_err(fat(format!("writing {}", f.path)))?;
            }
        }
        fs.unmount().map_err(fat("closing the volume".into()))?;
        kind
    };
    drop_dot_long_names(&mut disk)?;
    set_hidden_sectors(&mut disk, kind, options.hidden_sectors)?;
    Ok((disk, kind))
}

/// `fatfs` formats volumes as if they started the disk; record where they really start, in the
/// boot sector and (FAT32) its backup.
fn set_hidden_sectors(disk: &mut Disk, kind: FatKind, hidden: u32) -> Result<(), FormatError> {
    let io = |e| FormatError::Io {
        what: "the FAT boot sector".into(),
        source: e,
    };
    disk.write_at(28, &hidden.to_le_bytes()).map_err(io)?;
    if kind == FatKind::Fat32 {
        let mut bpb = [0u8; 52];
        disk.read_at(0, &mut bpb);
        let backup = u16::from_le_bytes([bpb[50], bpb[51]]) as u64;
        if backup != 0 {
            disk.write_at(backup * SECTOR + 28, &hidden.to_le_bytes())
                .map_err(io)?;
        }
    }
    Ok(())
}

/// A volume with `files` and its size: the smallest that holds them, or `size` when given.
pub fn build_fitting(
    files: &[FatFile],
    size: Option<u64>,
    options: FatOptions,
    seed: &Seed,
) -> Result<(Disk, FatKind), FormatError> {
    build(
        files,
        size.unwrap_or_else(|| min_size(files)),
        options,
        seed,
    )
}

/// Little-endian fields of on-disk structures (`None` past the end).
fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The geometry of a FAT volume, from its boot sector.
pub(crate) struct FatLayout {
    sectors_per_cluster: u64,
    fat_start: u64,
    root_start: u64,
    root_sectors: u64,
    data_start: u64,
    root_cluster: u32,
    pub bits: u32,
}

impl FatLayout {
    pub fn read(vol: &Disk) -> Result<FatLayout, String> {
        let mut bs = [0u8; 512];
        vol.read_at(0, &mut bs);
        let u16v = |at| u16_at(&bs, at).unwrap_or(0) as u64;
        let u32v = |at| u32_at(&bs, at).unwrap_or(0) as u64;
        if u16v(11) != SECTOR || bs[510..] != [0x55, 0xaa] {
            return Err("the volume has no FAT boot sector with 512-byte sectors".into());
        }
        let spc = bs[13] as u64;
        let reserved = u16v(14);
        let fats = bs[16] as u64;
        let root_entries = u16v(17);
        let total = if u16v(19) != 0 { u16v(19) } else { u32v(32) };
        let fat_size = if u16v(22) != 0 { u16v(22) } else { u32v(36) };
        let root_sectors = (root_entries * 32).div_ceil(SECTOR);
        let data_start = reserved + fats * fat_size + root_sectors;
        if spc == 0 || total <= data_start {
            return Err("the volume's boot sector describes no data area".into());
        }
        let clusters = (total - data_start) / spc;
        let bits = match clusters {
            0..4085 => 12,
            4085..65525 => 16,
            _ => 32,
        };
        Ok(FatLayout {
            sectors_per_cluster: spc,
            fat_start: reserved,
            root_start: reserved + fats * fat_size,
            root_sectors,
            data_start,
            root_cluster: if bits == 32 { u32v(44) as u32 } else { 0 },
            bits,
        })
    }

    fn next(&self, vol: &Disk, cluster: u32) -> Option<u32> {
        let base = self.fat_start * SECTOR;
        let (value, end) = match self.bits {
            12 => {
                let mut b = [0u8; 2];
                vol.read_at(base + cluster as u64 * 3 / 2, &mut b);
                let v = u16::from_le_bytes(b) as u32;
                (
                    if cluster.is_multiple_of(2) {
                        v & 0xfff
                    } else {
                        v >> 4
                    },
                    0xff8,
                )
            }
            16 => {
                let mut b = [0u8; 2];
                vol.read_at(base + cluster as u64 * 2, &mut b);
                (u16::from_le_bytes(b) as u32, 0xfff8)
            }
            _ => {
                let mut b = [0u8; 4];
                vol.read_at(base + cluster as u64 * 4, &mut b);
                (u32::from_le_bytes(b) & 0x0fff_ffff, 0x0fff_fff8)
            }
        };
        (2..end).contains(&value).then_some(value)
    }

    fn cluster_sectors(&self, cluster: u32) -> impl Iterator<Item = u64> {
        let first = self.data_start + (cluster as u64 - 2) * self.sectors_per_cluster;
        first..first + self.sectors_per_cluster
    }

    /// Records the free clusters and the first free one in the FSInfo sector and its backup.
    fn set_fsinfo(&self, vol: &mut Disk) -> Result<(), FormatError> {
        let mut bs = [0u8; 512];
        vol.read_at(0, &mut bs);
        let total = u32_at(&bs, 32).unwrap_or(0) as u64;
        let clusters = (total.saturating_sub(self.data_start)) / self.sectors_per_cluster;
        let (mut free, mut first_free) = (0u32, None);
        let mut entry = [0u8; 4];
        for c in 2..clusters + 2 {
            vol.read_at(self.fat_start * SECTOR + c * 4, &mut entry);
            if u32::from_le_bytes(entry) & 0x0fff_ffff == 0 {
                free += 1;
                first_free.get_or_insert(c as u32);
            }
        }
        let fsinfo = u16_at(&bs, 48).unwrap_or(0) as u64;
        let backup = u16_at(&bs, 50).unwrap_or(0) as u64;
        let mut fields = [0u8; 8];
        fields[..4].copy_from_slice(&free.to_le_bytes());
        fields[4..].copy_from_slice(&first_free.unwrap_or(0xffff_ffff).to_le_bytes());
        for sector in [fsinfo, backup + fsinfo] {
            if sector != 0 && sector < self.fat_start {
                vol.write_at(sector * SECTOR + 488, &fields)
                    .map_err(FormatError::io("the FAT32 FSInfo sector"))?;
            }
        }
        Ok(())
    }

    /// The sectors of a chain, at most `limit` of them.
    pub fn chain_sectors(&self, vol: &Disk, first: u32, limit: usize) -> Vec<u64> {
        let mut sectors = Vec::new();
        let mut cluster = Some(first).filter(|c| *c >= 2);
        while let Some(c) = cluster {
            sectors.extend(self.cluster_sectors(c));
            if sectors.len() >= limit {
                break;
            }
            cluster = self.next(vol, c);
        }
        sectors.truncate(limit);
        sectors
    }

    /// The first cluster of the root directory file named `name` (8.3, space-padded).
    pub fn find_root_file(&self, vol: &Disk, name: &[u8; 11]) -> Option<u32> {
        for sector in self.root_sectors(vol) {
            let mut buf = [0u8; 512];
            vol.read_at(sector * SECTOR, &mut buf);
            for entry in buf.chunks_exact(32) {
                if entry[0] == 0 {
                    return None;
                }
                if entry[11] & 0x18 == 0 && entry[..11] == name[..] {
                    let hi = u16_at(entry, 20)? as u32;
                    let lo = u16_at(entry, 26)? as u32;
                    return Some(hi << 16 | lo);
                }
            }
        }
        None
    }

    /// The sectors of the root directory.
    fn root_sectors(&self, vol: &Disk) -> Vec<u64> {
        if self.bits == 32 {
            self.chain_sectors(vol, self.root_cluster, usize::MAX)
        } else {
            (self.root_start..self.root_start + self.root_sectors).collect()
        }
    }
}

/// `fatfs` 0.3 gives the `.` and `..` entries of a new directory long-name entries of their own,
/// which `fsck.fat` rightly rejects (0.4 fixed it, unreleased). Drop them: rewrite each
/// subdirectory without the long-name entries that precede `.` and `..`. On FAT32 it also points
/// `..` of a directory in the root at the root's cluster, where the FAT specification wants 0,
/// and leaves the FSInfo sector's free-cluster count unset: both are put right here.
fn drop_dot_long_names(vol: &mut Disk) -> Result<(), FormatError> {
    let fat = FatLayout::read(vol).map_err(FormatError::Fat)?;
    // (directory, its parent's first cluster: 0 for the root, as `..` records it)
    let mut pending: Vec<(u32, u32)> = subdirectories(vol, &fat.root_sectors(vol))
        .into_iter()
        .map(|c| (c, 0))
        .collect();
    let mut seen = BTreeSet::new();
    while let Some((cluster, parent)) = pending.pop() {
        if !seen.insert(cluster) {
            continue;
        }
        let sectors = fat.chain_sectors(vol, cluster, usize::MAX);
        let mut entries = Vec::new();
        for s in &sectors {
            let mut buf = [0u8; 512];
            vol.read_at(s * SECTOR, &mut buf);
            entries.extend(
                buf.chunks_exact(32)
                    .map(|e| <[u8; 32]>::try_from(e).expect("32")),
            );
        }
        let mut kept: Vec<[u8; 32]> = Vec::new();
        for e in entries {
            if e[0] == 0 {
                break;
            }
            let is_dot =
                e[11] != 0x0f && (&e[..11] == b".          " || &e[..11] == b"..         ");
            if is_dot {
                while kept.last().is_some_and(|k| k[11] == 0x0f) {
                    kept.pop();
                }
            }
            let mut e = e;
            if is_dot && &e[..11] == b"..         " {
                e[20..22].copy_from_slice(&((parent >> 16) as u16).to_le_bytes());
                e[26..28].copy_from_slice(&(parent as u16).to_le_bytes());
            }
            kept.push(e);
        }
        let mut bytes: Vec<u8> = kept.concat();
        bytes.resize(sectors.len() * SECTOR as usize, 0);
        for (s, chunk) in sectors.iter().zip(bytes.chunks(SECTOR as usize)) {
            vol.write_at(s * SECTOR, chunk)
                .map_err(FormatError::io("a FAT directory"))?;
        }
        pending.extend(
            subdirectories(vol, &sectors)
                .into_iter()
                .map(|c| (c, cluster)),
        );
    }
    if fat.bits == 32 {
        fat.set_fsinfo(vol)?;
    }
    Ok(())
}

/// The first clusters of the directories listed in the directory at `sectors`.
fn subdirectories(vol: &Disk, sectors: &[u64]) -> Vec<u32> {
    let mut out = Vec::new();
    for s in sectors {
        let mut buf = [0u8; 512];
        vol.read_at(s * SECTOR, &mut buf);
        for e in buf.chunks_exact(32) {
            if e[0] == 0 {
                return out;
            }
            let dir = e[11] & 0x10 != 0 && e[11] != 0x0f && e[0] != b'.' && e[0] != 0xe5;
            if dir {
                let hi = u16_at(e, 20).unwrap_or(0) as u32;
                let lo = u16_at(e, 26).unwrap_or(0) as u32;
                out.push(hi << 16 | lo);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn files_written_are_read_back_by_fatfs() {
        let big = vec![7u8; 300_000];
        let files = [
            FatFile {
                path: "EFI/BOOT/BOOTX64.EFI",
                data: &big,
            },
            FatFile {
                path: "syslinux.cfg",
                data: b"DEFAULT linux\n",
            },
        ];
        let seed = Seed::of(&[b"test"]);
        let opts = FatOptions {
            label: "esp",
            hidden_sectors: 2048,
        };
        let (mut disk, kind) = build_fitting(&files, None, opts, &seed).unwrap();
        assert_eq!(kind, FatKind::Fat12);
        assert_eq!(disk.size() % MIB, 0);
        let mut sector = [0u8; 512];
        disk.read_at(0, &mut sector);
        assert_eq!(u32::from_le_bytes(sector[28..32].try_into().unwrap()), 2048);
        disk.seek(SeekFrom::Start(0)).unwrap();
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
        let mut back = Vec::new();
        fs.root_dir()
            .open_file("EFI/BOOT/BOOTX64.EFI")
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, big);
        assert_eq!(fs.volume_label(), "ESP");
    }

    #[test]
    fn the_same_files_give_the_same_bytes() {
        let files = [FatFile {
            path: "a/b/c",
            data: b"x",
        }];
        let seed = Seed::of(&[b"s"]);
        let opts = FatOptions {
            label: "X",
            hidden_sectors: 0,
        };
        let a = build(&files, 8 * MIB, opts, &seed).unwrap();
        let b = build(&files, 8 * MIB, opts, &seed).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_volume_too_small_is_an_error_naming_the_file() {
        let big = vec![1u8; 3 * MIB as usize];
        let files = [FatFile {
            path: "kernel",
            data: &big,
        }];
        let opts = FatOptions {
            label: "X",
            hidden_sectors: 0,
        };
        let err = build(&files, 2 * MIB, opts, &Seed::of(&[])).unwrap_err();
        assert!(err.to_string().contains("kernel"), "{err}");
    }
}
