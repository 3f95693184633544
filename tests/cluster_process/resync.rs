//! No cold cache, with processes and signals: a SIGTERM hands every acknowledged write to
//! the peer before the exit; a node killed with SIGKILL comes back, resyncs and converges.

use super::*;

/// `n` sets of `prefix-i`, `len`-byte values that differ per key.
fn values(prefix: &str, n: usize, len: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let mut v = format!("{prefix}-{i}-").into_bytes();
            v.resize(len, b'x');
            (format!("{prefix}-{i}"), v)
        })
        .collect()
}

fn small_values(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    values(prefix, n, 100)
}

fn assert_holds(c: &mut Client, sets: &[(String, Vec<u8>)]) {
    for (k, v) in sets {
        let want = String::from_utf8(v.clone()).expect("ascii");
        assert_eq!(get(c, k).as_deref(), Some(want.as_str()), "{k}");
    }
}

/// node-a acknowledges 10k writes of 2 KiB (20 MiB: node-b is still receiving them when the
/// last answer arrives) and is sent SIGTERM right after the last answer: it exits 0, and by
/// then node-b holds every one of them (checked at once, not eventually: the drain waits
/// for node-b's acknowledgement, which comes after it applied them). node-b logs that
/// node-a left, not that it failed.
#[test]
fn sigterm_hands_every_acknowledged_write_to_the_peer() {
    let dir = TempDir::new("drain");
    let (mut a, b) = pair(&dir, &[]);
    let mut ca_client = a.client();
    let sets = values("drained", 10_000, 2048);
    pipelined_sets(&mut ca_client, &sets, 200);
    a.node.signal(libc::SIGTERM);
    let status = a.node.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", a.log());
    let mut cb = b.client();
    assert_eq!(stat(&mut cb, "curr_items"), 10_000);
    assert_holds(&mut cb, &sets[sets.len() - 100..]);
    b.wait_line(&["peer left", "node-a"]);
    assert!(!b.log().contains("peer down"), "{}", b.log());
}

/// node-b is killed with SIGKILL (no drain, no goodbye), node-a takes more writes, node-b
/// starts again with the same flags: its client port opens only once it holds everything
/// node-a holds, including what node-b itself had written before it was killed.
#[test]
fn a_node_killed_with_sigkill_resyncs_and_converges() {
    let dir = TempDir::new("sigkill");
    let ca = generate_ca().expect("CA");
    certify(&ca, &dir, "node-a");
    certify(&ca, &dir, "node-b");
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = Proc::start(&dir, "node-a", 1, pa, &[]);
    let join = ["--join", &loopback(pa)];
    let b = Proc::start(&dir, "node-b", 2, pb, &join);
    wait_connected(&a, 1);
    let (mut ca_client, mut cb) = (a.client(), b.client());
    let before = small_values("before", 3_000);
    pipelined_sets(&mut ca_client, &before[..1_500], 100);
    pipelined_sets(&mut cb, &before[1_500..], 100);
    eventually(DEADLINE, "both hold every key", || {
        stat(&mut ca_client, "curr_items") == 3_000 && stat(&mut cb, "curr_items") == 3_000
    });

    b.node.signal(libc::SIGKILL);
    drop(b);
    let during = small_values("during", 2_000);
    pipelined_sets(&mut ca_client, &during, 100);

    let b = Proc::start(&dir, "node-b", 2, pb, &join);
    let mut cb = b.client();
    assert_eq!(stat(&mut cb, "curr_items"), 5_000, "served before its sync");
    assert_holds(&mut cb, &before);
    assert_holds(&mut cb, &during);
    assert_eq!(stat(&mut cb, "snapshots_received"), 1);
    // And it replicates again, both ways.
    set(&mut cb, "after", "b");
    wait_value(&a, "after", "b");
    set(&mut ca_client, "after-a", "a");
    wait_value(&b, "after-a", "a");
}
