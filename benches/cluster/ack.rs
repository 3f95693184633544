//! Section `ack`: what `--ack-replicas 1` costs a pair's writers, next to the same pair
//! without it (asynchronous replication), in the same run.

use super::*;

/// The medians of one pair's cells, per workload.
pub(crate) struct AckRow {
    pub(crate) workload: &'static str,
    /// `(ack_replicas, cell)` for 0 and 1.
    pub(crate) cells: Vec<(u32, Cell)>,
}

/// Two pairs, `-t 2`, nothing pinned: one asynchronous, one with `--ack-replicas 1`; the
/// throughput section's set cells at node A of each, interleaved round by round.
pub(crate) fn measure_ack(rt: &Runtime, opts: &Options, certs: &Certs) -> Result<Vec<AckRow>> {
    let mut subjects = Vec::new();
    for (n, label) in [(0u32, "ack-replicas 0"), (1, "ack-replicas 1")] {
        // A log large enough that a B falling behind on the shared cores is not turned
        // into a snapshot (the catch-up check after every cell refuses one).
        let flags: &[&str] = if n == 0 {
            &["--repl-backlog", "256MB"]
        } else {
            &["--repl-backlog", "256MB", "--ack-replicas", "1"]
        };
        let tag = format!("ack{n}");
        let pair = Pair::start_sized(opts, certs, &tag, 2, (None, None), MEMORY_MB, flags)?;
        subjects.push((
            n,
            Subject {
                label,
                target: Target::Pair(pair),
            },
        ));
    }
    for (_, s) in &mut subjects {
        preload(rt, s)?;
    }
    let mut pairs: Vec<Subject> = subjects.into_iter().map(|(_, s)| s).collect();
    let runs = interleaved(rt, opts, &mut pairs, &opts.workloads, "ack")?;
    Ok(runs
        .into_iter()
        .map(|run| AckRow {
            workload: run.workload,
            cells: [0, 1].into_iter().zip(run.medians()).collect(),
        })
        .collect())
}

/// The load of [`interleaved`], in words.
pub(crate) fn set_load(opts: &Options) -> String {
    format!(
        "the throughput section's set load ({CONNS} connections, {}-byte values, {} preloaded \
         keys), {:.2} s warm-up then {:.2} s measured, medians of {} rounds",
        loadgen::VALUE_LEN,
        KEYS.count,
        opts.warmup.as_secs_f64(),
        opts.measure.as_secs_f64(),
        opts.rounds,
    )
}

/// One workload's cells from [`interleaved`]: `cells[i][round]` for pair `i`.
pub(crate) struct Interleaved {
    pub(crate) workload: &'static str,
    pub(crate) cells: Vec<Vec<Cell>>,
}

impl Interleaved {
    /// Each pair's median cell, in the order of the pairs.
    pub(crate) fn medians(&self) -> Vec<Cell> {
        self.cells.iter().map(|c| median(c)).collect()
    }

    /// Pair `i`'s throughput divided by pair 0's *in the same round*, over the rounds:
    /// `(median, min, max)`. Pairing by round cancels what drifts between rounds (the
    /// machine's load), which the ratio of two medians does not.
    pub(crate) fn paired_ratio(&self, i: usize) -> (f64, f64, f64) {
        let mut r: Vec<f64> = self.cells[i]
            .iter()
            .zip(&self.cells[0])
            .map(|(c, base)| c.ops_per_sec / base.ops_per_sec)
            .collect();
        r.sort_by(f64::total_cmp);
        (r[r.len() / 2], r[0], r[r.len() - 1])
    }
}

/// The throughput section's set cells at node A of each pair in `pairs`, interleaved round
/// by round (each round starts at the next pair), B caught up after every cell; per
/// workload, every pair's cells.
pub(crate) fn interleaved(
    rt: &Runtime,
    opts: &Options,
    pairs: &mut [Subject],
    workloads: &[&Workload],
    section: &str,
) -> Result<Vec<Interleaved>> {
    let sets = Arc::new(Requests::new(Op::Set, KEYS));
    let mut rows = Vec::new();
    for workload in workloads {
        let mut cells: Vec<Vec<Cell>> = vec![Vec::new(); pairs.len()];
        for round in 0..opts.rounds {
            for k in 0..pairs.len() {
                let i = (k + round) % pairs.len();
                let s = &mut pairs[i];
                let what = format!(
                    "{section} {} round {} at {}",
                    workload.name,
                    round + 1,
                    s.label
                );
                let cell = run_cell(rt, s, &sets, workload.depth, opts).context(what.clone())?;
                if let Some(pair) = s.pair() {
                    pair.wait_caught_up(KEYS.count).context(what)?;
                }
                eprintln!(
                    "   round {} {:8} {:22} {:>9.0} ops/s  p50 {:>7.1} µs  p99 {:>7.1} µs",
                    round + 1,
                    workload.name,
                    s.label,
                    cell.ops_per_sec,
                    cell.p50_us,
                    cell.p99_us,
                );
                cells[i].push(cell);
            }
        }
        rows.push(Interleaved {
            workload: workload.name,
            cells,
        });
    }
    Ok(rows)
}

pub(crate) fn print_ack(opts: &Options, rows: &[AckRow], machine: &str) {
    println!("## Replicated acknowledgement: `--ack-replicas 1` versus 0 on a pair ({machine})\n");
    println!(
        "Node A of a pair, `-t 2`, nothing pinned (both nodes and the generator share the cores); \
         {}, the two pairs interleaved. \
         With `--ack-replicas 1` a `STORED` waits until B has applied the write and acknowledged it.\n",
        set_load(opts),
    );
    println!("| workload | --ack-replicas | ops/s | ÷ asynchronous | p50 / p99 µs |");
    println!("|---|--:|--:|--:|--:|");
    for row in rows {
        let base = row.cells[0].1.ops_per_sec;
        for (n, c) in &row.cells {
            println!(
                "| {} | {n} | {:.0} | {:.2} | {:.1} / {:.1} |",
                row.workload,
                c.ops_per_sec,
                c.ops_per_sec / base,
                c.p50_us,
                c.p99_us
            );
        }
    }
    println!();
}
