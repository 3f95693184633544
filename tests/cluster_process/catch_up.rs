//! A stopped peer catches up after SIGCONT, or, past the replication backlog, is resynced
//! by a snapshot; a node joining late is served only once it holds everything.

use super::*;

// ---- 3. A paused peer ---------------------------------------------------------------------

/// node-b is stopped (SIGSTOP) while node-a takes 2000 writes: every write is answered, the
/// lag shows; after SIGCONT node-b catches up and the lag returns to 0.
#[test]
fn a_stopped_peer_catches_up_after_sigcont() {
    let dir = TempDir::new("paused");
    let (a, mut b) = pair(&dir, &[]);
    let (mut ca_client, mut cb) = (a.client(), b.client());
    set(&mut ca_client, "warm", "up");
    wait_value(&b, "warm", "up");

    // 2000 pipelined sets while node-b is stopped (whether its connection outlives the stop
    // or is redialed after it does not matter: what it missed arrives either way).
    stop(&b);
    let sets: Vec<(String, Vec<u8>)> = (0..2000)
        .map(|i| (format!("key-{i}"), format!("value-{i}").into_bytes()))
        .collect();
    pipelined_sets(&mut ca_client, &sets, 100);
    // node-b cannot acknowledge anything while stopped: at least these 2000 are unacked.
    let lag: u64 = peer_stat(&mut ca_client, "node-b", "lag_mutations")
        .parse()
        .expect("a number");
    assert!(lag >= 2000, "lag while node-b is stopped: {lag}");
    resume(&b);

    eventually(DEADLINE, "node-b holds every key", || {
        stat(&mut cb, "curr_items") == 2001
    });
    for i in (0..2000).step_by(97).chain([1999]) {
        assert_eq!(
            get(&mut cb, &format!("key-{i}")).as_deref(),
            Some(format!("value-{i}").as_str())
        );
    }
    eventually(DEADLINE, "node-a's lag for node-b returns to 0", || {
        peer_stat(&mut ca_client, "node-b", "lag_mutations") == "0"
    });
    assert_eq!(peer_stat(&mut ca_client, "node-b", "state"), "connected");
    assert!(b.serves());
}

// ---- 4. Ring overflow ---------------------------------------------------------------------

/// node-a keeps 64k of backlog; node-b is stopped while node-a takes ~8 MB of writes (more
/// than the 4 MiB stream window a peer grants, so node-a's sender blocks with most of them
/// unsent, whatever the timing): node-b falls off the log, which node-a counts
/// and logs, and resyncs by a snapshot: it ends with every item. node-a's clients notice
/// nothing, and writes made afterwards reach node-b.
#[test]
fn a_peer_that_falls_off_the_backlog_is_resynced_by_snapshot() {
    let dir = TempDir::new("overflow");
    let (a, b) = pair(&dir, &["--repl-backlog", "64k"]);
    let (mut ca_client, mut cb) = (a.client(), b.client());
    set(&mut ca_client, "warm", "up");
    wait_value(&b, "warm", "up");
    assert_eq!(stat(&mut ca_client, "repl_resyncs_needed"), 0);
    let sent_before = stat(&mut ca_client, "snapshots_sent");

    stop(&b);
    let sets = big_values(&mut Noise(7), "big", 800);
    pipelined_sets(&mut ca_client, &sets, 10);
    resume(&b);

    eventually(DEADLINE, "node-a counts a resync needed", || {
        stat(&mut ca_client, "repl_resyncs_needed") >= 1
    });
    a.wait_line(&["node-b", "fell behind the replication log"]);
    eventually(DEADLINE, "node-b holds every item again", || {
        stat(&mut cb, "curr_items") == sets.len() as u64 + 1
    });
    assert_same_values(&mut cb, &sets);
    assert!(stat(&mut ca_client, "snapshots_sent") > sent_before);
    eventually(DEADLINE, "node-b's state is connected again", || {
        peer_stat(&mut ca_client, "node-b", "state") == "connected"
    });

    set(&mut ca_client, "live", "still");
    wait_value(&b, "live", "still");
}

/// node-b joins after node-a's 64k backlog has rolled over: its client port opens only
/// once the snapshot it took from node-a is in, so the first read already finds every
/// item. Then node-b is stopped while node-a takes 4 MB one write at a time (about one
/// stream window, 4 MiB: depending on timing node-b's position falls off the log or not),
/// then one more write: node-b ends with all of it either way.
#[test]
fn a_late_joiner_and_a_stalled_peer_get_everything() {
    let dir = TempDir::new("overflow-late");
    let ca = generate_ca().expect("CA");
    certify(&ca, &dir, "node-a");
    certify(&ca, &dir, "node-b");
    let (pa, pb) = free_udp_pair();
    let a = Proc::start(&dir, "node-a", 1, pa, &["--repl-backlog", "64k"]);
    let mut ca_client = a.client();
    let mut noise = Noise(11);
    let early = big_values(&mut noise, "early", 200);
    pipelined_sets(&mut ca_client, &early, 10);

    let b = Proc::start(&dir, "node-b", 2, pb, &["--join", &loopback(pa)]);
    let mut cb = b.client();
    assert_eq!(stat(&mut cb, "curr_items"), 200, "served before its sync");
    assert_same_values(&mut cb, &early);
    b.wait_line(&["node-a", "snapshot applied", "items=200"]);

    stop(&b);
    let later = big_values(&mut noise, "later", 400);
    pipelined_sets(&mut ca_client, &later, 1);
    set(&mut ca_client, "live", "still");
    resume(&b);
    wait_value(&b, "live", "still");
    eventually(DEADLINE, "node-b holds every item", || {
        stat(&mut cb, "curr_items") == 601
    });
    assert_same_values(&mut cb, &later);
}

/// `n` keys `prefix-i` with 10 KiB values of random letters.
fn big_values(noise: &mut Noise, prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let value = noise
                .bytes(10 << 10)
                .iter()
                .map(|b| b'a' + b % 26)
                .collect();
            (format!("{prefix}-{i}"), value)
        })
        .collect()
}

/// Every one of `sets` reads back with its value.
fn assert_same_values(c: &mut Client, sets: &[(String, Vec<u8>)]) {
    for (k, v) in sets {
        let want = String::from_utf8(v.clone()).expect("letters");
        assert_eq!(get(c, k).as_deref(), Some(want.as_str()), "{k}");
    }
}

// ---- 5. meshcached demo -------------------------------------------------------------------
