//! A value larger than a peer frame (64 MiB) replicates, on the live stream and in a
//! snapshot, and the link goes on carrying later writes (DESIGN.md section 2: any value a
//! node accepts must replicate, and no entry may wedge a link).

use super::*;

/// 80 MiB: over the 64 MiB frame limit, so it travels in parts.
const BIG: usize = 80 << 20;

fn big_value() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

fn set_bytes(c: &mut Client, key: &str, value: &[u8]) {
    let mut req = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
    req.extend_from_slice(value);
    req.extend_from_slice(b"\r\n");
    assert_eq!(c.call(&req, b"\r\n"), "STORED\r\n");
}

/// The value of `key` on `p`, once it has one.
fn wait_bytes(p: &Proc, key: &str) -> Vec<u8> {
    let mut c = p.client();
    let mut got = None;
    eventually(DEADLINE, &format!("{key} on {}", p.log.display()), || {
        c.send(format!("get {key}\r\n").as_bytes());
        let reply = c.read_until(b"END\r\n");
        if reply.len() <= 5 {
            return false;
        }
        got = Some(reply);
        true
    });
    let reply = got.expect("found");
    let header_end = reply.iter().position(|&b| b == b'\n').expect("a header") + 1;
    let header = String::from_utf8_lossy(&reply[..header_end]).into_owned();
    let len: usize = header
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a VALUE line: {header:?}"));
    assert_eq!(reply.len(), header_end + len + 2 + 5, "{header:?}");
    reply[header_end..header_end + len].to_vec()
}

#[test]
fn a_value_over_the_frame_limit_replicates_live_and_by_snapshot() {
    let dir = TempDir::new("large");
    let ca = generate_ca().expect("CA");
    for name in ["node-a", "node-b", "node-c"] {
        certify(&ca, &dir, name);
    }
    let (pa, pb) = free_udp_pair();
    // node-a's log holds the value whole (a backlog over the value), so node-b gets it on
    // the live stream, not from a snapshot.
    let flags = ["-I", "128m", "-m", "512"];
    let mut a_flags = flags.to_vec();
    a_flags.extend(["--repl-backlog", "256MB"]);
    let a = Proc::start(&dir, "node-a", 1, pa, &a_flags);
    let mut b_flags = flags.to_vec();
    let join_a = loopback(pa);
    b_flags.extend(["--join", join_a.as_str()]);
    let b = Proc::start(&dir, "node-b", 2, pb, &b_flags);
    wait_connected(&a, 1);
    wait_connected(&b, 1);
    let mut cb = b.client();
    let snapshots_before = stat(&mut cb, "snapshots_received");

    let value = big_value();
    let mut ca_client = a.client();
    set_bytes(&mut ca_client, "big", &value);
    set(&mut ca_client, "after", "small");
    wait_value(&b, "after", "small");
    assert!(
        wait_bytes(&b, "big") == value,
        "node-b holds the value whole"
    );
    assert_eq!(
        stat(&mut cb, "snapshots_received"),
        snapshots_before,
        "it came on the live stream"
    );

    // A node joining now takes it in node-a's (or node-b's) snapshot.
    let pc = free_udp_port();
    let mut c_flags = flags.to_vec();
    c_flags.extend(["--join", join_a.as_str()]);
    let c = Proc::start(&dir, "node-c", 3, pc, &c_flags);
    wait_connected(&c, 2);
    assert!(
        wait_bytes(&c, "big") == value,
        "node-c holds the value whole"
    );
    let mut cc = c.client();
    assert!(stat(&mut cc, "snapshots_received") >= 1);

    // The links still carry writes, both ways.
    set(&mut cc, "later", "from-c");
    wait_value(&a, "later", "from-c");
    set(&mut ca_client, "last", "from-a");
    wait_value(&c, "last", "from-a");
    wait_value(&b, "last", "from-a");
}
