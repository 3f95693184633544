//! Applying a peer's mutations: clock-skew guard, HLC observation, last-writer-wins merge,
//! and the counters DESIGN.md section 1 names (Couchbase's conflict outcomes plus
//! `clock_skew_rejects` and `repl_refused_forgotten`).

use std::time::Duration;

use super::log::{Entry, Mutation, Op};
use crate::clock::Hlc;
use crate::store::{Applied, Flush, FlushMerge, FlushState, Remote, Store, StoreError};

/// Outcomes of applying replicated mutations.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub accepted: u64,
    pub rejected_behind: u64,
    pub rejected_identical: u64,
    /// Writes of keys held nothing for, no newer than what this node forgot of them.
    pub refused_forgotten: u64,
    pub clock_skew_rejects: u64,
    /// Mutations the store could not hold (too large for this node's `-I`, or no memory
    /// with `-M`): the peer keeps them, this node does not.
    pub not_stored: u64,
}

impl ApplyStats {
    pub fn add(&mut self, other: &ApplyStats) {
        self.accepted += other.accepted;
        self.rejected_behind += other.rejected_behind;
        self.rejected_identical += other.rejected_identical;
        self.refused_forgotten += other.refused_forgotten;
        self.clock_skew_rejects += other.clock_skew_rejects;
        self.not_stored += other.not_stored;
    }
}

/// Applies `entries` from one peer, in order, and returns how many it got through. A
/// version too far ahead of local time is refused (and logged) rather than allowed to drag
/// this node's clock, and the entries stop there: a refused write is not applied, so it
/// must not be acknowledged either (the sender's clock may be right and ours behind); the
/// caller retries from it. Every accepted version moves the clock up so that later local
/// writes are newer (causality).
pub fn apply_entries(
    store: &Store,
    hlc: &Hlc,
    entries: &[Entry],
    max_skew: Duration,
    now: u32,
) -> (ApplyStats, usize) {
    let mut stats = ApplyStats::default();
    for (i, e) in entries.iter().enumerate() {
        if !apply_one(store, hlc, &e.mutation, e.seq, max_skew, now, &mut stats) {
            return (stats, i);
        }
    }
    (stats, entries.len())
}

/// [`apply_entries`] for the items and tombstones of a snapshot (no log sequence).
pub fn apply_mutations(
    store: &Store,
    hlc: &Hlc,
    mutations: &[Mutation],
    max_skew: Duration,
    now: u32,
) -> (ApplyStats, usize) {
    let mut stats = ApplyStats::default();
    for (i, m) in mutations.iter().enumerate() {
        if !apply_one(store, hlc, m, 0, max_skew, now, &mut stats) {
            return (stats, i);
        }
    }
    (stats, mutations.len())
}

/// Takes on a snapshot's flushes. Each flush's version passes the skew guard and moves the
/// clock like any write (local writes after it must be newer than its barrier); one too far
/// ahead is refused and counted, as the snapshot's items are.
pub fn apply_flush_state(
    store: &Store,
    hlc: &Hlc,
    state: &FlushState,
    max_skew: Duration,
    now: u32,
) -> ApplyStats {
    let mut stats = ApplyStats::default();
    let mut taken = FlushState::default();
    for f in &state.flushes {
        match hlc.observe(f.issued, max_skew) {
            Ok(()) => taken.flushes.push(*f),
            Err(skew) => {
                // The caller, which knows the node and the peer, logs the refusal.
                tracing::debug!(error = %skew, "refusing a snapshot's flush issued by a clock ahead");
                stats.clock_skew_rejects += 1;
            }
        }
    }
    store.merge_flush_state(&taken, now);
    stats.accepted += taken.flushes.len() as u64;
    stats
}

/// Applies one mutation; false when the clock-skew guard refused it (nothing changed).
fn apply_one(
    store: &Store,
    hlc: &Hlc,
    m: &Mutation,
    seq: u64,
    max_skew: Duration,
    now: u32,
    stats: &mut ApplyStats,
) -> bool {
    if let Err(skew) = hlc.observe(m.version, max_skew) {
        // The caller, which knows the node and the peer, logs the refusal (once per batch).
        if stats.clock_skew_rejects == 0 {
            tracing::debug!(seq, error = %skew, "refusing replicated writes from a peer whose clock is ahead");
        }
        stats.clock_skew_rejects += 1;
        return false;
    }
    let result = match &m.op {
        Op::Put {
            value,
            flags,
            exptime,
        } => {
            let remote = Remote::Put {
                value,
                flags: *flags,
                exptime: *exptime,
                version: m.version,
            };
            store.apply(&m.key, &remote, now)
        }
        Op::Delete => store.apply(&m.key, &Remote::Delete { version: m.version }, now),
        Op::Flush { at_ms } => {
            let flush = Flush {
                issued: m.version,
                at_ms: *at_ms,
            };
            store.flush(flush, FlushMerge::Union, now);
            Ok(Applied::Accepted)
        }
    };
    match result {
        Ok(Applied::Accepted) => stats.accepted += 1,
        Ok(Applied::Behind) => stats.rejected_behind += 1,
        Ok(Applied::Identical) => stats.rejected_identical += 1,
        Ok(Applied::Forgotten) => stats.refused_forgotten += 1,
        Ok(Applied::BadKey) | Err(StoreError::TooLarge | StoreError::OutOfMemory) => {
            stats.not_stored += 1
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::clock::{Clock, ManualClock, NodeId, Version, HLC_EPOCH_MS};
    use crate::store::StoreConfig;

    fn entry(seq: u64, key: &str, version: Version, op: Op) -> Entry {
        Entry {
            seq,
            mutation: Mutation {
                key: Bytes::copy_from_slice(key.as_bytes()),
                version,
                op,
            },
        }
    }

    #[test]
    fn counts_outcomes_and_guards_the_clock() {
        let clock = Arc::new(ManualClock::new(HLC_EPOCH_MS + 10_000_000));
        let hlc = Hlc::new(NodeId::new(2).unwrap(), clock.clone());
        let store = Store::new(StoreConfig {
            tombstone_ttl: 600,
            ..StoreConfig::default()
        });
        let now = clock.now_secs();
        let t0 = clock.now_ms();
        let v = |ms: u64, node: u64| Version::at_unix_ms(t0 + ms).0 | node;
        let put = |n: u8| Op::Put {
            value: Bytes::from(vec![n]),
            flags: 0,
            exptime: 0,
        };
        let entries = vec![
            entry(1, "a", Version(v(0, 1)), put(1)),
            entry(2, "a", Version(v(0, 1)), put(1)),
            entry(3, "a", Version(v(0, 1) - (1 << 10)), put(0)),
            entry(4, "b", Version(v(60_000, 1)), put(9)),
            entry(5, "a", Version(v(1, 1)), Op::Delete),
        ];
        let (stats, done) = apply_entries(&store, &hlc, &entries, Duration::from_secs(5), now);
        assert_eq!(done, 3, "it stops at the write from too far ahead");
        assert_eq!(
            stats,
            ApplyStats {
                accepted: 1,
                rejected_behind: 1,
                rejected_identical: 1,
                refused_forgotten: 0,
                clock_skew_rejects: 1,
                not_stored: 0
            }
        );
        // Retried once the clock has caught up, the rest goes through.
        clock.advance(Duration::from_secs(56));
        let now = clock.now_secs();
        let (stats, done) = apply_entries(&store, &hlc, &entries[3..], Duration::from_secs(5), now);
        assert_eq!(done, 2);
        assert_eq!(stats.accepted, 2);
        let state = store.state(now);
        assert!(state.iter().any(|(k, v, _)| k == b"a" && v.is_none()));
        assert!(state.iter().any(|(k, v, _)| k == b"b" && v.is_some()));
        // The accepted writes moved the clock: a local write now is newer than them.
        assert!(hlc.tick() > Version(v(60_000, 1)));
    }
}
