//! Unit tests of one membership instance against a hand-driven peer.

use super::*;

fn id(name: &str, run: u64) -> MemberId {
    MemberId::new(name, 1, "127.0.0.1:9".parse().unwrap(), run)
}

#[test]
fn gossip_whose_sender_is_not_the_connection_is_dropped_and_counted() {
    let mut a = Membership::new(id("node-a", 1), 1);
    let mut b = Membership::new(id("node-b", 1), 2);
    b.announce_to("node-a", 0);
    let (to, data) = b.poll_send().expect("b announces");
    assert_eq!(to, "node-a");
    let err = a.handle_datagram("node-c", &data, 0).unwrap_err();
    assert!(matches!(err, MembershipError::Spoofed { .. }));
    assert_eq!(a.counters.spoofed, 1);
    assert_eq!(a.verdict("node-b"), None);
    // The same bytes on node-b's own connection are heard.
    a.handle_datagram("node-b", &data, 0).unwrap();
    assert_eq!(a.verdict("node-b"), Some(Verdict::Alive));
}

#[test]
fn garbage_is_refused_without_harm() {
    let mut a = Membership::new(id("node-a", 1), 1);
    assert!(a.handle_datagram("node-b", &[1, 2, 3], 0).is_err());
    assert!(a.handle_datagram("node-b", &[], 0).is_err());
    assert_eq!(a.counters.undecodable, 2);
    assert_eq!(a.live_members(), 0);
}

#[test]
fn the_configuration_scales_with_the_member_count() {
    let small = config_for(3);
    let large = config_for(1024);
    assert!(large.suspect_to_down_after > small.suspect_to_down_after);
    assert!(large.max_transmissions > small.max_transmissions);
    // Small clusters keep the floor (see config_for).
    assert_eq!(small.max_transmissions.get(), 10);
    assert_eq!(small.max_packet_size.get(), MAX_GOSSIP_PACKET);
}
