//! Clocks that are off (libfaketime on one node). Within `--max-clock-skew` nothing
//! changes: the cluster converges. Beyond it the link is refused at the handshake, on both
//! sides, with the offset named in each log: never silent, permanent divergence from
//! writes that every peer refuses one by one.

use super::*;

/// Runs the binary with its wall clock moved by `offset` (monotonic time untouched, so its
/// timers run as usual): libfaketime preloaded through `env`, which execs the binary, so
/// that the process keeps the PID the test stops it by (the `faketime` command forks
/// instead, and stopping it would leave the node running).
fn skewed(offset: &str) -> Vec<String> {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/faketime",
        "/usr/local/lib/faketime",
    ]
    .iter()
    .map(|d| std::path::Path::new(d).join("libfaketime.so.1"))
    .find(|p| p.exists())
    .expect("libfaketime.so.1 (Debian's faketime package; .ci/run installs it)");
    vec![
        "env".to_string(),
        format!("LD_PRELOAD={}", lib.display()),
        format!("FAKETIME={offset}"),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".to_string(),
    ]
}

fn start_pair(dir: &TempDir, offset: &str, b_extra: &[&str]) -> (Proc, Proc) {
    let ca = generate_ca().expect("CA");
    certify(&ca, dir, "node-1");
    certify(&ca, dir, "node-2");
    let port_a = free_udp_port();
    let a = Proc::start(dir, "node-1", 1, port_a, &[]);
    let join = loopback(port_a);
    let mut flags = vec!["--join", join.as_str()];
    flags.extend_from_slice(b_extra);
    let wrapper = skewed(offset);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let b = Proc::start_wrapped(&wrapper, dir, "node-2", 2, free_udp_port(), &flags);
    (a, b)
}

#[test]
fn a_node_three_seconds_ahead_replicates_both_ways() {
    let dir = TempDir::new("clock-3s");
    let (a, b) = start_pair(&dir, "+3s", &[]);
    wait_connected(&a, 1);
    let (mut ca_, mut cb) = (a.client(), b.client());
    let mut keys = Vec::new();
    for i in 0..200 {
        set(&mut ca_, &format!("a-{i}"), "from node-1");
        set(&mut cb, &format!("b-{i}"), "from node-2");
        keys.extend([format!("a-{i}"), format!("b-{i}")]);
    }
    // The same keys written on both sides: last-writer-wins picks one everywhere.
    for i in 0..50 {
        set(&mut ca_, &format!("both-{i}"), "node-1's");
        set(&mut cb, &format!("both-{i}"), "node-2's");
        keys.push(format!("both-{i}"));
    }
    wait_agreement(&[&a, &b], &keys, keys.len(), DEADLINE);
    assert_eq!(stat(&mut ca_, "clock_skew_rejects"), 0);
    assert_eq!(stat(&mut cb, "clock_skew_rejects"), 0);
}

#[test]
fn a_node_an_hour_ahead_is_refused_at_the_handshake_naming_the_offset() {
    let dir = TempDir::new("clock-1h");
    let (a, b) = start_pair(&dir, "+1h", &["--join-timeout", "1s"]);
    // Each side logs the refusal (its own, or the one the other sent it) with the offset.
    let line_a = a.wait_line(&["refusing peer", "node-2's clock is", "ahead of node-1's"]);
    assert!(
        line_a.contains("is 3599.") || line_a.contains("is 3600."),
        "{line_a}"
    );
    let line_b = b.wait_line(&["ERROR", "clock is", "node-1", "node-2"]);
    assert!(
        line_b.contains("is 3599.") || line_b.contains("is 3600."),
        "{line_b}"
    );
    let mut ca_ = a.client();
    assert!(stat(&mut ca_, "peers_refused") >= 1);
    assert_eq!(stat(&mut ca_, "peers_connected"), 0);
    // node-2 serves its clients after --join-timeout, and says it is alone.
    let mut cb = b.client();
    set(&mut cb, "k", "v");
    assert_eq!(stat(&mut cb, "peers_connected"), 0);
}

#[test]
fn a_node_most_peers_refuse_on_time_says_it_is_not_ready() {
    let dir = TempDir::new("clock-outvoted");
    let ca = generate_ca().expect("CA");
    for name in ["node-1", "node-2", "node-3"] {
        certify(&ca, &dir, name);
    }
    let (p1, p2) = (free_udp_port(), free_udp_port());
    let n1 = Proc::start(&dir, "node-1", 1, p1, &[]);
    let join1 = loopback(p1);
    let n2 = Proc::start(&dir, "node-2", 2, p2, &["--join", &join1]);
    wait_connected(&n1, 1);
    // node-3, an hour ahead, knows both (a refused node learns no members from its peers).
    let join2 = loopback(p2);
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let wrapper = skewed("+1h");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let flags = [
        "--join",
        join1.as_str(),
        "--join",
        join2.as_str(),
        "--join-timeout",
        "1s",
        "--metrics-listen",
        metrics.as_str(),
    ];
    let n3 = Proc::start_wrapped(&wrapper, &dir, "node-3", 3, free_udp_port(), &flags);
    let line = n3.wait_line(&["ERROR", "outvoted on time", "2 of the 3 nodes"]);
    assert!(line.contains("node-3"), "{line}");
    let mut c3 = n3.client();
    assert_eq!(stat(&mut c3, "clock_outvoted"), 1);
    let addr: std::net::SocketAddr = metrics.parse().unwrap();
    let (status, body) = common::http_get(addr, "/ready").expect("/ready answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("clock outvoted: 2 of the 3 nodes"), "{body}");
    // The other two agree with each other: each is refused by one node of three.
    for n in [&n1, &n2] {
        assert_eq!(stat(&mut n.client(), "clock_outvoted"), 0);
    }
    // It still serves the clients that reach it (it is alone, not broken).
    set(&mut c3, "k", "v");
    assert_eq!(get(&mut c3, "k").as_deref(), Some("v"));
}
