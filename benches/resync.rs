//! No cold cache, measured: how fast a node joins (snapshot) and restarts warm (state file).
//!
//! 1. **Join**: node A (a process) holds N items with 100-byte values; node B (a process)
//!    starts with `--join A`. Measured: from B's process start to B's client port accepting,
//!    with B then holding every item (checked at once: `curr_items`, and a sample of values);
//!    the bytes on the loopback interface during the join; and A's client latency (single
//!    `get`s, one at a time, from one connection) during the join against the second before.
//! 2. **Warm restart**: B is stopped with SIGTERM (it writes its `--state-file`), A takes
//!    M writes of new keys meanwhile, and B starts again with the file. Measured: from B's
//!    process start to its client port accepting, with every item, old and new, present.
//!
//! Run: `cargo bench --bench resync > resync.md` (about a minute); under
//! `cargo test --benches` it exits at once.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_ITEMS` | `1000000` | items on A before the join |
//! | `BENCH_DOWNTIME_WRITES` | `10000` | writes to A while B is down |
//! | `BENCH_ROUNDS` | `3` | joins and restarts measured; the table shows each and the median |
//! | `MESHCACHED_BIN` | the crate's binary | the server |
//! | `BENCH_KEEP` | unset | `1`: keep the nodes' logs (the directory is printed) |

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use meshcached::certs::{generate_ca, write_node_dir};

const VALUE_LEN: usize = 100;
const START_DEADLINE: Duration = Duration::from_secs(120);

struct Options {
    items: u64,
    downtime_writes: u64,
    rounds: usize,
    binary: PathBuf,
}

impl Options {
    fn from_env() -> Result<Options> {
        let num = |name: &str, default: u64| -> Result<u64> {
            std::env::var(name).map_or(Ok(default), |v| {
                v.parse().with_context(|| format!("{name}={v}"))
            })
        };
        Ok(Options {
            items: num("BENCH_ITEMS", 1_000_000)?,
            downtime_writes: num("BENCH_DOWNTIME_WRITES", 10_000)?,
            rounds: num("BENCH_ROUNDS", 3)? as usize,
            binary: std::env::var_os("MESHCACHED_BIN")
                .map_or_else(|| env!("CARGO_BIN_EXE_meshcached").into(), PathBuf::from),
        })
    }
}

/// A node process, killed on drop (and by the kernel if the bench dies).
struct NodeProc {
    child: Child,
    client: SocketAddr,
    started: Instant,
}

struct NodeSpec<'a> {
    name: &'a str,
    id: u16,
    dir: &'a Path,
    client_port: u16,
    cluster_port: u16,
    extra: Vec<String>,
}

impl NodeProc {
    fn start(bin: &Path, spec: &NodeSpec) -> Result<NodeProc> {
        let certs = spec.dir.join(spec.name);
        let log = std::fs::File::create(spec.dir.join(format!("{}.log", spec.name)))?;
        let mut cmd = Command::new(bin);
        cmd.args(["-l", "127.0.0.1", "-U", "0", "-t", "2", "-m", "2048"])
            .args(["-p", &spec.client_port.to_string()])
            .args(["--node-name", spec.name, "--node-id", &spec.id.to_string()])
            .arg("--certs-dir")
            .arg(&certs)
            .args([
                "--cluster-listen",
                &format!("127.0.0.1:{}", spec.cluster_port),
            ])
            .args(&spec.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd.spawn().context("starting meshcached")?;
        Ok(NodeProc {
            child,
            client: SocketAddr::from(([127, 0, 0, 1], spec.client_port)),
            started,
        })
    }

    /// Polls the client port until it accepts; returns the time since the process started.
    fn wait_accepting(&mut self) -> Result<Duration> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("meshcached exited during startup: {status}");
            }
            if TcpStream::connect(self.client).is_ok() {
                return Ok(self.started.elapsed());
            }
            ensure!(
                self.started.elapsed() < START_DEADLINE,
                "not accepting after {START_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn terminate(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait()?;
        ensure!(status.success(), "meshcached exited with {status}");
        Ok(())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn value_for(i: u64) -> Vec<u8> {
    let mut v = format!("{i:x}-").into_bytes();
    v.resize(VALUE_LEN, b'v');
    v
}

/// Sets `keys` (`prefix:NNNNNNN`) with noreply in large pipelined writes, then waits for
/// a `mn` round trip so that every set has been processed.
fn load(addr: SocketAddr, prefix: &str, keys: std::ops::Range<u64>) -> Result<()> {
    let mut s = TcpStream::connect(addr)?;
    let mut buf = Vec::with_capacity(1 << 20);
    for i in keys {
        write!(buf, "set {prefix}:{i:07} 0 0 {VALUE_LEN} noreply\r\n")?;
        buf.extend_from_slice(&value_for(i));
        buf.extend_from_slice(b"\r\n");
        if buf.len() >= 1 << 20 {
            s.write_all(&buf)?;
            buf.clear();
        }
    }
    buf.extend_from_slice(b"mn\r\n");
    s.write_all(&buf)?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    ensure!(line == "MN\r\n", "load ended with {line:?}");
    Ok(())
}

fn stat(addr: SocketAddr, name: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"stats\r\n")?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        ensure!(!line.is_empty() && line != "END\r\n", "no stat {name}");
        let mut parts = line.split_whitespace();
        if parts.nth(1) == Some(name) {
            return Ok(parts.next().unwrap_or_default().to_string());
        }
    }
}

fn get(conn: &mut BufReader<TcpStream>, key: &str) -> Result<Option<Vec<u8>>> {
    conn.get_mut()
        .write_all(format!("get {key}\r\n").as_bytes())?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    if line == "END\r\n" {
        return Ok(None);
    }
    let len: usize = line
        .split_whitespace()
        .nth(3)
        .and_then(|l| l.parse().ok())
        .with_context(|| format!("bad reply {line:?}"))?;
    let mut value = vec![0; len + 2];
    conn.read_exact(&mut value)?;
    value.truncate(len);
    line.clear();
    conn.read_line(&mut line)?;
    ensure!(line == "END\r\n", "bad reply end {line:?}");
    Ok(Some(value))
}

/// Every item is there with its value: `curr_items` and a sample of 1000 keys.
fn check_items(addr: SocketAddr, want: u64, sample: &[(String, Vec<u8>)]) -> Result<()> {
    let held: u64 = stat(addr, "curr_items")?.parse()?;
    ensure!(held == want, "{held} items held, {want} expected");
    let mut conn = BufReader::new(TcpStream::connect(addr)?);
    for (k, v) in sample {
        ensure!(
            get(&mut conn, k)?.as_ref() == Some(v),
            "{k} missing or wrong"
        );
    }
    Ok(())
}

fn lo_bytes() -> Result<u64> {
    let s = std::fs::read_to_string("/sys/class/net/lo/statistics/tx_bytes")?;
    Ok(s.trim().parse()?)
}

/// Single gets on one connection, one at a time, timestamped, until stopped.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Vec<(Instant, Duration)>>>,
}

impl Probe {
    fn start(addr: SocketAddr, items: u64) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conn = BufReader::new(TcpStream::connect(addr)?);
            conn.get_mut().set_nodelay(true)?;
            let mut out = Vec::new();
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) {
                i = (i + 7919) % items;
                let t = Instant::now();
                get(&mut conn, &format!("item:{i:07}"))?;
                out.push((t, t.elapsed()));
                // About 2000 probes a second: a client, not a load generator.
                std::thread::sleep(Duration::from_micros(400));
            }
            Ok(out)
        });
        Probe { stop, thread }
    }

    fn finish(self) -> Result<Vec<(Instant, Duration)>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("probe panicked"))?
    }
}

fn percentiles(mut v: Vec<Duration>) -> (usize, f64, f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |p: f64| v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)));
    (
        v.len(),
        at(0.5).map_or(0.0, |d| us(*d)),
        at(0.99).map_or(0.0, |d| us(*d)),
        v.last().map_or(0.0, |d| us(*d)),
    )
}

struct JoinResult {
    secs: f64,
    wire_bytes: u64,
    snapshot_bytes: u64,
    before: (usize, f64, f64, f64),
    during: (usize, f64, f64, f64),
}

struct RestartResult {
    secs: f64,
    file_bytes: u64,
}

fn sample(items: u64, prefix: &str) -> Vec<(String, Vec<u8>)> {
    (0..1000)
        .map(|j| {
            let i = j * items.max(1000) / 1000 % items.max(1);
            (format!("{prefix}:{i:07}"), value_for(i))
        })
        .collect()
}

fn round(opts: &Options, dir: &Path, round: usize) -> Result<(JoinResult, RestartResult)> {
    let (ca_port, cb_port) = (free_udp_port()?, free_udp_port()?);
    let a_spec = NodeSpec {
        name: "node-a",
        id: 1,
        dir,
        client_port: free_tcp_port()?,
        cluster_port: ca_port,
        extra: vec![],
    };
    let state = dir.join(format!("node-b-{round}.state"));
    let b_spec = NodeSpec {
        name: "node-b",
        id: 2,
        dir,
        client_port: free_tcp_port()?,
        cluster_port: cb_port,
        extra: vec![
            "--join".into(),
            format!("127.0.0.1:{ca_port}"),
            "--state-file".into(),
            state.display().to_string(),
        ],
    };
    let mut a = NodeProc::start(&opts.binary, &a_spec)?;
    a.wait_accepting()?;
    eprintln!("round {round}: loading {} items into node-a", opts.items);
    load(a.client, "item", 0..opts.items)?;
    check_items(a.client, opts.items, &sample(opts.items, "item"))?;

    // The second before the join: the donor's idle latency.
    let probe = Probe::start(a.client, opts.items);
    std::thread::sleep(Duration::from_secs(1));
    let lo_before = lo_bytes()?;
    let join_start = Instant::now();
    let mut b = NodeProc::start(&opts.binary, &b_spec)?;
    let join = b.wait_accepting()?;
    let join_end = Instant::now();
    let lo_after = lo_bytes()?;
    let latencies = probe.finish()?;
    check_items(b.client, opts.items, &sample(opts.items, "item"))?;
    let snapshot_bytes: u64 = stat(b.client, "snapshot_bytes_received")?.parse()?;
    let split = |from: Instant, to: Instant| {
        latencies
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, d)| *d)
            .collect::<Vec<_>>()
    };
    let joined = JoinResult {
        secs: join.as_secs_f64(),
        wire_bytes: lo_after - lo_before,
        snapshot_bytes,
        before: percentiles(split(join_start - Duration::from_secs(1), join_start)),
        during: percentiles(split(join_start, join_end)),
    };
    eprintln!("round {round}: joined in {:.3} s", joined.secs);

    // Warm restart: B saves its state on SIGTERM, A takes writes meanwhile.
    b.terminate()?;
    let file_bytes = std::fs::metadata(&state)?.len();
    load(a.client, "late", 0..opts.downtime_writes)?;
    let mut b = NodeProc::start(&opts.binary, &b_spec)?;
    let restart = b.wait_accepting()?;
    check_items(
        b.client,
        opts.items + opts.downtime_writes,
        &sample(opts.downtime_writes, "late"),
    )?;
    check_items(
        b.client,
        opts.items + opts.downtime_writes,
        &sample(opts.items, "item"),
    )?;
    eprintln!(
        "round {round}: restarted warm in {:.3} s",
        restart.as_secs_f64()
    );
    drop(a);
    drop(b);
    let _ = std::fs::remove_file(&state);
    Ok((
        joined,
        RestartResult {
            secs: restart.as_secs_f64(),
            file_bytes,
        },
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("resync: not run under `cargo bench`, skipping");
        return Ok(());
    }
    let opts = Options::from_env()?;
    let dir = std::env::temp_dir().join(format!("meshcached-resync-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let ca = generate_ca()?;
    for name in ["node-a", "node-b"] {
        let node = ca.issue_node(name, &["127.0.0.1"])?;
        write_node_dir(&dir.join(name), &ca, &node)?;
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut results = Vec::new();
    for r in 0..opts.rounds.max(1) {
        results.push(round(&opts, &dir, r)?);
    }
    if std::env::var_os("BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("logs kept in {}", dir.display());
    }

    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "## Join and warm restart ({cpus}-core VM, {} items of {VALUE_LEN}-byte values, nodes `-t 2`, QUIC over loopback)\n",
        opts.items
    );
    println!("| round | join: start → serving, s | bytes on lo, MiB | snapshot stream, MiB | donor get p50 / p99 / max µs before | during the join | warm restart → serving, s | state file, MiB |");
    println!("|---|--:|--:|--:|--:|--:|--:|--:|");
    for (i, (j, w)) in results.iter().enumerate() {
        println!(
            "| {i} | {:.3} | {:.1} | {:.1} | {:.0} / {:.0} / {:.0} ({} gets) | {:.0} / {:.0} / {:.0} ({} gets) | {:.3} | {:.1} |",
            j.secs,
            mb(j.wire_bytes),
            mb(j.snapshot_bytes),
            j.before.1,
            j.before.2,
            j.before.3,
            j.before.0,
            j.during.1,
            j.during.2,
            j.during.3,
            j.during.0,
            w.secs,
            mb(w.file_bytes)
        );
    }
    println!(
        "\nMedian join {:.3} s (target ≤ 1.0 s); median warm restart with {} writes made meanwhile {:.3} s (target ≤ 1.0 s).",
        median(results.iter().map(|(j, _)| j.secs).collect()),
        opts.downtime_writes,
        median(results.iter().map(|(_, w)| w.secs).collect()),
    );
    Ok(())
}
