//! Unit tests of the member lifecycle: states, forgetting, and what forgetting stops.
use super::super::{Dial, DialEnd, LinkMeta, PeerTable};
use super::*;
use crate::replication::frame::{Hello, Member};
use crate::replication::log::RunId;

const HOUR_MS: u64 = 3_600_000;

fn hello(name: &str, id: u16) -> Hello {
    super::super::tests::hello(name, id, u64::from(id) * 10)
}

fn meta(id: u16, token: u64) -> LinkMeta {
    LinkMeta {
        dialed_by_me: true,
        addr: format!("127.0.0.1:{}", 7000 + id).parse().unwrap(),
        run_id: RunId(u64::from(id) * 10),
        token,
    }
}

fn member(name: &str, id: u16) -> Member {
    Member {
        name: name.into(),
        node_id: id,
        addr: format!("127.0.0.1:{}", 7000 + id),
    }
}

fn state(t: &PeerTable<u64>, name: &str) -> MemberState {
    MemberState::linked(t.peer(name).expect("a member"), || true)
}

fn dialed(t: &mut PeerTable<u64>, now_ms: u64) -> Vec<String> {
    t.due(now_ms)
        .into_iter()
        .map(|d| match d {
            Dial::Member { name, .. } => name,
            Dial::Seed { addr, .. } => addr,
        })
        .collect()
}

/// joining until linked; syncing until the core says synced; ready.
#[test]
fn a_member_is_joining_until_linked_then_syncing_then_ready() {
    let mut t: PeerTable<u64> = PeerTable::new("a", 1, vec![], 1);
    t.learn(&[member("b", 2)]);
    assert_eq!(state(&t, "b"), MemberState::Joining);
    t.offer(&hello("b", 2), meta(2, 1), 1, 100);
    let b = t.peer("b").unwrap();
    assert_eq!(MemberState::linked(b, || false), MemberState::Syncing);
    assert_eq!(MemberState::linked(b, || true), MemberState::Ready);
    assert_eq!(b.last_contact_ms, 100);
}

/// The fallback: a lost link is suspect at once, down after LINK_DOWN_AFTER_MS, forgotten
/// after --remove-down-after; a link before that clears it.
#[test]
fn a_lost_link_is_suspect_then_down_then_forgotten() {
    let mut t: PeerTable<u64> = PeerTable::new("a", 1, vec![], 1);
    t.offer(&hello("b", 2), meta(2, 1), 1, 0);
    t.offer(&hello("c", 3), meta(3, 2), 2, 0);
    assert!(t.down("b", 1, 1_000));
    assert_eq!(state(&t, "b"), MemberState::Suspect);
    assert!(!t.all_connected(), "a suspect member is still waited for");
    let tick = t.tick_members(1_000 + LINK_DOWN_AFTER_MS - 1, HOUR_MS);
    assert_eq!(tick, MemberTick::default());
    let tick = t.tick_members(1_000 + LINK_DOWN_AFTER_MS, HOUR_MS);
    assert_eq!(tick.down, vec!["b".to_string()]);
    assert_eq!(state(&t, "b"), MemberState::Down);
    assert!(t.all_connected(), "a down member is not waited for");
    assert_eq!(t.awaited().collect::<Vec<_>>(), vec!["c"]);
    assert_eq!(
        dialed(&mut t, 100_000),
        vec!["b"],
        "still dialed: it may come back"
    );
    let down_at = 1_000 + LINK_DOWN_AFTER_MS;
    assert!(t
        .tick_members(down_at + HOUR_MS - 1, HOUR_MS)
        .forgotten
        .is_empty());
    let tick = t.tick_members(down_at + HOUR_MS, HOUR_MS);
    assert_eq!(tick.forgotten, vec!["b".to_string()]);
    assert!(t.peer("b").is_none());
    let (_, f) = t.forgotten().next().expect("a record");
    assert_eq!(
        (f.reason, f.last_contact_ms, f.node_id),
        (ForgetReason::DownTooLong, 1_000, 2)
    );

    // c: lost, then linked again before it was down.
    assert!(t.down("c", 2, 5_000));
    t.offer(&hello("c", 3), meta(3, 3), 3, 6_000);
    assert_eq!(state(&t, "c"), MemberState::Ready);
    assert!(t
        .tick_members(6_000 + LINK_DOWN_AFTER_MS, HOUR_MS)
        .down
        .is_empty());
}

/// For a member whose connection carries SWIM, SWIM says what is suspect and down: a lost
/// link alone changes nothing. A member without it (here c, of an older release) keeps the
/// link-loss fallback.
#[test]
fn membership_events_drive_the_states_of_members_that_gossip() {
    let mut t: PeerTable<u64> = PeerTable::new("a", 1, vec![], 1);
    t.offer(&hello("b", 2), meta(2, 1), 1, 0);
    t.set_gossips("b", true);
    t.offer(&hello("c", 3), meta(3, 2), 2, 0);
    t.set_gossips("c", false);
    t.down("c", 2, 10);
    assert_eq!(state(&t, "c"), MemberState::Suspect);
    assert_eq!(t.tick_members(10 + LINK_DOWN_AFTER_MS, HOUR_MS).down, ["c"]);
    t.forget("c", 20).unwrap();
    t.down("b", 1, 10);
    assert_eq!(state(&t, "b"), MemberState::Joining);
    assert!(t.tick_members(10 * HOUR_MS, HOUR_MS) == MemberTick::default());
    let ev = |t: &mut PeerTable<u64>, e| t.on_membership("b", e, 20);
    assert_eq!(ev(&mut t, MembershipEvent::Suspect), MemberChange::Changed);
    assert_eq!(
        ev(&mut t, MembershipEvent::Suspect),
        MemberChange::Unchanged
    );
    assert_eq!(state(&t, "b"), MemberState::Suspect);
    assert_eq!(ev(&mut t, MembershipEvent::Alive), MemberChange::Changed);
    assert_eq!(state(&t, "b"), MemberState::Joining);
    assert_eq!(ev(&mut t, MembershipEvent::Down), MemberChange::Changed);
    assert_eq!(state(&t, "b"), MemberState::Down);
    assert_eq!(
        ev(&mut t, MembershipEvent::Suspect),
        MemberChange::Unchanged
    );
    assert_eq!(ev(&mut t, MembershipEvent::Alive), MemberChange::Changed);
    assert_eq!(
        t.on_membership("nobody", MembershipEvent::Down, 20),
        MemberChange::Unchanged
    );
}

/// A member that leaves is forgotten at once (its link handed back to end); forgotten, it is
/// not dialed, not waited for, not learned from gossip, not counted; its hello makes it a
/// member again.
#[test]
fn a_member_that_left_is_forgotten_until_it_connects_again() {
    let mut t: PeerTable<u64> = PeerTable::new("a", 1, vec!["127.0.0.1:7002".into()], 1);
    t.offer(&hello("b", 2), meta(2, 1), 1, 0);
    assert_eq!(t.seeds()[0].name.as_deref(), Some("b"), "the seed led to b");
    assert_eq!(
        t.on_membership("b", MembershipEvent::Left, 50),
        MemberChange::Forgotten { link: Some(1) }
    );
    assert_eq!(t.connected(), 0);
    assert!(t.all_connected(), "nothing to wait for");
    assert_eq!(
        dialed(&mut t, 10_000),
        vec!["127.0.0.1:7002"],
        "b is not dialed; the --join address that led to it is, as a seed"
    );
    assert!(
        !t.seed_failed(0, "refused".into()),
        "a member that left not answering at its seed is no news to log"
    );
    let (learned, _) = t.learn(&[member("b", 2)]);
    assert!(!learned && t.peer("b").is_none(), "stale gossip");
    assert!(!t.down("b", 1, 60), "its link's end is no news");
    assert!(t.is_forgotten("b"));
    assert_eq!(
        t.on_membership("b", MembershipEvent::Alive, 70),
        MemberChange::Unchanged
    );
    t.offer(&hello("b", 2), meta(2, 2), 2, 80);
    assert!(!t.is_forgotten("b"));
    assert_eq!(state(&t, "b"), MemberState::Ready);
}

/// An operator forgets a member that is not connected; a connected or unknown one is refused.
#[test]
fn an_operator_forgets_a_member_that_is_gone() {
    let mut t: PeerTable<u64> = PeerTable::new("a", 1, vec!["127.0.0.1:7002".into()], 1);
    t.offer(&hello("b", 2), meta(2, 1), 1, 0);
    assert_eq!(t.forget("b", 5), Err(ForgetError::Connected("b".into())));
    assert_eq!(t.forget("zz", 5), Err(ForgetError::Unknown("zz".into())));
    t.down("b", 1, 10);
    assert_eq!(t.forget("b", 20), Ok(()));
    assert_eq!(
        t.forget("b", 30),
        Err(ForgetError::AlreadyForgotten("b".into()))
    );
    let (name, f) = t.forgotten().next().expect("a record");
    assert_eq!(
        (name.as_str(), f.reason, f.at_ms),
        ("b", ForgetReason::Operator, 20)
    );
    assert!(dialed(&mut t, 10_000).is_empty(), "neither b nor its seed");
}

/// A member learned from gossip and never reached (it may have been down before this node
/// heard of it, which SWIM does not report) goes suspect when its dial fails, then down:
/// no longer waited for, and forgotten after --remove-down-after like any down member.
#[test]
fn a_member_never_reached_goes_suspect_then_down() {
    let mut t: PeerTable<u64> = PeerTable::new("a", 1, vec![], 1);
    t.learn(&[member("d", 4)]);
    assert_eq!(t.awaited().collect::<Vec<_>>(), ["d"]);
    let due = t.due(0);
    assert_eq!(due.len(), 1);
    t.dial_ended(&due[0], DialEnd::Unanswered, 1_000);
    assert!(matches!(
        t.peer("d").unwrap().liveness,
        Liveness::Suspect { .. }
    ));
    assert!(t.tick_members(1_000 + LINK_DOWN_AFTER_MS, HOUR_MS).down == ["d"]);
    assert_eq!(t.awaited().count(), 0, "a member down is not waited for");
    assert_eq!(
        t.tick_members(2_000 + LINK_DOWN_AFTER_MS + HOUR_MS, HOUR_MS)
            .forgotten,
        ["d"]
    );
}
