//! Virtual disk containers: a raw disk image (`raw-bios`, `raw-efi`, the BIOS+EFI disk) rewritten
//! as qcow2 v3, a fixed or dynamic VHD, a dynamic VHDX or a streamOptimized VMDK, for the
//! hypervisors and clouds that will not take a raw file.
//!
//! These writers are hand-written on purpose: each container is a few fixed headers, an allocation
//! table and the data clusters, all laid out once in order, and no maintained crate writes them
//! (crates.md §5: the qcow2 crates read or need a live image, the vhd crate only reads, there is no
//! vmdk crate). Shelling out to `qemu-img` is what the build must not do.
//!
//! How every writer works:
//! - [`RawDisk::open`] scans the raw file once: it skips holes (`SEEK_DATA`/`SEEK_HOLE`), reads the
//!   rest in [`CHUNK`]s and notes which chunks hold a non-zero byte. Zero chunks are never stored
//!   in a sparse container, so a mostly empty 1 GiB disk gives a file of a few MiB.
//! - The same pass hashes the content (the size, then each non-zero chunk with its index), so two
//!   raw files with the same bytes give the same digest however sparse they are. Every identifier a
//!   container carries (VHD unique id, VHDX GUIDs, VMDK CID) is derived from that digest, and every
//!   time field is the fixed [`TIMESTAMP`]: two conversions of the same disk are byte-identical.
//! - A writer then streams its container to a [`Sink`] front to back, never seeking back: the
//!   allocation tables are computed from the scan before the first byte goes out. Zero runs
//!   (padding, zero sectors of a fixed VHD) go through [`Sink::write_zeros`], which leaves holes in
//!   a staged output file, so outputs are sparse too.
//!
//! Size rules (checked before anything is written): every raw disk is whole 512-byte sectors; VHDs
//! (fixed and dynamic) must be a whole number of MiB, which Azure demands of a fixed VHD and which
//! keeps a dynamic VHD's last 2 MiB block simple, and at most 2040 GiB (the VHD format's limit);
//! VHDX at most 64 TiB; qcow2 and VMDK take any whole-sector size.

pub mod qcow2;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

use std::fs::File;
use std::io::{self, BufWriter, Read as _, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::FormatError;
use super::staged::Staged;

/// The scan's granularity and the smallest unit any container stores (qcow2 clusters and VMDK
/// grains are this size; VHD and VHDX blocks are multiples of it).
pub const CHUNK: u64 = 64 * 1024;
/// A disk sector.
pub const SECTOR: u64 = 512;
/// The time written where a container wants one: 2017-04-18T16:30:00Z, the tree's default mtime.
pub const TIMESTAMP: u64 = crate::assemble::tree::DEFAULT_MTIME;
const MIB: u64 = 1 << 20;

/// A container format, with LinuxKit's `-f` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    /// Fixed VHD: the raw disk plus a 512-byte footer (Hyper-V generation 1, Azure).
    Vhd,
    /// Dynamic (sparse) VHD.
    DynamicVhd,
    /// Dynamic VHDX (Hyper-V generation 2).
    Vhdx,
    /// streamOptimized VMDK (VMware, VirtualBox, OVF imports).
    Vmdk,
}

/// The `-f` names this module writes, the output file's suffix after `NAME`, and the container.
/// `qcow2-bios` and `qcow2-efi` differ only in the raw disk they are given.
pub const FORMATS: &[(&str, &str, DiskFormat)] = &[
    ("qcow2-bios", ".qcow2", DiskFormat::Qcow2),
    ("qcow2-efi", "-efi.qcow2", DiskFormat::Qcow2),
    ("vhd", ".vhd", DiskFormat::Vhd),
    ("dynamic-vhd", "-dynamic.vhd", DiskFormat::DynamicVhd),
    ("vhdx", ".vhdx", DiskFormat::Vhdx),
    ("vmdk", ".vmdk", DiskFormat::Vmdk),
];

impl DiskFormat {
    /// The container of a LinuxKit `-f` name, with its output file name for `name`.
    pub fn from_format_name(format: &str, name: &str) -> Option<(DiskFormat, String)> {
        FORMATS
            .iter()
            .find(|(f, _, _)| *f == format)
            .map(|(_, suffix, kind)| (*kind, format!("{name}{suffix}")))
    }

    /// What QEMU calls the format (`-drive format=`, `qemu-img -f`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vhd | DiskFormat::DynamicVhd => "vpc",
            DiskFormat::Vhdx => "vhdx",
            DiskFormat::Vmdk => "vmdk",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vhd => "fixed VHD",
            DiskFormat::DynamicVhd => "dynamic VHD",
            DiskFormat::Vhdx => "VHDX",
            DiskFormat::Vmdk => "VMDK",
        }
    }
}

/// Errors of the container writers; each names the raw disk or the limit.
#[derive(Debug, thiserror::Error)]
pub enum VdiskError {
    #[error("reading the raw disk {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the raw disk {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("the raw disk {path} is {size} bytes: {why}")]
    BadSize {
        path: PathBuf,
        size: u64,
        why: String,
    },
    #[error("writing the {what}")]
    Write {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Output(#[from] FormatError),
}

impl VdiskError {
    pub(crate) fn write(what: &'static str) -> impl FnOnce(io::Error) -> VdiskError {
        move |source| VdiskError::Write { what, source }
    }
}

/// Where a container goes: a [`Write`] that can also skip zeros.
pub trait Sink: Write {
    /// Appends `len` zero bytes. The default writes them; a file leaves a hole instead.
    fn write_zeros(&mut self, len: u64) -> io::Result<()> {
        io::copy(&mut io::repeat(0).take(len), self).map(|_| ())
    }
}

impl Sink for Vec<u8> {}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn write_zeros(&mut self, len: u64) -> io::Result<()> {
        (**self).write_zeros(len)
    }
}

/// The staged output file: zeros become a hole. The file only ever grows at its end, so moving
/// the position forward and extending the length to it is the same as writing the zeros.
impl Sink for BufWriter<&File> {
    fn write_zeros(&mut self, len: u64) -> io::Result<()> {
        if len < 4096 {
            return io::copy(&mut io::repeat(0).take(len), self).map(|_| ());
        }
        self.flush()?;
        let mut file: &File = self.get_ref();
        let end = file.seek(SeekFrom::Current(len as i64))?;
        file.set_len(end)
    }
}

/// A raw disk image, scanned: its size, which [`CHUNK`]s hold data, and a digest of its content.
#[derive(Debug)]
pub struct RawDisk {
    path: PathBuf,
    file: File,
    size: u64,
    /// One bit per chunk, set when the chunk holds a non-zero byte.
    used: Vec<u64>,
    digest: [u8; 32],
}

impl RawDisk {
    /// Opens and scans `path`. Only whole 512-byte sectors make a disk.
    pub fn open(path: &Path) -> Result<RawDisk, VdiskError> {
        let read_err = |source| VdiskError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(VdiskError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let size = meta.len();
        if size == 0 || !size.is_multiple_of(SECTOR) {
            return Err(VdiskError::BadSize {
                path: path.to_path_buf(),
                size,
                why: "a disk is a non-zero number of whole 512-byte sectors".into(),
            });
        }
        let chunks = size.div_ceil(CHUNK);
        let mut disk = RawDisk {
            path: path.to_path_buf(),
            file,
            size,
            used: vec![0; chunks.div_ceil(64) as usize],
            digest: [0; 32],
        };
        disk.scan()?;
        Ok(disk)
    }

    /// Reads every chunk that may hold data (holes are skipped), in order, noting the non-zero
    /// ones and hashing them with their index.
    fn scan(&mut self) -> Result<(), VdiskError> {
        let mut hasher = Sha256::new();
        hasher.update(b"slipway raw disk v1\0");
        hasher.update(self.size.to_le_bytes());
        let mut buf = vec![0u8; CHUNK as usize];
        let mut next_chunk = 0u64;
        for (start, end) in
            data_extents(&self.file, self.size).map_err(|source| VdiskError::Read {
                path: self.path.clone(),
                source,
            })?
        {
            let first = (start / CHUNK).max(next_chunk);
            let last = end.div_ceil(CHUNK);
            for chunk in first..last {
                self.read_chunk_from_file(chunk, &mut buf)?;
                if buf.iter().any(|&b| b != 0) {
                    self.used[(chunk / 64) as usize] |= 1 << (chunk % 64);
                    hasher.update(chunk.to_le_bytes());
                    hasher.update(&buf);
                }
            }
            next_chunk = next_chunk.max(last);
        }
        self.digest = hasher.finalize().into();
        Ok(())
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many [`CHUNK`]s cover the disk (the last may be partial).
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(CHUNK)
    }

    /// Whether `chunk` holds a non-zero byte.
    pub fn is_used(&self, chunk: u64) -> bool {
        self.used
            .get((chunk / 64) as usize)
            .is_some_and(|w| w & (1 << (chunk % 64)) != 0)
    }

    /// Whether any chunk of the byte range `start..end` holds a non-zero byte.
    pub fn any_used(&self, start: u64, end: u64) -> bool {
        (start / CHUNK..end.min(self.size).div_ceil(CHUNK)).any(|c| self.is_used(c))
    }

    /// How many chunks hold data.
    pub fn used_chunks(&self) -> u64 {
        self.used.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Fills `buf` (one [`CHUNK`]) with chunk `chunk`: zeros for a zero chunk or past the end.
    pub fn read_chunk(&self, chunk: u64, buf: &mut [u8]) -> Result<(), VdiskError> {
        if self.is_used(chunk) {
            self.read_chunk_from_file(chunk, buf)
        } else {
            buf.fill(0);
            Ok(())
        }
    }

    fn read_chunk_from_file(&self, chunk: u64, buf: &mut [u8]) -> Result<(), VdiskError> {
        let offset = chunk * CHUNK;
        let len = (self.size - offset).min(CHUNK) as usize;
        buf[len..].fill(0);
        self.file
            .read_exact_at(&mut buf[..len], offset)
            .map_err(|source| VdiskError::Read {
                path: self.path.clone(),
                source,
            })
    }

    /// A content digest: the same for any two raw files with the same bytes.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// A 128-bit identifier for `purpose` (a field of some container), derived from the content
    /// and marked as an RFC 9562 version 8 (custom) UUID.
    pub fn uuid(&self, purpose: &str) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(self.digest);
        h.update(purpose.as_bytes());
        let hash = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash[..16]);
        id[6] = (id[6] & 0x0f) | 0x80;
        id[8] = (id[8] & 0x3f) | 0x80;
        id
    }

    /// Checks the disk's size against a container's limits.
    fn check_size(
        &self,
        format: DiskFormat,
        multiple: u64,
        max: u64,
        why: &str,
    ) -> Result<(), VdiskError> {
        if !self.size.is_multiple_of(multiple) || self.size > max {
            return Err(VdiskError::BadSize {
                path: self.path.clone(),
                size: self.size,
                why: format!("a {} {why}", format.describe()),
            });
        }
        Ok(())
    }
}

/// The byte ranges of `file` that may hold data, in order. Where the file system cannot say
/// (`SEEK_DATA` unsupported), the whole file.
fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom as RawSeek, seek};
    let mut extents = Vec::new();
    let mut offset = 0;
    while offset < size {
        let start = match seek(file, RawSeek::Data(offset)) {
            Ok(start) => start,
            // No data after `offset`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) if offset == 0 => {
                return Ok(vec![(0, size)]);
            }
            Err(e) => return Err(e.into()),
        };
        let end = seek(file, RawSeek::Hole(start))?.min(size);
        if end <= start {
            break;
        }
        extents.push((start, end));
        offset = end;
    }
    Ok(extents)
}

/// Writes `raw` as `format` to `w`.
pub fn write(format: DiskFormat, raw: &RawDisk, w: &mut impl Sink) -> Result<(), VdiskError> {
    match format {
        DiskFormat::Qcow2 => qcow2::write(raw, w),
        DiskFormat::Vhd => vhd::write_fixed(raw, w),
        DiskFormat::DynamicVhd => vhd::write_dynamic(raw, w),
        DiskFormat::Vhdx => vhdx::write(raw, w),
        DiskFormat::Vmdk => {
            let name = "disk.vmdk";
            vmdk::write(raw, name, w)
        }
    }
}

/// Converts the raw disk at `raw` into `format`, staged at `out` (persist it to rename it into
/// place). The one entry point `slipway build` needs:
/// `convert(DiskFormat::from_format_name("vhdx", name)?.0, &raw, &dir.join(file))`.
pub fn convert(format: DiskFormat, raw: &Path, out: &Path) -> Result<Staged, VdiskError> {
    let disk = RawDisk::open(raw)?;
    check(format, &disk)?;
    let mut failure = None;
    let staged = Staged::write(out, |w| {
        let result = match format {
            // The extent name in the descriptor is the file's own name, as VMware writes it.
            DiskFormat::Vmdk => {
                let name = out
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "disk.vmdk".into());
                vmdk::write(&disk, &name, w)
            }
            _ => write(format, &disk, w),
        };
        result.map_err(|e| {
            let what = format!("{} {}", format.describe(), out.display());
            failure = Some(e);
            FormatError::Io {
                what,
                source: io::Error::other("conversion failed"),
            }
        })
    });
    match staged {
        Ok(staged) => Ok(staged),
        Err(e) => Err(failure.take().unwrap_or(VdiskError::Output(e))),
    }
}

/// The size rules of `format`, checked before anything is written.
pub fn check(format: DiskFormat, raw: &RawDisk) -> Result<(), VdiskError> {
    match format {
        DiskFormat::Vhd | DiskFormat::DynamicVhd => raw.check_size(
            format,
            MIB,
            vhd::MAX_SIZE,
            "must be a whole number of MiB (Azure's rule for fixed VHDs, and whole 2 MiB \
             blocks for dynamic ones) and at most 2040 GiB",
        ),
        DiskFormat::Vhdx => raw.check_size(format, SECTOR, vhdx::MAX_SIZE, "is at most 64 TiB"),
        DiskFormat::Qcow2 => raw.check_size(format, SECTOR, qcow2::MAX_SIZE, "is at most 32 TiB"),
        DiskFormat::Vmdk => raw.check_size(format, SECTOR, vmdk::MAX_SIZE, "is at most 64 TiB"),
    }
}

/// Copies the raw disk's bytes `start..end` to `w`, zero chunks as [`Sink::write_zeros`] runs.
fn copy_range(raw: &RawDisk, start: u64, end: u64, w: &mut impl Sink) -> Result<(), VdiskError> {
    debug_assert!(start.is_multiple_of(CHUNK));
    let mut buf = vec![0u8; CHUNK as usize];
    let mut zeros = 0u64;
    let mut offset = start;
    while offset < end {
        let len = (end - offset).min(CHUNK);
        let chunk = offset / CHUNK;
        if raw.is_used(chunk) {
            if zeros > 0 {
                w.write_zeros(zeros).map_err(VdiskError::write("data"))?;
                zeros = 0;
            }
            raw.read_chunk(chunk, &mut buf)?;
            w.write_all(&buf[..len as usize])
                .map_err(VdiskError::write("data"))?;
        } else {
            zeros += len;
        }
        offset += len;
    }
    if zeros > 0 {
        w.write_zeros(zeros).map_err(VdiskError::write("data"))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sparse raw disk of `size` bytes with `data` written at each offset.
    pub(crate) fn raw_disk(dir: &Path, size: u64, data: &[(u64, &[u8])]) -> PathBuf {
        let path = dir.join("disk.raw");
        let file = File::create(&path).unwrap();
        file.set_len(size).unwrap();
        for (offset, bytes) in data {
            file.write_all_at(bytes, *offset).unwrap();
        }
        path
    }

    #[test]
    fn the_scan_finds_data_and_ignores_holes_and_written_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = raw_disk(
            dir.path(),
            4 * MIB,
            &[
                (0, b"boot"),
                (MIB, &[0u8; 100_000]),
                (3 * MIB + 5, b"x"),
                (4 * MIB - 512, b"end"),
            ],
        );
        let disk = RawDisk::open(&path).unwrap();
        let used: Vec<u64> = (0..disk.chunks()).filter(|&c| disk.is_used(c)).collect();
        assert_eq!(used, [0, 48, 63]);
        assert!(disk.any_used(3 * MIB, 4 * MIB) && !disk.any_used(MIB, 3 * MIB));
    }

    #[test]
    fn the_digest_depends_on_content_not_on_sparseness() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sparse = raw_disk(a.path(), MIB, &[(4096, b"data")]);
        let mut dense = vec![0u8; MIB as usize];
        dense[4096..4100].copy_from_slice(b"data");
        let dense_path = b.path().join("dense.raw");
        std::fs::write(&dense_path, &dense).unwrap();
        let (x, y) = (
            RawDisk::open(&sparse).unwrap(),
            RawDisk::open(&dense_path).unwrap(),
        );
        assert_eq!(x.digest(), y.digest());
        assert_eq!(x.uuid("a"), y.uuid("a"));
        assert_ne!(x.uuid("a"), x.uuid("b"));
        dense[0] = 1;
        std::fs::write(&dense_path, &dense).unwrap();
        assert_ne!(RawDisk::open(&dense_path).unwrap().digest(), x.digest());
    }

    #[test]
    fn a_disk_that_is_not_whole_sectors_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.raw");
        std::fs::write(&path, [1u8; 1000]).unwrap();
        let err = RawDisk::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("odd.raw") && err.contains("1000 bytes"),
            "{err}"
        );
        let missing = RawDisk::open(&dir.path().join("nope.raw"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.raw"), "{missing}");
    }

    #[test]
    fn zeros_become_holes_in_a_staged_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let staged = Staged::write(&path, |w| {
            w.write_all(b"head").unwrap();
            w.write_zeros(8 * MIB).unwrap();
            w.write_all(b"tail").unwrap();
            w.write_zeros(MIB).unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(staged.size(), 9 * MIB + 8);
        let path = staged.persist().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], b"head");
        assert_eq!(&bytes[8 * MIB as usize + 4..][..4], b"tail");
        assert!(bytes[4..8 * MIB as usize + 4].iter().all(|&b| b == 0));
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&path).unwrap().blocks();
        assert!(
            blocks * 512 < MIB,
            "{blocks} blocks: the zeros were written"
        );
    }
}
