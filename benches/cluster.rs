//! What replication costs, measured in one run; the table goes to stdout, progress to stderr.
//!
//! 1. **Set throughput at node A of a two-node pair**, next to the same binary standalone and
//!    Debian's memcached, with versus_memcached's load generator and cells (4 connections,
//!    100-byte values, 100k preloaded keys). Replication is asynchronous, so A could post a
//!    number that B never keeps up with: after every cell at a pair the bench waits until B
//!    has acknowledged every write A logged (it acknowledges after applying) and holds as many
//!    items as A, and reports how long that took.
//! 2. **Propagation delay** of single writes on an idle pair. Both nodes run in this process,
//!    so B's store is polled directly (one shard-locked lookup per poll) rather than over a
//!    network round trip that would add its own delay.
//! 3. **CPU per replicated write**: utime + stime of B, from /proc, across a push of N sets to
//!    A until B holds them all; A's, and a standalone node's for the same push, beside it.
//!
//! Run: `cargo bench --bench cluster > cluster.md` (about 2.5 minutes). It needs
//! `/usr/bin/memcached` and `taskset`; under `cargo test --benches` it exits at once.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_QUICK` | unset | `1`: smoke-run defaults (0.25 s + 0.5 s cells, 1 round, 200 and 20k writes) |
//! | `BENCH_SECS`, `BENCH_WARMUP_SECS` | `2`, `1` | measured and warm-up seconds per throughput cell |
//! | `BENCH_ROUNDS` | `3` | throughput rounds; each number is the median over rounds |
//! | `BENCH_ONLY` | `pinned,unpinned,propagation,cpu` | sections to run |
//! | `BENCH_WORKLOADS` | `set,set-p32` | throughput workloads |
//! | `BENCH_PROP_WRITES`, `BENCH_PROP_GAP_MS` | `2000`, `1` | propagation: writes, pause between them |
//! | `BENCH_CPU_WRITES` | `200000` | CPU section: sets pushed |
//! | `MESHCACHED_BIN`, `MEMCACHED_BIN` | the crate's binary, `/usr/bin/memcached` | servers |

// Shared with versus_memcached; this target uses only part of them.
#[allow(dead_code)]
#[path = "versus_memcached/loadgen.rs"]
mod loadgen;
#[allow(dead_code)]
#[path = "versus_memcached/server.rs"]
mod server;

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser as _;
use loadgen::{Conn, Keyspace, Op, Requests, Window};
use meshcached::certs::{generate_ca, write_node_dir, Ca};
use meshcached::clock::SystemClock;
use meshcached::config::{Args, Config};
use meshcached::server::{Shared, ShutdownHandle};
use server::{Launch, Server};
use tokio::runtime::Runtime;

/// versus_memcached's load: 4 closed-loop connections over 100k preloaded keys.
const CONNS: u64 = 4;
const KEYS: Keyspace = Keyspace {
    count: 100_000,
    digits: 6,
};
const MEMORY_MB: usize = 1024;
/// How long B may take to catch up after a load, and a pair to connect.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);
const CONNECT_DEADLINE: Duration = Duration::from_secs(20);

struct Workload {
    name: &'static str,
    depth: usize,
}

static WORKLOADS: [Workload; 2] = [
    Workload {
        name: "set",
        depth: 1,
    },
    Workload {
        name: "set-p32",
        depth: 32,
    },
];

/// Everything the environment can change. `BENCH_QUICK=1` only changes the defaults.
struct Options {
    warmup: Duration,
    measure: Duration,
    rounds: usize,
    /// Any of `pinned`, `unpinned`, `propagation`, `cpu` (`BENCH_ONLY`).
    sections: Vec<&'static str>,
    workloads: Vec<&'static Workload>,
    prop_writes: u64,
    prop_gap: Duration,
    cpu_writes: u64,
    memcached: PathBuf,
    meshcached: PathBuf,
}

impl Options {
    fn from_env() -> Result<Options> {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let pick = |full: f64, smoke: f64| if quick { smoke } else { full };
        let number = |name: &str, default: f64| -> Result<f64> {
            let Ok(v) = std::env::var(name) else {
                return Ok(default);
            };
            let n: f64 = v.parse().with_context(|| format!("{name}={v:?}"))?;
            ensure!(n >= 0.0, "{name} must not be negative");
            Ok(n)
        };
        let positive = |name: &str, default: f64| -> Result<f64> {
            let n = number(name, default)?;
            ensure!(n > 0.0, "{name} must be positive");
            Ok(n)
        };
        let count = |name: &str, default: u64, smoke: u64| -> Result<u64> {
            let Ok(v) = std::env::var(name) else {
                return Ok(if quick { smoke } else { default });
            };
            v.parse()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("{name}={v:?} is not a positive integer"))
        };
        let workload_names = list("BENCH_WORKLOADS", &WORKLOADS.each_ref().map(|w| w.name))?;
        Ok(Options {
            warmup: Duration::from_secs_f64(positive("BENCH_WARMUP_SECS", pick(1.0, 0.25))?),
            measure: Duration::from_secs_f64(positive("BENCH_SECS", pick(2.0, 0.5))?),
            rounds: count("BENCH_ROUNDS", 3, 1)? as usize,
            sections: list("BENCH_ONLY", &["pinned", "unpinned", "propagation", "cpu"])?,
            workloads: WORKLOADS
                .iter()
                .filter(|w| workload_names.contains(&w.name))
                .collect(),
            prop_writes: count("BENCH_PROP_WRITES", 2000, 200)?,
            prop_gap: Duration::from_secs_f64(number("BENCH_PROP_GAP_MS", 1.0)? / 1e3),
            cpu_writes: count("BENCH_CPU_WRITES", 200_000, 20_000)?,
            memcached: std::env::var_os("MEMCACHED_BIN")
                .map_or_else(|| "/usr/bin/memcached".into(), PathBuf::from),
            meshcached: std::env::var_os("MESHCACHED_BIN")
                .map_or_else(|| env!("CARGO_BIN_EXE_meshcached").into(), PathBuf::from),
        })
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.contains(&section)
    }

    fn launch<'a>(
        &'a self,
        memcached: bool,
        threads: usize,
        pin_to: Option<usize>,
        extra: &'a [&'a str],
    ) -> Launch<'a> {
        Launch {
            name: if memcached { "memcached" } else { "meshcached" },
            program: if memcached {
                &self.memcached
            } else {
                &self.meshcached
            },
            threads,
            memory_mb: MEMORY_MB,
            pin_to,
            extra_args: extra,
        }
    }
}

/// A comma-separated selection from `allowed`; unset means all of them.
fn list(name: &str, allowed: &[&'static str]) -> Result<Vec<&'static str>> {
    let Ok(v) = std::env::var(name) else {
        return Ok(allowed.to_vec());
    };
    let mut picked = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match allowed.iter().find(|a| **a == item) {
            Some(a) => picked.push(*a),
            None => bail!("{name}: unknown {item:?}, expected some of {allowed:?}"),
        }
    }
    Ok(picked)
}

/// A fresh directory of certificates for the run: one CA, one directory per node. Removed
/// when dropped, so also when the bench fails or panics.
struct Certs {
    dir: PathBuf,
    ca: Ca,
}

impl Certs {
    fn new() -> Result<Certs> {
        let dir =
            std::env::temp_dir().join(format!("meshcached-bench-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let certs = Certs {
            dir,
            ca: generate_ca().context("generating the CA")?,
        };
        Ok(certs)
    }

    /// Issues a certificate for `name` on 127.0.0.1; returns its `--certs-dir`.
    fn node(&self, name: &str) -> Result<PathBuf> {
        let cert = self.ca.issue_node(name, &["127.0.0.1"])?;
        let dir = self.dir.join(name);
        write_node_dir(&dir, &self.ca, &cert)?;
        Ok(dir)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A persistent text-protocol connection for `stats`, so that polling a node does not
/// charge it an accept per poll.
struct StatsClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl StatsClient {
    fn connect(addr: SocketAddr) -> Result<StatsClient> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(StatsClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// `stats` or `stats <group>`, as name → value.
    fn fetch(&mut self, group: &str) -> Result<HashMap<String, String>> {
        let cmd = if group.is_empty() {
            "stats\r\n".to_string()
        } else {
            format!("stats {group}\r\n")
        };
        self.stream
            .write_all(cmd.as_bytes())
            .context("sending stats")?;
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        while !self.buf.ends_with(b"END\r\n") {
            let n = self.stream.read(&mut chunk).context("reading stats")?;
            ensure!(n > 0, "server closed the stats connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let text = std::str::from_utf8(&self.buf).context("non-UTF-8 stats")?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("STAT "))
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    fn number(&mut self, group: &str, name: &str) -> Result<u64> {
        let stats = self.fetch(group)?;
        stats
            .get(name)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no numeric STAT {name} in `stats {group}`"))
    }
}

/// A port no one was using a moment ago, for a node's QUIC endpoint.
fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Two node processes; B joined A. Both are killed when dropped (`Server`'s guard).
struct Pair {
    a: Server,
    b: Server,
    a_stats: StatsClient,
    b_stats: StatsClient,
    /// How A names B in `stats replication`.
    b_name: String,
}

impl Pair {
    fn start(
        opts: &Options,
        certs: &Certs,
        tag: &str,
        threads: usize,
        a_cpu: Option<usize>,
        b_cpu: Option<usize>,
    ) -> Result<Pair> {
        let (a_name, b_name) = (format!("{tag}-a"), format!("{tag}-b"));
        let a_cluster = format!("127.0.0.1:{}", free_udp_port()?);
        let args = |name: &str, id: &str, listen: String| -> Result<Vec<String>> {
            let dir = certs.node(name)?.display().to_string();
            Ok([
                "--node-name",
                name,
                "--node-id",
                id,
                "--certs-dir",
                &dir,
                "--cluster-listen",
                &listen,
            ]
            .map(String::from)
            .to_vec())
        };
        let a_args = args(&a_name, "1", a_cluster.clone())?;
        let b_cluster = format!("127.0.0.1:{}", free_udp_port()?);
        let mut b_args = args(&b_name, "2", b_cluster)?;
        b_args.extend(["--join".to_string(), a_cluster]);
        fn strs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let a = Server::start(&opts.launch(false, threads, a_cpu, &strs(&a_args)))?;
        let b = Server::start(&opts.launch(false, threads, b_cpu, &strs(&b_args)))?;
        let mut pair = Pair {
            a_stats: StatsClient::connect(a.addr)?,
            b_stats: StatsClient::connect(b.addr)?,
            a,
            b,
            b_name,
        };
        let deadline = Instant::now() + CONNECT_DEADLINE;
        while pair.a_stats.number("", "peers_connected")? != 1
            || pair.b_stats.number("", "peers_connected")? != 1
        {
            ensure!(
                Instant::now() < deadline,
                "pair {tag} not connected after {CONNECT_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(pair)
    }

    /// Waits until B has acknowledged every write in A's log (B acknowledges what it has
    /// applied) and holds as many items as A, `want` of them; returns how long that took.
    /// Fails if A had to skip writes B never got (`needs_resync`), which a lag of 0 and equal
    /// item counts would not show when the load only overwrites keys.
    fn wait_caught_up(&mut self, want: u64) -> Result<Duration> {
        let start = Instant::now();
        let peer = |field: &str| format!("peer:{}:{field}", self.b_name);
        let (lag_key, state_key) = (peer("lag_mutations"), peer("state"));
        loop {
            let repl = self.a_stats.fetch("replication")?;
            let state = repl.get(&state_key).map_or("missing", String::as_str);
            ensure!(state == "connected", "A reports B as {state}");
            let lag: u64 = repl
                .get(&lag_key)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {lag_key} in A's `stats replication`"))?;
            if lag == 0 {
                let a_items = self.a_stats.number("", "curr_items")?;
                let b_items = self.b_stats.number("", "curr_items")?;
                if a_items == want && b_items == want {
                    return Ok(start.elapsed());
                }
                ensure!(
                    start.elapsed() < CATCH_UP_DEADLINE,
                    "B acknowledged everything but holds {b_items} items, A {a_items} (want {want})"
                );
            }
            ensure!(
                start.elapsed() < CATCH_UP_DEADLINE,
                "B still {lag} writes behind A after {CATCH_UP_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// What one column of the throughput section loads: a single server, or node A of a pair.
enum Target {
    Single(Server),
    Pair(Pair),
}

struct Subject {
    label: &'static str,
    target: Target,
}

impl Subject {
    /// The server the load goes to.
    fn node(&self) -> &Server {
        match &self.target {
            Target::Single(s) => s,
            Target::Pair(p) => &p.a,
        }
    }

    fn pair(&mut self) -> Option<&mut Pair> {
        match &mut self.target {
            Target::Single(_) => None,
            Target::Pair(p) => Some(p),
        }
    }

    fn is_pair(&self) -> bool {
        matches!(self.target, Target::Pair(_))
    }
}

/// One measured cell: one subject, one workload, one round.
#[derive(Clone, Copy, Default)]
struct Cell {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU used during the measured window, in cores.
    gen_cpu: f64,
    srv_cpu: f64,
    peer_cpu: f64,
    other_cpu: f64,
    /// From the last reply until B had applied everything (pairs only).
    catch_up_ms: f64,
}

impl Cell {
    fn cpu(&self, pair: bool) -> String {
        let pct = |cores: f64| (cores * 100.0).round();
        let peer = if pair {
            pct(self.peer_cpu).to_string()
        } else {
            "-".into()
        };
        format!(
            "{} / {} / {} / {}",
            pct(self.gen_cpu),
            pct(self.srv_cpu),
            peer,
            pct(self.other_cpu)
        )
    }
}

/// versus_memcached's cell, with node B's CPU counted apart from "other".
fn run_cell(
    rt: &Runtime,
    subject: &Subject,
    reqs: &Arc<Requests>,
    depth: usize,
    opts: &Options,
) -> Result<Cell> {
    let node = subject.node();
    let peer = match &subject.target {
        Target::Single(_) => None,
        Target::Pair(p) => Some(&p.b),
    };
    let peer_cpu = || peer.map_or(Ok(Duration::ZERO), Server::cpu_time);
    rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..CONNS {
            conns.push(Conn::connect(node.addr).await?);
        }
        let start = Instant::now();
        let window = Window {
            measure_from: start + opts.warmup,
            until: start + opts.warmup + opts.measure,
        };
        let mut tasks = Vec::new();
        for (c, conn) in conns.into_iter().enumerate() {
            let reqs = Arc::clone(reqs);
            let seed = (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            tasks.push(tokio::spawn(async move {
                loadgen::drive(conn, &reqs, depth, window, seed).await
            }));
        }
        tokio::time::sleep_until(window.measure_from.into()).await;
        let gen0 = loadgen::thread_cpu_time();
        let (srv0, peer0, machine0) = (node.cpu_time()?, peer_cpu()?, server::machine_task_time()?);
        tokio::time::sleep_until(window.until.into()).await;
        let gen1 = loadgen::thread_cpu_time();
        let (srv1, peer1, machine1) = (node.cpu_time()?, peer_cpu()?, server::machine_task_time()?);
        let (gen, srv, peer) = (
            gen1 - gen0,
            srv1.saturating_sub(srv0),
            peer1.saturating_sub(peer0),
        );
        let other = machine1
            .saturating_sub(machine0)
            .saturating_sub(gen + srv + peer);

        let (mut ops, mut latencies) = (0, Vec::new());
        for task in tasks {
            let stats = task.await.context("connection task panicked")??;
            ops += stats.ops;
            latencies.extend(stats.latencies_ns);
        }
        ensure!(
            !latencies.is_empty(),
            "no request completed inside the measured window"
        );
        latencies.sort_unstable();
        let secs = opts.measure.as_secs_f64();
        Ok(Cell {
            ops_per_sec: ops as f64 / secs,
            p50_us: percentile(&latencies, 0.50) as f64 / 1e3,
            p99_us: percentile(&latencies, 0.99) as f64 / 1e3,
            gen_cpu: gen.as_secs_f64() / secs,
            srv_cpu: srv.as_secs_f64() / secs,
            peer_cpu: peer.as_secs_f64() / secs,
            other_cpu: other.as_secs_f64() / secs,
            catch_up_ms: 0.0,
        })
    })
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The per-field median of one subject's cells.
fn median(cells: &[Cell]) -> Cell {
    let med = |f: fn(&Cell) -> f64| {
        let mut v: Vec<f64> = cells.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Cell {
        ops_per_sec: med(|c| c.ops_per_sec),
        p50_us: med(|c| c.p50_us),
        p99_us: med(|c| c.p99_us),
        gen_cpu: med(|c| c.gen_cpu),
        srv_cpu: med(|c| c.srv_cpu),
        peer_cpu: med(|c| c.peer_cpu),
        other_cpu: med(|c| c.other_cpu),
        catch_up_ms: med(|c| c.catch_up_ms),
    }
}

struct Row {
    config: &'static str,
    workload: &'static str,
    /// Medians, in subject order: memcached, standalone, then the pairs.
    cells: Vec<(&'static str, bool, Cell)>,
}

/// The throughput section in one configuration: `pinned` (every server `-t 1` on CPU 0, the
/// generator on CPU 1, and a second pair with B on CPU 1) or `unpinned` (`-t 2`).
fn run_config(
    rt: &Runtime,
    opts: &Options,
    certs: &Certs,
    pinned: bool,
    cpus: &[usize],
) -> Result<Vec<Row>> {
    let config = if pinned { "pinned" } else { "unpinned" };
    let (threads, srv_cpu) = if pinned {
        ensure!(
            cpus.len() >= 2,
            "the pinned configuration needs two CPUs, this process may use {cpus:?}"
        );
        server::set_affinity(&cpus[1..2])?;
        (1, Some(cpus[0]))
    } else {
        server::set_affinity(cpus)?;
        (2, None)
    };
    eprintln!("== {config}: servers -t {threads}");
    // memcached refuses to start as root unless told which user to become.
    // SAFETY: geteuid has no preconditions.
    let root: &[&str] = if unsafe { libc::geteuid() } == 0 {
        &["-u", "root"]
    } else {
        &[]
    };
    let single = |memcached: bool, label| -> Result<Subject> {
        let server = Server::start(&opts.launch(
            memcached,
            threads,
            srv_cpu,
            if memcached { root } else { &[] },
        ))?;
        Ok(Subject {
            label,
            target: Target::Single(server),
        })
    };
    let paired = |tag: &str, label, b_cpu| -> Result<Subject> {
        let pair = Pair::start(
            opts,
            certs,
            &format!("{config}-{tag}"),
            threads,
            srv_cpu,
            b_cpu,
        )?;
        Ok(Subject {
            label,
            target: Target::Pair(pair),
        })
    };
    let mut subjects = vec![single(true, "memcached")?, single(false, "standalone")?];
    if pinned {
        subjects.push(paired("shared", "pair, B on A's CPU", srv_cpu)?);
        subjects.push(paired(
            "split",
            "pair, B on the generator's CPU",
            Some(cpus[1]),
        )?);
    } else {
        subjects.push(paired("pair", "pair", None)?);
    }
    for s in &mut subjects {
        rt.block_on(loadgen::sweep(s.node().addr, Op::Set, KEYS, 1))
            .with_context(|| format!("preloading {}", s.label))?;
        if let Some(pair) = s.pair() {
            pair.wait_caught_up(KEYS.count)
                .context("B after the preload")?;
        }
    }
    let sets = Arc::new(Requests::new(Op::Set, KEYS));
    let n = subjects.len();
    let mut cells: Vec<Vec<Vec<Cell>>> =
        opts.workloads.iter().map(|_| vec![Vec::new(); n]).collect();
    for round in 0..opts.rounds {
        for (w, workload) in opts.workloads.iter().enumerate() {
            // Rotate the starting subject each round, so drift does not favour one.
            for k in 0..n {
                let i = (k + round) % n;
                let s = &mut subjects[i];
                let what = format!(
                    "{config} {} round {} at {}",
                    workload.name,
                    round + 1,
                    s.label
                );
                let mut cell =
                    run_cell(rt, s, &sets, workload.depth, opts).context(what.clone())?;
                if let Some(pair) = s.pair() {
                    let took = pair.wait_caught_up(KEYS.count).context(what)?;
                    cell.catch_up_ms = took.as_secs_f64() * 1e3;
                }
                eprintln!(
                    "   round {} {:8} {:32} {:>9.0} ops/s  p50 {:>7.1} µs  p99 {:>7.1} µs  CPU % gen/srv/B/other {}{}",
                    round + 1,
                    workload.name,
                    s.label,
                    cell.ops_per_sec,
                    cell.p50_us,
                    cell.p99_us,
                    cell.cpu(s.is_pair()),
                    if s.is_pair() { format!("  B caught up in {:.0} ms", cell.catch_up_ms) } else { String::new() },
                );
                cells[w][i].push(cell);
            }
        }
    }
    Ok(opts
        .workloads
        .iter()
        .zip(cells)
        .map(|(w, per_subject)| Row {
            config,
            workload: w.name,
            cells: subjects
                .iter()
                .zip(per_subject)
                .map(|(s, c)| (s.label, s.is_pair(), median(&c)))
                .collect(),
        })
        .collect())
}

/// A node running in this process (the same `Server` the binary runs), so the bench can
/// read its store directly. Shut down and joined when dropped.
struct InProcess {
    shared: Arc<Shared>,
    client_addr: SocketAddr,
    cluster_addr: SocketAddr,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl InProcess {
    fn start(
        certs: &Certs,
        name: &str,
        node_id: u16,
        join: Option<SocketAddr>,
    ) -> Result<InProcess> {
        let mut argv: Vec<String> = [
            "meshcached",
            "-l",
            "127.0.0.1",
            "-p",
            "0",
            "-U",
            "0",
            "-t",
            "1",
        ]
        .map(String::from)
        .to_vec();
        argv.extend([
            "--node-name".into(),
            name.into(),
            "--node-id".into(),
            node_id.to_string(),
        ]);
        argv.extend([
            "--certs-dir".into(),
            certs.node(name)?.display().to_string(),
        ]);
        argv.extend(["--cluster-listen".into(), "127.0.0.1:0".into()]);
        if let Some(j) = join {
            argv.extend(["--join".into(), j.to_string()]);
        }
        let args = Args::try_parse_from(&argv).context("node flags")?;
        let config = Config::from_args(&args).context("node flags")?;
        let server = meshcached::server::Server::bind(config, Arc::new(SystemClock))
            .context("binding a node")?;
        let client_addr = *server.local_addrs().first().context("no client listener")?;
        let cluster_addr = server.cluster_addr().context("no cluster endpoint")?;
        let (shared, handle) = (server.shared().clone(), server.shutdown_handle());
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || server.run(false))?;
        Ok(InProcess {
            shared,
            client_addr,
            cluster_addr,
            handle,
            thread: Some(thread),
        })
    }

    fn peers_connected(&self) -> usize {
        self.shared
            .cluster
            .as_ref()
            .map_or(0, |c| c.peers_connected())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Single-write propagation delays, in nanoseconds, sorted.
struct Propagation {
    /// From writing the request to A until B's store holds the key.
    from_send: Vec<u64>,
    /// From reading A's `STORED` until B's store holds the key.
    from_stored: Vec<u64>,
    /// A's round trip: from writing the request to reading `STORED`.
    round_trip: Vec<u64>,
    /// Writes B already held at the first poll after `STORED`.
    already: u64,
}

/// Writes one new key at a time to A, each after the previous one reached B and a pause of
/// `prop_gap`; B's store is polled in a tight loop (sched_yield between polls) with the
/// cheapest lookup it has
/// (`Store::read` of one key: a hash and one shard lock, no copy).
fn measure_propagation(opts: &Options, certs: &Certs) -> Result<Propagation> {
    const WARMUP_WRITES: u64 = 50;
    let a = InProcess::start(certs, "prop-a", 1, None)?;
    let b = InProcess::start(certs, "prop-b", 2, Some(a.cluster_addr))?;
    let deadline = Instant::now() + CONNECT_DEADLINE;
    while a.peers_connected() != 1 || b.peers_connected() != 1 {
        ensure!(
            Instant::now() < deadline,
            "in-process pair not connected after {CONNECT_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut client = TcpStream::connect(a.client_addr)?;
    client.set_nodelay(true)?;
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let b_store = &b.shared.store;
    let mut p = Propagation {
        from_send: Vec::new(),
        from_stored: Vec::new(),
        round_trip: Vec::new(),
        already: 0,
    };
    let (mut req, mut reply) = (Vec::new(), [0u8; 8]);
    for n in 0..WARMUP_WRITES + opts.prop_writes {
        let key = format!("prop:{n:07}");
        req.clear();
        write!(req, "set {key} 0 0 {}\r\n", loadgen::VALUE_LEN)?;
        req.extend((0..loadgen::VALUE_LEN).map(|i| b'a' + (i % 26) as u8));
        req.extend_from_slice(b"\r\n");
        let now = b.shared.clock().now_secs();
        let held = || b_store.read(key.as_bytes(), now, false, |item| item.is_some());

        let sent = Instant::now();
        client.write_all(&req)?;
        client.read_exact(&mut reply).context("reading A's reply")?;
        let stored = Instant::now();
        ensure!(
            &reply == b"STORED\r\n",
            "A answered {:?}",
            String::from_utf8_lossy(&reply)
        );
        let already = held();
        if !already {
            while !held() {
                if stored.elapsed() > CATCH_UP_DEADLINE {
                    bail!("{key} not on B {CATCH_UP_DEADLINE:?} after A stored it");
                }
                // Yield rather than spin: with 2 vCPUs, a spinning poller that B's runtime
                // thread has to wait behind costs a scheduler slice (p99 ~3.5 ms instead of
                // ~0.3 ms in a trial on this machine). sched_yield keeps the loop tight while
                // letting any runnable node thread go first.
                std::thread::yield_now();
            }
        }
        let arrived = Instant::now();
        if n >= WARMUP_WRITES {
            p.already += u64::from(already);
            p.from_send.push((arrived - sent).as_nanos() as u64);
            p.from_stored.push((arrived - stored).as_nanos() as u64);
            p.round_trip.push((stored - sent).as_nanos() as u64);
        }
        std::thread::sleep(opts.prop_gap);
    }
    p.from_send.sort_unstable();
    p.from_stored.sort_unstable();
    p.round_trip.sort_unstable();
    Ok(p)
}

/// A process's CPU time, read two ways.
#[derive(Clone, Copy)]
struct Usage {
    /// utime + stime from /proc/PID/stat: every thread the process ever had, in 10 ms ticks.
    ticks: Duration,
    /// The sum of /proc/PID/task/*/schedstat's on-CPU nanoseconds: exact, but only for the
    /// threads alive now (meshcached's threads live as long as the process).
    on_cpu: Duration,
}

impl Usage {
    fn of(server: &Server) -> Result<Usage> {
        let tasks = format!("/proc/{}/task", server.pid());
        let mut ns = 0u64;
        for task in std::fs::read_dir(&tasks).with_context(|| format!("listing {tasks}"))? {
            let path = task?.path().join("schedstat");
            // A thread that exited since the listing has nothing more to count.
            let Ok(stat) = std::fs::read_to_string(&path) else {
                continue;
            };
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .with_context(|| format!("malformed {}", path.display()))?;
        }
        Ok(Usage {
            ticks: server.cpu_time()?,
            on_cpu: Duration::from_nanos(ns),
        })
    }
}

/// CPU time, per write, that one node spent on a push.
struct CpuUse {
    node: &'static str,
    /// utime + stime, as the kernel reports them: in 10 ms ticks.
    cpu: Duration,
    /// The same from the threads' schedstat, to the nanosecond.
    on_cpu: Duration,
    writes: u64,
    /// How long the push took, until B held everything for the pair.
    elapsed: Duration,
}

/// Pushes `cpu_writes` new keys to a fresh pair's A (and, separately, to a fresh standalone
/// node) with the sweep loader (4 connections, 32-deep pipelines), and reads each node's
/// utime + stime before and after: after B holds every key, for the pair.
fn measure_cpu(rt: &Runtime, opts: &Options, certs: &Certs) -> Result<Vec<CpuUse>> {
    let keys = Keyspace {
        count: opts.cpu_writes,
        digits: 7,
    };
    ensure!(
        keys.count < 10_000_000,
        "BENCH_CPU_WRITES must be below 10 million"
    );
    let mut pair = Pair::start(opts, certs, "cpu", 2, None, None)?;
    let (a0, b0) = (Usage::of(&pair.a)?, Usage::of(&pair.b)?);
    let start = Instant::now();
    // No polling during the push: B's window should hold B's replication work only.
    rt.block_on(loadgen::sweep(pair.a.addr, Op::Set, keys, 1))
        .context("pushing to A")?;
    pair.wait_caught_up(keys.count)
        .context("B after the push")?;
    let elapsed = start.elapsed();
    let (a1, b1) = (Usage::of(&pair.a)?, Usage::of(&pair.b)?);
    drop(pair);

    let single = Server::start(&opts.launch(false, 2, None, &[]))?;
    let (s0, start) = (Usage::of(&single)?, Instant::now());
    rt.block_on(loadgen::sweep(single.addr, Op::Set, keys, 1))
        .context("pushing to standalone")?;
    let single_elapsed = start.elapsed();
    let s1 = Usage::of(&single)?;
    let items = StatsClient::connect(single.addr)?.number("", "curr_items")?;
    ensure!(
        items == keys.count,
        "standalone holds {items} of {} items",
        keys.count
    );

    let row = |node, before: Usage, after: Usage, elapsed| CpuUse {
        node,
        cpu: after.ticks.saturating_sub(before.ticks),
        on_cpu: after.on_cpu.saturating_sub(before.on_cpu),
        writes: keys.count,
        elapsed,
    };
    Ok(vec![
        row("pair: B (receives and applies)", b0, b1, elapsed),
        row("pair: A (serves the clients, sends to B)", a0, a1, elapsed),
        row("standalone", s0, s1, single_elapsed),
    ])
}

fn print_throughput(opts: &Options, rows: &[Row], machine: &str) {
    println!("## Set throughput: node A of a pair, standalone, memcached ({machine})\n");
    println!(
        "versus_memcached's set cells: {CONNS} connections, {}-byte values, keys drawn uniformly from {} \
         (`key:000000`..), preloaded; `set` is one request at a time, `set-p32` 32 per round trip. \
         Each cell: {:.2} s warm-up, then {:.2} s measured; medians of {} rounds (cells interleaved, \
         rotating which goes first). `pinned`: every server `-t 1` on CPU 0, the generator on CPU 1; \
         the two pair rows differ in where node B runs. `unpinned`: `-t 2`, nothing pinned.",
        loadgen::VALUE_LEN,
        KEYS.count,
        opts.warmup.as_secs_f64(),
        opts.measure.as_secs_f64(),
        opts.rounds,
    );
    println!(
        "CPU in % of one core during the measured window: generator, the loaded server (A for a pair), \
         node B, everything else. \"B caught up\": from A's last reply until A's `stats replication` \
         showed no write unacknowledged by B (B acknowledges after applying) and both held the same \
         number of items; it is checked after every pair cell.\n"
    );
    println!("| config | workload | server | ops/s | ÷ standalone | ÷ memcached | p50 / p99 µs | CPU % gen / srv / B / other | B caught up (ms) |");
    println!("|---|---|---|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        let memcached = row.cells[0].2.ops_per_sec;
        let standalone = row.cells[1].2.ops_per_sec;
        for (label, pair, c) in &row.cells {
            println!(
                "| {} | {} | {label} | {:.0} | {:.2} | {:.2} | {:.1} / {:.1} | {} | {} |",
                row.config,
                row.workload,
                c.ops_per_sec,
                c.ops_per_sec / standalone,
                c.ops_per_sec / memcached,
                c.p50_us,
                c.p99_us,
                c.cpu(*pair),
                if *pair {
                    format!("{:.0}", c.catch_up_ms)
                } else {
                    "-".into()
                },
            );
        }
    }
    println!();
}

fn print_propagation(opts: &Options, p: &Propagation, machine: &str) {
    let us = |v: &[u64], q: f64| percentile(v, q) as f64 / 1e3;
    println!("## Propagation delay of a single write, idle pair ({machine})\n");
    println!(
        "Two nodes in the bench process (`-t 1` each, QUIC over loopback). {} writes of new keys \
         (`set prop:NNNNNNN 0 0 {}`), one at a time, each after the previous one reached B and a \
         {:.1} ms pause. \"Holds\" is the first successful `Store::read` of the key on B, polled \
         in a tight loop (`sched_yield` between polls) once A's `STORED` has arrived; {} of the writes were already on B at the \
         first poll. Targets: p50 ≤ 100 µs, p99 ≤ 1 ms.\n",
        p.from_send.len(),
        loadgen::VALUE_LEN,
        opts.prop_gap.as_secs_f64() * 1e3,
        p.already,
    );
    println!("| interval | p50 µs | p99 µs | max µs |");
    println!("|---|--:|--:|--:|");
    for (name, v) in [
        ("request sent to A → B holds the key", &p.from_send),
        ("A's `STORED` received → B holds the key", &p.from_stored),
        (
            "request sent to A → `STORED` received (A's round trip)",
            &p.round_trip,
        ),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            us(v, 0.5),
            us(v, 0.99),
            us(v, 1.0)
        );
    }
    println!();
}

fn print_cpu(rows: &[CpuUse], machine: &str) {
    println!("## CPU per write ({machine})\n");
    println!(
        "{} new keys (100-byte values) pushed to a fresh node with 4 connections, 32 requests per \
         round trip; servers `-t 2`, unpinned. CPU is utime + stime of the whole process from \
         /proc/PID/stat (10 ms ticks), read before the push and after the last reply, or for the \
         pair after B held every key and had acknowledged every write; the schedstat column is \
         the same interval from the threads' on-CPU nanoseconds, a cross-check at finer grain.\n",
        rows.first().map_or(0, |r| r.writes)
    );
    println!("| node | CPU ms | µs CPU per write | µs per write (schedstat) | push took ms |");
    println!("|---|--:|--:|--:|--:|");
    for r in rows {
        let per_write = |d: Duration| d.as_secs_f64() * 1e6 / r.writes as f64;
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.0} |",
            r.node,
            r.cpu.as_secs_f64() * 1e3,
            per_write(r.cpu),
            per_write(r.on_cpu),
            r.elapsed.as_secs_f64() * 1e3,
        );
    }
    println!();
}

fn main() -> Result<()> {
    // `cargo test --benches` runs this binary without --bench; it should not benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("cluster: not run under `cargo bench`, skipping");
        return Ok(());
    }
    let opts = Options::from_env()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let cpus = server::affinity()?;
    let machine = format!("{}-core VM", cpus.len());
    eprintln!(
        "memcached:  {}\nmeshcached: {}\nCPUs available: {cpus:?}",
        opts.memcached.display(),
        opts.meshcached.display()
    );
    let certs = Certs::new()?;

    let mut rows = Vec::new();
    for (section, pinned) in [("pinned", true), ("unpinned", false)] {
        if opts.runs(section) {
            rows.extend(run_config(&rt, &opts, &certs, pinned, &cpus)?);
        }
    }
    server::set_affinity(&cpus)?;
    let propagation = if opts.runs("propagation") {
        eprintln!("== propagation: {} single writes", opts.prop_writes);
        Some(measure_propagation(&opts, &certs)?)
    } else {
        None
    };
    let cpu = if opts.runs("cpu") {
        eprintln!("== CPU per write: {} writes", opts.cpu_writes);
        Some(measure_cpu(&rt, &opts, &certs)?)
    } else {
        None
    };

    if !rows.is_empty() {
        print_throughput(&opts, &rows, &machine);
    }
    if let Some(p) = &propagation {
        print_propagation(&opts, p, &machine);
    }
    if let Some(c) = &cpu {
        print_cpu(c, &machine);
    }
    Ok(())
}
