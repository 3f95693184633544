//! Replication between real nodes in this process, over real QUIC on loopback with
//! generated certificates: every protocol's writes reach every node, conflicting writes
//! converge to identical stores (values, flags, expiry times and CAS values alike), CAS tokens
//! work across nodes, deletes and flushes are not undone by older writes arriving late.

mod common;

use common::cluster::TestCluster;
use common::{eventually, Client, DEADLINE};

fn get(c: &mut Client, key: &str) -> String {
    c.call(format!("get {key}\r\n").as_bytes(), b"END\r\n")
}

/// The value of `key` as `gets` shows it, with its CAS: `Some((value, cas))`.
fn gets(c: &mut Client, key: &str) -> Option<(String, u64)> {
    let out = c.call(format!("gets {key}\r\n").as_bytes(), b"END\r\n");
    let mut lines = out.split("\r\n");
    let header = lines.next()?;
    let words: Vec<&str> = header.split(' ').collect();
    if words.first() != Some(&"VALUE") {
        return None;
    }
    Some((lines.next()?.to_string(), words[4].parse().ok()?))
}

fn wait_value(c: &TestCluster, node: usize, key: &str, want: &str) {
    let mut client = c.client(node);
    let expected = if want.is_empty() {
        "END\r\n".to_string()
    } else {
        format!("VALUE {key} ")
    };
    eventually(
        DEADLINE,
        &format!("{key} on node {node} is {want:?}"),
        || {
            let got = get(&mut client, key);
            if want.is_empty() {
                got == expected
            } else {
                got.starts_with(&expected) && got.contains(&format!("\r\n{want}\r\n"))
            }
        },
    );
}

#[test]
fn writes_of_every_protocol_on_any_node_reach_every_node() {
    let c = TestCluster::start(3);
    let mut a = c.client(0);
    let mut b = c.client(1);
    let mut n3 = c.client(2);
    assert_eq!(a.line("set t 5 0 1\r\nx"), "STORED\r\n");
    assert_eq!(b.line("set n 0 0 2\r\n10"), "STORED\r\n");
    wait_value(&c, 2, "n", "10");
    assert_eq!(n3.line("incr n 5"), "15\r\n");
    // The decrement below is made on node-1: it must see the increment first, or the two
    // are concurrent writes and last-writer-wins keeps only one of them.
    wait_value(&c, 0, "n", "15");
    assert_eq!(a.line("append t 0 0 1\r\ny"), "STORED\r\n");
    wait_value(&c, 1, "t", "xy");
    assert_eq!(b.line("prepend t 0 0 1\r\nw"), "STORED\r\n");
    // Meta protocol.
    assert_eq!(n3.line("ms m 3 T0 F7\r\nabc"), "HD\r\n");
    assert_eq!(a.line("ma n MD D5"), "HD\r\n");
    // Binary protocol (its own connections: the first byte picks the protocol): SET of
    // key "bk" to "bv" with flags 9.
    let mut bin_b = c.client(1);
    let mut set = vec![0x80, 0x01, 0, 2, 8, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 0];
    set.extend_from_slice(&[0; 8]);
    set.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 0]);
    set.extend_from_slice(b"bkbv");
    bin_b.send(&set);
    let reply = bin_b.read_exact(24);
    assert_eq!(&reply[6..8], &[0, 0], "binary set succeeded");
    assert_eq!(n3.line("add gone 0 0 1\r\nz"), "STORED\r\n");
    let converged = c.wait_converged();
    let live: Vec<_> = converged
        .iter()
        .filter_map(|(k, v, _)| v.as_ref().map(|v| (k.clone(), v.0.clone(), v.1)))
        .collect();
    assert!(
        live.contains(&(b"t".to_vec(), b"wxy".to_vec(), 5)),
        "{live:?}"
    );
    assert!(
        live.contains(&(b"n".to_vec(), b"10".to_vec(), 0)),
        "{live:?}"
    );
    assert!(
        live.contains(&(b"m".to_vec(), b"abc".to_vec(), 7)),
        "{live:?}"
    );
    assert!(
        live.contains(&(b"bk".to_vec(), b"bv".to_vec(), 9)),
        "{live:?}"
    );
    // Deletes (text, meta, binary) and touch replicate too.
    assert_eq!(a.line("delete gone"), "DELETED\r\n");
    assert_eq!(b.line("md m"), "HD\r\n");
    let mut del = vec![0x80, 0x04, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0];
    del.extend_from_slice(&[0; 8]);
    del.extend_from_slice(b"bk");
    let mut bin_3 = c.client(2);
    bin_3.send(&del);
    assert_eq!(
        &bin_3.read_exact(24)[6..8],
        &[0, 0],
        "binary delete succeeded"
    );
    assert_eq!(a.line("touch t 1000"), "TOUCHED\r\n");
    let converged = c.wait_converged();
    let tombstones: Vec<_> = converged
        .iter()
        .filter(|(_, v, _)| v.is_none())
        .map(|(k, _, _)| k.clone())
        .collect();
    assert_eq!(
        tombstones,
        vec![b"bk".to_vec(), b"gone".to_vec(), b"m".to_vec()]
    );
    let t = converged.iter().find(|(k, _, _)| k == b"t").unwrap();
    assert!(
        t.1.as_ref().unwrap().2 > 0,
        "touched expiry replicated: {t:?}"
    );
    for i in 0..3 {
        assert_eq!(get(&mut c.client(i), "gone"), "END\r\n");
    }
}

#[test]
fn gets_on_one_node_then_cas_on_another() {
    let c = TestCluster::start(2);
    let mut a = c.client(0);
    let mut b = c.client(1);
    assert_eq!(a.line("set k 0 0 2\r\nv1"), "STORED\r\n");
    wait_value(&c, 1, "k", "v1");
    let (_, cas_a) = gets(&mut a, "k").unwrap();
    let (_, cas_b) = gets(&mut b, "k").unwrap();
    assert_eq!(
        cas_a, cas_b,
        "the CAS is the version, the same on every node"
    );
    assert_eq!(b.line(&format!("cas k 0 0 2 {cas_a}\r\nv2")), "STORED\r\n");
    wait_value(&c, 0, "k", "v2");
    // The token is spent everywhere.
    assert_eq!(a.line(&format!("cas k 0 0 2 {cas_a}\r\nv3")), "EXISTS\r\n");
    assert_eq!(b.line(&format!("cas k 0 0 2 {cas_a}\r\nv3")), "EXISTS\r\n");
    let (v, cas2) = gets(&mut a, "k").unwrap();
    assert_eq!(v, "v2");
    assert_ne!(cas2, cas_a);
    c.wait_converged();
}

/// In a cluster a touch gives the item a new version: `gats` answers that new CAS (not the
/// one the touch replaced), so `gats` then `cas` works, on the node and, once replicated,
/// on its peer.
#[test]
fn gats_answers_the_cas_the_touch_gave() {
    let c = TestCluster::start(2);
    let mut a = c.client(0);
    let mut b = c.client(1);
    assert_eq!(a.line("set k 0 0 2\r\nv1"), "STORED\r\n");
    let (_, before) = gets(&mut a, "k").unwrap();
    let reply = a.call(b"gats 100 k\r\n", b"END\r\n");
    let token: u64 = reply
        .split("\r\n")
        .next()
        .and_then(|l| l.split(' ').nth(4))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a CAS in {reply:?}"));
    assert_ne!(token, before, "the touch took a new version");
    let (_, now) = gets(&mut a, "k").unwrap();
    assert_eq!(token, now, "gats answered the item's CAS");
    eventually(DEADLINE, "the touch reached node-2", || {
        gets(&mut b, "k").is_some_and(|(_, cas)| cas == token)
    });
    assert_eq!(b.line(&format!("cas k 0 0 2 {token}\r\nv2")), "STORED\r\n");
    wait_value(&c, 0, "k", "v2");
}

/// Meta flags whose effect could not replicate are refused in a cluster with a clear
/// error, by every command that has them (`ms`, `md`, `mg`, `ma`), and change nothing:
/// `E` (a client-chosen CAS would break the version order) and `I` (the stale mark does not
/// travel with replication).
#[test]
fn meta_e_and_i_are_refused_in_a_cluster() {
    let c = TestCluster::start(2);
    let mut a = c.client(0);
    assert_eq!(a.line("set k 0 0 2\r\nv1"), "STORED\r\n");
    let (_, cas) = gets(&mut a, "k").unwrap();
    for req in [
        "ms k 2 E12345\r\nv2",
        "ms k 2 I\r\nv2",
        "md k I",
        "md k E99",
        "mg k T30 E99",
        "mg fresh N30 E99",
        "ma k E99",
        "ma fresh N0 E99",
    ] {
        let reply = a.line(req);
        assert!(
            reply.starts_with("CLIENT_ERROR ")
                && reply.contains("not allowed on a replicated node"),
            "{req:?}: {reply:?}"
        );
    }
    assert_eq!(
        gets(&mut a, "k"),
        Some(("v1".to_string(), cas)),
        "nothing changed"
    );
    assert_eq!(get(&mut a, "fresh"), "END\r\n", "nothing created");
}

/// A write made on a node whose replication is held up, older than a delete made meanwhile
/// elsewhere, arrives after the delete: it loses everywhere.
#[test]
fn a_delete_is_not_undone_by_an_older_write_arriving_late() {
    let c = TestCluster::start(2);
    let mut a = c.client(0);
    let mut b = c.client(1);
    assert_eq!(a.line("set k 0 0 2\r\nv1"), "STORED\r\n");
    wait_value(&c, 1, "k", "v1");
    let frozen = c.shared(1).cluster.as_ref().unwrap().freeze();
    assert_eq!(b.line("set k 0 0 4\r\nlate"), "STORED\r\n");
    let (_, late_cas) = gets(&mut b, "k").unwrap();
    // The delete on A is newer than B's write (same machine clock, later in time).
    eventually(DEADLINE, "a newer millisecond", || {
        c.shared(0).hlc.tick().0 > late_cas
    });
    assert_eq!(a.line("delete k"), "DELETED\r\n");
    drop(frozen);
    let state = c.wait_converged();
    let k = state
        .iter()
        .find(|(k, _, _)| k == b"k")
        .expect("tombstone kept");
    assert!(k.1.is_none(), "deleted on every node: {k:?}");
    assert_eq!(get(&mut b, "k"), "END\r\n");
    // The nodes agree as soon as B has the delete; B's late write may reach A after that,
    // and A refuses it then.
    eventually(DEADLINE, "A refuses B's late write", || {
        a.stats()["repl_writes_rejected_behind"] == "1"
    });
    let stats = a.stats();
    assert_eq!(stats["repl_writes_accepted"], "0", "{stats:?}");
    assert_eq!(get(&mut a, "k"), "END\r\n");
}

/// flush_all on one node removes, on every node, the items older than it, including one
/// that arrives after the flush, and leaves newer ones.
#[test]
fn flush_all_removes_only_older_items() {
    let c = TestCluster::start(2);
    let mut a = c.client(0);
    let mut b = c.client(1);
    assert_eq!(a.line("set old 0 0 1\r\no"), "STORED\r\n");
    wait_value(&c, 1, "old", "o");
    let frozen = c.shared(1).cluster.as_ref().unwrap().freeze();
    assert_eq!(b.line("set late 0 0 1\r\nl"), "STORED\r\n");
    let (_, late_cas) = gets(&mut b, "late").unwrap();
    eventually(DEADLINE, "a newer millisecond", || {
        c.shared(0).hlc.tick().0 > late_cas
    });
    assert_eq!(a.line("flush_all"), "OK\r\n");
    let flush_at = c.shared(0).hlc.tick().0;
    eventually(DEADLINE, "a newer millisecond on b", || {
        c.shared(1).hlc.tick().0 > flush_at
    });
    assert_eq!(b.line("set new 0 0 1\r\nn"), "STORED\r\n");
    drop(frozen);
    wait_value(&c, 0, "new", "n");
    c.wait_converged();
    for i in 0..2 {
        let mut cl = c.client(i);
        assert_eq!(get(&mut cl, "old"), "END\r\n", "node {i}");
        assert_eq!(get(&mut cl, "late"), "END\r\n", "node {i}");
        assert!(get(&mut cl, "new").contains("\r\nn\r\n"), "node {i}");
    }
}

/// Clients on every node hammer the same few keys with every kind of write at once; when
/// they stop, every node holds exactly the same items with the same CAS values.
#[test]
fn concurrent_conflicting_writes_converge() {
    let c = TestCluster::start(3);
    let addrs: Vec<_> = (0..3).map(|i| c.nodes[i].client_addr.unwrap()).collect();
    let threads: Vec<_> = addrs
        .into_iter()
        .enumerate()
        .flat_map(|(node, addr)| (0..2).map(move |t| (node, t, addr)))
        .map(|(node, t, addr)| {
            std::thread::spawn(move || {
                let mut cl = Client::connect(addr);
                let mut rng = (node * 7 + t * 13 + 1) as u64;
                for i in 0..400u64 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let key = format!("k{}", rng % 8);
                    let req = match (rng >> 8) % 12 {
                        0..=3 => format!("set {key} {node} 0 3\r\nn{node}{}\r\n", i % 10),
                        4 => format!("append {key} 0 0 1\r\n{node}\r\n"),
                        5 => format!("prepend {key} 0 0 1\r\n{node}\r\n"),
                        6 => format!("incr {key} 3\r\n"),
                        7 => format!("delete {key}\r\n"),
                        8 => format!("touch {key} 100\r\n"),
                        9 => format!("ms {key} 2 T50\r\n{node}{node}\r\n"),
                        10 => format!("set {key} 0 0 1\r\n{}\r\n", i % 10),
                        _ if i % 97 == 0 => "flush_all\r\n".to_string(),
                        _ => format!("decr {key} 1\r\n"),
                    };
                    cl.send(req.as_bytes());
                    cl.read_until(b"\r\n");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let state = c.wait_converged();
    assert!(!state.is_empty());
    // Clients see the same: the same value and CAS for every key on every node.
    let views: Vec<Vec<Option<(String, u64)>>> = (0..3)
        .map(|i| {
            let mut cl = c.client(i);
            (0..8).map(|k| gets(&mut cl, &format!("k{k}"))).collect()
        })
        .collect();
    assert_eq!(views[0], views[1]);
    assert_eq!(views[1], views[2]);
    let stats: Vec<_> = (0..3).map(|i| c.client(i).stats()).collect();
    let accepted: u64 = stats
        .iter()
        .map(|s| s["repl_writes_accepted"].parse::<u64>().unwrap())
        .sum();
    assert!(accepted > 0);
}

#[test]
fn stats_report_peers_and_replication() {
    let c = TestCluster::start(3);
    let mut a = c.client(0);
    assert_eq!(a.line("set k 0 0 1\r\nv"), "STORED\r\n");
    wait_value(&c, 2, "k", "v");
    let stats = a.stats();
    assert_eq!(stats["peers_connected"], "2");
    let peers = a.call(b"stats replication\r\n", b"END\r\n");
    for want in [
        "STAT mode cluster\r\n",
        "STAT node_name node-1\r\n",
        "STAT peer:node-2:state connected\r\n",
        "STAT peer:node-3:state connected\r\n",
        "STAT peer:node-2:address 127.0.0.1:",
    ] {
        assert!(peers.contains(want), "{want:?} in {peers}");
    }
    // Acknowledgements catch up: no lag once the write is everywhere.
    eventually(DEADLINE, "acks", || {
        let r = a.call(b"stats replication\r\n", b"END\r\n");
        r.contains("STAT peer:node-2:lag_mutations 0\r\n")
            && r.contains("STAT peer:node-3:lag_mutations 0\r\n")
            && r.contains("STAT peer:node-2:last_acked_seq 1\r\n")
    });
    // Meta E cannot choose a CAS on a replicated node.
    let e = a.line("ms k 1 E12345\r\nx");
    assert!(e.starts_with("CLIENT_ERROR "), "{e}");
}

/// A node given one seed learns the others from it and connects to all of them; a node
/// that is killed and restarted is reconnected to.
#[test]
fn membership_spreads_from_one_seed_and_reconnects() {
    let mut c = TestCluster::start(2);
    // node-3 knows only node-2.
    let seed = c.nodes[1].cluster_addr.unwrap().to_string();
    c.add("node-3", 3, vec![seed], &[]);
    c.wait_mesh();
    c.kill(1);
    eventually(DEADLINE, "node-2's peers notice", || {
        [0, 2]
            .iter()
            .all(|&i| c.shared(i).cluster.as_ref().unwrap().peers_connected() == 1)
    });
    c.restart(1);
    c.wait_mesh();
    let mut a = c.client(0);
    assert_eq!(a.line("set after 0 0 1\r\nx"), "STORED\r\n");
    wait_value(&c, 1, "after", "x");
    wait_value(&c, 2, "after", "x");
}

/// A delete of a key this node does not hold (evicted here, or its write still on the way)
/// answers NOT_FOUND, as memcached does, but still deletes it on the peers.
#[test]
fn a_delete_of_a_key_not_held_here_still_deletes_it_everywhere() {
    let c = TestCluster::start(2);
    let mut a = c.client(0);
    let mut b = c.client(1);
    let frozen = c.shared(1).cluster.as_ref().unwrap().freeze();
    assert_eq!(a.line("set k 0 0 1\r\nv"), "STORED\r\n");
    let (_, set_cas) = gets(&mut a, "k").unwrap();
    eventually(DEADLINE, "a newer millisecond on b", || {
        c.shared(1).hlc.tick().0 > set_cas
    });
    assert_eq!(b.line("delete k"), "NOT_FOUND\r\n");
    drop(frozen);
    let state = c.wait_converged();
    let k = state.iter().find(|(k, _, _)| k == b"k").expect("tombstone");
    assert!(k.1.is_none(), "{k:?}");
    assert_eq!(get(&mut a, "k"), "END\r\n");
}

/// An authenticated peer (a certificate from the cluster's CA) that sends garbage is
/// disconnected; the node keeps its data, its other peer and its clients.
#[test]
fn malformed_frames_from_a_peer_close_only_that_connection() {
    use bytes::{BufMut, BytesMut};
    use meshcached::replication::frame::{encode, Frame, Hello};
    use meshcached::replication::log::RunId;
    use meshcached::replication::transport::PeerEndpoint;

    let c = TestCluster::start(2);
    let mut a = c.client(0);
    assert_eq!(a.line("set k 0 0 1\r\nv"), "STORED\r\n");
    wait_value(&c, 1, "k", "v");
    let before = c.state(0);
    let target = c.nodes[0].cluster_addr.unwrap();
    let cert = c.ca.issue_node("intruder", &["127.0.0.1"]).unwrap();
    let identity = cert.identity(&c.ca).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hello = |run: u64| {
        let mut b = BytesMut::new();
        encode(
            &Frame::Hello(Hello {
                name: "intruder".into(),
                node_id: 900,
                run_id: RunId(run),
                have_run: RunId(0),
                have_seq: 0,
                flags: 0,
                load: 0,
                // An honest clock: this test is about what follows the hello.
                wall_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64,
                run_floor: 0,
            }),
            &mut b,
        );
        b
    };
    let mut bad_batch = hello(5);
    // A batch of run 5 with one entry whose op is 9.
    let mut body = BytesMut::new();
    body.put_u8(1);
    body.put_u64(5);
    body.put_u32(1);
    body.put_u64(1);
    body.put_u64(1);
    body.put_u8(9);
    body.put_u16(1);
    body.put_slice(b"k");
    bad_batch.put_u32(body.len() as u32);
    bad_batch.put_slice(&body);
    let mut other_run = hello(6);
    let mut batch = BytesMut::new();
    encode(
        &Frame::Batch {
            run_id: RunId(7),
            entries: vec![],
        },
        &mut batch,
    );
    other_run.extend_from_slice(&batch);
    // A batch of the intruder's own run carrying a write stamped with another node's id
    // (7): forging someone else's write.
    let mut forged = hello(8);
    let mut batch = BytesMut::new();
    encode(
        &Frame::Batch {
            run_id: RunId(8),
            entries: vec![meshcached::replication::log::Entry {
                seq: 1,
                mutation: meshcached::replication::log::Mutation {
                    key: bytes::Bytes::from_static(b"k"),
                    version: meshcached::clock::Version((1 << 40) | 7),
                    op: meshcached::replication::log::Op::Delete,
                },
            }],
        },
        &mut batch,
    );
    forged.extend_from_slice(&batch);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\xff\xff\xff\xffnot a frame at all".to_vec()),
        ("oversized length", vec![0x7f, 0xff, 0xff, 0xff, 1]),
        ("unknown op after a hello", bad_batch.to_vec()),
        ("batch of another run", other_run.to_vec()),
        ("a write of another node id", forged.to_vec()),
    ];
    rt.block_on(async {
        let ep = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), identity).unwrap();
        for (what, bytes) in cases {
            let pc = ep.connect(target, "node-1").await.unwrap();
            let mut send = pc.conn.open_uni().await.unwrap();
            send.write_all(&bytes).await.unwrap();
            let closed = tokio::time::timeout(DEADLINE, pc.conn.closed()).await;
            assert!(closed.is_ok(), "{what}: the node closes the connection");
        }
    });
    c.wait_mesh();
    assert_eq!(c.state(0), before, "nothing changed");
    assert_eq!(a.line("set k2 0 0 1\r\nw"), "STORED\r\n");
    wait_value(&c, 1, "k2", "w");
}

/// A node stopped right after its clients' writes hands them to its peers before it goes.
#[test]
fn a_stopping_node_hands_its_writes_to_its_peers_first() {
    let mut c = TestCluster::start(2);
    let mut a = c.client(0);
    // Enough that replication is still under way when the last reply arrives.
    let n = 5000;
    let value = "x".repeat(4000);
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend_from_slice(format!("set k{i} 0 0 4000\r\n{value}\r\n").as_bytes());
    }
    let replies = a.call(&batch, b"STORED\r\n".repeat(n).as_slice());
    assert_eq!(replies.matches("STORED\r\n").count(), n);
    c.kill(0);
    let state = c.state(1);
    let live = state.iter().filter(|(_, v, _)| v.is_some()).count();
    assert_eq!(
        live, n,
        "every acknowledged write is on the peer when the node is gone"
    );
}
