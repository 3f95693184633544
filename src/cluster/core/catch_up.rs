//! Catching up with the previous run of a restarted origin (DESIGN.md sections 0 and 6).
//!
//! Each node sends only its own writes. When an origin's run ends without every member
//! having received all of it (a crash, or a drain that timed out), the rest exists only on
//! the members that did receive it: one peer may hold a longer prefix of the dead run than
//! another, and the origin's new run cannot resend what its log no longer has. So when a
//! node sees an origin come back with a new run, and the origin does not say its previous
//! run ended cleanly ([`crate::replication::frame::HELLO_CLEAN`]: every member had
//! acknowledged all of it), it asks every member (the origin included: its initial sync
//! gave it a donor's copy) for every item and tombstone of that origin they hold. The
//! answers merge by last-writer-wins, so the node ends with the union of what survived.
//! Each member is asked once per restart, also members learned later; a member whose link
//! fails before answering is asked again on its next link. A member that is down, or
//! forgotten, is not waited for (the caller passes only the members still awaited, see
//! `peers::members`): it is still asked if it comes back, and anti-entropy repairs what
//! only it had.

use std::collections::BTreeMap;

use crate::replication::frame::Frame;

/// Tokens of catch-up requests live apart from reconciliation's (which count from 1).
const FIRST_TOKEN: u64 = 1 << 62;

#[derive(Debug)]
struct Origin {
    node_id: u16,
    /// Per member asked: the request's token and whether its answer is complete.
    asked: BTreeMap<String, (u64, bool)>,
}

/// The catch-ups under way, by origin name.
#[derive(Debug)]
pub(super) struct CatchUps {
    origins: BTreeMap<String, Origin>,
    next_token: u64,
}

impl Default for CatchUps {
    fn default() -> Self {
        CatchUps {
            origins: BTreeMap::new(),
            next_token: FIRST_TOKEN,
        }
    }
}

impl CatchUps {
    /// `origin` came back with a new run: (re)start catching up with its previous one.
    pub fn origin_restarted(&mut self, origin: &str, node_id: u16) {
        self.origins.insert(
            origin.to_string(),
            Origin {
                node_id,
                asked: BTreeMap::new(),
            },
        );
    }

    /// Catches up with `origin` unless already doing so: a donor's snapshot did not say
    /// it holds that origin's log whole.
    pub fn ensure(&mut self, origin: &str, node_id: u16) {
        if !self.origins.contains_key(origin) {
            self.origin_restarted(origin, node_id);
        }
    }

    /// Whether catching up with `origin` is under way: then this node does not hold that
    /// origin's writes whole, and claims no position of it (to a joiner, in a state file).
    /// It is under way until every one of `members` answered, also the members not linked
    /// yet: one of them may be the only holder of the writes missing here (a donor that
    /// claimed the origin after hearing only from the members linked at the time handed
    /// its joiner a position that the joiner never caught up behind).
    pub fn unsettled<'a>(&self, origin: &str, mut members: impl Iterator<Item = &'a str>) -> bool {
        self.origins.get(origin).is_some_and(|o| {
            o.asked.is_empty()
                || o.asked.values().any(|(_, done)| !done)
                || members.any(|m| !o.asked.contains_key(m))
        })
    }

    /// The requests to send now: to every linked member not yet asked.
    pub fn requests_due<'a>(
        &mut self,
        linked: impl Iterator<Item = &'a str> + Clone,
    ) -> Vec<(String, Frame)> {
        let mut out = Vec::new();
        for o in self.origins.values_mut() {
            for peer in linked.clone() {
                if o.asked.contains_key(peer) {
                    continue;
                }
                let token = self.next_token;
                self.next_token += 1;
                o.asked.insert(peer.to_string(), (token, false));
                out.push((
                    peer.to_string(),
                    Frame::CatchUp {
                        origin: o.node_id,
                        token,
                    },
                ));
            }
        }
        out
    }

    /// `peer` said in its hello that its store is empty: it holds nothing of any
    /// origin's earlier runs, so it is not asked for the catch-ups under way. (What it
    /// takes later it takes from members that are asked; an origin restarting later is
    /// a new catch-up, which asks it again.)
    pub fn holds_nothing(&mut self, peer: &str) {
        for o in self.origins.values_mut() {
            o.asked.entry(peer.to_string()).or_insert((0, true));
        }
    }

    /// Whether a snapshot from `peer` that echoes `token` answers one of our requests
    /// still open.
    pub fn answers(&self, peer: &str, token: u64) -> bool {
        self.origins.values().any(|o| {
            o.asked
                .get(peer)
                .is_some_and(|&(t, done)| t == token && !done)
        })
    }

    /// The answer of `peer` to `token` is complete: `peer` is not asked again for that
    /// restart. (An origin's entry stays, so that members learned later are asked too; a
    /// newer restart of the origin replaces it.)
    pub fn answered(&mut self, peer: &str, token: u64) {
        for o in self.origins.values_mut() {
            if let Some(a) = o.asked.get_mut(peer).filter(|(t, _)| *t == token) {
                a.1 = true;
            }
        }
    }

    /// The link to `peer` went down: what it had not answered is asked again next time.
    pub fn link_down(&mut self, peer: &str) {
        for o in self.origins.values_mut() {
            if o.asked.get(peer).is_some_and(|(_, done)| !done) {
                o.asked.remove(peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_is_asked_once_and_again_after_a_failed_link() {
        let mut c = CatchUps::default();
        c.origin_restarted("x", 3);
        let asks = c.requests_due(["a", "x"].into_iter());
        assert_eq!(asks.len(), 2);
        assert!(c.requests_due(["a", "x"].into_iter()).is_empty(), "once");
        let Frame::CatchUp { origin, token } = asks[0].1 else {
            panic!("a catch-up request");
        };
        assert_eq!((asks[0].0.as_str(), origin), ("a", 3));
        assert!(c.answers("a", token) && !c.answers("x", token));
        c.link_down("x");
        let again = c.requests_due(["a", "x", "b"].into_iter());
        assert_eq!(again.len(), 2, "x again, and b, now linked");
        c.answered("a", token);
        assert!(c.requests_due(["a", "b", "x"].into_iter()).is_empty());
        c.link_down("a");
        assert!(
            c.requests_due(["a"].into_iter()).is_empty(),
            "answered: not asked again"
        );
        c.link_down("b");
        assert_eq!(
            c.requests_due(["a", "b", "c"].into_iter()).len(),
            2,
            "b again, c learned later"
        );
        c.origin_restarted("x", 3);
        assert_eq!(
            c.requests_due(["a"].into_iter()).len(),
            1,
            "a new restart asks afresh"
        );
    }

    #[test]
    fn an_empty_member_is_not_asked_and_does_not_hold_a_catch_up_open() {
        let mut c = CatchUps::default();
        c.origin_restarted("x", 3);
        let asks = c.requests_due(["a"].into_iter());
        let Frame::CatchUp { token, .. } = asks[0].1 else {
            panic!("a catch-up request");
        };
        c.answered("a", token);
        assert!(!c.unsettled("x", ["a"].into_iter()));
        assert!(
            c.unsettled("x", ["a", "b"].into_iter()),
            "b, a member not linked yet, has not answered"
        );
        c.holds_nothing("fresh");
        assert!(c.requests_due(["a", "fresh"].into_iter()).is_empty());
        assert!(
            !c.unsettled("x", ["a", "fresh"].into_iter()),
            "an empty joiner leaves x settled"
        );
        assert!(!c.answers("fresh", 0), "no answer is expected from it");
        c.origin_restarted("x", 3);
        assert_eq!(
            c.requests_due(["a", "fresh"].into_iter()).len(),
            2,
            "a later restart of x asks it too"
        );
    }
}
