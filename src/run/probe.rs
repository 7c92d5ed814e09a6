//! What a file is, read from its bytes rather than its name: the container (raw, qcow2, VHD,
//! VHDX, VMDK, ISO) that picks QEMU's `format=` or `-cdrom`, and the firmware the image inside
//! can boot with, which picks SeaBIOS or OVMF.
//!
//! - An ISO says what it boots in its El Torito catalog: a bootable entry for platform 0 (x86)
//!   boots BIOS, one for platform 0xEF boots UEFI.
//! - A disk boots BIOS when its MBR holds boot code (a protective MBR of a GPT disk holds none),
//!   and UEFI when a FAT partition (the ESP of a GPT, or an MBR partition of a FAT type) holds
//!   `EFI/BOOT/BOOTX64.EFI`, the path firmware boots removable media from.
//!
//! A raw disk or a fixed VHD is read in place; the sectors inside the other containers come
//! through `qemu-img dd`, so any image QEMU reads can be probed, not only Slipway's own.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::RunError;

/// The container of an image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    Raw,
    Qcow2,
    /// A VHD: `fixed` is the raw disk followed by a footer, otherwise dynamic.
    Vpc {
        fixed: bool,
    },
    Vhdx,
    Vmdk,
    Iso,
}

impl Container {
    /// QEMU's name for the format (`-drive format=`).
    pub fn qemu_format(self) -> &'static str {
        match self {
            Container::Raw | Container::Iso => "raw",
            Container::Qcow2 => "qcow2",
            Container::Vpc { .. } => "vpc",
            Container::Vhdx => "vhdx",
            Container::Vmdk => "vmdk",
        }
    }
}

/// The firmware an image can boot with. Both false: nothing recognisable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Boots {
    pub bios: bool,
    pub uefi: bool,
}

impl Boots {
    /// Whether to start OVMF: when asked to, or when the image boots UEFI only. An image that
    /// boots both ways boots BIOS, the way LinuxKit's runner does by default.
    pub fn wants_uefi(self, forced: bool) -> bool {
        forced || (self.uefi && !self.bios)
    }
}

const ISO_SECTOR: u64 = 2048;

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads up to `len` bytes at `offset`; what lies past the end of the file reads as zeros.
fn read_at(file: &File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, RunError> {
    let mut buf = vec![0u8; len];
    // Offsets from a hostile table may lie beyond what any file holds.
    if offset.saturating_add(len as u64) > i64::MAX as u64 {
        return Ok(buf);
    }
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(path)(e)),
        }
    }
    Ok(buf)
}

/// The container of `path`, from its magic numbers.
pub fn container(path: &Path) -> Result<Container, RunError> {
    let file = File::open(path).map_err(read_err(path))?;
    let size = file.metadata().map_err(read_err(path))?.len();
    let head = read_at(&file, path, 0, 512)?;
    if head.starts_with(b"QFI\xfb") {
        let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if version >= 2 {
            return Ok(Container::Qcow2);
        }
    }
    if head.starts_with(b"vhdxfile") {
        return Ok(Container::Vhdx);
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        return Ok(Container::Vmdk);
    }
    // A dynamic VHD starts with a copy of its footer; a fixed one only ends with it.
    if head.starts_with(b"conectix") {
        return Ok(Container::Vpc { fixed: false });
    }
    if size >= 512 && read_at(&file, path, size - 512, 8)? == b"conectix" {
        return Ok(Container::Vpc { fixed: true });
    }
    // The primary volume descriptor, sector 16 of 2048 bytes.
    let pvd = read_at(&file, path, 16 * ISO_SECTOR, 6)?;
    if pvd == b"\x01CD001" {
        return Ok(Container::Iso);
    }
    Ok(Container::Raw)
}

/// What an ISO's El Torito catalog boots.
pub fn iso_boots(path: &Path) -> Result<Boots, RunError> {
    let file = File::open(path).map_err(read_err(path))?;
    let mut boots = Boots::default();
    // Volume descriptors from sector 16 until the terminator (type 255).
    let mut catalog = None;
    for sector in 16..64 {
        let vd = read_at(&file, path, sector * ISO_SECTOR, ISO_SECTOR as usize)?;
        if &vd[1..6] != b"CD001" || vd[0] == 255 {
            break;
        }
        if vd[0] == 0 && vd[7..].starts_with(b"EL TORITO SPECIFICATION") {
            catalog = Some(u32::from_le_bytes([vd[0x47], vd[0x48], vd[0x49], vd[0x4a]]));
        }
    }
    let Some(catalog) = catalog else {
        return Ok(boots);
    };
    let cat = read_at(
        &file,
        path,
        u64::from(catalog) * ISO_SECTOR,
        ISO_SECTOR as usize,
    )?;
    // The validation entry: header id 1, the key bytes 55 AA.
    if cat[0] != 1 || cat[0x1e..0x20] != [0x55, 0xaa] {
        return Ok(boots);
    }
    let mut mark = |platform: u8, bootable: bool| match platform {
        0 if bootable => boots.bios = true,
        0xef if bootable => boots.uefi = true,
        _ => {}
    };
    mark(cat[1], cat[32] == 0x88);
    // Section headers (0x90, 0x91 for the last) each followed by their entries.
    let mut at = 64;
    while at + 32 <= cat.len() {
        let (kind, platform) = (cat[at], cat[at + 1]);
        if kind != 0x90 && kind != 0x91 {
            break;
        }
        let count = usize::from(u16::from_le_bytes([cat[at + 2], cat[at + 3]]));
        at += 32;
        for _ in 0..count {
            if at + 32 > cat.len() {
                break;
            }
            // Skip extension records (0x44) that continue an entry.
            while at + 32 <= cat.len() && cat[at] == 0x44 {
                at += 32;
            }
            if at + 32 <= cat.len() {
                mark(platform, cat[at] == 0x88);
            }
            at += 32;
        }
        if kind == 0x91 {
            break;
        }
    }
    Ok(boots)
}

/// Sector reads of a disk image, whatever its container.
enum Disk<'a> {
    File {
        file: File,
        path: &'a Path,
    },
    QemuImg {
        path: &'a Path,
        format: &'static str,
        scratch: tempfile::TempDir,
        reads: u32,
    },
}

impl Disk<'_> {
    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, RunError> {
        match self {
            Disk::File { file, path } => read_at(file, path, offset, len),
            Disk::QemuImg {
                path,
                format,
                scratch,
                reads,
            } => {
                // qemu-img dd copies whole `bs` blocks; 512 keeps any sector reachable. Its
                // `count` ends the copy (counted from the disk's start), `skip` starts it.
                let first = offset / 512;
                let end = (offset + len as u64).div_ceil(512);
                *reads += 1;
                let out: PathBuf = scratch.path().join(format!("read{reads}"));
                let mut arg_if = std::ffi::OsString::from("if=");
                arg_if.push(path.as_os_str());
                let mut arg_of = std::ffi::OsString::from("of=");
                arg_of.push(out.as_os_str());
                let result = Command::new("qemu-img")
                    .args(["dd", "-f", format, "-O", "raw", "bs=512"])
                    .arg(format!("skip={first}"))
                    .arg(format!("count={end}"))
                    .arg(arg_if)
                    .arg(arg_of)
                    .output()
                    .map_err(|source| RunError::Spawn {
                        program: "qemu-img".into(),
                        source,
                    })?;
                if !result.status.success() {
                    return Err(RunError::Tool {
                        program: "qemu-img dd".into(),
                        detail: format!(
                            "{}: {}",
                            path.display(),
                            String::from_utf8_lossy(&result.stderr).trim()
                        ),
                    });
                }
                let bytes = std::fs::read(&out).map_err(read_err(&out))?;
                let _ = std::fs::remove_file(&out);
                let start = (offset - first * 512) as usize;
                let mut buf = vec![0u8; len];
                if let Some(src) = bytes.get(start..) {
                    let n = src.len().min(len);
                    buf[..n].copy_from_slice(&src[..n]);
                }
                Ok(buf)
            }
        }
    }
}

/// What the disk inside `path` boots with.
pub fn disk_boots(path: &Path, container: Container) -> Result<Boots, RunError> {
    let mut disk = match container {
        Container::Raw | Container::Vpc { fixed: true } | Container::Iso => Disk::File {
            file: File::open(path).map_err(read_err(path))?,
            path,
        },
        other => Disk::QemuImg {
            path,
            format: other.qemu_format(),
            scratch: tempfile::tempdir().map_err(read_err(path))?,
            reads: 0,
        },
    };
    probe_disk(&mut disk)
}

/// The partitions that may hold a FAT file system, as byte offsets.
fn probe_disk(disk: &mut Disk) -> Result<Boots, RunError> {
    let mbr = disk.read(0, 512)?;
    let signed = mbr[510..512] == [0x55, 0xaa];
    let mut boots = Boots::default();
    if !signed {
        return Ok(boots);
    }
    // A FAT file system without partitions (a "superfloppy"): its boot sector's code is the
    // "not a bootable disk" stub that mkfs writes, not a boot loader.
    if is_fat_boot_sector(&mbr) {
        boots.uefi = fat_has(disk, 0, &["EFI", "BOOT", "BOOTX64.EFI"])?;
        return Ok(boots);
    }
    boots.bios = mbr[..440].iter().any(|&b| b != 0);
    let mut fat_partitions = Vec::new();
    let gpt = disk.read(512, 512)?;
    if gpt.starts_with(b"EFI PART") {
        let le32 =
            |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let entries_lba = u64::from_le_bytes(gpt[72..80].try_into().unwrap_or_default());
        let count = le32(&gpt, 80).min(1024) as usize;
        let size = le32(&gpt, 84) as usize;
        if (128..=4096).contains(&size) {
            let table = disk.read(entries_lba.saturating_mul(512), count * size)?;
            for entry in table.chunks(size) {
                if entry[..16] == ESP_TYPE {
                    let first = u64::from_le_bytes(entry[32..40].try_into().unwrap_or_default());
                    fat_partitions.push(first.saturating_mul(512));
                }
            }
        }
    } else {
        for p in 0..4 {
            let e = &mbr[446 + p * 16..][..16];
            // FAT12, FAT16 (small and large), FAT32 (CHS and LBA), FAT16 LBA, EFI system.
            if matches!(e[4], 0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e | 0xef) {
                let first = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
                fat_partitions.push(u64::from(first) * 512);
            }
        }
    }
    for offset in fat_partitions {
        if fat_has(disk, offset, &["EFI", "BOOT", "BOOTX64.EFI"])? {
            boots.uefi = true;
            break;
        }
    }
    Ok(boots)
}

/// C12A7328-F81F-11D2-BA4B-00A0C93EC93B, the EFI system partition, as GPT stores it.
const ESP_TYPE: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

fn is_fat_boot_sector(s: &[u8]) -> bool {
    let bps = u16::from_le_bytes([s[11], s[12]]);
    let spc = s[13];
    (s[0] == 0xeb || s[0] == 0xe9)
        && matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && (s[54..57] == *b"FAT" || s[82..85] == *b"FAT")
}

/// The geometry of a FAT file system, in bytes from the disk's start.
struct Fat {
    start: u64,
    cluster_bytes: u64,
    fat_offset: u64,
    data_offset: u64,
    /// FAT12/16: the fixed root directory (offset, bytes); FAT32: none, the root is a cluster.
    fixed_root: Option<(u64, u64)>,
    root_cluster: u32,
    bits: u8,
}

impl Fat {
    fn open(disk: &mut Disk, start: u64) -> Result<Option<Fat>, RunError> {
        let s = disk.read(start, 512)?;
        if s[510..512] != [0x55, 0xaa] || !is_fat_boot_sector(&s) {
            return Ok(None);
        }
        let le16 = |at: usize| u64::from(u16::from_le_bytes([s[at], s[at + 1]]));
        let le32 =
            |at: usize| u64::from(u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]));
        let bps = le16(11);
        let spc = u64::from(s[13]);
        let reserved = le16(14);
        let fats = u64::from(s[16]);
        let root_entries = le16(17);
        let total = if le16(19) != 0 { le16(19) } else { le32(32) };
        let fat_size = if le16(22) != 0 { le16(22) } else { le32(36) };
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let root_sector = reserved + fats * fat_size;
        let data_sector = root_sector + root_sectors;
        // Every offset must stay addressable, even with a partition start from a hostile table.
        let Some(end) = total
            .checked_mul(bps)
            .and_then(|bytes| bytes.checked_add(start))
            .filter(|end| *end <= i64::MAX as u64)
        else {
            return Ok(None);
        };
        if total <= data_sector || fats == 0 || end <= start {
            return Ok(None);
        }
        let clusters = (total - data_sector) / spc;
        let bits = if clusters < 4085 {
            12
        } else if clusters < 65525 {
            16
        } else {
            32
        };
        Ok(Some(Fat {
            start,
            cluster_bytes: bps * spc,
            fat_offset: start + reserved * bps,
            data_offset: start + data_sector * bps,
            fixed_root: (bits != 32).then_some((start + root_sector * bps, root_sectors * bps)),
            root_cluster: le32(44) as u32,
            bits,
        }))
    }

    fn next_cluster(&self, disk: &mut Disk, cluster: u32) -> Result<Option<u32>, RunError> {
        let c = u64::from(cluster);
        let (at, end) = match self.bits {
            12 => (c + c / 2, 0xff8),
            16 => (c * 2, 0xfff8),
            _ => (c * 4, 0x0fff_fff8),
        };
        let b = disk.read(self.fat_offset.saturating_add(at), 4)?;
        let raw = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let next = match self.bits {
            12 if cluster % 2 == 1 => (raw & 0xffff) >> 4,
            12 => raw & 0xfff,
            16 => raw & 0xffff,
            _ => raw & 0x0fff_ffff,
        };
        Ok((next >= 2 && next < end).then_some(next))
    }

    /// Looks `name` (8.3) up in the directory at `cluster` (`None`: the root). Returns the
    /// entry's first cluster and whether it is a directory.
    fn lookup(
        &self,
        disk: &mut Disk,
        cluster: Option<u32>,
        name: &str,
    ) -> Result<Option<(u32, bool)>, RunError> {
        let wanted = short_name(name);
        let mut cluster = match cluster {
            Some(c) => Some(c),
            None if self.bits == 32 => Some(self.root_cluster),
            None => None,
        };
        // A directory chain longer than this is corrupt (or a loop).
        for _ in 0..4096 {
            let (offset, len) = match cluster {
                Some(c) if c >= 2 => (
                    self.data_offset
                        .saturating_add(u64::from(c - 2) * self.cluster_bytes),
                    self.cluster_bytes,
                ),
                Some(_) => return Ok(None),
                None => self.fixed_root.unwrap_or((self.start, 0)),
            };
            let dir = disk.read(offset, len.min(1 << 20) as usize)?;
            for e in dir.chunks_exact(32) {
                match e[0] {
                    0 => return Ok(None),
                    0xe5 => continue,
                    _ => {}
                }
                let attr = e[11];
                if attr & 0x0f == 0x0f || attr & 0x08 != 0 {
                    continue;
                }
                if e[..11].eq_ignore_ascii_case(&wanted) {
                    let hi = if self.bits == 32 {
                        u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
                    } else {
                        0
                    };
                    let first = hi | u32::from(u16::from_le_bytes([e[26], e[27]]));
                    return Ok(Some((first, attr & 0x10 != 0)));
                }
            }
            cluster = match cluster {
                Some(c) => match self.next_cluster(disk, c)? {
                    Some(next) => Some(next),
                    None => return Ok(None),
                },
                None => return Ok(None),
            };
        }
        Ok(None)
    }
}

/// `BOOTX64.EFI` -> `BOOTX64 EFI` (the 8.3 directory entry form).
fn short_name(name: &str) -> [u8; 11] {
    let mut out = [b' '; 11];
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    for (o, b) in out[..8].iter_mut().zip(base.bytes()) {
        *o = b.to_ascii_uppercase();
    }
    for (o, b) in out[8..].iter_mut().zip(ext.bytes()) {
        *o = b.to_ascii_uppercase();
    }
    out
}

/// Whether the FAT file system at `start` holds the file at `path` (directories, then a file).
fn fat_has(disk: &mut Disk, start: u64, path: &[&str]) -> Result<bool, RunError> {
    let Some(fat) = Fat::open(disk, start)? else {
        return Ok(false);
    };
    let mut dir = None;
    for (i, name) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        match fat.lookup(disk, dir, name)? {
            Some((_, false)) if last => return Ok(true),
            Some((cluster, true)) if !last => dir = Some(cluster),
            _ => return Ok(false),
        }
    }
    Ok(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A FAT16 file system image of `sectors` sectors holding `EFI/BOOT/<file>`.
    pub(crate) fn fat16_with(file: &str) -> Vec<u8> {
        let sectors = 8192u32; // 4 MiB, one sector per cluster: 8000-odd clusters, FAT16
        let mut img = vec![0u8; sectors as usize * 512];
        let b = &mut img[..512];
        b[0..3].copy_from_slice(&[0xeb, 0x3c, 0x90]);
        b[3..11].copy_from_slice(b"SLIPWAY ");
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 1; // sectors per cluster
        b[14..16].copy_from_slice(&1u16.to_le_bytes()); // reserved
        b[16] = 2; // FATs
        b[17..19].copy_from_slice(&512u16.to_le_bytes()); // root entries
        b[19..21].copy_from_slice(&(sectors as u16).to_le_bytes());
        b[21] = 0xf8;
        b[22..24].copy_from_slice(&32u16.to_le_bytes()); // sectors per FAT
        b[54..62].copy_from_slice(b"FAT16   ");
        b[510..512].copy_from_slice(&[0x55, 0xaa]);
        // FAT: clusters 2 (EFI) and 3 (BOOT) end their chains.
        for fat in 0..2 {
            let f = (1 + fat * 32) * 512;
            img[f..f + 4].copy_from_slice(&[0xf8, 0xff, 0xff, 0xff]);
            img[f + 4..f + 8].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
            img[f + 8..f + 10].copy_from_slice(&[0xff, 0xff]);
        }
        let root = (1 + 2 * 32) * 512;
        let data = root + 512 * 32;
        let entry = |img: &mut Vec<u8>, at: usize, name: &str, dir: bool, cluster: u16| {
            img[at..at + 11].copy_from_slice(&short_name(name));
            img[at + 11] = if dir { 0x10 } else { 0x20 };
            img[at + 26..at + 28].copy_from_slice(&cluster.to_le_bytes());
        };
        // A volume label and a long-name record first: both must be skipped.
        entry(&mut img, root, "ESP", false, 0);
        img[root + 11] = 0x08;
        img[root + 32] = 0x41;
        img[root + 32 + 11] = 0x0f;
        entry(&mut img, root + 64, "EFI", true, 2);
        entry(&mut img, data, "BOOT", true, 3);
        entry(&mut img, data + 512, file, false, 4);
        img
    }

    fn probe_bytes(bytes: &[u8]) -> Boots {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, bytes).unwrap();
        disk_boots(&path, container(&path).unwrap()).unwrap()
    }

    /// A GPT disk of 8 MiB whose one partition (an ESP at 1 MiB) is `fat`; `code` goes into
    /// the MBR's boot code area.
    pub(crate) fn gpt_disk(fat: &[u8], code: &[u8]) -> Vec<u8> {
        let mut disk = vec![0u8; 8 << 20];
        disk[..code.len()].copy_from_slice(code);
        disk[446 + 4] = 0xee;
        disk[510..512].copy_from_slice(&[0x55, 0xaa]);
        let h = &mut disk[512..1024];
        h[..8].copy_from_slice(b"EFI PART");
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        let e = &mut disk[1024..1152];
        e[..16].copy_from_slice(&ESP_TYPE);
        e[32..40].copy_from_slice(&2048u64.to_le_bytes());
        e[40..48].copy_from_slice(&(2048u64 + fat.len() as u64 / 512 - 1).to_le_bytes());
        disk[1 << 20..(1 << 20) + fat.len()].copy_from_slice(fat);
        disk
    }

    #[test]
    fn magic_numbers_name_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, Vec<u8>, Container); 7] = [
            (
                "q",
                [b"QFI\xfb\0\0\0\x03".as_slice(), &[0; 504]].concat(),
                Container::Qcow2,
            ),
            (
                "x",
                [b"vhdxfile".as_slice(), &[0; 504]].concat(),
                Container::Vhdx,
            ),
            (
                "k",
                [b"KDMV".as_slice(), &[0; 508]].concat(),
                Container::Vmdk,
            ),
            (
                "d",
                [b"conectix".as_slice(), &[0; 1024]].concat(),
                Container::Vpc { fixed: false },
            ),
            (
                "f",
                [vec![0; 4096], b"conectix".to_vec(), vec![0; 504]].concat(),
                Container::Vpc { fixed: true },
            ),
            (
                "i",
                [vec![0; 32768], b"\x01CD001\x01".to_vec(), vec![0; 2041]].concat(),
                Container::Iso,
            ),
            ("r", vec![0; 4096], Container::Raw),
        ];
        for (name, bytes, want) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(container(&path).unwrap(), want, "{name}");
        }
    }

    #[test]
    fn a_gpt_disk_with_an_esp_boots_uefi_and_boot_code_adds_bios() {
        let fat = fat16_with("BOOTX64.EFI");
        assert_eq!(
            probe_bytes(&gpt_disk(&fat, &[])),
            Boots {
                bios: false,
                uefi: true
            }
        );
        assert_eq!(
            probe_bytes(&gpt_disk(&fat, &[0xfa, 0x33, 0xc0])),
            Boots {
                bios: true,
                uefi: true
            }
        );
        // An ESP without the removable-media loader does not make the disk boot UEFI.
        assert_eq!(
            probe_bytes(&gpt_disk(&fat16_with("GRUBX64.EFI"), &[])),
            Boots::default()
        );
    }

    #[test]
    fn an_mbr_disk_with_boot_code_boots_bios_and_a_superfloppy_esp_boots_uefi() {
        let mut mbr = vec![0u8; 2 << 20];
        mbr[..3].copy_from_slice(&[0xfa, 0x31, 0xc0]);
        mbr[446] = 0x80;
        mbr[446 + 4] = 0x0c;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(
            probe_bytes(&mbr),
            Boots {
                bios: true,
                uefi: false
            }
        );
        assert_eq!(
            probe_bytes(&fat16_with("BOOTX64.EFI")),
            Boots {
                bios: false,
                uefi: true
            }
        );
        assert_eq!(probe_bytes(&[0u8; 8192]), Boots::default());
    }

    #[test]
    fn hostile_tables_do_not_panic() {
        let fat = fat16_with("BOOTX64.EFI");
        let mut disk = gpt_disk(&fat, &[]);
        // Entries far past the end, absurd counts and sizes.
        disk[512 + 72..512 + 80].copy_from_slice(&u64::MAX.to_le_bytes());
        disk[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
        let _ = probe_bytes(&disk);
        let mut disk = gpt_disk(&fat, &[]);
        disk[1024 + 32..1024 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        let _ = probe_bytes(&disk);
        let mut fat = fat16_with("BOOTX64.EFI");
        fat[13] = 0; // zero sectors per cluster
        let _ = probe_bytes(&fat);
        let mut fat = fat16_with("BOOTX64.EFI");
        fat[22..24].copy_from_slice(&u16::MAX.to_le_bytes());
        let _ = probe_bytes(&fat);
    }

    #[test]
    fn wants_uefi_only_for_uefi_only_images_unless_forced() {
        let both = Boots {
            bios: true,
            uefi: true,
        };
        let uefi = Boots {
            bios: false,
            uefi: true,
        };
        assert!(!both.wants_uefi(false) && both.wants_uefi(true));
        assert!(uefi.wants_uefi(false));
        assert!(!Boots::default().wants_uefi(false));
    }
}
