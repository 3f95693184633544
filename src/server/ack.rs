//! `--ack-replicas N` on the client path (DESIGN.md section 7): a write's answer is held
//! until N peers acknowledged its entry of the replication log, or replaced by an error
//! once `--ack-timeout` has passed.
//!
//! Answers are written to the connection's buffer as usual; a write's answer (or, under
//! noreply and quiet, the empty place where it would be) is only remembered as a range of
//! that buffer with its log sequence. Before the buffer goes out, the connection waits
//! once for the highest sequence it holds (a pipelined batch pays one wait, not one per
//! command, and answers stay in order); whatever is still unacknowledged when the time is
//! up has its range replaced by the error. Nothing blocks a worker thread: the wait is a
//! `watch` on what N peers acknowledged ([`crate::cluster::acks::AckQuorum`] decides it),
//! woken by the cluster thread as acknowledgements arrive. Commands that wrote nothing
//! (a miss, `NOT_STORED`, `EXISTS`, a read) append nothing to the log and wait for nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::watch;

use crate::cluster::outbox::Outbox;
use crate::cluster::ClusterCounters;
use crate::protocol::{self, ErrorReply};

/// What a connection needs to hold writes' answers for their peers.
pub struct AckGate {
    outbox: Arc<Outbox>,
    /// The highest sequence of our log that N distinct peers acknowledged.
    reached: watch::Receiver<u64>,
    timeout: Duration,
    counters: Arc<ClusterCounters>,
}

/// One write's answer, waiting: `buf[start..end]` of the connection's answer buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    start: usize,
    end: usize,
    seq: u64,
    reply: ErrorReply,
}

/// The writes' answers of the connection's current batch that wait for their peers.
#[derive(Debug, Default)]
pub struct HeldAnswers {
    held: Vec<Held>,
}

impl AckGate {
    pub fn new(
        outbox: Arc<Outbox>,
        reached: watch::Receiver<u64>,
        timeout: Duration,
        counters: Arc<ClusterCounters>,
    ) -> AckGate {
        AckGate {
            outbox,
            reached,
            timeout,
            counters,
        }
    }

    /// Call before running a command: forgets what this thread appended before it.
    pub fn before_command(&self) {
        let _ = self.outbox.take_appended_here();
    }

    /// Call after running a command whose answer went to `buf[start..]`: if it wrote, its
    /// answer waits for its peers.
    pub fn after_command(
        &self,
        held: &mut HeldAnswers,
        reply: ErrorReply,
        start: usize,
        end: usize,
    ) {
        if let Some(seq) = self.outbox.take_appended_here() {
            held.held.push(Held {
                start,
                end,
                seq,
                reply,
            });
        }
    }

    /// Waits until N peers hold every write in `held` (or `--ack-timeout` passes), then
    /// replaces the answers of the writes they do not hold by the error. Call before `buf`
    /// is written out.
    pub async fn settle(&self, held: &mut HeldAnswers, buf: &mut BytesMut) {
        let Some(newest) = held.held.iter().map(|h| h.seq).max() else {
            return;
        };
        let mut reached = self.reached.clone();
        let waited = tokio::time::timeout(self.timeout, reached.wait_for(|r| *r >= newest)).await;
        let reached = match waited {
            Ok(Ok(r)) => *r,
            // Timed out (or the cluster is gone): what the peers hold by now.
            _ => *self.reached.borrow(),
        };
        let waits = held.held.len() as u64;
        let failed = held.rewrite(reached, buf);
        self.counters.ack_waits.fetch_add(waits, Ordering::Relaxed);
        if failed > 0 {
            self.counters
                .ack_timeouts
                .fetch_add(failed, Ordering::Relaxed);
        }
    }
}

impl HeldAnswers {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Keeps the answers of the writes at or below `reached` (held by N peers) and replaces
    /// the others' by the error; returns how many it replaced. Empties `self`.
    fn rewrite(&mut self, reached: u64, buf: &mut BytesMut) -> u64 {
        let held = std::mem::take(&mut self.held);
        let failed: Vec<&Held> = held.iter().filter(|h| h.seq > reached).collect();
        if failed.is_empty() {
            return 0;
        }
        let mut out = BytesMut::with_capacity(buf.len() + failed.len() * 96);
        let mut at = 0;
        for h in &failed {
            out.extend_from_slice(&buf[at..h.start]);
            protocol::encode_ack_timeout(h.reply, &mut out);
            at = h.end;
        }
        out.extend_from_slice(&buf[at..]);
        *buf = out;
        failed.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(start: usize, end: usize, seq: u64) -> Held {
        Held {
            start,
            end,
            seq,
            reply: ErrorReply::Line,
        }
    }

    #[test]
    fn answers_of_unacknowledged_writes_become_errors_in_place() {
        // Three pipelined answers: STORED (seq 4), a read's answer (no write), a noreply
        // write (seq 6, nothing written), then STORED (seq 7).
        let mut buf = BytesMut::from(&b"STORED\r\nEND\r\nSTORED\r\n"[..]);
        let mut h = HeldAnswers {
            held: vec![held(0, 8, 4), held(13, 13, 6), held(13, 21, 7)],
        };
        assert_eq!(h.rewrite(5, &mut buf), 2);
        let err = format!("SERVER_ERROR {}\r\n", protocol::ACK_TIMEOUT_TEXT);
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            format!("STORED\r\nEND\r\n{err}{err}")
        );
        assert!(h.is_empty());
    }

    #[test]
    fn acknowledged_writes_keep_their_answers() {
        let mut buf = BytesMut::from(&b"STORED\r\n"[..]);
        let mut h = HeldAnswers {
            held: vec![held(0, 8, 4)],
        };
        assert_eq!(h.rewrite(4, &mut buf), 0);
        assert_eq!(&buf[..], b"STORED\r\n");
    }
}
