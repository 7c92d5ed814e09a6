//! Temporary names an interrupted process must not leave behind.
//!
//! A temporary file that has a name (a blob being pulled into the store, an output being staged
//! beside its final name, a scratch folder) is tracked here from the moment it is created until
//! it is renamed into place or deleted. A program that handles SIGINT/SIGTERM itself (the
//! builder's CLI does, with `signal-hook`) calls [`clean_up`] from its signal-watching thread
//! before it dies: every tracked name is removed, and no new one can be created after that.
//!
//! This module installs no signal handler: the engine, which links this crate, has its own
//! shutdown and must not pull a signal library in.
//!
//! Two locks, always taken in this order: `QUIET` (shared by [`uninterrupted`] sections,
//! exclusive for [`clean_up`]) and `NAMES` (short, for each registration). A clean-up therefore
//! waits for a running uninterrupted section (e.g. the renames of a build's outputs) to end, so
//! such a section happens entirely or not at all.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

static QUIET: RwLock<()> = RwLock::new(());
static NAMES: Mutex<Names> = Mutex::new(Names {
    next: 0,
    paths: BTreeMap::new(),
});

struct Names {
    next: u64,
    paths: BTreeMap<u64, (PathBuf, bool)>,
}

fn names() -> MutexGuard<'static, Names> {
    // A panic while holding the lock leaves the map consistent (every update is one call).
    NAMES.lock().unwrap_or_else(|e| e.into_inner())
}

/// A tracked temporary name. Dropping it stops the tracking (not the file): the owner drops it
/// after it has renamed or deleted what the name points to.
#[derive(Debug)]
pub struct Tracked {
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        names().paths.remove(&self.id);
    }
}

/// Creates a temporary file with `make` and tracks the name `path` gives it, both under the lock
/// so that no clean-up can fall between the creation and the tracking.
pub fn track_file<T>(
    make: impl FnOnce() -> io::Result<T>,
    path: impl FnOnce(&T) -> PathBuf,
) -> io::Result<(T, Tracked)> {
    track(make, path, false)
}

/// As [`track_file`], for a folder: a clean-up removes it with its content.
pub fn track_dir<T>(
    make: impl FnOnce() -> io::Result<T>,
    path: impl FnOnce(&T) -> PathBuf,
) -> io::Result<(T, Tracked)> {
    track(make, path, true)
}

fn track<T>(
    make: impl FnOnce() -> io::Result<T>,
    path: impl FnOnce(&T) -> PathBuf,
    dir: bool,
) -> io::Result<(T, Tracked)> {
    let mut names = names();
    let made = make()?;
    let id = names.next;
    names.next += 1;
    names.paths.insert(id, (path(&made), dir));
    Ok((made, Tracked { id }))
}

/// Runs `f` so that a clean-up happens before or after it, never during it.
pub fn uninterrupted<T>(f: impl FnOnce() -> T) -> T {
    let _quiet = QUIET.read().unwrap_or_else(|e| e.into_inner());
    f()
}

/// Removes every tracked name and keeps the locks, so nothing new is tracked (the threads that
/// try wait until the process ends). For a signal-watching thread that then ends the process.
pub fn clean_up() {
    let quiet = QUIET.write().unwrap_or_else(|e| e.into_inner());
    let names = names();
    for (path, dir) in names.paths.values() {
        let _ = if *dir {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
    }
    std::mem::forget(names);
    std::mem::forget(quiet);
}

/// Whether `path` is tracked (for tests).
pub fn is_tracked(path: &Path) -> bool {
    names().paths.values().any(|(p, _)| p == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracked_name_is_untracked_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (file, tracked) = track_file(
            || tempfile::NamedTempFile::new_in(dir.path()),
            |f| f.path().to_path_buf(),
        )
        .unwrap();
        assert!(is_tracked(file.path()));
        let path = file.path().to_path_buf();
        drop(file);
        drop(tracked);
        assert!(!is_tracked(&path));
    }
}
