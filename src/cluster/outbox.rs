//! The outbox: the replication log behind a lock, fed by the store's journal and the
//! dispatcher's flushes, read by one sender task per peer.
//!
//! A client's write pays for one short critical section (append an entry) and, only when
//! some sender is asleep, one wake-up; it never waits for the network (DESIGN.md section 5).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::clock::{Version, HLC_EPOCH_MS};
use crate::replication::log::{Entry, Lagged, Mutation, Op, ReplLog, RunId};
use crate::store::{Change, Flush};

thread_local! {
    /// The newest sequence the calling thread appended, and to which outbox (its address):
    /// see [`Outbox::take_appended_here`].
    static APPENDED: Cell<(usize, u64)> = const { Cell::new((0, 0)) };
}

pub struct Outbox {
    log: Mutex<ReplLog>,
    run_id: RunId,
    /// The newest sequence appended, readable without the lock.
    last_seq: AtomicU64,
    /// Set by a sender about to sleep; a writer that sees it wakes the senders.
    waiting: AtomicBool,
    notify: Notify,
}

impl Outbox {
    pub fn new(run_id: RunId, limit_bytes: usize) -> Self {
        Outbox {
            log: Mutex::new(ReplLog::new(run_id, limit_bytes)),
            run_id,
            last_seq: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::SeqCst)
    }

    /// A local change reported by the store's journal (under the key's lock). The key and
    /// value are copied here, once, into one allocation that both are sliced from: the
    /// store's copy may be overwritten or evicted before the senders get to it.
    pub fn record_change(&self, key: &[u8], change: Change<'_>) {
        let (version, value) = match change {
            Change::Put { value, version, .. } => (version, value),
            Change::Delete { version } => (version, &[][..]),
        };
        let mut both = Vec::with_capacity(key.len() + value.len());
        both.extend_from_slice(key);
        both.extend_from_slice(value);
        let both = Bytes::from(both);
        let op = match change {
            Change::Put { flags, exptime, .. } => Op::Put {
                value: both.slice(key.len()..),
                flags,
                exptime,
            },
            Change::Delete { .. } => Op::Delete,
        };
        self.append(Mutation {
            key: both.slice(..key.len()),
            version,
            op,
        });
    }

    /// A local `flush_all`: its version and the unix millisecond it takes effect.
    pub fn record_flush(&self, flush: Flush) {
        self.append(Mutation {
            key: Bytes::new(),
            version: flush.issued,
            op: Op::Flush { at_ms: flush.at_ms },
        });
    }

    fn append(&self, m: Mutation) {
        {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let seq = log.append(m);
            self.last_seq.store(seq, Ordering::SeqCst);
            APPENDED.with(|a| a.set((self.address(), seq)));
        }
        if self.waiting.load(Ordering::SeqCst) && self.waiting.swap(false, Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    /// The newest sequence the calling thread appended to this outbox since the last call,
    /// if it appended any: the entry a client's command wrote, for `--ack-replicas`. A
    /// worker runs each command to its end on its own thread before it runs another (the
    /// store's journal appends synchronously, under the key's lock), so what the thread
    /// appended between two calls is exactly what the command between them wrote; no
    /// operation has to carry its log position back through every dialect.
    pub fn take_appended_here(&self) -> Option<u64> {
        APPENDED.with(|a| {
            let (outbox, seq) = a.get();
            if outbox != self.address() {
                return None;
            }
            a.set((0, 0));
            Some(seq)
        })
    }

    fn address(&self) -> usize {
        self as *const Outbox as usize
    }

    /// Entries after `cursor`, about `max_bytes` of them.
    pub fn read(&self, cursor: u64, max_bytes: usize) -> Result<Vec<Entry>, Lagged> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.read(cursor, max_bytes)
    }

    /// The oldest sequence still held.
    pub fn oldest_seq(&self) -> u64 {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.oldest_seq()
    }

    pub fn bytes(&self) -> usize {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.bytes()
    }

    /// The physical time (ms since the unix epoch) of entry `seq`, if still held; for lag.
    pub fn entry_ms(&self, seq: u64) -> Option<u64> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let entry = held(&log, seq)?;
        Some(entry.mutation.version.physical_ms() + HLC_EPOCH_MS)
    }

    /// A version such that every own write at or below it is at or before entry `seq` of
    /// the log, if `seq` is still held. The log is in version order only nearly: a write
    /// takes its version under its shard's lock and joins the log a moment later, so a few
    /// writes made on other shards at the same moment (at most one per worker thread) can
    /// follow `seq` with smaller versions. The lowest version among the entries that follow
    /// closely covers them.
    pub fn acked_bound(&self, seq: u64) -> Option<Version> {
        const FOLLOWERS: usize = 64;
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let at = held(&log, seq)?;
        let followers = std::iter::successors(next_after(&log, seq), |e| next_after(&log, e.seq));
        let bound = followers
            .take(FOLLOWERS)
            .map(|e| Version(e.mutation.version.0.saturating_sub(1)))
            .fold(at.mutation.version, Version::min);
        Some(bound)
    }

    /// Returns once an entry after `cursor` exists.
    pub async fn wait_beyond(&self, cursor: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            if self.last_seq() > cursor {
                return;
            }
            notified.await;
        }
    }
}

/// The entry right after `cursor`, if the log holds one (`read` with no byte budget yields
/// a single entry).
fn next_after(log: &ReplLog, cursor: u64) -> Option<Entry> {
    log.read(cursor, 0).ok()?.into_iter().next()
}

/// Entry `seq`, if the log still holds it.
fn held(log: &ReplLog, seq: u64) -> Option<Entry> {
    next_after(log, seq.checked_sub(1)?).filter(|e| e.seq == seq)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_thread_takes_what_it_appended_and_only_that() {
        let flush = |v| Flush {
            issued: crate::clock::Version(v),
            at_ms: 0,
        };
        let (a, b) = (
            Outbox::new(RunId(1), 1 << 20),
            Outbox::new(RunId(2), 1 << 20),
        );
        assert_eq!(a.take_appended_here(), None);
        a.record_flush(flush(5));
        a.record_flush(flush(6));
        assert_eq!(b.take_appended_here(), None, "another outbox's entries");
        a.record_flush(flush(7));
        assert_eq!(a.take_appended_here(), Some(3), "the newest");
        assert_eq!(a.take_appended_here(), None, "taken");
        std::thread::scope(|s| {
            s.spawn(|| a.record_flush(flush(8)));
        });
        assert_eq!(a.take_appended_here(), None, "another thread's entry");
    }

    #[tokio::test]
    async fn a_sleeping_sender_is_woken_by_a_write() {
        let outbox = Arc::new(Outbox::new(RunId(1), 1 << 20));
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.wait_beyond(0).await })
        };
        tokio::task::yield_now().await;
        outbox.record_flush(Flush {
            issued: crate::clock::Version(5),
            at_ms: 0,
        });
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .unwrap();
        // Already beyond: returns at once.
        outbox.wait_beyond(0).await;
        let e = outbox.read(0, usize::MAX).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].mutation.op, Op::Flush { at_ms: 0 });
    }
}
