//! Nodes refuse peers they must not trust and refuse to start without good certificates;
//! junk on the cluster port harms nothing.

use super::*;

/// node-f's certificate comes from another CA. It joins node-a (and node-a is told about
/// node-f too, so that each side's own verifier meets the other's certificate): each logs
/// the refusal with its reason, neither counts a connected peer, and no write crosses.
/// Each opens its client port once `--join-timeout` has passed with no peer, and says so.
#[test]
fn nodes_of_different_cas_refuse_each_other() {
    let dir = TempDir::new("foreign");
    let ca = generate_ca().expect("CA");
    let other = generate_ca().expect("another CA");
    certify(&ca, &dir, "node-a");
    certify(&other, &dir, "node-f");
    let (pa, pf) = free_udp_pair();
    let join_a = ["--join", &loopback(pf), "--join-timeout", "1s"];
    let join_f = ["--join", &loopback(pa), "--join-timeout", "1s"];
    let mut a = Proc::start(&dir, "node-a", 1, pa, &join_a);
    let mut f = Proc::start(&dir, "node-f", 2, pf, &join_f);
    for p in [&a, &f] {
        p.wait_line(&["no peer answered within --join-timeout"]);
    }
    let (mut ca_client, mut cf) = (a.client(), f.client());
    set(&mut ca_client, "from-a", "a");
    set(&mut cf, "from-f", "f");

    for p in [&a, &f] {
        // As the dialer: its verifier refuses the other's certificate (another CA).
        let line = p.wait_line(&["cannot reach peer", "refused by us"]);
        assert!(line.contains("invalid peer certificate"), "{line}");
        assert!(
            line.contains("UnknownIssuer") || line.contains("BadSignature"),
            "{line}"
        );
        // As the acceptor: the incoming connection is refused, with the other side's reason.
        let line = p.wait_line(&["refused a peer connection", "refused by the peer"]);
        assert!(line.contains("invalid peer certificate"), "{line}");
    }

    for (c, other_key) in [(&mut ca_client, "from-f"), (&mut cf, "from-a")] {
        assert_eq!(stat(c, "peers_connected"), 0);
        assert!(stat(c, "peers_refused") >= 1);
        assert_eq!(stat(c, "repl_writes_accepted"), 0);
        assert_eq!(get(c, other_key), None, "{other_key} must not cross");
    }
    assert!(a.serves() && f.serves());
}

/// node-f trusts node-a's CA (its ca.crt is a bundle of both) but its own certificate comes
/// from a CA node-a does not trust: only node-a's verifier refuses. node-f, the dialing side,
/// must say that the peer refused it and why, not only that no peer answered.
#[test]
fn a_node_whose_certificate_the_peer_refuses_says_so() {
    let dir = TempDir::new("refused");
    let ca = generate_ca().expect("CA");
    let other = generate_ca().expect("another CA");
    certify(&ca, &dir, "node-a");
    certify(&other, &dir, "node-f");
    let bundle = format!("{}{}", other.cert_pem(), ca.cert_pem());
    std::fs::write(dir.join("node-f/ca.crt"), bundle).expect("write the bundle");
    let (pa, pf) = free_udp_pair();
    let a = Proc::start(&dir, "node-a", 1, pa, &[]);
    let join_a = ["--join", &loopback(pa), "--join-timeout", "1s"];
    let f = Proc::start(&dir, "node-f", 2, pf, &join_a);
    f.wait_line(&["no peer answered within --join-timeout"]);
    let line = f.wait_line(&["refused this node"]);
    assert!(line.contains("node=node-f"), "{line}");
    assert!(
        line.contains(&loopback(pa)),
        "names the peer's address: {line}"
    );
    assert!(
        line.contains("UnknownIssuer") || line.contains("BadSignature"),
        "says why: {line}"
    );
    a.wait_line(&["refused a peer connection", "invalid peer certificate"]);
}

/// `stats cluster` lists every member (this node first) with its state, address, node id,
/// last contact and lag, one line per field; `stats settings` shows the cluster settings.
#[test]
fn stats_cluster_and_settings_describe_the_cluster() {
    let dir = TempDir::new("stats-cluster");
    let (a, b) = pair(&dir, &["--drain-timeout", "3s"]);
    let mut c = a.client();
    eventually(DEADLINE, "node-b is ready on node-a", || {
        c.call(b"stats cluster\r\n", b"END\r\n")
            .contains("STAT member:node-b:state ready\r\n")
    });
    let out = c.call(b"stats cluster\r\n", b"END\r\n");
    let stats: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let value = |name: &str| {
        stats
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    assert_eq!(value("mode"), "cluster");
    assert_eq!(value("node_name"), "node-a");
    assert_eq!(value("members"), "2");
    assert_eq!(value("member:node-a:state"), "ready");
    assert_eq!(value("member:node-a:node_id"), "1");
    assert_eq!(value("member:node-b:state"), "ready");
    assert_eq!(value("member:node-b:node_id"), "2");
    assert_eq!(value("member:node-b:lag_writes"), "0");
    let mut cb = b.client();
    assert_eq!(
        value("member:node-b:address"),
        loopback(cluster_port(&mut c, "node-b"))
    );
    assert_eq!(
        value("member:node-a:address"),
        loopback(cluster_port(&mut cb, "node-a"))
    );
    let now: u64 = value("member:node-b:last_contact")
        .parse()
        .expect("unix time");
    let time = stat(&mut c, "time");
    assert!(now.abs_diff(time) <= 2, "{now} vs {time}");
    let fields: Vec<&str> = stats
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("member:node-b:"))
        .collect();
    assert_eq!(
        fields,
        [
            "state",
            "address",
            "node_id",
            "last_contact",
            "lag_writes",
            "lag_ms",
            "swim"
        ]
    );

    let settings = c.call(b"stats settings\r\n", b"END\r\n");
    for line in [
        "STAT cluster yes\r\n",
        "STAT node_name node-a\r\n",
        "STAT node_id 1\r\n",
        "STAT drain_timeout_ms 3000\r\n",
        "STAT max_clock_skew_ms 5000\r\n",
        "STAT tombstone_ttl 600\r\n",
        "STAT repl_backlog 67108864\r\n",
        "STAT state_file NULL\r\n",
        "STAT remove_down_after_ms 259200000\r\n",
        "STAT anti_entropy_period_ms 10000\r\n",
    ] {
        assert!(settings.contains(line), "{line:?} in {settings}");
    }
    let settings_b = cb.call(b"stats settings\r\n", b"END\r\n");
    let join = format!(
        "STAT join {}\r\n",
        loopback(cluster_port(&mut cb, "node-a"))
    );
    assert!(settings_b.contains(&join), "{join:?} in {settings_b}");
}

/// Starts node `name` alone with the certificates in `certs`, expecting it to exit.
fn start_to_exit(name: &str, certs: &str) -> (Option<i32>, String) {
    let port = free_port().to_string();
    let listen = loopback(free_udp_port());
    run_to_exit(&[
        "-p",
        &port,
        "-l",
        "127.0.0.1",
        "-U",
        "0",
        "--node-name",
        name,
        "--certs-dir",
        certs,
        "--cluster-listen",
        &listen,
    ])
}

#[test]
fn an_expired_certificate_stops_the_node_at_startup() {
    let dir = TempDir::new("expired");
    let ca = generate_ca().expect("CA");
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let cert = ca
        .issue_node_with_validity("node-a", &["127.0.0.1"], now - 30 * day, now - day)
        .expect("expired cert");
    let certs = dir.join("node-a");
    write_node_dir(&certs, &ca, &cert).expect("write certs");
    let (code, text) = start_to_exit("node-a", &certs.display().to_string());
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {text}");
    assert!(text.contains("expired on"), "{text}");
    assert!(
        text.contains("node.crt"),
        "the message names the file: {text}"
    );
}

#[test]
fn peers_without_certs_dir_exit_2_there_is_no_plaintext_mode() {
    for peer in [["--join", "127.0.0.1:11212"], ["-x", "127.0.0.1"]] {
        let port = free_port().to_string();
        let mut args = vec!["-p", &port, "-l", "127.0.0.1", "-U", "0"];
        args.extend_from_slice(&peer);
        let (code, text) = run_to_exit(&args);
        assert_eq!(code, Some(2), "{peer:?}: {text}");
        assert!(text.contains("no plaintext mode"), "{peer:?}: {text}");
    }
}

#[test]
fn a_node_name_that_is_not_the_certificate_s_stops_the_node() {
    let dir = TempDir::new("name");
    let ca = generate_ca().expect("CA");
    let certs = certify(&ca, &dir, "node-a");
    let (code, text) = start_to_exit("node-b", &certs);
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {text}");
    assert!(
        text.contains("\"node-b\"") && text.contains("\"node-a\""),
        "the message names both: {text}"
    );
}

/// Two nodes with one node id: the connection is refused (and logged as such), nothing
/// replicates, both keep serving. Both nodes must say why at the default log level: DESIGN.md
/// section 1 wants "a clear error" from a node whose id is taken, and an operator may be
/// looking at either node's log.
#[test]
fn a_node_id_taken_twice_is_refused_and_nothing_replicates() {
    let dir = TempDir::new("same-id");
    let ca = generate_ca().expect("CA");
    certify(&ca, &dir, "node-a");
    certify(&ca, &dir, "node-b");
    let (pa, pb) = free_udp_pair();
    let mut a = Proc::start(&dir, "node-a", 7, pa, &[]);
    let join_a = ["--join", &loopback(pa), "--join-timeout", "1s"];
    let mut b = Proc::start(&dir, "node-b", 7, pb, &join_a);
    b.wait_line(&["no peer answered within --join-timeout"]);
    let (mut ca_client, mut cb) = (a.client(), b.client());
    set(&mut ca_client, "from-a", "a");
    set(&mut cb, "from-b", "b");

    // Whichever node reads the other's hello first refuses the connection and logs it.
    let refusal = "refusing peer: node id 7 is already taken";
    eventually(DEADLINE, "a node refuses the other", || {
        a.log().contains(refusal) || b.log().contains(refusal)
    });
    for (c, other_key) in [(&mut ca_client, "from-b"), (&mut cb, "from-a")] {
        assert_eq!(stat(c, "peers_connected"), 0);
        assert_eq!(get(c, other_key), None, "{other_key} must not cross");
    }
    let refused = stat(&mut ca_client, "peers_refused") + stat(&mut cb, "peers_refused");
    assert!(refused >= 1);
    assert!(a.serves() && b.serves());
    for p in [&a, &b] {
        assert!(!p.log().contains("panicked"), "{}", p.log());
    }
    // Each node says why (node-b keeps retrying, so each gets its chance).
    for p in [&a, &b] {
        p.wait_line(&["node id 7 is already taken"]);
    }
}

// ---- 2. Garbage on the cluster port -------------------------------------------------------

/// Thousands of junk datagrams (random, long-header-shaped, QUIC-v1-Initial-shaped, short-
/// header-shaped) at both nodes' cluster ports: the pair's connection survives and writes
/// still replicate both ways.
#[test]
fn junk_datagrams_on_the_cluster_port_harm_nothing() {
    let dir = TempDir::new("junk");
    let (mut a, mut b) = pair(&dir, &[]);
    let (mut ca_client, mut cb) = (a.client(), b.client());
    set(&mut ca_client, "before", "1");
    wait_value(&b, "before", "1");
    let reconnects_before = peer_stat(&mut ca_client, "node-b", "reconnects");

    let junk = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let mut noise = Noise(0x2545_f491_4f6c_dd1d);
    let a_port = cluster_port(&mut cb, "node-a");
    let b_port = cluster_port(&mut ca_client, "node-b");
    for i in 0..4000u32 {
        let len = noise.below(1501) as usize;
        let packet = match i % 4 {
            0 => noise.bytes(len),
            // A long header: first byte 0xc0..=0xff, then anything.
            1 => {
                let mut p = noise.bytes(len.max(1));
                p[0] = 0xc0 | (p[0] & 0x3f);
                p
            }
            // A QUIC v1 Initial: version 1, plausible connection ids, token and length,
            // padded to at least 1200 bytes as real Initials are; garbage protection.
            2 => {
                let mut p = vec![0xc0 | (noise.next() as u8 & 0x0f), 0, 0, 0, 1];
                let dcid = 8 + noise.below(13) as usize;
                p.push(dcid as u8);
                p.extend(noise.bytes(dcid));
                p.push(8);
                p.extend(noise.bytes(8));
                p.push(0);
                p.extend([0x44, 0xd0]);
                let total = 1200 + noise.below(301) as usize;
                p.extend(noise.bytes(total - p.len()));
                p
            }
            // A short header: 0x40..=0x7f.
            _ => {
                let mut p = noise.bytes(len.max(1));
                p[0] = 0x40 | (p[0] & 0x3f);
                p
            }
        };
        let port = if (i / 4) % 2 == 0 { a_port } else { b_port };
        // Loopback may drop some when a socket buffer is full; that is fine.
        let _ = junk.send_to(&packet, ("127.0.0.1", port));
    }

    set(&mut ca_client, "after-a", "2");
    set(&mut cb, "after-b", "3");
    wait_value(&b, "after-a", "2");
    wait_value(&a, "after-b", "3");
    assert!(a.serves() && b.serves());
    assert_eq!(stat(&mut ca_client, "peers_connected"), 1);
    assert_eq!(stat(&mut cb, "peers_connected"), 1);
    assert_eq!(
        peer_stat(&mut ca_client, "node-b", "reconnects"),
        reconnects_before,
        "the peer connection survived the junk"
    );
}
