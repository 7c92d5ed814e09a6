//! Download progress: one bar per blob on a terminal with the `progress` feature; without it
//! (the engine, whose output is a log) the same calls do nothing and indicatif is not linked.

use crate::digest::Digest;

/// The bars of one pull.
pub struct Progress {
    #[cfg(feature = "progress")]
    multi: indicatif::MultiProgress,
}

/// One blob's bar.
pub struct Bar {
    #[cfg(feature = "progress")]
    bar: indicatif::ProgressBar,
}

#[cfg(feature = "progress")]
impl Progress {
    /// Bars on a terminal, nothing when stderr is not one (CI logs stay clean).
    pub fn new() -> Progress {
        use std::io::IsTerminal;
        let multi = if std::io::stderr().is_terminal() {
            indicatif::MultiProgress::new()
        } else {
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        };
        Progress { multi }
    }

    pub fn bar(&self, digest: &Digest, size: u64) -> Bar {
        use indicatif::{ProgressBar, ProgressStyle};
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(digest.hex()[..12].to_string());
        Bar { bar }
    }
}

#[cfg(feature = "progress")]
impl Bar {
    pub fn inc(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(not(feature = "progress"))]
impl Progress {
    pub fn new() -> Progress {
        Progress {}
    }

    pub fn bar(&self, _digest: &Digest, _size: u64) -> Bar {
        Bar {}
    }
}

#[cfg(not(feature = "progress"))]
impl Bar {
    pub fn inc(&self, _bytes: u64) {}

    pub fn finish_and_clear(&self) {}
}
