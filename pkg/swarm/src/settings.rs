//! The agent's settings in an image: `slipway-swarm daemon --config FILE...` reads YAML files
//! (an image's `/etc/slipway/swarm.yml`, the metadata package's `/run/config/swarm/swarm.yml`),
//! later files winning key by key, and on the first start of a state directory the daemon does
//! the `init` or `join` they ask for, as `docker swarm init|join` would with the same flags.
//!
//! ```yaml
//! init: true                      # or:  join: {token: SWMTKN-1-..., managers: [10.0.0.1:2377]}
//! advertise-addr: 10.0.0.1        # --advertise-addr
//! listen-addr: 0.0.0.0:2377       # --listen-addr
//! availability: active            # --availability
//! hostname: node1                 # the node's name (default: the host's)
//! ```
//!
//! They are applied once per state directory: a marker file records it, so a restarted agent
//! with a membership simply resumes it (no second `init`), and a node that left stays out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::daemon::{Daemon, InitRequest, JoinRequest};

/// The file that says this state directory's settings were applied.
pub const APPLIED: &str = "settings-applied";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `init` and `join` both given; a node does one of them")]
    InitAndJoin { path: PathBuf },
    #[error("{path}: join: `token` is needed (docker swarm join-token -q worker prints it)")]
    NoToken { path: PathBuf },
    #[error("{path}: join: `managers` needs at least one manager address")]
    NoManagers { path: PathBuf },
}

/// What a node does on its first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    Init,
    Join {
        token: String,
        managers: Vec<String>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub bootstrap: Option<Bootstrap>,
    pub advertise_addr: Option<String>,
    pub listen_addr: Option<String>,
    pub availability: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    init: Option<bool>,
    #[serde(default)]
    join: Option<JoinFile>,
    #[serde(default)]
    advertise_addr: Option<String>,
    #[serde(default)]
    listen_addr: Option<String>,
    #[serde(default)]
    availability: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinFile {
    #[serde(default)]
    token: String,
    #[serde(default)]
    managers: Vec<String>,
}

/// Parses one file's text; `path` names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<Settings, SettingsError> {
    let err = |message: String| SettingsError::Parse {
        path: path.to_path_buf(),
        message,
    };
    // An empty file (or one with comments only) sets nothing.
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    }) {
        return Ok(Settings::default());
    }
    let file: File = serde_saphyr::from_str(text).map_err(|e| err(e.to_string()))?;
    let bootstrap = match (file.init, file.join) {
        (Some(true), Some(_)) => {
            return Err(SettingsError::InitAndJoin {
                path: path.to_path_buf(),
            });
        }
        (_, Some(join)) => {
            if join.token.trim().is_empty() {
                return Err(SettingsError::NoToken {
                    path: path.to_path_buf(),
                });
            }
            let managers: Vec<String> = join
                .managers
                .iter()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect();
            if managers.is_empty() {
                return Err(SettingsError::NoManagers {
                    path: path.to_path_buf(),
                });
            }
            Some(Bootstrap::Join {
                token: join.token.trim().to_string(),
                managers,
            })
        }
        (Some(true), None) => Some(Bootstrap::Init),
        (Some(false) | None, None) => None,
    };
    let nonempty = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    Ok(Settings {
        bootstrap,
        advertise_addr: nonempty(file.advertise_addr),
        listen_addr: nonempty(file.listen_addr),
        availability: nonempty(file.availability),
        hostname: nonempty(file.hostname),
    })
}

impl Settings {
    /// `later`'s keys replace these; `init` and `join` are one setting (what the node does).
    pub fn overlay(self, later: Settings) -> Settings {
        Settings {
            bootstrap: later.bootstrap.or(self.bootstrap),
            advertise_addr: later.advertise_addr.or(self.advertise_addr),
            listen_addr: later.listen_addr.or(self.listen_addr),
            availability: later.availability.or(self.availability),
            hostname: later.hostname.or(self.hostname),
        }
    }
}

/// Reads `paths` in order, later ones winning; a file that does not exist is skipped (an image
/// without settings, a machine without metadata).
pub fn load(paths: &[PathBuf]) -> Result<Settings, SettingsError> {
    let mut settings = Settings::default();
    for path in paths {
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8(bytes).map_err(|_| SettingsError::Parse {
                path: path.clone(),
                message: "not UTF-8 text".into(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(SettingsError::Read {
                    path: path.clone(),
                    source,
                });
            }
        };
        settings = settings.overlay(parse(path, &text)?);
    }
    Ok(settings)
}

/// The waits between join attempts while no manager answers (it may still be booting).
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(10);

/// Does the settings' `init` or `join` unless this state directory has had it done already.
/// A join is retried while the managers cannot be reached; a refusal (a bad token) ends it.
/// Everything is reported through `tracing` (the console in an image) and never ends the daemon.
pub async fn apply(daemon: Daemon, settings: Settings) {
    let Some(bootstrap) = settings.bootstrap.clone() else {
        return;
    };
    let marker = daemon.opts().state_dir.join(APPLIED);
    if marker.exists() {
        return;
    }
    if daemon.session().is_some() {
        // A membership made by hand before settings existed: leave it be.
        mark(&marker);
        return;
    }
    let availability = settings
        .availability
        .clone()
        .unwrap_or_else(|| "active".into());
    match bootstrap {
        Bootstrap::Init => {
            let request = InitRequest {
                listen_addr: settings.listen_addr.clone().unwrap_or_default(),
                advertise_addr: settings.advertise_addr.clone().unwrap_or_default(),
                availability,
                ..InitRequest::default()
            };
            match daemon.init(request).await {
                Ok(node_id) => {
                    mark(&marker);
                    print_join_command(&daemon, &node_id);
                }
                Err(e) => tracing::error!("settings: swarm init: {e}"),
            }
        }
        Bootstrap::Join { token, managers } => {
            let mut wait = FIRST_RETRY;
            loop {
                let request = JoinRequest {
                    listen_addr: settings.listen_addr.clone().unwrap_or_default(),
                    advertise_addr: settings.advertise_addr.clone().unwrap_or_default(),
                    remote_addrs: managers.clone(),
                    join_token: token.clone(),
                    availability: availability.clone(),
                };
                match daemon.join(request).await {
                    Ok(()) => {
                        mark(&marker);
                        tracing::info!("settings: this node joined a swarm as a worker");
                        println!("This node joined a swarm as a worker.");
                        return;
                    }
                    Err(e) if e.status == 400 => {
                        tracing::error!("settings: swarm join: {e}; not trying again");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("settings: swarm join: {e}; trying again in {wait:?}");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(LONGEST_RETRY);
                    }
                }
            }
        }
    }
}

/// Records that the settings were applied, and makes the new membership (state.json, the
/// certificates, the Raft store and this marker) durable at once: a machine whose plug is pulled
/// a moment after its join must not boot again as a stranger that joins a second time.
fn mark(marker: &Path) {
    if let Err(e) = std::fs::write(marker, b"") {
        tracing::warn!("settings: writing {}: {e}", marker.display());
    }
    rustix::fs::sync();
}

/// What `docker swarm init` prints, on the console: how other machines join this swarm.
fn print_join_command(daemon: &Daemon, node_id: &str) {
    let view = match daemon.view() {
        Ok(view) => view,
        Err(e) => {
            tracing::warn!("settings: reading the join token: {e}");
            return;
        }
    };
    let Some(cluster) = &view.state.cluster else {
        return;
    };
    let token = crate::ids::join_token(&view.session.ca_der, &cluster.worker_secret);
    let addr = &view.session.local.advertise_addr;
    println!(
        "Swarm initialized: current node ({node_id}) is now a manager.\n\n\
         To add a worker to this swarm, run the following command:\n\n    \
         docker swarm join --token {token} {addr}\n\n\
         To add a manager to this swarm, run 'docker swarm join-token manager' and follow the instructions.\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Settings, SettingsError> {
        parse(Path::new("swarm.yml"), text)
    }

    #[test]
    fn init_and_addresses_are_read() {
        let s = p("init: true\nadvertise-addr: 10.0.0.1\nlisten-addr: 0.0.0.0:2377\navailability: drain\nhostname: n1\n").unwrap();
        assert_eq!(s.bootstrap, Some(Bootstrap::Init));
        assert_eq!(s.advertise_addr.as_deref(), Some("10.0.0.1"));
        assert_eq!(s.listen_addr.as_deref(), Some("0.0.0.0:2377"));
        assert_eq!(s.availability.as_deref(), Some("drain"));
        assert_eq!(s.hostname.as_deref(), Some("n1"));
    }

    #[test]
    fn metadata_wins_key_by_key_and_join_replaces_init() {
        let image = p("init: true\nlisten-addr: 0.0.0.0:2377\nhostname: image\n").unwrap();
        let metadata =
            p("join:\n  token: SWMTKN-1-a-b\n  managers: [10.0.0.1:2377]\nhostname: meta\n")
                .unwrap();
        let s = image.overlay(metadata);
        assert_eq!(
            s.bootstrap,
            Some(Bootstrap::Join {
                token: "SWMTKN-1-a-b".into(),
                managers: vec!["10.0.0.1:2377".into()]
            })
        );
        assert_eq!(s.hostname.as_deref(), Some("meta"));
        assert_eq!(s.listen_addr.as_deref(), Some("0.0.0.0:2377"));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let text = |r: Result<Settings, SettingsError>| r.unwrap_err().to_string();
        assert!(text(p("init: true\njoin: {token: x, managers: [a]}\n")).contains("both"));
        assert!(text(p("join: {managers: [a]}\n")).contains("`token` is needed"));
        assert!(text(p("join: {token: x}\n")).contains("at least one manager"));
        assert!(text(p("inti: true\n")).starts_with("swarm.yml: "));
        assert!(text(p("init: [\n")).starts_with("swarm.yml: "));
        assert!(text(p("- a\n- b\n")).starts_with("swarm.yml: "));
        assert_eq!(p("# nothing\n\n").unwrap(), Settings::default());
    }

    #[test]
    fn missing_files_are_skipped_and_later_files_win() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.yml");
        let meta = dir.path().join("meta.yml");
        std::fs::write(&image, "init: true\nadvertise-addr: 10.0.0.1\n").unwrap();
        std::fs::write(&meta, "advertise-addr: 10.0.0.9\n").unwrap();
        let s = load(&[image.clone(), dir.path().join("absent.yml"), meta]).unwrap();
        assert_eq!(s.bootstrap, Some(Bootstrap::Init));
        assert_eq!(s.advertise_addr.as_deref(), Some("10.0.0.9"));
        std::fs::write(&image, [0xff, 0xfe]).unwrap();
        assert!(load(&[image]).unwrap_err().to_string().contains("UTF-8"));
    }
}
