//! meshcached versus Debian's memcached, measured in one run with one load
//! generator, so the two numbers in each row share every condition that is not
//! the server: same machine state, same client, same key sequence.
//!
//! For each configuration (pinned, unpinned) both servers run side by side and
//! every workload is measured as interleaved cells: memcached, meshcached,
//! then the next workload, for several rounds, alternating which server goes
//! first so slow drift (thermal, page cache, other tenants) does not favour one.
//! Each reported number is the median over rounds. A separate step starts each
//! server fresh, loads a million items and reads its resident memory.
//!
//! See benches/README.md for how to run it and what the knobs are.

// A bench root resolves `mod` next to itself; keep the helpers out of the
// benches/ directory, where cargo would take them for bench targets.
#[path = "versus_memcached/loadgen.rs"]
mod loadgen;
#[path = "versus_memcached/server.rs"]
mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use loadgen::{Conn, Keyspace, Op, Requests, Window};
use server::{Launch, Server};
use tokio::runtime::Runtime;

/// The load: 4 connections over 100k keys, pipelines 32 deep.
const CONNS: u64 = 4;
const KEYS: Keyspace = Keyspace {
    count: 100_000,
    digits: 6,
};
const PIPELINE_DEPTH: usize = 32;
/// The memory step: a million items, in a fresh server with room for all.
const MEMORY_KEYS: Keyspace = Keyspace {
    count: 1_000_000,
    digits: 7,
};
const MEMORY_LIMIT_MB: usize = 2048;
/// Spot-check every n-th key after the memory load to prove it was all stored.
const MEMORY_CHECK_STEP: u64 = 100;
const THROUGHPUT_LIMIT_MB: usize = 1024;

const IMPLS: [&str; 2] = ["memcached", "meshcached"];

struct Config {
    name: &'static str,
    /// Server threads (`-t`).
    threads: usize,
    /// Server on the first allowed CPU, generator on the second.
    pinned: bool,
}

static CONFIGS: [Config; 2] = [
    Config {
        name: "pinned",
        threads: 1,
        pinned: true,
    },
    Config {
        name: "unpinned",
        threads: 2,
        pinned: false,
    },
];

struct Workload {
    name: &'static str,
    op: Op,
    depth: usize,
}

static WORKLOADS: [Workload; 4] = [
    Workload {
        name: "set",
        op: Op::Set,
        depth: 1,
    },
    Workload {
        name: "get",
        op: Op::Get,
        depth: 1,
    },
    Workload {
        name: "set-p32",
        op: Op::Set,
        depth: PIPELINE_DEPTH,
    },
    Workload {
        name: "get-p32",
        op: Op::Get,
        depth: PIPELINE_DEPTH,
    },
];

/// Everything the environment can change; see benches/README.md.
struct Options {
    warmup: Duration,
    measure: Duration,
    rounds: usize,
    configs: Vec<&'static Config>,
    workloads: Vec<&'static Workload>,
    memory: bool,
    memcached: PathBuf,
    meshcached: PathBuf,
}

impl Options {
    fn from_env() -> Result<Options> {
        let secs = |name: &str, default: f64| -> Result<Duration> {
            let Ok(v) = std::env::var(name) else {
                return Ok(Duration::from_secs_f64(default));
            };
            let s: f64 = v
                .parse()
                .with_context(|| format!("{name}={v:?} is not a number of seconds"))?;
            ensure!(s > 0.0, "{name} must be positive");
            Ok(Duration::from_secs_f64(s))
        };
        let rounds = match std::env::var("BENCH_ROUNDS") {
            Ok(v) => v
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("BENCH_ROUNDS={v:?}"))?,
            Err(_) => 3,
        };
        // BENCH_ONLY names the sections to run: pinned, unpinned, rss.
        let only = list("BENCH_ONLY", &["pinned", "unpinned", "rss"])?;
        let workload_names = list("BENCH_WORKLOADS", &WORKLOADS.each_ref().map(|w| w.name))?;
        let skip_rss = std::env::var("BENCH_SKIP_RSS").is_ok_and(|v| !v.is_empty() && v != "0");
        Ok(Options {
            warmup: secs("BENCH_WARMUP_SECS", 1.0)?,
            measure: secs("BENCH_SECS", 3.0)?,
            rounds,
            configs: CONFIGS.iter().filter(|c| only.contains(&c.name)).collect(),
            workloads: WORKLOADS
                .iter()
                .filter(|w| workload_names.contains(&w.name))
                .collect(),
            memory: only.contains(&"rss") && !skip_rss,
            memcached: std::env::var_os("MEMCACHED_BIN")
                .map_or_else(|| "/usr/bin/memcached".into(), PathBuf::from),
            meshcached: std::env::var_os("MESHCACHED_BIN")
                .map_or_else(|| env!("CARGO_BIN_EXE_meshcached").into(), PathBuf::from),
        })
    }

    fn launch<'a>(
        &'a self,
        which: usize,
        threads: usize,
        memory_mb: usize,
        pin_to: Option<usize>,
    ) -> Launch<'a> {
        // memcached refuses to start as root unless told which user to become.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        Launch {
            name: IMPLS[which],
            program: if which == 0 {
                &self.memcached
            } else {
                &self.meshcached
            },
            threads,
            memory_mb,
            pin_to,
            extra_args: if which == 0 && root {
                &["-u", "root"][..]
            } else {
                &[]
            },
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

/// One measured cell: one server, one workload, one round.
#[derive(Clone, Copy, Default)]
struct Cell {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU used during the measured window, in cores (1.0 = one core busy).
    generator_cpu: f64,
    server_cpu: f64,
    /// Everything else the machine ran: other processes, hypervisor steal.
    other_cpu: f64,
    misses: u64,
}

impl Cell {
    /// The CPU columns, in % of one core.
    fn cpu(&self) -> String {
        let pct = |cores: f64| (cores * 100.0).round();
        let (gen, srv, other) = (self.generator_cpu, self.server_cpu, self.other_cpu);
        format!("{} / {} / {}", pct(gen), pct(srv), pct(other))
    }
}

fn run_cell(
    rt: &Runtime,
    server: &Server,
    reqs: &Arc<Requests>,
    depth: usize,
    opts: &Options,
) -> Result<Cell> {
    rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..CONNS {
            conns.push(Conn::connect(server.addr).await?);
        }
        let start = Instant::now();
        let window = Window {
            measure_from: start + opts.warmup,
            until: start + opts.warmup + opts.measure,
        };
        let mut tasks = Vec::new();
        for (c, conn) in conns.into_iter().enumerate() {
            let reqs = Arc::clone(reqs);
            // The same seeds for every cell: both servers see the same key sequence.
            let seed = (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            tasks.push(tokio::spawn(async move {
                loadgen::drive(conn, &reqs, depth, window, seed).await
            }));
        }
        // This task shares the generator's thread, so these samples bracket
        // exactly the window the connections count.
        tokio::time::sleep_until(window.measure_from.into()).await;
        let gen0 = loadgen::thread_cpu_time();
        let (server0, machine0) = (server.cpu_time()?, server::machine_task_time()?);
        tokio::time::sleep_until(window.until.into()).await;
        let gen1 = loadgen::thread_cpu_time();
        let (server1, machine1) = (server.cpu_time()?, server::machine_task_time()?);
        let (gen, server) = (gen1 - gen0, server1.saturating_sub(server0));
        let other = machine1
            .saturating_sub(machine0)
            .saturating_sub(gen + server);

        let (mut ops, mut misses, mut latencies) = (0, 0, Vec::new());
        for task in tasks {
            let stats = task.await.context("connection task panicked")??;
            ops += stats.ops;
            misses += stats.misses;
            latencies.extend(stats.latencies_ns);
        }
        ensure!(
            !latencies.is_empty(),
            "no request completed inside the measured window"
        );
        latencies.sort_unstable();
        let percentile_us =
            |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
        let secs = opts.measure.as_secs_f64();
        Ok(Cell {
            ops_per_sec: ops as f64 / secs,
            p50_us: percentile_us(0.50),
            p99_us: percentile_us(0.99),
            generator_cpu: gen.as_secs_f64() / secs,
            server_cpu: server.as_secs_f64() / secs,
            other_cpu: other.as_secs_f64() / secs,
            misses,
        })
    })
}

/// The per-field median of a server's cells for one workload.
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
        generator_cpu: med(|c| c.generator_cpu),
        server_cpu: med(|c| c.server_cpu),
        other_cpu: med(|c| c.other_cpu),
        misses: cells.iter().map(|c| c.misses).sum(),
    }
}

struct Row {
    config: &'static str,
    workload: &'static str,
    /// Medians for memcached and meshcached, in `IMPLS` order.
    cells: [Cell; 2],
}

fn run_config(rt: &Runtime, opts: &Options, config: &Config, cpus: &[usize]) -> Result<Vec<Row>> {
    let server_cpu = if config.pinned {
        ensure!(
            cpus.len() >= 2,
            "the pinned configuration needs two CPUs, this process may use {cpus:?}"
        );
        server::set_affinity(&cpus[1..2])?;
        Some(cpus[0])
    } else {
        server::set_affinity(cpus)?;
        None
    };
    eprintln!(
        "== {}: servers -t {}{}",
        config.name,
        config.threads,
        server_cpu.map_or(", nothing pinned".into(), |c| format!(
            " on CPU {c}, generator on CPU {}",
            cpus[1]
        ))
    );
    let start = |i| Server::start(&opts.launch(i, config.threads, THROUGHPUT_LIMIT_MB, server_cpu));
    let servers = [start(0)?, start(1)?];
    for s in &servers {
        // Gets must hit: store every key once before anything is measured.
        rt.block_on(loadgen::sweep(s.addr, Op::Set, KEYS, 1))
            .with_context(|| format!("preloading {}", s.name))?;
    }
    let sets = Arc::new(Requests::new(Op::Set, KEYS));
    let gets = Arc::new(Requests::new(Op::Get, KEYS));

    let mut cells: Vec<[Vec<Cell>; 2]> =
        opts.workloads.iter().map(|_| Default::default()).collect();
    for round in 0..opts.rounds {
        for (w, workload) in opts.workloads.iter().enumerate() {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let reqs = if workload.op == Op::Set { &sets } else { &gets };
                let cell =
                    run_cell(rt, &servers[i], reqs, workload.depth, opts).with_context(|| {
                        format!(
                            "{} {} round {} against {}",
                            config.name,
                            workload.name,
                            round + 1,
                            IMPLS[i]
                        )
                    })?;
                eprintln!(
                    "   round {} {:8} {:10} {:>9.0} ops/s  p50 {:>7.1} µs  p99 {:>7.1} µs  CPU % gen/srv/other {}{}",
                    round + 1,
                    workload.name,
                    IMPLS[i],
                    cell.ops_per_sec,
                    cell.p50_us,
                    cell.p99_us,
                    cell.cpu(),
                    if cell.misses > 0 { format!("  {} MISSES", cell.misses) } else { String::new() },
                );
                cells[w][i].push(cell);
            }
        }
    }
    Ok(opts
        .workloads
        .iter()
        .zip(cells)
        .map(|(w, [mc, mesh])| Row {
            config: config.name,
            workload: w.name,
            cells: [median(&mc), median(&mesh)],
        })
        .collect())
}

struct Memory {
    idle: u64,
    loaded: u64,
    checked: u64,
    misses: u64,
}

/// Starts server `which` fresh, fills it with `MEMORY_KEYS`, and reads its RSS.
fn measure_memory(rt: &Runtime, opts: &Options, which: usize, threads: usize) -> Result<Memory> {
    let name = IMPLS[which];
    eprintln!("== memory: {name}, {} items", MEMORY_KEYS.count);
    let server = Server::start(&opts.launch(which, threads, MEMORY_LIMIT_MB, None))?;
    let idle = server.rss_bytes()?;
    rt.block_on(loadgen::sweep(server.addr, Op::Set, MEMORY_KEYS, 1))
        .with_context(|| format!("loading {name}"))?;
    // Read RSS before the spot-check so reading cannot change it.
    let loaded = server.settled_rss_bytes()?;
    let misses = rt
        .block_on(loadgen::sweep(
            server.addr,
            Op::Get,
            MEMORY_KEYS,
            MEMORY_CHECK_STEP,
        ))
        .with_context(|| format!("spot-checking {name}"))?;
    Ok(Memory {
        idle,
        loaded,
        checked: MEMORY_KEYS.count.div_ceil(MEMORY_CHECK_STEP),
        misses,
    })
}

fn print_throughput(opts: &Options, rows: &[Row]) {
    println!("## Throughput and latency\n");
    println!(
        "{CONNS} connections, {}-byte values, keys drawn uniformly from {} (`key:000000`..), preloaded. \
         Each cell: {:.1} s warm-up, then {:.1} s measured; each number is the median of {} rounds \
         (cells interleaved memcached/meshcached, alternating which goes first).",
        loadgen::VALUE_LEN,
        KEYS.count,
        opts.warmup.as_secs_f64(),
        opts.measure.as_secs_f64(),
        opts.rounds,
    );
    println!(
        "p50/p99 in µs: per request for `set`/`get`, per {PIPELINE_DEPTH}-request batch for `-p{PIPELINE_DEPTH}`. \
         CPU in % of one core during the measured window: `gen` is the load generator (near 100% means the \
         generator may be the limit), `srv` the server, `other` everything else on the machine (high means \
         the cell was disturbed).\n"
    );
    println!(
        "| config | workload | memcached ops/s | meshcached ops/s | ratio \
         | memcached p50 / p99 | meshcached p50 / p99 \
         | memcached CPU gen / srv / other | meshcached CPU gen / srv / other |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        let [mc, mesh] = &row.cells;
        let lat = |c: &Cell| format!("{:.1} / {:.1}", c.p50_us, c.p99_us);
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} |",
            row.config,
            row.workload,
            mc.ops_per_sec,
            mesh.ops_per_sec,
            mesh.ops_per_sec / mc.ops_per_sec,
            lat(mc),
            lat(mesh),
            mc.cpu(),
            mesh.cpu(),
        );
    }
    for row in rows {
        for (name, cell) in IMPLS.iter().zip(&row.cells) {
            if cell.misses > 0 {
                println!(
                    "\n**Warning:** {name} missed {} gets in {} {}; hits and misses \
                     cost differently, so that row is not comparable.",
                    cell.misses, row.config, row.workload
                );
            }
        }
    }
    println!();
}

fn print_memory(memory: &[Memory; 2], threads: usize) {
    const MIB: f64 = 1024.0 * 1024.0;
    let items = MEMORY_KEYS.count as f64;
    println!("## Memory\n");
    println!(
        "Fresh servers (`-m {MEMORY_LIMIT_MB} -t {threads}`), {} items with {}-byte values (`key:0000000`..), VmRSS from /proc/PID/status.\n",
        MEMORY_KEYS.count,
        loadgen::VALUE_LEN
    );
    println!("| server | VmRSS idle MiB | VmRSS loaded MiB | bytes/item | bytes/item above idle | spot-check hits |");
    println!("|---|--:|--:|--:|--:|--:|");
    for (name, m) in IMPLS.iter().zip(memory) {
        println!(
            "| {name} | {:.1} | {:.1} | {:.0} | {:.0} | {}/{} |",
            m.idle as f64 / MIB,
            m.loaded as f64 / MIB,
            m.loaded as f64 / items,
            m.loaded.saturating_sub(m.idle) as f64 / items,
            m.checked - m.misses,
            m.checked,
        );
    }
    println!(
        "\nmeshcached / memcached loaded RSS: {:.2}\n",
        memory[1].loaded as f64 / memory[0].loaded as f64
    );
}

fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` (or --all-targets)
    // runs this binary without it, and should not spend minutes benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("versus_memcached: not run under `cargo bench`, skipping");
        return Ok(());
    }
    let opts = Options::from_env()?;
    // One thread drives every connection; see loadgen.rs for why.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let cpus = server::affinity()?;
    eprintln!(
        "memcached:  {}\nmeshcached: {}\nCPUs available: {cpus:?}",
        opts.memcached.display(),
        opts.meshcached.display()
    );

    let mut rows = Vec::new();
    for config in &opts.configs {
        rows.extend(run_config(&rt, &opts, config, &cpus)?);
    }
    server::set_affinity(&cpus)?;
    let memory_threads = CONFIGS[1].threads;
    let memory = if opts.memory {
        let measure = |which| measure_memory(&rt, &opts, which, memory_threads);
        Some([measure(0)?, measure(1)?])
    } else {
        None
    };

    if !rows.is_empty() {
        print_throughput(&opts, &rows);
    }
    if let Some(memory) = &memory {
        print_memory(memory, memory_threads);
    }
    Ok(())
}
