//! The convergence contract (DESIGN.md section 0) where a node forgets: delayed flushes
//! reach every node and fire there at their time; an item that expired or was evicted, and
//! a delete under memory pressure, still refuse older writes arriving late; deletes of keys
//! nobody stored cannot push data out of a small node. Real nodes in this process, over real
//! QUIC (`tests/common/cluster.rs`).

mod common;

use std::time::Instant;

use common::cluster::TestCluster;
use common::{eventually, Client, DEADLINE};

fn get(c: &mut Client, key: &str) -> String {
    c.call(format!("get {key}\r\n").as_bytes(), b"END\r\n")
}

/// The CAS of `key` as `gets` shows it, if held.
fn cas(c: &mut Client, key: &str) -> Option<u64> {
    let out = c.call(format!("gets {key}\r\n").as_bytes(), b"END\r\n");
    out.split("\r\n").next()?.split(' ').nth(4)?.parse().ok()
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

/// Whether node `i` holds a live item for `key`, looked up without counting as a use (a
/// `get` would save it from eviction).
fn holds(c: &TestCluster, i: usize, key: &str) -> bool {
    let shared = c.shared(i);
    let now = shared.clock().now_secs();
    shared
        .store
        .read(key.as_bytes(), now, false, |item| item.is_some())
}

/// Sets `n` keys `prefix-<i>` with `len`-byte values on `client`, pipelined.
fn fill(client: &mut Client, prefix: &str, n: usize, len: usize) {
    let value = "v".repeat(len);
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend_from_slice(format!("set {prefix}-{i} 0 0 {len}\r\n{value}\r\n").as_bytes());
    }
    let replies = client.call(&batch, b"STORED\r\n".repeat(n).as_slice());
    assert_eq!(replies.matches("STORED\r\n").count(), n);
}

/// Has node `from` write a marker and waits until node `to` has it: everything `from` wrote
/// before has then been applied (or refused) by `to`, since one origin's stream is in order.
fn wait_stream(c: &TestCluster, from: usize, to: usize, marker: &str) {
    assert_eq!(
        c.client(from).line(&format!("set {marker} 0 0 1\r\nm")),
        "STORED\r\n"
    );
    wait_value(c, to, marker, Some("m"));
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

/// An item that expired here leaves only a tombstone of its version (in a cluster), and an
/// older write of its key arriving late must lose (no regression), while the peer holds the
/// newer version.
#[test]
fn an_expired_item_refuses_an_older_write_arriving_late() {
    let c = TestCluster::start(2);
    let mut a = c.client(0);
    let mut b = c.client(1);
    let frozen = c.shared(1).cluster.as_ref().unwrap().freeze();
    assert_eq!(b.line("set k 0 0 4\r\nlate"), "STORED\r\n");
    let late = cas(&mut b, "k").unwrap();
    eventually(DEADLINE, "a newer millisecond", || {
        c.shared(0).hlc.tick().0 > late
    });
    assert_eq!(a.line("set k 0 1 3\r\nnew"), "STORED\r\n");
    // Read until it has expired: the read reclaims it.
    eventually(DEADLINE, "k expires on node-1", || {
        get(&mut a, "k") == "END\r\n"
    });
    assert!(!holds(&c, 0, "k"));
    drop(frozen);
    wait_stream(&c, 1, 0, "marker");
    assert_eq!(get(&mut a, "k"), "END\r\n", "the older write is refused");
    wait_value(&c, 1, "k", None);
    let stats = a.stats();
    assert_eq!(
        stats["repl_writes_rejected_behind"], "1",
        "by the tombstone"
    );
    assert_eq!(stats["repl_refused_forgotten"], "0");
}

/// The same with an item evicted for memory on a small node.
#[test]
fn an_evicted_item_refuses_an_older_write_arriving_late() {
    let c = TestCluster::with_flags(2, &["-m", "1"]);
    let mut a = c.client(0);
    let mut b = c.client(1);
    let frozen = c.shared(1).cluster.as_ref().unwrap().freeze();
    assert_eq!(b.line("set k 0 0 4\r\nlate"), "STORED\r\n");
    let late = cas(&mut b, "k").unwrap();
    eventually(DEADLINE, "a newer millisecond", || {
        c.shared(0).hlc.tick().0 > late
    });
    assert_eq!(a.line("set k 0 0 3\r\nnew"), "STORED\r\n");
    let mut round = 0;
    eventually(DEADLINE, "k is evicted on node-1", || {
        fill(&mut a, &format!("fill{round}"), 1000, 200);
        round += 1;
        !holds(&c, 0, "k")
    });
    assert!(a.stats()["evictions"].parse::<u64>().unwrap() > 0);
    drop(frozen);
    wait_stream(&c, 1, 0, "marker");
    assert_eq!(get(&mut a, "k"), "END\r\n", "the older write is refused");
    // node-2 took the newer write (and may have evicted it since: it is small too).
    eventually(DEADLINE, "node-2 drops the older write", || {
        !get(&mut b, "k").contains("late")
    });
    assert!(a.stats()["repl_refused_forgotten"].parse::<u64>().unwrap() >= 1);
}

/// A delete on a node under memory pressure is not forgotten for data's sake: an older
/// write arriving after lots of new data still loses to it.
#[test]
fn a_delete_survives_memory_pressure() {
    let c = TestCluster::with_flags(2, &["-m", "1"]);
    let mut a = c.client(0);
    let mut b = c.client(1);
    let frozen = c.shared(1).cluster.as_ref().unwrap().freeze();
    assert_eq!(b.line("set k 0 0 4\r\nlate"), "STORED\r\n");
    let late = cas(&mut b, "k").unwrap();
    eventually(DEADLINE, "a newer millisecond", || {
        c.shared(0).hlc.tick().0 > late
    });
    assert_eq!(a.line("set k 0 0 3\r\nnew"), "STORED\r\n");
    assert_eq!(a.line("delete k"), "DELETED\r\n");
    // Three times the memory limit of new data, some of it read (recently used).
    for round in 0..15 {
        fill(&mut a, &format!("fill{round}"), 1000, 200);
        get(&mut a, &format!("fill{round}-1"));
    }
    assert!(a.stats()["evictions"].parse::<u64>().unwrap() > 5_000);
    drop(frozen);
    wait_stream(&c, 1, 0, "marker");
    assert_eq!(
        get(&mut a, "k"),
        "END\r\n",
        "the older write loses to the delete"
    );
    wait_value(&c, 1, "k", None);
}

/// Deletes of keys nobody stored each leave a tombstone (the key may live on a peer), but
/// tombstones have a budget of their own: they never push data out.
#[test]
fn deletes_of_keys_never_stored_do_not_push_data_out_of_a_small_node() {
    let c = TestCluster::with_flags(2, &["-m", "1"]);
    let mut a = c.client(0);
    fill(&mut a, "item", 5000, 20);
    for chunk in 0..20 {
        let mut batch = Vec::new();
        for i in 0..1000 {
            batch.extend_from_slice(format!("delete ghost-{chunk}-{i}\r\n").as_bytes());
        }
        let replies = a.call(&batch, b"NOT_FOUND\r\n".repeat(1000).as_slice());
        assert_eq!(replies.matches("NOT_FOUND\r\n").count(), 1000);
    }
    wait_stream(&c, 0, 1, "marker");
    for node in 0..2 {
        let shared = c.shared(node);
        let now = shared.clock().now_secs();
        let items = shared
            .store
            .dump(now)
            .iter()
            .filter(|(k, ..)| k.starts_with(b"item-"))
            .count();
        assert_eq!(items, 5000, "node {node} keeps every item");
        assert_eq!(c.client(node).stats()["evictions"], "0", "node {node}");
        assert!(shared.store.stats().tombstones > 0, "node {node}");
    }
}
