//! The engine proper: one supervising task per service container. A task starts its container
//! once the dependencies run, watches its process (a pidfd, readable when it ends), logs its
//! output, restarts it by its policy with exponential backoff, and obeys start, stop and
//! restart commands from the API. [`Engine::shutdown`] stops every service once its dependents
//! have stopped, independent ones at the same time, so a shutdown takes as long as the longest
//! chain of grace periods rather than their sum.
//! A container's command runs under the engine's init ([`crate::shim`]) unless its bundle says
//! `org.slipway.init: false`: a stop then reaches the command even when, as PID 1 of its pid
//! namespace, it would ignore SIGTERM.
//! While a container with a health check runs, a second task runs the check inside it (see
//! [`crate::exec`]) and records `starting`/`healthy`/`unhealthy`; dependents wait for `healthy`.
//!
//! Everything runs on one thread (a current-thread tokio runtime): libcontainer starts a
//! container with a raw clone3, which runs no fork handlers, so the child could deadlock on a
//! libc lock held by another thread of the engine at that moment. For the same reason what may
//! block (creating a container, entering one) is not done on that thread but in helper
//! processes ([`create_helper_main`], [`crate::exec::helper_main`]); the engine, a child
//! subreaper, inherits the containers' processes when the helpers exit.
//!
//! Containers outlive the engine: their output goes to files ([`logs::Output`]) rather than
//! pipes, and [`Engine::load`] takes over the containers of the state directory that still run
//! (libcontainer's state, loaded back), so an engine killed and started again supervises the
//! same processes.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use slipway_runtime::{Container, ExitStatus, Runtime, Stdio};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};

use crate::exec::{ExecError, ExecOutcome};
use crate::logs::{self, Logs};
use crate::spec::{self, HealthCheck, RestartPolicy, ServiceSpec};

/// The first restart waits this long; each following one twice as long, up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run this long counts as stable: the next restart waits [`MIN_BACKOFF`] again.
pub const STABLE_RUN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no container named {0}")]
    NotFound(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {name} cannot run: {reason}")]
    Broken { name: String, reason: String },
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("sending {signal} to container {name}: {source}")]
    Signal {
        name: String,
        signal: Signal,
        source: std::io::Error,
    },
    #[error("reading the service bundles in {dir}: {source}")]
    Bundles {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Exec(ExecError),
    #[error("a container named {0} exists already")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("container {0} is a service of the image; only containers made by run can be removed")]
    NotRemovable(String),
    /// The image could not be pulled or unpacked (the message says why).
    #[error("{0}")]
    Pull(crate::run::RunError),
    #[error("creating container {name}: {source}")]
    Create {
        name: String,
        source: crate::run::RunError,
    },
    #[error("removing container {name}: {path}: {source}")]
    Remove {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening the log of {name}: {source}")]
    Log {
        name: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for its dependencies to run.
    Waiting,
    /// Being created and started (by a helper process).
    Starting,
    Running,
    /// Ended; restarting after the backoff delay.
    Restarting,
    /// Ended and, by its policy, not restarted.
    Exited,
    /// Stopped by a request (or the engine's shutdown).
    Stopped,
    /// Its bundle or dependencies are broken: it never runs.
    Failed,
}

/// The result of a running container's health checks (`org.slipway.healthcheck`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No check has passed yet, and fewer than `retries` failed since the start period.
    Starting,
    Healthy,
    /// `retries` consecutive checks failed (after the start period).
    Unhealthy,
}

/// What `ps` and `inspect` show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    pub state: State,
    pub pid: Option<i32>,
    pub restart: String,
    pub depends_on: Vec<String>,
    /// How many times its process was started (or a start was attempted).
    pub runs: u32,
    /// Restarts by the policy since the last start by a request.
    pub restarts: u32,
    pub exit_code: Option<i32>,
    pub last_exit: Option<String>,
    pub started_at: Option<String>,
    pub error: Option<String>,
    pub bundle: PathBuf,
    pub log_file: PathBuf,
    /// While it runs, when it has a health check.
    #[serde(default)]
    pub health: Option<Health>,
    /// Consecutive failed health checks.
    #[serde(default)]
    pub health_failures: u32,
    /// The output (or error) of the latest health check.
    #[serde(default)]
    pub health_output: Option<String>,
    /// Whether the kernel's OOM killer killed a process of the last run (its memory limit
    /// was reached); `None` when the engine could not tell (no memory cgroup to read).
    #[serde(default)]
    pub oom_killed: Option<bool>,
    /// The labels `run` was given.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The image reference and manifest digest of a container made by `run`.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub image_digest: Option<String>,
}

/// Where the engine finds and puts things.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub bundles: PathBuf,
    pub log_dir: PathBuf,
    pub state_dir: PathBuf,
    /// The bundles of containers made by `run`, one directory each; loaded at start as well.
    pub containers: PathBuf,
    /// Unpacked images, `IMAGES/<manifest-digest-hex>/`, the lower directories of `run`'s
    /// containers.
    pub images: PathBuf,
    /// The OCI store images are pulled into.
    pub store: PathBuf,
    /// The program run as `PROGRAM pull-image ...` to pull (this binary).
    pub puller: PathBuf,
    /// The program containers run under as their init, started as [`crate::shim::NAME`] (this
    /// binary); `None` runs every command as its container's first process.
    pub init: Option<PathBuf>,
    /// The grace period between SIGTERM and SIGKILL of a service whose bundle sets none
    /// (`org.slipway.stopGracePeriod`) when a stop request gives none either.
    pub stop_grace: Duration,
    /// The directories of `run`'s volume mounts.
    pub volumes: PathBuf,
    /// Registries (`HOST:PORT`) pulled from over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
}

pub use crate::request::RunRequest;

/// A request to a supervisor. A grace period of `None` is the service's own.
enum Command {
    Start(oneshot::Sender<()>),
    Stop {
        grace: Option<Duration>,
        done: oneshot::Sender<()>,
    },
    Restart {
        grace: Option<Duration>,
        done: oneshot::Sender<()>,
    },
}

struct Entry {
    info: ContainerInfo,
    logs: Arc<Logs>,
    /// The running process, for `kill`: a pidfd never names a recycled pid.
    pidfd: Option<Arc<OwnedFd>>,
    commands: Option<mpsc::UnboundedSender<Command>>,
}

struct Shared {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Bumped on every state change; tasks waiting for dependencies watch it.
    changed: watch::Sender<u64>,
    shutting_down: std::sync::atomic::AtomicBool,
    runtime: Runtime,
    /// The grace period of services whose bundle gives none.
    stop_grace: Duration,
    /// Names being created by `run` or removed by `rm`: taken, but not (or no longer) usable.
    /// Locked after `entries` when both are.
    reserved: Mutex<BTreeSet<String>>,
    /// This program, run as the helper processes that create containers and exec in them.
    program: PathBuf,
    /// The init program containers run under, unless the runtime could not open it.
    init: Option<PathBuf>,
    /// The bundles of containers made by `run`: theirs record how they ended
    /// ([`ENDED_FILE`]), so an engine started again does not start them.
    containers: PathBuf,
}

/// In the bundle of a container made by `run` that ended (by itself, not restarted, or by a
/// stop): its state, exit code and how it ended, JSON. It stays ended when the engine starts
/// again (the swarm executor relies on that: an ended task's container is never run twice).
pub const ENDED_FILE: &str = "ended.json";

#[derive(Serialize, Deserialize)]
struct EndedRecord {
    state: State,
    exit_code: Option<i32>,
    last_exit: Option<String>,
}

impl Shared {
    /// Where containers' stdout and stderr files are (see [`logs::Output`]).
    fn outputs(&self) -> PathBuf {
        self.runtime.state_dir().join("output")
    }
}

/// Frees a reserved name when creating or removing its container ends, however it ends.
struct Reservation {
    shared: Arc<Shared>,
    name: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.shared.reserved).remove(&self.name);
    }
}

impl Shared {
    fn update(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        {
            let mut entries = lock(&self.entries);
            if let Some(entry) = entries.get_mut(name) {
                f(entry);
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Whether a dependent of `name` may start: it runs and, when it has a health check,
    /// the check passed.
    fn health(&self, name: &str) -> Option<Health> {
        let entries = lock(&self.entries);
        entries.get(name).and_then(|e| e.info.health)
    }

    fn ready(&self, name: &str) -> bool {
        let entries = lock(&self.entries);
        entries.get(name).is_some_and(|e| {
            e.info.state == State::Running && matches!(e.info.health, None | Some(Health::Healthy))
        })
    }
}

/// The engine: the services of one bundle directory. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    specs: Arc<Vec<ServiceSpec>>,
    /// The start order; containers made by `run` are appended, and removed by `rm`.
    order: Arc<Mutex<Vec<String>>>,
    config: Arc<EngineConfig>,
    /// Running containers of an earlier engine, until their supervisors take them.
    adopted: Arc<Mutex<BTreeMap<String, Container>>>,
}

/// A container's entry before it first runs.
fn new_entry(
    log_dir: &Path,
    name: &str,
    bundle: &Path,
    spec: Option<&ServiceSpec>,
    error: Option<String>,
) -> Result<Entry, EngineError> {
    let log_file = log_dir.join(format!("{name}.log"));
    let logs = Logs::open(&log_file).map_err(|source| EngineError::Log {
        name: name.to_owned(),
        source,
    })?;
    let info = ContainerInfo {
        name: name.to_owned(),
        state: if error.is_some() {
            State::Failed
        } else {
            State::Waiting
        },
        pid: None,
        restart: spec.map(|s| s.restart.to_string()).unwrap_or_default(),
        depends_on: spec.map(|s| s.depends_on.clone()).unwrap_or_default(),
        runs: 0,
        restarts: 0,
        exit_code: None,
        last_exit: None,
        started_at: None,
        error,
        bundle: bundle.to_owned(),
        log_file,
        health: None,
        health_failures: 0,
        health_output: None,
        oom_killed: None,
        labels: spec.map(|s| s.labels.clone()).unwrap_or_default(),
        image: spec.and_then(|s| s.image.clone()),
        image_digest: spec.and_then(|s| s.image_digest.clone()),
    };
    Ok(Entry {
        info,
        logs: Arc::new(logs),
        pidfd: None,
        commands: None,
    })
}

impl Engine {
    /// Reads every bundle. Bundles that cannot run (bad annotations, unknown dependency,
    /// dependency cycle) are listed as `failed`, with the reason.
    pub fn load(config: &EngineConfig) -> Result<Self, EngineError> {
        let mut runtime = Runtime::new(&config.state_dir).map_err(|e| EngineError::Bundles {
            dir: config.state_dir.clone(),
            source: std::io::Error::other(e),
        })?;
        let mut init = None;
        if let Some(program) = &config.init {
            // Without it the services still run, as their containers' first process.
            match runtime.clone().with_init(program, crate::shim::NAME) {
                Ok(with_init) => {
                    runtime = with_init;
                    init = Some(program.clone());
                }
                Err(e) => tracing::error!("{e}: commands run without the init"),
            }
        }
        let mut bundles = Vec::new();
        for dir in [&config.bundles, &config.containers] {
            let found = spec::list_bundles(dir).map_err(|source| EngineError::Bundles {
                dir: dir.clone(),
                source,
            })?;
            for (name, path) in found {
                // `run` refuses names of services, so this only happens when the image changed.
                if bundles.iter().any(|(n, _)| *n == name) {
                    tracing::error!("skipping bundle {}: {name} exists already", path.display());
                } else {
                    bundles.push((name, path));
                }
            }
        }
        let mut specs = Vec::new();
        let mut broken = Vec::new();
        for (name, path) in bundles {
            match ServiceSpec::load(&name, &path) {
                Ok(spec) => specs.push(spec),
                Err(e) if spec::valid_name(&name) => broken.push((name, path, e.to_string())),
                // A directory whose name is not a service name cannot be addressed at all.
                Err(e) => tracing::error!("skipping bundle: {e}"),
            }
        }
        let (order, problems) = spec::start_order(&specs);
        let mut entries = BTreeMap::new();
        let mut add =
            |name: &str, bundle: &Path, spec: Option<&ServiceSpec>, error: Option<String>| {
                let entry = new_entry(&config.log_dir, name, bundle, spec, error)?;
                entries.insert(name.to_owned(), entry);
                Ok::<_, EngineError>(())
            };
        for spec in &specs {
            let problem = problems.iter().find(|(n, _)| *n == spec.name);
            add(
                &spec.name,
                &spec.bundle,
                Some(spec),
                problem.map(|p| p.1.clone()),
            )?;
        }
        for (name, path, error) in broken {
            add(&name, &path, None, Some(error))?;
        }
        for (name, entry) in &entries {
            if let Some(error) = &entry.info.error {
                tracing::error!("service {name}: {error}");
                entry.logs.push("engine", error);
            }
        }
        let specs: Vec<ServiceSpec> = specs
            .into_iter()
            .filter(|s| order.contains(&s.name))
            .collect();
        // Containers an earlier engine started with this state directory: those still running
        // are taken over, what is left of the others is removed.
        let mut adopted = BTreeMap::new();
        for spec in &specs {
            let id = container_id(&spec.name);
            match runtime.load(&id, &spec.bundle, spec.init) {
                Ok(None) => {}
                Ok(Some(container)) if container.is_running() => {
                    adopted.insert(spec.name.clone(), container);
                }
                Ok(Some(_)) => runtime.clean_up(&id, &spec.bundle),
                Err(e) => {
                    tracing::warn!("service {}: {e}; removing its state", spec.name);
                    runtime.clean_up(&id, &spec.bundle);
                }
            }
        }
        let mut entries = entries;
        for spec in &specs {
            if adopted.contains_key(&spec.name) || !spec.bundle.starts_with(&config.containers) {
                continue;
            }
            let ended = std::fs::read(spec.bundle.join(ENDED_FILE))
                .ok()
                .and_then(|text| serde_json::from_slice::<EndedRecord>(&text).ok());
            if let (Some(ended), Some(entry)) = (ended, entries.get_mut(&spec.name)) {
                entry.info.state = ended.state;
                entry.info.exit_code = ended.exit_code;
                entry.info.last_exit = ended.last_exit;
            }
        }
        Ok(Self {
            shared: Arc::new(Shared {
                entries: Mutex::new(entries),
                changed: watch::channel(0).0,
                shutting_down: false.into(),
                runtime,
                stop_grace: config.stop_grace,
                reserved: Mutex::new(BTreeSet::new()),
                program: config.puller.clone(),
                containers: config.containers.clone(),
                init,
            }),
            adopted: Arc::new(Mutex::new(adopted)),
            specs: Arc::new(specs),
            order: Arc::new(Mutex::new(order)),
            config: Arc::new(config.clone()),
        })
    }

    /// Starts one supervising task per runnable service. Call it inside the tokio runtime.
    pub fn spawn_supervisors(&self) {
        for spec in self.specs.iter() {
            self.spawn_supervisor(spec.clone(), None);
        }
    }

    /// `started` is answered once the container first runs (or fails to start).
    fn spawn_supervisor(&self, spec: ServiceSpec, started: Option<oneshot::Sender<()>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.update(&spec.name, |e| e.commands = Some(tx));
        let adopted = lock(&self.adopted).remove(&spec.name);
        let ended = spec.bundle.starts_with(&self.config.containers)
            && matches!(
                lock(&self.shared.entries)
                    .get(&spec.name)
                    .map(|e| e.info.state),
                Some(State::Exited | State::Stopped)
            );
        let mut supervisor = Supervisor::new(self.shared.clone(), spec, rx);
        supervisor.adopted = adopted;
        supervisor.begin_ended = ended;
        supervisor.started_replies.extend(started);
        tokio::spawn(async move { supervisor.run().await });
    }

    fn shutting_down(&self) -> bool {
        self.shared
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Takes `name` for a container being created or removed; `None` when it is taken.
    fn reserve(&self, entries: &BTreeMap<String, Entry>, name: &str) -> Option<Reservation> {
        let mut reserved = lock(&self.shared.reserved);
        if entries.contains_key(name) || reserved.contains(name) {
            return None;
        }
        reserved.insert(name.to_owned());
        Some(Reservation {
            shared: self.shared.clone(),
            name: name.to_owned(),
        })
    }

    /// Creates a container from `request.image` (pulled and unpacked by a `pull-image` child
    /// process), writes its bundle under the containers directory and starts it; returns once
    /// it runs or failed to start. The request is checked before anything is pulled, and a
    /// failure leaves no bundle behind.
    pub async fn run(&self, request: RunRequest) -> Result<ContainerInfo, EngineError> {
        if self.shutting_down() {
            return Err(EngineError::ShuttingDown);
        }
        let checked = request.check().map_err(EngineError::Invalid)?;
        let image = checked.image.as_str();
        let (name, _reservation) = {
            let entries = lock(&self.shared.entries);
            let free = |name: &str| !self.config.containers.join(name).exists();
            match &request.name {
                Some(name) => {
                    if !spec::valid_name(name) {
                        return Err(EngineError::Invalid(format!(
                            "{name:?} is not a valid container name"
                        )));
                    }
                    let reservation = free(name)
                        .then(|| self.reserve(&entries, name))
                        .flatten()
                        .ok_or_else(|| EngineError::Exists(name.clone()))?;
                    (name.clone(), reservation)
                }
                None => {
                    let base = crate::run::name_base(image);
                    (1u32..)
                        .map(|n| format!("{base}-{n}"))
                        .find_map(|name| {
                            free(&name)
                                .then(|| self.reserve(&entries, &name))
                                .flatten()
                                .map(|r| (name, r))
                        })
                        .expect("some number is free")
                }
            }
        };
        let config = &self.config;
        let pulled = crate::run::pull_in_child(
            &config.puller,
            &config.store,
            &config.images,
            image,
            &config.insecure_registries,
        )
        .await
        .map_err(EngineError::Pull)?;
        let dirs = crate::run::Dirs {
            containers: config.containers.clone(),
            images: config.images.clone(),
            volumes: config.volumes.clone(),
        };
        let bundle =
            crate::run::write_bundle(&dirs, &name, &pulled, &checked).map_err(|source| {
                EngineError::Create {
                    name: name.clone(),
                    source,
                }
            })?;
        let created = ServiceSpec::load(&name, &bundle)
            .map_err(|e| EngineError::Invalid(e.to_string()))
            .and_then(|spec| {
                let entry = new_entry(&config.log_dir, &name, &bundle, Some(&spec), None)?;
                Ok((spec, entry))
            });
        let (spec, entry) = match created {
            Ok(created) => created,
            Err(e) => {
                let _ = crate::run::remove_bundle(&bundle);
                return Err(e);
            }
        };
        entry
            .logs
            .push("engine", &format!("created from {}", pulled.reference));
        tracing::info!(
            "container {name}: created from {} ({})",
            pulled.reference,
            pulled.digest
        );
        lock(&self.shared.entries).insert(name.clone(), entry);
        lock(&self.order).push(name.clone());
        let (started, wait) = oneshot::channel();
        self.spawn_supervisor(spec, Some(started));
        let _ = wait.await;
        self.inspect(&name)
    }

    /// Removes a container made by `run`: stops it (SIGTERM, SIGKILL after `grace`, by default
    /// its own) when it runs, then deletes its bundle and log; the runtime's state went with the
    /// stop. Returns its last information.
    pub async fn remove(
        &self,
        name: &str,
        grace: Option<Duration>,
    ) -> Result<ContainerInfo, EngineError> {
        if self.shutting_down() {
            return Err(EngineError::ShuttingDown);
        }
        let (commands, info, _reservation) = {
            let mut entries = lock(&self.shared.entries);
            let entry = entries
                .get(name)
                .ok_or_else(|| EngineError::NotFound(name.to_owned()))?;
            if !entry.info.bundle.starts_with(&self.config.containers) {
                return Err(EngineError::NotRemovable(name.to_owned()));
            }
            // From here on other requests find no container under this name, and `run` cannot
            // take the name until the bundle is gone.
            let mut entry = entries.remove(name).expect("looked up above");
            let mut reserved = lock(&self.shared.reserved);
            reserved.insert(name.to_owned());
            drop(reserved);
            let reservation = Reservation {
                shared: self.shared.clone(),
                name: name.to_owned(),
            };
            (entry.commands.take(), entry.info, reservation)
        };
        lock(&self.order).retain(|n| n != name);
        if let Some(commands) = commands {
            let (done, wait) = oneshot::channel();
            if commands.send(Command::Stop { grace, done }).is_ok() {
                let _ = wait.await;
            }
            // Dropping the sender ends the supervisor.
        }
        self.shared.changed.send_modify(|n| *n += 1);
        tracing::info!("container {name}: removed");
        let remove = |path: &Path, result: std::io::Result<()>| match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(EngineError::Remove {
                name: name.to_owned(),
                path: path.to_owned(),
                source: e,
            }),
            _ => Ok(()),
        };
        remove(&info.bundle, crate::run::remove_bundle(&info.bundle))?;
        remove(&info.log_file, std::fs::remove_file(&info.log_file))?;
        let mut info = info;
        info.state = State::Stopped;
        info.pid = None;
        Ok(info)
    }

    /// The manifest digest `image` names in its registry (asked by a `resolve-digest` child
    /// process; nothing is pulled).
    pub async fn distribution(
        &self,
        image: &str,
    ) -> Result<crate::run::ResolvedDigest, EngineError> {
        slipway_oci::resolve::parse_reference(image)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        crate::run::resolve_digest_in_child(
            &self.config.puller,
            image,
            &self.config.insecure_registries,
        )
        .await
        .map_err(EngineError::Pull)
    }

    pub fn list(&self) -> Vec<ContainerInfo> {
        let entries = lock(&self.shared.entries);
        entries.values().map(|e| e.info.clone()).collect()
    }

    pub fn inspect(&self, name: &str) -> Result<ContainerInfo, EngineError> {
        let entries = lock(&self.shared.entries);
        entries
            .get(name)
            .map(|e| e.info.clone())
            .ok_or_else(|| EngineError::NotFound(name.to_owned()))
    }

    pub fn logs(&self, name: &str) -> Result<Arc<Logs>, EngineError> {
        let entries = lock(&self.shared.entries);
        entries
            .get(name)
            .map(|e| e.logs.clone())
            .ok_or_else(|| EngineError::NotFound(name.to_owned()))
    }

    fn commands(&self, name: &str) -> Result<mpsc::UnboundedSender<Command>, EngineError> {
        if self.shutting_down() {
            return Err(EngineError::ShuttingDown);
        }
        let entries = lock(&self.shared.entries);
        let entry = entries
            .get(name)
            .ok_or_else(|| EngineError::NotFound(name.to_owned()))?;
        entry.commands.clone().ok_or_else(|| EngineError::Broken {
            name: name.to_owned(),
            reason: entry.info.error.clone().unwrap_or_default(),
        })
    }

    async fn send(
        &self,
        name: &str,
        make: impl FnOnce(oneshot::Sender<()>) -> Command,
    ) -> Result<ContainerInfo, EngineError> {
        let commands = self.commands(name)?;
        let (done, wait) = oneshot::channel();
        if commands.send(make(done)).is_ok() {
            let _ = wait.await;
        }
        self.inspect(name)
    }

    /// Starts a stopped or exited container (after its dependencies), resetting its restart
    /// count. A running container is left alone.
    pub async fn start(&self, name: &str) -> Result<ContainerInfo, EngineError> {
        self.send(name, Command::Start).await
    }

    /// SIGTERM to the container (to its init, which passes it on, or else to every process of
    /// it), SIGKILL after `grace` (by default the service's own grace period); returns once it
    /// is gone. It stays stopped until started again.
    pub async fn stop(
        &self,
        name: &str,
        grace: Option<Duration>,
    ) -> Result<ContainerInfo, EngineError> {
        self.send(name, |done| Command::Stop { grace, done }).await
    }

    /// Stops (as [`Engine::stop`]) and starts the container again at once.
    pub async fn restart(
        &self,
        name: &str,
        grace: Option<Duration>,
    ) -> Result<ContainerInfo, EngineError> {
        self.send(name, |done| Command::Restart { grace, done })
            .await
    }

    /// Sends `signal` to the container's main process. What follows its end is up to the
    /// restart policy, as for any other exit.
    pub fn kill(&self, name: &str, signal: Signal) -> Result<(), EngineError> {
        let pidfd = {
            let entries = lock(&self.shared.entries);
            let entry = entries
                .get(name)
                .ok_or_else(|| EngineError::NotFound(name.to_owned()))?;
            entry
                .pidfd
                .clone()
                .ok_or_else(|| EngineError::NotRunning(name.to_owned()))?
        };
        let sig = rustix::process::Signal::from_named_raw(signal as i32)
            .expect("every nix Signal is a named signal");
        rustix::process::pidfd_send_signal(&*pidfd, sig).map_err(|e| match e {
            rustix::io::Errno::SRCH => EngineError::NotRunning(name.to_owned()),
            e => EngineError::Signal {
                name: name.to_owned(),
                signal,
                source: e.into(),
            },
        })
    }

    /// Runs `command` inside the running container `name` (its namespaces, cgroup, user and
    /// capabilities), waiting at most `timeout`.
    pub async fn exec(
        &self,
        name: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutcome, EngineError> {
        let bundle = {
            let entries = lock(&self.shared.entries);
            let entry = entries
                .get(name)
                .ok_or_else(|| EngineError::NotFound(name.to_owned()))?;
            if entry.info.state != State::Running || entry.pidfd.is_none() {
                return Err(EngineError::NotRunning(name.to_owned()));
            }
            entry.info.bundle.clone()
        };
        crate::exec::exec_in_child(
            &self.shared.program,
            self.shared.runtime.state_dir(),
            &container_id(name),
            &bundle,
            command,
            timeout,
        )
        .await
        .map_err(EngineError::Exec)
    }

    /// Stops every container, each with its own grace period between SIGTERM and SIGKILL, and
    /// returns how long it took. A service is stopped once every service depending on it has
    /// stopped; services that do not wait for one another stop at the same time (concurrent
    /// futures on the engine's one thread). Requests that would start something are refused
    /// from now on.
    pub async fn shutdown(&self) -> Duration {
        use futures_util::future::{FutureExt, LocalBoxFuture, Shared, join_all};
        self.shared
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let began = Instant::now();
        let order = lock(&self.order).clone();
        let depends_on: BTreeMap<String, Vec<String>> = {
            let entries = lock(&self.shared.entries);
            order
                .iter()
                .filter_map(|name| {
                    let entry = entries.get(name)?;
                    Some((name.clone(), entry.info.depends_on.clone()))
                })
                .collect()
        };
        // In reverse start order every dependent comes before its dependencies, so the stops
        // a service waits for exist when its own is made.
        let mut stops: BTreeMap<&str, Shared<LocalBoxFuture<'static, ()>>> = BTreeMap::new();
        for name in order.iter().rev() {
            let dependents: Vec<_> = depends_on
                .iter()
                .filter(|(_, deps)| deps.contains(name))
                .filter_map(|(dependent, _)| stops.get(dependent.as_str()).cloned())
                .collect();
            let engine = self.clone();
            let owned = name.clone();
            let stop = async move {
                join_all(dependents).await;
                engine.stop_for_shutdown(&owned).await;
            };
            stops.insert(name, stop.boxed_local().shared());
        }
        join_all(stops.into_values()).await;
        began.elapsed()
    }

    async fn stop_for_shutdown(&self, name: &str) {
        let commands = {
            let entries = lock(&self.shared.entries);
            entries.get(name).and_then(|e| e.commands.clone())
        };
        let Some(commands) = commands else { return };
        let began = Instant::now();
        let (done, wait) = oneshot::channel();
        if commands.send(Command::Stop { grace: None, done }).is_ok() {
            let _ = wait.await;
        }
        tracing::info!(
            "service {name} stopped in {} ms",
            began.elapsed().as_millis()
        );
    }
}

/// How a run ended, as the supervisor needs it.
enum Ended {
    /// By itself (or a `kill`): the restart policy decides.
    Exit(Option<ExitStatus>),
    /// By a stop request: stays stopped.
    Stopped(Vec<oneshot::Sender<()>>),
    /// By a restart request: starts again at once.
    Restarted(Vec<oneshot::Sender<()>>),
    /// The command channel closed (the engine is going away).
    Gone,
}

struct Supervisor {
    shared: Arc<Shared>,
    spec: ServiceSpec,
    commands: mpsc::UnboundedReceiver<Command>,
    logs: Arc<Logs>,
    /// Replies owed once the container runs (or fails to start).
    started_replies: Vec<oneshot::Sender<()>>,
    /// A container still running from an earlier engine: the first run takes it over.
    adopted: Option<Container>,
    /// A container of `run` that had ended before the engine started: it waits for a start.
    begin_ended: bool,
}

impl Supervisor {
    fn new(
        shared: Arc<Shared>,
        spec: ServiceSpec,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        let logs = {
            let entries = lock(&shared.entries);
            entries[&spec.name].logs.clone()
        };
        Self {
            shared,
            spec,
            commands,
            logs,
            started_replies: Vec::new(),
            adopted: None,
            begin_ended: false,
        }
    }

    fn note(&self, message: &str) {
        tracing::info!("service {}: {message}", self.spec.name);
        self.logs.push("engine", message);
    }

    /// The grace period of a stop: the request's, else the service's, else the engine's.
    fn grace(&self, requested: Option<Duration>) -> Duration {
        requested
            .or(self.spec.stop_grace)
            .unwrap_or(self.shared.stop_grace)
    }

    /// Writes [`ENDED_FILE`] for a container made by `run` (removed when it starts again).
    /// A container with a restart policy stopped by the engine's shutdown starts again with
    /// the engine, as Docker does; one without stays ended.
    fn record_end(&self, state: State) {
        let shutdown = self
            .shared
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst);
        if !self.spec.bundle.starts_with(&self.shared.containers)
            || (shutdown && state == State::Stopped && self.spec.restart != RestartPolicy::No)
        {
            return;
        }
        let ended = {
            let entries = lock(&self.shared.entries);
            entries.get(&self.spec.name).map(|e| EndedRecord {
                state,
                exit_code: e.info.exit_code,
                last_exit: e.info.last_exit.clone(),
            })
        };
        if let Some(ended) = ended {
            let path = self.spec.bundle.join(ENDED_FILE);
            let text = serde_json::to_vec(&ended).expect("JSON values serialize");
            if let Err(e) = std::fs::write(&path, text) {
                self.note(&format!("recording the end in {}: {e}", path.display()));
            }
        }
    }

    fn set_state(&self, state: State) {
        self.shared
            .update(&self.spec.name, |e| e.info.state = state);
    }

    async fn run(mut self) {
        let mut want_running = !self.begin_ended;
        let mut restarts = 0u32;
        let mut backoff = MIN_BACKOFF;
        loop {
            if !want_running {
                match self.commands.recv().await {
                    None => return,
                    Some(Command::Stop { done, .. }) => {
                        let _ = done.send(());
                        continue;
                    }
                    Some(Command::Start(done)) | Some(Command::Restart { done, .. }) => {
                        self.started_replies.push(done);
                        want_running = true;
                        restarts = 0;
                        backoff = MIN_BACKOFF;
                        self.shared.update(&self.spec.name, |e| e.info.restarts = 0);
                    }
                }
            }
            let waited = if self.adopted.is_some() {
                Some(true)
            } else {
                self.wait_for_dependencies().await
            };
            match waited {
                Some(true) => {}
                Some(false) => {
                    want_running = false;
                    continue;
                }
                None => return,
            }
            let started = Instant::now();
            let ended = self.run_once().await;
            let success = match ended {
                Ended::Gone => return,
                Ended::Stopped(replies) => {
                    self.set_state(State::Stopped);
                    self.record_end(State::Stopped);
                    self.note("stopped");
                    for reply in replies {
                        let _ = reply.send(());
                    }
                    want_running = false;
                    continue;
                }
                Ended::Restarted(replies) => {
                    self.started_replies.extend(replies);
                    restarts = 0;
                    backoff = MIN_BACKOFF;
                    self.shared.update(&self.spec.name, |e| e.info.restarts = 0);
                    continue;
                }
                Ended::Exit(status) => status.is_some_and(ExitStatus::success),
            };
            if !self.spec.restart.should_restart(success, restarts) {
                self.set_state(State::Exited);
                self.record_end(State::Exited);
                if self.spec.restart != RestartPolicy::No {
                    self.note(&format!(
                        "not restarted (policy {}, {restarts} restarts)",
                        self.spec.restart
                    ));
                }
                want_running = false;
                continue;
            }
            if started.elapsed() >= STABLE_RUN {
                backoff = MIN_BACKOFF;
            }
            restarts += 1;
            self.shared.update(&self.spec.name, |e| {
                e.info.state = State::Restarting;
                e.info.restarts = restarts;
            });
            self.note(&format!(
                "restarting in {}",
                humantime::format_duration(backoff)
            ));
            // The delay gives way to requests: stop cancels the restart, start and restart
            // skip the wait.
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                command = self.commands.recv() => match command {
                    None => return,
                    Some(Command::Stop { done, .. }) => {
                        self.set_state(State::Stopped);
                        self.note("stopped");
                        let _ = done.send(());
                        want_running = false;
                    }
                    Some(Command::Start(done)) | Some(Command::Restart { done, .. }) => {
                        self.started_replies.push(done);
                    }
                },
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Waits until every dependency is running (and healthy, when it has a health check). `Some(false)` when a stop request came first,
    /// `None` when the engine went away.
    async fn wait_for_dependencies(&mut self) -> Option<bool> {
        let mut changed = self.shared.changed.subscribe();
        let mut noted = false;
        loop {
            let missing: Vec<&String> = self
                .spec
                .depends_on
                .iter()
                .filter(|d| !self.shared.ready(d))
                .collect();
            if missing.is_empty() {
                return Some(true);
            }
            if !noted {
                let message = format!(
                    "waiting for {}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                );
                self.shared
                    .update(&self.spec.name, |e| e.info.state = State::Waiting);
                self.note(&message);
                noted = true;
            }
            tokio::select! {
                result = changed.changed() => result.ok()?,
                command = self.commands.recv() => match command? {
                    Command::Stop { done, .. } => {
                        self.set_state(State::Stopped);
                        let _ = done.send(());
                        return Some(false);
                    }
                    Command::Start(done) | Command::Restart { done, .. } => {
                        self.started_replies.push(done)
                    }
                },
            }
        }
    }

    /// Starts the container (or takes over the one adopted from an earlier engine), logs its
    /// output and waits for it to end or for a request. Requests are answered while a helper
    /// process creates the container: a stop aborts a start that hangs.
    async fn run_once(&mut self) -> Ended {
        let name = self.spec.name.clone();
        self.shared.update(&name, |e| e.info.runs += 1);
        let running = match self.adopted.take() {
            Some(container) => adopt(&self.shared, &self.spec, &self.logs, container),
            None => {
                let _ = std::fs::remove_file(self.spec.bundle.join(ENDED_FILE));
                self.set_state(State::Starting);
                let helper = Arc::new(std::sync::atomic::AtomicI32::new(0));
                // Boxed, so that dropping it below really drops (and kills) it.
                let mut start = Box::pin(start(
                    self.shared.clone(),
                    self.spec.clone(),
                    self.logs.clone(),
                    helper.clone(),
                ));
                let mut aborted = None;
                let result = loop {
                    tokio::select! {
                        result = &mut start => break result,
                        command = self.commands.recv() => match command {
                            Some(Command::Start(done)) => self.started_replies.push(done),
                            Some(Command::Stop { done, .. }) => {
                                aborted = Some(Ended::Stopped(vec![done]));
                                break Err("stopped while starting".to_owned());
                            }
                            Some(Command::Restart { done, .. }) => {
                                aborted = Some(Ended::Restarted(vec![done]));
                                break Err("restarted while starting".to_owned());
                            }
                            None => {
                                aborted = Some(Ended::Gone);
                                break Err("the engine is going away".to_owned());
                            }
                        },
                    }
                };
                // Dropping the start kills its helper's process group.
                drop(start);
                if let Err(error) = &result {
                    self.abandon_start(helper.load(std::sync::atomic::Ordering::SeqCst))
                        .await;
                    if let Some(ended) = aborted {
                        self.note(error);
                        self.shared.update(&name, |e| e.info.pid = None);
                        self.reply_started();
                        return ended;
                    }
                }
                result
            }
        };
        let mut running = match running {
            Ok(running) => running,
            Err(error) => {
                self.note(&format!("failed to start: {error}"));
                self.shared.update(&name, |e| {
                    e.info.error = Some(error.clone());
                    e.info.pid = None;
                });
                self.reply_started();
                return Ended::Exit(None);
            }
        };
        self.reply_started();
        // Aborted when the run ends, whatever ends it; an exec it was waiting for is killed
        // with its helper.
        let _health = self.spec.health.clone().map(|check| {
            AbortOnDrop(tokio::spawn(health_checks(
                self.shared.clone(),
                self.spec.name.clone(),
                self.spec.bundle.clone(),
                check,
                self.logs.clone(),
            )))
        });
        let mut stop_replies = Vec::new();
        let mut restart = false;
        let status = loop {
            tokio::select! {
                status = exited(&running.pidfd, &mut running.container) => break status,
                command = self.commands.recv() => match command {
                    Some(Command::Start(done)) => {
                        let _ = done.send(());
                    }
                    Some(Command::Stop { grace, done }) => {
                        stop_replies.push(done);
                        let grace = self.grace(grace);
                        break self.terminate(&mut running.container, &running.pidfd, grace).await;
                    }
                    Some(Command::Restart { grace, done }) => {
                        stop_replies.push(done);
                        restart = true;
                        let grace = self.grace(grace);
                        break self.terminate(&mut running.container, &running.pidfd, grace).await;
                    }
                    None => {
                        let status = self.terminate(&mut running.container, &running.pidfd, Duration::from_secs(1)).await;
                        self.finish(running, status).await;
                        return Ended::Gone;
                    }
                },
            }
        };
        self.finish(running, status).await;
        match (stop_replies.is_empty(), restart) {
            (true, _) => Ended::Exit(status),
            (false, false) => Ended::Stopped(stop_replies),
            (false, true) => Ended::Restarted(stop_replies),
        }
    }

    /// After a start that failed or was given up: waits (briefly) for the killed helper to be
    /// gone, so that it creates nothing more, then removes what it left.
    async fn abandon_start(&self, helper: i32) {
        if helper > 0 {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && process_alive(helper) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // No longer starting: the stray reaper may take the container's first process, which
        // the clean-up kills (see [`reap_strays`]).
        self.set_state(State::Stopped);
        self.shared
            .runtime
            .clean_up(&container_id(&self.spec.name), &self.spec.bundle);
        // Its first process may have ended already, while this start still counted.
        sweep(&self.shared);
    }

    fn reply_started(&mut self) {
        for reply in self.started_replies.drain(..) {
            let _ = reply.send(());
        }
    }

    /// SIGTERM, then SIGKILL to every process of the container after `grace`. Under the init
    /// SIGTERM goes to the init alone, which passes it on to the command's process group (each
    /// process gets it once); without, to every process, since PID 1 may ignore it.
    async fn terminate(
        &self,
        container: &mut Container,
        pidfd: &AsyncFd<OwnedFd>,
        grace: Duration,
    ) -> Option<ExitStatus> {
        let all = !container.under_init();
        if let Err(e) = container.kill(Signal::SIGTERM, all) {
            self.note(&format!("{e}"));
        }
        match tokio::time::timeout(grace, exited(pidfd, container)).await {
            Ok(status) => status,
            Err(_) => {
                self.note(&format!(
                    "still running {} after SIGTERM: SIGKILL",
                    humantime::format_duration(grace)
                ));
                if let Err(e) = container.kill(Signal::SIGKILL, true) {
                    self.note(&format!("{e}"));
                }
                exited(pidfd, container).await
            }
        }
    }

    /// Records how the run ended, reads its output to the end and removes the container.
    async fn finish(&self, running: Running, status: Option<ExitStatus>) {
        let Running {
            container,
            pidfd: _,
            outputs,
        } = running;
        // Before the delete, which removes the cgroup.
        let oom_kills = crate::cgroup::cgroups_path(&self.spec.bundle).and_then(|path| {
            crate::cgroup::oom_kills(Path::new(crate::cgroup::CGROUP_ROOT), &path)
        });
        let mut described = match status {
            Some(status) => status.to_string(),
            None if !container.is_child() => {
                "exit status unknown (taken over from an earlier engine)".to_owned()
            }
            None => "unknown status".to_owned(),
        };
        if let Some(n) = oom_kills.filter(|n| *n > 0) {
            described.push_str(&format!(
                " (out of memory: the OOM killer killed {n} process{})",
                if n == 1 { "" } else { "es" }
            ));
        }
        let (stop, task) = outputs;
        let _ = stop.send(());
        let _ = task.await;
        self.note(&format!("ended ({described})"));
        self.shared.update(&self.spec.name, |e| {
            e.info.pid = None;
            e.info.exit_code = status.map(ExitStatus::code);
            e.info.last_exit = Some(described.clone());
            e.info.health = None;
            e.info.oom_killed = oom_kills.map(|n| n > 0);
            e.pidfd = None;
        });
        if let Err(e) = container.delete() {
            self.note(&format!("{e}"));
        }
    }
}

/// A container that runs, as its supervisor holds it.
struct Running {
    container: Container,
    pidfd: AsyncFd<OwnedFd>,
    /// Stops the task reading its output; the task ends once it has read everything.
    outputs: (oneshot::Sender<()>, tokio::task::JoinHandle<()>),
}

/// Whether process `pid` exists and has not ended (a zombie has).
fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// How long a helper process may take to create and start a container (its hooks included)
/// before the start is given up.
pub const CREATE_LIMIT: Duration = Duration::from_secs(120);

/// Creates and starts the service's container in a helper process (`PROGRAM create-container`),
/// its stdout and stderr appended to files the engine reads ([`logs::Output`]), then takes the
/// container over from the state the helper wrote. The helper's pid is stored in `helper` for
/// the caller to wait on if it gives the start up.
async fn start(
    shared: Arc<Shared>,
    spec: ServiceSpec,
    logs: Arc<Logs>,
    helper: Arc<std::sync::atomic::AtomicI32>,
) -> Result<Running, String> {
    let id = container_id(&spec.name);
    crate::cgroup::make_parents(Path::new(crate::cgroup::CGROUP_ROOT), &spec.bundle)
        .map_err(|e| format!("creating the parent cgroup of {}: {e}", spec.name))?;
    let dir = shared.outputs();
    let mut outputs = Vec::new();
    for stream in ["stdout", "stderr"] {
        let path = logs::Output::path(&dir, &id, stream);
        let output =
            logs::Output::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        outputs.push((output, path));
    }
    let mut command = tokio::process::Command::new(&shared.program);
    command
        .arg("create-container")
        .arg("--state-dir")
        .arg(shared.runtime.state_dir())
        .arg("--id")
        .arg(&id)
        .arg("--bundle")
        .arg(&spec.bundle)
        .arg("--stdout")
        .arg(&outputs[0].1)
        .arg("--stderr")
        .arg(&outputs[1].1);
    let init = shared.init.as_ref().filter(|_| spec.init);
    if let Some(init) = init {
        command.arg("--init").arg(init);
    }
    let output = helper_output_with_pid(command, CREATE_LIMIT, &helper).await?;
    let created: Created = serde_json::from_slice(&output)
        .map_err(|e| format!("unexpected output of the helper process: {e}"))?;
    let container = shared
        .runtime
        .load(&id, &spec.bundle, init.is_some())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("container {id}: the helper process left no state"))?;
    if container.pid().ok() != Some(created.pid) {
        return Err(format!(
            "container {id}: the helper reported process {}, the state another",
            created.pid
        ));
    }
    let outputs = outputs
        .into_iter()
        .zip(["stdout", "stderr"])
        .map(|((output, _), stream)| (output, stream))
        .collect();
    watch(&shared, &spec, &logs, container, outputs)
}

/// Takes over a container that an earlier engine started and that still runs: its process is
/// watched through a pidfd and its output read on from where that engine stopped.
fn adopt(
    shared: &Arc<Shared>,
    spec: &ServiceSpec,
    logs: &Arc<Logs>,
    container: Container,
) -> Result<Running, String> {
    let id = container_id(&spec.name);
    let dir = shared.outputs();
    let mut outputs = Vec::new();
    for stream in ["stdout", "stderr"] {
        let path = logs::Output::path(&dir, &id, stream);
        match logs::Output::open(&path) {
            Ok(output) => outputs.push((output, stream)),
            Err(e) => logs.push(
                "engine",
                &format!("its {stream} is lost: {}: {e}", path.display()),
            ),
        }
    }
    let pid = container.pid().map_err(|e| e.to_string())?;
    let running = watch(shared, spec, logs, container, outputs)?;
    logs.push("engine", &format!("taken over (pid {pid})"));
    tracing::info!("service {}: taken over (pid {pid})", spec.name);
    Ok(running)
}

/// Opens a pidfd on the container's process, starts reading its output and records it as
/// running.
fn watch(
    shared: &Arc<Shared>,
    spec: &ServiceSpec,
    logs: &Arc<Logs>,
    container: Container,
    outputs: Vec<(logs::Output, &'static str)>,
) -> Result<Running, String> {
    let pid = container.pid().map_err(|e| e.to_string())?;
    let pidfd = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| format!("process id {pid} is not valid"))
        .and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                .map_err(|e| format!("opening a pidfd on process {pid}: {e}"))
        })
        .and_then(|fd| {
            // SAFETY: an OwnedFd keeps its descriptor open, unchanged, for as long as it
            // lives, and the AsyncFd owns it.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(|e| format!("watching process {pid}: {e}"))
        });
    let fds = pidfd.and_then(|pidfd| {
        let dup = pidfd
            .get_ref()
            .try_clone()
            .map_err(|e| format!("duplicating the pidfd of {pid}: {e}"))?;
        Ok((pidfd, dup))
    });
    let (pidfd, shared_fd) = match fds {
        Ok(fds) => fds,
        Err(e) => {
            let _ = container.delete();
            return Err(e);
        }
    };
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(logs::follow_outputs(outputs, logs.clone(), stopped));
    let started_at = container.created().unwrap_or_else(SystemTime::now);
    let started_at = humantime::format_rfc3339_millis(started_at).to_string();
    shared.update(&spec.name, |e| {
        e.info.state = State::Running;
        e.info.pid = Some(pid);
        e.info.started_at = Some(started_at);
        e.info.error = None;
        e.info.health = spec.health.as_ref().map(|_| Health::Starting);
        e.info.health_failures = 0;
        e.info.health_output = None;
        e.pidfd = Some(Arc::new(shared_fd));
    });
    tracing::info!("service {}: started (pid {pid})", spec.name);
    logs.push("engine", &format!("started (pid {pid})"));
    Ok(Running {
        container,
        pidfd,
        outputs: (stop, task),
    })
}

/// Waits for the container's process to end: its pidfd becomes readable, then it is reaped.
/// `None` when it cannot be waited for: someone else reaped it, or it is not the engine's
/// child (taken over from an earlier engine), so its status went to its parent.
async fn exited(pidfd: &AsyncFd<OwnedFd>, container: &mut Container) -> Option<ExitStatus> {
    loop {
        match container.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => {
                tracing::error!("{e}");
                return None;
            }
        }
        match pidfd.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            Err(e) => {
                tracing::error!("polling the pidfd of {}: {e}", container.id());
                return None;
            }
        }
        if !container.is_child() {
            return None;
        }
    }
}

/// Kills a helper's process group (the helper and whatever it started: a hook, a container's
/// first processes) unless disarmed: dropping a start or exec half-way leaves nothing running.
struct KillGroup(Option<i32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs a helper process (in a process group of its own) for at most `limit` and returns its
/// stdout; an error is the last line of its stderr. Everything the engine does that may block
/// (creating a container, entering one for exec) runs this way: the engine's one thread only
/// waits for a pipe.
pub(crate) async fn helper_output(
    command: tokio::process::Command,
    limit: Duration,
) -> Result<Vec<u8>, String> {
    helper_output_with_pid(command, limit, &std::sync::atomic::AtomicI32::new(0)).await
}

/// [`helper_output`], storing the helper's pid in `pid` once it runs.
async fn helper_output_with_pid(
    mut command: tokio::process::Command,
    limit: Duration,
    pid: &std::sync::atomic::AtomicI32,
) -> Result<Vec<u8>, String> {
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| format!("starting a helper process: {e}"))?;
    let mut group = KillGroup(child.id().and_then(|p| i32::try_from(p).ok()));
    pid.store(group.0.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("waiting for the helper process: {e}")),
        Err(_) => {
            return Err(format!(
                "the helper process did not finish in {}",
                humantime::format_duration(limit)
            ));
        }
    };
    // It exited: its group's id may be reused from now on.
    group.0 = None;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no error output");
        return Err(format!(
            "{} ({})",
            last.trim_start_matches("slipway-engine: "),
            output.status
        ));
    }
    Ok(output.stdout)
}

/// Reaps, whenever a child ends, the processes that came to the engine as a child subreaper
/// and that nothing else waits for: what a killed helper left (a hook it ran). Only zombies
/// that are not process group leaders are taken: the helpers lead their own groups (tokio
/// reaps them) and containers' first processes lead their own sessions (their supervisors
/// reap them), so no status anyone waits for is taken from them. The exception: the first
/// process of a container whose start was given up (killed with its helper; the state may not
/// have recorded its pid) leads its session too, so session leaders that no supervisor
/// watches are taken as well, while no other start is under way (a container just created
/// is not watched yet).
pub async fn reap_strays(engine: Engine) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut children) = signal(SignalKind::child()) else {
        tracing::warn!("cannot watch for SIGCHLD: stray processes stay zombies");
        return;
    };
    while children.recv().await.is_some() {
        sweep(&engine.shared);
    }
}

/// One pass of [`reap_strays`].
fn sweep(shared: &Shared) {
    let (watched, starting): (BTreeSet<i32>, bool) = {
        let entries = lock(&shared.entries);
        (
            entries.values().filter_map(|e| e.info.pid).collect(),
            entries.values().any(|e| e.info.state == State::Starting),
        )
    };
    reap_zombies(|pid, group, session| {
        group != pid || (session == pid && !starting && !watched.contains(&pid))
    });
}

/// Reaps the engine's zombie children for which `take(pid, process group, session)` holds.
fn reap_zombies(take: impl Fn(i32, i32, i32) -> bool) {
    for pid in crate::exec::children() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.split(' ').take(4).collect())
            .unwrap_or_default();
        let number = |field: &str| field.parse::<i32>().unwrap_or(0);
        if let [state, _ppid, group, session] = fields[..]
            && state == "Z"
            && take(pid, number(group), number(session))
        {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
    }
}

/// What `create-container` reports.
#[derive(Serialize, Deserialize)]
struct Created {
    pid: i32,
}

/// The helper process's side of a start: creates and starts container `id` from `bundle`
/// (under the init program `init` when given), its stdout and stderr appended to the given
/// files, prints `{"pid": N}` and exits. The container's process is the helper's child; when
/// the helper exits it is re-parented to the engine, a child subreaper, which reaps it.
pub fn create_helper_main(
    state_dir: &Path,
    id: &str,
    bundle: &Path,
    init: Option<&Path>,
    stdout: &Path,
    stderr: &Path,
) -> std::process::ExitCode {
    let created = (|| -> Result<i32, String> {
        let mut runtime = Runtime::new(state_dir).map_err(|e| e.to_string())?;
        if let Some(program) = init {
            runtime = runtime
                .with_init(program, crate::shim::NAME)
                .map_err(|e| e.to_string())?;
        }
        let append = |path: &Path| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map(OwnedFd::from)
                .map_err(|e| format!("opening {}: {e}", path.display()))
        };
        let stdin = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
        let container = runtime
            .create_and_start_with(
                id,
                bundle,
                Stdio {
                    stdin,
                    stdout: Some(append(stdout)?),
                    stderr: Some(append(stderr)?),
                },
                init.is_some(),
            )
            .map_err(|e| e.to_string())?;
        container.pid().map_err(|e| e.to_string())
    })();
    match created {
        Ok(pid) => {
            println!(
                "{}",
                serde_json::to_string(&Created { pid }).expect("JSON values serialize")
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("slipway-engine: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The container id the engine gives service `name`'s container.
pub fn container_id(name: &str) -> String {
    format!("service-{name}")
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `check` every `interval` while the container runs (the task is aborted when the run
/// ends) and records the result: Docker's semantics, first check one interval after the start.
async fn health_checks(
    shared: Arc<Shared>,
    name: String,
    bundle: PathBuf,
    check: HealthCheck,
    logs: Arc<Logs>,
) {
    let started = Instant::now();
    let mut failures = 0u32;
    let mut starting = true;
    let id = container_id(&name);
    loop {
        tokio::time::sleep(check.interval).await;
        let (ok, output) = match crate::exec::exec_in_child(
            &shared.program,
            shared.runtime.state_dir(),
            &id,
            &bundle,
            &check.test,
            check.timeout,
        )
        .await
        {
            Ok(outcome) if outcome.status.is_none() => (
                false,
                format!(
                    "timed out after {}: {}",
                    humantime::format_duration(check.timeout),
                    outcome.output
                ),
            ),
            Ok(outcome) => {
                let ok = outcome.success();
                let code = outcome.exit_code();
                (ok, format!("exit code {code}: {}", outcome.output))
            }
            Err(e) => (false, e.to_string()),
        };
        let output = output.trim_end().to_owned();
        let before = shared.health(&name);
        let health = if ok {
            failures = 0;
            starting = false;
            Health::Healthy
        } else if starting && started.elapsed() < check.start_period {
            Health::Starting
        } else {
            starting = false;
            failures += 1;
            if failures >= check.retries {
                Health::Unhealthy
            } else {
                before.unwrap_or(Health::Starting)
            }
        };
        if before != Some(health) {
            let message = format!(
                "health: {} ({output})",
                serde_json::to_value(health)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            );
            tracing::info!("service {name}: {message}");
            logs.push("engine", &message);
        }
        shared.update(&name, |e| {
            e.info.health = Some(health);
            e.info.health_failures = failures;
            e.info.health_output = Some(output);
        });
    }
}

/// Locks a mutex, taking over its data even if a panicking thread poisoned it: every value kept
/// here stays consistent between statements, and an engine that stopped answering over a
/// poisoned lock would be worse than one that goes on.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
