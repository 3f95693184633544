//! SWIM membership between real processes: a node stopped with SIGTERM is `left` on the
//! others within a few seconds (its leave travels as gossip after the drain) and forgotten
//! (no longer dialed), and a node killed with SIGKILL is `down` within the configured
//! detection time, never `left`.

use std::time::Duration;

use super::*;
use meshcached::cluster::membership::detection_bound;

fn swim(p: &Proc, peer: &str) -> String {
    let s = stats_group(&mut p.client(), "cluster");
    s.get(&format!("member:{peer}:swim"))
        .cloned()
        .unwrap_or_else(|| "-".to_string())
}

/// node-a, node-b and node-c (b and c joining through a alone), each seeing the two others
/// alive by SWIM.
fn trio(dir: &TempDir) -> [Proc; 3] {
    let ca = generate_ca().expect("CA");
    for n in ["node-a", "node-b", "node-c"] {
        certify(&ca, dir, n);
    }
    let (pa, pb) = free_udp_pair();
    let pc = std::iter::repeat_with(free_udp_port)
        .find(|p| *p != pa && *p != pb)
        .expect("a third port");
    let a = Proc::start(dir, "node-a", 1, pa, &[]);
    let join = loopback(pa);
    let b = Proc::start(dir, "node-b", 2, pb, &["--join", &join]);
    let c = Proc::start(dir, "node-c", 3, pc, &["--join", &join]);
    let nodes = [a, b, c];
    let names = ["node-a", "node-b", "node-c"];
    for (p, me) in nodes.iter().zip(names) {
        for peer in names.iter().filter(|n| **n != me) {
            eventually(DEADLINE, &format!("{me} sees {peer} alive by SWIM"), || {
                swim(p, peer) == "alive"
            });
        }
    }
    nodes
}

#[test]
fn a_node_stopped_with_sigterm_is_left_on_the_others() {
    let dir = TempDir::new("swim-leave");
    let [a, b, mut c] = trio(&dir);
    c.node.signal(libc::SIGTERM);
    assert!(c.node.wait_exit().success());
    for (p, me) in [(&a, "node-a"), (&b, "node-b")] {
        let mut client = p.client();
        eventually(
            Duration::from_secs(5),
            &format!("{me} hears by SWIM that node-c left"),
            || stat(&mut client, "swim_members_left") == 1,
        );
        // Forgotten: listed as `left`, no longer dialed or waited for.
        eventually(DEADLINE, &format!("{me} forgets node-c"), || {
            stats_group(&mut client, "cluster")
                .get("member:node-c:state")
                .is_some_and(|s| s == "left")
        });
        assert_eq!(
            stat(&mut client, "swim_members_down"),
            0,
            "{me}: a leave is not a failure"
        );
    }
}

#[test]
fn a_node_killed_with_sigkill_is_down_within_the_detection_time() {
    let dir = TempDir::new("swim-kill");
    let [a, b, c] = trio(&dir);
    c.node.signal(libc::SIGKILL);
    // Slack beyond the bound for process scheduling on a busy machine.
    let within = detection_bound(3) + Duration::from_secs(2);
    for (p, me) in [(&a, "node-a"), (&b, "node-b")] {
        eventually(within, &format!("{me} sees node-c down"), || {
            swim(p, "node-c") == "down"
        });
        let mut client = p.client();
        assert_eq!(
            stat(&mut client, "swim_members_left"),
            0,
            "{me}: a kill is not a leave"
        );
    }
}
