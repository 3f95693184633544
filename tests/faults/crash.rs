//! `kill -9` of a node under write load. A node that crashes never comes back claiming a
//! past it no longer has: it reloads no state file (a file is trusted only for the run that
//! wrote it), so it takes a snapshot and ends with exactly what its peer holds, without the
//! values it had itself overwritten or the keys it had deleted.

use super::partition::Partition;
use super::*;

fn values(prefix: &str, n: usize, value: &str) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("{prefix}-{i}"), value.as_bytes().to_vec()))
        .collect()
}

fn keys_of(sets: &[(String, Vec<u8>)]) -> Vec<String> {
    sets.iter().map(|(k, _)| k.clone()).collect()
}

#[test]
fn a_node_killed_after_a_warm_restart_never_reloads_stale_contents() {
    let dir = TempDir::new("crash-state");
    let ca = generate_ca().expect("CA");
    certify(&ca, &dir, "node-1");
    certify(&ca, &dir, "node-2");
    let port_a = free_udp_port();
    let a = Proc::start(&dir, "node-1", 1, port_a, &[]);
    let state = dir.join("node-2.state").display().to_string();
    let join = loopback(port_a);
    let b_flags = ["--join", join.as_str(), "--state-file", state.as_str()];
    let start_b = || Proc::start(&dir, "node-2", 2, free_udp_port(), &b_flags);
    let mut b = start_b();
    wait_connected(&a, 1);

    // Run 1 of node-2: its writes, then a graceful stop that saves the file.
    let first = values("k", 2_000, "first");
    pipelined_sets(&mut b.client(), &first, 200);
    wait_agreement(&[&a, &b], &keys_of(&first), first.len(), DEADLINE);
    b.node.signal(libc::SIGTERM);
    assert_eq!(b.node.wait_exit().code(), Some(0), "{}", b.log());

    // Run 2 loads it, overwrites and deletes some of its keys, and takes node-1's writes.
    b = start_b();
    b.wait_line(&["state file loaded"]);
    let mut cb = b.client();
    let second = values("k", 500, "second");
    pipelined_sets(&mut cb, &second, 100);
    for i in 500..600 {
        assert_eq!(cb.line(&format!("delete k-{i}")), "DELETED\r\n");
    }
    let from_a = values("a", 5_000, "from node-1");
    pipelined_sets(&mut a.client(), &from_a, 500);
    let mut all = keys_of(&first);
    all.extend(keys_of(&from_a));
    wait_agreement(&[&a, &b], &all, all.len() - 100, DEADLINE);

    // kill -9, more writes on node-1 meanwhile, and a restart with the same flags.
    b.node.child.kill().expect("kill -9");
    let _ = b.node.child.wait();
    let during = values("during", 1_000, "while node-2 was down");
    pipelined_sets(&mut a.client(), &during, 500);
    all.extend(keys_of(&during));
    let b = start_b();
    wait_agreement(&[&a, &b], &all, all.len() - 100, Duration::from_secs(20));
    let mut cb = b.client();
    for i in (0..500).step_by(7) {
        assert_eq!(get(&mut cb, &format!("k-{i}")).as_deref(), Some("second"));
    }
    for i in 500..600 {
        assert_eq!(get(&mut cb, &format!("k-{i}")), None, "k-{i} was deleted");
    }
}

/// Three nodes, clients writing on node-1 and node-2 without pause; node-3 is killed with
/// `kill -9` in the middle and started again (no state file): once the writers stop, every
/// node holds every acknowledged write with the same CAS.
#[test]
fn kill_9_under_write_load_converges() {
    let dir = TempDir::new("crash-load");
    let mut nodes = cluster(&dir, 3, &[]);
    let stop_writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = nodes[..2]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = p.client();
            let stop = stop_writing.clone();
            std::thread::spawn(move || {
                let mut written = Vec::new();
                let mut round = 0;
                // Paced (about 4,000 writes a second each), so that the restarted node's
                // snapshot stays small on a loaded machine.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sets: Vec<(String, Vec<u8>)> = (0..100)
                        .map(|k| (format!("w{i}-{round}-{k}"), vec![b'x'; 100]))
                        .collect();
                    pipelined_sets(&mut c, &sets, 100);
                    written.extend(sets.into_iter().map(|(k, _)| k));
                    round += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                written
            })
        })
        .collect();
    let mut c1 = nodes[0].client();
    eventually(DEADLINE, "some writes are in", || {
        stat(&mut c1, "curr_items") > 5_000
    });
    let seed = cluster_port(&mut c1, "node-2");
    let mut victim = nodes.pop().expect("node-3");
    victim.node.child.kill().expect("kill -9");
    let _ = victim.node.child.wait();
    eventually(DEADLINE, "more writes while node-3 is down", || {
        stat(&mut c1, "curr_items") > 15_000
    });
    let join = loopback(seed);
    nodes.push(Proc::start(
        &dir,
        "node-3",
        3,
        free_udp_port(),
        &["--join", &join],
    ));
    eventually(DEADLINE, "more writes after the restart", || {
        stat(&mut c1, "curr_items") > 25_000
    });
    stop_writing.store(true, std::sync::atomic::Ordering::Relaxed);
    let keys: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    let refs: Vec<&Proc> = nodes.iter().collect();
    wait_agreement(&refs, &keys, keys.len(), Duration::from_secs(30));
}

/// Three nodes; node-1 is cut off from node-2 while it takes writes, which node-3 gets, and
/// then killed with `kill -9` and started again without data. Its writes are now on node-3
/// alone, and node-3 sends only its own: when node-2 sees node-1 back with a new run, it
/// asks every member for node-1's entries (the catch-up of a restarted origin), so every
/// node ends with them.
#[test]
fn a_crashed_nodes_writes_that_reached_one_peer_reach_every_node() {
    let dir = TempDir::new("crash-catch-up");
    let mut nodes = cluster(&dir, 3, &[]);
    let mut c1 = nodes[0].client();
    let mut c2 = nodes[1].client();
    let ports = [
        cluster_port(&mut c2, "node-1"),
        cluster_port(&mut c1, "node-2"),
    ];
    let node3 = cluster_port(&mut c1, "node-3");
    let before = values("before", 500, "everywhere");
    pipelined_sets(&mut c1, &before, 100);
    let refs: Vec<&Proc> = nodes.iter().collect();
    wait_agreement(&refs, &keys_of(&before), before.len(), DEADLINE);

    let mut cut = Partition::cut(ports[0], ports[1]);
    let only3 = values("cut", 2_000, "node-1 to node-3 only");
    pipelined_sets(&mut c1, &only3, 200);
    wait_agreement(
        &[&nodes[0], &nodes[2]],
        &keys_of(&only3),
        only3.len(),
        DEADLINE,
    );
    assert!(
        get(&mut c2, "cut-0").is_none(),
        "node-2 must not have node-1's writes yet: the cut did not hold"
    );
    let mut victim = nodes.remove(0);
    victim.node.child.kill().expect("kill -9");
    let _ = victim.node.child.wait();
    cut.heal();
    drop(victim);

    let join = loopback(node3);
    nodes.push(Proc::start(
        &dir,
        "node-1",
        1,
        free_udp_port(),
        &["--join", &join],
    ));
    let mut all = keys_of(&before);
    all.extend(keys_of(&only3));
    let refs: Vec<&Proc> = nodes.iter().collect();
    wait_agreement(&refs, &all, all.len(), Duration::from_secs(20));
    assert!(stat(&mut nodes[0].client(), "catch_up_items_received") > 0);
}
