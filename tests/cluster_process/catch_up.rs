//! A stopped peer catches up after SIGCONT, or, past the replication backlog, is marked for
//! a resync while every write still in the log, and every new one, reaches it.

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
    let reconnects_before = peer_stat(&mut ca_client, "node-b", "reconnects");

    // The stop lasts well under the 10 s QUIC idle time-out: 2000 pipelined sets.
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
    assert_eq!(
        peer_stat(&mut ca_client, "node-b", "reconnects"),
        reconnects_before,
        "a short stop does not cost the connection"
    );
    assert!(b.serves());
}

// ---- 4. Ring overflow ---------------------------------------------------------------------

/// node-a keeps 64k of backlog; node-b is stopped while node-a takes ~2 MB of writes (more
/// than QUIC's stream window holds in flight): node-b falls off the log, is marked as
/// needing a resync (counted and logged), node-a's clients notice nothing, and writes made
/// afterwards reach node-b.
#[test]
fn a_peer_that_falls_off_the_backlog_needs_a_resync_and_live_writes_flow() {
    let dir = TempDir::new("overflow");
    let (mut a, mut b) = pair(&dir, &["--repl-backlog", "64k"]);
    let mut ca_client = a.client();
    set(&mut ca_client, "warm", "up");
    wait_value(&b, "warm", "up");
    assert_eq!(stat(&mut ca_client, "repl_resyncs_needed"), 0);

    stop(&b);
    let mut noise = Noise(7);
    let sets: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| {
            let value = noise
                .bytes(10 << 10)
                .iter()
                .map(|b| b'a' + b % 26)
                .collect();
            (format!("big-{i}"), value)
        })
        .collect();
    pipelined_sets(&mut ca_client, &sets, 10);
    resume(&b);

    eventually(DEADLINE, "node-a counts a resync needed", || {
        stat(&mut ca_client, "repl_resyncs_needed") >= 1
    });
    eventually(DEADLINE, "node-b's state is needs_resync", || {
        peer_stat(&mut ca_client, "node-b", "state") == "needs_resync"
    });
    a.wait_log("needs a resync");

    set(&mut ca_client, "live", "still");
    wait_value(&b, "live", "still");
    assert!(a.serves() && b.serves());
}

/// A write made after node-a reported node-b as needing a resync must reach node-b ("it
/// gets new writes from now on", says the log line), even when node-a's sender was stalled
/// at the time. node-b joins after node-a's 64k backlog has rolled over, so it is marked
/// at once. Then node-b is stopped while node-a takes 4 MB, one write at a time (the sender
/// blocks on QUIC flow control after a stream window's worth, ~1.25 MB, and its position
/// falls off the log), then one more write: that one is still in node-a's log when node-b
/// resumes. (The test above meets the same case whenever its sender fell behind during
/// the burst, before the resume.)
#[test]
fn a_write_made_after_a_peer_was_marked_for_resync_reaches_it() {
    let dir = TempDir::new("overflow-late");
    let ca = generate_ca().expect("CA");
    certify(&ca, &dir, "node-a");
    certify(&ca, &dir, "node-b");
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = Proc::start(&dir, "node-a", 1, pa, &["--repl-backlog", "64k"]);
    let mut ca_client = a.client();
    let mut noise = Noise(11);
    let mut big = |prefix: &str, n: usize| -> Vec<(String, Vec<u8>)> {
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
    };
    pipelined_sets(&mut ca_client, &big("early", 200), 10);

    let b = Proc::start(&dir, "node-b", 2, pb, &["--join", &loopback(pa)]);
    wait_connected(&a, 1);
    eventually(DEADLINE, "node-b's state is needs_resync", || {
        peer_stat(&mut ca_client, "node-b", "state") == "needs_resync"
    });
    a.wait_log("needs a resync");
    set(&mut ca_client, "first", "flows");
    wait_value(&b, "first", "flows");

    stop(&b);
    pipelined_sets(&mut ca_client, &big("later", 400), 1);
    set(&mut ca_client, "live", "still");
    resume(&b);
    wait_value(&b, "live", "still");
    assert!(
        a.log().matches("needs a resync").count() >= 2,
        "{}",
        a.log()
    );
}

// ---- 5. meshcached demo -------------------------------------------------------------------
