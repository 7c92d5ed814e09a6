//! Gzip on every core, in the way pigz does it, with output that does not depend on the number of
//! cores.
//!
//! The input is cut into pieces of [`PIECE`] bytes at fixed offsets. Each piece is deflated on its
//! own thread, primed with the last 32 KiB of the piece before it (so back-references reach across
//! the cut as in a one-thread stream), and ended with a sync flush: an empty stored block that
//! brings the bit stream to a byte boundary, so the pieces concatenate into one valid deflate
//! stream. Only the last piece ends the stream. The CRC-32 of the trailer is combined from the
//! pieces' CRCs. The result is a single ordinary gzip member: the kernel's initramfs gunzip, GNU
//! gzip and every inflater read it as any other.
//!
//! Cut points, dictionaries and levels depend only on the input, so the same input gives the same
//! bytes on a machine with one core or sixty-four; a piece is deflated only once the data after it
//! has started, so the last piece is always known to be last.
//!
//! The deflating itself is flate2's (zlib-rs); this module only schedules it. A crate such as
//! gzp cuts its blocks where the caller happens to flush and needs a C zlib for dictionaries, which
//! would make the output depend on how the archive is written.

use std::io::{self, Write};
use std::thread;

use flate2::{Compress, Compression, FlushCompress, Status};

/// Input bytes per piece: large enough that the per-piece restart costs nothing measurable
/// (about 0.1% at level 6), small enough that a 5 MB initrd still spreads over a few cores.
pub const PIECE: usize = 1 << 20;
/// Deflate's window: how much of the previous piece primes the next.
const WINDOW: usize = 32 * 1024;

/// A gzip writer that deflates pieces of its input in parallel. [`ParallelGzip::finish`] ends
/// the stream and returns the inner writer.
pub struct ParallelGzip<W: Write> {
    inner: W,
    level: Compression,
    threads: usize,
    /// Full pieces waiting to be deflated, none of them the last.
    pending: Vec<Vec<u8>>,
    /// The piece being filled.
    current: Vec<u8>,
    /// The last [`WINDOW`] bytes before `pending[0]` (or `current`).
    window: Vec<u8>,
    crc: crc32fast::Hasher,
    total: u64,
    header_written: bool,
}

impl<W: Write> ParallelGzip<W> {
    /// A writer with one thread per available core.
    pub fn new(inner: W, level: Compression) -> Self {
        let threads = thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(inner, level, threads)
    }

    /// A writer with `threads` threads (at least one); the output does not depend on it.
    pub fn with_threads(inner: W, level: Compression, threads: usize) -> Self {
        ParallelGzip {
            inner,
            level,
            threads: threads.max(1),
            pending: Vec::new(),
            current: Vec::with_capacity(PIECE),
            window: Vec::new(),
            crc: crc32fast::Hasher::new(),
            total: 0,
            header_written: false,
        }
    }

    /// Deflates what is left as the last piece, writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let last = std::mem::take(&mut self.current);
        self.pending.push(last);
        self.deflate_pending(true)?;
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.clone().finalize().to_le_bytes());
        // ISIZE is the input length modulo 2^32 (RFC 1952).
        trailer[4..].copy_from_slice(&(self.total as u32).to_le_bytes());
        self.inner.write_all(&trailer)?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    /// Deflates every pending piece, in parallel, and writes them in order. With `last`, the
    /// final pending piece ends the stream.
    fn deflate_pending(&mut self, last: bool) -> io::Result<()> {
        if !self.header_written {
            // No name, no time (MTIME 0), unknown OS: nothing of the build host or the hour.
            self.inner
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
            self.header_written = true;
        }
        let pieces = std::mem::take(&mut self.pending);
        let count = pieces.len();
        let level = self.level;
        let window = std::mem::take(&mut self.window);
        if count == 0 {
            return Ok(());
        }
        let results: Vec<io::Result<(Vec<u8>, crc32fast::Hasher)>> = thread::scope(|scope| {
            let handles: Vec<_> = (1..count)
                .map(|i| {
                    let (dict, piece) = (tail(&pieces[i - 1]), &pieces[i]);
                    let is_last = last && i + 1 == count;
                    scope.spawn(move || deflate_piece(level, dict, piece, is_last))
                })
                .collect();
            // The first piece is deflated on this thread while the others run.
            let mut results = vec![deflate_piece(
                level,
                &window,
                &pieces[0],
                last && count == 1,
            )];
            for handle in handles {
                results.push(
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("a gzip thread panicked"))),
                );
            }
            results
        });
        for result in results {
            let (bytes, crc) = result?;
            self.inner.write_all(&bytes)?;
            self.crc.combine(&crc);
        }
        if let Some(piece) = pieces.last() {
            self.window = tail(piece).to_vec();
        }
        Ok(())
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.current.len() == PIECE {
            // More data follows this full piece, so it is not the last one.
            let full = std::mem::replace(&mut self.current, Vec::with_capacity(PIECE));
            self.pending.push(full);
            if self.pending.len() >= self.threads {
                self.deflate_pending(false)?;
            }
        }
        let n = buf.len().min(PIECE - self.current.len());
        self.current.extend_from_slice(&buf[..n]);
        self.total += n as u64;
        Ok(n)
    }

    /// Data is only ever written in whole pieces (the cut points must not depend on flushes),
    /// so a flush reaches the inner writer with what is already deflated.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The last [`WINDOW`] bytes of a piece.
fn tail(piece: &[u8]) -> &[u8] {
    &piece[piece.len().saturating_sub(WINDOW)..]
}

/// One piece as raw deflate, primed with `dict`, ending with a sync flush or, for the last piece,
/// the final block; with the piece's CRC-32.
fn deflate_piece(
    level: Compression,
    dict: &[u8],
    piece: &[u8],
    last: bool,
) -> io::Result<(Vec<u8>, crc32fast::Hasher)> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(piece);
    let mut deflate = Compress::new(level, false);
    if !dict.is_empty() {
        deflate.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(piece.len() / 2 + 64);
    let mut input = piece;
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let before = deflate.total_in();
        let status = deflate
            .compress_vec(input, &mut out, flush)
            .map_err(io::Error::other)?;
        input = &input[(deflate.total_in() - before) as usize..];
        let done = match status {
            Status::StreamEnd => true,
            // A sync flush is complete once all input is in and the output had room to spare.
            _ if !last => input.is_empty() && out.len() < out.capacity(),
            _ => false,
        };
        if done {
            return Ok((out, crc));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Compressible but not trivial data: text with a counter, and some noise.
    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut out = Vec::with_capacity(len);
        let mut i = 0u64;
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(format!("line {i} of the sample {}\n", x % 1000).as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn gzip(data: &[u8], threads: usize, write_size: usize) -> Vec<u8> {
        let mut gz = ParallelGzip::with_threads(Vec::new(), Compression::default(), threads);
        for chunk in data.chunks(write_size.max(1)) {
            gz.write_all(chunk).unwrap();
            gz.flush().unwrap();
        }
        gz.finish().unwrap()
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        // A plain (single-member) decoder: the output must be one gzip member.
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn round_trips_at_every_size_around_the_piece_boundaries() {
        for len in [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE, 3 * PIECE + 17] {
            let data = sample(len);
            let gz = gzip(&data, 3, 100_000);
            assert_eq!(gunzip(&gz), data, "length {len}");
        }
    }

    #[test]
    fn output_depends_on_the_input_only() {
        let data = sample(5 * PIECE + 12345);
        let one = gzip(&data, 1, data.len());
        for (threads, write_size) in [(2, 4096), (4, PIECE), (7, 999_999), (64, 1)] {
            // Byte-at-a-time writes are slow in a debug build: only a short prefix for those.
            let input = if write_size == 1 {
                &data[..PIECE + 10]
            } else {
                &data[..]
            };
            let expected = if write_size == 1 {
                gzip(input, 1, input.len())
            } else {
                one.clone()
            };
            assert!(
                gzip(input, threads, write_size) == expected,
                "{threads} threads, writes of {write_size}"
            );
        }
    }

    #[test]
    fn costs_about_what_one_stream_costs() {
        let data = sample(4 * PIECE);
        let parallel = gzip(&data, 4, PIECE).len();
        let mut single = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap().len();
        assert!(
            parallel <= single + single / 100,
            "parallel {parallel} bytes vs one stream {single}"
        );
    }
}
