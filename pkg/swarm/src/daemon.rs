//! The agent's core: this node's membership of a swarm (its identity, certificates and local
//! settings on disk), the manager role (Raft, the CA, the dispatcher's heartbeats and down
//! detection) and every operation the API offers. The API and the gRPC services are thin layers
//! over [`Daemon`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::ids;
use crate::net;
use crate::pki::{self, Credentials, NodeSubject, RootCa};
use crate::proto;
use crate::proto::control_client::ControlClient;
use crate::proto::node_ca_client::NodeCaClient;
use crate::raft::{self, Raft};
use crate::state::{
    Availability, Cluster, ClusterState, Command, CommandResult, Node, NodeDescription, NodeSpec,
    NodeState, Role, SwarmSpec, now_rfc3339,
};
use crate::store::{self, SharedState};

pub const DEFAULT_PORT: u16 = 2377;
/// How long the leader waits, after a node's session closed, for the node to open another
/// before it marks the node down.
pub const SESSION_GRACE: Duration = Duration::from_secs(1);
pub const NO_LEADER: &str = "rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";
pub const ALREADY_IN_SWARM: &str = "This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.";
pub const NOT_IN_SWARM: &str = "This node is not part of a swarm";
pub const NOT_A_MANAGER_INACTIVE: &str = "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";
pub const NOT_A_MANAGER_WORKER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
pub const BAD_TOKEN: &str =
    "rpc error: code = InvalidArgument desc = A valid join token is necessary to join this cluster";

/// An error the API returns as Docker does: a status and `{"message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn internal(context: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, format!("{context}: {e}"))
}

#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: PathBuf,
    /// The engine's socket: the tasks of services run through it (the next issue).
    pub engine: PathBuf,
    /// The length of a Raft tick (SwarmKit: 1 s); elections start after 15 to 20 ticks.
    pub raft_tick: Duration,
    pub hostname: String,
    /// The shortest node certificate validity `init`/`update` accept (Docker: one hour).
    pub min_cert_expiry: Duration,
    /// What runs this node's tasks.
    pub executor: crate::agent_tasks::ExecutorKind,
}

/// What a node keeps on disk about its membership, beside its certificates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalState {
    pub node_id: String,
    pub cluster_id: String,
    pub listen_addr: String,
    /// host:port
    pub advertise_addr: String,
    pub managers: Vec<String>,
}

/// A node's membership of a swarm while it lasts.
pub struct Session {
    pub local: LocalState,
    pub ca_der: Vec<u8>,
    credentials: Arc<Credentials>,
    role: RwLock<Role>,
    manager: RwLock<Option<Arc<ManagerParts>>>,
    managers: RwLock<Vec<String>>,
    heartbeat_period: RwLock<Duration>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// On the leader: when each node was last heard from.
    last_seen: Mutex<HashMap<String, Instant>>,
    /// On the leader: the latest session stream of each node (a sequence number).
    sessions: Mutex<HashMap<String, u64>>,
    session_seq: std::sync::atomic::AtomicU64,
    /// The manager that last answered a heartbeat: the leader, as far as this node knows.
    leader_addr: RwLock<Option<String>>,
    renew_now: tokio::sync::Notify,
    /// The unlock key the node's key files are sealed with (autolock), if any.
    pub(crate) kek: Mutex<Option<Vec<u8>>>,
}

pub struct ManagerParts {
    pub raft: Raft,
    pub shared: SharedState,
    server: JoinHandle<()>,
    detector: JoinHandle<()>,
    orchestrator: JoinHandle<()>,
}

impl Drop for ManagerParts {
    fn drop(&mut self) {
        self.server.abort();
        self.detector.abort();
        self.orchestrator.abort();
    }
}

impl Session {
    pub fn role(&self) -> Role {
        *self.role.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn manager(&self) -> Option<Arc<ManagerParts>> {
        self.manager
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn heartbeat_period(&self) -> Duration {
        *self
            .heartbeat_period
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn client_tls(&self) -> ApiResult<Arc<ClientConfig>> {
        pki::client_config(&self.ca_der, Some(self.credentials.clone()))
            .map_err(|e| internal("TLS", e))
    }

    /// A channel to the manager at `addr`, reused while it works.
    pub(crate) fn channel(&self, addr: &str) -> ApiResult<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = net::channel(addr, self.client_tls()?, Duration::from_secs(10))
            .map_err(|e| internal("address", e))?;
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    fn forget_channels(&self) {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn spawn(&self, task: JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// The manager that last answered a heartbeat (the leader, as far as this node knows).
    pub fn leader(&self) -> Option<String> {
        self.leader_addr
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn known_managers(&self) -> Vec<String> {
        self.managers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Session {
    /// Stops the node's loops. Some of them hold the session while they sleep, so dropping
    /// the daemon's reference alone does not end them.
    fn abort_tasks(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.abort_tasks();
    }
}

#[derive(Clone)]
pub struct Daemon(Arc<Inner>);

struct Inner {
    opts: Options,
    op: tokio::sync::Mutex<()>,
    session: RwLock<Option<Arc<Session>>>,
    /// Restarted with its key sealed (autolock): waiting for `swarm unlock`.
    locked: std::sync::atomic::AtomicBool,
    /// Why this node stopped its membership (certificates of another swarm): Docker's
    /// `LocalNodeState: error`.
    error: RwLock<Option<String>>,
    executor: Option<Arc<dyn crate::executor::Executor>>,
}

/// Docker's `/swarm/init` body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InitRequest {
    #[serde(default, deserialize_with = "crate::state::nullable")]
    pub listen_addr: String,
    #[serde(default, deserialize_with = "crate::state::nullable")]
    pub advertise_addr: String,
    #[serde(default)]
    pub force_new_cluster: bool,
    #[serde(default, deserialize_with = "crate::state::nullable")]
    pub spec: SwarmSpec,
    #[serde(default, deserialize_with = "crate::state::nullable")]
    pub availability: String,
    #[serde(default, deserialize_with = "crate::state::nullable")]
    pub auto_lock_managers: bool,
}

/// Docker's `/swarm/join` body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinRequest {
    #[serde(default, deserialize_with = "crate::state::nullable")]
    pub listen_addr: String,
    #[serde(default, deserialize_with = "crate::state::nullable")]
    pub advertise_addr: String,
    #[serde(default, deserialize_with = "crate::state::nullable")]
    pub remote_addrs: Vec<String>,
    #[serde(default, deserialize_with = "crate::state::nullable")]
    pub join_token: String,
    #[serde(default, deserialize_with = "crate::state::nullable")]
    pub availability: String,
}

fn with_port(addr: &str, port: u16) -> String {
    if addr.parse::<SocketAddr>().is_ok() {
        addr.to_string()
    } else if let Ok(ip) = addr.trim_matches(['[', ']']).parse::<IpAddr>() {
        SocketAddr::new(ip, port).to_string()
    } else if addr
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        addr.to_string()
    } else {
        format!("{addr}:{port}")
    }
}

fn parse_listen(addr: &str) -> ApiResult<SocketAddr> {
    let addr = if addr.is_empty() {
        "0.0.0.0:2377"
    } else {
        addr
    };
    with_port(addr, DEFAULT_PORT).parse().map_err(|_| {
        ApiError::new(
            400,
            format!("invalid listen address {addr:?}: must be an IP address with an optional port"),
        )
    })
}

fn parse_advertise(addr: &str, listen: SocketAddr) -> ApiResult<SocketAddr> {
    if addr.is_empty() {
        if listen.ip().is_unspecified() {
            return Err(ApiError::new(
                400,
                "could not choose an IP address to advertise since this system has multiple addresses: use --advertise-addr",
            ));
        }
        return Ok(listen);
    }
    let addr: SocketAddr = with_port(addr, listen.port())
        .parse()
        .map_err(|_| ApiError::new(400, format!("advertise address must be a non-zero IP address or network interface (with optional port number): {addr:?}")))?;
    if addr.ip().is_unspecified() {
        return Err(ApiError::new(
            400,
            "advertise address must be a non-zero IP address or network interface (with optional port number)",
        ));
    }
    Ok(addr)
}

// ---- files of the state directory -------------------------------------------------------------

struct Files {
    dir: PathBuf,
}

impl Files {
    fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    fn certs(&self) -> PathBuf {
        self.dir.join("certificates")
    }
    fn ca(&self) -> PathBuf {
        self.certs().join("swarm-root-ca.crt")
    }
    fn cert(&self) -> PathBuf {
        self.certs().join("swarm-node.crt")
    }
    fn key(&self) -> PathBuf {
        self.certs().join("swarm-node.key")
    }
    /// The Raft data key, kept beside the node's TLS key with the same protection.
    fn dek(&self) -> PathBuf {
        self.certs().join("swarm-node.dek")
    }
    fn raft_dir(&self) -> PathBuf {
        self.dir.join("raft")
    }
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn key_to_pem(der: &[u8]) -> String {
    pki::der_to_pem(der).replace("CERTIFICATE", "PRIVATE KEY")
}

fn key_from_pem(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|k| k.secret_pkcs8_der().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn describe(opts: &Options) -> NodeDescription {
    // Read once per process, as dockerd does at start: every heartbeat carries the
    // description, and reading the cgroup and /proc files each time was a tenth of the work of
    // a process hosting 1,000 simulated nodes.
    static RESOURCES: std::sync::OnceLock<(i64, i64)> = std::sync::OnceLock::new();
    let &(cpus, memory) = RESOURCES.get_or_init(|| {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as i64;
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            })
            .unwrap_or(0)
            * 1024;
        (cpus, memory)
    });
    NodeDescription {
        hostname: opts.hostname.clone(),
        os: "linux".into(),
        architecture: std::env::consts::ARCH.into(),
        nano_cpus: cpus * 1_000_000_000,
        memory_bytes: memory,
    }
}

fn to_proto(d: &NodeDescription) -> proto::NodeDescription {
    proto::NodeDescription {
        hostname: d.hostname.clone(),
        os: d.os.clone(),
        architecture: d.architecture.clone(),
        nano_cpus: d.nano_cpus,
        memory_bytes: d.memory_bytes,
    }
}

fn from_proto(d: Option<proto::NodeDescription>) -> NodeDescription {
    let d = d.unwrap_or_default();
    let clip = |s: String| s.chars().take(256).collect::<String>();
    NodeDescription {
        hostname: clip(d.hostname),
        os: clip(d.os),
        architecture: clip(d.architecture),
        nano_cpus: d.nano_cpus.max(0),
        memory_bytes: d.memory_bytes.max(0),
    }
}

fn status_to_api(status: tonic::Status) -> ApiError {
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
            ApiError::new(400, status.message())
        }
        tonic::Code::NotFound => ApiError::new(404, status.message()),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ApiError::new(503, NO_LEADER),
        _ => ApiError::new(
            500,
            format!(
                "rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            ),
        ),
    }
}

impl Daemon {
    /// Loads this node's membership from the state directory, when it has one, and resumes it.
    pub async fn start(opts: Options) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(&opts.state_dir)?;
        let executor = crate::agent_tasks::build(opts.executor, &opts.engine);
        let daemon = Daemon(Arc::new(Inner {
            executor,
            opts,
            op: tokio::sync::Mutex::new(()),
            session: RwLock::new(None),
            locked: std::sync::atomic::AtomicBool::new(false),
            error: RwLock::new(None),
        }));
        let files = daemon.files();
        if files.state().exists() {
            match daemon.resume(None).await {
                Ok(()) if daemon.is_locked() => {}
                Ok(()) => tracing::info!(
                    "rejoined the swarm from {}",
                    daemon.0.opts.state_dir.display()
                ),
                Err(e) => tracing::error!("could not resume the swarm membership: {e}"),
            }
        }
        Ok(daemon)
    }

    fn files(&self) -> Files {
        Files {
            dir: self.0.opts.state_dir.clone(),
        }
    }

    pub fn opts(&self) -> &Options {
        &self.0.opts
    }

    pub fn session(&self) -> Option<Arc<Session>> {
        self.0
            .session
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resumes the membership on disk; a sealed key without `kek` leaves the node locked.
    async fn resume(&self, kek: Option<Vec<u8>>) -> ApiResult<()> {
        let files = self.files();
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|e| internal(&p.display().to_string(), e))
        };
        let local: LocalState =
            serde_json::from_str(&read(files.state())?).map_err(|e| internal("state.json", e))?;
        let ca_der = pki::pem_to_der(&read(files.ca())?).map_err(|e| internal("CA", e))?;
        let cert_der =
            pki::pem_to_der(&read(files.cert())?).map_err(|e| internal("certificate", e))?;
        let Some((key_pem, _)) = crate::autolock::read(&files.key(), &files.dek(), kek.as_deref())?
        else {
            self.set_locked(true);
            tracing::info!("the swarm is locked: waiting for its unlock key");
            return Ok(());
        };
        let key_der = key_from_pem(&key_pem).ok_or_else(|| internal("key", "not a PKCS#8 key"))?;
        let info = pki::cert_info(&cert_der).map_err(|e| internal("certificate", e))?;
        let role = Role::from_ou(&info.subject.ou).unwrap_or(Role::Worker);
        let session = self.new_session(local, ca_der, &cert_der, &key_der, role, kek)?;
        if role == Role::Manager {
            self.start_manager(&session, None).await?;
        }
        self.start_loops(&session);
        session.spawn(tokio::spawn(
            self.clone().check_trust(Arc::downgrade(&session)),
        ));
        *self.0.session.write().unwrap_or_else(|e| e.into_inner()) = Some(session);
        self.set_locked(false);
        Ok(())
    }

    fn new_session(
        &self,
        local: LocalState,
        ca_der: Vec<u8>,
        cert_der: &[u8],
        key_der: &[u8],
        role: Role,
        kek: Option<Vec<u8>>,
    ) -> ApiResult<Arc<Session>> {
        let credentials =
            Credentials::new(cert_der, key_der).map_err(|e| internal("certificate", e))?;
        Ok(Arc::new(Session {
            managers: RwLock::new(local.managers.clone()),
            local,
            ca_der,
            credentials,
            role: RwLock::new(role),
            manager: RwLock::new(None),
            heartbeat_period: RwLock::new(crate::state::DEFAULT_HEARTBEAT),
            tasks: Mutex::new(Vec::new()),
            channels: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            session_seq: std::sync::atomic::AtomicU64::new(0),
            leader_addr: RwLock::new(None),
            renew_now: tokio::sync::Notify::new(),
            kek: Mutex::new(kek),
        }))
    }

    fn save_membership(
        &self,
        local: &LocalState,
        ca_der: &[u8],
        cert_der: &[u8],
        key_der: &[u8],
    ) -> ApiResult<()> {
        let files = self.files();
        std::fs::create_dir_all(files.certs()).map_err(|e| internal("certificates", e))?;
        let dek = files.dek();
        if !dek.exists() {
            write_private(&dek, hex(&ids::random_bytes::<32>()).as_bytes())
                .map_err(|e| internal("data key", e))?;
        }
        write_private(&files.ca(), pki::der_to_pem(ca_der).as_bytes())
            .map_err(|e| internal("CA", e))?;
        write_private(&files.key(), key_to_pem(key_der).as_bytes())
            .map_err(|e| internal("key", e))?;
        write_private(&files.cert(), pki::der_to_pem(cert_der).as_bytes())
            .map_err(|e| internal("certificate", e))?;
        self.save_local(local)
    }

    fn save_local(&self, local: &LocalState) -> ApiResult<()> {
        let json = serde_json::to_vec_pretty(local).map_err(|e| internal("state", e))?;
        write_private(&self.files().state(), &json).map_err(|e| internal("state.json", e))
    }

    fn wipe(&self) {
        let files = self.files();
        for path in [files.state(), files.certs(), files.raft_dir()] {
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }

    /// Opens (or creates) the Raft store and starts Raft and the gRPC listener. With `bootstrap`,
    /// this node forms a new one-member cluster.
    async fn start_manager(
        &self,
        session: &Arc<Session>,
        bootstrap: Option<&SwarmSpec>,
    ) -> ApiResult<Arc<ManagerParts>> {
        if let Some(parts) = session.manager() {
            return Ok(parts);
        }
        let files = self.files();
        std::fs::create_dir_all(files.raft_dir()).map_err(|e| internal("raft directory", e))?;
        // Read under the lock the autolock watcher re-seals under.
        let dek = {
            let kek = session.kek.lock().unwrap_or_else(|e| e.into_inner());
            crate::autolock::read(&files.key(), &files.dek(), kek.as_deref())
        }?
        .and_then(|(_, dek)| unhex(&dek?))
        .ok_or_else(|| internal("data key", "missing or malformed"))?;
        let db = store::Db::open(
            &files.raft_dir().join("raft.redb"),
            store::Dek::new(&dek).map_err(|e| internal("data key", e))?,
        )
        .map_err(|e| internal("raft store", e))?;
        let machine =
            store::StateMachine::open(db.clone()).map_err(|e| internal("raft store", e))?;
        let shared = machine.shared.clone();
        let spec = bootstrap
            .cloned()
            .or_else(|| {
                shared
                    .read()
                    .ok()?
                    .state
                    .cluster
                    .as_ref()
                    .map(|c| c.spec.clone())
            })
            .unwrap_or_default()
            .with_defaults();
        let config = raft::config(self.0.opts.raft_tick, &spec.raft)
            .map_err(|e| internal("raft config", e))?;
        let raft_id = ids::raft_id(&session.local.node_id);
        let network = raft::Network {
            tls: session.client_tls()?,
        };
        let raft = Raft::new(raft_id, config, network, store::LogStore::new(db), machine)
            .await
            .map_err(|e| internal("raft", e))?;
        if bootstrap.is_some() {
            let members =
                BTreeMap::from([(raft_id, BasicNode::new(&session.local.advertise_addr))]);
            raft.initialize(members)
                .await
                .map_err(|e| internal("raft", e))?;
        }
        let listen: SocketAddr = session
            .local
            .listen_addr
            .parse()
            .map_err(|e| internal("listen address", e))?;
        let listener = bind(listen).await.map_err(|e| {
            ApiError::new(500, format!("failed to listen on remote API address: {e}"))
        })?;
        let tls = pki::server_config(&session.ca_der, session.credentials.clone())
            .map_err(|e| internal("TLS", e))?;
        let services = crate::service::Services::new(self.clone());
        let server = tokio::spawn(net::serve(
            listener,
            tls,
            session.local.cluster_id.clone(),
            services,
        ));
        let detector = tokio::spawn(self.clone().detect_down(Arc::downgrade(session)));
        let orchestrator = tokio::spawn(crate::orchestrator::run(
            self.clone(),
            Arc::downgrade(session),
        ));
        let parts = Arc::new(ManagerParts {
            raft,
            shared,
            server,
            detector,
            orchestrator,
        });
        *session.manager.write().unwrap_or_else(|e| e.into_inner()) = Some(parts.clone());
        Ok(parts)
    }

    async fn stop_manager(&self, session: &Session) {
        let parts = session
            .manager
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(parts) = parts {
            let _ = parts.raft.shutdown().await;
        }
    }

    fn start_loops(&self, session: &Arc<Session>) {
        session.spawn(tokio::spawn(
            self.clone().heartbeats(Arc::downgrade(session)),
        ));
        session.spawn(tokio::spawn(self.clone().renewals(Arc::downgrade(session))));
        session.spawn(tokio::spawn(
            self.clone().keep_session(Arc::downgrade(session)),
        ));
        session.spawn(tokio::spawn(crate::autolock::watch(
            self.clone(),
            Arc::downgrade(session),
        )));
        if let Some(executor) = self.0.executor.clone() {
            session.spawn(tokio::spawn(crate::agent_tasks::run(
                self.clone(),
                Arc::downgrade(session),
                executor,
            )));
        }
    }

    // ---- swarm init / join / leave ------------------------------------------------------------

    pub async fn init(&self, request: InitRequest) -> ApiResult<String> {
        let _op = self.0.op.lock().await;
        if self.is_locked() && request.force_new_cluster {
            return Err(ApiError::new(503, crate::autolock::LOCKED));
        }
        if self.is_locked() || self.local_error().is_some() {
            return Err(ApiError::new(503, ALREADY_IN_SWARM));
        }
        if let Some(session) = self.session() {
            if request.force_new_cluster && session.manager().is_some() {
                return self.force_new_cluster(&session).await;
            }
            return Err(ApiError::new(503, ALREADY_IN_SWARM));
        }
        request
            .spec
            .validate(self.0.opts.min_cert_expiry)
            .map_err(|m| ApiError::new(400, m))?;
        let availability = Availability::parse(&request.availability).ok_or_else(|| {
            ApiError::new(
                400,
                format!("invalid availability {:?}", request.availability),
            )
        })?;
        let listen = parse_listen(&request.listen_addr)?;
        let advertise = parse_advertise(&request.advertise_addr, listen)?;
        let mut spec = request.spec.with_defaults();
        spec.encryption_config.auto_lock_managers |= request.auto_lock_managers;
        let cluster_id = ids::new_id();
        let node_id = ids::new_id();
        let ca = RootCa::generate().map_err(|e| internal("root CA", e))?;
        let ca_der = ca.cert_der().map_err(|e| internal("root CA", e))?;
        let (key_der, csr) = pki::new_key_and_csr().map_err(|e| internal("key", e))?;
        let subject = NodeSubject {
            node_id: node_id.clone(),
            ou: Role::Manager.ou().into(),
            cluster_id: cluster_id.clone(),
        };
        let cert_der = ca
            .sign_csr(&csr, &subject, spec.cert_expiry())
            .map_err(|e| internal("certificate", e))?;
        let local = LocalState {
            node_id: node_id.clone(),
            cluster_id: cluster_id.clone(),
            listen_addr: listen.to_string(),
            advertise_addr: advertise.to_string(),
            managers: vec![advertise.to_string()],
        };
        let result = async {
            self.save_membership(&local, &ca_der, &cert_der, &key_der)?;
            let session = self.new_session(
                local.clone(),
                ca_der.clone(),
                &cert_der,
                &key_der,
                Role::Manager,
                None,
            )?;
            let parts = self.start_manager(&session, Some(&spec)).await?;
            let now = now_rfc3339();
            let node = Node {
                id: node_id.clone(),
                created_at: now.clone(),
                updated_at: now.clone(),
                version: 0,
                spec: NodeSpec {
                    availability,
                    role: Role::Manager,
                    ..NodeSpec::default()
                },
                description: describe(&self.0.opts),
                state: NodeState::Ready,
                addr: advertise.ip().to_string(),
                manager_addr: Some(advertise.to_string()),
                raft_id: ids::raft_id(&node_id),
            };
            let cluster = Cluster {
                id: cluster_id.clone(),
                created_at: now.clone(),
                updated_at: now,
                version: 0,
                spec: spec.clone(),
                root_ca: ca.clone(),
                worker_secret: ids::new_secret(),
                manager_secret: ids::new_secret(),
                unlock_key: spec
                    .encryption_config
                    .auto_lock_managers
                    .then(crate::autolock::new_unlock_key),
            };
            parts
                .raft
                .wait(Some(Duration::from_secs(30)))
                .current_leader(ids::raft_id(&node_id), "init: electing itself")
                .await
                .map_err(|e| internal("raft", e))?;
            check(
                self.propose_on(
                    &session,
                    Command::CreateCluster {
                        cluster: Box::new(cluster),
                        node: Box::new(node),
                    },
                )
                .await?,
            )?;
            crate::autolock::sync(self, &session)?;
            Ok::<_, ApiError>(session)
        }
        .await;
        match result {
            Ok(session) => {
                *session
                    .heartbeat_period
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = spec.heartbeat_period();
                self.start_loops(&session);
                *self.0.session.write().unwrap_or_else(|e| e.into_inner()) = Some(session);
                tracing::info!("initialized a new swarm {cluster_id} as node {node_id}");
                Ok(node_id)
            }
            Err(e) => {
                self.wipe();
                Err(e)
            }
        }
    }

    /// Disaster recovery on a surviving manager: a new Raft cluster of this manager alone, with
    /// the old cluster's state (CA, tokens, nodes, spec). The other managers are demoted and
    /// down: when one comes back, its heartbeat tells it to become a worker.
    async fn force_new_cluster(&self, session: &Arc<Session>) -> ApiResult<String> {
        let parts = session
            .manager()
            .ok_or_else(|| ApiError::new(503, NOT_A_MANAGER_WORKER))?;
        let mut state = parts
            .shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .state
            .clone();
        drop(parts);
        let spec = state
            .cluster
            .as_ref()
            .map(|c| c.spec.clone())
            .ok_or_else(|| internal("force-new-cluster", "no cluster state"))?;
        let me = session.local.node_id.clone();
        let now = now_rfc3339();
        for node in state.nodes.values_mut() {
            if node.id == me {
                node.manager_addr = Some(session.local.advertise_addr.clone());
                node.state = NodeState::Ready;
            } else if node.spec.role == Role::Manager || node.manager_addr.is_some() {
                node.spec.role = Role::Worker;
                node.manager_addr = None;
                node.state = NodeState::Down;
                node.updated_at = now.clone();
            }
        }
        self.stop_manager(session).await;
        // The old store's Raft membership is what is being abandoned.
        let _ = std::fs::remove_dir_all(self.files().raft_dir());
        let parts = self.start_manager(session, Some(&spec)).await?;
        parts
            .raft
            .wait(Some(Duration::from_secs(30)))
            .current_leader(ids::raft_id(&me), "force-new-cluster: electing itself")
            .await
            .map_err(|e| internal("raft", e))?;
        session
            .last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        check(
            self.propose_on(
                session,
                Command::Restore {
                    state: Box::new(state),
                },
            )
            .await?,
        )?;
        *session.managers.write().unwrap_or_else(|e| e.into_inner()) =
            vec![session.local.advertise_addr.clone()];
        tracing::info!("forced a new cluster with this manager alone");
        Ok(me)
    }

    pub async fn join(&self, request: JoinRequest) -> ApiResult<()> {
        let _op = self.0.op.lock().await;
        if self.session().is_some() || self.is_locked() || self.local_error().is_some() {
            return Err(ApiError::new(503, ALREADY_IN_SWARM));
        }
        if request.join_token.is_empty() {
            return Err(ApiError::new(400, "join token is necessary"));
        }
        let token = ids::parse_join_token(&request.join_token)
            .ok_or_else(|| ApiError::new(400, "invalid join token"))?;
        if request.remote_addrs.is_empty() {
            return Err(ApiError::new(
                400,
                "at least 1 RemoteAddr is required to join",
            ));
        }
        let availability = Availability::parse(&request.availability).ok_or_else(|| {
            ApiError::new(
                400,
                format!("invalid availability {:?}", request.availability),
            )
        })?;
        let listen = parse_listen(&request.listen_addr)?;
        let mut last_error = ApiError::new(500, "could not reach any manager");
        for remote in &request.remote_addrs {
            let remote = with_port(remote, DEFAULT_PORT);
            match self
                .join_via(&remote, &token, &request, listen, availability)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.status == 400 => {
                    self.wipe();
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!("joining through {remote}: {e}");
                    self.wipe();
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    async fn join_via(
        &self,
        remote: &str,
        token: &ids::JoinToken,
        request: &JoinRequest,
        listen: SocketAddr,
        availability: Availability,
    ) -> ApiResult<()> {
        // The address other nodes reach us at: the one given, else the one our packets to the
        // manager leave from.
        let advertise = if request.advertise_addr.is_empty() {
            let probe = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(remote),
            )
            .await
            .map_err(|_| ApiError::new(500, format!("timed out connecting to {remote}")))?
            .map_err(|e| ApiError::new(500, format!("connecting to {remote}: {e}")))?;
            let local = probe
                .local_addr()
                .map_err(|e| internal("local address", e))?;
            SocketAddr::new(local.ip(), listen.port())
        } else {
            parse_advertise(&request.advertise_addr, listen)?
        };
        // 1. The CA, fetched over TLS we cannot check yet, is trusted only if its digest is the
        //    one in the token.
        let bootstrap = pki::bootstrap_client_config().map_err(|e| internal("TLS", e))?;
        let channel = net::channel(remote, bootstrap, Duration::from_secs(10))
            .map_err(|e| internal("address", e))?;
        let ca_der = NodeCaClient::new(channel)
            .get_root_ca_certificate(proto::GetRootCaCertificateRequest {})
            .await
            .map_err(|s| {
                ApiError::new(
                    500,
                    format!("could not get the root CA from {remote}: {}", s.message()),
                )
            })?
            .into_inner()
            .certificate;
        if !ids::secrets_equal(&ids::ca_digest(&ca_der), &token.ca_digest) {
            return Err(ApiError::new(
                400,
                format!(
                    "remote CA does not match fingerprint. Expected: {}",
                    token.ca_digest
                ),
            ));
        }
        // 2. Now trusting that CA: the token's secret and a CSR for a certificate.
        let (key_der, csr) = pki::new_key_and_csr().map_err(|e| internal("key", e))?;
        let trusted = pki::client_config(&ca_der, None).map_err(|e| internal("TLS", e))?;
        let channel = net::channel(remote, trusted, Duration::from_secs(20))
            .map_err(|e| internal("address", e))?;
        let issued = NodeCaClient::new(channel)
            .issue_node_certificate(proto::IssueNodeCertificateRequest {
                token: request.join_token.clone(),
                csr,
                advertise_addr: advertise.to_string(),
                description: Some(to_proto(&describe(&self.0.opts))),
                availability: match availability {
                    Availability::Active => "active",
                    Availability::Pause => "pause",
                    Availability::Drain => "drain",
                }
                .into(),
            })
            .await
            .map_err(status_to_api)?
            .into_inner();
        let info =
            pki::cert_info(&issued.certificate).map_err(|e| internal("issued certificate", e))?;
        let role = Role::from_ou(&info.subject.ou)
            .ok_or_else(|| internal("issued certificate", "no role"))?;
        let local = LocalState {
            node_id: issued.node_id.clone(),
            cluster_id: info.subject.cluster_id.clone(),
            listen_addr: listen.to_string(),
            advertise_addr: advertise.to_string(),
            managers: if issued.managers.is_empty() {
                vec![remote.to_string()]
            } else {
                issued.managers.clone()
            },
        };
        self.save_membership(&local, &ca_der, &issued.certificate, &key_der)?;
        let session = self.new_session(local, ca_der, &issued.certificate, &key_der, role, None)?;
        if role == Role::Manager {
            // The leader replicates to this node while it joins: its Raft service must be live.
            *self.0.session.write().unwrap_or_else(|e| e.into_inner()) = Some(session.clone());
            let joined = async {
                self.start_manager(&session, None).await?;
                self.join_raft(&session).await
            }
            .await;
            if let Err(e) = joined {
                self.stop_manager(&session).await;
                *self.0.session.write().unwrap_or_else(|e| e.into_inner()) = None;
                return Err(e);
            }
        }
        self.start_loops(&session);
        *self.0.session.write().unwrap_or_else(|e| e.into_inner()) = Some(session);
        tracing::info!(
            "joined the swarm as {} node {}",
            role.as_str(),
            issued.node_id
        );
        Ok(())
    }

    /// A manager with a fresh manager certificate asks the leader to make it a Raft voter.
    async fn join_raft(&self, session: &Arc<Session>) -> ApiResult<()> {
        let request = proto::JoinRaftRequest {
            raft_id: ids::raft_id(&session.local.node_id),
            addr: session.local.advertise_addr.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = ApiError::new(503, NO_LEADER);
        while Instant::now() < deadline {
            let mut candidates = session.known_managers();
            candidates.retain(|a| *a != session.local.advertise_addr);
            while let Some(addr) = candidates.pop() {
                let Ok(channel) = session.channel(&addr) else {
                    continue;
                };
                match ControlClient::new(channel).join_raft(request.clone()).await {
                    Ok(_) => return Ok(()),
                    Err(status) => {
                        if let Some(leader) = leader_hint(&status) {
                            candidates.push(leader);
                        }
                        last = status_to_api(status);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(last)
    }

    pub async fn leave(&self, force: bool) -> ApiResult<()> {
        let _op = self.0.op.lock().await;
        let Some(session) = self.session() else {
            if self.is_locked() {
                if !force {
                    return Err(ApiError::new(503, crate::autolock::LEAVE_LOCKED));
                }
            } else if self.local_error().is_none() {
                return Err(ApiError::new(503, NOT_IN_SWARM));
            }
            self.wipe();
            self.set_locked(false);
            *self.0.error.write().unwrap_or_else(|e| e.into_inner()) = None;
            tracing::info!("left the swarm");
            return Ok(());
        };
        if session.role() == Role::Manager && !force {
            let (managers, reachable) = session
                .manager()
                .map(|m| {
                    let state = &m.shared.read().unwrap_or_else(|e| e.into_inner()).state;
                    (
                        state.managers().count(),
                        state
                            .managers()
                            .filter(|n| n.state == NodeState::Ready)
                            .count(),
                    )
                })
                .unwrap_or((1, 1));
            let message = if managers <= 1 {
                "You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. ".to_string()
            } else {
                format!(
                    "You are attempting to leave the swarm on a node that is participating as a manager. Removing this node leaves {} managers out of {managers}. Without a Raft quorum your swarm will be inaccessible. The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message.",
                    reachable.saturating_sub(1)
                )
            };
            return Err(ApiError::new(503, message));
        }
        self.stop_manager(&session).await;
        *self.0.session.write().unwrap_or_else(|e| e.into_inner()) = None;
        session.abort_tasks();
        drop(session);
        self.wipe();
        tracing::info!("left the swarm");
        Ok(())
    }

    // ---- writes -------------------------------------------------------------------------------

    /// Commits a command through Raft: here when this manager leads, else through the leader.
    pub async fn propose(&self, command: Command) -> ApiResult<CommandResult> {
        let session = self.manager_session()?;
        self.propose_on(&session, command).await
    }

    async fn propose_on(
        &self,
        session: &Arc<Session>,
        command: Command,
    ) -> ApiResult<CommandResult> {
        let parts = session
            .manager()
            .ok_or_else(|| ApiError::new(503, NOT_A_MANAGER_WORKER))?;
        let timeout = self.write_timeout();
        let written = tokio::time::timeout(timeout, parts.raft.client_write(command.clone())).await;
        match written {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                let Some(leader) = forward.leader_node else {
                    return Err(ApiError::new(503, NO_LEADER));
                };
                let channel = session.channel(&leader.addr)?;
                let payload = serde_json::to_vec(&command).map_err(|e| internal("command", e))?;
                let mut request = tonic::Request::new(proto::ProposeRequest { command: payload });
                request.set_timeout(timeout);
                let answer = ControlClient::new(channel)
                    .propose(request)
                    .await
                    .map_err(status_to_api)?
                    .into_inner();
                serde_json::from_slice(&answer.result).map_err(|e| internal("leader's answer", e))
            }
            Ok(Err(e)) => Err(internal("raft", e)),
            Err(_) => Err(ApiError::new(503, NO_LEADER)),
        }
    }

    fn write_timeout(&self) -> Duration {
        (self.0.opts.raft_tick * 40).max(Duration::from_secs(3))
    }

    pub fn manager_session(&self) -> ApiResult<Arc<Session>> {
        if self.is_locked() {
            return Err(ApiError::new(503, crate::autolock::LOCKED));
        }
        let session = self
            .session()
            .ok_or_else(|| ApiError::new(503, NOT_A_MANAGER_INACTIVE))?;
        if session.manager().is_none() {
            return Err(ApiError::new(503, NOT_A_MANAGER_WORKER));
        }
        Ok(session)
    }

    /// The replicated state as this manager has applied it, with Raft's view of leadership.
    pub fn view(&self) -> ApiResult<View> {
        self.view_of(true)
    }

    /// A view whose state holds no task: for the heartbeats, sessions and checks of nodes,
    /// hundreds a second with 1,000 nodes. A view shares the task map with the state machine
    /// (`Shared`), which copies the whole map when it changes it while a view holds it: with
    /// 30,000 tasks, copies for these views were a fifteenth of the leader's work.
    pub fn view_without_tasks(&self) -> ApiResult<View> {
        self.view_of(false)
    }

    fn view_of(&self, with_tasks: bool) -> ApiResult<View> {
        let session = self.manager_session()?;
        let parts = session
            .manager()
            .ok_or_else(|| ApiError::new(503, NOT_A_MANAGER_WORKER))?;
        let state = {
            let applied = parts.shared.read().unwrap_or_else(|e| e.into_inner());
            let mut state = applied.state.clone();
            if !with_tasks {
                // Let go within the lock, before the state machine can write again.
                state.objects.tasks = Default::default();
            }
            state
        };
        let metrics = parts.raft.metrics().borrow().clone();
        let voters: BTreeSet<u64> = metrics.membership_config.membership().voter_ids().collect();
        // A leader that removed itself from Raft still holds its vote, and so still names itself
        // leader in the metrics, though it has stepped down.
        let leader = match metrics.current_leader {
            Some(l) if l == metrics.id && metrics.state != openraft::ServerState::Leader => None,
            other => other,
        };
        Ok(View {
            state,
            leader,
            self_raft_id: metrics.id,
            voters,
            session,
        })
    }

    pub async fn update_node(
        &self,
        key: &str,
        version: Option<u64>,
        spec: NodeSpec,
    ) -> ApiResult<()> {
        let view = self.view()?;
        let node = view
            .state
            .find_node(key)
            .map_err(|(s, m)| ApiError::new(s, m))?;
        let id = node.id.clone();
        check(
            self.propose(Command::UpdateNode {
                id,
                version,
                spec,
                now: now_rfc3339(),
            })
            .await?,
        )
    }

    pub async fn remove_node(&self, key: &str, force: bool) -> ApiResult<()> {
        let view = self.view()?;
        let node = view
            .state
            .find_node(key)
            .map_err(|(s, m)| ApiError::new(s, m))?;
        let id = node.id.clone();
        check(
            self.propose(Command::RemoveNode {
                id,
                force,
                now: now_rfc3339(),
            })
            .await?,
        )
    }

    pub async fn update_swarm(
        &self,
        version: Option<u64>,
        spec: SwarmSpec,
        rotate_worker: bool,
        rotate_manager: bool,
        rotate_unlock_key: bool,
    ) -> ApiResult<()> {
        let view = self.view()?;
        spec.validate(self.0.opts.min_cert_expiry)
            .map_err(|m| ApiError::new(400, m))?;
        let ca = &spec.ca_config;
        let rotations = |c: &crate::state::CaConfig| c.force_rotate.unwrap_or(0);
        if view
            .state
            .cluster
            .as_ref()
            .is_some_and(|c| rotations(&c.spec.ca_config) != rotations(ca))
            || !ca.signing_ca_cert.is_empty()
            || !ca.signing_ca_key.is_empty()
            || !ca.external_cas.is_empty()
        {
            return Err(ApiError::new(
                400,
                "CA rotation and external CAs (swarm ca --rotate, --external-ca) are not supported by this swarm agent yet",
            ));
        }
        // A new unlock key when autolock is turned on, or rotated while on.
        let locked_now = view
            .state
            .cluster
            .as_ref()
            .is_some_and(|c| c.unlock_key.is_some());
        let unlock_key = (spec.encryption_config.auto_lock_managers
            && (!locked_now || rotate_unlock_key))
            .then(crate::autolock::new_unlock_key);
        check(
            self.propose(Command::UpdateSwarm {
                version,
                spec: Box::new(spec),
                worker_secret: rotate_worker.then(ids::new_secret),
                manager_secret: rotate_manager.then(ids::new_secret),
                unlock_key,
                now: now_rfc3339(),
            })
            .await?,
        )?;
        // This manager's files follow at once (the others within their watch period).
        if let Err(e) = crate::autolock::sync(self, &view.session) {
            tracing::warn!("autolock: {}", e.message);
        }
        Ok(())
    }

    /// Docker's `GET /swarm/unlockkey`: the current unlock key, "" without autolock.
    pub fn unlock_key(&self) -> ApiResult<String> {
        let view = self.view()?;
        Ok(view
            .state
            .cluster
            .as_ref()
            .and_then(|c| c.unlock_key.clone())
            .unwrap_or_default())
    }

    /// Docker's `POST /swarm/unlock`: opens the sealed key with the unlock key and resumes.
    pub async fn unlock(&self, key: &str) -> ApiResult<()> {
        let _op = self.0.op.lock().await;
        if !self.is_locked() {
            return Err(match self.session() {
                Some(s) if s.manager().is_some() => ApiError::new(409, crate::autolock::NOT_LOCKED),
                Some(_) => ApiError::new(503, NOT_A_MANAGER_WORKER),
                None => ApiError::new(503, NOT_A_MANAGER_INACTIVE),
            });
        }
        let kek = crate::autolock::parse_human(key)?;
        self.resume(Some(kek)).await?;
        tracing::info!("unlocked the swarm");
        Ok(())
    }

    pub fn is_locked(&self) -> bool {
        self.0.locked.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_locked(&self, locked: bool) {
        self.0
            .locked
            .store(locked, std::sync::atomic::Ordering::SeqCst);
    }

    /// Why this node gave up its membership, if it did (Docker's `Swarm.Error`).
    pub fn local_error(&self) -> Option<String> {
        self.0
            .error
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node's TLS key file and its Raft data key file.
    pub(crate) fn key_paths(&self) -> (PathBuf, PathBuf) {
        let files = self.files();
        (files.key(), files.dek())
    }

    /// S05: a node restarted with certificates of another swarm (restored from the wrong
    /// backup, say) would otherwise retry its managers forever. As soon as one manager it knows
    /// refuses its certificate (or shows one its CA did not sign) and none accepts it, it stops
    /// and says why (`docker info`: `LocalNodeState: error`); `swarm leave --force` clears it.
    async fn check_trust(self, session: std::sync::Weak<Session>) {
        loop {
            let Some(s) = session.upgrade() else { return };
            let Ok(tls) = s.client_tls() else { return };
            let managers: Vec<String> = s
                .known_managers()
                .into_iter()
                .filter(|a| *a != s.local.advertise_addr)
                .collect();
            drop(s);
            if managers.is_empty() {
                return;
            }
            let mut refused = None;
            for addr in managers {
                match net::probe(&addr, tls.clone()).await {
                    net::Probe::Trusted => return,
                    net::Probe::Refused(why) => {
                        refused = Some(format!("the manager at {addr}: {why}"))
                    }
                    net::Probe::Unreachable => {}
                }
            }
            if let Some(why) = refused {
                self.give_up(&session, why).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn give_up(&self, session: &std::sync::Weak<Session>, why: String) {
        let _op = self.0.op.lock().await;
        let Some(session) = session.upgrade() else {
            return;
        };
        if !self.session().is_some_and(|c| Arc::ptr_eq(&c, &session)) {
            return;
        }
        let message = format!(
            "this node's certificates are not those of the swarm it knows ({why}): they were issued by another swarm's CA. Use \"docker swarm leave --force\" and join again."
        );
        tracing::error!("{message}");
        self.stop_manager(&session).await;
        *self.0.session.write().unwrap_or_else(|e| e.into_inner()) = None;
        *self.0.error.write().unwrap_or_else(|e| e.into_inner()) = Some(message);
        // Last: this runs in one of those tasks, which ends at its next await.
        session.abort_tasks();
    }

    // ---- the CA and the dispatcher (gRPC handlers) ---------------------------------------------

    /// The manager side of a join: checks the token's secret, registers the node through Raft and
    /// signs its certificate.
    pub async fn issue(
        &self,
        request: proto::IssueNodeCertificateRequest,
        from: Option<SocketAddr>,
    ) -> Result<proto::IssueNodeCertificateResponse, tonic::Status> {
        let view = self
            .view_without_tasks()
            .map_err(|e| tonic::Status::unavailable(e.message))?;
        let cluster = view
            .state
            .cluster
            .clone()
            .ok_or_else(|| tonic::Status::unavailable("the cluster is not ready"))?;
        let token = ids::parse_join_token(&request.token)
            .ok_or_else(|| tonic::Status::invalid_argument(BAD_TOKEN_DESC))?;
        let role = if ids::secrets_equal(&token.secret, &cluster.worker_secret) {
            Role::Worker
        } else if ids::secrets_equal(&token.secret, &cluster.manager_secret) {
            Role::Manager
        } else {
            return Err(tonic::Status::invalid_argument(BAD_TOKEN_DESC));
        };
        let availability = Availability::parse(&request.availability).unwrap_or_default();
        let node_id = ids::new_id();
        let subject = NodeSubject {
            node_id: node_id.clone(),
            ou: role.ou().into(),
            cluster_id: cluster.id.clone(),
        };
        let certificate = cluster
            .root_ca
            .sign_csr(&request.csr, &subject, cluster.spec.cert_expiry())
            .map_err(|e| tonic::Status::invalid_argument(format!("bad CSR: {e}")))?;
        let now = now_rfc3339();
        let addr = from.map(|a| a.ip().to_string()).unwrap_or_default();
        let node = Node {
            id: node_id.clone(),
            created_at: now.clone(),
            updated_at: now,
            version: 0,
            spec: NodeSpec {
                role,
                availability,
                ..NodeSpec::default()
            },
            description: from_proto(request.description),
            state: NodeState::Ready,
            addr,
            manager_addr: None,
            raft_id: ids::raft_id(&node_id),
        };
        check(
            self.propose(Command::AddNode {
                node: Box::new(node),
            })
            .await
            .map_err(|e| tonic::Status::unavailable(e.message))?,
        )
        .map_err(|e| tonic::Status::unavailable(e.message))?;
        if let Some(session) = self.session() {
            session
                .last_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(node_id.clone(), Instant::now());
        }
        Ok(proto::IssueNodeCertificateResponse {
            node_id,
            role: role.as_str().into(),
            certificate,
            root_ca: cluster.root_ca.cert_der().unwrap_or_default(),
            managers: view.manager_addrs(),
        })
    }

    /// Renews a node's certificate, for the role the cluster now wants it in.
    pub fn renew(
        &self,
        node_id: &str,
        csr: &[u8],
    ) -> Result<proto::IssueNodeCertificateResponse, tonic::Status> {
        let view = self
            .view_without_tasks()
            .map_err(|e| tonic::Status::unavailable(e.message))?;
        // Only the leader: a manager that was just removed from Raft holds a stale view of
        // the role the node should have (its own, for one).
        if view.leader != Some(view.self_raft_id) {
            return Err(not_leader(&view));
        }
        let cluster = view
            .state
            .cluster
            .clone()
            .ok_or_else(|| tonic::Status::unavailable("the cluster is not ready"))?;
        let node = view
            .state
            .nodes
            .get(node_id)
            .ok_or_else(|| tonic::Status::not_found(format!("node {node_id} not found")))?;
        let subject = NodeSubject {
            node_id: node_id.to_string(),
            ou: effective_role(node).ou().into(),
            cluster_id: cluster.id.clone(),
        };
        let certificate = cluster
            .root_ca
            .sign_csr(csr, &subject, cluster.spec.cert_expiry())
            .map_err(|e| tonic::Status::invalid_argument(format!("bad CSR: {e}")))?;
        Ok(proto::IssueNodeCertificateResponse {
            node_id: node_id.into(),
            role: effective_role(node).as_str().into(),
            certificate,
            root_ca: cluster.root_ca.cert_der().unwrap_or_default(),
            managers: view.manager_addrs(),
        })
    }

    /// The leader's side of a heartbeat; other managers send the node to the leader.
    pub async fn heartbeat(
        &self,
        node_id: &str,
        from: Option<SocketAddr>,
        request: proto::HeartbeatRequest,
    ) -> Result<proto::HeartbeatResponse, tonic::Status> {
        let view = self
            .view_without_tasks()
            .map_err(|e| tonic::Status::unavailable(e.message))?;
        if view.leader != Some(view.self_raft_id) {
            return Err(not_leader(&view));
        }
        let node = view
            .state
            .nodes
            .get(node_id)
            .ok_or_else(|| tonic::Status::not_found(format!("node {node_id} not found")))?;
        view.session
            .last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string(), Instant::now());
        let addr = from.map(|a| a.ip().to_string());
        let description = request.description.map(|d| from_proto(Some(d)));
        let changed_description = description.as_ref().is_some_and(|d| *d != node.description);
        if node.state != NodeState::Ready
            || addr.as_ref().is_some_and(|a| *a != node.addr)
            || changed_description
        {
            let command = Command::SetNodeState {
                id: node_id.to_string(),
                state: NodeState::Ready,
                addr,
                description,
                now: now_rfc3339(),
            };
            let daemon = self.clone();
            tokio::spawn(async move {
                if let Err(e) = daemon.propose(command).await {
                    tracing::warn!("marking a node ready: {e}");
                }
            });
        }
        let period = view
            .state
            .cluster
            .as_ref()
            .map(|c| c.spec.heartbeat_period())
            .unwrap_or(crate::state::DEFAULT_HEARTBEAT);
        Ok(proto::HeartbeatResponse {
            period_ms: period.as_millis() as u64,
            managers: view.manager_addrs(),
            role: effective_role(node).as_str().into(),
            renew: false,
        })
    }

    /// The leader's side of a node's session: a stream that stays open while the node lives.
    /// When it closes and the node opens no other within [`SESSION_GRACE`], the node is down.
    pub fn open_session(
        &self,
        node_id: &str,
    ) -> Result<
        tokio_stream::wrappers::ReceiverStream<Result<proto::SessionMessage, tonic::Status>>,
        tonic::Status,
    > {
        let view = self
            .view_without_tasks()
            .map_err(|e| tonic::Status::unavailable(e.message))?;
        if view.leader != Some(view.self_raft_id) {
            return Err(not_leader(&view));
        }
        if !view.state.nodes.contains_key(node_id) {
            return Err(tonic::Status::not_found(format!(
                "node {node_id} not found"
            )));
        }
        let session = view.session.clone();
        let seq = session
            .session_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        session
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string(), seq);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.try_send(Ok(proto::SessionMessage {}));
        let daemon = self.clone();
        let node_id = node_id.to_string();
        let weak = Arc::downgrade(&session);
        drop(session);
        tokio::spawn(async move {
            tx.closed().await;
            tokio::time::sleep(SESSION_GRACE).await;
            let Some(session) = weak.upgrade() else {
                return;
            };
            {
                let mut sessions = session.sessions.lock().unwrap_or_else(|e| e.into_inner());
                if sessions.get(&node_id) != Some(&seq) {
                    return;
                }
                sessions.remove(&node_id);
            }
            let Ok(view) = daemon.view() else { return };
            if view.leader != Some(view.self_raft_id)
                || view
                    .state
                    .nodes
                    .get(&node_id)
                    .is_none_or(|n| n.state != NodeState::Ready)
            {
                return;
            }
            tracing::info!("node {node_id}'s session ended: down");
            session
                .last_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&node_id);
            let command = Command::SetNodeState {
                id: node_id,
                state: NodeState::Down,
                addr: None,
                description: None,
                now: now_rfc3339(),
            };
            if let Err(e) = daemon.propose(command).await {
                tracing::warn!("marking a node down: {e}");
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Every node: keeps a session open with the leader (the manager its heartbeats reach).
    async fn keep_session(self, session: std::sync::Weak<Session>) {
        loop {
            let Some(s) = session.upgrade() else { return };
            let leader = s
                .leader_addr
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let Some(addr) = leader else {
                drop(s);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(channel) = s.channel(&addr) else {
                drop(s);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            drop(s);
            let mut stream = match ControlClient::new(channel)
                .session(proto::SessionRequest {})
                .await
            {
                Ok(stream) => stream.into_inner(),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // Held until the stream ends or the heartbeats found another leader.
            loop {
                tokio::select! {
                    message = stream.message() => {
                        if !matches!(message, Ok(Some(_))) {
                            break;
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {
                        let Some(s) = session.upgrade() else { return };
                        if s.leader_addr.read().unwrap_or_else(|e| e.into_inner()).as_deref() != Some(addr.as_str()) {
                            break;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader's side of a manager joining Raft: learner first (it catches up), then voter.
    pub async fn add_raft_member(
        &self,
        node_id: &str,
        raft_id: u64,
        addr: String,
    ) -> Result<(), tonic::Status> {
        let view = self
            .view()
            .map_err(|e| tonic::Status::unavailable(e.message))?;
        if raft_id != ids::raft_id(node_id) {
            return Err(tonic::Status::permission_denied(
                "the Raft ID is not this node's",
            ));
        }
        let node = view
            .state
            .nodes
            .get(node_id)
            .ok_or_else(|| tonic::Status::not_found(format!("node {node_id} not found")))?;
        if node.spec.role != Role::Manager {
            return Err(tonic::Status::permission_denied(
                "this node is not a manager",
            ));
        }
        if view.leader != Some(view.self_raft_id) {
            // The caller must reach the leader itself: the leader checks its certificate.
            return Err(not_leader(&view));
        }
        let parts = view
            .session
            .manager()
            .ok_or_else(|| tonic::Status::unavailable(NO_LEADER))?;
        let raft_error = |e: RaftError<u64, ClientWriteError<u64, BasicNode>>| {
            tonic::Status::unavailable(e.to_string())
        };
        parts
            .raft
            .add_learner(raft_id, BasicNode::new(&addr), true)
            .await
            .map_err(raft_error)?;
        parts
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([raft_id])), false)
            .await
            .map_err(raft_error)?;
        let command = Command::SetManagerAddr {
            id: node_id.to_string(),
            manager_addr: Some(addr),
            now: now_rfc3339(),
        };
        check(
            self.propose(command)
                .await
                .map_err(|e| tonic::Status::unavailable(e.message))?,
        )
        .map_err(|e| tonic::Status::unavailable(e.message))
    }

    // ---- background loops --------------------------------------------------------------------

    /// Every node: a heartbeat to the leader every period; the answer carries the period, the
    /// managers and the role the cluster wants this node in.
    async fn heartbeats(self, session: std::sync::Weak<Session>) {
        let mut target = 0usize;
        let mut leader_hint: Option<String> = None;
        loop {
            let Some(s) = session.upgrade() else { return };
            let period = s.heartbeat_period();
            let managers = s.known_managers();
            let addr = leader_hint
                .take()
                .or_else(|| managers.get(target % managers.len().max(1)).cloned());
            let Some(addr) = addr else {
                tokio::time::sleep(period).await;
                continue;
            };
            let request = proto::HeartbeatRequest {
                addr: s.local.advertise_addr.clone(),
                description: Some(to_proto(&describe(&self.0.opts))),
            };
            let outcome = match s.channel(&addr) {
                Ok(channel) => {
                    let mut request = tonic::Request::new(request);
                    request.set_timeout(period.max(Duration::from_millis(500)));
                    ControlClient::new(channel).heartbeat(request).await
                }
                Err(e) => Err(tonic::Status::unavailable(e.message)),
            };
            match outcome {
                Ok(response) => {
                    *s.leader_addr.write().unwrap_or_else(|e| e.into_inner()) = Some(addr.clone());
                    let response = response.into_inner();
                    let period = Duration::from_millis(response.period_ms.max(50));
                    *s.heartbeat_period
                        .write()
                        .unwrap_or_else(|e| e.into_inner()) = period;
                    if !response.managers.is_empty() && response.managers != managers {
                        *s.managers.write().unwrap_or_else(|e| e.into_inner()) =
                            response.managers.clone();
                        let mut local = s.local.clone();
                        local.managers = response.managers;
                        if let Err(e) = self.save_local(&local) {
                            tracing::warn!("saving the managers' addresses: {e}");
                        }
                        target = 0;
                    }
                    let wanted = if response.role == "manager" {
                        Role::Manager
                    } else {
                        Role::Worker
                    };
                    if wanted != s.role() {
                        s.renew_now.notify_one();
                    }
                    let jitter = period.as_millis() as u64 / 10;
                    let jitter = if jitter > 0 {
                        u64::from(ids::random_bytes::<2>()[0]) % jitter
                    } else {
                        0
                    };
                    drop(s);
                    tokio::time::sleep(period - Duration::from_millis(jitter)).await;
                }
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                    leader_hint = self::leader_hint(&status);
                    if leader_hint.is_none() {
                        target += 1;
                        drop(s);
                        tokio::time::sleep(period / 4).await;
                    }
                }
                Err(status) => {
                    tracing::debug!("heartbeat to {addr}: {}", status.message());
                    target += 1;
                    drop(s);
                    tokio::time::sleep((period / 4).max(Duration::from_millis(100))).await;
                }
            }
        }
    }

    /// Every node: renews its certificate at a random 50-80 % of its life, or at once when the
    /// cluster wants it in another role; switches between manager and worker accordingly.
    async fn renewals(self, session: std::sync::Weak<Session>) {
        loop {
            let Some(s) = session.upgrade() else { return };
            let due = match std::fs::read_to_string(self.files().cert())
                .ok()
                .and_then(|p| pki::pem_to_der(&p).ok())
                .and_then(|d| pki::cert_info(&d).ok())
            {
                Some(info) => {
                    // Certificates are backdated an hour for clock skew; their life counts from
                    // when they were issued.
                    let issued = (info.not_before + pki::BACKDATE).min(info.not_after);
                    let life = info.not_after.duration_since(issued).unwrap_or_default();
                    let fraction = 0.5 + 0.3 * f64::from(ids::random_bytes::<1>()[0]) / 255.0;
                    let at = issued + life.mul_f64(fraction);
                    at.duration_since(std::time::SystemTime::now())
                        .unwrap_or_default()
                }
                None => Duration::from_secs(60),
            };
            let renew_now = async { s.renew_now.notified().await };
            tokio::select! {
                _ = tokio::time::sleep(due) => {}
                _ = renew_now => {}
            }
            match self.renew_certificate(&s).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!("renewing the node certificate: {e}");
                    drop(s);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn renew_certificate(&self, session: &Arc<Session>) -> ApiResult<()> {
        let (key_der, csr) = pki::new_key_and_csr().map_err(|e| internal("key", e))?;
        let mut last = ApiError::new(503, NO_LEADER);
        let mut candidates = session.known_managers();
        candidates.reverse();
        let mut tries = 0;
        while let Some(addr) = candidates.pop() {
            tries += 1;
            if tries > 10 {
                break;
            }
            let Ok(channel) = session.channel(&addr) else {
                continue;
            };
            let issued = match NodeCaClient::new(channel)
                .renew_node_certificate(proto::RenewNodeCertificateRequest { csr: csr.clone() })
                .await
            {
                Ok(issued) => issued.into_inner(),
                Err(status) => {
                    if let Some(leader) = leader_hint(&status) {
                        candidates.push(leader);
                    }
                    last = status_to_api(status);
                    continue;
                }
            };
            let info = pki::cert_info(&issued.certificate)
                .map_err(|e| internal("issued certificate", e))?;
            let role = Role::from_ou(&info.subject.ou)
                .ok_or_else(|| internal("issued certificate", "no role"))?;
            if info.subject.node_id != session.local.node_id {
                return Err(internal("issued certificate", "for another node"));
            }
            let files = self.files();
            crate::autolock::write_key(self, session, &key_to_pem(&key_der))?;
            write_private(
                &files.cert(),
                pki::der_to_pem(&issued.certificate).as_bytes(),
            )
            .map_err(|e| internal("certificate", e))?;
            session
                .credentials
                .replace(&issued.certificate, &key_der)
                .map_err(|e| internal("certificate", e))?;
            let previous = session.role();
            *session.role.write().unwrap_or_else(|e| e.into_inner()) = role;
            session.forget_channels();
            tracing::info!("renewed the node certificate ({})", role.as_str());
            if previous != role {
                match role {
                    Role::Manager => {
                        self.start_manager(session, None).await?;
                        self.join_raft(session).await?;
                    }
                    Role::Worker => {
                        self.stop_manager(session).await;
                        let _ = std::fs::remove_dir_all(self.files().raft_dir());
                    }
                }
            }
            return Ok(());
        }
        Err(last)
    }

    /// On the leader: marks nodes down that missed three heartbeats, and takes demoted managers
    /// out of Raft. A leader that was itself paused (its loop ran late) forgets what it saw
    /// before, so a slow leader never marks a healthy node down.
    async fn detect_down(self, session: std::sync::Weak<Session>) {
        let mut leading_since: Option<Instant> = None;
        let mut last_tick = Instant::now();
        loop {
            let period = session
                .upgrade()
                .map(|s| s.heartbeat_period())
                .unwrap_or(Duration::from_secs(1));
            tokio::time::sleep(
                (period / 5).clamp(Duration::from_millis(20), Duration::from_millis(500)),
            )
            .await;
            let Some(s) = session.upgrade() else { return };
            let now = Instant::now();
            let late = now.duration_since(last_tick) > period * 2;
            last_tick = now;
            let Ok(view) = self.view_without_tasks() else {
                continue;
            };
            if view.leader != Some(view.self_raft_id) {
                leading_since = None;
                s.last_seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                continue;
            }
            let since = *leading_since.get_or_insert(now);
            let period = view
                .state
                .cluster
                .as_ref()
                .map(|c| c.spec.heartbeat_period())
                .unwrap_or(period);
            let mut down = Vec::new();
            {
                let mut seen = s.last_seen.lock().unwrap_or_else(|e| e.into_inner());
                if late {
                    for t in seen.values_mut() {
                        *t = now;
                    }
                    leading_since = Some(now);
                    continue;
                }
                for node in view
                    .state
                    .nodes
                    .values()
                    .filter(|n| n.state == NodeState::Ready)
                {
                    let missed = match seen.get(&node.id) {
                        Some(t) => now.duration_since(*t) > period * 3,
                        // Not heard from since this manager leads: SwarmKit's longer grace.
                        None => now.duration_since(since) > period * 6,
                    };
                    if missed {
                        down.push(node.id.clone());
                        seen.remove(&node.id);
                    }
                }
            }
            for id in down {
                tracing::info!("node {id} missed its heartbeats: down");
                let command = Command::SetNodeState {
                    id,
                    state: NodeState::Down,
                    addr: None,
                    description: None,
                    now: now_rfc3339(),
                };
                if let Err(e) = self.propose(command).await {
                    tracing::warn!("marking a node down: {e}");
                }
            }
            // Demoted managers leave Raft. A demoted leader removes itself too: once that
            // membership is committed it steps down and the remaining managers elect a leader.
            for node in view
                .state
                .nodes
                .values()
                .filter(|n| n.spec.role == Role::Worker)
            {
                let Some(parts) = s.manager() else { break };
                if view.voters.contains(&node.raft_id) {
                    if view.voters.len() <= 1 {
                        continue;
                    }
                    let removal = ChangeMembers::RemoveVoters(BTreeSet::from([node.raft_id]));
                    // Bounded, so a membership change that cannot commit (no quorum) does not
                    // stop down detection; it is tried again on a later round.
                    let change = parts.raft.change_membership(removal, false);
                    match tokio::time::timeout(self.write_timeout() * 2, change).await {
                        Ok(Ok(_)) => tracing::info!("node {} left Raft (demoted)", node.id),
                        Ok(Err(e)) => tracing::warn!("removing node {} from Raft: {e}", node.id),
                        Err(_) => tracing::warn!("removing node {} from Raft: timed out", node.id),
                    }
                    if node.raft_id == view.self_raft_id {
                        break;
                    }
                } else if node.manager_addr.is_some() {
                    let command = Command::SetManagerAddr {
                        id: node.id.clone(),
                        manager_addr: None,
                        now: now_rfc3339(),
                    };
                    if let Err(e) = self.propose(command).await {
                        tracing::warn!("recording a demotion: {e}");
                    }
                }
            }
        }
    }
}

/// Binds the gRPC listener; a listener this process just closed (a restarted manager role)
/// may take a moment to go, so the address is retried for two seconds.
async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let mut attempt = 0;
    loop {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The answer of a manager that is not the leader to a call only the leader takes: where the
/// leader is, in the `leader-addr` metadata.
pub(crate) fn not_leader(view: &View) -> tonic::Status {
    let Some(leader) = view.leader_addr() else {
        return tonic::Status::unavailable(NO_LEADER);
    };
    let mut status = tonic::Status::failed_precondition("not the leader");
    if let Ok(value) = leader.parse() {
        status.metadata_mut().insert("leader-addr", value);
    }
    status
}

fn leader_hint(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    status
        .metadata()
        .get("leader-addr")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

const BAD_TOKEN_DESC: &str = "A valid join token is necessary to join this cluster";

/// The role a node's certificate should carry: a demoted manager stays a manager until it has
/// left Raft (its `manager_addr` is cleared then), so it never stops its Raft while the
/// membership still counts it.
fn effective_role(node: &Node) -> Role {
    if node.spec.role == Role::Worker && node.manager_addr.is_some() {
        Role::Manager
    } else {
        node.spec.role
    }
}

fn check(result: CommandResult) -> ApiResult<()> {
    match result {
        CommandResult::Ok => Ok(()),
        CommandResult::Refused { status, message } => Err(ApiError::new(status, message)),
    }
}

/// A manager's view of the cluster for the API.
pub struct View {
    pub state: ClusterState,
    pub leader: Option<u64>,
    pub self_raft_id: u64,
    pub voters: BTreeSet<u64>,
    pub session: Arc<Session>,
}

impl View {
    pub fn leader_addr(&self) -> Option<String> {
        let leader = self.leader?;
        self.state
            .nodes
            .values()
            .find(|n| n.raft_id == leader)
            .and_then(|n| n.manager_addr.clone())
    }

    /// The managers' addresses, the leader's first.
    pub fn manager_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<(bool, String)> = self
            .state
            .nodes
            .values()
            .filter_map(|n| {
                n.manager_addr
                    .clone()
                    .map(|a| (Some(n.raft_id) != self.leader, a))
            })
            .collect();
        addrs.sort();
        addrs.into_iter().map(|(_, a)| a).collect()
    }

    pub fn is_leader(&self, node: &Node) -> bool {
        self.leader == Some(node.raft_id) && node.manager_addr.is_some()
    }

    pub fn server_state_is_leader(&self) -> bool {
        self.leader == Some(self.self_raft_id)
    }
}
