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
//! 4. **Wrong refusals at a small replica** under eviction: see `cluster/forgetting.rs`.
//! 5. **`--ack-replicas 1` versus 0** on two pairs: set throughput and latency at A, where a
//!    `STORED` waits for B's acknowledgement (`cluster/ack.rs`).
//! 6. **Anti-entropy**: a round and a 1,000-key repair on 1M items in process, and set
//!    throughput with `--anti-entropy-period` 0, 10s and 1s (`cluster/entropy.rs`).
//!
//! Run: `cargo bench --bench cluster > cluster.md` (about 2.5 minutes). It needs
//! `/usr/bin/memcached` and `taskset`; under `cargo test --benches` it exits at once.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_QUICK` | unset | `1`: smoke-run defaults (0.25 s + 0.5 s cells, 1 round, 200 and 20k writes) |
//! | `BENCH_SECS`, `BENCH_WARMUP_SECS` | `2`, `1` | measured and warm-up seconds per throughput cell |
//! | `BENCH_ROUNDS` | `3` | throughput rounds; each number is the median over rounds |
//! | `BENCH_ONLY` | `pinned,unpinned,propagation,cpu,forgetting,ack,entropy` | sections to run |
//! | `BENCH_AE_ITEMS` | `1000000` | entropy section: items in each in-process store |
//! | `BENCH_WORKLOADS` | `set,set-p32` | throughput workloads |
//! | `BENCH_PROP_WRITES`, `BENCH_PROP_GAP_MS` | `2000`, `1` | propagation: writes, pause between them |
//! | `BENCH_CPU_WRITES` | `200000` | CPU section: sets pushed |
//! | `BENCH_FORGET_WRITES` | `1000000` | refusals section: new keys pushed |
//! | `MESHCACHED_BIN`, `MEMCACHED_BIN` | the crate's binary, `/usr/bin/memcached` | servers |

// Shared with versus_memcached; this target uses only part of them.
#[path = "cluster/ack.rs"]
mod ack;
#[path = "cluster/cpu.rs"]
mod cpu;
#[path = "cluster/entropy.rs"]
mod entropy;
#[path = "cluster/forgetting.rs"]
mod forgetting;
#[allow(dead_code)]
#[path = "cluster/pair.rs"]
mod pair;
#[path = "cluster/propagation.rs"]
mod propagation;
use ack::*;
use cpu::*;
use entropy::*;
use forgetting::*;
use pair::*;
use propagation::*;
// Shared with the versus_memcached bench, which uses parts this one does not.
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
    /// Any of `pinned`, `unpinned`, `propagation`, `cpu`, `forgetting`, `ack`, `entropy`
    /// (`BENCH_ONLY`).
    sections: Vec<&'static str>,
    workloads: Vec<&'static Workload>,
    prop_writes: u64,
    prop_gap: Duration,
    cpu_writes: u64,
    forget_writes: u64,
    ae_items: u64,
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
            sections: list(
                "BENCH_ONLY",
                &[
                    "pinned",
                    "unpinned",
                    "propagation",
                    "cpu",
                    "forgetting",
                    "ack",
                    "entropy",
                ],
            )?,
            workloads: WORKLOADS
                .iter()
                .filter(|w| workload_names.contains(&w.name))
                .collect(),
            prop_writes: count("BENCH_PROP_WRITES", 2000, 200)?,
            prop_gap: Duration::from_secs_f64(number("BENCH_PROP_GAP_MS", 1.0)? / 1e3),
            cpu_writes: count("BENCH_CPU_WRITES", 200_000, 20_000)?,
            forget_writes: count("BENCH_FORGET_WRITES", 1_000_000, 100_000)?,
            ae_items: count("BENCH_AE_ITEMS", 1_000_000, 100_000)?,
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
            tls_port: None,
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

/// Writes every key of the load once (a pair's B must then hold them all).
fn preload(rt: &Runtime, s: &mut Subject) -> Result<()> {
    rt.block_on(loadgen::sweep(s.node().addr, Op::Set, KEYS, 1))
        .with_context(|| format!("preloading {}", s.label))?;
    if let Some(pair) = s.pair() {
        pair.wait_caught_up(KEYS.count)
            .context("B after the preload")?;
    }
    Ok(())
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
        preload(rt, s)?;
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

    let refusals = opts
        .runs("forgetting")
        .then(|| measure_refusals(&rt, &opts, &certs))
        .transpose()?;

    server::set_affinity(&cpus)?;
    let acks = opts
        .runs("ack")
        .then(|| measure_ack(&rt, &opts, &certs))
        .transpose()?;
    let entropy = if opts.runs("entropy") {
        eprintln!(
            "== anti-entropy: {} items in process, then three pairs",
            opts.ae_items
        );
        let core = measure_core(opts.ae_items, 1000)?;
        Some((core, measure_periods(&rt, &opts, &certs)?))
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
    if let Some(r) = &refusals {
        print_refusals(r, &machine);
    }
    if let Some(a) = &acks {
        print_ack(&opts, a, &machine);
    }
    if let Some((core, periods)) = &entropy {
        print_core(core, &machine);
        print_periods(&opts, periods, &machine);
    }
    Ok(())
}
