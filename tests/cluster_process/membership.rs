//! SWIM membership between real processes: a node stopped with SIGTERM is `left` on the
//! others within a few seconds (its leave travels as gossip after the drain) and forgotten
//! (no longer dialed), and a node killed with SIGKILL is `down` within the configured
//! detection time, never `left`; a node killed and started again is seen as a restart (a
//! new run of the same member), and replication with it resumes.

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
/// alive by SWIM; and node-a's cluster port.
fn trio(dir: &TempDir) -> ([Proc; 3], u16) {
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
    (nodes, pa)
}

#[test]
fn a_node_stopped_with_sigterm_is_left_on_the_others() {
    let dir = TempDir::new("swim-leave");
    let ([a, b, mut c], _) = trio(&dir);
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
    let ([a, b, c], _) = trio(&dir);
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

/// node-a (the one the others joined through) is killed and started again at once on its
/// ports: the others see a new run of node-a (`swim_member_restarts`), not a stranger, and
/// end up linked to its new process, which replicates both ways.
#[test]
fn a_killed_and_restarted_node_is_seen_as_a_restart_and_linked_again() {
    let dir = TempDir::new("swim-restart");
    let ([mut a, b, c], port) = trio(&dir);
    a.node.signal(libc::SIGKILL);
    let _ = a.node.wait_exit();
    let a = Proc::start(&dir, "node-a", 1, port, &[]);
    for (p, me) in [(&b, "node-b"), (&c, "node-c")] {
        let mut client = p.client();
        eventually(DEADLINE, &format!("{me} sees node-a's restart"), || {
            stat(&mut client, "swim_member_restarts") >= 1
        });
        eventually(DEADLINE, &format!("{me} sees node-a alive again"), || {
            swim(p, "node-a") == "alive"
        });
    }
    wait_connected(&a, 2);
    set(&mut a.client(), "after-restart", "a");
    wait_value(&b, "after-restart", "a");
    wait_value(&c, "after-restart", "a");
    set(&mut b.client(), "to-restarted", "b");
    wait_value(&a, "to-restarted", "b");
}
