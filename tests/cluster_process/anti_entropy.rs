//! Anti-entropy between real processes: a node killed for good (`kill -9`) while writing
//! at full speed leaves its two peers with different prefixes of its writes; nobody will
//! ever resend the rest, and the survivors still end up agreeing on all of it.

use super::*;

/// Three nodes; node-a writes as fast as its client can send (noreply sets, never waiting)
/// and is killed with SIGKILL in the middle of it, never to return, while node-c is
/// stopped (so that it surely holds less of the burst than node-b). Once node-c runs
/// again, node-b and node-c hold every write that either of them had received, within a
/// bounded time.
#[test]
fn survivors_of_a_node_killed_mid_burst_agree_on_all_it_sent_either() {
    let dir = TempDir::new("ae-kill");
    let ca = generate_ca().expect("CA");
    for name in ["node-a", "node-b", "node-c"] {
        certify(&ca, &dir, name);
    }
    let pa = free_udp_port();
    let join = ["--join", &loopback(pa)];
    let a = Proc::start(&dir, "node-a", 1, pa, &[]);
    let b = Proc::start(&dir, "node-b", 2, free_udp_port(), &join);
    let c = Proc::start(&dir, "node-c", 3, free_udp_port(), &join);
    for p in [&a, &b, &c] {
        wait_connected(p, 2);
    }
    let (mut writer, mut watch) = (a.client(), a.client());
    let (mut cb, mut cc) = (b.client(), c.client());
    stop(&c);
    // The burst: 100 requests of 1000 noreply sets each, 200-byte values, written without
    // reading anything back, then the kill once node-a has taken a good part of it.
    let value = "v".repeat(200);
    let total = 100_000u64;
    for chunk in 0..total / 1000 {
        let mut req = Vec::new();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            req.extend_from_slice(format!("set key-{i} 0 0 200 noreply\r\n{value}\r\n").as_bytes());
        }
        writer.send(&req);
        if chunk == total / 2000 {
            eventually(DEADLINE, "node-a takes part of the burst", || {
                stat(&mut watch, "curr_items") >= total / 4
            });
            eventually(DEADLINE, "node-b gets part of the burst", || {
                stat(&mut cb, "curr_items") >= total / 8
            });
            a.node.signal(libc::SIGKILL);
            break;
        }
    }
    drop(a);
    resume(&c);
    // Each survivor holds a prefix of node-a's log (its stream is ordered), so agreeing on
    // everything either got is holding the same number of keys, the longer prefix's.
    let start = Instant::now();
    eventually(Duration::from_secs(90), "node-b and node-c agree", || {
        let (nb, nc) = (stat(&mut cb, "curr_items"), stat(&mut cc, "curr_items"));
        nb == nc && nb > 0 && stat(&mut cb, "ae_rounds") > 0
    });
    let n = stat(&mut cb, "curr_items");
    for i in (0..n).step_by(997).chain([n - 1]) {
        let key = format!("key-{i}");
        assert_eq!(get(&mut cb, &key).as_deref(), Some(value.as_str()), "{key}");
        assert_eq!(get(&mut cc, &key).as_deref(), Some(value.as_str()), "{key}");
    }
    let repaired = stat(&mut cb, "ae_keys_received") + stat(&mut cc, "ae_keys_received");
    eprintln!(
        "survivors agree on {n} keys {:?} after the kill; anti-entropy repaired {repaired}",
        start.elapsed()
    );
    assert!(
        repaired > 0,
        "node-c missed nothing: the case was not tested"
    );
    // Both survivors go on replicating to each other.
    set(&mut cb, "after", "b");
    wait_value(&c, "after", "b");
}
