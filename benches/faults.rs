//! The fault suite's figures: how long the cluster takes to converge after each fault of
//! `tests/faults`, measured on the real binary as processes on 127.0.0.1.
//!
//! 1. **Heal**: a pair is cut apart (iptables on loopback) for 5 s while node-1 takes one
//!    write; from the heal to that write being readable on node-2.
//! 2. **Burst**: three nodes, each client writing 30,000 values of 100 bytes pipelined at
//!    the same moment; from the first write to every node holding all 90,000.
//! 3. **kill -9**: node-2 of a pair holding 100,000 items is killed and started again
//!    (no state file); from its start to its client port open with every item.
//! 4. **SIGSTOP**: node-2 is stopped for 5 s while node-1 takes 20,000 writes; from SIGCONT
//!    to node-2 holding them all.
//!
//! Run as root: `cargo bench --bench faults` (about a minute); under `cargo test --benches`
//! it exits at once. `BENCH_ROUNDS` (default 3) rounds each; the medians are printed.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/faults/partition.rs"]
mod partition;

use std::time::{Duration, Instant};

use common::procs::*;
use common::{free_udp_port, Client, TempDir};
use meshcached::certs::generate_ca;
use partition::Partition;

const POLL: Duration = Duration::from_millis(2);
const LIMIT: Duration = Duration::from_secs(60);

fn nodes(dir: &TempDir, n: usize) -> Vec<Proc> {
    let ca = generate_ca().expect("CA");
    let port = free_udp_port();
    let procs: Vec<Proc> = (0..n)
        .map(|i| {
            let name = format!("node-{}", i + 1);
            certify(&ca, dir, &name);
            let join = loopback(port);
            let flags: Vec<&str> = if i == 0 {
                vec![]
            } else {
                vec!["--join", &join]
            };
            if i == 0 {
                Proc::start(dir, &name, 1, port, &flags)
            } else {
                Proc::start(dir, &name, i as u16 + 1, free_udp_port(), &flags)
            }
        })
        .collect();
    for p in &procs {
        wait_connected(p, n as u64 - 1);
    }
    procs
}

/// Polls until `done`, returning how long it took.
fn until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < LIMIT, "{what}: not within {LIMIT:?}");
        std::thread::sleep(POLL);
    }
    start.elapsed()
}

fn sets(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("{prefix}-{i}"), vec![b'v'; 100]))
        .collect()
}

fn heal(round: usize) -> Duration {
    let dir = TempDir::new(&format!("bench-heal-{round}"));
    let n = nodes(&dir, 2);
    let (mut a, mut b) = (n[0].client(), n[1].client());
    let ports = [
        cluster_port(&mut b, "node-1"),
        cluster_port(&mut a, "node-2"),
    ];
    let mut cut = Partition::cut(ports[0], ports[1]);
    set(&mut a, "during", "the cut");
    std::thread::sleep(Duration::from_secs(5));
    cut.heal();
    until("the write made during the cut arrives", || {
        get(&mut b, "during").is_some()
    })
}

fn burst(round: usize) -> Duration {
    let dir = TempDir::new(&format!("bench-burst-{round}"));
    let n = nodes(&dir, 3);
    let start = Instant::now();
    let writers: Vec<_> = n
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = p.client();
            std::thread::spawn(move || {
                pipelined_sets(&mut c, &sets(&format!("n{i}"), 30_000), 1000)
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let mut clients: Vec<Client> = n.iter().map(Proc::client).collect();
    until("every node holds every write", || {
        clients.iter_mut().all(|c| stat(c, "curr_items") == 90_000)
    });
    start.elapsed()
}

fn kill_9(round: usize) -> Duration {
    let dir = TempDir::new(&format!("bench-kill-{round}"));
    let mut n = nodes(&dir, 2);
    pipelined_sets(&mut n[0].client(), &sets("k", 100_000), 1000);
    let mut b = n[1].client();
    until("node-2 holds everything", || {
        stat(&mut b, "curr_items") == 100_000
    });
    let mut victim = n.pop().expect("node-2");
    victim.node.child.kill().expect("kill -9");
    let _ = victim.node.child.wait();
    let seed = node1_addr(&n[0]);
    let start = Instant::now();
    // The client port opens once the initial sync is complete, and `start` waits for it.
    let restarted = Proc::start(&dir, "node-2", 2, free_udp_port(), &["--join", &seed]);
    let elapsed = start.elapsed();
    let mut c = restarted.client();
    assert_eq!(
        stat(&mut c, "curr_items"),
        100_000,
        "served with everything"
    );
    elapsed
}

/// node-1's cluster address, as node-1 reports it.
fn node1_addr(p: &Proc) -> String {
    let log = p.log();
    let line = log
        .lines()
        .find(|l| l.contains("cluster endpoint listening"))
        .expect("node-1 logs its cluster address");
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("addr= in the line");
    addr.to_string()
}

fn sigstop(round: usize) -> Duration {
    let dir = TempDir::new(&format!("bench-stop-{round}"));
    let n = nodes(&dir, 2);
    let (mut a, mut b) = (n[0].client(), n[1].client());
    stop(&n[1]);
    let started = Instant::now();
    pipelined_sets(&mut a, &sets("s", 20_000), 1000);
    std::thread::sleep(Duration::from_secs(5).saturating_sub(started.elapsed()));
    resume(&n[1]);
    until("node-2 catches up", || stat(&mut b, "curr_items") == 20_000)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("faults: not run under `cargo bench`, skipping");
        return;
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    type Case = (&'static str, fn(usize) -> Duration);
    let cases: [Case; 4] = [
        ("resume after a 5 s partition heals", heal),
        ("3 nodes × 3 MiB burst, all converged", burst),
        ("kill -9, restart to serving 100k items", kill_9),
        ("catch-up of 20k writes after a 5 s SIGSTOP", sigstop),
    ];
    println!("| 2-core VM | each round (ms) | median (ms) |");
    println!("|---|---|--:|");
    for (what, f) in cases {
        let times: Vec<Duration> = (0..rounds).map(f).collect();
        let each: Vec<String> = times.iter().map(|t| t.as_millis().to_string()).collect();
        println!(
            "| {what} | {} | {} |",
            each.join(" / "),
            median(times).as_millis()
        );
    }
}
