//! A container's log: every line its stdout and stderr write (and the engine's own notes about
//! it), timestamped, kept in a bounded in-memory ring for `logs`, appended to a file
//! (`/var/log/NAME.log` in an image) and broadcast to the clients following it (`logs -f`).
//! The file is rotated like Docker's json-file driver with `max-size` and `max-file`: past
//! [`Rotation::max_size`] it becomes `NAME.log.1` (the older ones shift to `.2`, ...), and at
//! most [`Rotation::old_files`] old files are kept, so a chatty service cannot fill `/var`.
//! Hand-written: the rotation crates bring date and compression dependencies the image's one
//! binary does not need for a rename chain.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

/// Lines kept in memory per container.
pub const RING_LINES: usize = 1000;
/// A line longer than this is cut into pieces, so a writer that never ends a line cannot grow
/// the engine's memory.
pub const MAX_LINE: usize = 16 * 1024;

/// When a log file is rotated and how many old ones are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// A file reaching this many bytes is rotated before the next line.
    pub max_size: u64,
    /// Rotated files kept besides the current one (`NAME.log.1` .. `NAME.log.N`).
    pub old_files: u32,
}

impl Default for Rotation {
    /// Docker's usual production setting: 10 MiB, three files in all.
    fn default() -> Self {
        Self {
            max_size: 10 * 1024 * 1024,
            old_files: 2,
        }
    }
}

#[derive(Debug)]
pub struct Logs {
    path: PathBuf,
    rotation: Rotation,
    /// The ring and the file are behind one lock, so a follower that takes a snapshot and
    /// subscribes under it misses no line and sees none twice.
    inner: Mutex<Inner>,
    followers: broadcast::Sender<String>,
}

#[derive(Debug)]
struct Inner {
    ring: VecDeque<String>,
    file: Option<fs::File>,
    /// Bytes in the current file.
    size: u64,
}

impl Logs {
    /// Opens (appending) the log file at `path`, rotated by the default [`Rotation`].
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_with(path, Rotation::default())
    }

    /// Opens (appending) the log file at `path`, rotated by `rotation`.
    pub fn open_with(path: &Path, rotation: Rotation) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = append(path)?;
        let size = file.metadata()?.len();
        let (followers, _) = broadcast::channel(RING_LINES);
        Ok(Self {
            path: path.to_owned(),
            rotation,
            inner: Mutex::new(Inner {
                ring: VecDeque::with_capacity(RING_LINES),
                file: Some(file),
                size,
            }),
            followers,
        })
    }

    /// `NAME.log.N`.
    fn old(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Shifts `NAME.log` to `NAME.log.1`, `.1` to `.2` and so on, dropping the oldest, and
    /// opens a new empty `NAME.log`.
    fn rotate(&self) -> io::Result<fs::File> {
        let keep = self.rotation.old_files;
        if keep == 0 {
            let file = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&self.path)?;
            return Ok(file);
        }
        match fs::remove_file(self.old(keep)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..keep).rev() {
            match fs::rename(self.old(n), self.old(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(&self.path, self.old(1))?;
        append(&self.path)
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
        if inner.file.is_some()
            && inner.size > 0
            && inner.size + line.len() as u64 > self.rotation.max_size
        {
            match self.rotate() {
                Ok(file) => {
                    inner.file = Some(file);
                    inner.size = 0;
                }
                Err(e) => {
                    tracing::warn!(
                        "rotating {}: {e}; the file log stops here",
                        self.path.display()
                    );
                    inner.file = None;
                }
            }
        }
        let written = match &mut inner.file {
            Some(file) => file.write_all(line.as_bytes()),
            None => Ok(()),
        };
        inner.size += line.len() as u64;
        if let Err(e) = written {
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

fn append(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new().create(true).append(true).open(path)
}

/// A container's stdout or stderr: a regular file the container appends to
/// (`STATE/output/ID.stdout`), which the engine reads behind it into the [`Logs`].
///
/// A file rather than a pipe so that the output outlives the engine: a container's pipe would
/// lose its reader when the engine dies, and its next write would kill it with SIGPIPE. A
/// restarted engine reopens the file and goes on from the offset saved beside it (`.pos`,
/// after each complete line). The part already read is given back to the file system with
/// `FALLOC_FL_PUNCH_HOLE`, so the file takes no more room than what is not read yet; its
/// offsets stay, so the container's appends are never disturbed.
#[derive(Debug)]
pub struct Output {
    file: fs::File,
    path: PathBuf,
    /// Bytes read so far.
    offset: u64,
    /// The start of a line not ended yet.
    pending: Vec<u8>,
}

impl Output {
    /// `DIR/ID.stdout` or `DIR/ID.stderr`.
    pub fn path(dir: &Path, id: &str, stream: &str) -> PathBuf {
        dir.join(format!("{id}.{stream}"))
    }

    fn pos_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".pos");
        PathBuf::from(name)
    }

    /// Creates an empty file at `path` for a new run (its container is given it to append
    /// to), and opens it for reading from the start.
    pub fn create(path: &Path) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let _ = fs::remove_file(Self::pos_path(path));
        fs::write(path, b"")?;
        Self::open(path)
    }

    /// Opens the file of a running container for reading where the last reader stopped.
    pub fn open(path: &Path) -> io::Result<Self> {
        // Written to only by punching out what was read, which needs a writable descriptor.
        let file = fs::OpenOptions::new().read(true).write(true).open(path)?;
        let offset = fs::read_to_string(Self::pos_path(path))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        Ok(Self {
            file,
            path: path.to_owned(),
            offset,
            pending: Vec::new(),
        })
    }

    /// Moves every complete line written since the last call into `logs` (and, with `all`,
    /// an unfinished last line too). Returns whether anything was read.
    pub fn drain(&mut self, stream: &str, logs: &Logs, all: bool) -> bool {
        use std::os::unix::fs::FileExt;
        let mut chunk = [0u8; 16 * 1024];
        let mut read = false;
        loop {
            let n = match self.file.read_at(&mut chunk, self.offset) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            read = true;
            self.offset += n as u64;
            self.pending.extend_from_slice(&chunk[..n]);
            while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                logs.push(stream, &String::from_utf8_lossy(&line));
            }
            while self.pending.len() >= MAX_LINE {
                let line: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
                logs.push(stream, &String::from_utf8_lossy(&line));
            }
        }
        if all && !self.pending.is_empty() {
            logs.push(stream, &String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
        if read || all {
            let done = self.offset - self.pending.len() as u64;
            // Best effort: without it a restarted engine repeats some lines.
            let _ = fs::write(Self::pos_path(&self.path), done.to_string());
            // Whole blocks only: a punched partial block reads as zeros, not as a hole.
            let end = done & !4095;
            if end > 0 {
                let _ = rustix::fs::fallocate(
                    &self.file,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    0,
                    end,
                );
            }
        }
        read
    }

    /// Removes the file and its offset (the run is over and read to its end).
    pub fn remove(self) {
        let _ = fs::remove_file(Self::pos_path(&self.path));
        let _ = fs::remove_file(&self.path);
    }
}

/// How often [`follow_outputs`] looks for new output.
pub const OUTPUT_POLL: Duration = Duration::from_millis(100);

/// Reads the container's outputs into `logs` until `stop` fires (or its sender goes away),
/// then reads them to their end and removes them. Polled rather than watched with inotify:
/// a regular file gives no end-of-file wake-up, and a tenth of a second is soon enough for a
/// log.
pub async fn follow_outputs(
    mut outputs: Vec<(Output, &'static str)>,
    logs: std::sync::Arc<Logs>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        for (output, stream) in &mut outputs {
            output.drain(stream, &logs, false);
        }
        tokio::select! {
            () = tokio::time::sleep(OUTPUT_POLL) => {}
            _ = &mut stop => break,
        }
    }
    for (mut output, stream) in outputs {
        output.drain(stream, &logs, true);
        output.remove();
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

    #[test]
    fn a_log_over_its_cap_is_rotated_keeping_n_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        // An old file from an earlier run, already over the cap, is rotated first.
        fs::write(&path, vec![b'o'; 5000]).unwrap();
        let rotation = Rotation {
            max_size: 4096,
            old_files: 2,
        };
        let logs = Logs::open_with(&path, rotation).unwrap();
        let text = "y".repeat(100);
        for i in 0..1000 {
            logs.push("stdout", &format!("{i:04} {text}"));
        }
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["web.log", "web.log.1", "web.log.2"]);
        let mut total = 0;
        for name in &names {
            let size = fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(size > 0 && size <= rotation.max_size, "{name}: {size}");
            total += size;
        }
        assert!(total <= 3 * rotation.max_size);
        // The newest lines are in the current file, the ones before them in .1, whole.
        let current = fs::read_to_string(&path).unwrap();
        assert!(
            current.ends_with(&format!(" stdout 0999 {text}\n")),
            "{current}"
        );
        let older = fs::read_to_string(logs.old(1)).unwrap();
        let last_old = older.lines().last().unwrap();
        let first_new = current.lines().next().unwrap();
        let number = |line: &str| -> u32 { line.split(' ').nth(2).unwrap().parse().unwrap() };
        assert_eq!(number(last_old) + 1, number(first_new));
        assert!(!fs::read_to_string(logs.old(2)).unwrap().starts_with("ooo"));
    }

    #[test]
    fn output_is_read_on_by_a_new_reader_without_loss_or_repeats_and_read_parts_are_freed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = Output::path(dir.path(), "service-web", "stdout");
        let logs = Logs::open(&dir.path().join("web.log")).unwrap();
        let mut first = Output::create(&path).unwrap();
        let mut writer = fs::OpenOptions::new().append(true).open(&path).unwrap();
        let text = "z".repeat(200);
        for i in 0..100 {
            writeln!(writer, "{i:03} {text}").unwrap();
        }
        write!(writer, "100 half").unwrap();
        assert!(first.drain("stdout", &logs, false));
        assert_eq!(logs.snapshot().len(), 100);
        // Whole blocks already read are given back: the file is sparse now.
        let meta = fs::metadata(&path).unwrap();
        assert!(meta.blocks() * 512 < meta.len(), "{meta:?}");
        // Another engine (the first one died) reads on from the saved offset.
        drop(first);
        let mut second = Output::open(&path).unwrap();
        writeln!(writer, " done").unwrap();
        writeln!(writer, "101 last").unwrap();
        assert!(second.drain("stdout", &logs, false));
        let lines = logs.snapshot();
        assert_eq!(lines.len(), 102, "{lines:?}");
        assert!(
            lines[100].ends_with(" stdout 100 half done\n"),
            "{}",
            lines[100]
        );
        assert!(lines[101].ends_with(" stdout 101 last\n"), "{}", lines[101]);
        assert!(!second.drain("stdout", &logs, false));
        second.remove();
        assert!(!path.exists());
    }
}
