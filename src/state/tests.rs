//! Tests of saving and loading state files, through real files in a temporary directory.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::clock::{ManualClock, NodeId, HLC_EPOCH_MS};
use crate::replication::log::RunId;
use crate::store::{Flush, FlushMerge, Mutation, NewValue, Put, StoreConfig};
use crate::testdir::TempDir;

const START_MS: u64 = HLC_EPOCH_MS + 1_000_000_000;
const CLUSTER: u64 = 0x5eed;

fn store() -> Store {
    Store::new(StoreConfig {
        mem_limit: 1 << 30,
        tombstone_ttl: 600,
        ..StoreConfig::default()
    })
}

fn hlc(node: u16, ms: u64) -> Hlc {
    Hlc::new(NodeId::new(node).unwrap(), Arc::new(ManualClock::new(ms)))
}

fn header() -> StateHeader {
    StateHeader {
        cluster_id: CLUSTER,
        node_name: "n1".into(),
        written_ms: START_MS,
        positions: vec![
            Position {
                origin: "n2".into(),
                run_id: RunId(7),
                seq: 1234,
            },
            Position {
                origin: "n3".into(),
                run_id: RunId(u64::MAX),
                seq: 0,
            },
        ],
    }
}

const EXPECT: Expect<'static> = Expect {
    cluster_id: CLUSTER,
    node_name: "n1",
};

fn set(store: &Store, hlc: &Hlc, key: &str, value: &[u8], flags: u32, exptime: u32) {
    let now = hlc.clock().now_secs();
    let put = Put {
        value: NewValue::Owned(value.to_vec()),
        flags,
        exptime,
        bits: 0,
        version: None,
    };
    store
        .mutate(key.as_bytes(), now, hlc, |_| (Mutation::Put(put), ()))
        .unwrap();
}

fn delete(store: &Store, hlc: &Hlc, key: &str) {
    let now = hlc.clock().now_secs();
    store
        .mutate(key.as_bytes(), now, hlc, |_| (Mutation::DeleteMissing, ()))
        .unwrap();
}

/// A store with items (some soon expiring), tombstones, a fired and a pending flush and a
/// forgotten item, saved at `path`; returns it and the second it was saved at.
fn saved(path: &Path) -> (Store, u32) {
    let hlc = hlc(1, START_MS);
    let src = store();
    let now = hlc.clock().now_secs();
    set(&src, &hlc, "flushed", b"old", 0, 0);
    let flush = |at_ms| Flush {
        issued: hlc.tick(),
        at_ms,
    };
    src.flush(flush(0), FlushMerge::Union, now);
    src.flush(flush(u64::from(now + 3600) * 1000), FlushMerge::Union, now);
    for i in 0..200u32 {
        let exptime = match i % 3 {
            0 => 0,
            1 => now + 10_000,
            _ => now + 50,
        };
        set(
            &src,
            &hlc,
            &format!("key{i}"),
            &vec![b'a' + (i % 26) as u8; i as usize],
            i,
            exptime,
        );
    }
    for i in (0..200).step_by(9) {
        delete(&src, &hlc, &format!("key{i}"));
    }
    delete(&src, &hlc, "never-held");
    // A forgotten floor above every entry saved, as collecting tombstones early leaves
    // (an expired item becomes a tombstone in a cluster, so it is not the way here).
    src.raise_forgotten_floor(hlc.tick());
    assert!(src.forgotten_floor() > src.state(now).iter().map(|e| e.2).max().unwrap());
    let stats = save(path, &header(), &src, now).unwrap();
    assert_eq!((stats.items, stats.tombstones), (177, 24));
    assert_eq!(stats.bytes, fs::metadata(path).unwrap().len());
    (src, now)
}

/// Every live item with its flags and expiry time, sorted.
fn sorted_dump(store: &Store, now: u32) -> Vec<impl Ord + std::fmt::Debug> {
    let mut d = store.dump(now);
    d.sort();
    d
}

#[test]
fn round_trip_keeps_entries_versions_flush_and_positions_and_moves_the_clock() {
    let dir = TempDir::new("state-round-trip");
    let path = dir.join("state");
    let (src, saved_at) = saved(&path);
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!temp_path(&path).exists());

    // Loaded 100 s later, by a clock that is behind the saving one.
    let now = saved_at + 100;
    let dst = store();
    let clock = hlc(1, START_MS - 3_600_000);
    let loaded = load(&path, &EXPECT, &dst, &clock, now).unwrap();
    assert_eq!(loaded.header, header());
    assert_eq!(loaded.flush, src.flush_state(saved_at));
    assert_eq!(loaded.flush.flushes.len(), 2, "one fired, one pending");
    assert_eq!(dst.flush_state(now), src.flush_state(now));
    // What the saving run forgot is still refused: the forgotten floor came along.
    assert_eq!(loaded.forgotten, src.forgotten_floor());
    assert_eq!(dst.forgotten_floor(), src.forgotten_floor());
    let late = Remote::Put {
        value: b"x",
        flags: 0,
        exptime: 0,
        version: loaded.forgotten,
    };
    assert_eq!(dst.apply(b"forgotten", &late, now), Ok(Applied::Forgotten));
    assert_eq!((loaded.items, loaded.tombstones), (111, 24));
    assert_eq!(
        (loaded.expired, loaded.superseded, loaded.not_stored),
        (66, 0, 0)
    );
    assert_eq!(loaded.bytes, fs::metadata(&path).unwrap().len());

    assert_eq!(dst.state(now), src.state(now));
    assert_eq!(sorted_dump(&dst, now), sorted_dump(&src, now));
    let newest = src.state(now).iter().map(|e| e.2).max().unwrap();
    assert_eq!(loaded.max_version, newest.max(loaded.forgotten));
    assert!(clock.tick() > newest);

    // Loading again changes nothing: every entry is the very write already held.
    let again = load(&path, &EXPECT, &dst, &clock, now).unwrap();
    assert_eq!(again.superseded, 111 + 24);
    assert_eq!(dst.state(now), src.state(now));
}

fn assert_untouched(store: &Store, now: u32) {
    assert!(store.is_empty());
    assert_eq!(store.flush_state(now), FlushState::default());
}

#[test]
fn damaged_or_cut_files_are_refused_before_anything_is_applied() {
    let dir = TempDir::new("state-damaged");
    let path = dir.join("state");
    let (_, now) = saved(&path);
    let good = fs::read(&path).unwrap();
    let bad_path = dir.join("bad");
    let n = good.len();
    for (offset, magic) in [
        (0, true),
        (3, true),
        (9, false),
        (30, false),
        (n / 2, false),
    ]
    .into_iter()
    .chain([(n - 8, false), (n - 1, false)])
    {
        let mut bad = good.clone();
        bad[offset] ^= 0x20;
        fs::write(&bad_path, &bad).unwrap();
        let dst = store();
        let err = load(&bad_path, &EXPECT, &dst, &hlc(1, START_MS), now).unwrap_err();
        if magic {
            assert!(
                matches!(err, StateError::NotAStateFile { .. }),
                "{offset}: {err}"
            );
        } else {
            assert!(
                matches!(err, StateError::Checksum { .. }),
                "{offset}: {err}"
            );
        }
        assert!(
            err.to_string().contains(&*bad_path.to_string_lossy()),
            "{err}"
        );
        assert_untouched(&dst, now);
    }
    for len in [0, 5, 20, 100, n / 2, n - 16, n - 1] {
        fs::write(&bad_path, &good[..len]).unwrap();
        let dst = store();
        let err = load(&bad_path, &EXPECT, &dst, &hlc(1, START_MS), now).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Truncated { .. } | StateError::Checksum { .. }
            ),
            "{len}: {err}"
        );
        assert_untouched(&dst, now);
    }
    fs::write(&bad_path, b"VERSION 1.6.21\r\n and more text than a header").unwrap();
    let err = load(&bad_path, &EXPECT, &store(), &hlc(1, START_MS), now).unwrap_err();
    assert!(matches!(err, StateError::NotAStateFile { .. }), "{err}");
}

#[test]
fn files_of_another_cluster_node_or_format_are_refused() {
    let dir = TempDir::new("state-foreign");
    let path = dir.join("state");
    let (_, now) = saved(&path);
    let refused = |expect: &Expect<'_>| {
        let dst = store();
        let err = load(&path, expect, &dst, &hlc(1, START_MS), now).unwrap_err();
        assert_untouched(&dst, now);
        err
    };
    let foreign = Expect {
        cluster_id: CLUSTER + 1,
        ..EXPECT
    };
    let err = refused(&foreign);
    assert!(
        matches!(err, StateError::ForeignCluster { found: CLUSTER, .. }),
        "{err}"
    );
    let other = Expect {
        node_name: "n9",
        ..EXPECT
    };
    match refused(&other) {
        StateError::OtherNode {
            found, expected, ..
        } => assert_eq!((&*found, &*expected), ("n1", "n9")),
        err => panic!("{err}"),
    }

    // An older format, with its checksum made right: refused for its version alone.
    let mut old = fs::read(&path).unwrap();
    old[8..12].copy_from_slice(&0u32.to_be_bytes());
    let n = old.len() - 4;
    let crc = crc32fast::hash(&old[..n]);
    old[n..].copy_from_slice(&crc.to_be_bytes());
    fs::write(&path, &old).unwrap();
    let err = refused(&EXPECT);
    assert!(
        matches!(
            err,
            StateError::Format {
                found: 0,
                supported: FORMAT,
                ..
            }
        ),
        "{err}"
    );

    let missing = dir.join("missing");
    let err = load(&missing, &EXPECT, &store(), &hlc(1, START_MS), now).unwrap_err();
    assert!(matches!(err, StateError::NotFound { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("no state file at {}", missing.display())
    );
}

#[test]
fn a_failed_save_leaves_the_previous_file_and_no_temporary() {
    let dir = TempDir::new("state-failed-save");
    let path = dir.join("state");
    let (src, now) = saved(&path);
    let before = fs::read(&path).unwrap();

    let mut unsavable = header();
    unsavable.node_name = "n".repeat(70_000);
    let err = save(&path, &unsavable, &src, now).unwrap_err();
    assert!(matches!(err, StateError::Unsavable { .. }), "{err}");
    assert_eq!(fs::read(&path).unwrap(), before);
    assert!(!temp_path(&path).exists());

    // A directory in the way of the rename, a directory that does not exist.
    let in_the_way = dir.join("in-the-way");
    fs::create_dir(&in_the_way).unwrap();
    fs::write(in_the_way.join("x"), b"x").unwrap();
    let err = save(&in_the_way, &header(), &src, now).unwrap_err();
    assert!(matches!(err, StateError::Io { .. }), "{err}");
    assert!(!temp_path(&in_the_way).exists());
    let nowhere = dir.join("no-such-dir").join("state");
    let err = save(&nowhere, &header(), &src, now).unwrap_err();
    assert!(matches!(err, StateError::Io { .. }), "{err}");
    assert!(!temp_path(&nowhere).exists());

    // A temporary left by a crashed save is replaced, with the right mode.
    fs::write(temp_path(&path), b"half a file").unwrap();
    fs::set_permissions(temp_path(&path), fs::Permissions::from_mode(0o644)).unwrap();
    save(&path, &header(), &src, now).unwrap();
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        2,
        "state and in-the-way only"
    );
}

#[test]
fn cluster_id_is_fnv1a_64() {
    assert_eq!(cluster_id(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(cluster_id(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(cluster_id(b"foobar"), 0x8594_4171_f739_67e8);
}

/// A warm restart of a million 100-byte items; prints how long saving and loading took
/// (run with `--release --nocapture`; nothing is asserted about time).
#[test]
fn a_million_items_round_trip() {
    let dir = TempDir::new("state-million");
    let path = dir.join("state");
    let hlc = hlc(1, START_MS);
    let now = hlc.clock().now_secs();
    let src = store();
    let value = [b'v'; 100];
    for i in 0..1_000_000u32 {
        let key = format!("key:{i:08}");
        let put = Remote::Put {
            value: &value,
            flags: i,
            exptime: 0,
            version: hlc.tick(),
        };
        src.apply(key.as_bytes(), &put, now).unwrap();
    }
    let t = Instant::now();
    let saved = save(&path, &header(), &src, now).unwrap();
    let save_time = t.elapsed();
    assert_eq!(saved.items, 1_000_000);

    let dst = store();
    let t = Instant::now();
    let loaded = load(&path, &EXPECT, &dst, &hlc, now).unwrap();
    let load_time = t.elapsed();
    assert_eq!(loaded.items, 1_000_000);
    assert_eq!(dst.len(), 1_000_000);
    println!(
        "state file: 1M items, {} MB: save {save_time:?}, load {load_time:?}",
        saved.bytes >> 20
    );
    let probe = b"key:00123456";
    let held = dst.read(probe, now, false, |i| {
        i.map(|i| (i.value.to_vec(), i.flags))
    });
    assert_eq!(held, Some((value.to_vec(), 123_456)));
}
