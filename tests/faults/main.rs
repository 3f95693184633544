//! The fault suite: the real binary as processes on 127.0.0.1 under real faults (write
//! bursts from every node at once, partitions made with packet filters on the loopback
//! interface, `kill -9`, SIGSTOP, clocks moved by libfaketime), each bounded in time and
//! each checking the convergence contract (DESIGN.md section 0) from outside: once writes
//! stop and the nodes can talk, every node that holds a key holds the same value with the
//! same CAS.
//!
//! Partitions need root and `iptables`, clocks `faketime` (`.ci/run` installs both). Every rule a test adds is
//! removed when its [`Partition`] is dropped, also when the test fails.

mod burst;
mod clock;
#[path = "../common/mod.rs"]
mod common;
mod crash;
mod heal;
mod partition;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::procs::*;
use common::{eventually, free_udp_port, Client, TempDir, DEADLINE};
use meshcached::certs::generate_ca;

/// Starts `n` nodes, node-1 .. node-n (each joining node-1), with `extra` flags each, and
/// waits until every node is connected to every other.
fn cluster(dir: &TempDir, n: usize, extra: &[&str]) -> Vec<Proc> {
    let ca = generate_ca().expect("CA");
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    let mut nodes: Vec<Proc> = Vec::new();
    for i in 0..n {
        let name = format!("node-{}", i + 1);
        certify(&ca, dir, &name);
        let join = loopback(ports[0]);
        let mut flags: Vec<&str> = extra.to_vec();
        if i > 0 {
            flags.extend(["--join", &join]);
        }
        nodes.push(Proc::start(dir, &name, i as u16 + 1, ports[i], &flags));
    }
    for p in &nodes {
        wait_connected(p, n as u64 - 1);
    }
    nodes
}

/// Every key of `keys` as `gets` answers it on the node behind `c`: value and CAS, or
/// nothing for a key the node does not hold.
fn snapshot(c: &mut Client, keys: &[String]) -> BTreeMap<String, (Vec<u8>, u64)> {
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(100) {
        let req = format!("gets {}\r\n", chunk.join(" "));
        c.send(req.as_bytes());
        let reply = c.read_until(b"END\r\n");
        let mut rest = &reply[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let header = String::from_utf8_lossy(&rest[..eol]).into_owned();
            rest = &rest[eol + 2..];
            let Some(fields) = header.strip_prefix("VALUE ") else {
                assert_eq!(header, "END", "unexpected line in a gets reply");
                break;
            };
            let f: Vec<&str> = fields.split(' ').collect();
            let len: usize = f[2].parse().expect("length");
            let cas: u64 = f[3].parse().expect("cas");
            out.insert(f[0].to_string(), (rest[..len].to_vec(), cas));
            rest = &rest[len + 2..];
        }
    }
    out
}

/// Waits (up to `deadline`) until every node answers the same values and CAS for `keys`
/// and holds at least `want` of them; panics naming the last difference otherwise.
fn wait_agreement(nodes: &[&Proc], keys: &[String], want: usize, deadline: Duration) {
    let mut clients: Vec<Client> = nodes.iter().map(|p| p.client()).collect();
    let end = Instant::now() + deadline;
    loop {
        let Some(why) = disagreement(nodes, &mut clients, keys, want) else {
            return;
        };
        if Instant::now() >= end {
            // What the nodes said about syncing, to tell why.
            let said: Vec<String> = nodes
                .iter()
                .flat_map(|p| {
                    p.log()
                        .lines()
                        .filter(|l| l.contains("snapshot") || l.contains("reconcil"))
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
                .collect();
            panic!(
                "no agreement within {deadline:?}: {why}\n{}",
                said.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What keeps the nodes from agreeing on `keys`, if anything.
fn disagreement(
    nodes: &[&Proc],
    clients: &mut [Client],
    keys: &[String],
    want: usize,
) -> Option<String> {
    let views: Vec<_> = clients.iter_mut().map(|c| snapshot(c, keys)).collect();
    for (i, v) in views.iter().enumerate() {
        if v.len() < want {
            let log = nodes[i].log.display();
            return Some(format!("{log} holds {} of {want} keys", v.len()));
        }
        if let Some(k) = keys.iter().find(|k| v.get(*k) != views[0].get(*k)) {
            return Some(format!(
                "{} and {} differ on {k}: {:?} / {:?}",
                nodes[0].log.display(),
                nodes[i].log.display(),
                views[0].get(k).map(|(_, cas)| cas),
                v.get(k).map(|(_, cas)| cas),
            ));
        }
    }
    None
}
