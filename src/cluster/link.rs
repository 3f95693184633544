//! One peer connection, from hello to close: each side opens a unidirectional stream and
//! writes its [`Hello`] first, reads the peer's, hands it to the core (which checks it and
//! may prefer another connection to the same peer), then runs the four stream loops of
//! [`super::streams`] until one fails, and tells the core the link is down.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::core::{
    Connection, PeerError, Refusal, CLOSE_CLOCK, CLOSE_DUPLICATE, CLOSE_LEAVING, CLOSE_PROTOCOL,
    CLOSE_REFUSED,
};
use super::{streams, Cluster};
use crate::replication::frame::{self, Frame, FrameError, Hello};
use crate::replication::transport::PeerConn;

/// How long a link whose stream ended waits for the connection's close to say why.
const CLOSE_GRACE: Duration = Duration::from_millis(300);

/// How long a peer has to send its hello once connected.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a link ended, for the "peer down" log line.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("sending: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("receiving: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("malformed frame from the peer: {0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Peer(#[from] PeerError),
    #[error("the peer closed its stream")]
    StreamEnded,
    #[error("no hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
}

/// Whether a peer's clock is too far from ours to replicate with: its hello's wall time
/// against ours when it arrived. Beyond `max_skew` one side's versions are refused by the
/// other's skew guard, write after write, for as long as the offset lasts (for ever, with a
/// misconfigured clock), so the link is refused at once, on both sides, with the offset
/// named. A hello takes one network delay to arrive, which makes the peer look up to that
/// much behind: negligible against a skew limit of seconds.
pub fn clock_refusal(
    peer: &str,
    us: &str,
    peer_wall_ms: u64,
    our_wall_ms: u64,
    max_skew: Duration,
) -> Option<String> {
    let offset_ms = peer_wall_ms as i128 - our_wall_ms as i128;
    if offset_ms.unsigned_abs() <= max_skew.as_millis() {
        return None;
    }
    let (dir, abs) = if offset_ms > 0 {
        ("ahead of", offset_ms)
    } else {
        ("behind", -offset_ms)
    };
    // Names, not "the peer": the peer logs this reason too, as the one it was refused for.
    Some(format!(
        "{peer}'s clock is {}.{:03} s {dir} {us}'s, more than --max-clock-skew ({max_skew:?}); \
         fix the clocks (NTP): replicating across that offset would refuse one side's writes",
        abs / 1000,
        abs % 1000
    ))
}

/// Runs one connection to its end. Returns whether it was registered as the peer's
/// connection (a dial that never got that far backs off).
pub async fn run(cl: Arc<Cluster>, pc: PeerConn, dialed_by_me: bool) -> bool {
    let conn = pc.conn.clone();
    let addr = conn.remote_address();
    let link = cl.new_link_id();
    let (ours, theirs, send, recv, buf) = match handshake(&cl, &pc).await {
        Ok(parts) => parts,
        Err(e) => {
            match conn.close_reason() {
                // The peer refused us (a node id clash, say) and said why: that must be seen.
                Some(quinn::ConnectionError::ApplicationClosed(c))
                    if c.error_code == CLOSE_REFUSED.into()
                        || c.error_code == CLOSE_CLOCK.into() =>
                {
                    tracing::error!(node = %cl.name, peer = %pc.name, %addr, "the peer refused this node: {}", String::from_utf8_lossy(&c.reason));
                    if c.error_code == CLOSE_CLOCK.into() {
                        let now_ms = cl.now_ms();
                        cl.core().clock_refused_by(&pc.name, now_ms);
                    }
                }
                // In TLS 1.3 the dialer's handshake is complete before the peer has checked
                // its certificate: a refusal of it arrives here, as a TLS alert (0x100-0x1ff,
                // RFC 9001 section 4.8) with rustls' reason.
                Some(quinn::ConnectionError::ConnectionClosed(c))
                    if (0x100..0x200).contains(&u64::from(c.error_code)) =>
                {
                    tracing::error!(node = %cl.name, peer = %pc.name, %addr, "the peer refused this node's certificate: {} (check it with `meshcached certs list`; the peer must trust its CA)", refusal_reason(&c));
                }
                _ => {
                    tracing::debug!(node = %cl.name, peer = %pc.name, %addr, "peer connection ended before its hello: {e}");
                }
            }
            conn.close(CLOSE_PROTOCOL.into(), b"no hello");
            return false;
        }
    };
    let node_id = theirs.node_id;
    let their_flags = theirs.flags;
    // Registered before the core hears of it, so that its events can name it.
    cl.conns().insert(link, conn.clone());
    let now_ms = cl.now_ms();
    let conn_info = Connection {
        link,
        cert_name: &pc.name,
        dialed_by_me,
        addr,
    };
    let up = cl.with(|c| c.link_up(conn_info, &ours, theirs, now_ms));
    let up = match up {
        Ok(up) => up,
        Err(refusal) => {
            cl.conns().remove(&link);
            log_refusal(&cl, &pc.name, addr, &refusal);
            conn.close(refusal.code().into(), refusal.reason().as_bytes());
            return false;
        }
    };
    if up.restarted {
        tracing::info!(node = %cl.name, peer = %up.peer, %addr, "peer restarted; up again");
    } else if up.replaced.is_some() {
        tracing::debug!(node = %cl.name, peer = %up.peer, %addr, "peer connection replaced (simultaneous dial)");
    } else {
        tracing::info!(node = %cl.name, peer = %up.peer, %addr, node_id, "peer up");
    }
    let counters = cl.core().peer_counters(&up.peer);
    cl.gossip_link_up(&up.peer, &conn, their_flags);
    let reason = tokio::select! {
        r = super::gossip::recv(&cl, &pc.name, &conn) => r,
        r = streams::send_live(&cl, link, &counters, send) => r,
        r = streams::recv_live(&cl, link, &counters, recv, buf) => r,
        r = streams::send_snapshots(&cl, link, &conn) => r,
        r = streams::recv_snapshots(&cl, link, &conn) => r,
    };
    cl.conns().remove(&link);
    cl.gossip_link_down(&up.peer, &conn);
    if conn.close_reason().is_none() {
        // A stream may end just before the peer's close arrives (its leaving, say): give
        // the close a moment, so that the link's end is told for what it is.
        let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
    }
    let (reason, mut ending) = describe(reason.err().as_ref(), &conn);
    if cl.gossip.leaving() && matches!(ending, Ending::Failed) {
        // This node told the cluster it leaves: peers forget it and close their links.
        ending = Ending::Leaving;
    }
    let now_ms = cl.now_ms();
    // A peer that announced its leaving (its graceful shutdown closes with CLOSE_LEAVING)
    // is forgotten; any other end makes it suspect (see `peers::members`).
    let registered = if matches!(ending, Ending::Left) {
        cl.with(|c| c.link_left(link, now_ms))
    } else {
        cl.with(|c| c.link_down(link, now_ms))
    };
    if registered {
        let peer = &up.peer;
        match ending {
            Ending::Replaced => {
                tracing::debug!(node = %cl.name, %peer, %addr, "peer connection closed: {reason}")
            }
            Ending::Left => {
                tracing::info!(node = %cl.name, %peer, %addr, "peer left: {reason}")
            }
            Ending::Leaving => {
                tracing::info!(node = %cl.name, %peer, %addr, "link closed: this node is leaving")
            }
            Ending::Failed => {
                tracing::warn!(node = %cl.name, %peer, %addr, "peer down: {reason}")
            }
        }
    }
    conn.close(CLOSE_PROTOCOL.into(), reason.as_bytes());
    true
}

/// What a peer's TLS refusal says: rustls' text, or the alert's code when it sent none.
fn refusal_reason(close: &quinn::ConnectionClose) -> String {
    if close.reason.is_empty() {
        close.error_code.to_string()
    } else {
        String::from_utf8_lossy(&close.reason).into_owned()
    }
}

fn log_refusal(cl: &Cluster, peer: &str, addr: std::net::SocketAddr, refusal: &Refusal) {
    match refusal {
        Refusal::Clock(why) => {
            tracing::error!(node = %cl.name, %peer, %addr, "refusing peer: {why}")
        }
        Refusal::Protocol(why) => {
            tracing::warn!(node = %cl.name, %peer, %addr, "refusing peer: {why}")
        }
        Refusal::Duplicate => {}
        Refusal::ToSelf { imposter } => {
            if *imposter {
                tracing::error!(node = %cl.name, %addr, "another running node uses this node's name; every node needs its own name and certificate");
            }
        }
        Refusal::IdClash { id, holder } => {
            tracing::error!(node = %cl.name, %peer, %addr, "refusing peer: node id {id} is already taken by {holder:?}; give each node a distinct --node-id");
        }
    }
}

/// How a link ended, for the level of its log line.
enum Ending {
    /// The peer kept another connection to us instead: routine.
    Replaced,
    /// The peer is shutting down gracefully.
    Left,
    /// This node closed it: it is shutting down (the only local close of a registered
    /// link; a replaced one is no longer registered when it ends).
    Leaving,
    Failed,
}

/// What the log line says about a link's end: the peer's own close reason when it gave one.
fn describe(e: Option<&LinkError>, conn: &quinn::Connection) -> (String, Ending) {
    match conn.close_reason() {
        Some(quinn::ConnectionError::LocallyClosed) => (String::new(), Ending::Leaving),
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            let ending = if c.error_code == CLOSE_DUPLICATE.into() {
                Ending::Replaced
            } else if c.error_code == CLOSE_LEAVING.into() {
                Ending::Left
            } else {
                Ending::Failed
            };
            let reason = String::from_utf8_lossy(&c.reason);
            (format!("the peer closed the connection: {reason}"), ending)
        }
        Some(other) => (other.to_string(), Ending::Failed),
        None => (
            e.map_or_else(|| "closed".to_string(), ToString::to_string),
            Ending::Failed,
        ),
    }
}

/// Our hello, the peer's, and the live streams.
type Handshake = (Hello, Hello, quinn::SendStream, quinn::RecvStream, BytesMut);

/// Sends our hello and reads the peer's (the core checks it).
async fn handshake(cl: &Cluster, pc: &PeerConn) -> Result<Handshake, LinkError> {
    let now_ms = cl.now_ms();
    let ours = cl.core().hello(&pc.name, now_ms);
    let mut out = BytesMut::new();
    frame::encode(&Frame::Hello(ours.clone()), &mut out);
    let mut send = pc.conn.open_uni().await?;
    send.write_all(&out).await?;
    let read_hello = async {
        let mut recv = pc.conn.accept_uni().await?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            if let Some(f) = frame::decode(&mut buf)? {
                return Ok::<_, LinkError>((f, recv, buf));
            }
            match recv.read_chunk(64 << 10, true).await? {
                Some(chunk) => buf.extend_from_slice(&chunk.bytes),
                None => return Err(LinkError::StreamEnded),
            }
        }
    };
    let (first, recv, buf) = tokio::time::timeout(HELLO_TIMEOUT, read_hello)
        .await
        .map_err(|_| LinkError::HelloTimeout)??;
    let Frame::Hello(theirs) = first else {
        return Err(LinkError::Peer(PeerError::Protocol(
            "the first frame is not a hello".into(),
        )));
    };
    Ok((ours, theirs, send, recv, buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_clock_beyond_the_skew_limit_is_refused_naming_the_offset() {
        let skew = Duration::from_secs(5);
        let now = 1_800_000_000_000;
        let check = |peer_ms| clock_refusal("b", "a", peer_ms, now, skew);
        assert_eq!(check(now + 3_000), None, "3 s ahead");
        assert_eq!(check(now - 5_000), None, "at the limit");
        let ahead = check(now + 3_600_250).expect("an hour ahead");
        assert!(
            ahead.starts_with("b's clock is 3600.250 s ahead of a's"),
            "{ahead}"
        );
        let behind = check(now - 7_000).expect("7 s behind");
        assert!(
            behind.starts_with("b's clock is 7.000 s behind a's"),
            "{behind}"
        );
    }
}
