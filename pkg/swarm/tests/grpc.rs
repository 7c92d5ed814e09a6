//! Port 2377 as a hostile client sees it: gRPC over TLS to a real manager (in its network
//! namespace) from this process, with no certificate, a worker's certificate, a certificate of
//! another CA, bad tokens and a garbage CSR. Each is refused; the manager goes on.

mod common;

use std::time::Duration;

use common::Cluster;
use slipway_swarm::pki::{self, Credentials, NodeSubject, RootCa};
use slipway_swarm::proto::control_client::ControlClient;
use slipway_swarm::proto::node_ca_client::NodeCaClient;
use slipway_swarm::proto::raft_client::RaftClient;
use slipway_swarm::proto::{self, RaftMessage};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn port_2377_refuses_callers_without_the_right_certificate() {
    let cluster = Cluster::new(1);
    cluster.reach_from_host();
    cluster.init();
    let h1 = cluster.node("h1");
    let swarm = h1.api("GET", "/v1.41/swarm", "").json();
    let ca_der = pki::pem_to_der(swarm["TLSInfo"]["TrustRoot"].as_str().unwrap()).unwrap();
    let worker_token = swarm["JoinTokens"]["Worker"].as_str().unwrap().to_string();
    let addr = h1.addr();
    let timeout = Duration::from_secs(5);
    let anonymous =
        slipway_swarm::net::channel(&addr, pki::client_config(&ca_der, None).unwrap(), timeout)
            .unwrap();

    // Without a certificate: only the CA's join calls answer.
    let vote = RaftClient::new(anonymous.clone())
        .vote(RaftMessage {
            payload: b"{}".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(vote.code(), Code::Unauthenticated, "{vote:?}");
    let propose = ControlClient::new(anonymous.clone())
        .propose(proto::ProposeRequest {
            command: b"{\"Restore\":{}}".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(propose.code(), Code::Unauthenticated, "{propose:?}");
    let heartbeat = ControlClient::new(anonymous.clone())
        .heartbeat(proto::HeartbeatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(heartbeat.code(), Code::Unauthenticated);
    let ca = NodeCaClient::new(anonymous.clone())
        .get_root_ca_certificate(proto::GetRootCaCertificateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ca.certificate, ca_der);

    // Bad tokens and a garbage CSR.
    let (key, csr) = pki::new_key_and_csr().unwrap();
    let issue = |token: &str, csr: Vec<u8>| proto::IssueNodeCertificateRequest {
        token: token.to_string(),
        csr,
        ..Default::default()
    };
    let mut client = NodeCaClient::new(anonymous.clone());
    for token in [
        "",
        "foobaz",
        &worker_token.replace(&worker_token[worker_token.len() - 5..], "00000"),
    ] {
        let refused = client
            .issue_node_certificate(issue(token, csr.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{token}: {refused:?}"
        );
        assert!(
            refused
                .message()
                .contains("A valid join token is necessary"),
            "{refused:?}"
        );
    }
    let garbage = client
        .issue_node_certificate(issue(&worker_token, b"\x30\x82garbage".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");

    // A worker's certificate: heartbeats yes, Raft and writes no.
    let issued = client
        .issue_node_certificate(issue(&worker_token, csr))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.role, "worker");
    let worker = Credentials::new(&issued.certificate, &key).unwrap();
    let as_worker = slipway_swarm::net::channel(
        &addr,
        pki::client_config(&ca_der, Some(worker)).unwrap(),
        timeout,
    )
    .unwrap();
    ControlClient::new(as_worker.clone())
        .heartbeat(proto::HeartbeatRequest::default())
        .await
        .expect("a worker may heartbeat");
    let vote = RaftClient::new(as_worker.clone())
        .vote(RaftMessage {
            payload: b"{}".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(vote.code(), Code::PermissionDenied, "{vote:?}");
    let propose = ControlClient::new(as_worker)
        .propose(proto::ProposeRequest {
            command: b"{}".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(propose.code(), Code::PermissionDenied, "{propose:?}");

    // A "manager" certificate of another CA never gets past the TLS handshake.
    let other = RootCa::generate().unwrap();
    let (key, csr) = pki::new_key_and_csr().unwrap();
    let subject = NodeSubject {
        node_id: "intruder".into(),
        ou: pki::MANAGER_OU.into(),
        cluster_id: swarm["ID"].as_str().unwrap().into(),
    };
    let forged = other
        .sign_csr(&csr, &subject, Duration::from_secs(3600))
        .unwrap();
    let forged = Credentials::new(&forged, &key).unwrap();
    let as_intruder = slipway_swarm::net::channel(
        &addr,
        pki::client_config(&ca_der, Some(forged)).unwrap(),
        timeout,
    )
    .unwrap();
    let refused = RaftClient::new(as_intruder)
        .vote(RaftMessage {
            payload: b"{}".to_vec(),
        })
        .await
        .unwrap_err();
    assert_ne!(refused.code(), Code::Ok);
    // (The manager logs the refusal after the client has seen it.)
    common::wait_for(
        Duration::from_secs(5),
        "the refusal in the manager's log",
        || {
            h1.log_text()
                .contains("refused a connection from")
                .then_some(())
        },
    );

    // The manager is fine.
    let nodes = h1.node_ls().unwrap();
    assert_eq!(
        nodes.len(),
        2,
        "h1 and the worker this test registered: {nodes:?}"
    );
}
