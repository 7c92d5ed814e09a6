//! The transport between nodes: gRPC (tonic's generated services and clients) carried by HTTP/2
//! over our own mutual-TLS connections on port 2377. A manager accepts every connection, finishes
//! the TLS handshake within a deadline (anything else, garbage included, is logged and dropped),
//! reads who the peer is from its certificate (CN = node ID, OU = role, O = cluster) and hands
//! that identity to the services with each request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};
use tower::ServiceExt;

use crate::pki;
use crate::state::Role;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_MESSAGE: usize = 32 * 1024 * 1024;

/// Who is calling, as its certificate says; `None` when it showed no certificate (a joining node).
#[derive(Debug, Clone)]
pub struct Peer(pub Option<PeerIdentity>);

#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
}

/// Checks a request comes from a node of this cluster with (at least) the given role.
pub fn require<T>(
    request: &tonic::Request<T>,
    role: Option<Role>,
) -> Result<PeerIdentity, tonic::Status> {
    let peer = request
        .extensions()
        .get::<Peer>()
        .and_then(|p| p.0.clone())
        .ok_or_else(|| tonic::Status::unauthenticated("a certificate of this swarm is required"))?;
    if let Some(role) = role
        && peer.role != role
    {
        return Err(tonic::Status::permission_denied(format!(
            "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = Permission denied: remote certificate not part of organizational unit {}",
            role.ou()
        )));
    }
    Ok(peer)
}

pub type GrpcResponse = http::Response<tonic::body::Body>;

/// Routes a request to the service its path names.
pub trait Router: Clone + Send + Sync + 'static {
    fn route(&self, request: http::Request<Incoming>) -> impl Future<Output = GrpcResponse> + Send;
}

/// Serves gRPC on `listener` until the task is aborted.
pub async fn serve<R: Router>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    cluster_id: String,
    router: R,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accepting a node connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let cluster_id = cluster_id.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!("refused a connection from {remote}: TLS: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!(
                        "refused a connection from {remote}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"
                    );
                    return;
                }
            };
            let peer = match identity(&tls, &cluster_id) {
                Ok(peer) => peer,
                Err(e) => {
                    tracing::info!("refused a connection from {remote}: {e}");
                    return;
                }
            };
            let service =
                hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
                    request.extensions_mut().insert(peer.clone());
                    request.extensions_mut().insert(remote);
                    let router = router.clone();
                    async move { Ok::<_, Infallible>(router.route(request).await) }
                });
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(10)))
                .keep_alive_timeout(Duration::from_secs(20));
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!("connection from {remote} ended: {e}");
            }
        });
    }
}

fn identity(
    tls: &tokio_rustls::server::TlsStream<TcpStream>,
    cluster_id: &str,
) -> Result<Peer, String> {
    let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        return Ok(Peer(None));
    };
    let info = pki::cert_info(cert).map_err(|e| e.to_string())?;
    if info.subject.cluster_id != cluster_id {
        return Err(format!(
            "its certificate is for cluster {:?}, not this one",
            info.subject.cluster_id
        ));
    }
    let role = Role::from_ou(&info.subject.ou)
        .ok_or_else(|| format!("unknown role {:?} in its certificate", info.subject.ou))?;
    Ok(Peer(Some(PeerIdentity {
        node_id: info.subject.node_id,
        role,
        cluster_id: info.subject.cluster_id,
    })))
}

/// The remote address a request came from.
pub fn remote_addr<T>(request: &tonic::Request<T>) -> Option<SocketAddr> {
    request.extensions().get::<SocketAddr>().copied()
}

/// A lazily connected gRPC channel to a manager at `addr` (host:port) over TLS with `tls`.
pub fn channel(
    addr: &str,
    tls: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let target = addr.to_string();
    let connector = tower::service_fn(move |_: Uri| {
        let tls = tls.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(&target))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connecting to {target}"),
                    )
                })??;
            let _ = tcp.set_nodelay(true);
            let tls = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio_rustls::TlsConnector::from(tls).connect(pki::manager_server_name(), tcp),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("TLS handshake with {target}"),
                )
            })??;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect_with_connector_lazy(connector))
}

/// Sends `request` to the generated service `svc` and waits for its answer.
pub async fn call<S>(svc: S, request: http::Request<Incoming>) -> GrpcResponse
where
    S: tower::Service<http::Request<Incoming>, Response = GrpcResponse, Error = Infallible> + Send,
    S::Future: Send,
{
    match svc.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

pub fn unimplemented() -> GrpcResponse {
    tonic::Status::unimplemented("no such service").into_http()
}

/// What a node learns from a manager by opening a connection to it with its own credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Both sides accepted each other's certificate.
    Trusted,
    /// One side refused the other's certificate: they belong to different swarms (CAs).
    Refused(String),
    /// No answer, or an answer that says nothing about trust.
    Unreachable,
}

/// Opens a mutual-TLS connection to `addr` and reads the first bytes: a manager that accepted
/// this node's certificate speaks first (HTTP/2's SETTINGS); one that refused it sends an alert.
/// TLS 1.3 finishes the client's side of the handshake before the server has checked the client's
/// certificate, hence the read.
pub async fn probe(addr: &str, tls: Arc<ClientConfig>) -> Probe {
    use tokio::io::AsyncReadExt;
    let Ok(Ok(tcp)) = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await
    else {
        return Probe::Unreachable;
    };
    let connector = tokio_rustls::TlsConnector::from(tls);
    let mut stream = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        connector.connect(pki::manager_server_name(), tcp),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return classify(&e),
        Err(_) => return Probe::Unreachable,
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => Probe::Trusted,
        Ok(Err(e)) => classify(&e),
        _ => Probe::Unreachable,
    }
}

fn classify(e: &std::io::Error) -> Probe {
    use rustls::AlertDescription as A;
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        // Only "signed by another CA" counts; an expired or otherwise odd certificate says
        // nothing about which swarm the peer belongs to.
        Some(
            tls @ rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
            ),
        ) => Probe::Refused(format!(
            "its certificate is not signed by this node's CA ({tls})"
        )),
        Some(tls @ rustls::Error::AlertReceived(A::UnknownCA | A::DecryptError)) => {
            Probe::Refused(format!("it refused this node's certificate ({tls})"))
        }
        _ => Probe::Unreachable,
    }
}
