//! The gRPC services a manager offers other nodes: the CA (join and renewal), Raft's messages and
//! the control calls (forwarded writes, Raft membership, heartbeats). Each checks the caller's
//! certificate role before doing anything.

use crate::daemon::Daemon;
use crate::net::{self, GrpcResponse, Router};
use crate::proto::{self, control_server, node_ca_server, raft_server};
use crate::raft::{decode, encode};
use crate::state::{Command, Role};
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct Services {
    ca: node_ca_server::NodeCaServer<Handler>,
    raft: raft_server::RaftServer<Handler>,
    control: control_server::ControlServer<Handler>,
}

impl Services {
    pub fn new(daemon: Daemon) -> Services {
        let handler = Handler { daemon };
        Services {
            ca: node_ca_server::NodeCaServer::new(handler.clone())
                .max_decoding_message_size(net::MAX_MESSAGE),
            raft: raft_server::RaftServer::new(handler.clone())
                .max_decoding_message_size(net::MAX_MESSAGE),
            control: control_server::ControlServer::new(handler)
                .max_decoding_message_size(net::MAX_MESSAGE),
        }
    }
}

impl Router for Services {
    async fn route(&self, request: http::Request<hyper::body::Incoming>) -> GrpcResponse {
        let path = request.uri().path();
        if path.starts_with("/slipway.swarm.v1.NodeCA/") {
            net::call(self.ca.clone(), request).await
        } else if path.starts_with("/slipway.swarm.v1.Raft/") {
            net::call(self.raft.clone(), request).await
        } else if path.starts_with("/slipway.swarm.v1.Control/") {
            net::call(self.control.clone(), request).await
        } else {
            net::unimplemented()
        }
    }
}

#[derive(Clone)]
pub struct Handler {
    daemon: Daemon,
}

impl Handler {
    fn raft(&self) -> Result<crate::raft::Raft, Status> {
        self.daemon
            .session()
            .and_then(|s| s.manager())
            .map(|m| m.raft.clone())
            .ok_or_else(|| Status::unavailable("this node is not a Raft member"))
    }

    /// Raft for a vote request from a manager of this Raft cluster. A manager that was removed
    /// (a demotion it missed, or `--force-new-cluster` while it was away) cannot call elections
    /// that would disturb the cluster; it learns its new role from its heartbeats. Its other
    /// messages are answered: the answers carry the newer term that makes a removed leader step
    /// down. A node not yet initialized (a manager joining) takes votes from anyone of the swarm.
    fn raft_for<T>(&self, request: &Request<T>) -> Result<crate::raft::Raft, Status> {
        let peer = net::require(request, Some(Role::Manager))?;
        let raft = self.raft()?;
        let membership = raft.metrics().borrow().membership_config.clone();
        let sender = crate::ids::raft_id(&peer.node_id);
        let members = membership.membership();
        if members.nodes().next().is_some() && members.get_node(&sender).is_none() {
            return Err(Status::permission_denied(format!(
                "node {} is not a member of this Raft cluster",
                peer.node_id
            )));
        }
        Ok(raft)
    }
}

#[tonic::async_trait]
impl node_ca_server::NodeCa for Handler {
    async fn get_root_ca_certificate(
        &self,
        _request: Request<proto::GetRootCaCertificateRequest>,
    ) -> Result<Response<proto::GetRootCaCertificateResponse>, Status> {
        let session = self
            .daemon
            .session()
            .ok_or_else(|| Status::unavailable("not part of a swarm"))?;
        Ok(Response::new(proto::GetRootCaCertificateResponse {
            certificate: session.ca_der.clone(),
        }))
    }

    async fn issue_node_certificate(
        &self,
        request: Request<proto::IssueNodeCertificateRequest>,
    ) -> Result<Response<proto::IssueNodeCertificateResponse>, Status> {
        let from = net::remote_addr(&request);
        Ok(Response::new(
            self.daemon.issue(request.into_inner(), from).await?,
        ))
    }

    async fn renew_node_certificate(
        &self,
        request: Request<proto::RenewNodeCertificateRequest>,
    ) -> Result<Response<proto::IssueNodeCertificateResponse>, Status> {
        let peer = net::require(&request, None)?;
        Ok(Response::new(
            self.daemon.renew(&peer.node_id, &request.get_ref().csr)?,
        ))
    }
}

#[tonic::async_trait]
impl raft_server::Raft for Handler {
    async fn append_entries(
        &self,
        request: Request<proto::RaftMessage>,
    ) -> Result<Response<proto::RaftMessage>, Status> {
        net::require(&request, Some(Role::Manager))?;
        let raft = self.raft()?;
        let rpc = decode(request.get_ref())?;
        let result = raft.append_entries(rpc).await;
        Ok(Response::new(encode(&result)))
    }

    async fn vote(
        &self,
        request: Request<proto::RaftMessage>,
    ) -> Result<Response<proto::RaftMessage>, Status> {
        let raft = self.raft_for(&request)?;
        let rpc = decode(request.get_ref())?;
        let result = raft.vote(rpc).await;
        Ok(Response::new(encode(&result)))
    }

    async fn install_snapshot(
        &self,
        request: Request<proto::RaftMessage>,
    ) -> Result<Response<proto::RaftMessage>, Status> {
        net::require(&request, Some(Role::Manager))?;
        let raft = self.raft()?;
        let rpc = decode(request.get_ref())?;
        let result = raft.install_snapshot(rpc).await;
        Ok(Response::new(encode(&result)))
    }
}

#[tonic::async_trait]
impl control_server::Control for Handler {
    async fn propose(
        &self,
        request: Request<proto::ProposeRequest>,
    ) -> Result<Response<proto::ProposeResponse>, Status> {
        net::require(&request, Some(Role::Manager))?;
        let command: Command = serde_json::from_slice(&request.get_ref().command)
            .map_err(|e| Status::invalid_argument(format!("bad command: {e}")))?;
        let result = self.daemon.propose(command).await.map_err(|e| {
            if e.status == 503 {
                Status::unavailable(e.message)
            } else {
                Status::internal(e.message)
            }
        })?;
        Ok(Response::new(proto::ProposeResponse {
            result: serde_json::to_vec(&result).unwrap_or_default(),
        }))
    }

    async fn join_raft(
        &self,
        request: Request<proto::JoinRaftRequest>,
    ) -> Result<Response<proto::JoinRaftResponse>, Status> {
        let peer = net::require(&request, Some(Role::Manager))?;
        let join = request.into_inner();
        self.daemon
            .add_raft_member(&peer.node_id, join.raft_id, join.addr)
            .await?;
        Ok(Response::new(proto::JoinRaftResponse {}))
    }

    type SessionStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::SessionMessage, Status>>;

    async fn session(
        &self,
        request: Request<proto::SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = net::require(&request, None)?;
        Ok(Response::new(self.daemon.open_session(&peer.node_id)?))
    }

    type AssignmentsStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::AssignmentsMessage, Status>>;

    async fn assignments(
        &self,
        request: Request<proto::AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let peer = net::require(&request, None)?;
        Ok(Response::new(crate::dispatcher::open_assignments(
            &self.daemon,
            &peer.node_id,
            crate::dispatcher::StreamKind {
                keeps_own_statuses: request.get_ref().keeps_own_statuses,
                incremental: request.get_ref().incremental,
            },
        )?))
    }

    async fn update_task_status(
        &self,
        request: Request<proto::UpdateTaskStatusRequest>,
    ) -> Result<Response<proto::UpdateTaskStatusResponse>, Status> {
        let peer = net::require(&request, None)?;
        crate::dispatcher::update_statuses(
            &self.daemon,
            &peer.node_id,
            &request.get_ref().statuses,
        )
        .await?;
        Ok(Response::new(proto::UpdateTaskStatusResponse {}))
    }

    type PublishLogsStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::LogsMessage, Status>>;

    async fn publish_logs(
        &self,
        request: Request<tonic::Streaming<proto::LogsMessage>>,
    ) -> Result<Response<Self::PublishLogsStream>, Status> {
        let peer = net::require(&request, None)?;
        Ok(Response::new(crate::logs::publish(
            peer.node_id,
            request.into_inner(),
        )))
    }

    type SubscribeLogsStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::LogsMessage, Status>>;

    async fn subscribe_logs(
        &self,
        request: Request<proto::LogsMessage>,
    ) -> Result<Response<Self::SubscribeLogsStream>, Status> {
        net::require(&request, Some(Role::Manager))?;
        Ok(Response::new(crate::logs::serve_subscription(
            &self.daemon,
            &request.get_ref().payload,
        )?))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let peer = net::require(&request, None)?;
        let from = net::remote_addr(&request);
        Ok(Response::new(
            self.daemon
                .heartbeat(&peer.node_id, from, request.into_inner())
                .await?,
        ))
    }
}
