//! What `POST /v1/containers` may ask for (the body of a `run`), and its complete check: a
//! request either becomes a [`Checked`] (everything decoded and validated, nothing done yet) or
//! is refused with a message saying which field is wrong and why. The swarm agent's executor
//! sends tasks this way (Docker's `ContainerSpec` semantics: `command` replaces the image's
//! entrypoint and `args` its cmd).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::spec::{HealthCheck, RestartPolicy, valid_name};

/// The body of `POST /v1/containers`; everything but `image` is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RunRequest {
    pub image: String,
    /// Made from the image's name when missing.
    #[serde(default)]
    pub name: Option<String>,
    /// The whole command, instead of the image's entrypoint and cmd (not with `command` or
    /// `args`).
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// A restart policy (`no`, `always`, `on-failure[:N]`); default `no`.
    #[serde(default)]
    pub restart: Option<String>,
    /// Replaces the image's entrypoint (and drops its cmd, as Docker does).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Replaces the image's cmd.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// `K=V`, over the image's environment.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid` (names from the image's /etc/passwd, group).
    #[serde(default)]
    pub user: Option<String>,
    /// Default: the container's name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Listed back in ContainerInfo; `GET /v1/containers?label=K=V` filters on them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub mounts: Vec<MountRequest>,
    /// Files (secrets, configs) on a tmpfs of the container's own, bound read-only.
    #[serde(default)]
    pub files: Vec<FileRequest>,
    #[serde(default)]
    pub resources: Option<ResourceRequest>,
    #[serde(default)]
    pub healthcheck: Option<HealthRequest>,
    /// Whether the command runs under the engine's init (default true).
    #[serde(default)]
    pub init: Option<bool>,
    /// Between SIGTERM and SIGKILL (humantime: `10s`, `500ms`).
    #[serde(default)]
    pub stop_grace_period: Option<String>,
    /// `host`: the node's network namespace; `none` (the default): its own, loopback only.
    #[serde(default)]
    pub network: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MountRequest {
    /// `bind` | `volume` | `tmpfs`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A host path (bind), a volume name (volume), nothing (tmpfs).
    #[serde(default)]
    pub source: Option<String>,
    pub target: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileRequest {
    /// An absolute path in the container (`/run/secrets/db_password`).
    pub target: String,
    /// The content, base64.
    pub data: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Permission bits; default 0444.
    #[serde(default)]
    pub mode: Option<u32>,
}

// The data of a secret never reaches a log line.
impl std::fmt::Debug for FileRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRequest")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceRequest {
    /// Bytes.
    #[serde(default)]
    pub memory: Option<i64>,
    /// CPU time in units of 10^-9 CPUs (Docker's NanoCPUs).
    #[serde(default)]
    pub nano_cpus: Option<i64>,
    /// Processes at once (default 2048).
    #[serde(default)]
    pub pids: Option<i64>,
}

/// Docker's `HealthConfig`: `test` is `["CMD", args...]`, `["CMD-SHELL", command]` or
/// `["NONE"]`; durations humantime text (absent or `0s`: Docker's default).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthRequest {
    pub test: Vec<String>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub start_period: Option<String>,
}

/// A file to write on the container's tmpfs.
pub struct File {
    pub target: String,
    pub data: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// A mount, resolved: a host path (or `None` for a tmpfs) and its place in the container.
#[derive(Debug, Clone)]
pub struct Mount {
    pub kind: MountKind,
    pub source: Option<PathBuf>,
    pub target: String,
    pub readonly: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    /// A directory the engine makes under its volumes directory.
    Volume,
    Tmpfs,
}

/// A request that passed every check.
pub struct Checked {
    pub image: String,
    pub restart: Option<RestartPolicy>,
    /// The command line, or how to make it from the image's entrypoint and cmd.
    pub command: Command,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    pub files: Vec<File>,
    pub resources: ResourceRequest,
    /// The annotation text of the health check (`None`: none, or `NONE`).
    pub health: Option<String>,
    pub init: Option<bool>,
    pub stop_grace: Option<Duration>,
    pub host_network: bool,
}

/// Docker's rules for the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// The image's entrypoint and cmd.
    Image,
    /// The image's entrypoint, these args.
    Args(Vec<String>),
    /// This entrypoint and these args (the image's cmd dropped).
    Replace(Vec<String>, Vec<String>),
}

impl Command {
    pub fn line(&self, entrypoint: &[String], cmd: &[String]) -> Vec<String> {
        match self {
            Self::Image => entrypoint.iter().chain(cmd).cloned().collect(),
            Self::Args(args) => entrypoint.iter().chain(args).cloned().collect(),
            Self::Replace(command, args) => command.iter().chain(args).cloned().collect(),
        }
    }
}

/// Secrets and configs are small (Docker caps them at 500 KiB); so is their total here.
pub const MAX_FILES_BYTES: usize = 1 << 20;

/// An absolute path without `..`, not `/` itself.
fn container_path(field: &str, path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if !p.is_absolute()
        || path.contains('\0')
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || p.components().count() < 2
    {
        return Err(format!(
            "{field}: {path:?} is not an absolute path in the container (without ..)"
        ));
    }
    Ok(())
}

fn duration(field: &str, text: &Option<String>) -> Result<Option<Duration>, String> {
    match text {
        None => Ok(None),
        Some(text) => humantime::parse_duration(text.trim())
            .map(|d| (!d.is_zero()).then_some(d))
            .map_err(|e| format!("{field}: {text:?} is not a duration (10s, 500ms): {e}")),
    }
}

impl RunRequest {
    /// Checks every field; the error names the field.
    pub fn check(&self) -> Result<Checked, String> {
        let image = self.image.trim();
        if image.is_empty() {
            return Err("image must name an image".to_owned());
        }
        slipway_oci::resolve::parse_reference(image).map_err(|e| e.to_string())?;
        if let Some(name) = &self.name
            && !valid_name(name)
        {
            return Err(format!("{name:?} is not a valid container name"));
        }
        let restart = match &self.restart {
            None => None,
            Some(r) => Some(
                r.trim()
                    .parse::<RestartPolicy>()
                    .map_err(|e| format!("restart: {e}"))?,
            ),
        };
        let named = |field: &str, list: &[String]| {
            if list.first().is_none_or(String::is_empty) {
                Err(format!("{field} must name a command"))
            } else {
                Ok(())
            }
        };
        let command = match (&self.cmd, &self.command, &self.args) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err("cmd replaces the whole command: give it or command/args".to_owned());
            }
            (Some(cmd), None, None) => {
                named("cmd", cmd)?;
                Command::Replace(cmd.clone(), Vec::new())
            }
            (None, Some(command), args) => {
                named("command", command)?;
                Command::Replace(command.clone(), args.clone().unwrap_or_default())
            }
            (None, None, Some(args)) => Command::Args(args.clone()),
            (None, None, None) => Command::Image,
        };
        for e in &self.env {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() && !e.contains('\0') => {}
                _ => return Err(format!("env: {e:?} is not K=V")),
            }
        }
        if let Some(dir) = &self.workdir
            && (!dir.starts_with('/') || dir.contains('\0'))
        {
            return Err(format!("workdir: {dir:?} is not an absolute path"));
        }
        if let Some(user) = &self.user {
            let user = user.trim();
            let part_ok = |p: &str| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            };
            let ok = match user.split_once(':') {
                Some((u, g)) => part_ok(u) && part_ok(g),
                None => part_ok(user),
            };
            if !ok {
                return Err(format!(
                    "user: {user:?} is not user, uid, user:group or uid:gid"
                ));
            }
        }
        if let Some(host) = &self.hostname
            && (host.is_empty()
                || host.len() > 64
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)))
        {
            return Err(format!("hostname: {host:?} is not a host name"));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(format!("labels: {k:?} is not a label key"));
            }
        }
        let mut targets = std::collections::BTreeSet::new();
        let mut mounts = Vec::new();
        for (i, m) in self.mounts.iter().enumerate() {
            let field = format!("mounts[{i}]");
            container_path(&format!("{field}.target"), &m.target)?;
            if !targets.insert(m.target.clone()) {
                return Err(format!("{field}: {} is mounted twice", m.target));
            }
            let (kind, source) = match (m.kind.as_str(), &m.source) {
                ("bind", Some(source)) => {
                    let path = Path::new(source);
                    if !path.is_absolute() || !path.exists() {
                        return Err(format!(
                            "{field}: bind source path does not exist: {source}"
                        ));
                    }
                    (MountKind::Bind, Some(path.to_owned()))
                }
                ("bind", None) => return Err(format!("{field}: a bind mount needs a source")),
                ("volume", Some(name)) if valid_name(name) => {
                    (MountKind::Volume, Some(PathBuf::from(name)))
                }
                ("volume", _) => {
                    return Err(format!(
                        "{field}: a volume mount needs a volume name (letters, digits, _.-)"
                    ));
                }
                ("tmpfs", None) => (MountKind::Tmpfs, None),
                ("tmpfs", Some(_)) => return Err(format!("{field}: a tmpfs has no source")),
                (other, _) => {
                    return Err(format!(
                        "{field}: mount type {other:?} is not bind, volume or tmpfs"
                    ));
                }
            };
            mounts.push(Mount {
                kind,
                source,
                target: m.target.clone(),
                readonly: m.readonly,
            });
        }
        let mut files = Vec::new();
        let mut total = 0;
        for (i, f) in self.files.iter().enumerate() {
            let field = format!("files[{i}]");
            container_path(&format!("{field}.target"), &f.target)?;
            if !targets.insert(f.target.clone()) {
                return Err(format!("{field}: {} is mounted twice", f.target));
            }
            let data = base64::engine::general_purpose::STANDARD
                .decode(f.data.trim())
                .map_err(|e| format!("{field}.data: not base64: {e}"))?;
            total += data.len();
            if total > MAX_FILES_BYTES {
                return Err(format!("files: more than {MAX_FILES_BYTES} bytes in all"));
            }
            let mode = f.mode.unwrap_or(0o444);
            if mode > 0o7777 {
                return Err(format!("{field}.mode: {mode:o} is not a file mode"));
            }
            files.push(File {
                target: f.target.clone(),
                data,
                uid: f.uid,
                gid: f.gid,
                mode,
            });
        }
        let resources = self.resources.clone().unwrap_or_default();
        for (field, value, min) in [
            ("resources.memory", resources.memory, 4 << 20),
            ("resources.nanoCpus", resources.nano_cpus, 1_000_000),
            ("resources.pids", resources.pids, 1),
        ] {
            if let Some(v) = value
                && v < min
            {
                return Err(format!("{field}: {v} is less than the minimum, {min}"));
            }
        }
        let health = match &self.healthcheck {
            None => None,
            Some(h) => health_annotation(h)?,
        };
        let stop_grace = duration("stopGracePeriod", &self.stop_grace_period)?;
        let host_network = match self.network.as_deref() {
            None | Some("none") => false,
            Some("host") => true,
            Some(other) => {
                return Err(format!(
                    "network: {other:?} is not host or none (the engine has no other networks)"
                ));
            }
        };
        Ok(Checked {
            image: image.to_owned(),
            restart,
            command,
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            user: self.user.as_deref().map(str::trim).map(str::to_owned),
            hostname: self.hostname.clone(),
            labels: self.labels.clone(),
            mounts,
            files,
            resources,
            health,
            init: self.init,
            stop_grace,
            host_network,
        })
    }
}

/// The `org.slipway.healthcheck` annotation for Docker's health check forms; `None` for
/// `["NONE"]`.
fn health_annotation(h: &HealthRequest) -> Result<Option<String>, String> {
    let test: Vec<String> = match h.test.first().map(String::as_str) {
        Some("NONE") if h.test.len() == 1 => return Ok(None),
        Some("CMD") if h.test.len() > 1 && !h.test[1].is_empty() => h.test[1..].to_vec(),
        Some("CMD-SHELL") if h.test.len() == 2 && !h.test[1].is_empty() => {
            vec!["/bin/sh".to_owned(), "-c".to_owned(), h.test[1].clone()]
        }
        _ => {
            return Err(format!(
                "healthcheck.test: {:?} is not [\"CMD\", args...], [\"CMD-SHELL\", command] or [\"NONE\"]",
                h.test
            ));
        }
    };
    let text = |field: &str, d: &Option<String>| -> Result<Option<String>, String> {
        Ok(duration(&format!("healthcheck.{field}"), d)?
            .map(|d| humantime::format_duration(d).to_string()))
    };
    let mut json = serde_json::json!({ "test": test });
    for (key, value) in [
        ("interval", text("interval", &h.interval)?),
        ("timeout", text("timeout", &h.timeout)?),
        ("startPeriod", text("startPeriod", &h.start_period)?),
    ] {
        if let Some(v) = value {
            json[key] = v.into();
        }
    }
    if let Some(r) = h.retries.filter(|r| *r > 0) {
        json["retries"] = r.into();
    }
    let annotation = json.to_string();
    // The same parser the engine reads bundles with: what passes here runs.
    annotation
        .parse::<HealthCheck>()
        .map_err(|e| format!("healthcheck: {e}"))?;
    Ok(Some(annotation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: serde_json::Value) -> Result<Checked, String> {
        serde_json::from_value::<RunRequest>(json)
            .map_err(|e| e.to_string())?
            .check()
    }

    #[test]
    fn dockers_command_rules() {
        let ep = ["/ep".to_owned()];
        let cmd = ["c1".to_owned()];
        let c = req(serde_json::json!({"image": "a", "args": ["x"]}))
            .ok()
            .unwrap();
        assert_eq!(c.command.line(&ep, &cmd), ["/ep", "x"]);
        let c = req(serde_json::json!({"image": "a", "command": ["/b"]}))
            .ok()
            .unwrap();
        assert_eq!(c.command.line(&ep, &cmd), ["/b"]);
        let c = req(serde_json::json!({"image": "a"})).ok().unwrap();
        assert_eq!(c.command.line(&ep, &cmd), ["/ep", "c1"]);
        assert!(req(serde_json::json!({"image": "a", "cmd": ["/x"], "args": ["y"]})).is_err());
    }

    #[test]
    fn bad_fields_are_named() {
        for (body, field) in [
            (serde_json::json!({"image": "a", "env": ["NOEQ"]}), "env"),
            (
                serde_json::json!({"image": "a", "mounts": [{"type": "nfs", "target": "/x"}]}),
                "mounts[0]",
            ),
            (
                serde_json::json!({"image": "a", "mounts": [{"type": "tmpfs", "target": "/x/../y"}]}),
                "mounts[0].target",
            ),
            (
                serde_json::json!({"image": "a", "files": [{"target": "/s", "data": "!!"}]}),
                "files[0].data",
            ),
            (
                serde_json::json!({"image": "a", "healthcheck": {"test": ["CMD"]}}),
                "healthcheck.test",
            ),
            (
                serde_json::json!({"image": "a", "healthcheck": {"test": ["CMD", "x"], "interval": "soon"}}),
                "healthcheck.interval",
            ),
            (
                serde_json::json!({"image": "a", "network": "bridge"}),
                "network",
            ),
            (
                serde_json::json!({"image": "a", "resources": {"memory": 1}}),
                "resources.memory",
            ),
            (serde_json::json!({"image": "a", "user": "a b"}), "user"),
        ] {
            let err = req(body.clone()).err().unwrap_or_default();
            assert!(err.starts_with(field), "{body}: {err}");
        }
        assert!(
            req(serde_json::json!({"image": "a", "healthcheck": {"test": ["NONE"]}}))
                .ok()
                .unwrap()
                .health
                .is_none()
        );
        let c = req(serde_json::json!({"image": "a", "healthcheck": {"test": ["CMD-SHELL", "true"], "interval": "1s"}})).ok().unwrap();
        // Compared as JSON: key order depends on serde_json's `preserve_order`, which another
        // crate of the workspace may turn on.
        let health: serde_json::Value = serde_json::from_str(&c.health.unwrap()).unwrap();
        assert_eq!(
            health,
            serde_json::json!({"interval": "1s", "test": ["/bin/sh", "-c", "true"]})
        );
    }
}
