//! Replicated acknowledgement (`--ack-replicas N`, DESIGN.md section 7), the decision half
//! (sans-IO): how far in our log N distinct peers have acknowledged.
//!
//! A peer acknowledges the highest sequence of our log it applied or legitimately refused
//! (DESIGN.md section 5), and applies in log order, so one number per peer says everything
//! it has: entry `s` is on N peers once the N-th highest of those numbers is at least `s`.
//! Each peer's number only grows here, also across its reconnects: an acknowledgement is a
//! fact about the past (the peer applied the write), which a later hello saying less (the
//! peer restarted empty) does not undo. The client path waits on [`AckQuorum::reached`]
//! through the cluster shell; nothing here blocks or reads a clock.

use std::collections::HashMap;

/// The highest acknowledged sequence of each peer, and what N of them reached.
#[derive(Debug, Default)]
pub struct AckQuorum {
    /// How many distinct peers must hold an entry; 0: no one waits, nothing is computed.
    need: usize,
    acked: HashMap<String, u64>,
    /// The highest sequence that `need` distinct peers acknowledged.
    reached: u64,
    /// `reached` grew since [`AckQuorum::take_moved`] last looked.
    moved: bool,
}

impl AckQuorum {
    pub fn new(need: usize) -> AckQuorum {
        AckQuorum {
            need,
            ..AckQuorum::default()
        }
    }

    /// Whether clients wait for acknowledgements (N above 0): peers are asked for prompt
    /// ones.
    pub fn waited_for(&self) -> bool {
        self.need > 0
    }

    pub fn set_need(&mut self, need: usize) {
        self.need = need;
        self.recompute();
    }

    /// `peer` has every entry of our log up to `seq` (an Ack, a Start after a donor's
    /// snapshot, a hello's position in our run).
    pub fn acked(&mut self, peer: &str, seq: u64) {
        if self.need == 0 {
            return;
        }
        match self.acked.get_mut(peer) {
            Some(have) if *have >= seq => return,
            Some(have) => *have = seq,
            None => {
                self.acked.insert(peer.to_string(), seq);
            }
        }
        self.recompute();
    }

    fn recompute(&mut self) {
        if self.need == 0 || self.acked.len() < self.need {
            return;
        }
        let mut seqs: Vec<u64> = self.acked.values().copied().collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        let reached = seqs[self.need - 1];
        if reached > self.reached {
            self.reached = reached;
            self.moved = true;
        }
    }

    /// The highest sequence that N distinct peers acknowledged: every entry at or below it
    /// is on N peers.
    pub fn reached(&self) -> u64 {
        self.reached
    }

    /// Whether entry `seq` is on N peers.
    pub fn holds(&self, seq: u64) -> bool {
        self.need == 0 || seq <= self.reached
    }

    /// The new [`AckQuorum::reached`], if it grew since the last call.
    pub fn take_moved(&mut self) -> Option<u64> {
        std::mem::take(&mut self.moved).then_some(self.reached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_held_once_n_distinct_peers_acknowledged_it() {
        let mut q = AckQuorum::new(2);
        assert!(!q.holds(1));
        q.acked("b", 10);
        assert!(!q.holds(1), "one peer of two");
        q.acked("b", 12);
        assert!(!q.holds(1), "the same peer twice is still one");
        assert_eq!(q.take_moved(), None);
        q.acked("c", 7);
        assert!(q.holds(7));
        assert!(!q.holds(8), "c has only up to 7");
        assert_eq!(q.take_moved(), Some(7));
        assert_eq!(q.take_moved(), None, "once");
        q.acked("d", 11);
        assert_eq!(q.reached(), 11, "b (12) and d (11)");
        assert!(q.holds(11) && !q.holds(12));
    }

    #[test]
    fn an_acknowledgement_is_never_taken_back() {
        let mut q = AckQuorum::new(1);
        q.acked("b", 9);
        // A later hello of a peer that restarted empty says 0: what it applied stays
        // applied (the quorum is about writes already answered or being answered).
        q.acked("b", 0);
        assert!(q.holds(9));
        assert_eq!(q.reached(), 9);
    }

    #[test]
    fn zero_needs_no_one() {
        let mut q = AckQuorum::new(0);
        assert!(q.holds(u64::MAX));
        q.acked("b", 3);
        assert_eq!(q.take_moved(), None);
        q.set_need(1);
        assert!(!q.holds(4));
        q.acked("b", 4);
        assert!(q.holds(4));
    }
}
