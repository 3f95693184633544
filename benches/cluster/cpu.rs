//! CPU per replicated write, from /proc.

use super::*;

/// A process's CPU time, read two ways.
#[derive(Clone, Copy)]
pub(crate) struct Usage {
    /// utime + stime from /proc/PID/stat: every thread the process ever had, in 10 ms ticks.
    pub(crate) ticks: Duration,
    /// The sum of /proc/PID/task/*/schedstat's on-CPU nanoseconds: exact, but only for the
    /// threads alive now (meshcached's threads live as long as the process).
    pub(crate) on_cpu: Duration,
}

impl Usage {
    pub(crate) fn of(server: &Server) -> Result<Usage> {
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
pub(crate) struct CpuUse {
    pub(crate) node: &'static str,
    /// utime + stime, as the kernel reports them: in 10 ms ticks.
    pub(crate) cpu: Duration,
    /// The same from the threads' schedstat, to the nanosecond.
    pub(crate) on_cpu: Duration,
    pub(crate) writes: u64,
    /// How long the push took, until B held everything for the pair.
    pub(crate) elapsed: Duration,
}

/// Pushes `cpu_writes` new keys to a fresh pair's A (and, separately, to a fresh standalone
/// node) with the sweep loader (4 connections, 32-deep pipelines), and reads each node's
/// utime + stime before and after: after B holds every key, for the pair.
pub(crate) fn measure_cpu(rt: &Runtime, opts: &Options, certs: &Certs) -> Result<Vec<CpuUse>> {
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

pub(crate) fn print_cpu(rows: &[CpuUse], machine: &str) {
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
