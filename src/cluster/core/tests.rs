//! Unit tests of the core's link admission; the simulator (`tests/simulator`) runs whole
//! clusters of cores.
use super::*;
use crate::clock::ManualClock;
use crate::store::StoreConfig;

const T0: u64 = 1_800_000_000_000;

fn replica(name: &str, id: u16) -> Replica {
    replica_with_seeds(name, id, vec![])
}

fn replica_with_seeds(name: &str, id: u16, seeds: Vec<String>) -> Replica {
    let clock = Arc::new(ManualClock::new(T0));
    let hlc = Arc::new(Hlc::new(NodeId::new(id).unwrap(), clock));
    let store = Arc::new(Store::new(StoreConfig {
        mem_limit: 1 << 20,
        max_item_size: 1 << 16,
        evict: true,
        cas_enabled: true,
        shards: 4,
        tombstone_ttl: 60,
        tombstone_mem: None,
    }));
    let cfg = ReplicaConfig {
        name: name.into(),
        node_id: NodeId::new(id).unwrap(),
        seeds,
        max_skew: Duration::from_secs(5),
        tombstone_ttl_ms: 60_000,
        join_timeout_ms: 1000,
        repl_backlog: 1 << 20,
        entropy: Entropy::every(1000),
        remove_down_after_ms: 3_600_000,
    };
    Replica::new(&cfg, store, hlc, None, RunId(u64::from(id)), 1)
}

fn conn(link: LinkId, cert_name: &str, dialed_by_me: bool) -> Connection<'_> {
    Connection {
        link,
        cert_name,
        dialed_by_me,
        addr: "127.0.0.1:7000".parse().unwrap(),
    }
}

#[test]
fn a_hello_must_name_its_certificate_and_a_clock_within_the_skew() {
    let mut a = replica("a", 1);
    let mut b = replica("b", 2);
    let ours = a.hello("b", T0);
    let theirs = b.hello("a", T0);
    let wrong = a.link_up(conn(1, "c", true), &ours, theirs.clone(), T0);
    assert!(matches!(wrong, Err(Refusal::Protocol(_))), "{wrong:?}");
    let late = a.link_up(conn(2, "b", true), &ours, theirs.clone(), T0 + 60_000);
    assert!(matches!(late, Err(Refusal::Clock(_))), "{late:?}");
    let up = a
        .link_up(conn(3, "b", true), &ours, theirs, T0)
        .expect("accepted");
    assert_eq!(up.peer, "b");
    assert_eq!(a.table().connected(), 1);
    // A second run of b replaces the link, and the old one is to be closed.
    let mut b2 = replica("b", 2);
    let mut again = b2.hello("a", T0);
    again.run_id = RunId(99);
    let up = a
        .link_up(conn(4, "b", false), &ours, again, T0)
        .expect("accepted");
    assert_eq!((up.replaced, up.restarted), (Some(3), true));
    assert!(matches!(a.poll_event(), Some(Event::Close { link: 3, .. })));
    assert!(
        !a.link_down(3, T0),
        "the replaced link is no longer the peer's"
    );
    assert!(a.link_down(4, T0));
}

#[test]
fn a_peer_may_send_only_its_own_writes() {
    let mut a = replica("a", 1);
    let mut b = replica("b", 2);
    let ours = a.hello("b", T0);
    let theirs = b.hello("a", T0);
    a.link_up(conn(1, "b", true), &ours, theirs, T0).unwrap();
    let forged = crate::replication::log::Entry {
        seq: 1,
        mutation: crate::replication::log::Mutation {
            key: bytes::Bytes::from_static(b"k"),
            version: Version(1 << 22 | 3),
            op: crate::replication::log::Op::Delete,
        },
    };
    let batch = Frame::Batch {
        run_id: RunId(2),
        entries: vec![forged],
    };
    let err = a.handle_live(1, batch, T0).unwrap_err();
    assert!(err.to_string().contains("node id 3"), "{err}");
}

#[test]
fn a_peer_cannot_queue_requests_without_bound_nor_claim_more_than_exists() {
    let mut a = replica("a", 1);
    let mut b = replica("b", 2);
    let ours = a.hello("b", T0);
    let theirs = b.hello("a", T0);
    a.link_up(conn(1, "b", true), &ours, theirs, T0).unwrap();
    // A Start beyond our log is clamped like an acknowledgement.
    let start = Frame::Start {
        run_id: a.outbox().run_id(),
        seq: 1 << 40,
    };
    assert_eq!(a.handle_live(1, start, T0), Ok(Flow::Continue));
    let c = a.peer_counters("b");
    let acked = c.acked_seq.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(acked, a.outbox().last_seq());
    // Catch-up requests pile up behind the walk under way; a flood ends the link.
    let mut outcome = Ok(Flow::Continue);
    for token in 0..(CTL_QUEUE as u64 + 2) {
        let f = Frame::CatchUp { origin: 2, token };
        outcome = a.handle_live(1, f, T0);
        if outcome.is_err() {
            break;
        }
    }
    assert!(
        matches!(&outcome, Err(PeerError::Protocol(why)) if why.contains("catch-ups")),
        "{outcome:?}"
    );
}

#[test]
fn a_donors_position_of_a_member_learned_later_is_the_joiners() {
    let mut d = replica("d", 1);
    let mut j = replica_with_seeds("j", 2, vec!["127.0.0.1:7000".into()]);
    let ours = j.hello("d", T0);
    assert!(ours.flags & crate::replication::frame::HELLO_DEFER != 0);
    let theirs = d.hello("j", T0);
    j.link_up(conn(1, "d", true), &ours, theirs, T0).unwrap();
    j.tick(T0 + 1000);
    assert_eq!(j.plan.donor(), Some("d"), "j chose d as its donor");
    // d's snapshot names c, a member j has not heard of yet (the member list comes on the
    // live stream, the snapshot on a stream of its own).
    let begin = crate::replication::frame::SnapBegin {
        log_seq: 0,
        items: 0,
        flush: Default::default(),
        positions: vec![crate::replication::frame::Position {
            origin: "c".into(),
            run_id: RunId(7),
            seq: 42,
        }],
        token: 0,
    };
    j.handle_snapshot(1, Frame::SnapBegin(begin), 64, T0 + 1000)
        .unwrap();
    let hello = j.hello("c", T0 + 1000);
    assert_eq!((hello.have_run, hello.have_seq), (RunId(7), 42));
}

#[test]
fn transmits_encode_to_exactly_their_frames_one_after_another() {
    // One scratch buffer for a link's life, as the live stream's sender keeps it: a batch
    // after a control frame must not carry that frame again (it did: every Ack, Status or
    // snapshot request was sent twice when a batch followed it).
    let ack = Frame::Ack {
        run_id: RunId(1),
        seq: 5,
    };
    let entries = vec![crate::replication::log::Entry {
        seq: 6,
        mutation: crate::replication::log::Mutation {
            key: bytes::Bytes::from_static(b"k"),
            version: Version(1 << 22 | 1),
            op: crate::replication::log::Op::Put {
                value: bytes::Bytes::from(vec![1u8; 2000]),
                flags: 0,
                exptime: 0,
            },
        },
    }];
    let batch = Frame::Batch {
        run_id: RunId(1),
        entries: entries.clone(),
    };
    let (mut scratch, mut chunks) = (bytes::BytesMut::new(), Vec::new());
    let mut wire = bytes::BytesMut::new();
    for t in [
        Transmit::Frame(ack.clone()),
        Transmit::Batch {
            run_id: RunId(1),
            entries,
        },
        Transmit::Frame(ack.clone()),
    ] {
        t.encode(&mut scratch, &mut chunks);
        for c in chunks.drain(..) {
            wire.extend_from_slice(&c);
        }
    }
    let mut got = Vec::new();
    let mut decoder = crate::replication::frame::Decoder::default();
    while let Some(f) = decoder.decode(&mut wire).unwrap() {
        got.push(f);
    }
    assert!(wire.is_empty());
    assert_eq!(got, vec![ack.clone(), batch, ack]);
}

#[test]
fn a_node_most_peers_refuse_on_time_is_outvoted_and_a_pair_is_a_tie() {
    let hour = 3_600_000;
    let mut x = replica("x", 1);
    let mut a = replica("a", 2);
    let mut b = replica("b", 3);
    // x's clock is an hour ahead: its hellos carry that wall time.
    let x_to_a = x.hello("a", T0 + hour);
    let x_to_b = x.hello("b", T0 + hour);
    let a_to_x = a.hello("x", T0);
    let b_to_x = b.hello("x", T0);
    let refused = a.link_up(conn(1, "x", true), &a_to_x, x_to_a.clone(), T0);
    assert!(matches!(refused, Err(Refusal::Clock(_))), "{refused:?}");
    let up = x.link_up(conn(1, "a", false), &x_to_a, a.hello("x", T0), T0 + hour);
    assert!(matches!(up, Err(Refusal::Clock(_))));
    // Against a alone it is a tie (one each side): neither is outvoted.
    assert_eq!(x.clock_outvoted(T0 + hour), None);
    assert_eq!(a.clock_outvoted(T0), None);
    let up = x.link_up(conn(2, "b", false), &x_to_b, b_to_x, T0 + hour);
    assert!(matches!(up, Err(Refusal::Clock(_))));
    assert_eq!(x.clock_outvoted(T0 + hour), Some((2, 3)));
    x.tick(T0 + hour);
    // a agrees with b: one refusal against two (a and b) is not a majority.
    let ab = a.hello("b", T0);
    let ba = b.hello("a", T0);
    a.link_up(conn(2, "b", true), &ab, ba, T0).unwrap();
    assert_eq!(a.clock_outvoted(T0), None);
    // Refusals count for a while only: peers that stop dialing stop voting.
    assert_eq!(x.clock_outvoted(T0 + hour + CLOCK_VOTE_MS), None);
    // A peer whose hello is accepted again withdraws its vote at once.
    let mut x2 = replica("x", 1);
    let hello = x2.hello("a", T0);
    let up = x.link_up(conn(3, "a", false), &hello, a.hello("x", T0), T0 + 10);
    assert!(up.is_ok(), "{up:?}");
    assert_eq!(x.clock_outvoted(T0 + hour), None);
}

/// Carries what each side's core sends on its live stream to the other, encoded and
/// decoded as on the wire, firing both cores' timers, for `ms` of virtual time.
fn pump(a: &mut Replica, b: &mut Replica, from_ms: u64, ms: u64) {
    for t in (from_ms..from_ms + ms).step_by(10) {
        a.tick(t);
        b.tick(t);
        carry(a, 1, b, 2, t);
        carry(b, 2, a, 1, t);
    }
}

fn carry(from: &mut Replica, from_link: LinkId, to: &mut Replica, to_link: LinkId, t: u64) {
    while let Some(tx) = from.poll_live(from_link, t) {
        let (mut scratch, mut chunks) = (bytes::BytesMut::new(), Vec::new());
        tx.encode(&mut scratch, &mut chunks);
        let mut wire = bytes::BytesMut::new();
        for c in chunks {
            wire.extend_from_slice(&c);
        }
        while let Some(f) = crate::replication::frame::decode(&mut wire).unwrap() {
            to.handle_live(to_link, f, t).unwrap();
        }
    }
}

fn linked_pair() -> (Replica, Replica) {
    let mut a = replica("a", 1);
    let mut b = replica("b", 2);
    let (ab, ba) = (a.hello("b", T0), b.hello("a", T0));
    assert!(ab.flags & crate::replication::frame::HELLO_AE != 0);
    a.link_up(conn(1, "b", true), &ab, ba.clone(), T0).unwrap();
    b.link_up(conn(2, "a", false), &ba, ab, T0).unwrap();
    (a, b)
}

#[test]
fn anti_entropy_repairs_what_the_stream_missed_and_never_what_was_forgotten() {
    let (mut a, mut b) = linked_pair();
    let now = (T0 / 1000) as u32;
    // Versions of a third origin (a node that died), ten seconds old.
    let v = |n: u64| Version((Version::at_unix_ms(T0 - 10_000).0 + (n << 10)) | 3);
    let put = |ver| crate::store::Remote::Put {
        value: b"value",
        flags: 0,
        exptime: 0,
        version: ver,
    };
    // b got writes a did not: a new key, and a delete of a key a holds older.
    b.store().apply(b"only-b", &put(v(1)), now).unwrap();
    a.store().apply(b"deleted", &put(v(2)), now).unwrap();
    b.store()
        .apply(
            b"deleted",
            &crate::store::Remote::Delete { version: v(3) },
            now,
        )
        .unwrap();
    // a held and then forgot a key b still holds (evicted, say): not taken back.
    a.store().apply(b"forgotten", &put(v(4)), now).unwrap();
    b.store().apply(b"forgotten", &put(v(4)), now).unwrap();
    let h = a.store().hash(b"forgotten");
    assert_eq!(a.store().forget_where(now, |hash, _| hash == h), 1);
    // a holds a newer version than b: b pulls it, a does not go back.
    a.store().apply(b"newer-on-a", &put(v(6)), now).unwrap();
    b.store().apply(b"newer-on-a", &put(v(5)), now).unwrap();
    assert_ne!(a.store().digest(), b.store().digest());
    pump(&mut a, &mut b, T0, 5000);
    let state = |r: &Replica| r.store().state(now);
    let held = |r: &Replica, k: &[u8]| {
        state(r)
            .into_iter()
            .find(|e| e.0 == k)
            .map(|e| (e.1.is_some(), e.2))
    };
    assert_eq!(held(&a, b"only-b"), Some((true, v(1))));
    assert_eq!(held(&a, b"deleted"), Some((false, v(3))), "the delete won");
    assert_eq!(
        held(&a, b"forgotten"),
        None,
        "a forgotten key is not refilled"
    );
    assert_eq!(held(&b, b"newer-on-a"), Some((true, v(6))));
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let (ca, cb) = (a.counters().clone(), b.counters().clone());
    let (ea, eb) = (&ca.entropy, &cb.entropy);
    assert_eq!((load(&ea.keys_received), load(&eb.keys_sent)), (2, 2));
    assert_eq!((load(&eb.keys_received), load(&ea.keys_sent)), (1, 1));
    assert!(load(&ea.rounds) >= 2 && load(&ea.buckets_differing) >= 2);
    assert!(load(&ea.bytes) > 8192, "at least a digest each way");
    let per_peer = a.peer_counters("b");
    assert_eq!(load(&per_peer.entropy.keys_received), 2);
    // Once repaired, the rest of the difference (the forgotten key) is quiet: no more
    // lists are asked for it.
    let sent = load(&eb.keys_sent);
    let rounds = load(&ea.rounds);
    pump(&mut a, &mut b, T0 + 5000, 5000);
    assert!(load(&ea.rounds) > rounds, "rounds go on");
    assert_eq!(load(&eb.keys_sent), sent);
}

#[test]
fn an_anti_entropy_answer_nobody_asked_for_ends_the_link() {
    let (mut a, _b) = linked_pair();
    let unasked = Frame::Repair {
        token: 99,
        items: vec![],
    };
    let err = a.handle_live(1, unasked, T0).unwrap_err();
    assert!(err.to_string().contains("nothing asked for"), "{err}");
    // Requests are answered, but a peer cannot make us owe it without bound.
    let (mut a, _b) = linked_pair();
    let mut outcome = Ok(Flow::Continue);
    for token in 0..8 {
        outcome = a.handle_live(1, Frame::DigestRequest { token }, T0);
        if outcome.is_err() {
            break;
        }
    }
    assert!(
        matches!(&outcome, Err(PeerError::Protocol(why)) if why.contains("faster")),
        "{outcome:?}"
    );
}

/// With `--ack-replicas`, a node asks its peers for prompt acknowledgements, and a peer
/// acknowledges each batch of its writes as soon as it is applied, not at the usual pace;
/// what it acknowledged moves the node's quorum.
#[test]
fn a_node_whose_clients_wait_is_acknowledged_at_once() {
    use crate::replication::frame::HELLO_PROMPT_ACKS;
    let mut a = replica("a", 1);
    a.set_ack_replicas(1);
    let mut b = replica("b", 2);
    let (ab, ba) = (a.hello("b", T0), b.hello("a", T0));
    assert!(ab.flags & HELLO_PROMPT_ACKS != 0 && ba.flags & HELLO_PROMPT_ACKS == 0);
    a.link_up(conn(1, "b", true), &ab, ba.clone(), T0).unwrap();
    b.link_up(conn(2, "a", false), &ba, ab, T0).unwrap();
    pump(&mut a, &mut b, T0, 100);
    let _ = a.take_acks_moved();
    // Two writes within one millisecond, each carried and acknowledged on its own.
    let t = T0 + 200;
    for issued in [Version((1 << 30) | 1), Version((1 << 31) | 1)] {
        a.outbox()
            .record_flush(crate::store::Flush { issued, at_ms: 0 });
        let seq = a.outbox().last_seq();
        carry(&mut a, 1, &mut b, 2, t);
        carry(&mut b, 2, &mut a, 1, t);
        assert_eq!(a.take_acks_moved(), Some(seq), "acknowledged at once");
    }
    // b asked for nothing: its own writes are acknowledged at the usual pace.
    assert_eq!(a.sessions[&1].ack_interval_ms, live::ACK_INTERVAL_MS);
    assert_eq!(b.sessions[&2].ack_interval_ms, 0);
}

/// The lifecycle through the core: a link lost is suspect, then down (no longer awaited),
/// then forgotten after --remove-down-after; a link that ends with the peer's leaving
/// forgets it at once; an operator forgets what is not connected.
#[test]
fn members_go_suspect_down_and_forgotten_and_leaving_forgets_at_once() {
    use crate::cluster::peers::{MemberState, LINK_DOWN_AFTER_MS};
    let mut a = replica("a", 1);
    for (link, name, id) in [(1, "b", 2), (2, "c", 3), (3, "d", 4)] {
        let mut peer = replica(name, id);
        let ours = a.hello(name, T0);
        let theirs = peer.hello("a", T0);
        a.link_up(conn(link, name, true), &ours, theirs, T0)
            .unwrap();
    }
    assert_eq!(a.table().connected(), 3);
    assert!(a.link_left(1, T0 + 10), "b leaves");
    assert_eq!(a.member_state("b"), MemberState::Left);
    assert!(a.table().peer("b").is_none(), "forgotten");
    assert!(a.link_down(2, T0 + 10), "c's link is lost");
    assert_eq!(a.member_state("c"), MemberState::Suspect);
    a.tick(T0 + 10 + LINK_DOWN_AFTER_MS);
    assert_eq!(a.member_state("c"), MemberState::Down);
    assert_eq!(a.table().awaited().collect::<Vec<_>>(), vec!["d"]);
    assert!(a.forget_member("d", T0 + 20_000).is_err(), "d is connected");
    a.tick(T0 + 10 + LINK_DOWN_AFTER_MS + 3_600_000);
    let members = a.members(T0 + 4_000_000);
    let states: Vec<(&str, MemberState, Option<&str>)> = members
        .iter()
        .map(|m| (m.name.as_str(), m.state, m.forgotten))
        .collect();
    assert_eq!(
        states,
        [
            ("b", MemberState::Left, Some("left")),
            ("c", MemberState::Left, Some("down_too_long")),
            ("d", MemberState::Syncing, None),
        ],
        "d has not said it is ready"
    );
    assert_eq!(members[2].last_contact_ms, T0 + 4_000_000, "linked: now");
}

/// Membership's word that a member restarted ends a link still registered to its previous
/// process and dials the member at once; a link to another process (the news is late) is
/// kept, and so is it against a late verdict about an earlier process.
#[test]
fn a_restart_heard_from_membership_ends_the_link_to_the_old_process() {
    use crate::cluster::peers::{Dial, MemberChange, MembershipEvent};
    let mut a = replica("a", 1);
    let mut b = replica("b", 2);
    let (ab, ba) = (a.hello("b", T0), b.hello("a", T0));
    let old = ba.run_id;
    a.link_up(conn(1, "b", true), &ab, ba, T0).unwrap();
    while a.poll_event().is_some() {}
    assert!(
        !a.member_restarted("b", RunId(old.0 ^ 1), T0 + 10),
        "late news: a process other than the one linked was replaced"
    );
    assert_eq!(a.table().connected(), 1);
    assert!(a.poll_event().is_none(), "nothing to do");
    assert_eq!(
        a.on_membership("b", Some(RunId(old.0 ^ 1)), MembershipEvent::Left, T0 + 15),
        MemberChange::Unchanged,
        "an earlier process's leave does not drop the link to this one"
    );
    assert_eq!(a.table().connected(), 1);

    assert!(a.member_restarted("b", old, T0 + 20));
    assert_eq!(a.table().connected(), 0);
    let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Close {
                link: 1,
                code: CLOSE_RESTARTED,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(!a.link_down(1, T0 + 30), "the closed link's end is no news");
    assert_eq!(
        a.table_mut().due(T0 + 30),
        vec![Dial::Member {
            name: "b".into(),
            addr: "127.0.0.1:7000".parse().unwrap()
        }],
        "dialed at once, not after a backoff"
    );
}

/// `--ack-replicas` counts a peer only once it is ready: a joiner's position of our log is
/// adopted from its donor when the donor's snapshot begins (its Start), while the entries
/// up to it are still arriving in that snapshot; they are held once the joiner says it is
/// ready.
#[test]
fn a_joiner_is_not_counted_towards_ack_replicas_before_it_is_ready() {
    let mut a = replica("a", 1);
    a.set_ack_replicas(1);
    let mut j = replica_with_seeds("j", 2, vec!["127.0.0.1:7001".into()]);
    let (aj, ja) = (a.hello("j", T0), j.hello("a", T0));
    assert!(
        ja.flags & crate::replication::frame::HELLO_READY == 0,
        "j is joining"
    );
    a.link_up(conn(1, "j", false), &aj, ja, T0).unwrap();
    a.outbox().record_flush(crate::store::Flush {
        issued: Version((1 << 30) | 1),
        at_ms: 0,
    });
    let seq = a.outbox().last_seq();
    let _ = a.take_acks_moved();
    let start = Frame::Start {
        run_id: a.outbox().run_id(),
        seq,
    };
    assert_eq!(a.handle_live(1, start, T0), Ok(Flow::Continue));
    assert_eq!(a.take_acks_moved(), None, "j's snapshot is still arriving");
    let ready = Frame::Status {
        ready: true,
        load: 0,
    };
    assert_eq!(a.handle_live(1, ready, T0), Ok(Flow::Continue));
    assert_eq!(a.take_acks_moved(), Some(seq), "counted once j is ready");
}
