//! Cluster nodes as real `meshcached` processes on 127.0.0.1, each node's log in a file:
//! certificates, start and stop, signals, and the client-side helpers the process and
//! fault suites share.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{eventually, free_udp_pair, read_log, Client, Node, TempDir, DEADLINE};
use meshcached::certs::{generate_ca, write_node_dir, Ca};

/// Writes `name`'s certificate directory (signed by `ca`) under `dir`; returns its path.
pub fn certify(ca: &Ca, dir: &TempDir, name: &str) -> String {
    let cert = ca.issue_node(name, &["127.0.0.1"]).expect("node cert");
    let path = dir.join(name);
    write_node_dir(&path, ca, &cert).expect("write certs");
    path.display().to_string()
}

pub fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// One cluster node as a process, its stderr in `dir/<name>.log`.
pub struct Proc {
    pub node: Node,
    pub log: PathBuf,
}

impl Proc {
    /// Starts node `name` with the certificates in `dir/<name>` and the cluster endpoint on
    /// 127.0.0.1:`cluster_port`, plus `extra` flags.
    pub fn start(dir: &TempDir, name: &str, id: u16, cluster_port: u16, extra: &[&str]) -> Proc {
        Self::start_wrapped(&[], dir, name, id, cluster_port, extra)
    }

    /// [`Proc::start`] with the binary run by `wrapper` (e.g. `faketime -f +1h`).
    pub fn start_wrapped(
        wrapper: &[&str],
        dir: &TempDir,
        name: &str,
        id: u16,
        cluster_port: u16,
        extra: &[&str],
    ) -> Proc {
        let certs = dir.join(name).display().to_string();
        let id = id.to_string();
        let listen = loopback(cluster_port);
        let mut flags = vec![
            "-t",
            "2",
            "--node-name",
            name,
            "--node-id",
            &id,
            "--certs-dir",
            &certs,
            "--cluster-listen",
            &listen,
        ];
        flags.extend_from_slice(extra);
        let log = dir.join(&format!("{name}.log"));
        let node = Node::start_logged_wrapped(wrapper, &flags, &log);
        Proc { node, log }
    }

    /// Starts a node with exactly these flags (beyond the harness's client port ones).
    pub fn start_with(dir: &TempDir, name: &str, flags: &[&str]) -> Proc {
        let log = dir.join(&format!("{name}.log"));
        let node = Node::start_logged(flags, &log);
        Proc { node, log }
    }

    pub fn client(&self) -> Client {
        self.node.client()
    }

    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Waits for a log line that contains every one of `needles`; returns it.
    pub fn wait_line(&self, needles: &[&str]) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_string();
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for a line with {needles:?} in {}:\n{log}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.node.child.id()
    }

    /// Whether the process is alive and answers a client.
    pub fn serves(&mut self) -> bool {
        self.node.is_running() && self.client().line("version").starts_with("VERSION ")
    }
}

/// Starts node-a and node-b (one CA, node-b joining node-a) and waits until both are
/// connected; `extra_a` are more flags for node-a.
pub fn pair(dir: &TempDir, extra_a: &[&str]) -> (Proc, Proc) {
    let ca = generate_ca().expect("CA");
    certify(&ca, dir, "node-a");
    certify(&ca, dir, "node-b");
    let (pa, pb) = free_udp_pair();
    let a = Proc::start(dir, "node-a", 1, pa, extra_a);
    let b = Proc::start(dir, "node-b", 2, pb, &["--join", &loopback(pa)]);
    wait_connected(&a, 1);
    wait_connected(&b, 1);
    (a, b)
}

pub fn stat(c: &mut Client, name: &str) -> u64 {
    let stats = c.stats();
    let v = stats
        .get(name)
        .unwrap_or_else(|| panic!("no stat {name} in {stats:?}"));
    v.parse()
        .unwrap_or_else(|_| panic!("stat {name} is not a number: {v}"))
}

/// `stats replication` as name/value pairs.
pub fn replication(c: &mut Client) -> HashMap<String, String> {
    stats_group(c, "replication")
}

/// `stats <group>` as name/value pairs.
pub fn stats_group(c: &mut Client, group: &str) -> HashMap<String, String> {
    let out = c.call(format!("stats {group}\r\n").as_bytes(), b"END\r\n");
    out.lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn peer_stat(c: &mut Client, peer: &str, field: &str) -> String {
    let r = replication(c);
    let name = format!("peer:{peer}:{field}");
    r.get(&name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in stats replication: {r:?}"))
}

pub fn wait_connected(p: &Proc, n: u64) {
    let mut c = p.client();
    eventually(
        DEADLINE,
        &format!("{} has {n} peer(s) connected", p.log.display()),
        || stat(&mut c, "peers_connected") == n,
    );
}

pub fn set(c: &mut Client, key: &str, value: &str) {
    let reply = c.line(&format!("set {key} 0 0 {}\r\n{value}", value.len()));
    assert_eq!(reply, "STORED\r\n", "set {key}");
}

pub fn get(c: &mut Client, key: &str) -> Option<String> {
    let out = c.call(format!("get {key}\r\n").as_bytes(), b"END\r\n");
    let mut lines = out.split("\r\n");
    let header = lines.next()?;
    header
        .starts_with("VALUE ")
        .then(|| lines.next().unwrap_or("").to_string())
}

pub fn wait_value(p: &Proc, key: &str, want: &str) {
    let mut c = p.client();
    eventually(
        DEADLINE,
        &format!("{key}={want} in {}", p.log.display()),
        || get(&mut c, key).as_deref() == Some(want),
    );
}

/// Sends `sets` in one write per chunk of `per_write` (pipelined) and asserts that every
/// one was answered STORED.
pub fn pipelined_sets(c: &mut Client, sets: &[(String, Vec<u8>)], per_write: usize) {
    for chunk in sets.chunks(per_write) {
        let mut req = Vec::new();
        for (key, value) in chunk {
            req.extend_from_slice(format!("set {key} 0 0 {}\r\n", value.len()).as_bytes());
            req.extend_from_slice(value);
            req.extend_from_slice(b"\r\n");
        }
        c.send(&req);
        let want = "STORED\r\n".repeat(chunk.len());
        let got = c.read_exact(want.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            want,
            "every pipelined set is answered STORED"
        );
    }
}

/// The scheduler state of a process ('T' when stopped), from /proc.
pub fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .unwrap_or('?')
}

pub fn stop(p: &Proc) {
    p.node.signal(libc::SIGSTOP);
    eventually(DEADLINE, "the process is stopped", || {
        proc_state(p.pid()) == 'T'
    });
}

pub fn resume(p: &Proc) {
    p.node.signal(libc::SIGCONT);
    eventually(DEADLINE, "the process runs again", || {
        proc_state(p.pid()) != 'T'
    });
}

/// A small xorshift generator: junk that is the same on every run.
pub struct Noise(pub u64);

impl Noise {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The cluster port of `peer`, as the node behind `c` sees it.
pub fn cluster_port(c: &mut Client, peer: &str) -> u16 {
    let addr = peer_stat(c, peer, "address");
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("address of {peer}: {addr}"))
}
