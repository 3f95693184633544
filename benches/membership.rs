//! SWIM membership in the simulator (src/cluster/membership/sim.rs): failure detection
//! time, false positives under 5 % datagram loss, and gossip bytes per second per node, for
//! 3, 8 and 16 members. Virtual time, so the figures do not depend on the machine; the
//! wall time each part took is printed for reference.
//!
//! `cargo bench --bench membership` (MEMBERSHIP_TRIALS, MEMBERSHIP_HOURS to change the
//! number of detection trials and the length of the false-positive run).

use std::time::Instant;

use meshcached::cluster::membership::sim::{node_name, World};
use meshcached::cluster::membership::{config_for, detection_bound, MemberEvent, Verdict};

const SIZES: [usize; 3] = [3, 8, 16];
const LOSS_PPM: u64 = 50_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn converged(n: usize, seed: u64) -> World {
    let mut w = World::new(n, seed);
    w.run_until_true(60_000, World::converged)
        .expect("the simulated cluster forms one membership");
    w
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

/// Kills one member per trial (5 % loss) and times the first suspicion and the moment every
/// survivor has declared it down.
fn detection(n: usize, trials: u64) {
    let mut suspect = Vec::new();
    let mut down = Vec::new();
    let mut missed = 0;
    for seed in 0..trials {
        let mut w = converged(n, seed);
        w.loss_ppm = LOSS_PPM;
        w.run_for(10_000);
        let victim = node_name(1 + (seed as usize % (n - 1)));
        let from = w.log.len();
        let killed_at = w.now_ms;
        w.kill(&victim);
        let limit = 3 * detection_bound(n).as_millis() as u64;
        match w.run_until_true(limit, |w| w.all_see(&victim, Verdict::Down)) {
            Some(ms) => down.push(ms),
            None => missed += 1,
        }
        let first_suspect = w.log[from..].iter().find(|(_, _, e)| {
            matches!(e, MemberEvent::Verdict { id, verdict: Verdict::Suspect } if id.name == victim)
        });
        if let Some((t, _, _)) = first_suspect {
            suspect.push(t - killed_at);
        }
    }
    suspect.sort_unstable();
    down.sort_unstable();
    let c = config_for(n);
    println!(
        "| {n} | {:?} | {:?} | {} / {} / {} | {} / {} / {} | {:.1} | {missed} |",
        c.probe_period,
        c.suspect_to_down_after,
        percentile(&suspect, 50),
        percentile(&suspect, 90),
        suspect.last().copied().unwrap_or(0),
        percentile(&down, 50),
        percentile(&down, 90),
        down.last().copied().unwrap_or(0),
        detection_bound(n).as_secs_f64(),
    );
}

/// Runs a healthy cluster under 5 % loss and counts wrong verdicts.
fn false_positives(n: usize, hours: u64) {
    let mut w = converged(n, 99);
    w.loss_ppm = LOSS_PPM;
    let from = w.log.len();
    w.run_for(hours * 3_600_000);
    let count = |v: Verdict| {
        w.log[from..]
            .iter()
            .filter(|(_, _, e)| matches!(e, MemberEvent::Verdict { verdict, .. } if *verdict == v))
            .count()
    };
    println!(
        "| {n} | {hours} h | {} | {} | {} |",
        count(Verdict::Suspect),
        count(Verdict::Down) + count(Verdict::Left),
        w.converged()
    );
}

/// Gossip bytes each node sends per second in a steady cluster (no loss).
fn bandwidth(n: usize) {
    let mut w = converged(n, 5);
    w.run_for(30_000);
    let before = w.bytes_sent();
    let secs = 300;
    w.run_for(secs * 1000);
    let per_node = (w.bytes_sent() - before) as f64 / n as f64 / secs as f64;
    println!("| {n} | {per_node:.0} |");
}

fn main() {
    let trials = env_or("MEMBERSHIP_TRIALS", 40);
    let hours = env_or("MEMBERSHIP_HOURS", 2);
    let t = Instant::now();
    println!("## Failure detection, {trials} kills per size, 5 % loss (virtual ms)\n");
    println!("| members | probe period | suspect->down | suspected p50 / p90 / max | down everywhere p50 / p90 / max | bound (s) | not down within 3x bound |");
    println!("|---|---|---|---|---|---|---|");
    for n in SIZES {
        detection(n, trials);
    }
    println!("\n## False positives, healthy cluster, 5 % loss\n");
    println!("| members | virtual time | suspicions (refuted) | declared down | one membership at the end |");
    println!("|---|---|---|---|---|");
    for n in SIZES {
        false_positives(n, hours);
    }
    println!("\n## Gossip bytes per second per node (steady, no loss)\n");
    println!("| members | bytes/s/node |");
    println!("|---|---|");
    for n in SIZES {
        bandwidth(n);
    }
    println!(
        "\n(simulation wall time on this machine: {:.1} s)",
        t.elapsed().as_secs_f64()
    );
}
