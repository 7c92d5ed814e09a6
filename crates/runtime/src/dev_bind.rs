//! The createContainer hook that binds a host directory (the host's /dev) on a container's /dev,
//! after libcontainer has made its own nodes in the container's tmpfs /dev. The bundle's spec
//! asks for it when the manifest binds something on /dev (see slipway-bundle's
//! `runtime_config::dev_bind_hook` for why it cannot be an ordinary mount): the hook is the
//! runtime's own multi-call binary, run as `slipway-dev-bind SOURCE [OPTION]...` in the
//! container's mount namespace before its root is entered, with the container's state (OCI
//! `State` JSON, which names the bundle) on its standard input.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use libcontainer::oci_spec::runtime::{Spec, State};
use rustix::mount::{MountFlags, MountPropagationFlags, mount_bind, mount_bind_recursive};

/// Runs the hook: prints why on stderr (the container's start error) and fails if it cannot.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slipway-dev-bind: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (source, options) = args
        .split_first()
        .ok_or("usage: slipway-dev-bind SOURCE [OPTION]...")?;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the container state: {e}"))?;
    let state: State = serde_json::from_str(&text).map_err(|e| format!("container state: {e}"))?;
    let bundle = state.bundle();
    let target = rootfs(bundle)?.join("dev");
    bind(Path::new(source), &target, options)
        .map_err(|e| format!("binding {source} on {}: {e}", target.display()))
}

/// The container's root as the bundle's spec names it (relative to the bundle).
fn rootfs(bundle: &Path) -> Result<PathBuf, String> {
    let config = bundle.join("config.json");
    let spec = Spec::load(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| "rootfs".into());
    Ok(bundle.join(root))
}

/// A bind (recursive with `rbind`), read-only with `ro`, with the propagation the options name.
fn bind(source: &Path, target: &Path, options: &[String]) -> rustix::io::Result<()> {
    let has = |o: &str| options.iter().any(|x| x == o);
    if has("rbind") {
        mount_bind_recursive(source, target)?;
    } else {
        mount_bind(source, target)?;
    }
    if has("ro") {
        rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")?;
    }
    let propagation = options.iter().find_map(|o| {
        let recursive = o.starts_with('r') && o != "ro" && o != "rw";
        let kind = match o.trim_start_matches('r') {
            "shared" => MountPropagationFlags::SHARED,
            "slave" => MountPropagationFlags::DOWNSTREAM,
            "private" => MountPropagationFlags::PRIVATE,
            "unbindable" => MountPropagationFlags::UNBINDABLE,
            _ => return None,
        };
        Some(if recursive {
            kind | MountPropagationFlags::REC
        } else {
            kind
        })
    });
    if let Some(flags) = propagation {
        rustix::mount::mount_change(target, flags)?;
    }
    Ok(())
}
