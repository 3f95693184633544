//! The rustls half of the peer transport: the server and client configurations for mutual TLS
//! against the cluster CA, and the verifier that ties a dialed peer's certificate to the node
//! name the dialer expected (or, dialing a seed address, to whichever node it names).
//!
//! Everything here is built with the `ring` provider passed explicitly, never the
//! process-default provider: a library that relied on `CryptoProvider::install_default` would
//! depend on which other crate happened to install one first (or panic if none did).
//!
//! Only TLS 1.3 is offered: QUIC requires it (RFC 9001), and one version means one code path.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{TransportError, ALPN};
use crate::certs::{node_name_of, CertsError, NodeIdentity};

/// The crypto provider every configuration here uses.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The trust anchors for peers: every CA certificate of the identity (several while the CA is
/// being rotated). An empty or unparsable set is a configuration error, not "trust nobody
/// silently": a node that can talk to no one should say why at startup.
pub(super) fn roots(identity: &NodeIdentity) -> Result<Arc<RootCertStore>, TransportError> {
    let mut roots = RootCertStore::empty();
    for ca in &identity.ca_certs {
        roots
            .add(ca.clone())
            .map_err(|e| TransportError::Config(format!("CA certificate rejected: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TransportError::Config(
            "the node identity holds no CA certificate to check peers against".into(),
        ));
    }
    Ok(Arc::new(roots))
}

/// The server side: a client must present a certificate chained to one of `roots`
/// (`WebPkiClientVerifier` makes client authentication mandatory by default), and must offer
/// [`ALPN`].
pub(super) fn server_config(
    identity: &NodeIdentity,
    roots: Arc<RootCertStore>,
) -> Result<rustls::ServerConfig, TransportError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TransportError::Config(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(|e| TransportError::Config(format!("node certificate or key: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The TLS server name sent when dialing a node whose name we do not know yet
/// (`connect_any`). Any valid DNS name would do: the server ignores it (one certificate per
/// node), and our verifier does not hold the certificate to it, only to the cluster CA.
pub(super) const ANY_NODE_SERVER_NAME: &str = "meshcached-peer";

/// The client side for one dial: the server must chain to `roots` and be a node certificate;
/// with `expected` set it must also be valid for `expected` as a DNS name and carry it as its
/// node name (CN), while `None` accepts any node of the cluster. Built per dial (to `addr`)
/// because the verifier records, in `refusal`, why it refused a certificate, so that `connect`
/// can return a typed error rather than the string quinn keeps of a TLS failure.
pub(super) fn client_config(
    identity: &NodeIdentity,
    roots: Arc<RootCertStore>,
    addr: SocketAddr,
    expected: Option<&str>,
    refusal: Arc<Mutex<Option<TransportError>>>,
) -> Result<rustls::ClientConfig, TransportError> {
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TransportError::Config(format!("server verifier: {e}")))?;
    let verifier = NodeServerVerifier {
        inner,
        addr,
        expected: expected.map(str::to_string),
        refusal,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Config(e.to_string()))?
        .dangerous() // only to install a verifier that wraps, and adds to, the webpki one
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(|e| TransportError::Config(format!("node certificate or key: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Webpki's server verification (chain to the CA, validity in time, `expected` among the DNS
/// SANs), plus the node-name check: the certificate's CN must be `expected`. The DNS SAN alone
/// is not enough, because a node's SANs also list its hosts, and a host of one node that
/// equals another node's name must not let it pass as that node (see `crate::certs`).
///
/// With `expected: None` (dialing a seed address) any node name passes, but nothing else is
/// relaxed: the chain and validity are webpki's as always, and the certificate must still be
/// a node certificate whose name `connect_any` can report.
#[derive(Debug)]
struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    addr: SocketAddr,
    expected: Option<String>,
    refusal: Arc<Mutex<Option<TransportError>>>,
}

impl NodeServerVerifier {
    fn record(&self, refusal: TransportError) {
        if let Ok(mut slot) = self.refusal.lock() {
            *slot = Some(refusal);
        }
    }

    fn refuse(&self, expected: &str, presented: String) -> rustls::Error {
        self.record(TransportError::NameMismatch {
            expected: expected.to_string(),
            presented,
        });
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
    }

    /// A certificate that chains to our CA but is not a node certificate (its CN not among its
    /// DNS names, or a CA certificate): refused with the reason `crate::certs` gives.
    fn not_a_node(&self, source: CertsError) -> rustls::Error {
        self.record(TransportError::PeerCertificate {
            addr: self.addr,
            source,
        });
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    }
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // Webpki checks the chain and validity before the name, so a name error means the
            // certificate is a genuine one from our CA, for another node: reading its CN is
            // then trustworthy, and makes the refusal say who answered. Dialing any node, it
            // is the expected outcome (the server name is a placeholder no node need hold),
            // and the certificate passes on to the node-name check below.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => match &self.expected {
                None => ServerCertVerified::assertion(),
                Some(expected) => {
                    let presented = node_name_of(end_entity)
                        .unwrap_or_else(|e| format!("<not a node certificate: {e}>"));
                    return Err(self.refuse(expected, presented));
                }
            },
            other => other?,
        };
        // The chain is our CA's: the certificate must also be a node's, and the node expected.
        let name = node_name_of(end_entity).map_err(|e| self.not_a_node(e))?;
        match &self.expected {
            Some(expected) if name != *expected => Err(self.refuse(expected, name)),
            _ => Ok(verified),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}
