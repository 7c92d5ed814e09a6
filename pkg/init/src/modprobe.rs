//! The kernel's module loader helper: when something needs a module that is not loaded (a
//! container mounting ext4 asks for `fs-ext4`, a firewall rule for its netfilter module), the
//! kernel runs `/proc/sys/kernel/modprobe -q -- NAME`. An image has no modprobe, so the init
//! registers itself: the same binary, started that way, loads NAME (a module or an alias) with
//! what it depends on from the image's modules, and exits.

use std::path::Path;

use crate::modules;

/// The init's own path, given to the kernel as the helper.
const HELPER: &str = "/init";
const SETTING: &str = "/proc/sys/kernel/modprobe";

/// The names to load when the arguments are the kernel's helper call (`-q -- NAME`).
pub fn helper_call(args: &[String]) -> Option<Vec<String>> {
    let rest = args.strip_prefix(&["-q".to_string()])?;
    let rest = rest.strip_prefix(&["--".to_string()]).unwrap_or(rest);
    (!rest.is_empty() && rest.iter().all(|n| !n.starts_with('-'))).then(|| rest.to_vec())
}

/// Makes the init the kernel's module helper.
pub fn register() -> std::io::Result<()> {
    std::fs::write(SETTING, HELPER)
}

/// Loads `names` with their dependencies; true if all loaded (the exit status the kernel reads).
pub fn run(names: &[String]) -> bool {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let dir = Path::new("/lib/modules").join(release);
    let Ok(index) = modules::Index::load(&dir) else {
        return false;
    };
    let loaded = modules::loaded(Path::new("/sys/module"));
    let mut ok = true;
    for name in names {
        let order = index
            .resolve(name)
            .and_then(|found| index.load_order(&found, &loaded));
        match order {
            Ok(order) => {
                for (module, path) in order {
                    ok &= modules::insert(&module, &dir.join(path)).is_ok();
                }
            }
            Err(_) => ok = false,
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn only_the_kernels_helper_call_is_recognised() {
        assert_eq!(helper_call(&args("-q -- fs-ext4")), Some(args("fs-ext4")));
        assert_eq!(helper_call(&args("-q fs-vfat")), Some(args("fs-vfat")));
        assert_eq!(helper_call(&[]), None);
        assert_eq!(helper_call(&args("-q --")), None);
        assert_eq!(helper_call(&args("fs-ext4")), None);
        assert_eq!(helper_call(&args("-q -- -r x")), None);
    }
}
