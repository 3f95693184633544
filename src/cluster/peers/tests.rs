//! Unit tests of the peer table: offers, simultaneous dials, gossip, dial backoff.
use super::*;

pub(super) fn hello(name: &str, id: u16, run: u64) -> Hello {
    Hello {
        name: name.into(),
        node_id: id,
        run_id: RunId(run),
        have_run: RunId(0),
        have_seq: 0,
        flags: 0,
        load: 0,
        wall_ms: 0,
        run_floor: 0,
    }
}

fn meta(dialed_by_me: bool, run: u64, token: u64) -> LinkMeta {
    LinkMeta {
        dialed_by_me,
        addr: "127.0.0.1:7000".parse().unwrap(),
        run_id: RunId(run),
        token,
    }
}

/// Both sides of a simultaneous dial keep the connection dialed by the smaller name,
/// whichever order they see the two in.
#[test]
fn simultaneous_dials_resolve_the_same_way_on_both_sides() {
    for a_first in [true, false] {
        for b_first in [true, false] {
            // Connection 1 dialed by a, connection 2 dialed by b.
            let mut a: PeerTable<u64> = PeerTable::new("a", 1, vec![], 1);
            let mut b: PeerTable<u64> = PeerTable::new("b", 2, vec![], 2);
            let a_order: [(bool, u64); 2] = if a_first {
                [(true, 1), (false, 2)]
            } else {
                [(false, 2), (true, 1)]
            };
            let b_order: [(bool, u64); 2] = if b_first {
                [(false, 1), (true, 2)]
            } else {
                [(true, 2), (false, 1)]
            };
            for (mine, token) in a_order {
                a.offer(&hello("b", 2, 20), meta(mine, 20, token), token, 0);
            }
            for (mine, token) in b_order {
                b.offer(&hello("a", 1, 10), meta(mine, 10, token), token, 0);
            }
            let kept = |t: &PeerTable<u64>, n: &str| t.peer(n).unwrap().link.unwrap().1;
            assert_eq!(kept(&a, "b"), 1);
            assert_eq!(kept(&b, "a"), 1);
        }
    }
}

#[test]
fn a_restarted_peer_replaces_its_old_connection() {
    let mut t: PeerTable<u64> = PeerTable::new("a", 1, vec![], 1);
    assert_eq!(
        t.offer(&hello("b", 2, 20), meta(true, 20, 1), 1, 0),
        Offer::Keep {
            replaced: None,
            restarted: false
        }
    );
    // Same run, dialed by the larger name: a duplicate.
    assert_eq!(
        t.offer(&hello("b", 2, 20), meta(false, 20, 2), 2, 0),
        Offer::Duplicate
    );
    // A new run of b: it restarted, the old connection is dead.
    assert_eq!(
        t.offer(&hello("b", 2, 21), meta(false, 21, 3), 3, 5),
        Offer::Keep {
            replaced: Some(1),
            restarted: true
        }
    );
    assert_eq!(t.peer("b").unwrap().reconnects, 1);
    // Only the registered connection's end takes the peer down.
    assert!(!t.down("b", 1, 6));
    assert!(t.down("b", 3, 6));
    assert_eq!(t.connected(), 0);
}

#[test]
fn self_and_id_clashes_are_refused() {
    let mut t: PeerTable<u64> = PeerTable::new("a", 1, vec![], 1);
    assert_eq!(
        t.offer(&hello("a", 1, 1), meta(true, 1, 1), 1, 0),
        Offer::ToSelf
    );
    assert_eq!(
        t.offer(&hello("b", 1, 2), meta(true, 2, 2), 2, 0),
        Offer::IdClash {
            id: 1,
            holder: "a".into()
        }
    );
    t.offer(&hello("b", 2, 2), meta(true, 2, 3), 3, 0);
    assert_eq!(
        t.offer(&hello("c", 2, 3), meta(true, 3, 4), 4, 0),
        Offer::IdClash {
            id: 2,
            holder: "b".into()
        }
    );
}

#[test]
fn gossip_dials_and_backoff() {
    let mut t: PeerTable<u64> = PeerTable::new("a", 1, vec!["127.0.0.1:7000".into()], 7);
    let due = t.due(0);
    assert_eq!(
        due,
        vec![Dial::Seed {
            index: 0,
            addr: "127.0.0.1:7000".into()
        }]
    );
    assert!(t.due(0).is_empty(), "in progress");
    t.dial_ended(&due[0], DialEnd::Failed, 0);
    assert!(t.due(0).is_empty(), "backing off");
    assert_eq!(t.due(BACKOFF_MAX_MS * 2).len(), 1);
    // A seed that never answered is worth a report, once per distinct error.
    assert!(t.seed_failed(0, "refused".into()));
    assert!(!t.seed_failed(0, "refused".into()));
    // The seed answers as b: it is known by name from then on.
    t.offer(&hello("b", 2, 20), meta(true, 20, 1), 1, 0);
    assert_eq!(t.seeds()[0].name.as_deref(), Some("b"));
    let member = |name: &str, node_id: u16, addr: &str| Member {
        name: name.into(),
        node_id,
        addr: addr.into(),
    };
    let (changed, clashes) = t.learn(&[
        member("c", 3, "127.0.0.1:7001"),
        member("a", 1, "127.0.0.1:7002"),
        // Refused: another member's id, our id, not a node name.
        member("d", 2, "127.0.0.1:7003"),
        member("e", 1, "127.0.0.1:7004"),
        member("bad\r\nname", 9, "127.0.0.1:7005"),
    ]);
    assert!(changed);
    let refused: Vec<&str> = clashes.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(refused, ["d", "e"]);
    assert_eq!(t.learn(&t.members()), (false, vec![]));
    let due = t.due(BACKOFF_MAX_MS * 4);
    assert_eq!(
        due,
        vec![Dial::Member {
            name: "c".into(),
            addr: "127.0.0.1:7001".parse().unwrap()
        }]
    );
    for i in 0..1000 {
        let d = jitter(&mut t.rng, 1000);
        assert!((500..1500).contains(&d), "{i}: {d}");
    }
}

/// A connection that dies young (refused after its hello) backs the next dial off; one
/// that lived long starts over from the shortest delay.
#[test]
fn short_lived_connections_back_off() {
    let mut t: PeerTable<u64> = PeerTable::new("a", 1, vec![], 3);
    let mut now = 0;
    let mut delays = Vec::new();
    for token in 1..=8 {
        t.offer(&hello("b", 2, 20), meta(true, 20, token), token, now);
        assert!(t.down("b", token, now + 10));
        let next = t.peer("b").unwrap().next_dial_ms;
        delays.push(next - (now + 10));
        now = next;
    }
    assert!(delays[7] >= BACKOFF_MAX_MS / 2, "{delays:?}");
    t.offer(&hello("b", 2, 20), meta(true, 20, 9), 9, now);
    assert!(t.down("b", 9, now + STABLE_MS));
    let next = t.peer("b").unwrap().next_dial_ms;
    assert!(next - (now + STABLE_MS) < BACKOFF_MIN_MS * 2);
}
