//! `gcp`: `NAME.img.tar.gz`, the raw BIOS+EFI disk as `disk.raw` in a gzipped tar, the archive
//! Google Compute Engine's image import takes (`gcloud compute images create --source-uri`).
//!
//! Google documents the archive as what `tar --format=oldgnu -Sczf` makes, so the one member is
//! an old-GNU sparse file (type `S`): only the disk's data runs are stored, with a map of where
//! they go, and a mostly empty disk costs no time to compress. GNU tar and Google's importer
//! restore the holes as zeros. The member's time is the fixed [`super::vdisk::TIMESTAMP`], its
//! owner root, and the gzip header has no name or time, so the archive is reproducible.
//!
//! Compute Engine takes only disks whose size is a whole number of GiB, so [`convert`] refuses
//! any other size (the raw disk for `gcp` is built that large; being sparse, it costs nothing)
//! rather than padding it, which would leave a GPT's backup header short of the disk's end.

use std::io::Write;
use std::path::Path;

use super::parallel_gzip::ParallelGzip;
use super::staged::Staged;
use super::vdisk::{CHUNK, RawDisk, TIMESTAMP, VdiskError};

/// The member's name inside the archive, as Google requires.
pub const MEMBER: &str = "disk.raw";
/// The output file's suffix after `NAME`.
pub const SUFFIX: &str = ".img.tar.gz";

const BLOCK: usize = 512;
/// Sparse map entries in the member's header, and in each extension block after it.
const HEADER_ENTRIES: usize = 4;
const EXTENSION_ENTRIES: usize = 21;

/// The data runs of `raw`: (offset, length) of each run of non-zero chunks, in order.
fn data_runs(raw: &RawDisk) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for chunk in (0..raw.chunks()).filter(|&c| raw.is_used(c)) {
        let start = chunk * CHUNK;
        let len = (raw.size() - start).min(CHUNK);
        match runs.last_mut() {
            Some((offset, length)) if *offset + *length == start => *length += len,
            _ => runs.push((start, len)),
        }
    }
    runs
}

/// A numeric tar field: octal digits and a NUL when they fit, else GNU's base-256 form.
fn number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if value < 1 << (3 * digits) {
        let text = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(text.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        let bytes = value.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
    }
}

/// Writes the uncompressed tar of `raw` (one sparse member) to `w`.
pub fn write_tar(raw: &RawDisk, w: &mut impl Write) -> Result<(), VdiskError> {
    let err = || VdiskError::write("gcp archive");
    let runs = data_runs(raw);
    let stored: u64 = runs.iter().map(|(_, len)| len).sum();
    // The map ends with the disk's end when the disk ends in a hole, so its size survives.
    let mut map = runs.clone();
    if runs.last().is_none_or(|(o, l)| o + l < raw.size()) {
        map.push((raw.size(), 0));
    }

    let mut header = tar::Header::new_gnu();
    header.set_path(MEMBER).map_err(err())?;
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(TIMESTAMP);
    header.set_size(stored);
    header.set_entry_type(tar::EntryType::GNUSparse);
    let extensions: Vec<&[(u64, u64)]> = map
        .get(HEADER_ENTRIES..)
        .unwrap_or_default()
        .chunks(EXTENSION_ENTRIES)
        .collect();
    {
        let gnu = header.as_gnu_mut().ok_or_else(|| VdiskError::Write {
            what: "gcp archive",
            source: std::io::Error::other("not a GNU header"),
        })?;
        for (slot, (offset, len)) in gnu.sparse.iter_mut().zip(&map) {
            number(&mut slot.offset, *offset);
            number(&mut slot.numbytes, *len);
        }
        gnu.isextended[0] = u8::from(!extensions.is_empty());
        number(&mut gnu.realsize, raw.size());
    }
    header.set_cksum();
    w.write_all(header.as_bytes()).map_err(err())?;
    for (i, entries) in extensions.iter().enumerate() {
        let mut block = [0u8; BLOCK];
        for (j, (offset, len)) in entries.iter().enumerate() {
            number(&mut block[j * 24..j * 24 + 12], *offset);
            number(&mut block[j * 24 + 12..j * 24 + 24], *len);
        }
        block[504] = u8::from(i + 1 < extensions.len());
        w.write_all(&block).map_err(err())?;
    }

    let mut buf = vec![0u8; CHUNK as usize];
    for (offset, len) in runs {
        let mut at = offset;
        while at < offset + len {
            raw.read_chunk(at / CHUNK, &mut buf)?;
            let n = (offset + len - at).min(CHUNK) as usize;
            w.write_all(&buf[..n]).map_err(err())?;
            at += CHUNK;
        }
    }
    let pad = (BLOCK - (stored % BLOCK as u64) as usize) % BLOCK;
    // Padding to a whole block, then the two zero blocks that end an archive.
    w.write_all(&vec![0u8; pad + 2 * BLOCK]).map_err(err())
}

/// Writes `raw` as the gzipped archive Google's image import takes, and returns `w`.
pub fn write_gcp<W: Write>(raw: &RawDisk, w: W) -> Result<W, VdiskError> {
    let mut gz = ParallelGzip::new(w, flate2::Compression::new(6));
    write_tar(raw, &mut gz)?;
    gz.finish().map_err(VdiskError::write("gcp archive"))
}

/// Compute Engine's unit of disk size.
pub const GIB: u64 = 1 << 30;

/// Writes the raw disk at `raw` as `NAME.img.tar.gz`, staged at `out`.
pub fn convert(raw: &Path, out: &Path) -> Result<Staged, VdiskError> {
    let disk = RawDisk::open(raw)?;
    if !disk.size().is_multiple_of(GIB) {
        return Err(VdiskError::BadSize {
            path: raw.to_path_buf(),
            size: disk.size(),
            why: "Compute Engine imports only disks of a whole number of GiB".into(),
        });
    }
    let mut failure = None;
    let staged = Staged::write(out, |w| {
        write_gcp(&disk, w).map(|_| ()).map_err(|e| {
            failure = Some(e);
            super::FormatError::Io {
                what: format!("gcp archive {}", out.display()),
                source: std::io::Error::other("conversion failed"),
            }
        })
    });
    staged.map_err(|e| failure.take().unwrap_or(VdiskError::Output(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn numbers_switch_to_base_256_when_octal_runs_out() {
        let mut f = [0u8; 12];
        number(&mut f, 0o777);
        assert_eq!(&f, b"00000000777\0");
        number(&mut f, 10 << 30);
        assert_eq!(f[0], 0x80);
        assert_eq!(u64::from_be_bytes(f[4..].try_into().unwrap()), 10 << 30);
    }

    #[test]
    fn the_archive_holds_the_data_runs_and_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let file = std::fs::File::create(&path).unwrap();
        let size = 64u64 << 20;
        file.set_len(size).unwrap();
        use std::os::unix::fs::FileExt;
        // Six separate runs: the map needs an extension block.
        for i in 0..6u64 {
            file.write_all_at(b"run", i * (8 << 20) + 100).unwrap();
        }
        let raw = RawDisk::open(&path).unwrap();
        let mut tar = Vec::new();
        write_tar(&raw, &mut tar).unwrap();
        let header = &tar[..512];
        assert_eq!(&header[..8], b"disk.raw");
        assert_eq!(header[156], b'S');
        assert_eq!(header[482], 1, "isextended");
        // Header, extension, six 64 KiB runs, end of archive.
        assert_eq!(tar.len(), 512 * 2 + 6 * 65536 + 1024);

        let gz = write_gcp(&raw, Vec::new()).unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, tar);
        assert_eq!(gz, write_gcp(&raw, Vec::new()).unwrap());
    }
}
