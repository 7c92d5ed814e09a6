#![recursion_limit = "256"]
//! Slipway's swarm agent: the cluster part of Docker's swarm mode (a built-in CA, join tokens,
//! mutual TLS between nodes, Raft among managers, nodes and their heartbeats), driven through the
//! Docker Engine API on a unix socket so Docker's own CLI works against it.
//!
//! ```text
//! api (Docker Engine API, unix socket) ─┐
//! cli (the client verbs) ───────────────┴─► daemon (membership, operations, loops)
//!                                              ├─ pki (root CA, node certs, rustls configs)
//!                                              ├─ autolock (the unlock key sealing node keys)
//!                                              ├─ raft + store (openraft on redb, sealed at rest)
//!                                              ├─ state (the replicated cluster state)
//!                                              ├─ net + service (gRPC over mutual TLS, :2377)
//!                                              ├─ objects (services, tasks, secrets, configs)
//!                                              ├─ orchestrator (the leader's loop + scheduler)
//!                                              ├─ dispatcher (assignments out, statuses in)
//!                                              └─ agent_tasks → executor (every node's tasks)
//! simulate (many fake-executor nodes in one process, for scale runs)
//! ```

pub mod agent_tasks;
pub mod api;
pub mod autolock;
pub mod cli;
pub mod cli_services;
pub mod daemon;
pub mod dispatcher;
pub mod docker;
pub mod executor;
pub mod ids;
pub mod logs;
pub mod model;
pub mod net;
pub mod node_api;
pub mod objects;
pub mod orchestrator;
pub mod pki;
pub mod raft;
pub mod service;
pub mod services_api;
pub mod settings;
pub mod shared;
pub mod simulate;
pub mod state;
pub mod store;

#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("slipway.swarm.v1");
}
