//! `flush_all` in a cluster (DESIGN.md section 2): a flush is `(issued, at)`, and a store
//! holds the set of flushes that still matter, merged by set union.
//!
//! `issued` is an ordinary HLC version, so a flush passes the clock-skew guard like any
//! write however long its delay; `at` is the unix time in ms from which it takes effect
//! (0: at once). Its barrier is `max(issued, Version::at_unix_ms(at))`: once `at` has come,
//! every item older than the barrier is gone. A node applies every flush it hears of, by
//! its own clock, and its effective barrier is the highest of those whose time has come, so
//! the order in which flushes arrive (live stream, snapshot, state file) never matters.
//!
//! What is kept: the fired flush with the highest barrier (it alone decides the floor), and
//! the pending ones that are not subsumed. Flush `g` subsumes `f` when it fires no later and
//! its barrier is no lower: from `f`'s time on, `g` has already removed everything `f`
//! would. The pending set is therefore a frontier (later time, higher barrier), canonical
//! for a given set of flushes, and at most [`MAX_PENDING`] long: beyond that, the earliest
//! pending flush is fired at once. That flushes more than asked for (absence is always
//! allowed; flushing less would let a node keep what another node flushed), and only a
//! node holding that many distinct pending flush times ever does it; once every pending
//! time has come, the floor is the highest barrier of all, on every node alike.
//!
//! A standalone node keeps memcached's behaviour instead: a new `flush_all` replaces a
//! pending delayed one ([`FlushMerge::Replace`]).

use std::sync::atomic::Ordering;

use super::{lock, Store};
use crate::clock::Version;

/// The most pending flushes a store keeps (see the module doc). A client needs as many
/// distinct delayed `flush_all` times in flight for the cap to matter.
pub const MAX_PENDING: usize = 64;

/// One `flush_all`: issued at version `issued`, in effect from unix millisecond `at_ms`
/// (0: at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flush {
    pub issued: Version,
    pub at_ms: u64,
}

impl Flush {
    /// Items with a lower version are gone once the flush has fired.
    pub fn barrier(&self) -> Version {
        self.issued.max(Version::at_unix_ms(self.at_ms))
    }

    /// Whether its time has come at unix second `now`.
    pub fn due(&self, now: u32) -> bool {
        self.at_ms <= u64::from(now) * 1000
    }

    /// The unix second from which it is due.
    fn due_secs(&self) -> u32 {
        self.at_ms.div_ceil(1000).min(u64::from(u32::MAX)) as u32
    }

    /// Whether `self` makes `other` redundant: it fires no later with a barrier no lower.
    /// Between two flushes of the same effect, the one issued later is kept, so that what
    /// is kept does not depend on arrival order.
    fn subsumes(&self, other: &Flush) -> bool {
        let dominates = self.at_ms <= other.at_ms && self.barrier() >= other.barrier();
        let same_effect = self.at_ms == other.at_ms && self.barrier() == other.barrier();
        dominates && (!same_effect || self.issued >= other.issued)
    }
}

/// The flushes a store holds that still matter, for snapshots and state files: the fired
/// flush with the highest barrier (if any) first, then the pending ones by time. A node
/// that receives it merges it into its own, flush by flush.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushState {
    pub flushes: Vec<Flush>,
}

impl FlushState {
    /// The highest barrier among `flushes` due at `now`.
    pub fn floor(&self, now: u32) -> Version {
        self.flushes
            .iter()
            .filter(|f| f.due(now))
            .map(Flush::barrier)
            .max()
            .unwrap_or(Version::NONE)
    }
}

/// How a new flush combines with those held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMerge {
    /// Set union: every flush fires at its time (a cluster, and anything from a peer).
    Union,
    /// memcached's single flush time: a new flush cancels a pending one (a standalone node).
    Replace,
}

/// The fired floor and the pending frontier (module doc).
#[derive(Debug, Default)]
pub(super) struct FlushSet {
    fired: Option<Flush>,
    /// By `at_ms`, barriers strictly increasing; none due yet, none at or below the floor.
    pending: Vec<Flush>,
}

impl FlushSet {
    /// Items with a lower version are flushed.
    pub fn floor(&self) -> Version {
        self.fired.map_or(Version::NONE, |f| f.barrier())
    }

    /// The unix second at which the next pending flush becomes due; 0 when none is.
    pub fn next_due(&self) -> u32 {
        self.pending.first().map_or(0, |f| f.due_secs().max(1))
    }

    pub fn insert(&mut self, f: Flush, merge: FlushMerge, now: u32) {
        // Whatever is due has fired, whether or not a read has seen it yet: a new flush
        // replaces only what is still pending.
        self.promote(now);
        if merge == FlushMerge::Replace {
            self.pending.clear();
        }
        if f.due(now) {
            self.fire(f);
            return;
        }
        if self.fired.is_some_and(|g| g.barrier() >= f.barrier()) {
            return;
        }
        if self.pending.iter().any(|g| g.subsumes(&f)) {
            return;
        }
        self.pending.retain(|g| !f.subsumes(g));
        let at = self.pending.partition_point(|g| g.at_ms < f.at_ms);
        self.pending.insert(at, f);
        if self.pending.len() > MAX_PENDING {
            let earliest = self.pending.remove(0);
            self.fire(earliest);
        }
    }

    /// Fires every pending flush whose time has come.
    pub fn promote(&mut self, now: u32) {
        let due = self.pending.partition_point(|f| f.due(now));
        let fired: Vec<Flush> = self.pending.drain(..due).collect();
        for f in fired {
            self.fire(f);
        }
    }

    /// Makes `f` part of the floor, if it raises it.
    fn fire(&mut self, f: Flush) {
        let key = |f: &Flush| (f.barrier(), f.issued, f.at_ms);
        if self.fired.is_none_or(|g| key(&f) > key(&g)) {
            self.fired = Some(f);
        }
        let floor = self.floor();
        self.pending.retain(|p| p.barrier() > floor);
    }

    pub fn state(&self) -> FlushState {
        FlushState {
            flushes: self.fired.iter().chain(&self.pending).copied().collect(),
        }
    }
}

impl Store {
    /// The version below which items are flushed, firing due pending flushes first. Two
    /// atomic loads when nothing is due: every lookup and write calls it.
    pub(super) fn flush_floor(&self, now: u32) -> u64 {
        let due = self.flush_due.load(Ordering::Acquire);
        if due != 0 && due <= now {
            let mut set = lock(&self.flushes);
            set.promote(now);
            self.publish(&set);
        }
        self.flush_floor.load(Ordering::Acquire)
    }

    /// Makes `set`'s floor and next due time visible to lock-free readers.
    fn publish(&self, set: &FlushSet) {
        self.flush_floor.fetch_max(set.floor().0, Ordering::AcqRel);
        self.flush_due.store(set.next_due(), Ordering::Release);
    }

    /// `flush_all`: every item older than `f`'s barrier is gone once its time has come
    /// (at once when it already has). `merge` says whether it joins the flushes held
    /// (a cluster, or a flush from a peer) or replaces a pending one (a standalone node's
    /// client, as memcached does).
    pub fn flush(&self, f: Flush, merge: FlushMerge, now: u32) {
        let mut set = lock(&self.flushes);
        set.insert(f, merge, now);
        self.publish(&set);
    }

    /// The flushes that still matter, to send with a snapshot or save in a state file: a
    /// peer that takes them refuses the older writes this node's flushes refuse, and fires
    /// the pending ones at their time.
    pub fn flush_state(&self, now: u32) -> FlushState {
        let mut set = lock(&self.flushes);
        set.promote(now);
        self.publish(&set);
        set.state()
    }

    /// Takes on a peer's (or a state file's) flushes: a set union, so a pending flush here
    /// is never cancelled by one there, and the order of merges does not matter.
    pub fn merge_flush_state(&self, state: &FlushState, now: u32) {
        let mut set = lock(&self.flushes);
        for f in &state.flushes {
            set.insert(*f, FlushMerge::Union, now);
        }
        self.publish(&set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u32 = 1_700_000_000;

    /// A flush issued at `issued_s` (unix seconds, logical part `n`) due at `at_s`.
    fn flush(issued_s: u32, n: u64, at_s: u32) -> Flush {
        let issued = Version(Version::at_unix_ms(u64::from(issued_s) * 1000).0 + (n << 10));
        Flush {
            issued,
            at_ms: u64::from(at_s) * 1000,
        }
    }

    fn set_of(flushes: &[Flush], now: u32) -> FlushSet {
        let mut s = FlushSet::default();
        for f in flushes {
            s.insert(*f, FlushMerge::Union, now);
        }
        s
    }

    #[test]
    fn barrier_is_the_later_of_issue_and_time() {
        let now = flush(NOW, 3, 0);
        assert_eq!(
            now.barrier(),
            now.issued,
            "an immediate flush: its own version"
        );
        assert!(now.due(0));
        let later = flush(NOW, 3, NOW + 8);
        assert_eq!(
            later.barrier(),
            Version::at_unix_ms(u64::from(NOW + 8) * 1000)
        );
        assert!(!later.due(NOW + 7) && later.due(NOW + 8));
    }

    #[test]
    fn two_delayed_flushes_fire_each_at_its_time_whatever_the_order() {
        let (a, b) = (flush(NOW, 1, NOW + 5), flush(NOW, 2, NOW + 10));
        for order in [[a, b], [b, a]] {
            let mut s = set_of(&order, NOW);
            assert_eq!(s.floor(), Version::NONE);
            assert_eq!(s.next_due(), NOW + 5);
            s.promote(NOW + 5);
            assert_eq!(s.floor(), a.barrier());
            assert_eq!(s.next_due(), NOW + 10);
            s.promote(NOW + 10);
            assert_eq!(s.floor(), b.barrier());
            assert_eq!(s.next_due(), 0);
        }
    }

    #[test]
    fn a_fired_floor_does_not_cancel_a_pending_flush() {
        let pending = flush(NOW, 1, NOW + 5);
        let mut s = set_of(&[pending], NOW);
        // A snapshot's state: a flush long fired elsewhere.
        s.insert(flush(NOW - 1, 0, 0), FlushMerge::Union, NOW);
        assert_eq!(s.state().flushes.len(), 2);
        s.promote(NOW + 5);
        assert_eq!(s.floor(), pending.barrier());
    }

    #[test]
    fn a_flush_due_but_not_yet_seen_is_not_replaced() {
        let mut s = FlushSet::default();
        s.insert(flush(NOW, 1, NOW + 5), FlushMerge::Replace, NOW);
        s.insert(flush(NOW + 5, 2, NOW + 9), FlushMerge::Replace, NOW + 5);
        assert_eq!(s.floor(), flush(NOW, 1, NOW + 5).barrier());
    }

    #[test]
    fn replace_keeps_memcacheds_single_flush_time() {
        let mut s = FlushSet::default();
        s.insert(flush(NOW, 1, NOW + 5), FlushMerge::Replace, NOW);
        s.insert(flush(NOW, 2, NOW + 10), FlushMerge::Replace, NOW);
        s.promote(NOW + 5);
        assert_eq!(s.floor(), Version::NONE, "the first was replaced");
        // An immediate flush cancels a pending one too.
        s.insert(flush(NOW, 3, 0), FlushMerge::Replace, NOW);
        assert_eq!(s.next_due(), 0);
        s.promote(NOW + 10);
        assert_eq!(s.floor(), flush(NOW, 3, 0).barrier());
    }

    #[test]
    fn subsumed_flushes_are_dropped_and_the_set_is_capped() {
        let mut s = FlushSet::default();
        // The same flush twice, and one later with a lower barrier than an immediate one.
        let now = flush(NOW + 20, 0, 0);
        s.insert(now, FlushMerge::Union, NOW);
        s.insert(now, FlushMerge::Union, NOW);
        s.insert(flush(NOW, 1, NOW + 5), FlushMerge::Union, NOW);
        assert_eq!(s.state().flushes, vec![now]);
        for i in 0..(MAX_PENDING as u32 + 10) {
            s.insert(flush(NOW, 2, NOW + 100 + i), FlushMerge::Union, NOW);
            assert!(s.pending.len() <= MAX_PENDING);
        }
        // The earliest ones fired early: more flushed than asked, never less.
        assert_eq!(s.floor(), flush(NOW, 2, NOW + 109).barrier());
        s.promote(NOW + 100 + MAX_PENDING as u32 + 10);
        assert_eq!(
            s.floor(),
            flush(NOW, 2, NOW + 100 + MAX_PENDING as u32 + 9).barrier()
        );
    }

    fn any_flush() -> impl Strategy<Value = Flush> {
        // Times within a few seconds of each other, immediate ones too, and issue times
        // that may be after the flush's own time (a clock ahead).
        (0u32..6, 0u64..3, prop_oneof![Just(0u32), 0u32..12])
            .prop_map(|(i, n, at)| flush(NOW + i, n, if at == 0 { 0 } else { NOW + at }))
    }

    proptest! {
        /// Union merge: any order, any duplication, any grouping (a snapshot's state merged
        /// whole) gives the same floor at every moment and the same state.
        #[test]
        fn merge_is_a_set_union(
            flushes in proptest::collection::vec(any_flush(), 0..12),
            seed in any::<u64>(),
            cut in 0usize..12,
        ) {
            let expect = set_of(&flushes, NOW);
            let mut shuffled = flushes.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let cut = cut.min(flushes.len());
            let mut grouped = set_of(&shuffled[..cut], NOW);
            let other = set_of(&shuffled[cut..], NOW);
            for f in other.state().flushes.iter().chain(&flushes) {
                grouped.insert(*f, FlushMerge::Union, NOW);
            }
            prop_assert_eq!(grouped.state(), expect.state());
            let mut expect = expect;
            for t in NOW..NOW + 13 {
                expect.promote(t);
                grouped.promote(t);
                prop_assert_eq!(grouped.floor(), expect.floor());
                // The floor is exactly the highest barrier of the flushes due by now.
                let all = FlushState { flushes: flushes.clone() };
                prop_assert_eq!(expect.floor(), all.floor(t));
            }
        }
    }
}
