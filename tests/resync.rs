//! Resync under load (DESIGN.md sections 5 and 6), with real nodes in this process: a node
//! joining a cluster that holds 100k items opens its client port only once it holds them
//! all, takes them from one donor (one snapshot, not one per peer), and loses none of the
//! writes made on the other nodes while it joins; a node killed and restarted while clients
//! write elsewhere catches up without losing an acknowledged write; and a rolling restart of
//! every node, with a client writing and reading throughout, never serves a miss for a key
//! that was already everywhere, nor loses an acknowledged write.
//!
//! "Acknowledged" means the client received `STORED`. Replication is asynchronous, so a key
//! written on one node may for a moment be missing on another: the reads below only look for
//! keys that were already on every node (preloaded, or seen on each), and every other check
//! waits for convergence first.

mod common;

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::cluster::{State, TestCluster};
use common::{eventually, DEADLINE};
use meshcached::cluster::sync::Phase;

/// Room for every key the tests write: an eviction would look like a lost write.
const MEMORY: &[&str] = &["-m", "256"];

/// Node logs go to the test's captured output (shown when it fails); `RUST_LOG` overrides.
fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("meshcached=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// About 100 bytes, different for every key.
fn value_of(key: &str) -> Vec<u8> {
    let mut v = format!("{key}=").into_bytes();
    let mut x = key.bytes().fold(0x9e37_79b9_u32, |h, b| {
        h.rotate_left(5) ^ u32::from(b).wrapping_mul(0x0100_0193)
    });
    while v.len() < 100 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

fn addr(c: &TestCluster, i: usize) -> SocketAddr {
    c.nodes[i].client_addr.expect("node started")
}

/// A text-protocol connection that reports a refused or closed connection as an error
/// instead of panicking: while a node restarts, both are expected.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(DEADLINE))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            writer: s.try_clone()?,
            reader: BufReader::with_capacity(64 << 10, s),
        })
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if !line.ends_with("\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed (after {line:?})"),
            ));
        }
        Ok(line)
    }

    /// Sets every key to its [`value_of`] in one pipelined write, then reads the replies in
    /// order, pushing each key answered `STORED` onto `acked` (so that a connection lost
    /// half way still reports what was acknowledged). Any other answer is a failure.
    fn set_many(&mut self, keys: &[String], acked: &mut Vec<String>) -> io::Result<()> {
        let mut req = Vec::with_capacity(keys.len() * 140);
        for k in keys {
            let v = value_of(k);
            req.extend_from_slice(format!("set {k} 0 0 {}\r\n", v.len()).as_bytes());
            req.extend_from_slice(&v);
            req.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&req)?;
        for k in keys {
            let reply = self.line()?;
            assert_eq!(reply, "STORED\r\n", "set {k}");
            acked.push(k.clone());
        }
        Ok(())
    }

    /// One multi-key `get`: the keys that hit, each checked against its [`value_of`].
    fn get_many(&mut self, keys: &[&str]) -> io::Result<HashSet<String>> {
        self.writer
            .write_all(format!("get {}\r\n", keys.join(" ")).as_bytes())?;
        let mut hits = HashSet::new();
        loop {
            let line = self.line()?;
            if line == "END\r\n" {
                return Ok(hits);
            }
            let words: Vec<&str> = line.trim_end().split(' ').collect();
            assert!(
                words.len() == 4 && words[0] == "VALUE",
                "unexpected get reply {line:?}"
            );
            let len: usize = words[3].parse().expect("value length");
            let mut data = vec![0; len + 2];
            self.reader.read_exact(&mut data)?;
            let key = keys
                .iter()
                .find(|k| **k == words[1])
                .unwrap_or_else(|| panic!("a value for a key not asked for: {line:?}"));
            assert_eq!(
                &data[..len],
                &value_of(key)[..],
                "the value of {key} (node sent {:?})",
                String::from_utf8_lossy(&data)
            );
            hits.insert(key.to_string());
        }
    }
}

/// Writes `keys` through one connection, in pipelined batches.
fn load(addr: SocketAddr, keys: &[String]) {
    let mut conn = Conn::connect(addr).expect("connect");
    let mut acked = Vec::with_capacity(keys.len());
    for batch in keys.chunks(1000) {
        conn.set_many(batch, &mut acked).expect("load");
    }
    assert_eq!(acked.len(), keys.len());
}

/// The keys of `keys` that `state` does not hold with their [`value_of`].
fn not_held<'k>(state: &State, keys: impl IntoIterator<Item = &'k String>) -> Vec<&'k String> {
    let held: std::collections::HashMap<&[u8], &[u8]> = state
        .iter()
        .filter_map(|(k, v, _)| v.as_ref().map(|v| (k.as_slice(), v.0.as_slice())))
        .collect();
    keys.into_iter()
        .filter(|k| held.get(k.as_bytes()) != Some(&value_of(k).as_slice()))
        .collect()
}

/// The keys of `keys` that node `i`'s store does not hold with their [`value_of`], read
/// straight from the store (the node's own client path is not involved).
fn not_in_store<'k>(c: &TestCluster, i: usize, keys: &'k [String]) -> Vec<&'k String> {
    let shared = c.shared(i);
    let now = shared.clock().now_secs();
    keys.iter()
        .filter(|k| {
            let want = value_of(k);
            !shared.store.read(k.as_bytes(), now, false, |item| {
                item.is_some_and(|it| it.value == want)
            })
        })
        .collect()
}

/// [`TestCluster::wait_converged`]; when the nodes do not converge, what each says of its
/// peers first (a peer this node never streams to shows `last_sent_seq` stuck and
/// `lag_mutations` growing).
fn converged(c: &TestCluster) -> State {
    match std::panic::catch_unwind(AssertUnwindSafe(|| c.wait_converged())) {
        Ok(state) => state,
        Err(panic) => {
            for i in (0..c.len()).filter(|&i| c.is_running(i)) {
                let all = c.client(i).call(b"stats replication\r\n", b"END\r\n");
                let lines: Vec<&str> = all
                    .lines()
                    .filter(|l| {
                        [
                            "node_name",
                            "last_seq",
                            "last_sent_seq",
                            "last_acked_seq",
                            "lag_mutations",
                        ]
                        .iter()
                        .any(|f| l.contains(f))
                    })
                    .collect();
                let state = stat(c, i, "sync_state");
                eprintln!("node {i} (sync_state {state}):\n{}", lines.join("\n"));
            }
            std::panic::resume_unwind(panic)
        }
    }
}

fn stat(c: &TestCluster, i: usize, name: &str) -> String {
    let stats = c.client(i).stats();
    stats
        .get(name)
        .unwrap_or_else(|| panic!("no stat {name} in {stats:?}"))
        .clone()
}

fn snapshots_sent(c: &TestCluster, nodes: &[usize]) -> u64 {
    nodes
        .iter()
        .map(|&i| {
            stat(c, i, "snapshots_sent")
                .parse::<u64>()
                .expect("a number")
        })
        .sum()
}

/// A client thread writing new keys (`{prefix}{n}`) to the given nodes in turn, in small
/// pipelined batches, until stopped; it reconnects to a node that went away.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    thread: JoinHandle<()>,
}

impl Writer {
    fn start(addrs: Vec<SocketAddr>, prefix: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<Option<Conn>> = addrs.iter().map(|_| None).collect();
            let mut n = 0u64;
            let mut done = Vec::new();
            while !s.load(Ordering::Relaxed) {
                for (i, conn) in conns.iter_mut().enumerate() {
                    if conn.is_none() {
                        *conn = Conn::connect(addrs[i]).ok();
                    }
                    let Some(live) = conn else { continue };
                    let keys: Vec<String> = (0..10).map(|j| format!("{prefix}{}", n + j)).collect();
                    n += 10;
                    if live.set_many(&keys, &mut done).is_err() {
                        *conn = None;
                    }
                    a.lock().unwrap().append(&mut done);
                }
                // Pacing, not waiting: a few thousand keys a second keeps the test's data
                // (and the final whole-store comparisons) small on a 2-core machine.
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Writer {
            stop,
            acked,
            thread,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` further writes are acknowledged.
    fn wait_more(&self, more: usize, what: &str) {
        let want = self.acked() + more;
        eventually(DEADLINE, what, || {
            assert!(!self.thread.is_finished(), "the writer thread stopped");
            self.acked() >= want
        });
    }

    /// A copy of the keys acknowledged so far.
    fn acked_keys(&self) -> Vec<String> {
        self.acked.lock().unwrap().clone()
    }

    /// Stops the thread; returns every acknowledged key.
    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Err(panic) = self.thread.join() {
            std::panic::resume_unwind(panic);
        }
        Arc::try_unwrap(self.acked)
            .expect("the writer thread is done")
            .into_inner()
            .unwrap()
    }
}

/// Polls `addr` until it accepts a connection, returning as soon as it does (every
/// millisecond: what the caller checks then is the state at the moment the port opened,
/// give or take that).
fn wait_port_open(addr: SocketAddr, deadline: Duration) {
    let end = Instant::now() + deadline;
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < end,
            "{addr} did not accept within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_node_joining_under_write_load_opens_its_port_holding_every_item() {
    logs();
    const INITIAL: usize = 100_000;
    let mut c = TestCluster::with_flags(2, MEMORY);
    let initial: Vec<String> = (0..INITIAL).map(|i| format!("init{i}")).collect();
    load(addr(&c, 0), &initial);
    eventually(DEADLINE, "node 1 holds the initial items", || {
        c.shared(1).store.stats().curr_items == INITIAL as u64
    });
    let sent_before = snapshots_sent(&c, &[0, 1]);
    let writer = Writer::start(vec![addr(&c, 0), addr(&c, 1)], "during");
    writer.wait_more(1, "the writer's first write");
    let seed = c.nodes[0].cluster_addr.expect("node 0's cluster address");
    let new = c.add("node-3", 3, vec![seed.to_string()], MEMORY);
    let acked_at_add = writer.acked();
    wait_port_open(addr(&c, new), DEADLINE * 2);
    // The moment the port opens: the whole initial data set is there already.
    let missing = not_in_store(&c, new, &initial);
    assert!(
        missing.is_empty(),
        "{} of the {INITIAL} initial items missing when the client port opened, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let phase = c.shared(new).cluster.as_ref().map(|cl| cl.phase());
    assert_eq!(phase, Some(Phase::Ready));
    assert!(
        writer.acked() > acked_at_add,
        "writes went on while the node joined"
    );
    writer.wait_more(100, "writes after the join");
    let written = writer.stop();
    let state = converged(&c);
    let lost = not_held(&state, initial.iter().chain(&written));
    assert!(
        lost.is_empty(),
        "{} acknowledged keys missing on every node, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(stat(&c, new, "snapshots_received"), "1");
    assert_eq!(stat(&c, new, "sync_state"), "ready");
    assert_eq!(
        snapshots_sent(&c, &[0, 1]) - sent_before,
        1,
        "one donor sent one snapshot; the other peer only its log"
    );
}

#[test]
fn a_node_restarted_under_write_load_loses_no_acknowledged_write() {
    logs();
    const PRELOAD: usize = 20_000;
    let mut c = TestCluster::with_flags(3, MEMORY);
    let preload: Vec<String> = (0..PRELOAD).map(|i| format!("pre{i}")).collect();
    load(addr(&c, 0), &preload);
    eventually(DEADLINE, "node 2 holds the preloaded items", || {
        c.shared(2).store.stats().curr_items == PRELOAD as u64
    });
    let writer = Writer::start(vec![addr(&c, 0), addr(&c, 1)], "w");
    writer.wait_more(100, "writes before the restart");
    let before_kill = writer.acked_keys();
    c.kill(2);
    writer.wait_more(100, "writes while node 2 is down");
    c.restart(2);
    // Written long before node 2 came back, so on both of the other nodes by then: the
    // restarted node has them when it opens its port.
    let missing = not_in_store(&c, 2, &preload);
    assert!(
        missing.is_empty(),
        "{} preloaded items missing",
        missing.len()
    );
    let missing = not_in_store(&c, 2, &before_kill);
    assert!(
        missing.is_empty(),
        "{} of the {} keys written before the kill missing when node 2 opened, e.g. {:?}",
        missing.len(),
        before_kill.len(),
        &missing[..missing.len().min(5)]
    );
    writer.wait_more(100, "writes after the restart");
    let written = writer.stop();
    let state = converged(&c);
    let lost = not_held(&state, preload.iter().chain(&written));
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged keys missing, e.g. {:?}",
        lost.len(),
        written.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(
        stat(&c, 2, "snapshots_received"),
        "1",
        "the restarted node took one snapshot, from one donor"
    );
}

/// What the rolling-restart client found.
#[derive(Default)]
struct Findings {
    /// Reads of a key already on every node that missed: (node, key).
    misses: Vec<(usize, String)>,
    acked: Vec<String>,
}

/// The rolling-restart client: round-robin over the nodes, it writes new keys and reads
/// back, on each node that accepts, preloaded keys and keys it has seen on every node;
/// `reads[i]` counts its successful reads on node `i`.
fn rolling_client(
    addrs: Vec<SocketAddr>,
    preload: Vec<String>,
    stop: Arc<AtomicBool>,
    reads: Arc<Vec<AtomicU64>>,
) -> Findings {
    let all = (1u8 << addrs.len()) - 1;
    let mut conns: Vec<Option<Conn>> = addrs.iter().map(|_| None).collect();
    let mut found = Findings::default();
    // Acknowledged keys not yet seen on every node, with the nodes seen on (a bit each).
    let mut pending: Vec<(String, u8)> = Vec::new();
    let mut everywhere: Vec<String> = Vec::new();
    let (mut n, mut round) = (0usize, 0usize);
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        for (i, conn) in conns.iter_mut().enumerate() {
            if conn.is_none() {
                // Refused while the node restarts (its port opens once it is ready).
                *conn = Conn::connect(addrs[i]).ok();
            }
            let Some(live) = conn else { continue };
            let keys: Vec<String> = (n..n + 3).map(|j| format!("roll{j}")).collect();
            n += 3;
            let mut acked = Vec::new();
            let wrote = live.set_many(&keys, &mut acked);
            pending.extend(acked.iter().map(|k| (k.clone(), 0)));
            found.acked.append(&mut acked);
            if wrote.is_err() {
                *conn = None;
                continue;
            }
            // Keys that must hit: a rotating sample of the preloaded ones and of those
            // seen everywhere.
            let mut must: Vec<&str> = (0..10)
                .map(|j| preload[(round * 10 + j) % preload.len()].as_str())
                .collect();
            if !everywhere.is_empty() {
                must.extend(
                    (0..10).map(|j| everywhere[(round * 10 + j) % everywhere.len()].as_str()),
                );
            }
            match live.get_many(&must) {
                Ok(hits) => {
                    for k in must.iter().filter(|k| !hits.contains(**k)) {
                        found.misses.push((i, k.to_string()));
                    }
                }
                Err(_) => {
                    *conn = None;
                    continue;
                }
            }
            // Keys that may still be on their way here.
            let ask: Vec<&str> = pending.iter().take(50).map(|(k, _)| k.as_str()).collect();
            match live.get_many(&ask) {
                Ok(hits) => {
                    for (k, seen) in pending.iter_mut().take(50) {
                        if hits.contains(k.as_str()) {
                            *seen |= 1 << i;
                        }
                    }
                }
                Err(_) => {
                    *conn = None;
                    continue;
                }
            }
            reads[i].fetch_add(1, Ordering::Relaxed);
            let (done, rest): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(_, s)| *s == all);
            pending = rest;
            everywhere.extend(done.into_iter().map(|(k, _)| k));
        }
        // Pacing, as in `Writer`.
        std::thread::sleep(Duration::from_millis(2));
    }
    found
}

#[test]
fn a_rolling_restart_serves_every_key_throughout_and_loses_none() {
    logs();
    const PRELOAD: usize = 5_000;
    let mut c = TestCluster::with_flags(3, MEMORY);
    let preload: Vec<String> = (0..PRELOAD).map(|i| format!("pre{i}")).collect();
    load(addr(&c, 0), &preload);
    c.wait_converged();
    let stop = Arc::new(AtomicBool::new(false));
    let reads: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let client = {
        let addrs = (0..3).map(|i| addr(&c, i)).collect();
        let (preload, stop, reads) = (preload.clone(), stop.clone(), reads.clone());
        std::thread::spawn(move || rolling_client(addrs, preload, stop, reads))
    };
    // Reads on node `i` from now on, a few of them.
    let read_some = |i: usize| {
        let want = reads[i].load(Ordering::Relaxed) + 20;
        eventually(DEADLINE, &format!("the client reads on node {i}"), || {
            reads[i].load(Ordering::Relaxed) >= want
        });
    };
    for i in 0..3 {
        read_some(i);
    }
    for i in 0..3 {
        c.kill(i);
        c.restart(i);
        // The client reads on the restarted node, and the others, before the next goes.
        for j in 0..3 {
            read_some(j);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let found = match client.join() {
        Ok(found) => found,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    assert!(
        found.misses.is_empty(),
        "{} reads missed a key that was on every node, e.g. (node, key) {:?}",
        found.misses.len(),
        &found.misses[..found.misses.len().min(10)]
    );
    let state = converged(&c);
    let lost = not_held(&state, preload.iter().chain(&found.acked));
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged keys missing, e.g. {:?}",
        lost.len(),
        found.acked.len(),
        &lost[..lost.len().min(5)]
    );
    for i in 0..3 {
        let mut conn = Conn::connect(addr(&c, i)).expect("connect");
        for batch in preload.chunks(100) {
            let keys: Vec<&str> = batch.iter().map(String::as_str).collect();
            let hits = conn.get_many(&keys).expect("get");
            assert_eq!(hits.len(), keys.len(), "preloaded keys hit on node {i}");
        }
    }
}
