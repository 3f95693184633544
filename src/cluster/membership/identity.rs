//! Who a member is, as SWIM (foca) sees it: the node name (the name its certificate
//! carries, so the one thing a peer cannot claim falsely), its node id and cluster address,
//! and a *run*: a number chosen at every process start.
//!
//! The run is what lets a restarted node rejoin at once. SWIM refuses to hear from an
//! identity it has declared down, so a node that comes back must come back as a new
//! identity; foca calls that a conflict on the same address ([`Identity::addr`], here the
//! node name) and keeps the winner, reporting a `Rename` (old identity -> new one), which
//! the sync planner reads as "this peer restarted". The newer run wins: a run is the wall
//! clock in milliseconds at process start, and foca's automatic rejoin (`renew`, after a
//! false "down" verdict) adds one to it.
//!
//! A rename is not always a restart (a renewal is the same process), so the identity also
//! carries the *process*: the run id of the node's replication log, which its hello
//! carries on every connection. A rename to another process is a restart, and a link to
//! the old process leads nowhere (see `Replica::member_restarted`).

use std::net::SocketAddr;

use foca::Identity;

/// One run of one node, as SWIM members know it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberId {
    pub name: String,
    pub node_id: u16,
    pub addr: SocketAddr,
    /// Chosen at process start (wall-clock ms); bigger is newer.
    pub run: u64,
    /// The process's replication run id (`RunId`): kept by a renewal, new at a restart.
    pub process: u64,
}

impl MemberId {
    pub fn new(name: &str, node_id: u16, addr: SocketAddr, run: u64) -> MemberId {
        MemberId {
            name: name.to_string(),
            node_id,
            addr,
            run,
            process: 0,
        }
    }

    /// The same identity, for the process whose replication run id is `process`.
    pub fn with_process(self, process: u64) -> MemberId {
        MemberId { process, ..self }
    }

    /// A stand-in for a member known only by name (a seed): foca accepts an `Announce`
    /// addressed to any identity with the receiver's address, and the reply carries the
    /// real one.
    pub fn placeholder(name: &str) -> MemberId {
        MemberId::new(name, 0, SocketAddr::from(([0, 0, 0, 0], 0)), 0)
    }
}

impl Identity for MemberId {
    /// Two identities with the same name are two runs of one node.
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(MemberId {
            run: self.run.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // The newer run wins; equal runs (two processes claiming one name in the same
        // millisecond: a misconfiguration) are settled by a rule both sides compute alike.
        (self.run, self.node_id, self.addr) > (adversary.run, adversary.node_id, adversary.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(run: u64) -> MemberId {
        MemberId::new("a", 1, "127.0.0.1:1".parse().unwrap(), run)
    }

    #[test]
    fn the_newer_run_wins_and_renew_makes_a_newer_one() {
        assert!(id(2).win_addr_conflict(&id(1)));
        assert!(!id(1).win_addr_conflict(&id(2)));
        let renewed = id(7).with_process(9).renew().unwrap();
        assert!(renewed.win_addr_conflict(&id(7)));
        assert_eq!(renewed.addr(), id(7).addr());
        assert_eq!(renewed.process, 9, "a renewal is the same process");
    }

    #[test]
    fn equal_runs_are_settled_the_same_way_on_both_sides() {
        let mut other = id(5);
        other.node_id = 2;
        assert_ne!(
            other.win_addr_conflict(&id(5)),
            id(5).win_addr_conflict(&other)
        );
    }
}
