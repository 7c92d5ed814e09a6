//! The cluster state the managers replicate with Raft: the cluster object (spec, root CA, join
//! secrets) and the nodes. Every change is a [`Command`] in the Raft log; applying it is
//! deterministic (times and random secrets are chosen by whoever proposes it), so every manager
//! reaches the same state. Version indexes are the Raft log indexes of the last change, like
//! SwarmKit's store versions.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::pki::RootCa;

/// `null` in Docker's JSON means "the default", like an absent field.
pub fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Worker,
    Manager,
}

impl Role {
    pub fn ou(self) -> &'static str {
        match self {
            Role::Worker => crate::pki::WORKER_OU,
            Role::Manager => crate::pki::MANAGER_OU,
        }
    }
    pub fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            crate::pki::WORKER_OU => Some(Role::Worker),
            crate::pki::MANAGER_OU => Some(Role::Manager),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

impl Availability {
    /// Docker accepts "" for the default.
    pub fn parse(s: &str) -> Option<Availability> {
        match s.to_ascii_lowercase().as_str() {
            "" | "active" => Some(Availability::Active),
            "pause" => Some(Availability::Pause),
            "drain" => Some(Availability::Drain),
            _ => None,
        }
    }
}

pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);

/// Docker's `SwarmSpec`, field for field where this agent implements it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub orchestration: Orchestration,
    #[serde(default, deserialize_with = "nullable")]
    pub raft: RaftSpec,
    #[serde(default, deserialize_with = "nullable")]
    pub dispatcher: DispatcherSpec,
    #[serde(rename = "CAConfig", default, deserialize_with = "nullable")]
    pub ca_config: CaConfig,
    #[serde(default, deserialize_with = "nullable")]
    pub task_defaults: serde_json::Map<String, serde_json::Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub encryption_config: EncryptionConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Orchestration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_history_retention_limit: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RaftSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_old_snapshots: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_entries_for_slow_followers: Option<u64>,
    #[serde(default)]
    pub election_tick: i64,
    #[serde(default)]
    pub heartbeat_tick: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DispatcherSpec {
    /// Nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_period: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaConfig {
    /// Nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_cert_expiry: Option<i64>,
    /// `swarm ca --rotate` increments it (CA rotation is refused until implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_rotate: Option<u64>,
    #[serde(
        rename = "SigningCACert",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub signing_ca_cert: String,
    #[serde(
        rename = "SigningCAKey",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub signing_ca_key: String,
    #[serde(
        rename = "ExternalCAs",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub external_cas: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptionConfig {
    #[serde(default)]
    pub auto_lock_managers: bool,
}

impl SwarmSpec {
    /// Docker's defaults for everything left zero or absent (what `init` and `update` store).
    pub fn with_defaults(mut self) -> SwarmSpec {
        if self.name.is_empty() {
            self.name = "default".into();
        }
        let o = &mut self.orchestration;
        o.task_history_retention_limit.get_or_insert(5);
        let r = &mut self.raft;
        r.snapshot_interval = Some(r.snapshot_interval.filter(|&n| n > 0).unwrap_or(10_000));
        r.keep_old_snapshots.get_or_insert(0);
        r.log_entries_for_slow_followers = Some(
            r.log_entries_for_slow_followers
                .filter(|&n| n > 0)
                .unwrap_or(500),
        );
        if r.election_tick <= 0 {
            r.election_tick = 10;
        }
        if r.heartbeat_tick <= 0 {
            r.heartbeat_tick = 1;
        }
        let d = &mut self.dispatcher;
        d.heartbeat_period = Some(
            d.heartbeat_period
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_HEARTBEAT.as_nanos() as i64),
        );
        let c = &mut self.ca_config;
        c.node_cert_expiry = Some(
            c.node_cert_expiry
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_CERT_EXPIRY.as_nanos() as i64),
        );
        self
    }

    /// Docker's checks of a spec a client sends.
    /// Docker's checks; `min_cert_expiry` is Docker's one hour except in tests.
    pub fn validate(&self, min_cert_expiry: Duration) -> Result<(), String> {
        if let Some(p) = self.dispatcher.heartbeat_period
            && p < 0
        {
            return Err("invalid heartbeat period: must be positive".into());
        }
        let r = &self.raft;
        if !(0..=10_000).contains(&r.election_tick) || !(0..=10_000).contains(&r.heartbeat_tick) {
            return Err(
                "invalid Raft ticks: ElectionTick and HeartbeatTick must be between 0 and 10000"
                    .into(),
            );
        }
        if r.election_tick > 0 && r.heartbeat_tick >= r.election_tick {
            return Err(
                "invalid Raft ticks: ElectionTick must be greater than HeartbeatTick".into(),
            );
        }
        if let Some(e) = self.ca_config.node_cert_expiry
            && e != 0
            && (e < 0 || Duration::from_nanos(e as u64) < min_cert_expiry)
        {
            return Err(format!(
                "minimum certificate expiry time is {}",
                humantime::format_duration(min_cert_expiry)
            ));
        }
        Ok(())
    }

    pub fn heartbeat_period(&self) -> Duration {
        Duration::from_nanos(self.dispatcher.heartbeat_period.unwrap_or(0).max(0) as u64)
            .max(Duration::from_millis(50))
    }

    pub fn cert_expiry(&self) -> Duration {
        let nanos = self.ca_config.node_cert_expiry.unwrap_or(0);
        if nanos <= 0 {
            DEFAULT_CERT_EXPIRY
        } else {
            Duration::from_nanos(nanos as u64)
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Cluster {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
    pub spec: SwarmSpec,
    pub root_ca: RootCa,
    pub worker_secret: String,
    pub manager_secret: String,
    /// The unlock key (`SWMKEY-1-...`) while autolock is on.
    #[serde(default)]
    pub unlock_key: Option<String>,
}

// The CA key and the join secrets never reach a log line.
impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeSpec {
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    pub availability: Availability,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDescription {
    pub hostname: String,
    pub os: String,
    pub architecture: String,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Unknown,
    Down,
    Ready,
    Disconnected,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Down => "down",
            NodeState::Ready => "ready",
            NodeState::Disconnected => "disconnected",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
    pub spec: NodeSpec,
    pub description: NodeDescription,
    pub state: NodeState,
    /// The address the node's connections come from (Docker's `Status.Addr`).
    pub addr: String,
    /// host:port of its gRPC listener while it is a Raft member.
    pub manager_addr: Option<String>,
    pub raft_id: u64,
}

/// A change to the cluster, as written in the Raft log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    CreateCluster {
        cluster: Box<Cluster>,
        node: Box<Node>,
    },
    AddNode {
        node: Box<Node>,
    },
    UpdateNode {
        id: String,
        version: Option<u64>,
        spec: NodeSpec,
        now: String,
    },
    SetNodeState {
        id: String,
        state: NodeState,
        addr: Option<String>,
        description: Option<NodeDescription>,
        now: String,
    },
    SetManagerAddr {
        id: String,
        manager_addr: Option<String>,
        now: String,
    },
    RemoveNode {
        id: String,
        force: bool,
        now: String,
    },
    UpdateSwarm {
        version: Option<u64>,
        spec: Box<SwarmSpec>,
        worker_secret: Option<String>,
        manager_secret: Option<String>,
        /// A new unlock key (autolock turned on, or its key rotated).
        #[serde(default)]
        unlock_key: Option<String>,
        now: String,
    },
    /// `init --force-new-cluster`: the first entry of the new one-manager Raft cluster carries
    /// the old cluster's whole state.
    Restore {
        state: Box<ClusterState>,
    },
    /// Services, tasks, secrets and configs (`objects.rs`).
    Objects(Box<crate::objects::ObjectCommand>),
}

/// What applying a command gave: Docker's status and message when it was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Ok,
    Refused { status: u16, message: String },
}

fn refused(status: u16, message: impl Into<String>) -> CommandResult {
    CommandResult::Refused {
        status,
        message: message.into(),
    }
}

pub const OUT_OF_SEQUENCE: &str = "rpc error: code = Unknown desc = update out of sequence";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster: Option<Cluster>,
    pub nodes: crate::shared::Shared<BTreeMap<String, Node>>,
    #[serde(default)]
    pub objects: crate::objects::Objects,
}

impl ClusterState {
    pub fn managers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.spec.role == Role::Manager)
    }

    /// A node by ID, unique ID prefix or hostname, as Docker resolves `/nodes/{id}`.
    pub fn find_node(&self, key: &str) -> Result<&Node, (u16, String)> {
        if key.is_empty() {
            return Err((404, "node  not found".to_string()));
        }
        if let Some(node) = self.nodes.get(key) {
            return Ok(node);
        }
        let by_name: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| n.description.hostname == key || n.spec.name == key)
            .collect();
        if by_name.len() == 1 {
            return Ok(by_name[0]);
        }
        let by_prefix: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| n.id.starts_with(key))
            .collect();
        match (by_name.len(), by_prefix.len()) {
            (0, 1) => Ok(by_prefix[0]),
            (0, 0) => Err((404, format!("node {key} not found"))),
            _ => Err((
                404,
                format!(
                    "node {key} is ambiguous ({} matches found)",
                    by_name.len().max(by_prefix.len())
                ),
            )),
        }
    }

    /// Applies a committed command at log index `index`.
    pub fn apply(&mut self, index: u64, command: Command) -> CommandResult {
        match command {
            Command::Objects(command) => return self.objects.apply(index, *command),
            Command::Restore { state } => {
                *self = *state;
            }
            Command::CreateCluster {
                mut cluster,
                mut node,
            } => {
                if self.cluster.is_some() {
                    return refused(503, "the cluster already exists");
                }
                cluster.version = index;
                node.version = index;
                self.nodes.insert(node.id.clone(), *node);
                self.cluster = Some(*cluster);
            }
            Command::AddNode { mut node } => {
                node.version = index;
                self.nodes.insert(node.id.clone(), *node);
            }
            Command::UpdateNode {
                id,
                version,
                spec,
                now,
            } => {
                let managers = self.managers().count();
                let Some(node) = self.nodes.get_mut(&id) else {
                    return refused(404, format!("node {id} not found"));
                };
                if version.is_some_and(|v| v != node.version) {
                    return refused(500, OUT_OF_SEQUENCE);
                }
                if node.spec.role == Role::Manager && spec.role == Role::Worker && managers <= 1 {
                    return refused(
                        400,
                        "rpc error: code = FailedPrecondition desc = attempting to demote the last manager of the swarm",
                    );
                }
                node.spec = spec;
                node.version = index;
                node.updated_at = now;
            }
            Command::SetNodeState {
                id,
                state,
                addr,
                description,
                now,
            } => {
                let Some(node) = self.nodes.get_mut(&id) else {
                    return refused(404, format!("node {id} not found"));
                };
                node.state = state;
                if let Some(addr) = addr {
                    node.addr = addr;
                }
                if let Some(description) = description {
                    node.description = description;
                }
                node.version = index;
                node.updated_at = now;
            }
            Command::SetManagerAddr {
                id,
                manager_addr,
                now,
            } => {
                let Some(node) = self.nodes.get_mut(&id) else {
                    return refused(404, format!("node {id} not found"));
                };
                node.manager_addr = manager_addr;
                node.version = index;
                node.updated_at = now;
            }
            Command::RemoveNode { id, force, now: _ } => {
                let Some(node) = self.nodes.get(&id) else {
                    return refused(404, format!("node {id} not found"));
                };
                if node.spec.role == Role::Manager || node.manager_addr.is_some() {
                    return refused(
                        400,
                        format!(
                            "rpc error: code = FailedPrecondition desc = node {id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
                        ),
                    );
                }
                if !force && node.state != NodeState::Down {
                    return refused(
                        400,
                        format!(
                            "rpc error: code = FailedPrecondition desc = node {id} is not down and can't be removed"
                        ),
                    );
                }
                self.nodes.remove(&id);
            }
            Command::UpdateSwarm {
                version,
                spec,
                worker_secret,
                manager_secret,
                unlock_key,
                now,
            } => {
                let Some(cluster) = self.cluster.as_mut() else {
                    return refused(503, "the cluster does not exist");
                };
                if version.is_some_and(|v| v != cluster.version) {
                    return refused(500, OUT_OF_SEQUENCE);
                }
                cluster.spec = (*spec).with_defaults();
                if let Some(secret) = worker_secret {
                    cluster.worker_secret = secret;
                }
                if let Some(secret) = manager_secret {
                    cluster.manager_secret = secret;
                }
                if !cluster.spec.encryption_config.auto_lock_managers {
                    cluster.unlock_key = None;
                } else if unlock_key.is_some() {
                    cluster.unlock_key = unlock_key;
                }
                cluster.version = index;
                cluster.updated_at = now;
            }
        }
        CommandResult::Ok
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, host: &str, role: Role) -> Node {
        Node {
            id: id.into(),
            created_at: now_rfc3339(),
            updated_at: now_rfc3339(),
            version: 0,
            spec: NodeSpec {
                role,
                ..NodeSpec::default()
            },
            description: NodeDescription {
                hostname: host.into(),
                ..NodeDescription::default()
            },
            state: NodeState::Ready,
            addr: "10.0.0.1".into(),
            manager_addr: None,
            raft_id: 1,
        }
    }

    #[test]
    fn nodes_resolve_by_id_prefix_and_hostname() {
        let mut state = ClusterState::default();
        state.apply(
            1,
            Command::AddNode {
                node: Box::new(node("abc1", "h1", Role::Manager)),
            },
        );
        state.apply(
            2,
            Command::AddNode {
                node: Box::new(node("abd2", "h2", Role::Worker)),
            },
        );
        assert_eq!(state.find_node("abc1").unwrap().id, "abc1");
        assert_eq!(state.find_node("abd").unwrap().id, "abd2");
        assert_eq!(state.find_node("h1").unwrap().id, "abc1");
        assert_eq!(state.find_node("ab").unwrap_err().0, 404);
        assert_eq!(state.find_node("zz").unwrap_err().1, "node zz not found");
    }

    #[test]
    fn the_last_manager_cannot_be_demoted_and_live_nodes_need_force() {
        let mut state = ClusterState::default();
        state.apply(
            1,
            Command::AddNode {
                node: Box::new(node("m", "h1", Role::Manager)),
            },
        );
        state.apply(
            2,
            Command::AddNode {
                node: Box::new(node("w", "h2", Role::Worker)),
            },
        );
        let demote = Command::UpdateNode {
            id: "m".into(),
            version: None,
            spec: NodeSpec::default(),
            now: now_rfc3339(),
        };
        assert!(matches!(
            state.apply(3, demote),
            CommandResult::Refused { status: 400, .. }
        ));
        let stale = Command::UpdateNode {
            id: "w".into(),
            version: Some(1),
            spec: NodeSpec::default(),
            now: now_rfc3339(),
        };
        assert_eq!(state.apply(4, stale), refused(500, OUT_OF_SEQUENCE));
        let rm = |force| Command::RemoveNode {
            id: "w".into(),
            force,
            now: now_rfc3339(),
        };
        assert!(matches!(
            state.apply(5, rm(false)),
            CommandResult::Refused { status: 400, .. }
        ));
        assert_eq!(state.apply(6, rm(true)), CommandResult::Ok);
        assert!(!state.nodes.contains_key("w"));
    }

    #[test]
    fn specs_get_dockers_defaults() {
        let spec: SwarmSpec = serde_json::from_str(
            r#"{"Labels":null,"Orchestration":{},"Raft":{"ElectionTick":0,"HeartbeatTick":0},"Dispatcher":{},"CAConfig":{},"TaskDefaults":{},"EncryptionConfig":{"AutoLockManagers":false}}"#,
        )
        .unwrap();
        let spec = spec.with_defaults();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["Dispatcher"]["HeartbeatPeriod"], 5_000_000_000i64);
        assert_eq!(json["CAConfig"]["NodeCertExpiry"], 7_776_000_000_000_000i64);
        assert_eq!(json["Raft"]["ElectionTick"], 10);
        assert_eq!(json["Orchestration"]["TaskHistoryRetentionLimit"], 5);
        assert_eq!(json["Name"], "default");
        assert!(spec.validate(Duration::from_secs(3600)).is_ok());
        let mut huge = spec.clone();
        huge.raft.election_tick = i64::MAX;
        assert!(huge.validate(Duration::from_secs(3600)).is_err());
        let mut short = spec;
        short.ca_config.node_cert_expiry = Some(60_000_000_000);
        assert_eq!(
            short.validate(Duration::from_secs(3600)).unwrap_err(),
            "minimum certificate expiry time is 1h"
        );
    }
}
