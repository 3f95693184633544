//! Store tests: semantics by example; the store against a `HashMap` model ([`model`]);
//! replicas converging ([`convergence`]); what is forgotten still fences ([`forgetting`]).

use std::sync::Arc;

use super::*;
use crate::clock::{Clock, Hlc, ManualClock, NodeId, HLC_EPOCH_MS};

const T0: u64 = HLC_EPOCH_MS + 1_000_000_000;

fn store(mem: usize, evict: bool) -> (Store, Hlc, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let hlc = Hlc::new(NodeId::default(), clock.clone());
    let cfg = StoreConfig {
        mem_limit: mem,
        evict,
        shards: 4,
        ..StoreConfig::default()
    };
    (Store::new(cfg), hlc, clock)
}

fn set(
    s: &Store,
    hlc: &Hlc,
    now: u32,
    key: &[u8],
    value: &[u8],
    exptime: u32,
) -> Result<Version, StoreError> {
    s.mutate(key, now, hlc, |_| {
        let put = Put {
            value: NewValue::Bytes(value),
            flags: 0,
            exptime,
            bits: 0,
            version: None,
        };
        (Mutation::Put(put), ())
    })
    .map(|(_, v)| v)
}

fn get(s: &Store, now: u32, key: &[u8]) -> Option<(Vec<u8>, Version)> {
    s.read(key, now, true, |i| i.map(|i| (i.value.to_vec(), i.version)))
}

/// `flush_all` with no delay, as the dispatcher issues it.
fn flush_now(hlc: &Hlc) -> Flush {
    Flush {
        issued: hlc.tick(),
        at_ms: 0,
    }
}

/// `flush_all` due at unix second `at`.
fn flush_at(hlc: &Hlc, at: u32) -> Flush {
    Flush {
        issued: hlc.tick(),
        at_ms: u64::from(at) * 1000,
    }
}

#[test]
fn set_get_delete() {
    let (s, hlc, clock) = store(64 << 20, true);
    let now = clock.now_secs();
    let v1 = set(&s, &hlc, now, b"k", b"hello", 0).unwrap();
    assert_eq!(get(&s, now, b"k"), Some((b"hello".to_vec(), v1)));
    let v2 = set(&s, &hlc, now, b"k", b"world", 0).unwrap();
    assert!(v2 > v1);
    let (_, v) = s
        .mutate(b"k", now, &hlc, |_| (Mutation::Delete, ()))
        .unwrap();
    assert_eq!(v, Version::NONE);
    assert_eq!(get(&s, now, b"k"), None);
    assert_eq!(s.stats().curr_items, 0);
    assert_eq!(s.used_bytes(), 0);
}

#[test]
fn append_prepend_compose() {
    let (s, hlc, clock) = store(64 << 20, true);
    let now = clock.now_secs();
    set(&s, &hlc, now, b"k", b"mid", 0).unwrap();
    for (v, expect) in [
        (NewValue::Append(b">"), &b"mid>"[..]),
        (NewValue::Prepend(b"<"), b"<mid>"),
    ] {
        s.mutate(b"k", now, &hlc, |_| {
            (
                Mutation::Put(Put {
                    value: v,
                    flags: 0,
                    exptime: 0,
                    bits: 0,
                    version: None,
                }),
                (),
            )
        })
        .unwrap();
        assert_eq!(get(&s, now, b"k").unwrap().0, expect);
    }
}

#[test]
fn expiry_is_lazy_and_swept() {
    let (s, hlc, clock) = store(64 << 20, true);
    let now = clock.now_secs();
    set(&s, &hlc, now, b"a", b"1", now + 2).unwrap();
    set(&s, &hlc, now, b"b", b"2", now + 2).unwrap();
    assert!(get(&s, now + 1, b"a").is_some());
    assert!(get(&s, now + 2, b"a").is_none());
    assert_eq!(s.stats().get_expired, 1);
    // b was never read again: the sweeper reclaims it.
    s.sweep(now + 2, 1000);
    assert_eq!(s.stats().curr_items, 0);
    assert_eq!(s.used_bytes(), 0);
    // Storing with an exptime already past leaves nothing.
    set(&s, &hlc, now, b"c", b"3", 1).unwrap();
    assert!(get(&s, now, b"c").is_none());
}

#[test]
fn flush_now_and_delayed() {
    let (s, hlc, clock) = store(64 << 20, true);
    let now = clock.now_secs();
    set(&s, &hlc, now, b"old", b"1", 0).unwrap();
    s.flush(flush_now(&hlc), FlushMerge::Replace, now);
    assert!(get(&s, now, b"old").is_none());
    set(&s, &hlc, now, b"new", b"2", 0).unwrap();
    assert!(get(&s, now, b"new").is_some());
    // Delayed: items written before the due second die when it comes.
    s.flush(flush_at(&hlc, now + 5), FlushMerge::Replace, now);
    assert!(get(&s, now + 4, b"new").is_some());
    assert!(get(&s, now + 5, b"new").is_none());
}

#[test]
fn evicts_least_recently_used_under_pressure() {
    let value = vec![b'x'; 1000];
    let (s, hlc, clock) = store(1 << 20, true);
    let now = clock.now_secs();
    for i in 0..2000u32 {
        let key = format!("key{i}");
        set(&s, &hlc, now, key.as_bytes(), &value, 0).unwrap();
        // Keep key0 hot.
        get(&s, now, b"key0");
        assert!(s.used_bytes() <= 1 << 20);
    }
    let st = s.stats();
    assert!(st.evictions > 900, "evictions {}", st.evictions);
    assert!(
        get(&s, now, b"key0").is_some(),
        "a hot key survives CLOCK eviction"
    );
    assert!(
        get(&s, now, b"key1999").is_some(),
        "the newest key is present"
    );
}

#[test]
fn no_evict_mode_refuses() {
    let value = vec![b'x'; 1000];
    let (s, hlc, clock) = store(1 << 20, false);
    let now = clock.now_secs();
    let mut refused = 0;
    for i in 0..2000u32 {
        match set(&s, &hlc, now, format!("k{i}").as_bytes(), &value, 0) {
            Ok(_) => {}
            Err(StoreError::OutOfMemory) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(refused > 900);
    assert_eq!(s.stats().evictions, 0);
    assert!(get(&s, now, b"k0").is_some(), "nothing was evicted");
}

#[test]
fn too_large_matches_memcached_arithmetic() {
    let (s, _, _) = store(64 << 20, true);
    // 48 header + 8 cas + key+1 + value+2 must fit in 1 MiB.
    let max_value = (1 << 20) - 48 - 8 - 2 - 2;
    assert!(!s.too_large(1, max_value, 0));
    assert!(s.too_large(1, max_value + 1, 0));
    assert!(
        s.too_large(1, max_value, 1),
        "nonzero flags add a 4-byte suffix"
    );
}

mod convergence;
mod digest;
mod forgetting;
mod model;

fn cluster_store() -> (Store, Hlc, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let hlc = Hlc::new(NodeId::new(1).unwrap(), clock.clone());
    let cfg = StoreConfig {
        shards: 4,
        tombstone_ttl: 600,
        ..StoreConfig::default()
    };
    (Store::new(cfg), hlc, clock)
}

#[test]
fn delete_leaves_a_tombstone_that_beats_older_writes() {
    let (s, hlc, clock) = cluster_store();
    let now = clock.now_secs();
    let old = hlc.tick();
    set(&s, &hlc, now, b"k", b"v1", 0).unwrap();
    s.mutate(b"k", now, &hlc, |_| (Mutation::Delete, ()))
        .unwrap();
    assert_eq!(get(&s, now, b"k"), None);
    assert_eq!((s.stats().curr_items, s.stats().tombstones), (0, 1));
    // An older write arriving late loses to the tombstone.
    let late = Remote::Put {
        value: b"stale",
        flags: 0,
        exptime: 0,
        version: old,
    };
    assert_eq!(s.apply(b"k", &late, now).unwrap(), Applied::Behind);
    assert_eq!(get(&s, now, b"k"), None);
    // A newer one wins, and reuses the tombstone's slot.
    let newer = Remote::Put {
        value: b"v2",
        flags: 3,
        exptime: 0,
        version: hlc.tick(),
    };
    assert_eq!(s.apply(b"k", &newer, now).unwrap(), Applied::Accepted);
    assert_eq!(s.apply(b"k", &newer, now).unwrap(), Applied::Identical);
    assert_eq!(get(&s, now, b"k").unwrap().0, b"v2");
    assert_eq!((s.stats().curr_items, s.stats().tombstones), (1, 0));
    // Tombstones go when their time is up.
    s.mutate(b"k", now, &hlc, |_| (Mutation::Delete, ()))
        .unwrap();
    s.sweep(now + 600, 1000);
    assert_eq!(s.stats().tombstones, 0);
    assert_eq!(s.used_bytes(), 0);
}

#[test]
fn flush_barrier_rejects_older_remote_writes() {
    let (s, hlc, clock) = cluster_store();
    let now = clock.now_secs();
    let before = hlc.tick();
    s.flush(flush_now(&hlc), FlushMerge::Union, now);
    let late = Remote::Put {
        value: b"x",
        flags: 0,
        exptime: 0,
        version: before,
    };
    assert_eq!(s.apply(b"k", &late, now).unwrap(), Applied::Behind);
    let after = Remote::Put {
        value: b"y",
        flags: 0,
        exptime: 0,
        version: hlc.tick(),
    };
    assert_eq!(s.apply(b"k", &after, now).unwrap(), Applied::Accepted);
}

/// Two delayed flushes reaching two replicas in opposite orders: each fires at its time on
/// both, and the replicas hold the same at every moment (before, arrival order decided which
/// one a replica kept).
#[test]
fn delayed_flushes_in_opposite_orders_converge() {
    let (a, hlc, clock) = cluster_store();
    let (b, _, _) = cluster_store();
    let t = clock.now_secs();
    let early = flush_at(&hlc, t + 5);
    let late = flush_at(&hlc, t + 10);
    let mut written = Vec::new();
    for (i, at) in [t, t + 3, t + 7].into_iter().enumerate() {
        let key = format!("k{i}");
        written.push((key, at, Version::at_unix_ms(u64::from(at) * 1000 + 1)));
    }
    a.flush(early, FlushMerge::Union, t);
    a.flush(late, FlushMerge::Union, t);
    b.flush(late, FlushMerge::Union, t);
    b.flush(early, FlushMerge::Union, t);
    for now in t..t + 12 {
        for (key, at, version) in &written {
            if *at == now {
                for s in [&a, &b] {
                    let m = Remote::Put {
                        value: b"v",
                        flags: 0,
                        exptime: 0,
                        version: *version,
                    };
                    assert_eq!(s.apply(key.as_bytes(), &m, now), Ok(Applied::Accepted));
                }
            }
        }
        assert_eq!(a.state(now), b.state(now), "at t+{}", now - t);
        assert_eq!(a.flush_state(now), b.flush_state(now));
        let keys: Vec<_> = a.state(now).into_iter().map(|(k, ..)| k).collect();
        let want: &[&[u8]] = match now - t {
            0..3 => &[b"k0"],
            3..5 => &[b"k0", b"k1"],
            // The first flush removed k0 and k1, written before its time.
            5..7 => &[],
            7..10 => &[b"k2"],
            // The second removed k2.
            _ => &[],
        };
        assert_eq!(keys, want, "at t+{}", now - t);
    }
}

/// A snapshot's (or a state file's) flushes join the ones pending here; before, a snapshot
/// carrying any fired flush cancelled this node's pending one.
#[test]
fn a_snapshots_flushes_do_not_cancel_a_pending_flush() {
    let (s, hlc, clock) = cluster_store();
    let now = clock.now_secs();
    set(&s, &hlc, now, b"k", b"v", 0).unwrap();
    s.flush(flush_at(&hlc, now + 5), FlushMerge::Union, now);
    let (donor, donor_hlc, _) = cluster_store();
    donor.flush(flush_now(&donor_hlc), FlushMerge::Union, now);
    s.merge_flush_state(&donor.flush_state(now), now);
    assert_eq!(s.flush_state(now).flushes.len(), 2, "both kept");
    assert!(get(&s, now + 4, b"k").is_some());
    assert!(get(&s, now + 5, b"k").is_none(), "the pending flush fired");
}

#[test]
fn standalone_store_journals_nothing_without_a_journal() {
    let (s, hlc, clock) = store(1 << 20, true);
    let now = clock.now_secs();
    set(&s, &hlc, now, b"k", b"v", 0).unwrap();
    assert!(s.journal.get().is_none());
}

#[test]
fn remote_mutations_with_impossible_keys_are_refused() {
    let (s, hlc, clock) = cluster_store();
    let now = clock.now_secs();
    let put = Remote::Put {
        value: b"",
        flags: 0,
        exptime: 0,
        version: hlc.tick(),
    };
    assert_eq!(s.apply(b"", &put, now).unwrap(), Applied::BadKey);
    assert_eq!(s.apply(&[b'k'; 251], &put, now).unwrap(), Applied::BadKey);
    assert_eq!(s.stats().curr_items, 0);
}
