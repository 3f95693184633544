//! The peer transport (DESIGN.md section 4): one QUIC endpoint per node, both server and
//! client, on mutually authenticated TLS 1.3. It knows who a peer is and nothing of what the
//! peer says: streams, frames and cluster logic are the caller's.
//!
//! ```text
//!   PeerEndpoint::bind(addr, identity)      one UDP socket, the node's cert, the cluster CA
//!     .connect(addr, "node-b") ──► PeerConn { name: "node-b", conn }   (we dialed node-b)
//!     .connect_any(addr)       ──► PeerConn { name: <server's CN>, conn } (a --join seed)
//!     .accept()                ──► PeerConn { name: <dialer's CN>, conn }
//! ```
//!
//! **Who may talk.** Both sides present a certificate chained to a CA in
//! `identity.ca_certs`, checked by webpki inside the handshake, so that a refused peer never
//! gets a connection to send application data on. The dialer also checks that the server is
//! the node it meant to reach: its name is the TLS server name (matched against the DNS SANs)
//! *and* must be the certificate's CN (the node name proper, see `crate::certs`). Dialing a
//! seed address with `connect_any`, the dialer accepts any node of the cluster and learns its
//! name from its verified certificate, as the acceptor learns the dialer's. ALPN [`ALPN`]
//! names the protocol and its version; a peer speaking anything else is refused in the
//! handshake.
//!
//! **Liveness.** Keep-alives every [`KEEP_ALIVE`] and an idle timeout of [`IDLE_TIMEOUT`]:
//! a silent peer (crashed, partitioned) is noticed as a closed connection within seconds,
//! without any application-level ping.
//!
//! A refusal is reported as a [`TransportError`] naming the reason (the rustls message, or
//! the names that did not match); [`PeerEndpoint::accept`] reports each failed incoming
//! handshake and keeps the endpoint usable. Incoming handshakes run concurrently, each in its
//! own task, so a peer that starts a handshake and goes silent delays nobody else: a hostile
//! packet stream never stops a node from accepting its real peers.

mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::AlertDescription;
use tokio::sync::mpsc;

use crate::certs::{node_name_of, CertsError, NodeIdentity, NodeName};

/// The ALPN protocol id: the peer protocol and its version. A new incompatible wire version
/// gets a new id, so that mismatched nodes fail the handshake instead of misparsing frames.
pub const ALPN: &[u8] = b"meshcached/3";

/// How often an otherwise idle connection sends a keep-alive (a PING).
pub const KEEP_ALIVE: Duration = Duration::from_millis(400);

/// How long without hearing from a peer before its connection is declared dead: five missed
/// keep-alives. It is short on purpose. While a path is cut, QUIC backs its probes off
/// exponentially (on loopback: 27 ms, 54 ms, ... 1.7 s), so a connection that outlives a
/// partition of a few seconds resumes only at its next probe, seconds after the heal. A
/// connection that dies instead is redialed at once, and a fresh handshake resumes within a
/// second of the heal (see [`DIAL_TIMEOUT`] and the dialer's backoff). The price of a
/// premature close is a reconnect and a delta from the replication log, which is cheap.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one dial may take before it is abandoned and retried: a dial started while the
/// path is cut must not keep waiting on its backed-off Initial retransmissions after the
/// heal.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// The round-trip time assumed before the first measurement. Peers are on one network (a
/// LAN or a data centre): with quinn's default of 333 ms a dial whose first Initial was lost
/// would wait a second before resending it. A peer further away only sees a spurious
/// retransmission during the handshake.
const INITIAL_RTT: Duration = Duration::from_millis(100);

/// The largest UDP payload MTU discovery tries. quinn hands the kernel up to ten packets
/// in one `sendmsg` (UDP generic segmentation offload), and Linux refuses a send whose
/// total exceeds 64 KiB (`EMSGSIZE`), which quinn-udp drops silently (it assumes an MTU
/// probe). With a larger ceiling (this was 16 KiB: loopback and jumbo-frame paths
/// discovered it) every burst of four or more full packets was lost, every retransmission
/// of it too: links sat connected with their replication stuck (issue: "write bursts from
/// every node stall links for good"). 10 × 6,500 = 65,000 bytes stays under the limit.
const MTU_CEILING: u16 = 6_500;

/// The socket buffer sizes asked for (the kernel may cap them at `net.core.rmem_max` /
/// `wmem_max`). The default 208 KiB holds only three 64 KiB bursts: a node receiving from
/// several peers at once, while its cluster thread applies a batch, drops datagrams and
/// every peer then slows down to recover them.
const SOCKET_BUFFER: usize = 4 << 20;

/// What an authenticated peer may make this node hold (DESIGN.md section 4: a peer is
/// trusted to be a member, not to be well-behaved). quinn's defaults allow 100 streams of
/// each kind and an unbounded connection window.
/// - Streams: a peer opens one unidirectional stream for its live log and one per snapshot
///   (one at a time, and one more may be starting as the last ends); no bidirectional ones.
pub const MAX_UNI_STREAMS: u32 = 4;
/// Bytes of received datagrams (SWIM gossip, at most 1 KiB each) QUIC holds for the reader
/// per connection; beyond it the oldest are dropped.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 64 << 10;
/// Bytes of datagrams QUIC holds for sending per connection.
pub const DATAGRAM_SEND_BUFFER: usize = 64 << 10;
/// - Per-stream and per-connection receive windows: one stream window covers a fast LAN's
///   bandwidth-delay product many times over (10 Gbit/s × 1 ms = 1.25 MB).
pub const STREAM_RECEIVE_WINDOW: u32 = 4 << 20;
pub const CONNECTION_RECEIVE_WINDOW: u32 = 3 * STREAM_RECEIVE_WINDOW;
/// - Handshakes: at most this many under way at once; beyond [`RETRY_ABOVE`] a client must
///   first prove its address (a QUIC Retry), beyond [`MAX_HANDSHAKES`] it is refused. A
///   cluster has at most a few dozen members, all of which dial in at most once each.
const MAX_HANDSHAKES: usize = 64;
const RETRY_ABOVE: usize = 16;
/// - Incoming packets buffered for connections not yet accepted.
const INCOMING_BUFFER: u64 = 64 << 10;
const INCOMING_BUFFER_TOTAL: u64 = 4 << 20;

/// Handshakes completed (or refused) but not yet taken by [`PeerEndpoint::accept`]; beyond
/// this, finished handshakes wait for the caller (quinn bounds how many are in flight).
const ACCEPT_QUEUE: usize = 64;

/// Application close code when we refuse a connection after the TLS handshake (a check that
/// TLS itself cannot make, e.g. the negotiated protocol).
const CLOSE_REFUSED: u32 = 1;

/// Why a peer connection could not be made or was refused. Each message names the peer's
/// address (or the node names involved) and the reason; none leaves the endpoint unusable
/// except [`TransportError::Closed`] (and a failed [`PeerEndpoint::bind`]).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind the cluster endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the cluster endpoint's local address: {0}")]
    LocalAddr(std::io::Error),
    #[error("invalid TLS configuration: {0}")]
    Config(String),
    #[error("cannot dial {expected:?}: {source}")]
    InvalidName {
        expected: String,
        source: CertsError,
    },
    #[error("cannot dial {addr}: {source}")]
    Dial {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    /// The TLS handshake failed: `by_peer` says which side refused; `reason` is what rustls
    /// said (e.g. "invalid peer certificate: UnknownIssuer", "certificate expired ...").
    #[error("TLS handshake with {addr} refused by {}: {reason}", if *.by_peer { "the peer" } else { "us" })]
    HandshakeRefused {
        addr: SocketAddr,
        by_peer: bool,
        reason: String,
    },
    /// The dialed server holds a valid certificate from our CA, but for another node.
    #[error("expected node {expected:?}, but the peer's certificate names {presented:?}")]
    NameMismatch { expected: String, presented: String },
    #[error("peer {addr} presented no client certificate")]
    NoClientCertificate { addr: SocketAddr },
    #[error(
        "peer {addr} does not speak {} (ALPN negotiation failed)",
        String::from_utf8_lossy(ALPN)
    )]
    AlpnMismatch { addr: SocketAddr },
    #[error("peer {addr} presented a certificate that is not a node certificate: {source}")]
    PeerCertificate {
        addr: SocketAddr,
        source: CertsError,
    },
    #[error("connection with {addr} failed: {source}")]
    Connection {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
    #[error("the cluster endpoint is closed")]
    Closed,
}

/// An authenticated connection to a peer node.
#[derive(Debug, Clone)]
pub struct PeerConn {
    /// The peer's node name, read from its verified certificate.
    pub name: String,
    pub conn: quinn::Connection,
}

type Accepted = Result<PeerConn, TransportError>;

/// One node's QUIC endpoint: it accepts peers and dials them, on a single UDP port.
#[derive(Debug)]
pub struct PeerEndpoint {
    endpoint: quinn::Endpoint,
    identity: NodeIdentity,
    roots: Arc<rustls::RootCertStore>,
    transport: Arc<quinn::TransportConfig>,
    /// Results of incoming handshakes, in the order they finish.
    accepted: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    /// Takes incoming connections off the endpoint and starts their handshakes; it holds a
    /// handle on the endpoint, so it is aborted when the `PeerEndpoint` is dropped.
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for PeerEndpoint {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl PeerEndpoint {
    /// Binds the endpoint on `addr` (port 0 picks one). Must be called inside a tokio runtime,
    /// which drives the socket.
    pub fn bind(addr: SocketAddr, identity: NodeIdentity) -> Result<PeerEndpoint, TransportError> {
        let roots = tls::roots(&identity)?;
        let transport = Arc::new(transport_config());
        let server_tls = tls::server_config(&identity, roots.clone())?;
        let server_quic = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_quic));
        server.transport_config(transport.clone());
        server
            .max_incoming(MAX_HANDSHAKES)
            .incoming_buffer_size(INCOMING_BUFFER)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
        let bind = |source| TransportError::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
        grow_buffers(&socket);
        let mut config = quinn::EndpointConfig::default();
        // Without this, quinn never sends datagrams larger than Ethernet's, whatever MTU
        // discovery finds (see transport_config).
        config
            .max_udp_payload_size(MTU_CEILING)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let endpoint =
            quinn::Endpoint::new(config, Some(server), socket, Arc::new(quinn::TokioRuntime))
                .map_err(bind)?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let acceptor = tokio::spawn(run_acceptor(endpoint.clone(), tx));
        Ok(PeerEndpoint {
            endpoint,
            identity,
            roots,
            transport,
            accepted: tokio::sync::Mutex::new(rx),
            acceptor,
        })
    }

    /// The address the endpoint is bound to (with the real port when bound on port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint
            .local_addr()
            .map_err(TransportError::LocalAddr)
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// The underlying quinn endpoint, e.g. for its statistics.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Dials the node `expected_name` at `addr`. Returns once the handshake is done and the
    /// server proved to be that node. Note that in TLS 1.3 the server checks our certificate
    /// after we consider the handshake done: if it refuses us, this returns `Ok` and the
    /// connection closes right after with the server's reason (streams then fail).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected_name: &str,
    ) -> Result<PeerConn, TransportError> {
        self.dial(addr, Some(expected_name)).await
    }

    /// Dials whichever node answers at `addr`, for an address known before the node behind it
    /// (a `--join` seed). The server must still hold a valid node certificate from the cluster
    /// CA; only its name is not prescribed, and `PeerConn::name` is the one its certificate
    /// gives (possibly this node's own, if the seed is our address: the caller decides). The
    /// same TLS 1.3 caveat as [`PeerEndpoint::connect`] applies.
    pub async fn connect_any(&self, addr: SocketAddr) -> Result<PeerConn, TransportError> {
        self.dial(addr, None).await
    }

    /// The client side of one handshake, and the checks after it: the server must be the node
    /// `expected`, or with `None` any node of the cluster.
    async fn dial(
        &self,
        addr: SocketAddr,
        expected: Option<&str>,
    ) -> Result<PeerConn, TransportError> {
        // A node name is always a valid DNS name (NodeName guarantees it), so it can be the
        // TLS server name, which rustls matches against the certificate's DNS SANs. Dialing
        // any node, a placeholder stands in, and the verifier ignores the mismatch.
        let expected = expected
            .map(|name| {
                NodeName::new(name).map_err(|source| TransportError::InvalidName {
                    expected: name.to_string(),
                    source,
                })
            })
            .transpose()?;
        let expected = expected.as_ref().map(NodeName::as_str);
        let sni = expected.unwrap_or(tls::ANY_NODE_SERVER_NAME);
        let server_name = ServerName::try_from(sni)
            .map_err(|e| TransportError::Config(format!("server name {sni:?}: {e}")))?;
        let refusal = Arc::new(Mutex::new(None));
        let client_tls = tls::client_config(
            &self.identity,
            self.roots.clone(),
            addr,
            expected,
            refusal.clone(),
        )?;
        let client_quic = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_quic));
        client.transport_config(self.transport.clone());
        let connecting = self
            .endpoint
            .connect_with(client, addr, server_name.to_str().as_ref())
            .map_err(|source| TransportError::Dial { addr, source })?;
        let conn = match connecting.await {
            Ok(conn) => conn,
            Err(e) => {
                // Our verifier's own account of a refusal is more precise than the TLS alert.
                let recorded = refusal.lock().ok().and_then(|mut slot| slot.take());
                return Err(recorded.unwrap_or_else(|| classify(addr, e)));
            }
        };
        check_alpn(&conn, addr)?;
        // The verifier already insisted on the name; reading it back from the certificate
        // keeps `PeerConn::name` the certificate's word, on both sides alike.
        let presented = peer_name(&conn, addr)?;
        if let Some(expected) = expected.filter(|&expected| expected != presented) {
            conn.close(CLOSE_REFUSED.into(), b"unexpected node name");
            return Err(TransportError::NameMismatch {
                expected: expected.to_string(),
                presented,
            });
        }
        Ok(PeerConn {
            name: presented,
            conn,
        })
    }

    /// The next peer that dialed in and passed the handshake. An `Err` other than
    /// [`TransportError::Closed`] concerns one incoming connection (refused certificate,
    /// wrong protocol, timeout): log it and call `accept` again. Cancel-safe.
    pub async fn accept(&self) -> Result<PeerConn, TransportError> {
        let mut accepted = self.accepted.lock().await;
        accepted.recv().await.unwrap_or(Err(TransportError::Closed))
    }

    /// Closes every connection (telling peers why) and stops accepting.
    pub fn close(&self, reason: &str) {
        self.endpoint.close(0u32.into(), reason.as_bytes());
    }

    /// Waits until every connection has closed cleanly (for a graceful shutdown).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// Hands every incoming connection to its own handshake task, until the endpoint closes;
/// then dropping the last sender (once pending handshakes end) makes `accept` return `Closed`.
async fn run_acceptor(endpoint: quinn::Endpoint, tx: mpsc::Sender<Accepted>) {
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while let Some(incoming) = endpoint.accept().await {
        let busy = in_flight.load(std::sync::atomic::Ordering::Relaxed);
        if busy >= MAX_HANDSHAKES {
            tracing::debug!(addr = %incoming.remote_address(), "refusing a handshake: {busy} under way");
            incoming.refuse();
            continue;
        }
        if busy >= RETRY_ABOVE && !incoming.remote_address_validated() {
            // Under load, a client proves it can receive at its address before any crypto
            // work is spent on it.
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tx = tx.clone();
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let result = handshake(incoming).await;
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = &result {
                tracing::debug!("incoming peer connection refused: {e}");
            }
            // If the PeerEndpoint is gone, nobody wants the connection: dropping it closes it.
            let _ = tx.send(result).await;
        });
    }
}

/// The server side of one handshake, and the checks after it.
async fn handshake(incoming: quinn::Incoming) -> Accepted {
    let addr = incoming.remote_address();
    let conn = incoming.await.map_err(|e| classify(addr, e))?;
    check_alpn(&conn, addr)?;
    let name = peer_name(&conn, addr)?;
    Ok(PeerConn { name, conn })
}

/// The QUIC settings shared by both directions of every peer connection.
fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(KEEP_ALIVE));
    // Both ends advertise the same timeout; QUIC uses the smaller of the two.
    config.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        IDLE_TIMEOUT.as_millis() as u32,
    ))));
    // SWIM gossip travels in datagrams (src/cluster/gossip.rs). Bounded both ways: when the
    // reader falls behind, QUIC drops the oldest datagrams (SWIM tolerates loss) rather
    // than letting a peer make this node buffer without limit.
    config.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    config.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    config.max_concurrent_bidi_streams(0u32.into());
    config.max_concurrent_uni_streams(MAX_UNI_STREAMS.into());
    config.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    config.receive_window(CONNECTION_RECEIVE_WINDOW.into());
    config.initial_rtt(INITIAL_RTT);
    // Probe for paths that carry more than quinn's default ceiling of 1452 bytes (jumbo
    // frames, loopback): each packet costs a fixed amount of CPU (crypto setup, headers, a
    // syscall share, an ACK), so fewer, larger packets make replication cheaper. Paths with a
    // smaller MTU lose only a few probes: discovery backs off from what does not get through.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_CEILING);
    config.mtu_discovery_config(Some(mtu));
    config
}

/// Asks for [`SOCKET_BUFFER`]-sized send and receive buffers on the cluster socket. Best
/// effort: a kernel that grants less still works, with more loss under bursts.
fn grow_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = SOCKET_BUFFER as libc::c_int;
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a valid socket descriptor, and a pointer to a c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(
                "cannot size the cluster socket's buffers: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Rustls refuses a peer offering no common ALPN; this re-checks the outcome so that a
/// configuration change can never silently accept a peer without one.
fn check_alpn(conn: &quinn::Connection, addr: SocketAddr) -> Result<(), TransportError> {
    let protocol = conn
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    if protocol.as_deref() == Some(ALPN) {
        Ok(())
    } else {
        conn.close(CLOSE_REFUSED.into(), b"ALPN mismatch");
        Err(TransportError::AlpnMismatch { addr })
    }
}

/// The node name from the peer's verified certificate (the first of its chain).
fn peer_name(conn: &quinn::Connection, addr: SocketAddr) -> Result<String, TransportError> {
    let chain = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok());
    let Some(cert) = chain.as_ref().and_then(|chain| chain.first()) else {
        conn.close(CLOSE_REFUSED.into(), b"no certificate");
        return Err(TransportError::NoClientCertificate { addr });
    };
    node_name_of(cert).map_err(|source| {
        conn.close(CLOSE_REFUSED.into(), b"not a node certificate");
        TransportError::PeerCertificate { addr, source }
    })
}

/// Turns a failed handshake into what it means: a TLS alert becomes a refusal naming its
/// reason, with the two alerts a misconfigured peer most often earns singled out.
fn classify(addr: SocketAddr, error: quinn::ConnectionError) -> TransportError {
    let (code, reason, by_peer) = match &error {
        // We refused: quinn keeps the rustls error's text.
        quinn::ConnectionError::TransportError(e) => (e.code, e.reason.clone(), false),
        // The peer refused, and said why (quinn sends the rustls text along).
        quinn::ConnectionError::ConnectionClosed(close) => (
            close.error_code,
            String::from_utf8_lossy(&close.reason).into_owned(),
            true,
        ),
        _ => {
            return TransportError::Connection {
                addr,
                source: error,
            }
        }
    };
    let alert = |a: AlertDescription| quinn::TransportErrorCode::crypto(u8::from(a));
    if code == alert(AlertDescription::CertificateRequired) {
        TransportError::NoClientCertificate { addr }
    } else if code == alert(AlertDescription::NoApplicationProtocol) {
        TransportError::AlpnMismatch { addr }
    } else if (0x100..0x200).contains(&u64::from(code)) {
        // 0x100-0x1ff: a TLS alert carried as a QUIC error (RFC 9001 section 4.8).
        TransportError::HandshakeRefused {
            addr,
            by_peer,
            reason: if reason.is_empty() {
                format!("{code}")
            } else {
                reason
            },
        }
    } else {
        TransportError::Connection {
            addr,
            source: error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_who_refused_and_why() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 11212));
        let e = TransportError::HandshakeRefused {
            addr,
            by_peer: true,
            reason: "invalid peer certificate: UnknownIssuer".into(),
        };
        assert_eq!(
            e.to_string(),
            "TLS handshake with 127.0.0.1:11212 refused by the peer: \
             invalid peer certificate: UnknownIssuer"
        );
        let e = TransportError::AlpnMismatch { addr };
        assert!(
            e.to_string().contains(std::str::from_utf8(ALPN).unwrap()),
            "{e}"
        );
        let e = TransportError::NameMismatch {
            expected: "node-b".into(),
            presented: "node-c".into(),
        };
        assert_eq!(
            e.to_string(),
            "expected node \"node-b\", but the peer's certificate names \"node-c\""
        );
    }

    #[test]
    fn tls_alerts_are_classified() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 11212));
        let closed = |alert: AlertDescription, reason: &'static [u8]| {
            quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code: quinn::TransportErrorCode::crypto(u8::from(alert)),
                frame_type: None,
                reason: bytes::Bytes::from_static(reason),
            })
        };
        let e = classify(addr, closed(AlertDescription::CertificateRequired, b""));
        assert!(
            matches!(e, TransportError::NoClientCertificate { .. }),
            "{e:?}"
        );
        let e = classify(addr, closed(AlertDescription::NoApplicationProtocol, b""));
        assert!(matches!(e, TransportError::AlpnMismatch { .. }), "{e:?}");
        let e = classify(addr, closed(AlertDescription::BadCertificate, b"expired"));
        assert!(
            matches!(&e, TransportError::HandshakeRefused { by_peer: true, reason, .. }
                if reason == "expired"),
            "{e:?}"
        );
        let e = classify(addr, quinn::ConnectionError::TimedOut);
        assert!(matches!(e, TransportError::Connection { .. }), "{e:?}");
    }
}
