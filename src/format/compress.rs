//! Initrd compression: gzip (the default), zstd, xz or none, each set up so that the Linux
//! initramfs decompressors accept the stream and the same input always gives the same bytes.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use super::FormatError;
use super::parallel_gzip::ParallelGzip;

/// How an initrd is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    Xz,
    None,
}

impl Compression {
    pub const ALL: [Compression; 4] = [
        Compression::Gzip,
        Compression::Zstd,
        Compression::Xz,
        Compression::None,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::None => "none",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| FormatError::UnknownCompression(s.to_string()))
    }
}

/// zstd level: 19 would be ~3x slower to write for ~5% less; 9 is a fair trade for images that
/// are rebuilt often on small machines.
const ZSTD_LEVEL: i32 = 9;
/// xz preset 6 (8 MiB dictionary), the `xz` default; the kernel's decoder allocates the
/// dictionary on demand, so it needs no special preset.
const XZ_PRESET: u32 = 6;

/// One zstd worker per core, and at least one: the output of zero workers (compression on the
/// caller's thread) differs from that of one or more.
fn zstd_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(64) as u32)
}

/// A compressing writer; [`Encoder::finish`] ends the stream and returns the inner writer.
pub enum Encoder<W: Write> {
    Gzip(ParallelGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(liblzma::write::XzEncoder<W>),
    None(W),
}

impl<W: Write> Encoder<W> {
    /// `content_size`, when known, is recorded in the zstd frame header (the kernel's decoder
    /// does not need it, but it lets `zstd -l` and other tools size their buffers).
    pub fn new(compression: Compression, w: W, content_size: Option<u64>) -> io::Result<Self> {
        Ok(match compression {
            // One gzip member deflated on every core; no file name and mtime 0 in its header.
            Compression::Gzip => {
                Encoder::Gzip(ParallelGzip::new(w, flate2::Compression::default()))
            }
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(w, ZSTD_LEVEL)?;
                // One frame carrying its content size and an xxhash64 checksum, which the kernel's
                // unzstd verifies; tests/qemu.rs boots such an initrd.
                enc.include_checksum(true)?;
                enc.include_contentsize(content_size.is_some())?;
                enc.set_pledged_src_size(content_size)?;
                // Multi-threaded zstd writes one frame whose bytes do not depend on the number of
                // workers (only on there being at least one), so every machine gives the same
                // output.
                enc.multithread(zstd_workers())?;
                Encoder::Zstd(enc)
            }
            Compression::Xz => {
                // The kernel's xz decoder supports only the CRC32 (and no) integrity check, not
                // xz's default CRC64 or SHA-256.
                let stream = liblzma::stream::Stream::new_easy_encoder(
                    XZ_PRESET,
                    liblzma::stream::Check::Crc32,
                )
                .map_err(io::Error::other)?;
                Encoder::Xz(liblzma::write::XzEncoder::new_stream(w, stream))
            }
            Compression::None => Encoder::None(w),
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Xz(e) => e.finish(),
            Encoder::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Xz(e) => e.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Xz(e) => e.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut enc = Encoder::new(c, Vec::new(), Some(data.len() as u64)).unwrap();
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn every_compression_round_trips_and_is_deterministic() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in Compression::ALL {
            let a = compress(c, &data);
            assert_eq!(a, compress(c, &data), "{c} output differs between two runs");
            let mut back = Vec::new();
            match c {
                Compression::Gzip => flate2::read::GzDecoder::new(&a[..])
                    .read_to_end(&mut back)
                    .unwrap(),
                Compression::Zstd => zstd::stream::read::Decoder::new(&a[..])
                    .unwrap()
                    .read_to_end(&mut back)
                    .unwrap(),
                Compression::Xz => liblzma::read::XzDecoder::new(&a[..])
                    .read_to_end(&mut back)
                    .unwrap(),
                Compression::None => (&a[..]).read_to_end(&mut back).unwrap(),
            };
            assert_eq!(back, data, "{c} does not round-trip");
        }
    }

    #[test]
    fn zstd_output_does_not_depend_on_the_number_of_workers() {
        let data: Vec<u8> = (0..6_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 & 0x3f)
            .collect();
        let with = |workers: u32| {
            let mut enc = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).unwrap();
            enc.include_checksum(true).unwrap();
            enc.multithread(workers).unwrap();
            enc.write_all(&data).unwrap();
            enc.finish().unwrap()
        };
        let one = with(1);
        assert!(one == with(3), "3 workers give other bytes than 1");
        assert_eq!(compress(Compression::Zstd, &data), {
            let mut enc = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).unwrap();
            enc.include_checksum(true).unwrap();
            enc.include_contentsize(true).unwrap();
            enc.set_pledged_src_size(Some(data.len() as u64)).unwrap();
            enc.multithread(2).unwrap();
            enc.write_all(&data).unwrap();
            enc.finish().unwrap()
        });
    }

    #[test]
    fn gzip_header_has_no_time_and_no_name() {
        let gz = compress(Compression::Gzip, b"hello");
        assert_eq!(
            &gz[..4],
            &[0x1f, 0x8b, 8, 0],
            "FLG must not announce a file name"
        );
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "MTIME must be zero");
    }

    #[test]
    fn xz_uses_the_crc32_check_the_kernel_supports() {
        let xz = compress(Compression::Xz, b"hello");
        // Stream header: magic (6 bytes), then stream flags 0x00 and the check id (1 = CRC32).
        assert_eq!(&xz[6..8], &[0x00, 0x01]);
    }

    #[test]
    fn compression_names_parse_back() {
        for c in Compression::ALL {
            assert_eq!(c.name().parse::<Compression>().unwrap(), c);
        }
        assert!(
            matches!("lz4".parse::<Compression>(), Err(FormatError::UnknownCompression(s)) if s == "lz4")
        );
    }
}
