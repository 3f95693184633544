//! Client TLS against plaintext on the same node, with Debian's memcached (if built with
//! TLS) measured the same way beside it; the table goes to stdout, progress to stderr.
//!
//! Each server runs once per configuration with two listeners on one store: a `notls:`
//! one and a TLS one (`-Z`, the same certificate for both servers: ECDSA P-256 from
//! `meshcached certs`' code). The load is versus_memcached's, with its generator: 4
//! closed-loop connections, 100-byte values over 100k preloaded keys, `set`/`get` one
//! request at a time and `set-p32`/`get-p32` 32 per round trip. The TLS connections
//! (rustls on the ring provider, TLS 1.3 as both servers negotiate it with it) do their
//! handshakes before the window opens: the cells measure the steady state, not handshakes.
//! Cells are interleaved (server × transport, the order rotating every round), medians of
//! the rounds.
//!
//! Run: `cargo bench --bench client_tls > tls.md` (about 7 minutes). Under
//! `cargo test --benches` it exits at once.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_SECS`, `BENCH_WARMUP_SECS` | `3`, `1` | measured and warm-up seconds per cell |
//! | `BENCH_ROUNDS` | `3` | rounds; each number is the median over rounds |
//! | `BENCH_ONLY` | `pinned,unpinned` | configurations (as versus_memcached's) |
//! | `BENCH_WORKLOADS` | `set,get,set-p32,get-p32` | workloads |
//! | `MESHCACHED_BIN`, `MEMCACHED_BIN` | the crate's binary, `/usr/bin/memcached` | servers |

#[allow(dead_code)]
#[path = "versus_memcached/loadgen.rs"]
mod loadgen;
#[allow(dead_code)]
#[path = "versus_memcached/server.rs"]
mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use loadgen::{Conn, Keyspace, Op, Requests, Window};
use meshcached::certs::generate_ca;
use server::{Launch, Server};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Runtime;
use tokio_rustls::TlsConnector;

const CONNS: u64 = 4;
const KEYS: Keyspace = Keyspace {
    count: 100_000,
    digits: 6,
};
const PIPELINE_DEPTH: usize = 32;
const MEMORY_MB: usize = 1024;

struct Config {
    name: &'static str,
    threads: usize,
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    Tls,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plaintext",
            Transport::Tls => "TLS",
        }
    }
}

struct Options {
    warmup: Duration,
    measure: Duration,
    rounds: usize,
    configs: Vec<&'static Config>,
    workloads: Vec<&'static Workload>,
    meshcached: PathBuf,
    /// `None` when memcached is missing or built without TLS.
    memcached: Option<PathBuf>,
}

impl Options {
    fn from_env() -> Result<Options> {
        let secs = |name: &str, default: f64| -> Result<Duration> {
            let Ok(v) = std::env::var(name) else {
                return Ok(Duration::from_secs_f64(default));
            };
            let s: f64 = v.parse().with_context(|| format!("{name}={v:?}"))?;
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
        let only = list("BENCH_ONLY", &["pinned", "unpinned"])?;
        let names = list("BENCH_WORKLOADS", &WORKLOADS.each_ref().map(|w| w.name))?;
        let memcached = std::env::var_os("MEMCACHED_BIN")
            .map_or_else(|| "/usr/bin/memcached".into(), PathBuf::from);
        Ok(Options {
            warmup: secs("BENCH_WARMUP_SECS", 1.0)?,
            measure: secs("BENCH_SECS", 3.0)?,
            rounds,
            configs: CONFIGS.iter().filter(|c| only.contains(&c.name)).collect(),
            workloads: WORKLOADS
                .iter()
                .filter(|w| names.contains(&w.name))
                .collect(),
            meshcached: std::env::var_os("MESHCACHED_BIN")
                .map_or_else(|| env!("CARGO_BIN_EXE_meshcached").into(), PathBuf::from),
            memcached: has_tls(&memcached).then_some(memcached),
        })
    }
}

/// Whether `memcached -h` lists `-Z`: Debian's build has TLS.
fn has_tls(memcached: &Path) -> bool {
    Command::new(memcached)
        .arg("-h")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--enable-ssl"))
}

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

/// The server certificate, its key and the CA, in a directory removed on drop.
struct Certs {
    dir: PathBuf,
    ca_pem: String,
}

impl Certs {
    fn make() -> Result<Certs> {
        let dir = std::env::temp_dir().join(format!("meshcached-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ca = generate_ca()?;
        let node = ca.issue_node("bench", &["127.0.0.1"])?;
        std::fs::write(dir.join("chain.pem"), &node.cert_pem)?;
        std::fs::write(dir.join("key.pem"), &node.key_pem)?;
        Ok(Certs {
            dir,
            ca_pem: ca.cert_pem().to_string(),
        })
    }

    /// The `-o` value both servers take.
    fn option(&self) -> String {
        format!(
            "ssl_chain_cert={},ssl_key={}",
            self.dir.join("chain.pem").display(),
            self.dir.join("key.pem").display()
        )
    }

    fn connector(&self) -> Result<TlsConnector> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One server with its two listeners.
struct Target {
    name: &'static str,
    server: Server,
    tls: SocketAddr,
}

#[derive(Clone, Copy, Default)]
struct Cell {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    generator_cpu: f64,
    server_cpu: f64,
    other_cpu: f64,
    misses: u64,
}

impl Cell {
    fn cpu(&self) -> String {
        let pct = |cores: f64| (cores * 100.0).round();
        format!(
            "{} / {} / {}",
            pct(self.generator_cpu),
            pct(self.server_cpu),
            pct(self.other_cpu)
        )
    }
}

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

/// Drives `conns` with `reqs` through one warm-up and one measured window.
async fn measure<S>(
    conns: Vec<Conn<S>>,
    server: &Server,
    reqs: &Arc<Requests>,
    depth: usize,
    opts: &Options,
) -> Result<Cell>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
    let (server0, machine0) = (server.cpu_time()?, server::machine_task_time()?);
    tokio::time::sleep_until(window.until.into()).await;
    let gen1 = loadgen::thread_cpu_time();
    let (server1, machine1) = (server.cpu_time()?, server::machine_task_time()?);
    let (gen, srv) = (gen1 - gen0, server1.saturating_sub(server0));
    let other = machine1.saturating_sub(machine0).saturating_sub(gen + srv);
    let (mut ops, mut misses, mut latencies) = (0, 0, Vec::new());
    for task in tasks {
        let stats = task.await.context("connection task panicked")??;
        ops += stats.ops;
        misses += stats.misses;
        latencies.extend(stats.latencies_ns);
    }
    ensure!(!latencies.is_empty(), "no request completed in the window");
    latencies.sort_unstable();
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
    let secs = opts.measure.as_secs_f64();
    Ok(Cell {
        ops_per_sec: ops as f64 / secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        generator_cpu: gen.as_secs_f64() / secs,
        server_cpu: srv.as_secs_f64() / secs,
        other_cpu: other.as_secs_f64() / secs,
        misses,
    })
}

/// One cell: fresh connections (TLS ones handshake first), then `measure`.
fn run_cell(
    rt: &Runtime,
    target: &Target,
    transport: Transport,
    connector: &TlsConnector,
    reqs: &Arc<Requests>,
    depth: usize,
    opts: &Options,
) -> Result<Cell> {
    rt.block_on(async {
        match transport {
            Transport::Plain => {
                let mut conns = Vec::new();
                for _ in 0..CONNS {
                    conns.push(Conn::connect(target.server.addr).await?);
                }
                measure(conns, &target.server, reqs, depth, opts).await
            }
            Transport::Tls => {
                let mut conns = Vec::new();
                for _ in 0..CONNS {
                    let tcp = loadgen::tcp_connect(target.tls).await?;
                    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
                    let tls = connector
                        .connect(name, tcp)
                        .await
                        .with_context(|| format!("TLS handshake with {}", target.name))?;
                    conns.push(Conn::over(tls));
                }
                measure(conns, &target.server, reqs, depth, opts).await
            }
        }
    })
}

struct Row {
    config: &'static str,
    workload: &'static str,
    server: &'static str,
    /// Plaintext, then TLS.
    cells: [Cell; 2],
}

fn run_config(
    rt: &Runtime,
    opts: &Options,
    certs: &Certs,
    config: &Config,
    cpus: &[usize],
) -> Result<Vec<Row>> {
    let server_cpu = if config.pinned {
        ensure!(cpus.len() >= 2, "pinned needs two CPUs, have {cpus:?}");
        server::set_affinity(&cpus[1..2])?;
        Some(cpus[0])
    } else {
        server::set_affinity(cpus)?;
        None
    };
    eprintln!("== {}: servers -t {}", config.name, config.threads);
    let option = certs.option();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut programs = vec![("meshcached", opts.meshcached.clone(), false)];
    if let Some(m) = &opts.memcached {
        programs.push(("memcached", m.clone(), root));
    }
    let mut targets = Vec::new();
    for &(name, ref program, as_root) in &programs {
        let mut extra = vec!["-Z", "-o", option.as_str()];
        if as_root {
            extra.extend(["-u", "root"]);
        }
        let tls = server::free_port()?;
        let server = Server::start(&Launch {
            name,
            program,
            threads: config.threads,
            memory_mb: MEMORY_MB,
            pin_to: server_cpu,
            extra_args: &extra,
            tls_port: Some(tls.port()),
        })?;
        rt.block_on(loadgen::sweep(server.addr, Op::Set, KEYS, 1))
            .with_context(|| format!("preloading {name}"))?;
        targets.push(Target { name, server, tls });
    }
    let connector = certs.connector()?;
    let sets = Arc::new(Requests::new(Op::Set, KEYS));
    let gets = Arc::new(Requests::new(Op::Get, KEYS));
    let slots: Vec<(usize, Transport)> = (0..targets.len())
        .flat_map(|t| [(t, Transport::Plain), (t, Transport::Tls)])
        .collect();
    let mut cells: Vec<Vec<Vec<Cell>>> = opts
        .workloads
        .iter()
        .map(|_| vec![Vec::new(); slots.len()])
        .collect();
    for round in 0..opts.rounds {
        for (w, workload) in opts.workloads.iter().enumerate() {
            let reqs = if workload.op == Op::Set { &sets } else { &gets };
            for k in 0..slots.len() {
                let slot = (k + round) % slots.len();
                let (t, transport) = slots[slot];
                let target = &targets[t];
                let cell = run_cell(
                    rt,
                    target,
                    transport,
                    &connector,
                    reqs,
                    workload.depth,
                    opts,
                )
                .with_context(|| {
                    format!(
                        "{} {} {} {}",
                        config.name,
                        workload.name,
                        target.name,
                        transport.name()
                    )
                })?;
                eprintln!(
                    "   round {} {:8} {:10} {:9} {:>9.0} ops/s  p50 {:>7.1} µs  p99 {:>7.1} µs  CPU % gen/srv/other {}{}",
                    round + 1,
                    workload.name,
                    target.name,
                    transport.name(),
                    cell.ops_per_sec,
                    cell.p50_us,
                    cell.p99_us,
                    cell.cpu(),
                    if cell.misses > 0 { format!("  {} MISSES", cell.misses) } else { String::new() },
                );
                cells[w][slot].push(cell);
            }
        }
    }
    let mut rows = Vec::new();
    for (w, workload) in opts.workloads.iter().enumerate() {
        for (t, target) in targets.iter().enumerate() {
            rows.push(Row {
                config: config.name,
                workload: workload.name,
                server: target.name,
                cells: [median(&cells[w][2 * t]), median(&cells[w][2 * t + 1])],
            });
        }
    }
    Ok(rows)
}

fn print(opts: &Options, rows: &[Row]) {
    println!("## Client TLS against plaintext\n");
    println!(
        "{CONNS} connections, {}-byte values over {} preloaded keys; each cell {:.1} s warm-up then {:.1} s \
         measured, medians of {} rounds. p50/p99 in µs (per request, or per 32-request batch for `-p32`); \
         CPU in % of one core during the window (generator / server / everything else).\n",
        loadgen::VALUE_LEN,
        KEYS.count,
        opts.warmup.as_secs_f64(),
        opts.measure.as_secs_f64(),
        opts.rounds
    );
    println!(
        "| config | workload | server | plaintext ops/s | TLS ops/s | TLS ÷ plaintext \
         | plaintext p50 / p99 | TLS p50 / p99 | CPU plaintext | CPU TLS |"
    );
    println!("|---|---|---|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        let [plain, tls] = &r.cells;
        let lat = |c: &Cell| format!("{:.1} / {:.1}", c.p50_us, c.p99_us);
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} |",
            r.config,
            r.workload,
            r.server,
            plain.ops_per_sec,
            tls.ops_per_sec,
            tls.ops_per_sec / plain.ops_per_sec,
            lat(plain),
            lat(tls),
            plain.cpu(),
            tls.cpu()
        );
    }
    let mut pairs = rows
        .chunks(2)
        .filter(|p| p.len() == 2 && p[0].server == "meshcached" && p[1].server == "memcached")
        .peekable();
    if pairs.peek().is_some() {
        println!("\n| config | workload | meshcached TLS ÷ memcached TLS | p99 meshcached / memcached (TLS) |");
        println!("|---|---|--:|--:|");
        for p in pairs {
            let (mesh, mc) = (&p[0].cells[1], &p[1].cells[1]);
            println!(
                "| {} | {} | {:.2} | {:.1} / {:.1} |",
                p[0].config,
                p[0].workload,
                mesh.ops_per_sec / mc.ops_per_sec,
                mesh.p99_us,
                mc.p99_us
            );
        }
    }
    for r in rows {
        for (cell, t) in r.cells.iter().zip(["plaintext", "TLS"]) {
            if cell.misses > 0 {
                println!(
                    "\n**Warning:** {} {t} missed {} gets in {} {}.",
                    r.server, cell.misses, r.config, r.workload
                );
            }
        }
    }
    println!();
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("client_tls: not run under `cargo bench`, skipping");
        return Ok(());
    }
    let opts = Options::from_env()?;
    if opts.memcached.is_none() {
        eprintln!("memcached missing or built without TLS: meshcached only");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let cpus = server::affinity()?;
    let certs = Certs::make()?;
    let mut rows = Vec::new();
    for config in &opts.configs {
        rows.extend(run_config(&rt, &opts, &certs, config, &cpus)?);
    }
    server::set_affinity(&cpus)?;
    print(&opts, &rows);
    Ok(())
}
