//! Raft among managers: openraft's types for this cluster, its network over our gRPC service
//! `Raft`, and the timings (SwarmKit's tick of 1 s, ElectionTick 10, HeartbeatTick 1 by default,
//! scaled by `--raft-tick` in tests).

// openraft's trait methods return its own (large) error types; there is no other way to spell them.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, SnapshotPolicy};
use rustls::ClientConfig;
use serde::{Serialize, de::DeserializeOwned};

use crate::net;
use crate::proto::RaftMessage;
use crate::proto::raft_client::RaftClient;
use crate::state::{Command, CommandResult, RaftSpec};

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// openraft's configuration from the tick length and the cluster's Raft spec (tick counts, the
/// snapshot interval, the log entries kept behind a snapshot for slow followers).
pub fn config(tick: Duration, spec: &RaftSpec) -> Result<Arc<Config>, openraft::ConfigError> {
    let tick_ms = tick.as_millis().max(10) as u64;
    let election_tick = (spec.election_tick.max(2)) as u64;
    let heartbeat_interval = tick_ms.saturating_mul(spec.heartbeat_tick.max(1) as u64);
    // openraft 0.9 waits out a leader lease of `election_timeout_max` (no vote is granted before
    // it) plus the node's own timeout from [min, max) before it stands: max = ElectionTick ticks
    // and min = half that make an election start 1.5-2 × ElectionTick ticks after the leader's
    // last heartbeat (etcd, SwarmKit's Raft: 1-2 ×), where max = 2 × min took 3-4 × (leader
    // killed to the next write: 7.5-10 s at the default tick, against Docker's 10-20 s).
    let election_max = tick_ms.saturating_mul(election_tick);
    let config = Config {
        cluster_name: "swarm".into(),
        heartbeat_interval,
        election_timeout_min: (election_max / 2).max(heartbeat_interval + 1),
        election_timeout_max: election_max.max(heartbeat_interval + 2),
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(
            spec.snapshot_interval.unwrap_or(10_000).max(1),
        ),
        // Each chunk travels as JSON inside one gRPC message.
        snapshot_max_chunk_size: 1024 * 1024,
        max_in_snapshot_log_to_keep: spec.log_entries_for_slow_followers.unwrap_or(500),
        // openraft gives an AppendEntries one heartbeat interval (a tick): a few entries per
        // call (the orchestrator's hold up to 500 task operations, ~300 KB), and a call that
        // misses the deadline goes on in the background ([`Peer`]).
        max_payload_entries: 4,
        ..Config::default()
    };
    Ok(Arc::new(config.validate()?))
}

pub fn encode<T: Serialize>(value: &T) -> RaftMessage {
    RaftMessage {
        payload: serde_json::to_vec(value).unwrap_or_default(),
    }
}

pub fn decode<T: DeserializeOwned>(message: &RaftMessage) -> Result<T, tonic::Status> {
    serde_json::from_slice(&message.payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("bad Raft message: {e}")))
}

/// Dials the other managers with this manager's certificate.
pub struct Network {
    pub tls: Arc<ClientConfig>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            target,
            client: net::channel(&node.addr, self.tls.clone(), Duration::from_secs(10))
                .ok()
                .map(|c| RaftClient::new(c).max_decoding_message_size(net::MAX_MESSAGE)),
            flight: None,
        }
    }
}

/// What identifies an AppendEntries: the leader's vote, the entry before and the last entry.
type FlightKey = (
    openraft::Vote<u64>,
    Option<openraft::LogId<u64>>,
    Option<openraft::LogId<u64>>,
    usize,
);

/// The AppendEntries on its way to this peer.
struct Flight {
    key: FlightKey,
    call: tokio::task::JoinHandle<Result<tonic::Response<RaftMessage>, tonic::Status>>,
}

pub struct Peer {
    target: u64,
    client: Option<RaftClient<tonic::transport::Channel>>,
    /// openraft gives an AppendEntries one heartbeat interval and then sends it again. Under CPU
    /// pressure (a loaded follower decoding and syncing a batch of thousands of tasks) every
    /// attempt missed that deadline, was cancelled on the wire and sent again from scratch: the
    /// follower never got the entries, nor a heartbeat, and stood for election. So the call runs
    /// on as its own task when openraft stops waiting; one at a time per peer, and an identical
    /// retry takes its answer instead of sending the entries again.
    flight: Option<Flight>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(flight) = self.flight.take() {
            flight.call.abort();
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, E>>;

impl Peer {
    fn client<E: std::error::Error>(&self) -> RpcResult<RaftClient<tonic::transport::Channel>, E> {
        self.client.clone().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                "bad manager address",
            )))
        })
    }

    fn answer<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        response: Result<tonic::Response<RaftMessage>, tonic::Status>,
    ) -> RpcResult<T, E> {
        let message = match response {
            Ok(message) => message.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Err(status) => return Err(RPCError::Network(NetworkError::new(&status))),
        };
        let result: Result<T, E> =
            decode(&message).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// How long a detached AppendEntries may travel before the transport gives it up.
const FLIGHT_TIMEOUT: Duration = Duration::from_secs(30);

fn busy<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "the previous AppendEntries is still on its way",
    )))
}

fn with_ttl<T>(message: T, option: &RPCOption) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(option.hard_ttl());
    request
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, RaftError<u64>> {
        let key: FlightKey = (
            rpc.vote,
            rpc.prev_log_id,
            rpc.entries.last().map(|e| e.log_id),
            rpc.entries.len(),
        );
        let ttl = option.hard_ttl();
        // openraft drops this future after `ttl`; stop a little before with our own answer.
        let wait = ttl.mul_f32(0.9);
        if let Some(flight) = self.flight.as_mut()
            && flight.key != key
        {
            // Another request is still travelling: let it land before sending this one.
            if tokio::time::timeout(wait, &mut flight.call).await.is_err() {
                return Err(busy());
            }
            self.flight = None;
        }
        if self.flight.is_none() {
            let mut client = self.client()?;
            // Its own deadline: generous, as it is no longer openraft's.
            let message = encode(&rpc);
            let call = tokio::spawn(async move {
                let mut request = tonic::Request::new(message);
                request.set_timeout(FLIGHT_TIMEOUT);
                client.append_entries(request).await
            });
            self.flight = Some(Flight { key, call });
        }
        let flight = self.flight.as_mut().expect("set above");
        match tokio::time::timeout(wait, &mut flight.call).await {
            Err(_) => Err(busy()),
            Ok(joined) => {
                self.flight = None;
                let response =
                    joined.unwrap_or_else(|e| Err(tonic::Status::unavailable(e.to_string())));
                self.answer(response)
            }
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        let response = self
            .client()?
            .install_snapshot(with_ttl(encode(&rpc), &option))
            .await;
        self.answer(response)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, RaftError<u64>> {
        let response = self.client()?.vote(with_ttl(encode(&rpc), &option)).await;
        self.answer(response)
    }
}
