//! What the engine reads from a service bundle before running it: the service's name (its
//! directory under `/containers/services`), its restart policy, dependencies, health check,
//! grace period and whether it runs under the engine's init, all from annotations the builder
//! writes into `config.json` (from the manifest's `x-slipway` key), and the order in which
//! services start and stop.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// `no`, `always`, `on-failure` or `on-failure:N`.
pub const RESTART_ANNOTATION: &str = "org.slipway.restart";
/// Comma-separated names of services that must be running before this one starts.
pub const DEPENDS_ANNOTATION: &str = "org.slipway.dependsOn";
/// JSON `{"test": [...], "interval": "1s", "timeout": "500ms", "retries": 3, "startPeriod": "2s"}`.
pub const HEALTH_ANNOTATION: &str = "org.slipway.healthcheck";
/// How long the service gets between SIGTERM and SIGKILL when it is stopped (humantime: `10s`,
/// `500ms`).
pub const STOP_GRACE_ANNOTATION: &str = "org.slipway.stopGracePeriod";
/// `false` runs the command as the container's first process, without the engine's init.
pub const INIT_ANNOTATION: &str = "org.slipway.init";
/// A container label `K=V` made by `run` is the annotation `org.slipway.label.K: V`.
pub const LABEL_PREFIX: &str = "org.slipway.label.";
/// The image reference and manifest digest a container made by `run` came from.
pub const IMAGE_ANNOTATION: &str = "org.slipway.image";
pub const IMAGE_DIGEST_ANNOTATION: &str = "org.slipway.imageDigest";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: annotation {key}: {message}")]
    Annotation {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    #[error("bundle {path}: {name:?} is not a valid service name")]
    Name { path: PathBuf, name: String },
}

/// When a container that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    /// After a non-zero exit (or a failed start), at most `max` times when given.
    OnFailure {
        max: Option<u32>,
    },
}

impl RestartPolicy {
    /// Whether a run that ended (`success`: exit status 0) is followed by another, when
    /// `restarts` restarts have already happened.
    pub fn should_restart(self, success: bool, restarts: u32) -> bool {
        match self {
            Self::No => false,
            Self::Always => true,
            Self::OnFailure { max } => !success && max.is_none_or(|max| restarts < max),
        }
    }
}

impl FromStr for RestartPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "no" => Ok(Self::No),
            "always" => Ok(Self::Always),
            "on-failure" => Ok(Self::OnFailure { max: None }),
            _ => match s.strip_prefix("on-failure:") {
                Some(n) => n
                    .parse()
                    .map(|max| Self::OnFailure { max: Some(max) })
                    .map_err(|_| format!("{n:?} is not a restart count")),
                None => Err(format!(
                    "{s:?} is not a restart policy (no, always, on-failure, on-failure:N)"
                )),
            },
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::No => f.write_str("no"),
            Self::Always => f.write_str("always"),
            Self::OnFailure { max: None } => f.write_str("on-failure"),
            Self::OnFailure { max: Some(n) } => write!(f, "on-failure:{n}"),
        }
    }
}

/// A command run inside the running container, every `interval`, to tell whether the service
/// works. Defaults are Docker's (30 s interval and timeout, 3 retries, no start period).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The command, exec form (no shell unless it names one).
    pub test: Vec<String>,
    pub interval: Duration,
    /// A run taking longer is killed and counts as a failure.
    pub timeout: Duration,
    /// Consecutive failures (after the start period) that make the service unhealthy.
    pub retries: u32,
    /// Failures during this time after a start do not count; a success ends it.
    pub start_period: Duration,
}

/// The annotation as written, durations as humantime text ("1s", "500ms", "1m30s").
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HealthCheckJson {
    test: Vec<String>,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    start_period: Option<String>,
}

impl FromStr for HealthCheck {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let json: HealthCheckJson = serde_json::from_str(s).map_err(|e| e.to_string())?;
        if json.test.is_empty() || json.test[0].is_empty() {
            return Err("test must name a command".to_owned());
        }
        let duration = |field: &str, text: Option<String>, default: Duration| match text {
            None => Ok(default),
            Some(text) => humantime::parse_duration(&text)
                .map_err(|e| format!("{field} {text:?}: {e}"))
                .and_then(|d| {
                    if d.is_zero() && field != "startPeriod" {
                        Err(format!("{field} must be longer than 0"))
                    } else {
                        Ok(d)
                    }
                }),
        };
        let retries = json.retries.unwrap_or(3);
        if retries == 0 {
            return Err("retries must be at least 1".to_owned());
        }
        Ok(Self {
            test: json.test,
            interval: duration("interval", json.interval, Duration::from_secs(30))?,
            timeout: duration("timeout", json.timeout, Duration::from_secs(30))?,
            retries,
            start_period: duration("startPeriod", json.start_period, Duration::ZERO)?,
        })
    }
}

/// A service bundle, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub bundle: PathBuf,
    pub restart: RestartPolicy,
    pub depends_on: Vec<String>,
    pub health: Option<HealthCheck>,
    /// Its own grace period; the engine's default when it gives none.
    pub stop_grace: Option<Duration>,
    /// Whether its command runs under the engine's init (see [`crate::shim`]).
    pub init: bool,
    /// Its labels (annotations `org.slipway.label.K`).
    pub labels: BTreeMap<String, String>,
    /// The image reference and manifest digest (containers made by `run`).
    pub image: Option<String>,
    pub image_digest: Option<String>,
}

/// Service names are directory names and appear in URLs, log file names and container ids:
/// letters, digits and `_.-`, not starting with a dot or dash (so never `.` or `..`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !name.starts_with(['.', '-'])
}

impl ServiceSpec {
    /// Reads `bundle/config.json`; the service is named `name`.
    pub fn load(name: &str, bundle: &Path) -> Result<Self, SpecError> {
        if !valid_name(name) {
            return Err(SpecError::Name {
                path: bundle.to_owned(),
                name: name.to_owned(),
            });
        }
        let path = bundle.join("config.json");
        let text = fs::read(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        let config: serde_json::Value =
            serde_json::from_slice(&text).map_err(|source| SpecError::Json {
                path: path.clone(),
                source,
            })?;
        let annotation = |key: &'static str| -> Result<Option<&str>, SpecError> {
            match config.get("annotations").and_then(|a| a.get(key)) {
                None => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
                Some(other) => Err(SpecError::Annotation {
                    path: path.clone(),
                    key,
                    message: format!("expected a string, found {other}"),
                }),
            }
        };
        let restart = match annotation(RESTART_ANNOTATION)? {
            None => RestartPolicy::No,
            Some(s) => s.trim().parse().map_err(|message| SpecError::Annotation {
                path: path.clone(),
                key: RESTART_ANNOTATION,
                message,
            })?,
        };
        let mut depends_on = Vec::new();
        for dep in annotation(DEPENDS_ANNOTATION)?
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            if !valid_name(dep) || dep == name {
                return Err(SpecError::Annotation {
                    path: path.clone(),
                    key: DEPENDS_ANNOTATION,
                    message: format!("{dep:?} is not a service this one can depend on"),
                });
            }
            if !depends_on.iter().any(|d| d == dep) {
                depends_on.push(dep.to_owned());
            }
        }
        let health = match annotation(HEALTH_ANNOTATION)? {
            None => None,
            Some(s) => Some(s.parse().map_err(|message| SpecError::Annotation {
                path: path.clone(),
                key: HEALTH_ANNOTATION,
                message,
            })?),
        };
        let stop_grace =
            match annotation(STOP_GRACE_ANNOTATION)? {
                None => None,
                Some(s) => Some(humantime::parse_duration(s.trim()).map_err(|e| {
                    SpecError::Annotation {
                        path: path.clone(),
                        key: STOP_GRACE_ANNOTATION,
                        message: format!("{s:?} is not a duration (10s, 500ms): {e}"),
                    }
                })?),
            };
        let init = match annotation(INIT_ANNOTATION)?.map(str::trim) {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(SpecError::Annotation {
                    path: path.clone(),
                    key: INIT_ANNOTATION,
                    message: format!("{other:?} is neither true nor false"),
                });
            }
        };
        let annotations = config.get("annotations").and_then(|a| a.as_object());
        let labels = annotations
            .iter()
            .flat_map(|a| a.iter())
            .filter_map(|(k, v)| {
                Some((
                    k.strip_prefix(LABEL_PREFIX)?.to_owned(),
                    v.as_str()?.to_owned(),
                ))
            })
            .collect();
        Ok(Self {
            name: name.to_owned(),
            bundle: bundle.to_owned(),
            restart,
            depends_on,
            health,
            stop_grace,
            init,
            labels,
            image: annotation(IMAGE_ANNOTATION)?.map(str::to_owned),
            image_digest: annotation(IMAGE_DIGEST_ANNOTATION)?.map(str::to_owned),
        })
    }
}

/// The bundles of `dir` (subdirectories holding `config.json`), by name. A missing directory
/// holds none: an image without services is valid.
pub fn list_bundles(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut bundles = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.join("config.json").is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            bundles.push((name, path));
        }
    }
    bundles.sort();
    Ok(bundles)
}

/// A start order in which every service comes after its dependencies (Kahn's algorithm, ties
/// broken by name so the order is stable). Services that depend on an unknown service or sit
/// in (or behind) a dependency cycle are returned apart, each with the reason, and never start.
pub fn start_order(specs: &[ServiceSpec]) -> (Vec<String>, Vec<(String, String)>) {
    let known: BTreeMap<&str, &ServiceSpec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut problems: BTreeMap<String, String> = BTreeMap::new();
    for spec in specs {
        if let Some(dep) = spec
            .depends_on
            .iter()
            .find(|d| !known.contains_key(d.as_str()))
        {
            problems.insert(
                spec.name.clone(),
                format!("depends on {dep}, which is not a service of this image"),
            );
        }
    }
    let mut order = Vec::new();
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    loop {
        let ready: Vec<&str> = known
            .values()
            .filter(|s| !placed.contains(s.name.as_str()) && !problems.contains_key(&s.name))
            .filter(|s| s.depends_on.iter().all(|d| placed.contains(d.as_str())))
            .map(|s| s.name.as_str())
            .collect();
        if ready.is_empty() {
            break;
        }
        for name in ready {
            placed.insert(name);
            order.push(name.to_owned());
        }
    }
    for spec in specs {
        if !placed.contains(spec.name.as_str()) && !problems.contains_key(&spec.name) {
            problems.insert(
                spec.name.clone(),
                format!(
                    "depends on {}, which cannot start (a dependency cycle or a broken dependency)",
                    spec.depends_on.join(",")
                ),
            );
        }
    }
    (order, problems.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, deps: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            bundle: PathBuf::from(name),
            restart: RestartPolicy::No,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            health: None,
            stop_grace: None,
            init: true,
            labels: BTreeMap::new(),
            image: None,
            image_digest: None,
        }
    }

    #[test]
    fn restart_policies_parse_and_decide() {
        let p: RestartPolicy = "on-failure:3".parse().unwrap();
        assert_eq!(p, RestartPolicy::OnFailure { max: Some(3) });
        assert!(p.should_restart(false, 2));
        assert!(!p.should_restart(false, 3));
        assert!(!p.should_restart(true, 0));
        assert!(RestartPolicy::Always.should_restart(true, 1000));
        assert!(!RestartPolicy::No.should_restart(false, 0));
        assert_eq!(
            "on-failure".parse(),
            Ok(RestartPolicy::OnFailure { max: None })
        );
        assert!("sometimes".parse::<RestartPolicy>().is_err());
        assert!("on-failure:x".parse::<RestartPolicy>().is_err());
        assert_eq!(p.to_string(), "on-failure:3");
    }

    #[test]
    fn names_that_could_escape_a_directory_are_invalid() {
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "-flag", "a b", "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for good in ["web", "db-1", "a.b_c"] {
            assert!(valid_name(good), "{good:?}");
        }
    }

    #[test]
    fn dependencies_come_first_and_cycles_and_unknowns_are_set_apart() {
        let specs = [
            spec("web", &["db", "cache"]),
            spec("db", &[]),
            spec("cache", &["db"]),
            spec("a", &["b"]),
            spec("b", &["a"]),
            spec("lost", &["nowhere"]),
            spec("behind", &["lost"]),
        ];
        let (order, problems) = start_order(&specs);
        assert_eq!(order, ["db", "cache", "web"]);
        let names: Vec<&str> = problems.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "behind", "lost"]);
        assert!(problems[3].1.contains("nowhere"), "{problems:?}");
    }

    #[test]
    fn annotations_are_read_and_bad_ones_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let write = |annotations: serde_json::Value| {
            fs::write(
                dir.path().join("config.json"),
                serde_json::json!({ "annotations": annotations }).to_string(),
            )
            .unwrap();
        };
        write(
            serde_json::json!({RESTART_ANNOTATION: "on-failure:2", DEPENDS_ANNOTATION: "db, cache,db"}),
        );
        let s = ServiceSpec::load("web", dir.path()).unwrap();
        assert_eq!(s.restart, RestartPolicy::OnFailure { max: Some(2) });
        assert_eq!(s.depends_on, ["db", "cache"]);

        write(serde_json::json!({RESTART_ANNOTATION: "maybe"}));
        let err = ServiceSpec::load("web", dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("maybe"),
            "{err}"
        );

        write(serde_json::json!({DEPENDS_ANNOTATION: "../etc"}));
        assert!(ServiceSpec::load("web", dir.path()).is_err());
        write(serde_json::json!({}));
        let s = ServiceSpec::load("web", dir.path()).unwrap();
        assert_eq!(s.restart, RestartPolicy::No);
        assert_eq!(s.health, None);
        assert_eq!((s.stop_grace, s.init), (None, true));
    }

    #[test]
    fn grace_period_and_init_annotations_are_read_and_bad_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let load = |annotations: serde_json::Value| {
            fs::write(
                dir.path().join("config.json"),
                serde_json::json!({ "annotations": annotations }).to_string(),
            )
            .unwrap();
            ServiceSpec::load("web", dir.path()).map_err(|e| e.to_string())
        };
        let s = load(serde_json::json!({STOP_GRACE_ANNOTATION: "1m30s", INIT_ANNOTATION: "false"}))
            .unwrap();
        assert_eq!(s.stop_grace, Some(Duration::from_secs(90)));
        assert!(!s.init);
        let s = load(serde_json::json!({STOP_GRACE_ANNOTATION: "0s", INIT_ANNOTATION: "true"}))
            .unwrap();
        assert_eq!((s.stop_grace, s.init), (Some(Duration::ZERO), true));
        for (key, bad) in [
            (STOP_GRACE_ANNOTATION, "soon"),
            (STOP_GRACE_ANNOTATION, "-1s"),
            (INIT_ANNOTATION, "no"),
            (INIT_ANNOTATION, ""),
        ] {
            let err = load(serde_json::json!({ key: bad })).unwrap_err();
            assert!(err.contains(key) && err.contains("config.json"), "{err}");
        }
    }

    #[test]
    fn health_checks_parse_with_humantime_durations_and_defaults() {
        let h: HealthCheck = r#"{"test":["/bin/true"],"interval":"1s","timeout":"500ms","retries":2,"startPeriod":"1m30s"}"#
            .parse()
            .unwrap();
        assert_eq!(h.test, ["/bin/true"]);
        assert_eq!(h.interval, Duration::from_secs(1));
        assert_eq!(h.timeout, Duration::from_millis(500));
        assert_eq!(h.retries, 2);
        assert_eq!(h.start_period, Duration::from_secs(90));
        let d: HealthCheck = r#"{"test":["x"]}"#.parse().unwrap();
        assert_eq!(
            (d.interval, d.timeout, d.retries, d.start_period),
            (
                Duration::from_secs(30),
                Duration::from_secs(30),
                3,
                Duration::ZERO
            )
        );
        for bad in [
            r#"{"test":[]}"#,
            r#"{"test":["x"],"interval":"soon"}"#,
            r#"{"test":["x"],"interval":"0s"}"#,
            r#"{"test":["x"],"retries":0}"#,
            r#"{"test":["x"],"tries":1}"#,
            r#"["x"]"#,
        ] {
            assert!(bad.parse::<HealthCheck>().is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("config.json"),
            serde_json::json!({"annotations": {HEALTH_ANNOTATION: "{\"test\": 1}"}}).to_string(),
        )
        .unwrap();
        let err = ServiceSpec::load("web", dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(HEALTH_ANNOTATION) && err.contains("config.json"),
            "{err}"
        );
    }
}
