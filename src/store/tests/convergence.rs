//! Replicas converge: last-writer-wins merge is commutative, associative and idempotent,
//! also with fences and tombstone collection under memory pressure and time advancing,
//! and two nodes exchanging their journals end identical.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn remote_op() -> impl Strategy<Value = (u8, Option<Vec<u8>>, u64)> {
    // Versions are drawn from a small range so that equal versions (the same write
    // delivered twice) and conflicts on one key are common; a version's content is derived
    // from it, since a version names one write.
    (0u8..6, any::<bool>(), 1u64..40).prop_map(|(k, put, v)| {
        let value = put.then(|| format!("{k}-{v}").into_bytes());
        (k, value, v)
    })
}

fn replay(ops: &[(u8, Option<Vec<u8>>, u64)]) -> Vec<(Vec<u8>, Option<Vec<u8>>, Version)> {
    let (s, _, clock) = cluster_store();
    let now = clock.now_secs();
    for (k, value, v) in ops {
        // One write per version: a delete and a put never share a version.
        let version = Version((v << 1 | u64::from(value.is_some())) << 10);
        let m = match value {
            Some(value) => Remote::Put {
                value,
                flags: 0,
                exptime: 0,
                version,
            },
            None => Remote::Delete { version },
        };
        s.apply(&[*k], &m, now).unwrap();
    }
    s.state(now)
}

proptest! {
    /// Merge is commutative, associative and idempotent: any order, any grouping, any
    /// duplication of the same mutations ends in the same state.
    #[test]
    fn merge_converges(ops in proptest::collection::vec(remote_op(), 0..60), seed in any::<u64>(), split in 0usize..60) {
        let expect = replay(&ops);
        // Another order (commutativity).
        let mut shuffled = ops.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(&replay(&shuffled), &expect);
        // Redelivery (idempotence).
        let doubled: Vec<_> = ops.iter().chain(ops.iter()).cloned().collect();
        prop_assert_eq!(&replay(&doubled), &expect);
        // Grouping (associativity): apply a suffix's merged state after a prefix.
        let cut = split.min(ops.len());
        let (a, b) = ops.split_at(cut);
        let merged_b: Vec<_> = replay(b)
            .into_iter()
            .map(|(k, v, ver)| (k[0], v, ver.0 >> 11))
            .collect();
        let regrouped: Vec<_> = a.iter().cloned().chain(merged_b).collect();
        prop_assert_eq!(&replay(&regrouped), &expect);
    }
}

/// A remote write for the pressure test: key, value (`None`: a delete), version, and expiry
/// (0: never, else seconds after the start).
type Pressed = (u8, Option<Vec<u8>>, u64, u8);

fn pressed_op() -> impl Strategy<Value = Pressed> {
    // More keys, and larger values, than the store below holds.
    (
        0u8..40,
        any::<bool>(),
        1u64..200,
        prop_oneof![3 => Just(0u8), 1 => 1u8..20],
    )
        .prop_map(|(k, put, v, exp)| {
            let value = put.then(|| vec![k ^ v as u8; (v as usize * 7) % 150]);
            (k, value, v, exp)
        })
}

fn pressed_version(v: u64, put: bool) -> Version {
    Version((v << 1 | u64::from(put)) << 10)
}

/// Applies `ops` to a small store (2 KB of data, room for a few tombstones per shard, a
/// 3-second tombstone TTL) while time advances a second every four writes and the sweeper
/// runs: items are evicted and expire, tombstones are collected early and on time.
fn replay_pressed(ops: &[Pressed]) -> Vec<(Vec<u8>, Option<Vec<u8>>, Version)> {
    let start = (T0 / 1000) as u32;
    let s = Store::new(StoreConfig {
        mem_limit: 2 << 10,
        shards: 4,
        tombstone_ttl: 3,
        tombstone_mem: Some(1200),
        ..StoreConfig::default()
    });
    let mut now = start;
    for (i, (k, value, v, exp)) in ops.iter().enumerate() {
        now = start + (i / 4) as u32;
        let version = pressed_version(*v, value.is_some());
        let exptime = if *exp == 0 {
            0
        } else {
            start + u32::from(*exp)
        };
        let m = match value {
            Some(value) => Remote::Put {
                value,
                flags: 0,
                exptime,
                version,
            },
            None => Remote::Delete { version },
        };
        s.apply(&[*k], &m, now).unwrap();
        if i % 8 == 7 {
            s.sweep(now, 4);
        }
        assert!(s.used_bytes() <= 2 << 10);
    }
    s.state(now)
}

proptest! {
    /// Under memory pressure, expiry and tombstone collection, replicas need not hold the
    /// same keys (each forgets on its own), but whatever any of them holds for a key, in
    /// any order of delivery, with redelivery, is the newest write of that key: no
    /// regression, and agreement on everything held.
    #[test]
    fn under_pressure_what_is_held_is_the_newest(ops in proptest::collection::vec(pressed_op(), 0..120), seed in any::<u64>()) {
        let mut newest: std::collections::HashMap<u8, (Version, Option<Vec<u8>>)> = Default::default();
        for (k, value, v, _) in &ops {
            let version = pressed_version(*v, value.is_some());
            let e = newest.entry(*k).or_insert((Version::NONE, None));
            if version > e.0 {
                *e = (version, value.clone());
            }
        }
        let mut shuffled = ops.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let doubled: Vec<_> = shuffled.iter().chain(ops.iter()).cloned().collect();
        for order in [&ops, &shuffled, &doubled] {
            for (key, value, version) in replay_pressed(order) {
                let (want, want_value) = &newest[&key[0]];
                prop_assert_eq!(version, *want, "key {}", key[0]);
                // An expired put is held as a tombstone of its version.
                if value.is_some() {
                    prop_assert_eq!(&value, want_value);
                }
            }
        }
    }
}

type Journaled = std::sync::Mutex<Vec<(Vec<u8>, Option<(Vec<u8>, u32, u32)>, Version)>>;

/// A cluster node's store whose journal is collected, for convergence tests.
fn journaled_node(node: u16, clock: Arc<ManualClock>) -> (Store, Hlc, Arc<Journaled>) {
    let hlc = Hlc::new(NodeId::new(node).unwrap(), clock);
    let cfg = StoreConfig {
        shards: 4,
        tombstone_ttl: 600,
        ..StoreConfig::default()
    };
    let store = Store::new(cfg);
    let log: Arc<Journaled> = Arc::default();
    let sink = log.clone();
    let journal: Journal = Box::new(move |key, change| {
        let entry = match change {
            Change::Put {
                value,
                flags,
                exptime,
                version,
            } => (
                key.to_vec(),
                Some((value.to_vec(), flags, exptime)),
                version,
            ),
            Change::Delete { version } => (key.to_vec(), None, version),
        };
        sink.lock().unwrap().push(entry);
    });
    assert!(store.set_journal(journal).is_ok());
    (store, hlc, log)
}

fn replay_onto(store: &Store, log: &Journaled, now: u32) {
    for (key, put, version) in log.lock().unwrap().iter() {
        let m = match put {
            Some((value, flags, exptime)) => Remote::Put {
                value,
                flags: *flags,
                exptime: *exptime,
                version: *version,
            },
            None => Remote::Delete { version: *version },
        };
        store.apply(key, &m, now).unwrap();
    }
}

#[derive(Debug, Clone)]
enum LocalOp {
    Set(u8, u8),
    Append(u8, u8),
    Delete(u8),
    Touch(u8, u8),
}

fn local_op() -> impl Strategy<Value = (bool, LocalOp)> {
    let op = prop_oneof![
        (0u8..5, any::<u8>()).prop_map(|(k, v)| LocalOp::Set(k, v)),
        (0u8..5, any::<u8>()).prop_map(|(k, v)| LocalOp::Append(k, v)),
        (0u8..5).prop_map(LocalOp::Delete),
        (0u8..5, 1u8..100).prop_map(|(k, t)| LocalOp::Touch(k, t)),
    ];
    (any::<bool>(), op)
}

fn run_local(s: &Store, hlc: &Hlc, now: u32, op: &LocalOp) {
    let key = |k: u8| vec![b'k', k];
    let _ = match *op {
        LocalOp::Set(k, v) => s.mutate(&key(k), now, hlc, |_| {
            let put = Put {
                value: NewValue::Owned(vec![v]),
                flags: 0,
                exptime: 0,
                bits: 0,
                version: None,
            };
            (Mutation::Put(put), ())
        }),
        LocalOp::Append(k, v) => s.mutate(&key(k), now, hlc, |cur| match cur {
            Some(c) => {
                let put = Put {
                    value: NewValue::Owned([c.value, &[v]].concat()),
                    flags: c.flags,
                    exptime: c.exptime,
                    bits: 0,
                    version: None,
                };
                (Mutation::Put(put), ())
            }
            None => (Mutation::Keep, ()),
        }),
        LocalOp::Delete(k) => s.mutate(&key(k), now, hlc, |_| (Mutation::Delete, ())),
        LocalOp::Touch(k, t) => s.mutate(&key(k), now, hlc, |_| {
            let m = Mutation::Update {
                exptime: Some(now + u32::from(t)),
                set_bits: 0,
                clear_bits: 0,
                bump: true,
                version: None,
            };
            (m, ())
        }),
    };
}

proptest! {
    /// Two nodes take writes independently; once each has applied the other's journal
    /// (whole, in order, as the live stream delivers it) they hold the same items and
    /// tombstones with the same versions: last-writer-wins converges.
    #[test]
    fn journals_exchanged_converge(ops in proptest::collection::vec(local_op(), 1..80)) {
        let clock = Arc::new(ManualClock::new(T0));
        let (a, hlc_a, log_a) = journaled_node(1, clock.clone());
        let (b, hlc_b, log_b) = journaled_node(2, clock.clone());
        let now = clock.now_secs();
        for (i, (on_a, op)) in ops.iter().enumerate() {
            if i % 7 == 0 {
                clock.advance(std::time::Duration::from_millis(1));
            }
            if *on_a { run_local(&a, &hlc_a, now, op) } else { run_local(&b, &hlc_b, now, op) }
        }
        replay_onto(&b, &log_a, now);
        replay_onto(&a, &log_b, now);
        prop_assert_eq!(a.state(now), b.state(now));
        // Redelivery changes nothing.
        replay_onto(&b, &log_a, now);
        prop_assert_eq!(a.state(now), b.state(now));
    }
}
