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
    let (pa, pb) = free_udp_pair();
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

    let b = Proc::start(&dir, "node-b", 2, free_udp_port(), &join);
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

/// node-b runs with `--state-file`: a SIGTERM saves it; while node-b is down node-a takes
/// more writes; node-b starts again, loads the file and takes only the delta (no snapshot),
/// and its client port opens with every item present.
#[test]
fn a_warm_restart_loads_the_state_file_and_takes_only_the_delta() {
    let dir = TempDir::new("warm");
    let state = dir.join("node-b.state").display().to_string();
    let (a, mut b, b_flags) = pair_with_state(&dir, &state);
    let mut ca_client = a.client();
    let before = small_values("before", 3_000);
    pipelined_sets(&mut ca_client, &before, 100);
    let mut cb = b.client();
    eventually(DEADLINE, "node-b holds every key", || {
        stat(&mut cb, "curr_items") == 3_000
    });
    drop(cb);
    b.node.signal(libc::SIGTERM);
    assert_eq!(b.node.wait_exit().code(), Some(0), "{}", b.log());
    b.wait_line(&["state file saved", "items=3000"]);

    let during = small_values("during", 500);
    pipelined_sets(&mut ca_client, &during, 100);
    let b = Proc::start(&dir, "node-b", 2, free_udp_port(), &strs(&b_flags));
    let mut cb = b.client();
    assert_eq!(stat(&mut cb, "curr_items"), 3_500, "served before its sync");
    assert_holds(&mut cb, &before[..200]);
    assert_holds(&mut cb, &during);
    b.wait_line(&["state file loaded", "items=3000"]);
    assert_eq!(stat(&mut cb, "snapshots_received"), 0, "{}", b.log());
    // The delta is logged as a snapshot would be: by the sender, with what it sends.
    a.wait_line(&[
        "sending a delta",
        "node=node-a",
        "peer=node-b",
        "writes=500",
    ]);
}

/// With its peer down too, node-b serves its state file's data once `--join-timeout` has
/// passed, and says why.
#[test]
fn with_its_peers_down_a_node_serves_its_state_file_after_the_join_timeout() {
    let dir = TempDir::new("warm-alone");
    let state = dir.join("node-b.state").display().to_string();
    let (mut a, mut b, mut b_flags) = pair_with_state(&dir, &state);
    let sets = small_values("kept", 1_000);
    pipelined_sets(&mut a.client(), &sets, 100);
    let mut cb = b.client();
    eventually(DEADLINE, "node-b holds every key", || {
        stat(&mut cb, "curr_items") == 1_000
    });
    drop(cb);
    for p in [&mut b, &mut a] {
        p.node.signal(libc::SIGTERM);
        assert_eq!(p.node.wait_exit().code(), Some(0));
    }
    b_flags.extend(["--join-timeout".to_string(), "1s".to_string()]);
    let b = Proc::start(&dir, "node-b", 2, free_udp_port(), &strs(&b_flags));
    b.wait_line(&["no peer answered within --join-timeout"]);
    let mut cb = b.client();
    assert_eq!(stat(&mut cb, "curr_items"), 1_000);
    assert_holds(&mut cb, &sets);
}

/// A damaged, truncated, foreign-cluster or other-node state file is reported in one log
/// line naming the file and what is wrong, ignored (nothing of it is served), and the
/// node resyncs by snapshot from its peer.
#[test]
fn a_bad_state_file_is_reported_ignored_and_the_node_resyncs() {
    let dir = TempDir::new("bad-state");
    let state = dir.join("node-b.state").display().to_string();
    let (a, mut b, b_flags) = pair_with_state(&dir, &state);
    let mut ca_client = a.client();
    pipelined_sets(&mut ca_client, &small_values("shared", 1_000), 100);
    let mut cb = b.client();
    eventually(DEADLINE, "node-b holds every key", || {
        stat(&mut cb, "curr_items") == 1_000
    });
    drop(cb);
    type Damage = fn(&std::path::Path);
    let damages: [(&str, Damage, &str); 4] = [
        (
            "flipped",
            flip_middle_byte,
            "is damaged: its checksum does not match",
        ),
        ("truncated", truncate_half, "was cut short"),
        ("foreign", foreign_cluster, "belongs to another cluster"),
        ("other-node", other_node, "was saved by node \"node-z\""),
    ];
    let mut written = 1_000;
    for (what, damage, message) in damages {
        b.node.signal(libc::SIGTERM);
        assert_eq!(b.node.wait_exit().code(), Some(0), "{what}: {}", b.log());
        // node-a moves on meanwhile; a file's keys would show as a stale count.
        set(&mut ca_client, &format!("after-{what}"), "x");
        written += 1;
        damage(std::path::Path::new(&state));
        b = Proc::start(&dir, "node-b", 2, free_udp_port(), &strs(&b_flags));
        let line = b.wait_line(&[message]);
        assert!(
            line.contains(&state),
            "{what}: the line names the file: {line}"
        );
        assert!(line.contains("resyncs by snapshot"), "{what}: {line}");
        let mut cb = b.client();
        assert_eq!(stat(&mut cb, "curr_items"), written, "{what}");
        assert_eq!(stat(&mut cb, "snapshots_received"), 1, "{what}");
        assert!(!b.log().contains("panicked"), "{what}: {}", b.log());
    }
}

/// Starts node-a, and node-b joining it with `--state-file state`; returns both and
/// node-b's flags, to start it again (on a fresh cluster port).
fn pair_with_state(dir: &TempDir, state: &str) -> (Proc, Proc, Vec<String>) {
    let ca = generate_ca().expect("CA");
    certify(&ca, dir, "node-a");
    certify(&ca, dir, "node-b");
    let (pa, pb) = free_udp_pair();
    let a = Proc::start(dir, "node-a", 1, pa, &[]);
    let flags: Vec<String> = ["--join", &loopback(pa), "--state-file", state]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let b = Proc::start(dir, "node-b", 2, pb, &strs(&flags));
    wait_connected(&a, 1);
    (a, b, flags)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn flip_middle_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).expect("state file");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(path, bytes).expect("write");
}

fn truncate_half(path: &std::path::Path) {
    let bytes = std::fs::read(path).expect("state file");
    std::fs::write(path, &bytes[..bytes.len() / 2]).expect("write");
}

/// A well-formed file with keys node-b never had, of another cluster or another node.
fn rewrite(path: &std::path::Path, cluster_id: Option<u64>, node_name: &str) {
    use meshcached::clock::{Clock as _, Hlc, NodeId, SystemClock};
    use meshcached::store::{Mutation, NewValue, Put, Store, StoreConfig};
    let clock = std::sync::Arc::new(SystemClock);
    let hlc = Hlc::new(NodeId::new(9).expect("id"), clock.clone());
    let store = Store::new(StoreConfig::default());
    let now = clock.now_secs();
    for i in 0..50 {
        let key = format!("intruder-{i}");
        let put = Put {
            value: NewValue::Bytes(b"x"),
            flags: 0,
            exptime: 0,
            bits: 0,
            version: None,
        };
        store
            .mutate(key.as_bytes(), now, &hlc, |_| (Mutation::Put(put), ()))
            .expect("set");
    }
    let certs = path.with_file_name("node-b");
    let identity = meshcached::certs::load_node_identity(&certs).expect("node-b's certificates");
    let ours = meshcached::state::cluster_id(identity.ca_certs[0].as_ref());
    let header = meshcached::state::StateHeader {
        cluster_id: cluster_id.unwrap_or(ours),
        node_name: node_name.to_string(),
        written_ms: clock.now_ms(),
        positions: vec![],
    };
    meshcached::state::save(path, &header, &store, now).expect("save");
}

fn foreign_cluster(path: &std::path::Path) {
    rewrite(path, Some(0x0123_4567_89ab_cdef), "node-b");
}

fn other_node(path: &std::path::Path) {
    rewrite(path, None, "node-z");
}

/// `--serve-while-syncing` opens the client port at once, even with no peer answering
/// (here the only peer refuses this node's certificate) and a join timeout far away;
/// `stats` says the node is not in sync yet.
#[test]
fn serve_while_syncing_opens_the_port_at_once() {
    let dir = TempDir::new("serve-early");
    let ca = generate_ca().expect("CA");
    let other = generate_ca().expect("another CA");
    certify(&ca, &dir, "node-a");
    certify(&other, &dir, "node-b");
    let (pa, pb) = free_udp_pair();
    let _a = Proc::start(&dir, "node-a", 1, pa, &[]);
    let join = ["--join", &loopback(pa), "--join-timeout", "10m"];
    let mut flags = join.to_vec();
    flags.push("--serve-while-syncing");
    let b = Proc::start(&dir, "node-b", 2, pb, &flags);
    let mut cb = b.client();
    set(&mut cb, "early", "yes");
    let stats = cb.stats();
    assert_ne!(stats["sync_state"], "ready", "{stats:?}");
}

/// A state file older than `--tombstone-ttl` is not loaded: deletes made since may have
/// left no tombstone anywhere. The node says so and resyncs by snapshot.
#[test]
fn a_state_file_older_than_the_tombstone_ttl_is_not_used() {
    let dir = TempDir::new("old-state");
    let state = dir.join("node-b.state").display().to_string();
    let (a, mut b, mut b_flags) = pair_with_state(&dir, &state);
    pipelined_sets(&mut a.client(), &small_values("kept", 100), 100);
    let mut cb = b.client();
    eventually(DEADLINE, "node-b holds every key", || {
        stat(&mut cb, "curr_items") == 100
    });
    drop(cb);
    b.node.signal(libc::SIGTERM);
    assert_eq!(b.node.wait_exit().code(), Some(0));
    let file = std::path::PathBuf::from(&state);
    eventually(DEADLINE, "the state file is over a second old", || {
        let modified = std::fs::metadata(&file).and_then(|m| m.modified());
        modified.is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_millis(1100))
    });
    b_flags.extend(["--tombstone-ttl".to_string(), "1s".to_string()]);
    let b = Proc::start(&dir, "node-b", 2, free_udp_port(), &strs(&b_flags));
    b.wait_line(&["older than --tombstone-ttl", &state]);
    let mut cb = b.client();
    assert_eq!(stat(&mut cb, "curr_items"), 100);
    assert_eq!(stat(&mut cb, "snapshots_received"), 1);
}

/// node-b loses its only peer for longer than `--tombstone-ttl` and serves its clients
/// alone meanwhile; node-a comes back empty. node-b never wipes itself (it stayed up and
/// holds the only copy of what its clients wrote): it keeps everything, node-a receives it
/// all, and replication goes on. (An earlier rule discarded node-b's contents here.)
#[test]
fn the_node_that_stayed_up_keeps_its_data_when_its_peer_returns_empty() {
    let dir = TempDir::new("isolated");
    let ca = generate_ca().expect("CA");
    certify(&ca, &dir, "node-a");
    certify(&ca, &dir, "node-b");
    let (pa, pb) = free_udp_pair();
    let mut a = Proc::start(&dir, "node-a", 1, pa, &[]);
    let join = ["--join", &loopback(pa), "--tombstone-ttl", "1s"];
    let b = Proc::start(&dir, "node-b", 2, pb, &join);
    wait_connected(&b, 1);
    let mut cb = b.client();
    set(&mut cb, "before", "x");
    wait_value(&a, "before", "x");

    a.node.signal(libc::SIGTERM);
    assert_eq!(a.node.wait_exit().code(), Some(0));
    wait_connected(&b, 0);
    let alone = Instant::now();
    set(&mut cb, "while-alone", "y");
    eventually(DEADLINE, "node-b alone for over two seconds", || {
        alone.elapsed() > Duration::from_millis(2200)
    });

    // node-a comes back empty (no state file), joining node-b. (Restarts here take a new
    // cluster port: the old one may have been taken meanwhile by another test's node.)
    let a = Proc::start(
        &dir,
        "node-a",
        1,
        free_udp_port(),
        &["--join", &loopback(pb)],
    );
    wait_connected(&b, 1);
    wait_value(&a, "before", "x");
    wait_value(&a, "while-alone", "y");
    assert_eq!(get(&mut cb, "before").as_deref(), Some("x"));
    assert_eq!(get(&mut cb, "while-alone").as_deref(), Some("y"));
    assert_eq!(stat(&mut cb, "curr_items"), 2, "node-b kept everything");
    // And replication works again, both ways.
    set(&mut cb, "after", "z");
    wait_value(&a, "after", "z");
    set(&mut a.client(), "from-a", "w");
    wait_value(&b, "from-a", "w");
}

/// A `--state-file` that cannot be written is reported when the node starts (it exits with
/// an error naming the path and the reason), not discovered when it stops and its warm
/// restart is already lost.
#[test]
fn an_unwritable_state_file_path_stops_the_node_at_startup() {
    let dir = TempDir::new("state-unwritable");
    let ca = generate_ca().expect("CA");
    let certs = certify(&ca, &dir, "node-a");
    let missing = dir.join("no-such-dir/node-a.state").display().to_string();
    let listen = loopback(free_udp_port());
    let (code, text) = run_to_exit(&[
        "-p",
        "0",
        "--node-name",
        "node-a",
        "--certs-dir",
        &certs,
        "--cluster-listen",
        &listen,
        "--state-file",
        &missing,
    ]);
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {text}");
    assert!(
        text.contains(&missing),
        "the message names the path: {text}"
    );
    assert!(text.contains("writable"), "{text}");
}

/// A run without `--state-file` leaves the file of the run before it; the next start with
/// the flag loads that file, and node-a's hello (it applied node-b's later run) proves it
/// stale: node-b asks every member for its own writes and ends with its later value, not
/// the file's. (Before: node-b served `v1` for good, since peers send only their own
/// writes.)
#[test]
fn a_state_file_older_than_the_last_run_is_found_stale() {
    let dir = TempDir::new("stale");
    let state = dir.join("node-b.state").display().to_string();
    let (a, b, b_flags) = pair_with_state(&dir, &state);
    set(&mut b.client(), "k", "v1");
    wait_value(&a, "k", "v1");
    let stop = |mut b: Proc| {
        b.node.signal(libc::SIGTERM);
        assert_eq!(b.node.wait_exit().code(), Some(0), "{}", b.log());
        b
    };
    let b = stop(b);
    b.wait_line(&["state file saved"]);
    // The same node, its --state-file left out (the first two flags are its --join).
    let b = Proc::start(&dir, "node-b", 2, free_udp_port(), &strs(&b_flags[..2]));
    set(&mut b.client(), "k", "v2");
    wait_value(&a, "k", "v2");
    stop(b);
    let b = Proc::start(&dir, "node-b", 2, free_udp_port(), &strs(&b_flags));
    b.wait_line(&["state file loaded"]);
    wait_value(&b, "k", "v2");
    b.wait_line(&["the state file is stale", "node=node-b", "peer=node-a"]);
    assert_eq!(stat(&mut b.client(), "stale_state_files"), 1);
}

/// A start that fails after the state file was read (here: the metrics port is taken)
/// keeps the file, so the next start is still warm. (Before, the file was removed as it
/// was loaded: one misconfiguration pushed to every node left the whole cluster cold.)
#[test]
fn a_start_that_fails_after_loading_the_state_file_keeps_it() {
    let dir = TempDir::new("keep");
    let state = dir.join("node-b.state").display().to_string();
    let (a, mut b, b_flags) = pair_with_state(&dir, &state);
    set(&mut b.client(), "k", "v");
    wait_value(&a, "k", "v");
    b.node.signal(libc::SIGTERM);
    assert_eq!(b.node.wait_exit().code(), Some(0), "{}", b.log());
    b.wait_line(&["state file saved"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let metrics = taken.local_addr().expect("addr").to_string();
    let certs = dir.join("node-b").display().to_string();
    let listen = loopback(free_udp_port());
    let mut args = vec![
        "-l",
        "127.0.0.1",
        "-p",
        "0",
        "-t",
        "2",
        "--node-name",
        "node-b",
        "--node-id",
        "2",
        "--certs-dir",
        &certs,
        "--cluster-listen",
        &listen,
        "--metrics-listen",
        &metrics,
    ];
    args.extend(strs(&b_flags));
    let (code, out) = run_to_exit(&args);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        std::path::Path::new(&state).exists(),
        "the state file is kept: {out}"
    );
    let b = Proc::start(&dir, "node-b", 2, free_udp_port(), &strs(&b_flags));
    b.wait_line(&["state file loaded"]);
    assert_eq!(get(&mut b.client(), "k").as_deref(), Some("v"));
    assert_eq!(
        stat(&mut b.client(), "snapshots_received"),
        0,
        "{}",
        b.log()
    );
    assert!(
        !std::path::Path::new(&state).exists(),
        "removed once serving"
    );
}
