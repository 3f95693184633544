//! A link's four stream loops, which only move bytes between QUIC and the core: the live
//! stream each way, and snapshot streams each way (one stream per snapshot, while the live
//! stream goes on). Every decision is the core's ([`super::core`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::core::{Flow, LinkId};
use super::link::LinkError;
use super::{Cluster, PeerCounters};
use crate::replication::frame;

/// Writes what the core has for the live stream, and waits for more.
pub async fn send_live(
    cl: &Cluster,
    link: LinkId,
    counters: &PeerCounters,
    mut send: quinn::SendStream,
) -> Result<(), LinkError> {
    let mut changed = cl.changed.subscribe();
    let mut scratch = BytesMut::with_capacity(64 << 10);
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        changed.borrow_and_update();
        let now = cl.now_ms();
        if let Some(t) = cl.with(|c| c.poll_live(link, now)) {
            t.encode(&mut scratch, &mut chunks);
            let bytes: usize = chunks.iter().map(|c| c.len()).sum();
            send.write_all_chunks(&mut chunks).await?;
            chunks.clear();
            counters
                .bytes_sent
                .fetch_add(bytes as u64, Ordering::Relaxed);
            continue;
        }
        let (cursor, until_ms) = cl.core().live_wait(link);
        let sleep = until_ms.map(|t| Duration::from_millis(t.saturating_sub(cl.now_ms())));
        tokio::select! {
            _ = cl.outbox.wait_beyond(cursor.unwrap_or(u64::MAX)), if cursor.is_some() => {}
            _ = tokio::time::sleep(sleep.unwrap_or_default()), if sleep.is_some() => {}
            r = changed.changed() => {
                if r.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Reads the peer's live stream into the core; a batch stalled by the clock-skew guard
/// holds the stream (nothing more is read) until the core lets it through.
pub async fn recv_live(
    cl: &Cluster,
    link: LinkId,
    counters: &PeerCounters,
    mut recv: quinn::RecvStream,
    mut buf: BytesMut,
) -> Result<(), LinkError> {
    let mut decoder = frame::Decoder::default();
    loop {
        while let Some(f) = decoder.decode(&mut buf)? {
            let now = cl.now_ms();
            let mut flow = cl.with(|c| c.handle_live(link, f, now))?;
            while flow == Flow::Stalled {
                let at = cl.core().live_deadline(link).unwrap_or(now);
                let wait = at.saturating_sub(cl.now_ms());
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let now = cl.now_ms();
                flow = cl.with(|c| c.retry_stalled(link, now))?;
            }
        }
        match recv.read_chunk(256 << 10, true).await? {
            Some(chunk) => {
                counters
                    .bytes_received
                    .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
                buf.extend_from_slice(&chunk.bytes);
            }
            None => return Err(LinkError::StreamEnded),
        }
    }
}

/// Streams the snapshots the core walks, each on a stream of its own; QUIC flow control
/// paces the walk to what the peer takes.
pub async fn send_snapshots(
    cl: &Cluster,
    link: LinkId,
    conn: &quinn::Connection,
) -> Result<(), LinkError> {
    let mut changed = cl.changed.subscribe();
    let mut stream: Option<quinn::SendStream> = None;
    loop {
        changed.borrow_and_update();
        let now = cl.now_ms();
        let Some(piece) = cl.with(|c| c.poll_snapshot(link, now)) else {
            if changed.changed().await.is_err() {
                return Ok(());
            }
            continue;
        };
        if piece.open {
            stream = Some(conn.open_uni().await?);
        }
        let Some(s) = stream.as_mut() else {
            // The core opens every snapshot with its first piece.
            return Err(LinkError::StreamEnded);
        };
        let mut chunks = vec![piece.data];
        frame::split_into_parts(&mut chunks);
        s.write_all_chunks(&mut chunks).await?;
        if piece.finish {
            s.finish().map_err(|_| LinkError::StreamEnded)?;
            stream = None;
        }
        // Let the live stream and the other links run between pieces.
        tokio::task::yield_now().await;
    }
}

/// Applies every snapshot the peer streams to us, one at a time, for as long as the link
/// lives. Applying a piece runs on the link's thread between reads; a separate applier
/// thread was tried and made a 1M-item join slower on two cores (three busy threads on
/// two cores, and a handoff).
pub async fn recv_snapshots(
    cl: &Cluster,
    link: LinkId,
    conn: &quinn::Connection,
) -> Result<(), LinkError> {
    loop {
        let mut recv = conn.accept_uni().await?;
        let mut buf = BytesMut::with_capacity(1 << 20);
        let mut decoder = frame::Decoder::default();
        'stream: loop {
            loop {
                let Some(f) = decoder.decode(&mut buf)? else {
                    break;
                };
                let wire = decoder.take_wire();
                let now = cl.now_ms();
                if cl.with(|c| c.handle_snapshot(link, f, wire, now))? {
                    break 'stream;
                }
            }
            match recv.read_chunk(1 << 20, true).await? {
                Some(chunk) => buf.extend_from_slice(&chunk.bytes),
                None => return Err(LinkError::StreamEnded),
            }
        }
    }
}
