//! The peer transport over real QUIC on 127.0.0.1, with certificates generated per test: two
//! nodes connect and exchange a replication frame, by name or (`connect_any`, for a seed
//! address) learning the name; and every way a peer can be wrong (no certificate, another CA,
//! expired, another node, not a node, another protocol, garbage packets) is refused before any
//! application data flows, with an error that says why.
//!
//! Every wait is bounded by `within`; nothing sleeps.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use meshcached::certs::{generate_ca, Ca, CertsError, NodeIdentity};
use meshcached::clock::Version;
use meshcached::replication::frame::{self, Frame};
use meshcached::replication::log::{Entry, Mutation, Op, RunId};
use meshcached::replication::transport::{
    PeerConn, PeerEndpoint, TransportError, ALPN, CONNECTION_RECEIVE_WINDOW,
    DATAGRAM_RECEIVE_BUFFER, MAX_UNI_STREAMS, STREAM_RECEIVE_WINDOW,
};
use quinn::ConnectionError;
use rustls::pki_types::PrivatePkcs8KeyDer;

/// Generous: only a broken implementation ever waits this long.
/// Dialing a seed address without knowing the node's name.
#[path = "transport/connect_any.rs"]
mod connect_any;
#[path = "transport/limits.rs"]
mod limits;

const WAIT: Duration = Duration::from_secs(10);
const DAY: Duration = Duration::from_secs(24 * 3600);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn identity(ca: &Ca, name: &str) -> NodeIdentity {
    let node = ca.issue_node(name, &["127.0.0.1"]).expect("issue node");
    node.identity(ca).expect("valid identity")
}

fn bind(identity: NodeIdentity) -> (PeerEndpoint, SocketAddr) {
    let endpoint = PeerEndpoint::bind(localhost(), identity).expect("bind");
    let addr = endpoint.local_addr().expect("local addr");
    (endpoint, addr)
}

/// Starts `server.accept()` in the background, so the test can dial meanwhile.
fn accept_in_background(
    server: Arc<PeerEndpoint>,
) -> tokio::task::JoinHandle<Result<PeerConn, TransportError>> {
    tokio::spawn(async move { server.accept().await })
}

/// How a test dials: naming the node it expects (`connect`) or taking whichever node of the
/// cluster answers (`connect_any`). The refusals must hold either way.
#[derive(Clone, Copy, Debug)]
enum Dial {
    Named,
    Any,
}

impl Dial {
    async fn to(
        self,
        from: &PeerEndpoint,
        addr: SocketAddr,
        name: &str,
    ) -> Result<PeerConn, TransportError> {
        let dialing = async {
            match self {
                Dial::Named => from.connect(addr, name).await,
                Dial::Any => from.connect_any(addr).await,
            }
        };
        within("dial", dialing).await
    }
}

fn sample_frame() -> Frame {
    Frame::Batch {
        run_id: RunId(7),
        entries: vec![Entry {
            seq: 1,
            mutation: Mutation {
                key: Bytes::from_static(b"greeting"),
                version: Version(42),
                op: Op::Put {
                    value: Bytes::from_static(b"hello over quic"),
                    flags: 3,
                    exptime: 0,
                },
            },
        }],
    }
}

/// Sends one frame on a fresh uni stream of `from`, and decodes it from `to`'s side.
async fn exchange_frame(from: &quinn::Connection, to: &quinn::Connection) {
    let mut out = BytesMut::new();
    frame::encode(&sample_frame(), &mut out);
    let mut send = within("open_uni", from.open_uni()).await.expect("open uni");
    send.write_all(&out).await.expect("write frame");
    send.finish().expect("finish stream");
    let mut recv = within("accept_uni", to.accept_uni())
        .await
        .expect("accept uni");
    let bytes = within("read frame", recv.read_to_end(frame::MAX_FRAME))
        .await
        .expect("read frame");
    let mut buf = BytesMut::from(&bytes[..]);
    let got = frame::decode(&mut buf).expect("well-formed frame");
    assert_eq!(got, Some(sample_frame()));
    assert!(buf.is_empty());
}

/// A dialer the server refused may still believe itself connected for a moment (in TLS 1.3
/// the client finishes first, and the server checks its certificate after): its connection
/// must die with a TLS error, and nothing must ever come from the server on it.
async fn assert_dies_without_data(conn: &quinn::Connection) {
    // Try to talk anyway: the server must not deliver it (its accept() already failed).
    if let Ok(mut send) = conn.open_uni().await {
        let _ = send.write_all(b"secret").await;
        let _ = send.finish();
    }
    let reason = within("the refused connection to close", conn.closed()).await;
    assert!(
        matches!(reason, ConnectionError::ConnectionClosed(_)),
        "expected the server to close with a TLS error, got {reason:?}"
    );
    assert!(conn.accept_uni().await.is_err());
    assert!(conn.read_datagram().await.is_err());
}

/// The refusal of a certificate signed by another CA. Both CAs carry the same subject name,
/// so webpki may find the "issuer" and fail on its signature rather than not find it.
fn assert_foreign(reason: &str) {
    assert!(
        reason.contains("UnknownIssuer") || reason.contains("BadSignature"),
        "{reason}"
    );
}

/// A plain quinn client, for peers that `PeerEndpoint` would never build: no client
/// certificate, or another ALPN.
fn raw_client(
    trust: &Ca,
    client_cert: Option<&NodeIdentity>,
    alpn: &[u8],
) -> (quinn::Endpoint, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.cert_der().clone()).expect("CA root");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let mut tls = match client_cert {
        Some(id) => builder
            .with_client_auth_cert(id.cert_chain.clone(), id.key.clone_key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic client");
    let endpoint = quinn::Endpoint::client(localhost()).expect("client endpoint");
    (endpoint, quinn::ClientConfig::new(Arc::new(quic)))
}

#[tokio::test]
async fn two_nodes_connect_and_exchange_a_frame() {
    let ca = generate_ca().expect("CA");
    let (a, _) = bind(identity(&ca, "node-a"));
    let (b, b_addr) = bind(identity(&ca, "node-b"));
    let b = Arc::new(b);
    let accepting = accept_in_background(b.clone());
    let dialed = within("connect", a.connect(b_addr, "node-b"))
        .await
        .expect("connect");
    let accepted = within("accept", accepting)
        .await
        .expect("accept task")
        .expect("accept");
    assert_eq!(dialed.name, "node-b");
    assert_eq!(accepted.name, "node-a", "accept names the dialer");
    exchange_frame(&dialed.conn, &accepted.conn).await;
    exchange_frame(&accepted.conn, &dialed.conn).await;

    datagrams_flow_and_a_flood_is_held_to_the_bound(&dialed.conn, &accepted.conn).await;
}

/// Gossip datagrams pass, and a peer that sends far more than the reader takes cannot make
/// the node hold more than [`DATAGRAM_RECEIVE_BUFFER`] of them: with an unbounded buffer
/// the whole flood would be waiting.
async fn datagrams_flow_and_a_flood_is_held_to_the_bound(
    from: &quinn::Connection,
    to: &quinn::Connection,
) {
    let max = from.max_datagram_size().expect("datagrams enabled");
    assert!(max >= 1024, "a gossip packet fits: {max}");
    from.send_datagram(Bytes::from_static(b"ping"))
        .expect("send");
    let got = within("a datagram", to.read_datagram())
        .await
        .expect("read");
    assert_eq!(&got[..], b"ping");
    const FLOOD: usize = 300;
    for i in 0..FLOOD {
        let d = Bytes::from(vec![i as u8; 1000]);
        within("send a datagram", from.send_datagram_wait(d))
            .await
            .expect("send");
    }
    // Stream data sent after the flood: once it is read, the flood has (nearly all) arrived.
    exchange_frame(from, to).await;
    let mut held = 0usize;
    while let Ok(Ok(d)) = tokio::time::timeout(Duration::ZERO, to.read_datagram()).await {
        held += d.len();
    }
    assert!(
        held <= DATAGRAM_RECEIVE_BUFFER,
        "{held} bytes of datagrams held, bound {DATAGRAM_RECEIVE_BUFFER}"
    );
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let ca = generate_ca().expect("CA");
    let (b, b_addr) = bind(identity(&ca, "node-b"));
    let b = Arc::new(b);
    let accepting = accept_in_background(b.clone());
    let (client, config) = raw_client(&ca, None, ALPN);
    let dialed = within(
        "raw connect",
        client.connect_with(config, b_addr, "node-b").expect("dial"),
    )
    .await;
    let refused = within("accept", accepting).await.expect("accept task");
    match refused {
        Err(TransportError::NoClientCertificate { .. }) => {}
        other => panic!("expected NoClientCertificate, got {other:?}"),
    }
    if let Ok(conn) = dialed {
        assert_dies_without_data(&conn).await;
    }
}

#[tokio::test]
async fn server_from_another_ca_is_refused() {
    foreign_server_is_refused(Dial::Named).await;
}

async fn foreign_server_is_refused(dial: Dial) {
    let ca = generate_ca().expect("CA");
    let foreign = generate_ca().expect("foreign CA");
    let (a, _) = bind(identity(&ca, "node-a"));
    // The impostor trusts our CA (so it would accept us) but holds a foreign certificate.
    let impostor = foreign
        .issue_node("node-b", &["127.0.0.1"])
        .expect("issue")
        .identity_unverified(&ca);
    let (b, b_addr) = bind(impostor);
    let b = Arc::new(b);
    let accepting = accept_in_background(b.clone());
    let err = dial
        .to(&a, b_addr, "node-b")
        .await
        .expect_err("a foreign server must be refused");
    match &err {
        TransportError::HandshakeRefused {
            by_peer: false,
            reason,
            ..
        } => assert_foreign(reason),
        other => panic!("expected HandshakeRefused by us, got {other:?}"),
    }
    // The impostor never got a connection to read from either.
    let server_side = within("accept", accepting).await.expect("accept task");
    assert!(server_side.is_err(), "{server_side:?}");
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    foreign_client_is_refused(Dial::Named).await;
}

async fn foreign_client_is_refused(dial: Dial) {
    let ca = generate_ca().expect("CA");
    let foreign = generate_ca().expect("foreign CA");
    let (b, b_addr) = bind(identity(&ca, "node-b"));
    // Trusts our CA (so it accepts node-b) but holds a foreign certificate.
    let impostor = foreign
        .issue_node("node-a", &["127.0.0.1"])
        .expect("issue")
        .identity_unverified(&ca);
    let (a, _) = bind(impostor);
    let b = Arc::new(b);
    let accepting = accept_in_background(b.clone());
    let dialed = dial.to(&a, b_addr, "node-b").await;
    let refused = within("accept", accepting).await.expect("accept task");
    match &refused {
        Err(TransportError::HandshakeRefused {
            by_peer: false,
            reason,
            ..
        }) => assert_foreign(reason),
        other => panic!("expected HandshakeRefused by the server, got {other:?}"),
    }
    if let Ok(peer) = dialed {
        assert_dies_without_data(&peer.conn).await;
    }
}

#[tokio::test]
async fn expired_certificates_are_refused_both_ways() {
    expired_server_is_refused(Dial::Named).await;

    // An expired client: the server refuses it.
    let ca = generate_ca().expect("CA");
    let (c, _) = bind(expired(&ca, "node-c"));
    let (d, d_addr) = bind(identity(&ca, "node-d"));
    let d = Arc::new(d);
    let accepting = accept_in_background(d.clone());
    let dialed = within("connect", c.connect(d_addr, "node-d")).await;
    match within("accept", accepting).await.expect("accept task") {
        Err(TransportError::HandshakeRefused {
            by_peer: false,
            reason,
            ..
        }) => {
            assert!(reason.to_lowercase().contains("expired"), "{reason}")
        }
        other => panic!("expected HandshakeRefused by the server, got {other:?}"),
    }
    if let Ok(peer) = dialed {
        assert_dies_without_data(&peer.conn).await;
    }
}

fn expired(ca: &Ca, name: &str) -> NodeIdentity {
    let now = SystemTime::now();
    ca.issue_node_with_validity(name, &["127.0.0.1"], now - 2 * DAY, now - DAY)
        .expect("issue")
        .identity_unverified(ca)
}

/// An expired server: the dialer refuses it.
async fn expired_server_is_refused(dial: Dial) {
    let ca = generate_ca().expect("CA");
    let (a, _) = bind(identity(&ca, "node-a"));
    let (b, b_addr) = bind(expired(&ca, "node-b"));
    let b = Arc::new(b);
    let accepting = accept_in_background(b.clone());
    let err = dial
        .to(&a, b_addr, "node-b")
        .await
        .expect_err("an expired server must be refused");
    match &err {
        TransportError::HandshakeRefused {
            by_peer: false,
            reason,
            ..
        } => {
            assert!(reason.to_lowercase().contains("expired"), "{err}")
        }
        other => panic!("expected HandshakeRefused by us, got {other:?}"),
    }
    assert!(within("accept", accepting).await.expect("task").is_err());
}

#[tokio::test]
async fn server_naming_another_node_is_refused() {
    let ca = generate_ca().expect("CA");
    let (a, _) = bind(identity(&ca, "node-a"));
    // node-c answers where node-b was expected.
    let (c, c_addr) = bind(identity(&ca, "node-c"));
    let c = Arc::new(c);
    let accepting = accept_in_background(c.clone());
    let err = within("connect", a.connect(c_addr, "node-b"))
        .await
        .expect_err("another node must be refused");
    match &err {
        TransportError::NameMismatch {
            expected,
            presented,
        } => {
            assert_eq!(
                (expected.as_str(), presented.as_str()),
                ("node-b", "node-c")
            )
        }
        other => panic!("expected NameMismatch, got {other:?}"),
    }
    assert!(within("accept", accepting).await.expect("task").is_err());

    // Subtler: node-e lists "node-b" among its hosts, so TLS hostname verification alone
    // would pass; the node name (CN) still says node-e.
    let sly = ca
        .issue_node("node-e", &["127.0.0.1", "node-b"])
        .expect("issue")
        .identity(&ca)
        .expect("identity");
    let (e, e_addr) = bind(sly);
    let e = Arc::new(e);
    let accepting = accept_in_background(e.clone());
    let err = within("connect", a.connect(e_addr, "node-b"))
        .await
        .expect_err("a host alias is not a node name");
    match &err {
        TransportError::NameMismatch {
            expected,
            presented,
        } => {
            assert_eq!(
                (expected.as_str(), presented.as_str()),
                ("node-b", "node-e")
            )
        }
        other => panic!("expected NameMismatch, got {other:?}"),
    }
    assert!(within("accept", accepting).await.expect("task").is_err());
}

#[tokio::test]
async fn peer_with_another_alpn_is_refused() {
    let ca = generate_ca().expect("CA");
    // A client speaking another protocol version, with a perfectly good certificate.
    let (b, b_addr) = bind(identity(&ca, "node-b"));
    let b = Arc::new(b);
    let accepting = accept_in_background(b.clone());
    let a_id = identity(&ca, "node-a");
    let (client, config) = raw_client(&ca, Some(&a_id), b"meshcached/0");
    let dialed = within(
        "raw connect",
        client.connect_with(config, b_addr, "node-b").expect("dial"),
    )
    .await;
    assert!(dialed.is_err(), "the handshake must fail: {dialed:?}");
    match within("accept", accepting).await.expect("accept task") {
        Err(TransportError::AlpnMismatch { .. }) => {}
        other => panic!("expected AlpnMismatch, got {other:?}"),
    }

    // A server speaking another protocol: our dial is refused, and says so.
    let b_id = identity(&ca, "node-b");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(b_id.cert_chain.clone(), b_id.key.clone_key())
        .expect("server cert");
    tls.alpn_protocols = vec![b"other/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic server");
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(quic)),
        localhost(),
    )
    .expect("raw server");
    let server_addr = server.local_addr().expect("addr");
    // quinn only runs a handshake for an incoming connection the application accepts.
    let serving = tokio::spawn(async move {
        let incoming = server.accept().await.expect("incoming");
        incoming.await
    });
    let (a, _) = bind(a_id);
    let err = within("connect", a.connect(server_addr, "node-b"))
        .await
        .expect_err("another protocol must be refused");
    assert!(
        matches!(err, TransportError::AlpnMismatch { .. }),
        "{err:?}"
    );
    let alpn = std::str::from_utf8(meshcached::replication::transport::ALPN).unwrap();
    assert!(err.to_string().contains(alpn), "{err}");
    let server_side = within("raw accept", serving)
        .await
        .expect("raw server task");
    assert!(server_side.is_err(), "{server_side:?}");
}

#[tokio::test]
async fn garbage_datagrams_do_not_hurt_the_endpoint() {
    let ca = generate_ca().expect("CA");
    let (b, b_addr) = bind(identity(&ca, "node-b"));
    let b = Arc::new(b);
    let junk = UdpSocket::bind(localhost()).expect("udp socket");
    // Noise of every size, then packets shaped like QUIC long-header Initials (version 1,
    // plausible connection ids) whose protection and payload are garbage.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = |len: usize| {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect::<Vec<u8>>()
    };
    for len in [0, 1, 7, 20, 100, 1199, 1200, 1500, 9000] {
        junk.send_to(&noise(len), b_addr).expect("send junk");
    }
    for _ in 0..20 {
        let mut packet = vec![0xc0, 0, 0, 0, 1, 8];
        packet.extend(noise(8)); // destination connection id
        packet.push(8);
        packet.extend(noise(8)); // source connection id
        packet.push(0); // no token
        packet.extend([0x44, 0xd0]); // length
        packet.extend(noise(1200 - packet.len()));
        junk.send_to(&packet, b_addr).expect("send fake initial");
    }

    // A real node still gets through. Refused junk handshakes, if any, are skipped.
    let acceptor = b.clone();
    let accepting = tokio::spawn(async move {
        loop {
            match acceptor.accept().await {
                Ok(peer) => return Ok(peer),
                Err(TransportError::Closed) => return Err(TransportError::Closed),
                Err(_) => continue,
            }
        }
    });
    let (a, _) = bind(identity(&ca, "node-a"));
    let dialed = within("connect", a.connect(b_addr, "node-b"))
        .await
        .expect("connect after junk");
    let accepted = within("accept", accepting)
        .await
        .expect("accept task")
        .expect("accept after junk");
    assert_eq!(accepted.name, "node-a");
    exchange_frame(&dialed.conn, &accepted.conn).await;
}

#[tokio::test]
async fn bad_names_and_closed_endpoints_are_errors() {
    let ca = generate_ca().expect("CA");
    let (a, _) = bind(identity(&ca, "node-a"));
    let err = a
        .connect(SocketAddr::from(([127, 0, 0, 1], 9)), "not a name!")
        .await
        .expect_err("invalid node name");
    assert!(matches!(err, TransportError::InvalidName { .. }), "{err:?}");
    a.close("shutting down");
    let err = within("accept", a.accept()).await.expect_err("closed");
    assert!(matches!(err, TransportError::Closed), "{err:?}");
}

#[tokio::test]
async fn a_stalled_handshake_delays_no_one() {
    let ca = generate_ca().expect("CA");
    let (b, b_addr) = bind(identity(&ca, "node-b"));
    // A relay that passes a dialer's first packet on to node-b and swallows everything after:
    // node-b starts a handshake that can never finish (until its idle timeout).
    let relay = tokio::net::UdpSocket::bind(localhost())
        .await
        .expect("relay socket");
    let relay_addr = relay.local_addr().expect("relay addr");
    let (forwarded_tx, forwarded) = tokio::sync::oneshot::channel();
    let _relay = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let (n, _) = relay.recv_from(&mut buf).await?;
        relay.send_to(&buf[..n], b_addr).await?;
        let _ = forwarded_tx.send(());
        loop {
            relay.recv_from(&mut buf).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let (stuck, _) = bind(identity(&ca, "node-s"));
    let _stuck = tokio::spawn(async move { stuck.connect(relay_addr, "node-b").await });
    within("the relay to forward", forwarded)
        .await
        .expect("relay forwarded");

    // The stalled Initial is queued on node-b's socket ahead of node-a's: a node that
    // handshook one peer at a time would answer node-a only after the other timed out.
    let (a, _) = bind(identity(&ca, "node-a"));
    let dialed = within("connect", a.connect(b_addr, "node-b"))
        .await
        .expect("connect");
    let accepted = within("accept", b.accept()).await.expect("accept node-a");
    assert_eq!(accepted.name, "node-a");
    exchange_frame(&dialed.conn, &accepted.conn).await;
}
