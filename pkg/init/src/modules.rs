//! Kernel modules: which to load and in what order.
//!
//! The image carries `/lib/modules/$(uname -r)/{modules.dep,modules.alias}` in depmod's text
//! format and uncompressed `.ko` files. The init loads, each with its dependencies first:
//! the modules the hardware asks for (coldplug: every `/sys/devices/**/modalias` matched
//! against the `modules.alias` patterns), those listed in `/etc/modules` and
//! `/etc/modules-load.d/*.conf` and those named by `slipway.modules=` on the kernel command line.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: malformed line {text:?}")]
    Malformed {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("module {0} is not in modules.dep or modules.alias")]
    Unknown(String),
    #[error("module {name} depends on itself through {chain}")]
    Cycle { name: String, chain: String },
    #[error("loading module {name} from {path}: {source}")]
    Load {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// The kernel's spelling of a module name: `virtio-net.ko` and `virtio_net` are one module.
pub fn normalize(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let base = base.strip_suffix(".ko").unwrap_or(base);
    base.replace('-', "_")
}

/// What depmod says about the modules of one kernel.
#[derive(Debug, Default)]
pub struct Index {
    /// Module name -> (path relative to the modules directory, direct and indirect deps).
    deps: BTreeMap<String, (PathBuf, Vec<String>)>,
    /// (fnmatch pattern, the length of its literal prefix, module name), in file order. A full
    /// kernel has tens of thousands of patterns: the prefix turns most away without a match,
    /// and a pattern is compiled only for a modalias that has its prefix.
    aliases: Vec<(String, usize, String)>,
}

impl Index {
    /// Reads `modules.dep` (required) and `modules.alias` (optional) from `dir`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| Error::Read { path, source })
        };
        let dep_path = dir.join("modules.dep");
        let mut index = Self::parse_dep(&read("modules.dep")?, &dep_path)?;
        match read("modules.alias") {
            Ok(text) => index.parse_alias(&text, &dir.join("modules.alias"))?,
            Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(index)
    }

    /// `path/to/a.ko: path/to/b.ko path/to/c.ko` lines.
    pub fn parse_dep(text: &str, path: &Path) -> Result<Self, Error> {
        let mut deps = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (module, rest) = line.split_once(':').ok_or_else(|| Error::Malformed {
                path: path.to_owned(),
                line: n + 1,
                text: line.to_owned(),
            })?;
            let module = module.trim();
            let list = rest.split_whitespace().map(normalize).collect();
            deps.insert(normalize(module), (PathBuf::from(module), list));
        }
        Ok(Self {
            deps,
            aliases: Vec::new(),
        })
    }

    /// `alias PATTERN MODULE` lines.
    pub fn parse_alias(&mut self, text: &str, path: &Path) -> Result<(), Error> {
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = || Error::Malformed {
                path: path.to_owned(),
                line: n + 1,
                text: line.to_owned(),
            };
            let mut words = line.split_whitespace();
            let (Some("alias"), Some(pattern), Some(module), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(malformed());
            };
            let prefix = pattern.find(['*', '?', '[', '\\']).unwrap_or(pattern.len());
            self.aliases
                .push((pattern.to_owned(), prefix, normalize(module)));
        }
        Ok(())
    }

    /// The modules whose alias patterns match a device's modalias string.
    pub fn matching(&self, modalias: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (pattern, prefix, module) in &self.aliases {
            // A pattern glob cannot read (never written by depmod) matches nothing.
            if modalias.starts_with(&pattern[..*prefix])
                && !found.contains(module)
                && glob::Pattern::new(pattern).is_ok_and(|p| p.matches(modalias))
            {
                found.push(module.clone());
            }
        }
        found
    }

    /// A name from /etc/modules or the command line: a module, or an alias of one
    /// (`fs-overlay`).
    pub fn resolve(&self, name: &str) -> Result<Vec<String>, Error> {
        let normalized = normalize(name);
        if self.deps.contains_key(&normalized) {
            return Ok(vec![normalized]);
        }
        let found = self.matching(name);
        if found.is_empty() {
            return Err(Error::Unknown(name.to_owned()));
        }
        Ok(found)
    }

    /// The modules to insert, dependencies before the modules needing them, each once.
    /// Modules in `skip` (already loaded) are left out, their dependencies too.
    pub fn load_order(
        &self,
        wanted: &[String],
        skip: &HashSet<String>,
    ) -> Result<Vec<(String, PathBuf)>, Error> {
        let mut order = Vec::new();
        let mut done: HashSet<String> = skip.clone();
        for name in wanted {
            self.visit(name, &mut done, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    /// The modules `name` needs loaded first (all of them, as modules.dep lists them).
    pub fn deps(&self, name: &str) -> &[String] {
        self.deps.get(name).map_or(&[], |(_, deps)| deps.as_slice())
    }

    fn visit(
        &self,
        name: &str,
        done: &mut HashSet<String>,
        stack: &mut Vec<String>,
        order: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), Error> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            return Err(Error::Cycle {
                name: name.to_owned(),
                chain: stack.join(" -> "),
            });
        }
        let (path, deps) = self
            .deps
            .get(name)
            .ok_or_else(|| Error::Unknown(name.to_owned()))?;
        stack.push(name.to_owned());
        for dep in deps {
            self.visit(dep, done, stack, order)?;
        }
        stack.pop();
        done.insert(name.to_owned());
        order.push((name.to_owned(), path.clone()));
        Ok(())
    }
}

/// Loads `order` (dependencies before dependents, as [`Index::load_order`] gives it) with up to
/// `threads` finit_module(2) calls at once: a module goes once every module it depends on is
/// in. A driver's init often waits for its hardware (probing, firmware, timeouts), and those
/// waits overlap. Returns the failures, by module.
pub fn insert_in_parallel(
    index: &Index,
    dir: &Path,
    order: &[(String, PathBuf)],
    threads: usize,
) -> Vec<Error> {
    // A module's wave is one more than the latest of its dependencies being loaded now.
    let mut wave_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut waves: Vec<Vec<&(String, PathBuf)>> = Vec::new();
    for entry in order {
        let wave = index
            .deps(&entry.0)
            .iter()
            .filter_map(|d| wave_of.get(d.as_str()).map(|w| w + 1))
            .max()
            .unwrap_or(0);
        wave_of.insert(&entry.0, wave);
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        waves[wave].push(entry);
    }
    let mut errors = Vec::new();
    for wave in waves {
        let chunk = wave.len().div_ceil(threads.max(1)).max(1);
        // Scoped: every thread is joined before this returns, so no thread of PID 1 outlives
        // module loading (containers are cloned with raw clone3 later, which only a
        // single-threaded process survives safely).
        std::thread::scope(|scope| {
            let handles: Vec<_> = wave
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .filter_map(|(name, path)| insert(name, &dir.join(path)).err())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for handle in handles {
                if let Ok(failed) = handle.join() {
                    errors.extend(failed);
                }
            }
        });
    }
    errors
}

/// The kernel's device events (NETLINK_KOBJECT_UEVENT), read to learn which devices a driver
/// just loaded brought (a bus driver such as virtio_pci adds the devices on its bus) without
/// walking all of /sys/devices again.
pub struct Uevents(std::os::fd::OwnedFd);

impl Uevents {
    pub fn open() -> io::Result<Self> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, netlink};
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            Some(netlink::KOBJECT_UEVENT),
        )?;
        // A burst of new devices must not overflow the default buffer.
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, 1 << 20);
        // Group 1: the kernel's own events (udev re-broadcasts on group 2).
        rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, 1))?;
        Ok(Self(fd))
    }

    /// The modaliases of the devices added since the last call (the kernel sends the event
    /// before the call that added the device returns, so nothing is waited for).
    pub fn added_modaliases(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok((n, _)) =
            rustix::net::recv(&self.0, &mut buf[..], rustix::net::RecvFlags::empty())
        {
            if let Some(alias) = added_modalias(&buf[..n.min(buf.len())]) {
                found.push(alias);
            }
        }
        found
    }
}

/// An event is `ACTION@DEVPATH` then `KEY=VALUE` fields, NUL-separated; the MODALIAS of an
/// `add`.
fn added_modalias(event: &[u8]) -> Option<String> {
    let mut fields = event.split(|b| *b == 0).map(String::from_utf8_lossy);
    if !fields.next()?.starts_with("add@") {
        return None;
    }
    fields.find_map(|f| f.strip_prefix("MODALIAS=").map(str::to_owned))
}

/// The modalias strings of every device under `sys_devices` (coldplug).
pub fn device_modaliases(sys_devices: &Path) -> Vec<String> {
    let mut found = Vec::new();
    // Hand-written walk: sysfs is full of symlink loops (subsystem, driver, device), so only
    // real directories are followed; a crate walker would need the same care configured.
    let mut stack = vec![sys_devices.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file()
                && entry.file_name() == "modalias"
                && let Ok(text) = fs::read_to_string(entry.path())
            {
                let text = text.trim();
                if !text.is_empty() {
                    found.push(text.to_owned());
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The modules `etc` names in `modules` and `modules-load.d/*.conf` (in name order), the files
/// the builder reads to decide which modules the image ships.
pub fn named_in_etc(etc: &Path) -> Vec<String> {
    let mut files = vec![etc.join("modules")];
    if let Ok(entries) = fs::read_dir(etc.join("modules-load.d")) {
        let mut confs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        confs.sort();
        files.extend(confs);
    }
    files
        .iter()
        .flat_map(|f| parse_etc_modules(&fs::read_to_string(f).unwrap_or_default()))
        .collect()
}

/// The modules listed in /etc/modules: one per line, `#` (and, as modules-load.d(5) allows,
/// `;`) comments.
pub fn parse_etc_modules(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split(['#', ';']).next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap_or(l).to_owned())
        .collect()
}

/// Modules the kernel already has (loaded or built in), by name.
pub fn loaded(sys_module: &Path) -> HashSet<String> {
    fs::read_dir(sys_module)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Inserts one module with finit_module(2) (rustix has no wrapper). EEXIST is success: udev-less
/// boots race nothing, but a module may have been pulled in by the kernel itself.
pub fn insert(name: &str, path: &Path) -> Result<(), Error> {
    let err = |source| Error::Load {
        name: name.to_owned(),
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(err)?;
    // SAFETY: finit_module takes an fd, a NUL-terminated parameter string and flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            c"".as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(err(e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/block/virtio-blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
alias fs-overlay overlay
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
";

    fn index() -> Index {
        let mut i = Index::parse_dep(DEP, Path::new("modules.dep")).unwrap();
        i.parse_alias(ALIAS, Path::new("modules.alias")).unwrap();
        i
    }

    fn names(order: &[(String, PathBuf)]) -> Vec<&str> {
        order.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn alias_globs_match_device_modaliases() {
        let i = index();
        assert_eq!(
            i.matching("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(i.matching("virtio:d00000001v00001AF4"), ["virtio_net"]);
        assert!(
            i.matching("pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00")
                .is_empty()
        );
        // Case matters, as in fnmatch: the kernel prints upper-case hex.
        assert!(
            i.matching("pci:v00001af4d00001000sv00001AF4sd00000001bc02sc00i00")
                .is_empty()
        );
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let i = index();
        let order = i
            .load_order(&["virtio_pci".into(), "virtio_net".into()], &HashSet::new())
            .unwrap();
        let n = names(&order);
        assert_eq!(
            n,
            [
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        assert_eq!(order[4].1, Path::new("kernel/drivers/virtio/virtio_pci.ko"));
    }

    #[test]
    fn loaded_modules_are_skipped() {
        let i = index();
        let skip: HashSet<String> = ["virtio".to_owned(), "virtio_ring".to_owned()].into();
        let order = i.load_order(&["virtio_blk".into()], &skip).unwrap();
        assert_eq!(names(&order), ["virtio_blk"]);
        assert_eq!(order[0].1, Path::new("kernel/drivers/block/virtio-blk.ko"));
    }

    #[test]
    fn names_resolve_through_dashes_and_aliases() {
        let i = index();
        assert_eq!(i.resolve("virtio-blk").unwrap(), ["virtio_blk"]);
        assert_eq!(i.resolve("fs-overlay").unwrap(), ["overlay"]);
        let err = i.resolve("e1001").unwrap_err().to_string();
        assert!(err.contains("e1001"), "{err}");
    }

    #[test]
    fn cycles_and_malformed_lines_are_errors() {
        let i = Index::parse_dep("a.ko: b.ko\nb.ko: a.ko\n", Path::new("m.dep")).unwrap();
        let err = i.load_order(&["a".into()], &HashSet::new()).unwrap_err();
        assert!(matches!(err, Error::Cycle { .. }), "{err}");
        let err = Index::parse_dep("ok.ko:\nno colon here\n", Path::new("m.dep")).unwrap_err();
        assert_eq!(err.to_string(), "m.dep:2: malformed line \"no colon here\"");
    }

    #[test]
    fn uevents_of_added_devices_give_their_modalias() {
        let add = b"add@/devices/pci0000:00/0000:00:03.0/virtio0\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:03.0/virtio0\0SUBSYSTEM=virtio\0MODALIAS=virtio:d00000001v00001AF4\0SEQNUM=1234\0";
        assert_eq!(
            added_modalias(add).as_deref(),
            Some("virtio:d00000001v00001AF4")
        );
        let bind = b"bind@/devices/x\0ACTION=bind\0MODALIAS=virtio:d00000001v00001AF4\0";
        assert_eq!(added_modalias(bind), None);
        assert_eq!(added_modalias(b"add@/devices/y\0ACTION=add\0"), None);
        assert_eq!(added_modalias(b""), None);
    }

    #[test]
    fn alias_prefixes_only_turn_away_what_cannot_match() {
        let mut i = Index::default();
        i.parse_alias(
            "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
             alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel\n\
             alias *:PNP0A08:* pci_root\n\
             alias pci:v0000[ bad_pattern\n",
            Path::new("modules.alias"),
        )
        .unwrap();
        assert_eq!(
            i.matching("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(
            i.matching("cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0094,00E5"),
            ["crc32c_intel"]
        );
        assert_eq!(i.matching("acpi:PNP0A08:PNP0A03:"), ["pci_root"]);
        assert!(i.matching("pci:v0000[").is_empty());
    }

    #[test]
    fn etc_modules_lines_and_comments() {
        assert_eq!(
            parse_etc_modules("# wanted\nvirtio_net\n\n  overlay  # for containers\n"),
            ["virtio_net", "overlay"]
        );
    }

    #[test]
    fn modules_load_d_confs_follow_etc_modules() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("modules"), "tun\n").unwrap();
        fs::create_dir(dir.path().join("modules-load.d")).unwrap();
        fs::write(dir.path().join("modules-load.d/b.conf"), "; c\nbonding\n").unwrap();
        fs::write(dir.path().join("modules-load.d/a.conf"), "dummy\n").unwrap();
        fs::write(dir.path().join("modules-load.d/x.disabled"), "nope\n").unwrap();
        assert_eq!(named_in_etc(dir.path()), ["tun", "dummy", "bonding"]);
    }

    #[test]
    fn coldplug_walk_finds_modalias_files() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("pci0000:00/0000:00:03.0");
        fs::create_dir_all(dev.join("virtio0")).unwrap();
        fs::write(
            dev.join("modalias"),
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
        )
        .unwrap();
        fs::write(dev.join("virtio0/modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        std::os::unix::fs::symlink(dir.path(), dev.join("loop")).unwrap();
        let found = device_modaliases(dir.path());
        assert_eq!(found.len(), 2);
        let i = index();
        let wanted: Vec<String> = found.iter().flat_map(|m| i.matching(m)).collect();
        assert_eq!(wanted, ["virtio_pci", "virtio_net"]);
    }
}
