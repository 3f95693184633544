//! Partitions that heal: replication resumes by itself, whatever the partition's length
//! relative to QUIC's idle time-out, and nothing written on either side meanwhile is lost.
//! (How fast it resumes is measured in `benches/faults.rs`, not asserted here.)

use super::partition::Partition;
use super::*;

/// A pair cut apart for `cut_for` while both sides take writes: after the heal, every write
/// of both sides is on both nodes with the same CAS, and a write made after the heal
/// arrives too.
fn writes_on_both_sides_meet_after_a_heal(tag: &str, cut_for: Duration) {
    let dir = TempDir::new(tag);
    let nodes = cluster(&dir, 2, &[]);
    let (mut a, mut b) = (nodes[0].client(), nodes[1].client());
    set(&mut a, "before", "cut");
    wait_value(&nodes[1], "before", "cut");
    let ports = [
        cluster_port(&mut b, "node-1"),
        cluster_port(&mut a, "node-2"),
    ];
    let mut cut = Partition::cut(ports[0], ports[1]);
    let start = Instant::now();
    let mut keys = vec!["before".to_string(), "after".to_string()];
    let mut i = 0;
    while start.elapsed() < cut_for {
        for (side, c) in [("a", &mut a), ("b", &mut b)] {
            let key = format!("{side}-{i}");
            set(c, &key, &format!("written on {side} during the cut"));
            keys.push(key);
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    cut.heal();
    set(&mut a, "after", "heal");
    wait_agreement(
        &[&nodes[0], &nodes[1]],
        &keys,
        keys.len(),
        Duration::from_secs(20),
    );
}

#[test]
fn a_short_partition_heals_and_both_sides_writes_meet() {
    writes_on_both_sides_meet_after_a_heal("heal-short", Duration::from_millis(1500));
}

#[test]
fn a_partition_longer_than_the_idle_timeout_heals_and_both_sides_writes_meet() {
    writes_on_both_sides_meet_after_a_heal("heal-long", Duration::from_secs(5));
}

/// A partition long enough for both sides to write more than `--repl-backlog` holds: the
/// peer's position falls off each log, so each side is resynced by a snapshot of the other,
/// and every write of both sides is on both nodes afterwards.
#[test]
fn a_partition_that_overflows_the_log_converges() {
    let dir = TempDir::new("heal-overflow");
    let nodes = cluster(&dir, 2, &["--repl-backlog", "64k"]);
    let (mut a, mut b) = (nodes[0].client(), nodes[1].client());
    let ports = [
        cluster_port(&mut b, "node-1"),
        cluster_port(&mut a, "node-2"),
    ];
    let mut cut = Partition::cut(ports[0], ports[1]);
    let value = "v".repeat(100);
    let mut keys = Vec::new();
    for (side, c) in [("a", &mut a), ("b", &mut b)] {
        let sets: Vec<(String, Vec<u8>)> = (0..3000)
            .map(|i| (format!("{side}-{i}"), value.clone().into_bytes()))
            .collect();
        pipelined_sets(c, &sets, 500);
        keys.extend(sets.into_iter().map(|(k, _)| k));
    }
    cut.heal();
    wait_agreement(
        &[&nodes[0], &nodes[1]],
        &keys,
        keys.len(),
        Duration::from_secs(20),
    );
    assert!(
        stat(&mut a, "snapshots_received") >= 1,
        "resynced by snapshot"
    );
}
