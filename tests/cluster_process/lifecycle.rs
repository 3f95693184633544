//! The member lifecycle (DESIGN.md section 8) with real processes: a node stopped with
//! SIGTERM is `left` on the others and no longer dialed; an operator forgets a node killed
//! with `kill -9` at once; a forgotten node that starts again is an ordinary join; the
//! others restart one by one without waiting for a member gone for good.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use super::*;

/// Longer than the longest redial delay (5 s, jittered up to 7.5 s): a member still
/// dialed is dialed within it.
const REDIAL_WINDOW: Duration = Duration::from_secs(8);

/// Three nodes, node-b and node-c joining node-a; waits until all are connected.
fn trio(dir: &TempDir) -> (Vec<Proc>, Vec<u16>) {
    let ca = generate_ca().expect("CA");
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
    let mut procs = Vec::new();
    for (i, name) in ["node-a", "node-b", "node-c"].into_iter().enumerate() {
        certify(&ca, dir, name);
        let join = loopback(ports[0]);
        let flags: Vec<&str> = if i == 0 {
            vec![]
        } else {
            vec!["--join", &join]
        };
        procs.push(Proc::start(dir, name, i as u16 + 1, ports[i], &flags));
    }
    for p in &procs {
        wait_connected(p, 2);
    }
    (procs, ports.to_vec())
}

fn member_state(p: &Proc, member: &str) -> Option<String> {
    stats_group(&mut p.client(), "cluster")
        .get(&format!("member:{member}:state"))
        .cloned()
}

fn wait_member_state(p: &Proc, member: &str, want: &str) {
    let end = Instant::now() + DEADLINE;
    loop {
        let state = member_state(p, member);
        if state.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{member} is {state:?}, not {want}, on {}:\n{}",
            p.log.display(),
            p.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether anything arrives on `port` (a dialing peer's QUIC packets) within `window`.
fn dialed_within(socket: &UdpSocket, window: Duration) -> bool {
    let end = Instant::now() + window;
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("set a read timeout");
        if socket.recv_from(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

/// Kills node-c with SIGKILL (it announces nothing) and waits until the others lost their
/// link to it (QUIC's idle timeout) and suspect it (SWIM), or already declared it down.
fn kill_c(procs: &mut [Proc]) {
    procs[2].node.signal(libc::SIGKILL);
    procs[2].node.wait_exit();
    for p in &procs[..2] {
        // SWIM may suspect it before QUIC's idle timeout ends the link, or after.
        eventually(DEADLINE, "node-c suspect (or down) and unlinked", || {
            matches!(
                member_state(p, "node-c").as_deref(),
                Some("suspect" | "down")
            ) && stat(&mut p.client(), "peers_connected") == 1
        });
    }
}

/// Binds the cluster port of a node that exited, to see who still dials it.
fn listen_on(port: u16) -> UdpSocket {
    UdpSocket::bind(("127.0.0.1", port)).expect("bind the gone node's cluster port")
}

/// SIGTERM announces the leaving: the others list the node as `left` within seconds,
/// count one peer, stay ready, and stop dialing it.
#[test]
fn a_node_stopped_with_sigterm_is_left_on_the_others_and_no_longer_dialed() {
    let dir = TempDir::new("lifecycle-sigterm");
    let (mut procs, ports) = trio(&dir);
    procs[2].node.signal(libc::SIGTERM);
    procs[2].node.wait_exit();
    for p in &procs[..2] {
        wait_member_state(p, "node-c", "left");
        let mut c = p.client();
        assert_eq!(stat(&mut c, "peers_connected"), 1);
        assert_eq!(
            c.stats().get("sync_state").map(String::as_str),
            Some("ready")
        );
    }
    procs[0].wait_line(&["member left: forgotten", "peer=node-c"]);
    let socket = listen_on(ports[2]);
    assert!(
        !dialed_within(&socket, REDIAL_WINDOW),
        "a member that left is not dialed"
    );
}

/// A node killed with `kill -9` announced nothing: it is dialed until an operator forgets
/// it with `cluster forget`, on each node; then it is `left` and no longer dialed. When it
/// starts again it is an ordinary join: ready on the others, and replicating.
#[test]
fn an_operator_forgets_a_killed_node_at_once_and_it_can_join_again() {
    let dir = TempDir::new("lifecycle-forget");
    let (mut procs, ports) = trio(&dir);
    kill_c(&mut procs);
    let socket = listen_on(ports[2]);
    assert!(
        dialed_within(&socket, DEADLINE),
        "a killed member is redialed"
    );
    let mut a = procs[0].client();
    assert_eq!(
        a.line("cluster forget node-b"),
        "CLIENT_ERROR node-b is connected: stop it first (a running node would rejoin at once)\r\n"
    );
    assert_eq!(
        a.line("cluster forget node-z"),
        "CLIENT_ERROR no member named \"node-z\"\r\n"
    );
    assert_eq!(
        a.line("cluster forget"),
        "CLIENT_ERROR usage: cluster forget <member name>\r\n"
    );
    for p in &procs[..2] {
        assert_eq!(p.client().line("cluster forget node-c"), "OK\r\n");
        assert_eq!(member_state(p, "node-c").as_deref(), Some("left"));
        assert_eq!(stat(&mut p.client(), "peers_connected"), 1);
    }
    assert_eq!(
        a.line("cluster forget node-c"),
        "CLIENT_ERROR node-c is already forgotten\r\n"
    );
    // Packets of dials already under way (each lasts up to DIAL_TIMEOUT, 1 s) may still
    // arrive: let them pass, then none.
    while dialed_within(&socket, Duration::from_secs(2)) {}
    assert!(
        !dialed_within(&socket, REDIAL_WINDOW),
        "a forgotten member is not dialed"
    );
    drop(socket);

    let join = loopback(ports[0]);
    procs[2] = Proc::start(&dir, "node-c", 3, ports[2], &["--join", &join]);
    wait_connected(&procs[2], 2);
    for p in &procs[..2] {
        wait_member_state(p, "node-c", "ready");
        assert_eq!(stat(&mut p.client(), "peers_connected"), 2);
    }
    set(&mut procs[2].client(), "back", "again");
    wait_value(&procs[1], "back", "again");
}

/// With a member gone for good (killed, then forgotten), the others restart one by one:
/// each comes back ready, linked to the other, and never lists the gone member again
/// (forgotten members are not gossiped), although its address is still in `--join`.
#[test]
fn a_rolling_restart_never_waits_for_a_forgotten_member() {
    let dir = TempDir::new("lifecycle-rolling");
    let (mut procs, ports) = trio(&dir);
    kill_c(&mut procs);
    for p in &procs[..2] {
        assert_eq!(p.client().line("cluster forget node-c"), "OK\r\n");
    }
    set(&mut procs[0].client(), "warm", "yes");
    wait_value(&procs[1], "warm", "yes");
    for (i, name) in [(0usize, "node-a"), (1, "node-b")] {
        let other = 1 - i;
        procs[i].node.signal(libc::SIGTERM);
        procs[i].node.wait_exit();
        wait_member_state(&procs[other], name, "left");
        let (join_other, join_gone) = (loopback(ports[other]), loopback(ports[2]));
        let flags = ["--join", &join_other, "--join", &join_gone];
        procs[i] = Proc::start(&dir, name, i as u16 + 1, ports[i], &flags);
        wait_connected(&procs[i], 1);
        procs[i].wait_line(&["initial sync complete; ready"]);
        wait_member_state(&procs[other], name, "ready");
        assert_eq!(get(&mut procs[i].client(), "warm").as_deref(), Some("yes"));
        assert_eq!(
            member_state(&procs[i], "node-c"),
            None,
            "never learned again"
        );
    }
}

/// A member killed with `kill -9` and never back is `down`, then forgotten once it has
/// been down for `--remove-down-after` (here 2 s): listed as `left`, no longer counted,
/// no longer dialed.
#[test]
fn a_member_down_longer_than_remove_down_after_is_forgotten() {
    let dir = TempDir::new("lifecycle-remove-down");
    let ca = generate_ca().expect("CA");
    certify(&ca, &dir, "node-a");
    certify(&ca, &dir, "node-b");
    let (pa, pb) = free_udp_pair();
    let a = Proc::start(&dir, "node-a", 1, pa, &["--remove-down-after", "2s"]);
    let mut b = Proc::start(&dir, "node-b", 2, pb, &["--join", &loopback(pa)]);
    wait_connected(&a, 1);
    wait_member_state(&a, "node-b", "ready");
    b.node.signal(libc::SIGKILL);
    b.node.wait_exit();
    // SWIM's detection, with slack for a busy machine; then 2 s down.
    let detected = meshcached::cluster::membership::detection_bound(2) + DEADLINE;
    eventually(detected, "node-b down on node-a", || {
        member_state(&a, "node-b").as_deref() == Some("down")
    });
    let socket = listen_on(pb);
    wait_member_state(&a, "node-b", "left");
    let mut c = a.client();
    assert_eq!(stat(&mut c, "peers_connected"), 0);
    assert_eq!(
        c.stats().get("sync_state").map(String::as_str),
        Some("ready")
    );
    a.wait_line(&["forgotten", "peer=node-b"]);
    // Packets of a dial already under way may still arrive: let them pass, then none.
    while dialed_within(&socket, Duration::from_secs(2)) {}
    assert!(
        !dialed_within(&socket, REDIAL_WINDOW),
        "a forgotten member is not dialed"
    );
}
