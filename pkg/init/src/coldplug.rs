//! Loading the kernel modules a boot needs: those named (by the init, `/etc/modules*`, the
//! command line) and the drivers of the devices present (coldplug), several at once.
//!
//! Coldplug matches every device's modalias once, then only the devices the loaded drivers added,
//! which the kernel's device events name, instead of walking `/sys/devices` again. The small
//! initrd of a root on a block device keeps polling those events while it waits for the root's
//! disk to appear ([`Coldplug::poll`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::modules;

/// How many coldplug rounds at most: loading a bus driver (virtio_pci) makes new devices appear
/// (virtio-net, virtio-blk) whose drivers the next round loads.
const COLDPLUG_ROUNDS: usize = 4;

/// How many modules load at once.
const MODULE_THREADS: usize = 4;

pub struct Coldplug {
    index: modules::Index,
    dir: PathBuf,
    uevents: Option<modules::Uevents>,
    /// Every module asked for once, loaded or not: nothing is tried twice.
    tried: HashSet<String>,
    /// What the kernel had before.
    before: HashSet<String>,
}

impl Coldplug {
    /// Reads the module index of the running kernel and starts listening to device events
    /// (before anything loads, so that it hears of every device a driver adds). A failure to
    /// listen is reported through `say`; sysfs is rescanned instead.
    pub fn open(say: impl Fn(String)) -> Result<Self, modules::Error> {
        let release = rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned();
        let dir = Path::new("/lib/modules").join(&release);
        let index = modules::Index::load(&dir)?;
        let before = modules::loaded(Path::new("/sys/module"));
        let uevents = modules::Uevents::open()
            .map_err(|e| {
                say(format!(
                    "listening to device events: {e}; rescanning sysfs instead"
                ))
            })
            .ok();
        Ok(Self {
            index,
            dir,
            uevents,
            tried: HashSet::new(),
            before,
        })
    }

    /// Loads modules asked for by name (or alias, `fs-squashfs`). Returns the failures: a module
    /// asked for by name is worth a line on the console.
    pub fn load_named(&mut self, names: &[String]) -> Vec<modules::Error> {
        let mut errors = Vec::new();
        let mut wanted = Vec::new();
        for name in names {
            match self.index.resolve(name) {
                Ok(found) => {
                    wanted.extend(found.into_iter().filter(|m| self.tried.insert(m.clone())))
                }
                Err(e) => errors.push(e),
            }
        }
        errors.extend(self.load_together(&wanted));
        errors
    }

    /// Drivers for the devices present, then for the devices those drivers add. A driver for
    /// absent hardware refuses to load (ENODEV); like `modprobe -q` that is not reported.
    pub fn settle(&mut self) {
        let mut modaliases = modules::device_modaliases(Path::new("/sys/devices"));
        for _ in 0..COLDPLUG_ROUNDS {
            if !self.load_for(&modaliases) {
                break;
            }
            modaliases = self.added_modaliases();
        }
    }

    /// One more round for the devices added since the last look; true if it loaded anything.
    pub fn poll(&mut self) -> bool {
        let modaliases = self.added_modaliases();
        self.load_for(&modaliases)
    }

    /// The modules loaded since [`Coldplug::open`], sorted.
    pub fn loaded_since_open(&self) -> Vec<String> {
        let mut new: Vec<String> = modules::loaded(Path::new("/sys/module"))
            .difference(&self.before)
            .cloned()
            .collect();
        new.sort();
        new
    }

    fn added_modaliases(&self) -> Vec<String> {
        match &self.uevents {
            Some(events) => events.added_modaliases(),
            None => modules::device_modaliases(Path::new("/sys/devices")),
        }
    }

    fn load_for(&mut self, modaliases: &[String]) -> bool {
        let wanted: Vec<String> = modaliases
            .iter()
            .flat_map(|alias| self.index.matching(alias))
            .filter(|m| self.tried.insert(m.clone()))
            .collect();
        if wanted.is_empty() {
            return false;
        }
        let _ = self.load_together(&wanted);
        true
    }

    /// Loads `modules` and what they depend on, skipping what is loaded already, several at
    /// once.
    fn load_together(&self, modules: &[String]) -> Vec<modules::Error> {
        let loaded = modules::loaded(Path::new("/sys/module"));
        let mut order = Vec::new();
        let mut errors = Vec::new();
        let mut queued = HashSet::new();
        // One at a time, so that a module missing from modules.dep does not hide the others.
        for module in modules {
            match self.index.load_order(std::slice::from_ref(module), &loaded) {
                Ok(found) => {
                    order.extend(found.into_iter().filter(|(n, _)| queued.insert(n.clone())))
                }
                Err(e) => errors.push(e),
            }
        }
        errors.extend(modules::insert_in_parallel(
            &self.index,
            &self.dir,
            &order,
            MODULE_THREADS,
        ));
        errors
    }
}
