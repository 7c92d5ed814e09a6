//! An initrd: the tree as a newc cpio, compressed, with the optional early-microcode cpio in front.
//!
//! Size limits are checked here so that a too-large image fails with a clear message at build time
//! instead of a missing-files or "initrd too large" surprise at boot (LinuxKit issue #3926):
//! a single file over 4 GiB - 1 cannot be described by newc at all, and the whole initrd must stay
//! below 4 GiB because the x86 boot protocol's `ramdisk_size` is 32 bits and the loaders (QEMU's
//! `-initrd`, GRUB, syslinux) use it. Uncompressed output is checked before anything is written;
//! compressed output is counted as it is produced, since its size is only known at the end.

use std::io::{self, Write};

use super::compress::{Compression, Encoder};
use super::{FormatError, cpio};
use crate::assemble::tree::Tree;

/// The largest initrd a loader can be handed (32-bit `ramdisk_size`).
pub const INITRD_LIMIT: u64 = u32::MAX as u64;

/// Writes the initrd of `tree` to `w` and returns `w`.
pub fn write_initrd<W: Write>(
    tree: &Tree,
    ucode: Option<&[u8]>,
    compression: Compression,
    w: W,
) -> Result<W, FormatError> {
    write_initrd_limited(tree, ucode, compression, INITRD_LIMIT, w)
}

/// [`write_initrd`] with a different size limit (a loader with a smaller window, or a test).
pub fn write_initrd_limited<W: Write>(
    tree: &Tree,
    ucode: Option<&[u8]>,
    compression: Compression,
    limit: u64,
    w: W,
) -> Result<W, FormatError> {
    let plan = cpio::plan(tree)?;
    let ucode = ucode.unwrap_or_default();
    if compression == Compression::None {
        let size = ucode.len() as u64 + plan.size();
        if size > limit {
            return Err(FormatError::InitrdTooLarge { size, limit });
        }
    }
    let mut counted = Limited {
        inner: w,
        written: 0,
        limit,
    };
    let result = (|| {
        counted.write_all(ucode)?;
        let enc = Encoder::new(compression, counted, Some(plan.size()))?;
        let enc = plan.write(enc)?;
        enc.finish()
    })();
    match result {
        Ok(counted) => Ok(counted.inner),
        Err(err) => match err.get_ref().and_then(|e| e.downcast_ref::<OverLimit>()) {
            Some(over) => Err(FormatError::InitrdTooLarge {
                size: over.size,
                limit,
            }),
            None => Err(FormatError::Io {
                what: format!("the {compression} initrd"),
                source: err,
            }),
        },
    }
}

/// Counts bytes on their way out and fails once they pass the limit.
struct Limited<W> {
    inner: W,
    written: u64,
    limit: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("initrd reached {size} bytes")]
struct OverLimit {
    size: u64,
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let size = self.written + buf.len() as u64;
        if size > self.limit {
            return Err(io::Error::other(OverLimit { size }));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::tree::Entry;

    fn tree_with(size: usize) -> Tree {
        let mut tree = Tree::new();
        // Pseudo-random (xorshift) content, so that compressed output grows with it.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        tree.insert("data", Entry::file(data, 0o644));
        tree
    }

    #[test]
    fn uncompressed_initrd_over_the_limit_is_refused_before_writing() {
        let tree = tree_with(10_000);
        let mut out = Vec::new();
        let err = write_initrd_limited(&tree, None, Compression::None, 4096, &mut out).unwrap_err();
        assert!(
            matches!(err, FormatError::InitrdTooLarge { limit: 4096, size } if size > 10_000),
            "{err}"
        );
        assert!(
            out.is_empty(),
            "nothing may be written when the size is known to be too large"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("iso") && msg.contains("4096"),
            "message must give the limit and a hint: {msg}"
        );
    }

    #[test]
    fn compressed_initrd_over_the_limit_is_refused_with_its_size() {
        let tree = tree_with(200_000);
        let err =
            write_initrd_limited(&tree, None, Compression::Gzip, 50_000, io::sink()).unwrap_err();
        assert!(
            matches!(err, FormatError::InitrdTooLarge { limit: 50_000, size } if size > 50_000),
            "{err}"
        );
    }

    #[test]
    fn ucode_comes_first_uncompressed() {
        let tree = tree_with(100);
        let ucode = b"070701-pretend-ucode-cpio".to_vec();
        let out = write_initrd(&tree, Some(&ucode), Compression::Gzip, Vec::new()).unwrap();
        assert_eq!(&out[..ucode.len()], &ucode[..]);
        assert_eq!(&out[ucode.len()..ucode.len() + 2], &[0x1f, 0x8b]);
    }

    #[test]
    fn file_over_four_gib_is_refused_with_its_name() {
        let err = cpio::check_file_size("var/lib/huge.img", 5 << 30).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("var/lib/huge.img") && msg.contains("5368709120"),
            "{msg}"
        );
        cpio::check_file_size("ok", u32::MAX as u64).unwrap();
    }
}
