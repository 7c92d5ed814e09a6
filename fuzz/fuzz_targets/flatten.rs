//! Layer flattening on a tar built from fuzz input: a list of entries (names, link targets and
//! types chosen by the fuzzer, written byte for byte into the header, so hostile names such as
//! `../x`, `/etc`, `.wh..wh..opq` or a hard link to a missing file are all reachable) applied on
//! top of a tree that already holds another fuzzed layer. Every tar must give a tree or an error.
//!
//! An input starting with byte 0 is instead one raw layer (plain, gzip or zstd), so the corpus can
//! hold real tars: `printf '\0' | cat - layer.tar > corpus/flatten/NAME`.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use slipway_oci::{Tree, flatten::apply_tar_to_tree};

#[derive(Arbitrary, Debug)]
enum Kind {
    Regular,
    Directory,
    Symlink,
    Link,
    Char,
    Fifo,
    Other(u8),
}

#[derive(Arbitrary, Debug)]
struct Entry {
    name: Vec<u8>,
    link: Vec<u8>,
    kind: Kind,
    mode: u16,
    data: Vec<u8>,
    /// A PAX `path` record, which overrides the header's (truncated) name.
    pax_path: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    lower: Vec<Entry>,
    upper: Vec<Entry>,
    /// Cut the upper tar short by this many bytes (a truncated layer).
    truncate: u16,
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if let Some(path) = &e.pax_path {
            let _ = b.append_pax_extensions([("path", path.as_slice())]);
        }
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().expect("a GNU header");
            let n = e.name.len().min(gnu.name.len());
            gnu.name[..n].copy_from_slice(&e.name[..n]);
            let n = e.link.len().min(gnu.linkname.len());
            gnu.linkname[..n].copy_from_slice(&e.link[..n]);
        }
        h.set_entry_type(match e.kind {
            Kind::Regular => tar::EntryType::Regular,
            Kind::Directory => tar::EntryType::Directory,
            Kind::Symlink => tar::EntryType::Symlink,
            Kind::Link => tar::EntryType::Link,
            Kind::Char => tar::EntryType::Char,
            Kind::Fifo => tar::EntryType::Fifo,
            Kind::Other(b) => tar::EntryType::new(b),
        });
        h.set_size(e.data.len() as u64);
        h.set_mode(u32::from(e.mode));
        h.set_mtime(0);
        h.set_cksum();
        let _ = b.append(&h, e.data.as_slice());
    }
    b.into_inner().unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let (raw, structured) = match data.split_first() {
        Some((0, raw)) => (Some(raw), &[][..]),
        Some((_, rest)) => (None, rest),
        None => return,
    };
    if let Some(raw) = raw {
        if let Err(e) = apply_tar_to_tree(Tree::new(), "raw", raw.to_vec()) {
            let _ = e.to_string();
        }
        return;
    }
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(structured)) else {
        return;
    };
    let lower = tar_of(&input.lower);
    let Ok(tree) = apply_tar_to_tree(Tree::new(), "lower", lower) else {
        return;
    };
    let mut upper = tar_of(&input.upper);
    upper.truncate(upper.len().saturating_sub(usize::from(input.truncate)));
    if let Err(e) = apply_tar_to_tree(tree, "upper", upper) {
        let _ = e.to_string();
    }
});
