//! The replication log: a bounded ring of this node's own mutations (DESIGN.md section 5).
//!
//! Every local write appends its resulting state here; each peer has a cursor (the last
//! sequence number sent to it) and a sender task reads forward from it. Appending is the only
//! cost a client's write pays for replication. The ring is bounded in bytes
//! (`--repl-backlog`): the oldest entries go first, and a peer whose cursor falls behind the
//! oldest entry left must be resynced instead ([`Lagged`]).
//!
//! Sans-IO: no locks or tasks here; the server wraps it in a mutex and wakes the senders.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::clock::Version;

/// Bytes charged per entry beyond key and value (bookkeeping, like the store's overhead).
pub const LOG_ENTRY_OVERHEAD: usize = 64;

/// Identifies one process lifetime of a node: sequence numbers restart with it, so a peer's
/// position is only meaningful together with the run id it was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RunId(pub u64);

/// What a replicated mutation does: the resulting state, never the command (DESIGN 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        value: Bytes,
        flags: u32,
        exptime: u32,
    },
    Delete,
    /// `flush_all`, issued at the mutation's version: items older than its barrier are
    /// gone from unix millisecond `at_ms` on (0: at once); see [`crate::store::Flush`].
    Flush {
        at_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    /// Empty for a flush.
    pub key: Bytes,
    pub version: Version,
    pub op: Op,
}

impl Mutation {
    /// What the entry costs against the backlog limit.
    pub fn cost(&self) -> usize {
        let value = match &self.op {
            Op::Put { value, .. } => value.len(),
            _ => 0,
        };
        self.key.len() + value + LOG_ENTRY_OVERHEAD
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub mutation: Mutation,
}

/// A cursor that points before the oldest entry still held: the peer missed entries the
/// ring no longer has and needs a resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("position {cursor} fell off the replication log (oldest entry held: {oldest})")]
pub struct Lagged {
    pub cursor: u64,
    pub oldest: u64,
}

pub struct ReplLog {
    run_id: RunId,
    entries: VecDeque<Entry>,
    bytes: usize,
    limit: usize,
    /// The sequence number the next append gets; the first is 1, so cursor 0 means
    /// "nothing sent yet".
    next_seq: u64,
}

impl ReplLog {
    pub fn new(run_id: RunId, limit_bytes: usize) -> Self {
        Self {
            run_id,
            entries: VecDeque::new(),
            bytes: 0,
            limit: limit_bytes,
            next_seq: 1,
        }
    }

    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    /// Appends a mutation and returns its sequence number; drops the oldest entries while
    /// the ring is over its byte limit (the newest entry always stays).
    pub fn append(&mut self, mutation: Mutation) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += mutation.cost();
        self.entries.push_back(Entry { seq, mutation });
        while self.bytes > self.limit && self.entries.len() > 1 {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.mutation.cost();
            }
        }
        seq
    }

    /// The sequence number of the newest entry (0 when nothing was ever appended).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The oldest sequence number still held (`last_seq + 1` when empty).
    pub fn oldest_seq(&self) -> u64 {
        self.entries.front().map_or(self.next_seq, |e| e.seq)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries after `cursor`, up to about `max_bytes` (at least one when there is one).
    pub fn read(&self, cursor: u64, max_bytes: usize) -> Result<Vec<Entry>, Lagged> {
        let oldest = self.oldest_seq();
        if cursor + 1 < oldest {
            return Err(Lagged { cursor, oldest });
        }
        let skip = (cursor + 1 - oldest) as usize;
        // Sized up front: this runs under the log's lock, which every client write takes,
        // so no reallocation while copying out.
        let fit = max_bytes / (LOG_ENTRY_OVERHEAD + 16) + 1;
        let mut out = Vec::with_capacity(self.entries.len().saturating_sub(skip).min(fit));
        let mut bytes = 0;
        // `range`, not `iter().skip()`: skipping walks every entry before the cursor, and
        // a peer that is up to date has its cursor near the end of a full ring.
        for e in self.entries.range(skip.min(self.entries.len())..) {
            if !out.is_empty() && bytes + e.mutation.cost() > max_bytes {
                break;
            }
            bytes += e.mutation.cost();
            out.push(e.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value_len: usize, v: u64) -> Mutation {
        Mutation {
            key: Bytes::copy_from_slice(key.as_bytes()),
            version: Version(v),
            op: Op::Put {
                value: Bytes::from(vec![b'x'; value_len]),
                flags: 0,
                exptime: 0,
            },
        }
    }

    #[test]
    fn append_read_in_order_and_in_batches() {
        let mut log = ReplLog::new(RunId(7), 1 << 20);
        for i in 1..=10 {
            assert_eq!(log.append(put(&format!("k{i}"), 10, i)), i);
        }
        assert_eq!(log.last_seq(), 10);
        let all = log.read(0, usize::MAX).unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        let batch = log.read(3, 2 * (10 + 2 + LOG_ENTRY_OVERHEAD)).unwrap();
        assert_eq!(batch.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
        assert!(log.read(10, usize::MAX).unwrap().is_empty());
        // A batch always makes progress, even when one entry is over the byte budget.
        assert_eq!(log.read(0, 1).unwrap().len(), 1);
    }

    #[test]
    fn bounded_in_bytes_and_lagging_cursors_are_reported() {
        let cost = 100 + 2 + LOG_ENTRY_OVERHEAD;
        let mut log = ReplLog::new(RunId(1), 5 * cost);
        for i in 1..=20 {
            log.append(put(&format!("k{}", i % 10), 100, i));
            assert!(log.bytes() <= 5 * cost);
        }
        assert_eq!(log.oldest_seq(), 16);
        assert_eq!(log.read(15, usize::MAX).unwrap().len(), 5);
        assert_eq!(
            log.read(3, usize::MAX),
            Err(Lagged {
                cursor: 3,
                oldest: 16
            })
        );
        // An entry larger than the whole ring is still kept alone.
        log.append(put("big", 10 * cost, 21));
        assert_eq!(log.oldest_seq(), 21);
    }
}
