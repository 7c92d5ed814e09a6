//! A container's log: every line its stdout and stderr write (and the engine's own notes about
//! it), timestamped, kept in a bounded in-memory ring for `logs`, appended to a file
//! (`/var/log/NAME.log` in an image) and broadcast to the clients following it (`logs -f`).

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

/// Lines kept in memory per container.
pub const RING_LINES: usize = 1000;
/// A line longer than this is cut into pieces, so a writer that never ends a line cannot grow
/// the engine's memory.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug)]
pub struct Logs {
    path: PathBuf,
    /// The ring and the file are behind one lock, so a follower that takes a snapshot and
    /// subscribes under it misses no line and sees none twice.
    inner: Mutex<Inner>,
    followers: broadcast::Sender<String>,
}

#[derive(Debug)]
struct Inner {
    ring: VecDeque<String>,
    file: Option<fs::File>,
}

impl Logs {
    /// Opens (appending) the log file at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (followers, _) = broadcast::channel(RING_LINES);
        Ok(Self {
            path: path.to_owned(),
            inner: Mutex::new(Inner {
                ring: VecDeque::with_capacity(RING_LINES),
                file: Some(file),
            }),
            followers,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one line from `stream` (`stdout`, `stderr` or `engine`).
    pub fn push(&self, stream: &str, text: &str) {
        let line = format!(
            "{} {stream} {}\n",
            humantime::format_rfc3339_millis(SystemTime::now()),
            text.trim_end_matches(['\n', '\r'])
        );
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.ring.len() == RING_LINES {
            inner.ring.pop_front();
        }
        inner.ring.push_back(line.clone());
        if let Some(file) = &mut inner.file
            && let Err(e) = file.write_all(line.as_bytes())
        {
            // A full /var must not stop the container; the ring still has its output.
            tracing::warn!(
                "writing {}: {e}; the file log stops here",
                self.path.display()
            );
            inner.file = None;
        }
        let _ = self.followers.send(line);
    }

    /// The lines in the ring, oldest first.
    pub fn snapshot(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.ring.iter().cloned().collect()
    }

    /// The lines in the ring and a receiver for every line after them.
    pub fn follow(&self) -> (Vec<String>, broadcast::Receiver<String>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = self.followers.subscribe();
        (inner.ring.iter().cloned().collect(), receiver)
    }
}

/// Copies `reader` (a pipe from the container) into `logs` line by line until end of file.
pub async fn pump(mut reader: impl tokio::io::AsyncRead + Unpin, stream: &str, logs: &Logs) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            logs.push(stream, &String::from_utf8_lossy(&line));
        }
        while pending.len() >= MAX_LINE {
            let line: Vec<u8> = pending.drain(..MAX_LINE).collect();
            logs.push(stream, &String::from_utf8_lossy(&line));
        }
    }
    if !pending.is_empty() {
        logs.push(stream, &String::from_utf8_lossy(&pending));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_timestamped_bounded_and_written_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::open(&dir.path().join("var/log/web.log")).unwrap();
        let (_, mut follower) = logs.follow();
        let mut input = b"one\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        pump(&input[..], "stdout", &logs).await;
        let lines = logs.snapshot();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].ends_with(" stdout one\n"), "{}", lines[0]);
        assert!(humantime::parse_rfc3339(lines[0].split(' ').next().unwrap()).is_ok());
        assert_eq!(
            lines[2].trim_end().rsplit(' ').next().unwrap().len(),
            MAX_LINE
        );
        assert_eq!(lines[3].trim_end().rsplit(' ').next().unwrap().len(), 10);
        assert_eq!(follower.recv().await.unwrap(), lines[0]);
        let file = fs::read_to_string(logs.path()).unwrap();
        assert_eq!(file, lines.concat());

        for i in 0..RING_LINES + 5 {
            logs.push("stderr", &format!("line {i}"));
        }
        let lines = logs.snapshot();
        assert_eq!(lines.len(), RING_LINES);
        assert!(lines[0].ends_with(" stderr line 5\n"), "{}", lines[0]);
    }
}
