//! The boot's timeline: when each step of the boot ended, in milliseconds since the kernel
//! started (CLOCK_BOOTTIME, the clock of the kernel's own log). At the end of the boot the init
//! prints it as one console line and keeps it in `/run/slipway/boot.json`, a JSON array of
//! `{"step": NAME, "ms": N}` in the order the steps happened.
//!
//! The console line reads `slipway-init: boot timeline (ms since the kernel started): kernel 812
//! | mounts 830 | ...`; `slipway run qemu --boot-report` parses it on the host.

use std::fs;
use std::io;
use std::path::Path;

use rustix::time::{ClockId, clock_gettime};

/// What precedes the steps on the console line (the host looks for it).
pub const LINE_PREFIX: &str = "boot timeline (ms since the kernel started): ";
pub const JSON_PATH: &str = "/run/slipway/boot.json";

fn ms(clock: ClockId) -> u64 {
    let t = clock_gettime(clock);
    (t.tv_sec.max(0) as u64) * 1000 + (t.tv_nsec.max(0) as u64) / 1_000_000
}

/// Milliseconds since the kernel started.
pub fn now_ms() -> u64 {
    ms(ClockId::Boottime)
}

/// Turns a wall-clock time (milliseconds since the epoch, as another process recorded it) into
/// milliseconds since the kernel started, through the two clocks' current offset. None for a
/// time before the boot (a clock set back since).
pub fn boot_ms_of_wall_clock(unix_ms: i64) -> Option<u64> {
    let offset = ms(ClockId::Realtime) as i64 - now_ms() as i64;
    u64::try_from(unix_ms - offset).ok()
}

#[derive(Debug, Default)]
pub struct Timeline {
    steps: Vec<(String, u64)>,
}

impl Timeline {
    /// A step that ended now.
    pub fn mark(&mut self, step: impl Into<String>) {
        self.mark_at(step, now_ms());
    }

    pub fn mark_at(&mut self, step: impl Into<String>, ms: u64) {
        self.steps.push((step.into(), ms));
    }

    pub fn line(&self) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(step, ms)| format!("{step} {ms}"))
            .collect();
        format!("{LINE_PREFIX}{}", steps.join(" | "))
    }

    /// `[{"step": NAME, "ms": N}, ...]`, keys in that order whatever serde_json's features.
    pub fn json(&self) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(step, ms)| {
                let step = serde_json::Value::String(step.clone());
                format!("{{\"step\":{step},\"ms\":{ms}}}")
            })
            .collect();
        format!("[{}]", steps.join(","))
    }

    pub fn save(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, self.json() + "\n")
    }
}

/// When the kernel finished unpacking the initramfs, from its log (`Freeing initrd memory`),
/// in milliseconds since it started. None when the record is not in the log (any more).
pub fn initramfs_unpacked_ms(kmsg: &Path) -> Option<u64> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // /dev/kmsg hands out one record per read and blocks at the end unless non-blocking.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(kmsg)
        .ok()?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => n,
            // EPIPE: records were overwritten under us; the next read goes on from the oldest.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => return None,
        };
        if let Some(ms) =
            parse_kmsg_record(&String::from_utf8_lossy(&buf[..n]), "Freeing initrd memory")
        {
            return Some(ms);
        }
    }
}

/// A /dev/kmsg record is `PRIO,SEQ,MICROSECONDS,FLAGS[,...];MESSAGE`; the time of the record
/// when its message starts with `message`.
fn parse_kmsg_record(record: &str, message: &str) -> Option<u64> {
    let (head, text) = record.split_once(';')?;
    if !text.starts_with(message) {
        return None;
    }
    let micros: u64 = head.split(',').nth(2)?.parse().ok()?;
    Some(micros / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_json_keep_the_steps_in_order() {
        let mut t = Timeline::default();
        t.mark_at("kernel", 812);
        t.mark_at("onboot 000-hello", 1500);
        assert_eq!(
            t.line(),
            "boot timeline (ms since the kernel started): kernel 812 | onboot 000-hello 1500"
        );
        assert_eq!(
            t.json(),
            r#"[{"step":"kernel","ms":812},{"step":"onboot 000-hello","ms":1500}]"#
        );
    }

    #[test]
    fn kmsg_records_give_their_time_in_ms() {
        let record = "6,321,1234567,-;Freeing initrd memory: 4096K\n";
        assert_eq!(
            parse_kmsg_record(record, "Freeing initrd memory"),
            Some(1234)
        );
        assert_eq!(parse_kmsg_record(record, "Run /init"), None);
        assert_eq!(parse_kmsg_record("garbage", "Freeing"), None);
        assert_eq!(parse_kmsg_record("6,1,x,-;Freeing", "Freeing"), None);
    }

    #[test]
    fn wall_clock_times_of_this_boot_convert_to_boot_time() {
        let wall = ms(ClockId::Realtime) as i64;
        let boot = boot_ms_of_wall_clock(wall).unwrap();
        assert!(boot.abs_diff(now_ms()) < 1000, "{boot} vs {}", now_ms());
        assert_eq!(boot_ms_of_wall_clock(0), None);
    }
}
