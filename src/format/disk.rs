//! Disk images as the bootable formats build them: a sparse byte array in memory ([`Disk`]) and
//! the partition tables around a filesystem (MBR through `mbrman`, GPT through `gpt`).
//!
//! A disk is mostly holes: a FAT's data region beyond its files, the space `--size` adds. [`Disk`]
//! keeps only the 64 KiB chunks something was written to, so a 4 GiB `--size` costs the files and
//! the FAT tables, and [`Disk::write_sparse`] seeks over the rest, leaving holes in the output
//! file. Converters to other disk formats (qcow2, VHD, VMDK) read [`Disk::chunks`] and
//! [`Disk::read_at`] instead of a raw file.
//!
//! Partition and disk GUIDs, MBR signatures and FAT volume ids come from [`Seed`], a hash of what
//! the disk holds: two builds of the same image give the same bytes, two different images give
//! different identifiers.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

use super::FormatError;

pub const SECTOR: u64 = 512;
pub const MIB: u64 = 1 << 20;
/// Partitions start at 1 MiB, as every partitioning tool aligns them today.
pub const PARTITION_START: u64 = MIB;
const CHUNK: u64 = 64 * 1024;

/// A sparse disk image in memory; unwritten bytes read as zeros. It is also a
/// `Read + Write + Seek` device, which is how `fatfs` and `gpt` write into it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    size: u64,
    chunks: BTreeMap<u64, Box<[u8]>>,
    pos: u64,
}

impl Disk {
    /// An all-zero disk of `size` bytes.
    pub fn new(size: u64) -> Disk {
        Disk {
            size,
            ..Disk::default()
        }
    }

    /// A disk holding exactly `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Disk {
        let mut disk = Disk::new(bytes.len() as u64);
        disk.write_at(0, bytes)
            .expect("the disk has the bytes' size");
        disk
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes `data` at `offset`; writing past the end is an error (a disk does not grow).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= self.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!(
                        "write of {} bytes at {offset} past the end of a {}-byte disk",
                        data.len(),
                        self.size
                    ),
                )
            })?;
        let mut at = offset;
        while at < end {
            let base = at - at % CHUNK;
            let from = (at - base) as usize;
            let n = ((CHUNK - (at - base)).min(end - at)) as usize;
            let src = &data[(at - offset) as usize..][..n];
            match self.chunks.get_mut(&base) {
                Some(chunk) => chunk[from..from + n].copy_from_slice(src),
                // Zeros over a hole change nothing: formatting a FAT zeroes its tables and
                // root directory, which must not make the whole volume resident.
                None if src.iter().all(|b| *b == 0) => {}
                None => {
                    let mut chunk = vec![0u8; CHUNK as usize].into_boxed_slice();
                    chunk[from..from + n].copy_from_slice(src);
                    self.chunks.insert(base, chunk);
                }
            }
            at += n as u64;
        }
        Ok(())
    }

    /// Fills `buf` from `offset`; bytes past the end read as zeros.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = offset.saturating_add(buf.len() as u64).min(self.size);
        let first = offset - offset % CHUNK;
        for (base, chunk) in self.chunks.range(first..end) {
            let from = offset.max(*base);
            let to = end.min(base + CHUNK);
            if from >= to {
                continue;
            }
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&chunk[(from - base) as usize..(to - base) as usize]);
        }
    }

    /// Copies the written parts of `other` into this disk at `offset` (a partition's
    /// filesystem into the disk that holds it).
    pub fn splice(&mut self, offset: u64, other: &Disk) -> io::Result<()> {
        if offset
            .checked_add(other.size)
            .is_none_or(|end| end > self.size)
        {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "a {}-byte filesystem does not fit at {offset} of a {}-byte disk",
                    other.size, self.size
                ),
            ));
        }
        for (base, chunk) in other.chunks() {
            let len = chunk.len().min((other.size - base) as usize);
            self.write_at(offset + base, &chunk[..len])?;
        }
        Ok(())
    }

    /// The written chunks in order, as (offset, bytes); everything else is zeros. The last chunk
    /// may reach past [`Disk::size`]: those bytes are zeros and not part of the disk.
    pub fn chunks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.chunks.iter().map(|(base, chunk)| (*base, &chunk[..]))
    }

    /// All bytes, holes included (for small images such as an El Torito FAT).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; self.size as usize];
        self.read_at(0, &mut bytes);
        bytes
    }

    /// Writes the disk to a fresh file `w` (positioned at 0): the written chunks, with holes in
    /// between, and `set_len` to give the file its full size. Returns the bytes written.
    pub fn write_sparse<W: Write + Seek>(
        &self,
        w: &mut W,
        set_len: impl FnOnce(&mut W, u64) -> io::Result<()>,
    ) -> io::Result<u64> {
        let mut written = 0;
        for (base, chunk) in self.chunks() {
            if chunk.iter().all(|b| *b == 0) {
                continue;
            }
            let len = chunk.len().min((self.size - base) as usize);
            w.seek(SeekFrom::Start(base))?;
            w.write_all(&chunk[..len])?;
            written += len as u64;
        }
        w.flush()?;
        set_len(w, self.size)?;
        Ok(written)
    }
}

impl Read for Disk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.size.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.read_at(self.pos, &mut buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Disk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Disk {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let to = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = to.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

/// The source of every identifier a disk or ISO carries: a SHA-256 of its contents, expanded
/// per use, so identifiers are reproducible and differ between images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed([u8; 32]);

impl Seed {
    /// The seed of the given parts (kernel, initrd, command line, ...), each length-prefixed so
    /// that moving bytes from one part to the next changes the seed.
    pub fn of(parts: &[&[u8]]) -> Seed {
        let mut h = Sha256::new();
        for part in parts {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        Seed(h.finalize().into())
    }

    /// 32 bytes for `purpose` (a disk GUID, a partition GUID, a volume id, ...).
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(purpose.as_bytes());
        h.finalize().into()
    }

    /// A version-4-shaped (random-looking) UUID for `purpose`.
    pub fn uuid(&self, purpose: &str) -> uuid::Uuid {
        let bytes: [u8; 16] = self.derive(purpose)[..16].try_into().expect("16 of 32");
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    pub fn u32(&self, purpose: &str) -> u32 {
        let d = self.derive(purpose);
        u32::from_le_bytes([d[0], d[1], d[2], d[3]])
    }

    pub fn u64(&self, purpose: &str) -> u64 {
        let d = self.derive(purpose);
        u64::from_le_bytes(d[..8].try_into().expect("8 of 32"))
    }
}

/// Rounds `n` up to a multiple of `unit`.
pub fn round_up(n: u64, unit: u64) -> u64 {
    n.div_ceil(unit) * unit
}

/// The disk size for a filesystem of at least `min_fs` bytes with `overhead` bytes of
/// partitioning around it: `requested` (`--size`) if it is large enough, else what fits, rounded
/// up to 1 MiB. A `--size` too small is an error naming both sizes.
pub fn disk_size(
    format: &str,
    min_fs: u64,
    overhead: u64,
    requested: Option<u64>,
) -> Result<u64, FormatError> {
    let needed = round_up(min_fs + overhead, MIB);
    match requested {
        None => Ok(needed),
        Some(size) if size >= needed => Ok(round_up(size, SECTOR)),
        Some(size) => Err(FormatError::SizeTooSmall {
            format: format.to_string(),
            requested: size,
            needed,
        }),
    }
}

/// An MBR disk of `size` bytes with one partition, `fs`, at 1 MiB: `kind` is the partition type
/// (0x0c FAT32 LBA, 0x0e FAT16 LBA), marked active; `bootcode` is the first 440 bytes.
pub fn mbr_disk(
    size: u64,
    fs: &Disk,
    kind: u8,
    bootcode: &[u8],
    seed: &Seed,
) -> Result<Disk, FormatError> {
    let err = |e: mbrman::Error| FormatError::Partition(format!("MBR: {e}"));
    let mut disk = Disk::new(size);
    disk.splice(PARTITION_START, fs)
        .map_err(FormatError::io("the partition"))?;
    let signature = seed.u32("mbr disk signature").to_le_bytes();
    let mut mbr = mbrman::MBR::new_from(&mut disk, SECTOR as u32, signature).map_err(err)?;
    mbr.header.bootstrap_code = bootcode_440(bootcode)?;
    let sectors = u32::try_from(fs.size() / SECTOR)
        .map_err(|_| FormatError::Partition("an MBR partition holds at most 2 TiB".into()))?;
    mbr[1] = mbrman::MBRPartitionEntry {
        boot: mbrman::BOOT_ACTIVE,
        first_chs: mbrman::CHS::empty(),
        sys: kind,
        last_chs: mbrman::CHS::empty(),
        starting_lba: (PARTITION_START / SECTOR) as u32,
        sectors,
    };
    mbr.write_into(&mut disk).map_err(err)?;
    Ok(disk)
}

/// The GPT type of an EFI system partition.
pub fn esp_type() -> gpt::partition_types::Type {
    gpt::partition_types::EFI
}

/// A GPT disk of `size` bytes with one partition, `fs`, at 1 MiB, ending 1 MiB before the end of
/// the disk (room for the backup table). The protective MBR carries `bootcode` (syslinux's
/// `gptmbr.bin` for a disk that also boots on a BIOS), and `legacy_bootable` sets the partition
/// attribute `gptmbr.bin` looks for.
pub fn gpt_disk(
    size: u64,
    fs: &Disk,
    name: &str,
    legacy_bootable: bool,
    bootcode: Option<&[u8]>,
    seed: &Seed,
) -> Result<Disk, FormatError> {
    let err = |e: gpt::GptError| FormatError::Partition(format!("GPT: {e}"));
    let mut disk = Disk::new(size);
    disk.splice(PARTITION_START, fs)
        .map_err(FormatError::io("the partition"))?;
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let mut gdisk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .create_from_device(disk, Some(seed.uuid("gpt disk guid")))
        .map_err(err)?;
    let first = PARTITION_START / SECTOR;
    let partition = gpt::partition::Partition {
        part_type_guid: esp_type(),
        part_guid: seed.uuid("gpt partition 1 guid"),
        first_lba: first,
        last_lba: first + fs.size() / SECTOR - 1,
        flags: if legacy_bootable {
            gpt::partition::PartitionAttributes::BOOTABLE.bits()
        } else {
            0
        },
        name: name.to_string(),
    };
    gdisk
        .update_partitions(BTreeMap::from([(1, partition)]))
        .map_err(err)?;
    let mut disk = gdisk.write().map_err(err)?;
    let mut mbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(size / SECTOR - 1).unwrap_or(u32::MAX));
    if let Some(code) = bootcode {
        mbr.set_bootcode(bootcode_440(code)?);
    }
    mbr.set_disk_signature(seed.u32("mbr disk signature").to_le_bytes());
    mbr.overwrite_lba0(&mut disk)
        .map_err(|e| FormatError::Partition(format!("protective MBR: {e}")))?;
    Ok(disk)
}

/// MBR boot code is at most 440 bytes (the disk signature and the table follow).
fn bootcode_440(code: &[u8]) -> Result<[u8; 440], FormatError> {
    if code.len() > 440 {
        return Err(FormatError::Partition(format!(
            "MBR boot code of {} bytes (at most 440 fit)",
            code.len()
        )));
    }
    let mut out = [0u8; 440];
    out[..code.len()].copy_from_slice(code);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_keeps_only_what_was_written() {
        let mut d = Disk::new(10 * MIB);
        d.write_at(3 * MIB + 5, b"hello").unwrap();
        d.write_at(0, &vec![0u8; MIB as usize]).unwrap();
        assert_eq!(d.chunks().count(), 1, "zeros over holes allocate nothing");
        let mut buf = [1u8; 9];
        d.read_at(3 * MIB + 3, &mut buf);
        assert_eq!(&buf, b"\0\0hello\0\0");
        assert!(d.write_at(10 * MIB - 2, b"abc").is_err());
        // A write across a chunk boundary lands in both chunks.
        d.write_at(CHUNK - 2, b"wxyz").unwrap();
        let mut buf = [0u8; 4];
        d.read_at(CHUNK - 2, &mut buf);
        assert_eq!(&buf, b"wxyz");
    }

    #[test]
    fn seeds_differ_by_content_and_purpose() {
        let a = Seed::of(&[b"kernel", b"initrd"]);
        let b = Seed::of(&[b"kernelinitrd", b""]);
        assert_ne!(a, b);
        assert_ne!(a.uuid("x"), a.uuid("y"));
        assert_eq!(a.uuid("x"), Seed::of(&[b"kernel", b"initrd"]).uuid("x"));
        assert_eq!(a.uuid("x").get_version_num(), 4);
    }

    #[test]
    fn a_size_too_small_names_both_sizes() {
        let err = disk_size("raw-efi", 30 * MIB, 2 * MIB, Some(MIB)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("1048576") && text.contains("33554432"),
            "{text}"
        );
        assert_eq!(
            disk_size("raw-efi", 30 * MIB + 1, 2 * MIB, None).unwrap(),
            33 * MIB
        );
    }
}
