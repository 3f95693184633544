//! A link's sender: this node's log to one peer, from the position the peer asked for, with
//! a snapshot of the whole store when the log no longer reaches back that far (a new
//! peer, a peer whose position is from another run of ours, a peer that fell behind while
//! connected). The snapshot goes on a stream of its own while the live stream goes on from
//! the log position the snapshot started at: last-writer-wins makes the overlap harmless.
//!
//! The same stream carries this node's acknowledgements of what it applied of the peer's
//! log, the member list, status changes and the sync plan's requests ([`Ctl::Send`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::link::LinkError;
use super::outbox::Outbox;
use super::{snapshot, Cluster, Ctl, PeerCounters};
use crate::replication::frame::{self, Frame};
use crate::replication::log::RunId;

/// About how many bytes of log entries go in one batch frame.
const BATCH_BYTES: usize = 64 << 10;
/// The most often an acknowledgement is sent (a busy stream is acknowledged at this pace;
/// an idle one once, this long after its last batch at the latest).
const ACK_INTERVAL: Duration = Duration::from_millis(10);

/// What a link's tasks share.
pub struct Link<'a> {
    pub cl: &'a Cluster,
    pub peer: &'a str,
    pub conn: &'a quinn::Connection,
    pub counters: &'a PeerCounters,
    pub applied: &'a Notify,
}

/// Where a peer stands in our log: its hello's, or a later `Start`'s.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    pub run: RunId,
    pub seq: u64,
    /// The peer's store is empty: unless it has part of this run, it lacks everything.
    pub empty: bool,
}

/// Where the sender stands (sans-IO): the log position, whether a snapshot is running or
/// due, and when to tell the peer it is synced.
#[derive(Debug, Default)]
pub struct SendPlan {
    /// The last sequence sent; `None` while the peer holds our stream.
    cursor: Option<u64>,
    /// `Synced` is due once the cursor reaches this and no snapshot is pending.
    target: Option<u64>,
    running: bool,
    again: bool,
    snapshots_done: u32,
}

impl SendPlan {
    /// The peer has `p.seq` of our run `p.run` (or of another run): go on from there if the
    /// log still holds what follows, else from the newest entry with a snapshot for the
    /// rest. Returns whether to start a snapshot now.
    pub fn position(&mut self, p: Position, ours: RunId, last: u64, oldest: u64) -> bool {
        // Of another run, the peer has nothing of this one: all of it is needed; and an
        // empty peer also lacks what this node held before this run (its own earlier
        // writes, and everything it got from others), which only a snapshot carries.
        let from = if p.run == ours { p.seq.min(last) } else { 0 };
        self.target = Some(last);
        if from + 1 >= oldest && (p.run == ours || !p.empty) {
            self.cursor = Some(from);
            false
        } else {
            self.cursor = Some(last);
            self.want_snapshot()
        }
    }

    /// The peer asked for a snapshot: it has nothing, and takes the rest from the log.
    pub fn snapshot_requested(&mut self, last: u64) -> bool {
        self.cursor = Some(last);
        self.target = Some(last);
        self.want_snapshot()
    }

    /// The log dropped entries the peer had not been sent: send what is still held, and a
    /// snapshot for what is not.
    pub fn lagged(&mut self, oldest: u64) -> bool {
        self.cursor = Some(oldest.saturating_sub(1));
        self.want_snapshot()
    }

    fn want_snapshot(&mut self) -> bool {
        if self.running {
            // The running walk may have passed what is missing: another one after it.
            self.again = true;
            false
        } else {
            self.running = true;
            true
        }
    }

    /// A snapshot finished; returns whether to start another.
    pub fn snapshot_done(&mut self) -> bool {
        self.snapshots_done += 1;
        if self.again {
            self.again = false;
            true
        } else {
            self.running = false;
            false
        }
    }

    /// The last sequence sent; `None` while the peer holds our stream.
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    pub fn sent(&mut self, seq: u64) {
        self.cursor = Some(seq);
    }

    /// `Synced` is due: returns the number of snapshots it must announce.
    pub fn synced_due(&mut self) -> Option<u32> {
        let reached = matches!((self.cursor, self.target), (Some(c), Some(t)) if c >= t);
        if reached && !self.running {
            self.target = None;
            Some(self.snapshots_done)
        } else {
            None
        }
    }
}

type SnapshotRun<'a> = Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send + 'a>>;

pub async fn send_loop(
    link: &Link<'_>,
    mut send: quinn::SendStream,
    mut ctl: mpsc::Receiver<Ctl>,
    position: Option<Position>,
) -> Result<(), LinkError> {
    let cl = link.cl;
    let outbox: &Outbox = &cl.outbox;
    let mut plan = SendPlan::default();
    let mut snapshot: Option<SnapshotRun<'_>> = None;
    // The token of the peer's latest snapshot request: every walk started after it echoes
    // it, telling the peer that the walk saw all it had sent us before asking.
    let mut token = 0;
    if let Some(p) = position {
        if reposition(&mut plan, outbox, p) {
            snapshot = Some(start_snapshot(link, OFF_THE_LOG, token));
        }
    }
    let mut members = cl.members.subscribe();
    let mut members_due = true;
    let mut status = cl.status.subscribe();
    let mut status_due = false;
    let mut scratch = BytesMut::with_capacity(64 << 10);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut acked = link.counters.have().1;
    let mut last_ack = Instant::now();
    loop {
        if members_due {
            members_due = false;
            members.borrow_and_update();
            let list = cl.table().members();
            write_frame(&mut send, &Frame::Members(list)).await?;
        }
        if status_due {
            status_due = false;
            status.borrow_and_update();
            let (ready, load) = cl.status_now();
            write_frame(&mut send, &Frame::Status { ready, load }).await?;
        }
        let (run, have) = link.counters.have();
        if have > acked && last_ack.elapsed() >= ACK_INTERVAL && link.counters.holds_have() {
            write_frame(
                &mut send,
                &Frame::Ack {
                    run_id: run,
                    seq: have,
                },
            )
            .await?;
            acked = have;
            last_ack = Instant::now();
        }
        if let Some(snapshots) = plan.synced_due() {
            write_frame(&mut send, &Frame::Synced { snapshots }).await?;
        }
        if let Some(cursor) = plan.cursor() {
            match outbox.read(cursor, BATCH_BYTES) {
                Err(lagged) => {
                    fell_behind(link, cursor, lagged.oldest);
                    if plan.lagged(lagged.oldest) {
                        snapshot = Some(start_snapshot(
                            link,
                            "it fell behind the replication log",
                            token,
                        ));
                    }
                    continue;
                }
                Ok(entries) if !entries.is_empty() => {
                    let last = entries.last().map_or(cursor, |e| e.seq);
                    frame::encode_batch_chunks(
                        outbox.run_id(),
                        &entries,
                        &mut scratch,
                        &mut chunks,
                    );
                    let bytes: usize = chunks.iter().map(|c| c.len()).sum();
                    send.write_all_chunks(&mut chunks).await?;
                    chunks.clear();
                    plan.sent(last);
                    link.counters.sent_seq.store(last, Ordering::Relaxed);
                    link.counters
                        .bytes_sent
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    continue;
                }
                Ok(_) => {}
            }
        }
        let ack_pending = link.counters.have().1 > acked && link.counters.holds_have();
        let cursor = plan.cursor();
        tokio::select! {
            _ = outbox.wait_beyond(cursor.unwrap_or(u64::MAX)), if cursor.is_some() => {}
            _ = link.applied.notified(), if !ack_pending => {}
            _ = tokio::time::sleep_until(last_ack + ACK_INTERVAL), if ack_pending => {}
            changed = members.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                members_due = true;
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                status_due = true;
            }
            done = async { snapshot.as_mut().expect("guarded by is_some").await }, if snapshot.is_some() => {
                done?;
                snapshot = None;
                if plan.snapshot_done() {
                    snapshot = Some(start_snapshot(link, "writes were dropped from the log during the last one", token));
                } else if let Some(p) = cl.table().peer_mut(link.peer) {
                    p.needs_resync = false;
                }
            }
            c = ctl.recv() => match c {
                None => return Ok(()),
                Some(Ctl::Send(f)) => write_frame(&mut send, &f).await?,
                Some(Ctl::From(run, seq)) => {
                    // A Start comes after the peer took a donor's snapshot: not empty.
                    let p = Position { run, seq, empty: false };
                    if reposition(&mut plan, outbox, p) {
                        snapshot = Some(start_snapshot(link, OFF_THE_LOG, token));
                    }
                }
                Some(Ctl::Snapshot(asked)) => {
                    token = asked;
                    if plan.snapshot_requested(outbox.last_seq()) {
                        snapshot = Some(start_snapshot(link, "it asked for one", token));
                    }
                }
            },
        }
    }
}

/// Why a snapshot follows a position the log does not reach back to.
const OFF_THE_LOG: &str = "its position is older than this node's replication log";

/// [`SendPlan::position`] against the log as it stands; true: start a snapshot.
fn reposition(plan: &mut SendPlan, outbox: &Outbox, p: Position) -> bool {
    plan.position(p, outbox.run_id(), outbox.last_seq(), outbox.oldest_seq())
}

fn start_snapshot<'a>(link: &'a Link<'a>, why: &'static str, token: u64) -> SnapshotRun<'a> {
    Box::pin(snapshot::send_snapshot(
        link.cl, link.peer, link.conn, why, token,
    ))
}

async fn write_frame(send: &mut quinn::SendStream, f: &Frame) -> Result<(), LinkError> {
    let mut out = BytesMut::new();
    frame::encode(f, &mut out);
    send.write_all(&out).await?;
    Ok(())
}

fn fell_behind(link: &Link<'_>, cursor: u64, oldest: u64) {
    let cl = link.cl;
    cl.counters.resyncs_needed.fetch_add(1, Ordering::Relaxed);
    if let Some(p) = cl.table().peer_mut(link.peer) {
        p.needs_resync = true;
    }
    tracing::warn!(
        node = %cl.name,
        peer = %link.peer,
        cursor,
        oldest,
        "peer fell behind the replication log (raise --repl-backlog): it gets every write still in the log and a snapshot for the rest"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: RunId = RunId(7);

    fn at(run: RunId, seq: u64) -> Position {
        Position {
            run,
            seq,
            empty: false,
        }
    }

    #[test]
    fn a_position_in_the_log_is_a_delta() {
        let mut p = SendPlan::default();
        assert!(!p.position(at(OURS, 40), OURS, 100, 10));
        assert_eq!(p.cursor(), Some(40));
        assert_eq!(p.synced_due(), None);
        p.sent(100);
        assert_eq!(p.synced_due(), Some(0));
        assert_eq!(p.synced_due(), None, "once");
        // Another run's position: the whole log, while it reaches back to the start.
        assert!(!p.position(at(RunId(3), 500), OURS, 100, 1));
        assert_eq!(p.cursor(), Some(0));
    }

    #[test]
    fn a_position_off_the_log_is_a_snapshot_then_the_log_from_its_start() {
        let mut p = SendPlan::default();
        assert!(p.position(at(OURS, 5), OURS, 100, 10));
        assert_eq!(p.cursor(), Some(100));
        assert_eq!(p.synced_due(), None, "not before the snapshot is done");
        assert!(!p.snapshot_done());
        assert_eq!(p.synced_due(), Some(1));
        // An empty peer with a position of another run: a snapshot, even with the whole
        // log at hand (it lacks what this node held before its run began).
        let empty = Position {
            run: RunId(0),
            seq: 0,
            empty: true,
        };
        assert!(!p.snapshot_done());
        assert!(p.position(empty, OURS, 100, 1));
        assert!(
            !p.position(at(OURS, 0), OURS, 100, 1),
            "a peer with part of this run"
        );
        assert!(!p.snapshot_done());
        // A new run of the peer whose log was trimmed: a snapshot too.
        assert!(p.position(at(RunId(9), 0), OURS, 120, 50));
    }

    #[test]
    fn falling_behind_during_a_snapshot_runs_another() {
        let mut p = SendPlan::default();
        assert!(p.snapshot_requested(10));
        assert!(!p.lagged(30), "one at a time");
        assert_eq!(
            p.cursor(),
            Some(29),
            "what the log still holds is still sent"
        );
        assert!(p.snapshot_done(), "the second one starts");
        p.sent(40);
        assert_eq!(p.synced_due(), None);
        assert!(!p.snapshot_done());
        assert_eq!(p.synced_due(), Some(2));
    }

    #[test]
    fn a_held_stream_sends_nothing_until_told() {
        let mut p = SendPlan::default();
        assert_eq!(p.cursor(), None);
        assert_eq!(p.synced_due(), None);
    }
}
