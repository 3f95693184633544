//! Refusals of fresh writes at a replica that evicts nearly everything it takes (DESIGN.md
//! section 1, fences that survive forgetting).
//!
//! A node refuses a peer's write of a key it holds nothing for when the write is no newer
//! than what it forgot of that key: exactly, for recent forgets, or by its shard's forgotten
//! floor, for older ones. Every key here is written once, so a refusal is always wrong (the
//! key was never forgotten): it counts what the floor costs a small replica.

use super::*;
use meshcached::clock::{Version, HLC_EPOCH_MS};
use std::time::{SystemTime, UNIX_EPOCH};

/// One push of new keys to A, with B at `b_memory_mb`.
pub(crate) struct Refusals {
    pub(crate) b_memory_mb: usize,
    pub(crate) writes: u64,
    pub(crate) accepted: u64,
    pub(crate) refused: u64,
    pub(crate) evictions: u64,
    pub(crate) fences: u64,
    pub(crate) held: u64,
    /// How far B's highest forgotten floor trailed the newest write (at most the moment the
    /// push ended): the clock skew between origins it would take for fresh writes to be
    /// refused.
    pub(crate) floor_trail: Option<Duration>,
    pub(crate) elapsed: Duration,
}

pub(crate) fn measure_refusals(
    rt: &Runtime,
    opts: &Options,
    certs: &Certs,
) -> Result<Vec<Refusals>> {
    let n = opts.forget_writes;
    eprintln!("== refusals at a small replica: {n} new keys");
    [1, 16, 64]
        .into_iter()
        .map(|mb| push_to_small_replica(rt, opts, certs, mb))
        .collect()
}

/// Pushes `forget_writes` new keys (100-byte values) to A with the sweep loader (4
/// connections, 32-deep pipelines) and waits until B has acknowledged every one.
fn push_to_small_replica(
    rt: &Runtime,
    opts: &Options,
    certs: &Certs,
    b_memory_mb: usize,
) -> Result<Refusals> {
    let keys = Keyspace {
        count: opts.forget_writes,
        digits: 7,
    };
    ensure!(
        keys.count < 10_000_000,
        "BENCH_FORGET_WRITES must be below 10 million"
    );
    let tag = format!("forget{b_memory_mb}");
    // A log that holds the whole push: B falling behind on this shared machine must not
    // turn the stream into a snapshot, whose walk is in no version order.
    let backlog = ["--repl-backlog", "1024MB"];
    let mut pair = Pair::start_sized(opts, certs, &tag, 2, (None, None), b_memory_mb, &backlog)?;
    let snapshots = pair.b_stats.number("", "snapshots_received")?;
    let start = Instant::now();
    rt.block_on(loadgen::sweep(pair.a.addr, Op::Set, keys, 1))
        .context("pushing to A")?;
    // The last write was made before this: its version is at most this time.
    let pushed_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let lag_key = format!("peer:{}:lag_mutations", pair.b_name);
    loop {
        let lag = pair.a_stats.number("replication", &lag_key)?;
        if lag == 0 {
            break;
        }
        ensure!(
            start.elapsed() < CATCH_UP_DEADLINE,
            "B still {lag} writes behind A after {CATCH_UP_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = start.elapsed();
    let b = pair.b_stats.fetch("")?;
    let n = |name: &str| -> Result<u64> {
        b.get(name)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no numeric STAT {name} at B"))
    };
    ensure!(
        n("snapshots_received")? == snapshots,
        "B fell off A's log and took a snapshot: the figures would not be the stream's"
    );
    let floor = Version(n("forgotten_floor")?);
    let floor_ms = floor.physical_ms() + HLC_EPOCH_MS;
    Ok(Refusals {
        b_memory_mb,
        writes: keys.count,
        accepted: n("repl_writes_accepted")?,
        refused: n("repl_refused_forgotten")?,
        evictions: n("evictions")?,
        fences: n("forgotten_fences")?,
        held: n("curr_items")?,

        floor_trail: (floor != Version::NONE)
            .then(|| Duration::from_millis(pushed_ms.saturating_sub(floor_ms))),
        elapsed,
    })
}

pub(crate) fn print_refusals(rows: &[Refusals], machine: &str) {
    println!("## Refusals at a small replica ({machine})\n");
    println!(
        "{} new keys (100-byte values, each written once) pushed to node A with 4 connections, \
         32 requests per round trip; node B, its replica, runs with a small `-m` and evicts \
         nearly everything it takes. Each write B refuses as no newer than what it forgot \
         (`repl_refused_forgotten`) is a wrong refusal: no key was ever forgotten before its \
         write arrived. Servers `-t 2`, unpinned; counted once B had acknowledged every write. \
         \"Floor trails by\" is how far B's highest forgotten floor was behind the newest write \
         (taken as the moment the push ended): a third node whose clock lagged A's by more \
         than that would have its fresh writes of new keys refused at B.\n",
        rows.first().map_or(0, |r| r.writes)
    );
    println!(
        "| B's `-m` | accepted | wrongly refused | refused % | evictions | exact fences | items held | floor trails by ms | push took ms |"
    );
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        println!(
            "| {} MB | {} | {} | {:.4} | {} | {} | {} | {} | {:.0} |",
            r.b_memory_mb,
            r.accepted,
            r.refused,
            100.0 * r.refused as f64 / r.writes.max(1) as f64,
            r.evictions,
            r.fences,
            r.held,
            r.floor_trail
                .map_or("-".into(), |d| d.as_millis().to_string()),
            r.elapsed.as_secs_f64() * 1e3,
        );
    }
    println!();
}
