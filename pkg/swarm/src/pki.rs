//! The cluster's public-key infrastructure, as SwarmKit builds it: a root CA made at `init`
//! (ECDSA P-256, CN `swarm-ca`, 20 years), node certificates signed from a CSR (CN = node ID,
//! OU = `swarm-manager` or `swarm-worker`, O = cluster ID, backdated one hour for clock skew) and
//! the rustls configurations of the mutual TLS between nodes, with the node's certificate
//! swappable in place when it is renewed.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

pub const MANAGER_OU: &str = "swarm-manager";
pub const WORKER_OU: &str = "swarm-worker";
/// The name a node checks in a manager's certificate (a DNS SAN of every manager certificate).
pub const MANAGER_SERVER_NAME: &str = "swarm-manager";
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
pub const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("bad certificate: {0}")]
    Parse(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root CA: its certificate and its key, both PEM.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct RootCa {
    pub cert_pem: String,
    pub key_pem: String,
}

// The key never reaches a log line.
impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootCa { .. }")
    }
}

impl RootCa {
    pub fn generate() -> Result<RootCa, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "swarm-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        let cert = params.self_signed(&key)?;
        Ok(RootCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn cert_der(&self) -> Result<Vec<u8>, PkiError> {
        pem_to_der(&self.cert_pem)
    }

    /// Signs a node certificate for the public key of `csr_der` (the CSR's own subject is ignored:
    /// the CA alone decides who the node is).
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        subject: &NodeSubject,
        validity: Duration,
    ) -> Result<Vec<u8>, PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())?;
        let signed = CertificateSigningRequestParams {
            params: node_params(subject, validity)?,
            public_key: csr.public_key,
        };
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, KeyPair::from_pem(&self.key_pem)?)?;
        Ok(signed.signed_by(&issuer)?.der().to_vec())
    }
}

/// Who a certificate says a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSubject {
    pub node_id: String,
    /// `swarm-manager` or `swarm-worker`
    pub ou: String,
    pub cluster_id: String,
}

fn node_params(subject: &NodeSubject, validity: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, subject.node_id.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, subject.ou.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationName, subject.cluster_id.as_str());
    params.subject_alt_names = vec![
        SanType::DnsName(subject.ou.as_str().try_into()?),
        SanType::DnsName(subject.node_id.as_str().try_into()?),
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
    Ok(params)
}

/// A new node key (PKCS#8 DER) and a CSR for it (DER).
pub fn new_key_and_csr() -> Result<(Vec<u8>, Vec<u8>), PkiError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key.serialize_der(), csr.der().to_vec()))
}

pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| PkiError::Parse(format!("PEM: {e:?}")))
}

pub fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// What a certificate says: its subject and when it expires.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: NodeSubject,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

pub fn cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let subject = cert.subject();
    let first = |attrs: Vec<&AttributeTypeAndValue>| {
        attrs
            .first()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
            .unwrap_or_default()
    };
    let time =
        |t: ASN1Time| SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
    Ok(CertInfo {
        subject: NodeSubject {
            node_id: first(subject.iter_common_name().collect()),
            ou: first(subject.iter_organizational_unit().collect()),
            cluster_id: first(subject.iter_organization().collect()),
        },
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

/// Docker's `TLSInfo.CertIssuerSubject` and `CertIssuerPublicKey`: the CA's raw subject and
/// public key info, base64.
pub fn issuer_fields(ca_der: &[u8]) -> (String, String) {
    use x509_parser::prelude::*;
    match X509Certificate::from_der(ca_der) {
        Ok((_, cert)) => {
            let b64 = base64::engine::general_purpose::STANDARD;
            (
                b64.encode(cert.subject().as_raw()),
                b64.encode(cert.public_key().raw),
            )
        }
        Err(_) => (String::new(), String::new()),
    }
}

/// The node's certificate and key, replaced in place when renewed; rustls asks it for them on
/// every handshake, as a server and as a client.
#[derive(Debug)]
pub struct Credentials {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Credentials {
    pub fn new(cert_der: &[u8], key_der: &[u8]) -> Result<Arc<Credentials>, PkiError> {
        Ok(Arc::new(Credentials {
            current: RwLock::new(certified(cert_der, key_der)?),
        }))
    }

    pub fn replace(&self, cert_der: &[u8], key_der: &[u8]) -> Result<(), PkiError> {
        let new = certified(cert_der, key_der)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn certified(cert_der: &[u8], key_der: &[u8]) -> Result<Arc<CertifiedKey>, PkiError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    let signing = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert_der.to_vec())],
        signing,
    )))
}

impl rustls::server::ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for Credentials {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    Ok(Arc::new(roots))
}

/// A manager's listener: its certificate; clients with a certificate of this CA, or (only for
/// the CA's join calls) none.
pub fn server_config(
    ca_der: &[u8],
    credentials: Arc<Credentials>,
) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider())
        .allow_unauthenticated()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(credentials);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A node dialling a manager: the manager must have a manager certificate of this CA; the node
/// presents its own certificate when it has one.
pub fn client_config(
    ca_der: &[u8],
    credentials: Option<Arc<Credentials>>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_der)?);
    let mut config = match credentials {
        Some(credentials) => builder.with_client_cert_resolver(credentials),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A joining node's first call: it cannot check the manager's certificate yet (it has no CA), so
/// it trusts nothing it receives on this connection except the CA certificate whose digest
/// matches its join token.
pub fn bootstrap_client_config() -> Result<Arc<ClientConfig>, PkiError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

pub fn manager_server_name() -> ServerName<'static> {
    ServerName::try_from(MANAGER_SERVER_NAME)
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// Accepts any server certificate, but still checks that the server holds its key.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_carry_role_and_cluster_and_are_backdated() {
        let ca = RootCa::generate().unwrap();
        let (_key, csr) = new_key_and_csr().unwrap();
        let subject = NodeSubject {
            node_id: "abc123".into(),
            ou: MANAGER_OU.into(),
            cluster_id: "cluster9".into(),
        };
        let der = ca
            .sign_csr(&csr, &subject, Duration::from_secs(7200))
            .unwrap();
        let info = cert_info(&der).unwrap();
        assert_eq!(info.subject, subject);
        let now = SystemTime::now();
        assert!(info.not_before < now - Duration::from_secs(3500));
        let life = info.not_after.duration_since(now).unwrap();
        assert!(life > Duration::from_secs(7100) && life <= Duration::from_secs(7200));
        let ca_info = cert_info(&ca.cert_der().unwrap()).unwrap();
        assert_eq!(ca_info.subject.node_id, "swarm-ca");
        assert!(
            ca_info.not_after.duration_since(now).unwrap()
                > Duration::from_secs(19 * 365 * 24 * 3600)
        );
    }

    #[test]
    fn a_garbage_csr_is_refused() {
        let ca = RootCa::generate().unwrap();
        let subject = NodeSubject {
            node_id: "n".into(),
            ou: WORKER_OU.into(),
            cluster_id: "c".into(),
        };
        assert!(
            ca.sign_csr(b"\x30\x03garbage", &subject, Duration::from_secs(60))
                .is_err()
        );
    }
}
