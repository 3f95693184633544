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

/// A pair cut apart for longer than `--tombstone-ttl`, each side deleting keys of both
/// origins and then writing more than its replication backlog holds (so the deletes leave
/// the log, and the peer gets a snapshot instead of a delta), with the tombstones collected
/// before the heal: afterwards no deleted key is back on either node, every new key is on
/// both, and neither side lost anything else (no wipe, no resurrection).
#[test]
fn a_partition_longer_than_the_tombstone_ttl_brings_no_delete_back() {
    let dir = TempDir::new("heal-ttl");
    let flags = ["--tombstone-ttl", "1s", "--repl-backlog", "64k"];
    let nodes = cluster(&dir, 2, &flags);
    let (mut a, mut b) = (nodes[0].client(), nodes[1].client());
    let mut kept = Vec::new();
    for i in 0..50 {
        set(&mut a, &format!("a-{i}"), "from node-1");
        set(&mut b, &format!("b-{i}"), "from node-2");
        if i >= 20 {
            kept.extend([format!("a-{i}"), format!("b-{i}")]);
        }
    }
    let all: Vec<String> = (0..50)
        .flat_map(|i| [format!("a-{i}"), format!("b-{i}")])
        .collect();
    // A later write on each side, acknowledged by the other, makes the first ones provably
    // held there (writes within a few ms of the newest acknowledged one are kept on the
    // safe side: see cluster::reconcile's append margin).
    let written = Instant::now();
    eventually(DEADLINE, "a little later", || {
        written.elapsed() > Duration::from_millis(50)
    });
    set(&mut a, "marker-a", "later");
    set(&mut b, "marker-b", "later");
    kept.extend(["marker-a".to_string(), "marker-b".to_string()]);
    wait_agreement(&[&nodes[0], &nodes[1]], &all, all.len(), DEADLINE);
    // And acknowledged: a write still unacknowledged at the split is one its node cannot
    // know the other side had, so it is kept there (the safe side) rather than dropped.
    for (c, peer) in [(&mut a, "node-2"), (&mut b, "node-1")] {
        eventually(DEADLINE, "every write acknowledged", || {
            peer_stat(c, peer, "lag_mutations") == "0"
        });
    }
    let ports = [
        cluster_port(&mut b, "node-1"),
        cluster_port(&mut a, "node-2"),
    ];

    let mut cut = Partition::cut(ports[0], ports[1]);
    let mut deleted = Vec::new();
    for i in 0..10 {
        let on_a = [format!("a-{i}"), format!("b-{i}")];
        let on_b = [format!("a-{}", i + 10), format!("b-{}", i + 10)];
        for (c, keys) in [(&mut a, on_a), (&mut b, on_b)] {
            for k in keys {
                assert_eq!(c.line(&format!("delete {k}")), "DELETED\r\n");
                deleted.push(k);
            }
        }
    }
    // More than the 64 KiB backlog on each side: the deletes are no longer in either log.
    let value = "v".repeat(100);
    for (side, c) in [("a", &mut a), ("b", &mut b)] {
        let sets: Vec<(String, Vec<u8>)> = (0..1500)
            .map(|i| (format!("new-{side}-{i}"), value.clone().into_bytes()))
            .collect();
        pipelined_sets(c, &sets, 500);
        kept.extend(sets.into_iter().map(|(k, _)| k));
    }
    // The separation outlasts the TTL, and the deletes' tombstones are collected.
    let apart = Instant::now();
    eventually(
        DEADLINE,
        "the tombstones are collected on both sides",
        || {
            apart.elapsed() > Duration::from_millis(2500)
                && stat(&mut a, "tombstones") == 0
                && stat(&mut b, "tombstones") == 0
        },
    );
    cut.heal();

    let mut everything = kept.clone();
    everything.extend(deleted.iter().cloned());
    wait_agreement(
        &[&nodes[0], &nodes[1]],
        &everything,
        kept.len(),
        Duration::from_secs(20),
    );
    for c in [&mut a, &mut b] {
        for k in &deleted {
            assert_eq!(get(c, k), None, "{k} was deleted and must not come back");
        }
        for k in &kept {
            assert!(get(c, k).is_some(), "{k} was never deleted");
        }
    }
}
