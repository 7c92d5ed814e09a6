//! `metadata`: LinuxKit's `metadata` package for Slipway, an onboot container that finds the
//! machine's userdata and metadata and writes them under `/run/config`, where other containers
//! (sshd's `authorized_keys`, services reading `userdata`) bind them.
//!
//! `metadata [PROVIDER...]` tries the providers in order and stops at the first that answers;
//! without arguments it tries LinuxKit's order: the network services first (`aws`, `gcp`,
//! `openstack`, all at 169.254.169.254 over plain HTTP), then `cdrom` (an ISO 9660 CD labelled
//! `cidata`, or any CD-ROM, with a file `config` or `user-data`, as `linuxkit metadata create` and
//! `slipway run qemu --data` write it). `file=PATH` reads a file. LinuxKit providers Slipway does
//! not implement (hetzner, scaleway, ...) are named and skipped.
//!
//! What it writes, as LinuxKit does: `/run/config/userdata` (the raw data); when the userdata is
//! JSON, its tree (`{"ssh": {"entries": {"authorized_keys": {"perm": "0600", "content": "..."}}}}`)
//! as folders and files; the provider's own files (`hostname`, `ssh/authorized_keys`, ...); and the
//! hostname is set from `/run/config/hostname`. A service that answers garbage is reported and the
//! next provider is tried; the program never stops the boot.

mod cdrom;
pub mod http;
pub mod providers;
pub mod userdata;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where everything is written.
pub const CONFIG_DIR: &str = "/run/config";

/// A provider's findings: the userdata (if any) and the provider's own files, relative to
/// [`CONFIG_DIR`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Found {
    pub userdata: Option<Vec<u8>>,
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

/// What trying a provider gave.
#[derive(Debug)]
pub enum Outcome {
    /// The provider is not here (no service, no CD, no file).
    Absent(String),
    /// Something answered but not as the provider should: a clear error; the next is tried.
    Failed(String),
    Found(Found),
}

/// The providers tried when none is named, in LinuxKit's order.
pub const DEFAULT_PROVIDERS: &[&str] = &["aws", "gcp", "openstack", "cdrom"];

/// LinuxKit's providers that Slipway does not implement: skipped with a message.
const UNSUPPORTED: &[&str] = &[
    "hetzner",
    "scaleway",
    "vultr",
    "digitalocean",
    "packet",
    "equinixmetal",
    "metaldata",
    "vmware",
    "azure",
    "alicloud",
    "oci",
    "ikoula",
];

fn say(msg: impl std::fmt::Display) {
    println!("metadata: {msg}");
}

/// Tries one provider by its command-line name.
pub fn try_provider(name: &str) -> Outcome {
    if let Some(path) = name.strip_prefix("file=") {
        return providers::file(Path::new(path));
    }
    match name {
        "aws" => providers::aws(providers::METADATA_ADDR),
        "gcp" => providers::gcp(providers::METADATA_ADDR),
        "openstack" => providers::openstack(providers::METADATA_ADDR),
        "cdrom" => cdrom::probe(),
        other if UNSUPPORTED.contains(&other) => {
            Outcome::Absent(format!("the {other} provider is not supported by Slipway"))
        }
        other => Outcome::Failed(format!(
            "unknown provider {other:?} (known: aws, gcp, openstack, cdrom, file=PATH)"
        )),
    }
}

/// The program.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<String> = if args.is_empty() {
        DEFAULT_PROVIDERS.iter().map(|s| s.to_string()).collect()
    } else {
        args
    };
    let config = Path::new(CONFIG_DIR);
    if let Err(e) = std::fs::create_dir_all(config) {
        say(format!("creating {CONFIG_DIR}: {e}"));
        return ExitCode::FAILURE;
    }
    let mut failed = false;
    for name in &names {
        match try_provider(name) {
            Outcome::Absent(why) => say(format!("{name}: not found ({why})")),
            Outcome::Failed(why) => {
                say(format!("error: {name}: {why}"));
                failed = true;
            }
            Outcome::Found(found) => {
                say(format!("{name}: found metadata"));
                userdata::write(config, &found, &mut |m| say(m));
                sethostname(config);
                return ExitCode::SUCCESS;
            }
        }
    }
    say("no metadata or userdata found");
    // A provider that answered garbage fails the container (its exit status shows in the
    // boot's log) but never the boot: onboot containers that fail do not stop the init.
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Sets the hostname from `config/hostname` if a provider or the userdata wrote one.
fn sethostname(config: &Path) {
    let Ok(text) = std::fs::read_to_string(config.join("hostname")) else {
        return;
    };
    let name = text.trim();
    if name.is_empty() {
        return;
    }
    match rustix::system::sethostname(name.as_bytes()) {
        Ok(()) => say(format!("hostname set to {name}")),
        Err(e) => say(format!("error: setting the hostname to {name:?}: {e}")),
    }
}
