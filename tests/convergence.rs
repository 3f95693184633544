//! The convergence contract (DESIGN.md section 0) where a node forgets: delayed flushes
//! reach every node and fire there at their time. Real nodes in this process, over real
//! QUIC (`tests/common/cluster.rs`).

mod common;

use std::time::Instant;

use common::cluster::TestCluster;
use common::{eventually, Client, DEADLINE};

fn get(c: &mut Client, key: &str) -> String {
    c.call(format!("get {key}\r\n").as_bytes(), b"END\r\n")
}

fn wait_value(c: &TestCluster, node: usize, key: &str, want: Option<&str>) {
    let mut client = c.client(node);
    eventually(
        DEADLINE,
        &format!("{key} on node {node} is {want:?}"),
        || {
            let got = get(&mut client, key);
            match want {
                None => got == "END\r\n",
                Some(v) => got.contains(&format!("\r\n{v}\r\nEND\r\n")),
            }
        },
    );
}

/// `flush_all` with a delay longer than the clock-skew limit: the flush still reaches the
/// peer (its version is an ordinary one, only its time is in the future) and fires there at
/// its time, removing what was written before that time, on both nodes alike.
#[test]
fn a_flush_delayed_beyond_the_skew_limit_reaches_the_peer_and_fires_there() {
    let c = TestCluster::with_flags(2, &["--max-clock-skew", "1s"]);
    let mut a = c.client(0);
    let mut b = c.client(1);
    assert_eq!(a.line("set old 0 0 1\r\no"), "STORED\r\n");
    wait_value(&c, 1, "old", Some("o"));
    let issued = Instant::now();
    assert_eq!(a.line("flush_all 3"), "OK\r\n");
    // Written on the peer before the flush's time: it goes too, on both nodes.
    assert_eq!(b.line("set b_old 0 0 1\r\nb"), "STORED\r\n");
    wait_value(&c, 0, "b_old", Some("b"));
    if issued.elapsed().as_millis() < 1500 {
        assert!(
            get(&mut b, "old").contains("\r\no\r\n"),
            "not before its time"
        );
    }
    for node in [1, 0] {
        wait_value(&c, node, "old", None);
        wait_value(&c, node, "b_old", None);
    }
    // Once it has fired, writes live again, on both nodes.
    assert_eq!(b.line("set new 0 0 1\r\nn"), "STORED\r\n");
    wait_value(&c, 0, "new", Some("n"));
    let state = c.wait_converged();
    let keys: Vec<&[u8]> = state.iter().map(|(k, _, _)| k.as_slice()).collect();
    assert_eq!(keys, [&b"new"[..]]);
}
