//! Where a link's sender stands in our log (sans-IO): from the position the peer asked
//! for, with a snapshot of the whole store when the log no longer reaches back that far (a
//! new peer, a peer whose position is from another run of ours, a peer that fell behind
//! while connected). The snapshot goes on a stream of its own while the live stream goes
//! on from the log position the snapshot started at: last-writer-wins makes the overlap
//! harmless.

use crate::replication::log::RunId;

/// Where a peer stands in our log: its hello's, or a later `Start`'s.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    pub run: RunId,
    pub seq: u64,
    /// The peer lacks what this node held before this run (its store is empty, or it has
    /// no position of ours at all, or our previous run's writes are not all on it):
    /// unless it has part of this run, only a snapshot carries that.
    pub lacks_older: bool,
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
        if from + 1 >= oldest && (p.run == ours || !p.lacks_older) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: RunId = RunId(7);

    fn at(run: RunId, seq: u64) -> Position {
        Position {
            run,
            seq,
            lacks_older: false,
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
            lacks_older: true,
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
