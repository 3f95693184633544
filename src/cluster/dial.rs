//! Accepting peers and dialing them: the accept loop takes every authenticated incoming
//! connection to [`link::run`]; the dial loop asks the peer table what is due (members
//! without a connection, seed addresses not yet identified) and dials it, forever, with the
//! table's jittered exponential backoff between attempts.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::link;
use super::peers::{Dial, DialEnd};
use super::Cluster;
use crate::replication::transport::{PeerConn, PeerEndpoint, TransportError, DIAL_TIMEOUT};

/// The dial loop's longest sleep when nothing wakes it (backoff deadlines are checked then).
const DIAL_TICK: Duration = Duration::from_millis(50);

/// Refused handshakes are logged at most this often (with a count of those not logged):
/// anyone who can reach the UDP port can cause them.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

pub async fn accept_loop(cl: Arc<Cluster>, endpoint: Arc<PeerEndpoint>) {
    let mut last_log: Option<tokio::time::Instant> = None;
    let mut unlogged = 0u64;
    loop {
        match endpoint.accept().await {
            Ok(pc) => {
                tokio::spawn(link::run(cl.clone(), pc, false));
            }
            Err(TransportError::Closed) => return,
            Err(e) => {
                cl.counters.peers_refused.fetch_add(1, Ordering::Relaxed);
                if last_log.is_some_and(|t| t.elapsed() < REFUSAL_LOG_INTERVAL) {
                    unlogged += 1;
                    continue;
                }
                last_log = Some(tokio::time::Instant::now());
                if unlogged > 0 {
                    tracing::warn!(node = %cl.name, "refused a peer connection: {e} ({unlogged} more refused since the last report; see peers_refused in stats)");
                } else {
                    tracing::warn!(node = %cl.name, "refused a peer connection: {e}");
                }
                unlogged = 0;
            }
        }
    }
}

pub async fn dial_loop(cl: Arc<Cluster>, endpoint: Arc<PeerEndpoint>) {
    loop {
        let now = cl.hlc.clock().now_ms();
        let due = cl.core().table_mut().due(now);
        for dial in due {
            tokio::spawn(dial_one(cl.clone(), endpoint.clone(), dial));
        }
        tokio::select! {
            _ = tokio::time::sleep(DIAL_TICK) => {}
            _ = cl.dial_wake.notified() => {}
        }
    }
}

async fn dial_one(cl: Arc<Cluster>, endpoint: Arc<PeerEndpoint>, dial: Dial) {
    let outcome = match &dial {
        Dial::Member { name, addr } => {
            match tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect(*addr, name)).await {
                Ok(Ok(pc)) => registered(link::run(cl.clone(), pc, true).await),
                Ok(Err(e)) => {
                    if refused_by_peer(&e) {
                        tracing::error!(node = %cl.name, peer = %name, %addr, "the peer refused this node: {e}");
                    } else {
                        tracing::debug!(node = %cl.name, peer = %name, %addr, "dial failed: {e}");
                    }
                    DialEnd::Failed
                }
                Err(_) => {
                    tracing::debug!(node = %cl.name, peer = %name, %addr, "dial unanswered within {DIAL_TIMEOUT:?}");
                    DialEnd::Unanswered
                }
            }
        }
        Dial::Seed { index, addr } => match dial_seed(&endpoint, addr).await {
            Ok(pc) => {
                if pc.name == cl.name {
                    tracing::debug!(node = %cl.name, %addr, "seed address is this node itself");
                    pc.conn
                        .close(super::core::CLOSE_REFUSED.into(), b"connected to itself");
                    cl.core().table_mut().seed_is_self(*index);
                    DialEnd::Failed
                } else {
                    cl.core().table_mut().seed_named(*index, &pc.name);
                    registered(link::run(cl.clone(), pc, true).await)
                }
            }
            Err((e, unanswered)) => {
                if cl.core().table_mut().seed_failed(*index, e.clone()) {
                    tracing::warn!(node = %cl.name, peer = %addr, "cannot reach peer (retrying): {e}");
                } else {
                    tracing::debug!(node = %cl.name, peer = %addr, "seed dial failed (retrying): {e}");
                }
                if unanswered {
                    DialEnd::Unanswered
                } else {
                    DialEnd::Failed
                }
            }
        },
    };
    let now = cl.hlc.clock().now_ms();
    cl.core().table_mut().dial_ended(&dial, outcome, now);
    cl.dial_wake.notify_one();
}

/// Whether a dial failed because the peer refused this node (its certificate), which the
/// operator must hear of, rather than because nothing answered.
fn refused_by_peer(e: &TransportError) -> bool {
    matches!(
        e,
        TransportError::HandshakeRefused { by_peer: true, .. }
            | TransportError::NoClientCertificate { .. }
    )
}

fn registered(yes: bool) -> DialEnd {
    if yes {
        DialEnd::Connected
    } else {
        DialEnd::Failed
    }
}

/// Resolves a seed address (a host name is looked up on every attempt, so that a peer that
/// moved is found again) and dials it without knowing its node name yet. The error says
/// why, and whether every address was simply unanswered.
async fn dial_seed(endpoint: &PeerEndpoint, addr: &str) -> Result<PeerConn, (String, bool)> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| (format!("cannot resolve {addr}: {e}"), false))?
        .collect();
    let mut last = (format!("{addr} resolves to no address"), false);
    for a in resolved {
        match tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect_any(a)).await {
            Ok(Ok(pc)) => return Ok(pc),
            Ok(Err(e)) => last = (e.to_string(), false),
            Err(_) => last = (format!("{a}: no answer within {DIAL_TIMEOUT:?}"), true),
        }
    }
    Err(last)
}
