//! Section `entropy`: what anti-entropy costs (issue 10).
//!
//! 1. **A round on 1M items when nothing differs**, and **a repair of 1,000 keys** the
//!    stream never carried: two cluster cores in this process, linked as in the core's
//!    unit tests (every frame encoded and decoded as on the wire), their stores filled with
//!    the same million items directly (no journal, so nothing is streamed), time passed in
//!    10 ms steps. A round's CPU is the thread's CPU time over many rounds, less that of a
//!    second pair of cores over the same stores with anti-entropy off (their timers and
//!    heartbeats), divided by the rounds; its bytes are the encoded anti-entropy frames.
//!    Done in-process because two processes cannot be made to differ reliably: the live
//!    stream repairs whatever a paused node missed before anti-entropy gets to it.
//! 2. **Client throughput with it running versus off**: pairs of the real binary with
//!    `--anti-entropy-period 0`, the default and `1s`, the throughput section's `set` load
//!    at node A, interleaved round by round as in `cluster/ack.rs`.

use std::sync::atomic::{AtomicU64, Ordering};

use meshcached::clock::{Hlc, ManualClock, NodeId, Version};
use meshcached::cluster::core::{Connection, Entropy, Replica, ReplicaConfig};
use meshcached::cluster::counters::EntropyCounters;
use meshcached::replication::frame::{self as wire, Frame};
use meshcached::replication::log::RunId;
use meshcached::store::{Remote, Store, StoreConfig};

use super::*;

/// The cores' virtual start (any wall time after the HLC epoch).
const T0: u64 = 1_800_000_000_000;
const STEP_MS: u64 = 10;
/// The default period, as a node runs it.
const PERIOD_MS: u64 = meshcached::cluster::core::DEFAULT_AE_PERIOD_MS;
/// Rounds per node timed when nothing differs.
const IDLE_ROUNDS: u64 = 20;
/// Give up on a repair after this much virtual time.
const REPAIR_LIMIT_MS: u64 = 600_000;

/// What the in-process part measured.
pub(crate) struct CoreCost {
    pub(crate) items: u64,
    /// Rounds (both nodes) during the idle window, and the CPU per round.
    pub(crate) window: Duration,
    pub(crate) idle_rounds: u64,
    pub(crate) idle_cpu_per_round: Duration,
    /// The whole window's CPU with anti-entropy on, and off (timers, heartbeats).
    pub(crate) idle_window_cpu: (Duration, Duration),
    /// Anti-entropy frames' encoded bytes per round.
    pub(crate) idle_bytes_per_round: u64,
    pub(crate) differing: u64,
    /// From the writes that bypassed the stream until both digests agree.
    pub(crate) repair_virtual: Duration,
    /// From the first round that started after those writes.
    pub(crate) repair_after_first_round: Duration,
    pub(crate) repair_rounds: u64,
    pub(crate) repair_bytes: u64,
    /// CPU of the steps that carried its frames.
    pub(crate) repair_cpu: Duration,
    pub(crate) keys_received: u64,
    pub(crate) buckets_differing: u64,
}

/// A core over `store`, with the given anti-entropy period, on a clock fixed at `T0`.
fn core(name: &str, id: u16, store: Arc<Store>, period_ms: u64) -> Replica {
    let node_id = NodeId::new(id).expect("a small id");
    let hlc = Arc::new(Hlc::new(node_id, Arc::new(ManualClock::new(T0))));
    let cfg = ReplicaConfig {
        name: name.into(),
        node_id,
        seeds: vec![],
        max_skew: Duration::from_secs(5),
        tombstone_ttl_ms: 600_000,
        join_timeout_ms: 10_000,
        repl_backlog: 64 << 20,
        entropy: Entropy::every(period_ms),
        remove_down_after_ms: 3_600_000,
    };
    Replica::new(&cfg, store, hlc, None, RunId(u64::from(id)), u64::from(id))
}

/// Two cores over `stores`, linked both ways (link 1 at the first, 2 at the second).
fn linked(stores: &[Arc<Store>; 2], period_ms: u64) -> Result<[Replica; 2]> {
    let mut a = core("a", 1, stores[0].clone(), period_ms);
    let mut b = core("b", 2, stores[1].clone(), period_ms);
    let (ab, ba) = (a.hello("b", T0), b.hello("a", T0));
    let addr = "127.0.0.1:7000".parse()?;
    let conn = |link, cert_name, dialed_by_me| Connection {
        link,
        cert_name,
        dialed_by_me,
        addr,
    };
    a.link_up(conn(1, "b", true), &ab, ba.clone(), T0)
        .map_err(|e| anyhow::anyhow!("a refused b: {e:?}"))?;
    b.link_up(conn(2, "a", false), &ba, ab, T0)
        .map_err(|e| anyhow::anyhow!("b refused a: {e:?}"))?;
    Ok([a, b])
}

fn store() -> Arc<Store> {
    Arc::new(Store::new(StoreConfig {
        mem_limit: 1 << 30,
        max_item_size: 1 << 20,
        evict: true,
        cas_enabled: true,
        shards: 16,
        tombstone_ttl: 600,
        tombstone_mem: None,
    }))
}

/// Items `from..to` into `store`, as a third node (id 3) wrote them a minute before T0.
fn fill(store: &Store, from: u64, to: u64) -> Result<()> {
    let now = (T0 / 1000) as u32;
    let base = Version::at_unix_ms(T0 - 60_000).0;
    let value = [b'v'; loadgen::VALUE_LEN];
    for i in from..to {
        let put = Remote::Put {
            value: &value,
            flags: 0,
            exptime: 0,
            version: Version((base + (i << 10)) | 3),
        };
        store
            .apply(format!("key:{i:08}").as_bytes(), &put, now)
            .map_err(|e| anyhow::anyhow!("filling: {e}"))?;
    }
    Ok(())
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into ts.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What a stretch of virtual time carried.
#[derive(Default, Clone, Copy)]
struct Moved {
    /// Encoded bytes of the anti-entropy frames, both ways.
    ae_bytes: u64,
    /// This thread's CPU in the steps that carried anti-entropy frames: a round's start
    /// (on the tick), the answers built, the comparison and any repair, at both cores.
    ae_cpu: Duration,
    /// The CPU of every step.
    all_cpu: Duration,
}

/// Passes `ms` of virtual time from `from_ms`, carrying every frame both ways.
fn pump(pair: &mut [Replica; 2], from_ms: u64, ms: u64) -> Result<Moved> {
    let mut moved = Moved::default();
    for t in (from_ms..from_ms + ms).step_by(STEP_MS as usize) {
        let [a, b] = pair;
        let start = thread_cpu();
        a.tick(t);
        b.tick(t);
        let bytes = carry(a, 1, b, 2, t)? + carry(b, 2, a, 1, t)?;
        let spent = thread_cpu() - start;
        moved.all_cpu += spent;
        if bytes > 0 {
            moved.ae_bytes += bytes;
            moved.ae_cpu += spent;
        }
    }
    Ok(moved)
}

fn carry(
    from: &mut Replica,
    from_link: u64,
    to: &mut Replica,
    to_link: u64,
    t: u64,
) -> Result<u64> {
    let mut ae_bytes = 0;
    let (mut scratch, mut chunks) = (bytes::BytesMut::new(), Vec::new());
    while let Some(tx) = from.poll_live(from_link, t) {
        tx.encode(&mut scratch, &mut chunks);
        let mut buf = bytes::BytesMut::new();
        for c in chunks.drain(..) {
            buf.extend_from_slice(&c);
        }
        let len = buf.len() as u64;
        while let Some(f) = wire::decode(&mut buf)? {
            let is_ae = matches!(
                f,
                Frame::DigestRequest { .. }
                    | Frame::Digest(_)
                    | Frame::KeysRequest { .. }
                    | Frame::Keys { .. }
                    | Frame::RepairRequest { .. }
                    | Frame::Repair { .. }
            );
            if is_ae {
                ae_bytes += len;
            }
            to.handle_live(to_link, f, t)
                .map_err(|e| anyhow::anyhow!("link {to_link}: {e}"))?;
        }
    }
    Ok(ae_bytes)
}

fn rounds(pair: &[Replica; 2]) -> u64 {
    let n = |r: &Replica| r.counters().entropy.rounds.load(Ordering::Relaxed);
    n(&pair[0]) + n(&pair[1])
}

/// The in-process part: see the module's first paragraph.
pub(crate) fn measure_core(items: u64, differing: u64) -> Result<CoreCost> {
    let stores = [store(), store()];
    let mut on = linked(&stores, PERIOD_MS)?;
    let mut off = linked(&stores, 0)?;
    // Settle the links (hellos, starts) before the stores are filled, as the unit tests do.
    let mut now = T0;
    pump(&mut on, now, 1000)?;
    pump(&mut off, now, 1000)?;
    now += 1000;
    for s in &stores {
        fill(s, 0, items)?;
    }
    ensure!(stores[0].digest() == stores[1].digest(), "filled alike");
    // Nothing differs: the same window with and without anti-entropy.
    let window = IDLE_ROUNDS * PERIOD_MS;
    let r0 = rounds(&on);
    let idle = pump(&mut on, now, window)?;
    let idle_rounds = rounds(&on) - r0;
    let idle_off = pump(&mut off, now, window)?;
    now += window;
    ensure!(idle_rounds > 0, "no round in {window} ms");
    let c = |pair: &[Replica; 2], f: fn(&EntropyCounters) -> &AtomicU64| {
        pair.iter()
            .map(|r| f(&r.counters().entropy).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    ensure!(
        c(&on, |e| &e.buckets_differing) == 0,
        "buckets differed though the stores were alike"
    );
    // The repair: `differing` keys only b holds, never streamed.
    fill(&stores[1], items, items + differing)?;
    let written = now;
    let r0 = rounds(&on);
    let keys0 = c(&on, |e| &e.keys_received);
    let (mut repair, mut first_round) = (Moved::default(), None);
    while stores[0].digest() != stores[1].digest() {
        ensure!(
            now - written < REPAIR_LIMIT_MS,
            "not repaired in {REPAIR_LIMIT_MS} ms"
        );
        let step = pump(&mut on, now, STEP_MS)?;
        repair.ae_bytes += step.ae_bytes;
        repair.ae_cpu += step.ae_cpu;
        now += STEP_MS;
        if first_round.is_none() && rounds(&on) > r0 {
            first_round = Some(now - STEP_MS);
        }
    }
    Ok(CoreCost {
        items,
        window: Duration::from_millis(window),
        idle_rounds,
        idle_cpu_per_round: idle.ae_cpu / idle_rounds as u32,
        idle_window_cpu: (idle.all_cpu, idle_off.all_cpu),
        idle_bytes_per_round: idle.ae_bytes / idle_rounds,
        differing,
        repair_virtual: Duration::from_millis(now - written),
        repair_after_first_round: Duration::from_millis(now - first_round.unwrap_or(written)),
        repair_rounds: rounds(&on) - r0,
        repair_bytes: repair.ae_bytes,
        repair_cpu: repair.ae_cpu,
        keys_received: c(&on, |e| &e.keys_received) - keys0,
        buckets_differing: c(&on, |e| &e.buckets_differing),
    })
}

pub(crate) fn print_core(c: &CoreCost, machine: &str) {
    println!(
        "## Anti-entropy: one round and one repair on {} items, in process ({machine})\n",
        c.items
    );
    println!(
        "Two cluster cores in one thread, their frames encoded and decoded as on the wire, \
         the default period ({} s), virtual time in {STEP_MS} ms steps; both stores hold the \
         same {} items ({}-byte values) put there directly, then B alone gets {} more. CPU is \
         this thread's in the steps that carried anti-entropy frames (both cores' share of a \
         round: its start, the answers, the comparison, the repair); bytes are those frames' \
         encoded sizes, both directions. Repair time is virtual: rounds are paced by the \
         period and the {} ms between busy rounds, not by CPU.\n",
        PERIOD_MS / 1000,
        c.items,
        loadgen::VALUE_LEN,
        c.differing,
        meshcached::cluster::core::BUSY_MS,
    );
    println!("| what | rounds (both nodes) | CPU | bytes | time |");
    println!("|---|--:|--:|--:|--:|");
    println!(
        "| one round, nothing differs | {} measured | {:.1} µs per round | {} per round | - |",
        c.idle_rounds,
        c.idle_cpu_per_round.as_secs_f64() * 1e6,
        c.idle_bytes_per_round,
    );
    println!(
        "| repair of {} keys only B held ({} keys received, {} bucket differences seen) | {} | {:.1} ms in all | {} | {:.1} s virtual ({:.1} s from the first round after the writes) |",
        c.differing,
        c.keys_received,
        c.buckets_differing,
        c.repair_rounds,
        c.repair_cpu.as_secs_f64() * 1e3,
        c.repair_bytes,
        c.repair_virtual.as_secs_f64(),
        c.repair_after_first_round.as_secs_f64(),
    );
    let (on, off) = c.idle_window_cpu;
    println!(
        "\nCross-check: all the steps of the {:.0} s idle window cost {:.1} ms of CPU with \
         anti-entropy on and {:.1} ms with it off (two other cores over the same stores).\n",
        c.window.as_secs_f64(),
        on.as_secs_f64() * 1e3,
        off.as_secs_f64() * 1e3,
    );
}

/// One pair's medians, and its anti-entropy counters at A after all its cells.
pub(crate) struct PeriodRow {
    pub(crate) period: &'static str,
    pub(crate) cell: Cell,
    /// Throughput ÷ the `off` pair's in the same round: median, min, max over the rounds.
    pub(crate) paired: (f64, f64, f64),
    /// `ae_rounds`, `ae_buckets_differing`, `ae_keys_received`, `ae_bytes` at A.
    pub(crate) counters: [u64; 4],
}

const AE_COUNTERS: [&str; 4] = [
    "ae_rounds",
    "ae_buckets_differing",
    "ae_keys_received",
    "ae_bytes",
];

/// Four pairs, `-t 2`, nothing pinned, with `--anti-entropy-period` 0 (off, twice: the
/// second shows the noise between identical pairs), 10s (the default) and 1s; the throughput section's `set` cells at node A of each, interleaved.
pub(crate) fn measure_periods(
    rt: &Runtime,
    opts: &Options,
    certs: &Certs,
) -> Result<Vec<PeriodRow>> {
    // A second pair with it off measures the noise: how far two identical pairs differ.
    let periods = [
        ("0", "0 (off)"),
        ("0", "0 (off, a second pair)"),
        ("10s", "10s (default)"),
        ("1s", "1s"),
    ];
    let mut pairs = Vec::new();
    for (i, (flag, label)) in periods.iter().enumerate() {
        // The ack section's log size, for the same reason (no snapshot after a cell).
        let flags = ["--repl-backlog", "256MB", "--anti-entropy-period", flag];
        let tag = format!("ae{i}");
        let pair = Pair::start_sized(opts, certs, &tag, 2, (None, None), MEMORY_MB, &flags)?;
        let mut subject = Subject {
            label,
            target: Target::Pair(pair),
        };
        preload(rt, &mut subject)?;
        pairs.push(subject);
    }
    let set: Vec<&Workload> = WORKLOADS.iter().filter(|w| w.name == "set").collect();
    let runs = interleaved(rt, opts, &mut pairs, &set, "entropy")?;
    let mut rows = Vec::new();
    for (i, (cell, subject)) in runs[0].medians().iter().zip(&mut pairs).enumerate() {
        let pair = subject.pair().context("a pair")?;
        let mut counters = [0; 4];
        for (n, name) in counters.iter_mut().zip(AE_COUNTERS) {
            *n = pair.a_stats.number("", name)?;
        }
        rows.push(PeriodRow {
            period: subject.label,
            cell: *cell,
            paired: runs[0].paired_ratio(i),
            counters,
        });
    }
    Ok(rows)
}

pub(crate) fn print_periods(opts: &Options, rows: &[PeriodRow], machine: &str) {
    println!("## Anti-entropy: set throughput with it running versus off ({machine})\n");
    println!(
        "Node A of four pairs, `-t 2`, nothing pinned (both nodes and the generator share the \
         cores), with `--anti-entropy-period` 0 (two pairs: the second shows the noise \
         between identical pairs), 10s and 1s; {}, the pairs interleaved. \
         Counters are A's `stats` after all its cells (the pair's whole life, preload \
         included). \"Paired\" divides each round's throughput by the `off` pair's in the same \
         round and gives the median (and range) of those ratios over the rounds.\n",
        set_load(opts),
    );
    println!(
        "| --anti-entropy-period | ops/s | ÷ off | paired ÷ off (range) | p50 / p99 µs | CPU A / B % | ae_rounds | ae_buckets_differing | ae_keys_received | ae_bytes |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let base = rows[0].cell.ops_per_sec;
    for r in rows {
        let [rounds, buckets, keys, bytes] = r.counters;
        let (paired, lo, hi) = r.paired;
        println!(
            "| {} | {:.0} | {:.3} | {paired:.3} ({lo:.3}-{hi:.3}) | {:.1} / {:.1} | {:.0} / {:.0} | {rounds} | {buckets} | {keys} | {bytes} |",
            r.period,
            r.cell.ops_per_sec,
            r.cell.ops_per_sec / base,
            r.cell.p50_us,
            r.cell.p99_us,
            r.cell.srv_cpu * 100.0,
            r.cell.peer_cpu * 100.0,
        );
    }
    println!();
}
