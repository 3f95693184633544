//! What a cluster store forgets still fences (DESIGN.md section 1): expired and evicted
//! items, collected tombstones, versions it could not hold; tombstones have a budget of
//! their own, so data and deletes never push each other out.

use super::*;

fn put(value: &[u8], version: Version) -> Remote<'_> {
    Remote::Put {
        value,
        flags: 0,
        exptime: 0,
        version,
    }
}

/// A cluster store with `mem` bytes for data and `tombs` for tombstones and fences.
fn small_cluster_store(mem: usize, tombs: usize) -> (Store, Hlc, Arc<ManualClock>) {
    let (_, hlc, clock) = cluster_store();
    let s = Store::new(StoreConfig {
        mem_limit: mem,
        shards: 4,
        tombstone_ttl: 600,
        tombstone_mem: Some(tombs),
        ..StoreConfig::default()
    });
    (s, hlc, clock)
}

fn holds(s: &Store, now: u32, key: &[u8]) -> bool {
    s.read(key, now, false, |i| i.is_some())
}

#[test]
fn an_expired_item_refuses_older_writes_of_its_key() {
    let (s, hlc, clock) = cluster_store();
    let now = clock.now_secs();
    let older = hlc.tick();
    let newer_version = hlc.tick();
    let newer = Remote::Put {
        value: b"new",
        flags: 0,
        exptime: now + 1,
        version: newer_version,
    };
    assert_eq!(s.apply(b"k", &newer, now), Ok(Applied::Accepted));
    assert_eq!(
        get(&s, now + 1, b"k"),
        None,
        "expired, and reclaimed by the read"
    );
    // In a cluster it leaves a tombstone of its version, which a snapshot carries.
    let held = s.state(now + 1);
    assert_eq!(held, vec![(b"k".to_vec(), None, newer_version)]);
    assert_eq!(
        s.apply(b"k", &put(b"old", older), now + 1),
        Ok(Applied::Behind)
    );
    // Once that tombstone is collected too, a fence refuses the older write still.
    let later = now + 2 + 600; // past the tombstone TTL of `cluster_store`
    s.sweep(later, 1000);
    assert!(s.state(later).is_empty(), "nothing held");
    assert_eq!(
        s.apply(b"k", &put(b"old", older), later),
        Ok(Applied::Forgotten)
    );
    assert_eq!(
        s.apply(b"k", &put(b"v3", hlc.tick()), now + 1),
        Ok(Applied::Accepted)
    );
    // Other keys are not fenced.
    assert_eq!(
        s.apply(b"other", &put(b"o", older), now + 1),
        Ok(Applied::Accepted)
    );
}

#[test]
fn an_evicted_item_refuses_older_writes_of_its_key() {
    let (s, hlc, clock) = small_cluster_store(64 << 10, 256 << 10);
    let now = clock.now_secs();
    let older = hlc.tick();
    set(&s, &hlc, now, b"k", b"new", 0).unwrap();
    let mut i = 0;
    while holds(&s, now, b"k") {
        set(
            &s,
            &hlc,
            now,
            format!("fill{i}").as_bytes(),
            &[b'x'; 200],
            0,
        )
        .unwrap();
        i += 1;
    }
    assert_eq!(
        s.apply(b"k", &put(b"old", older), now),
        Ok(Applied::Forgotten)
    );
    assert!(!holds(&s, now, b"k"));
    // A local write needs no fence check: its version is newer than anything seen.
    set(&s, &hlc, now, b"k", b"again", 0).unwrap();
    assert_eq!(get(&s, now, b"k").unwrap().0, b"again");
}

#[test]
fn a_tombstone_collected_on_time_still_refuses_older_writes() {
    let (s, hlc, clock) = cluster_store();
    let now = clock.now_secs();
    let older = hlc.tick();
    set(&s, &hlc, now, b"k", b"v", 0).unwrap();
    s.mutate(b"k", now, &hlc, |_| (Mutation::Delete, ()))
        .unwrap();
    s.sweep(now + 600, 100);
    assert_eq!((s.stats().tombstones, s.stats().fences), (0, 1));
    assert_eq!(
        s.apply(b"k", &put(b"old", older), now + 600),
        Ok(Applied::Forgotten)
    );
}

#[test]
fn tombstones_over_their_budget_are_collected_oldest_first_and_still_fence() {
    // Room for about four tombstones per shard.
    let budget = 4 * 4 * (TOMBSTONE_OVERHEAD + 8) * 4 / 3;
    let (s, hlc, clock) = small_cluster_store(64 << 20, budget);
    let now = clock.now_secs();
    let older = hlc.tick();
    for i in 0..200 {
        let key = format!("gone{i:04}");
        s.mutate(key.as_bytes(), now, &hlc, |_| (Mutation::DeleteMissing, ()))
            .unwrap();
    }
    let st = s.stats();
    assert!(st.tombstones <= 4 * 5, "{st:?}");
    assert!(st.tombstone_bytes <= budget * 3 / 4 + 4 * (TOMBSTONE_OVERHEAD + 8));
    assert_eq!(st.tombstones + st.tombstones_collected, 200);
    // The newest are held; every delete, collected or not, still refuses an older write.
    assert!(s.state(now).iter().any(|(k, ..)| k == b"gone0199"));
    for i in 0..200 {
        let key = format!("gone{i:04}");
        let got = s.apply(key.as_bytes(), &put(b"old", older), now).unwrap();
        assert!(
            matches!(got, Applied::Behind | Applied::Forgotten),
            "{key}: {got:?}"
        );
    }
}

#[test]
fn deletes_of_keys_never_held_do_not_push_data_out() {
    let (s, hlc, clock) = small_cluster_store(64 << 10, 16 << 10);
    let now = clock.now_secs();
    for i in 0..300 {
        set(
            &s,
            &hlc,
            now,
            format!("item{i}").as_bytes(),
            &[b'v'; 100],
            0,
        )
        .unwrap();
    }
    let (items, used) = (s.stats().curr_items, s.used_bytes());
    assert_eq!(items, 300);
    for i in 0..20_000 {
        let key = format!("ghost{i}");
        s.mutate(key.as_bytes(), now, &hlc, |_| (Mutation::DeleteMissing, ()))
            .unwrap();
    }
    let st = s.stats();
    assert_eq!(
        (st.curr_items, st.evictions, s.used_bytes()),
        (300, 0, used)
    );
    assert!(st.tombstones > 0 && st.tombstones_collected > 0);
}

#[test]
fn tombstones_are_never_evicted_for_data() {
    let (s, hlc, clock) = small_cluster_store(64 << 10, 256 << 10);
    let now = clock.now_secs();
    let older = hlc.tick();
    set(&s, &hlc, now, b"k", b"v", 0).unwrap();
    s.mutate(b"k", now, &hlc, |_| (Mutation::Delete, ()))
        .unwrap();
    for i in 0..3000 {
        set(
            &s,
            &hlc,
            now,
            format!("fill{i}").as_bytes(),
            &[b'x'; 200],
            0,
        )
        .unwrap();
    }
    assert!(s.stats().evictions > 2000);
    assert_eq!(s.stats().tombstones, 1);
    assert_eq!(s.apply(b"k", &put(b"old", older), now), Ok(Applied::Behind));
}

#[test]
fn the_floor_trails_the_exact_fences_so_fresh_writes_of_new_keys_are_taken() {
    // 64 exact fences per shard (the least there is), thousands of evictions.
    let (s, hlc, clock) = small_cluster_store(32 << 10, 1);
    let now = clock.now_secs();
    let first = hlc.tick();
    for i in 0..5000 {
        set(
            &s,
            &hlc,
            now,
            format!("fill{i}").as_bytes(),
            &[b'x'; 100],
            0,
        )
        .unwrap();
    }
    let st = s.stats();
    assert!(st.evictions > 4000 && st.fences <= 4 * 64, "{st:?}");
    let floor = s.forgotten_floor();
    assert!(floor > first, "old forgets are covered by the floor");
    // A write older than the floor, of a key never seen here, is refused: it is below
    // what this node forgot, and absence is allowed.
    assert_eq!(
        s.apply(b"never-seen", &put(b"x", first), now),
        Ok(Applied::Forgotten)
    );
    // A peer's write made now, of a new key, is taken.
    assert_eq!(
        s.apply(b"fresh", &put(b"x", hlc.tick()), now),
        Ok(Applied::Accepted)
    );
    // A key held takes a newer write even when the floor is above both (refusing it would
    // leave this node with an older value than its peers).
    let held = hlc.tick();
    assert_eq!(s.apply(b"h", &put(b"1", held), now), Ok(Applied::Accepted));
    let newer = hlc.tick();
    s.raise_forgotten_floor(hlc.tick());
    assert_eq!(s.apply(b"h", &put(b"2", newer), now), Ok(Applied::Accepted));
    assert_eq!(get(&s, now, b"h").unwrap().0, b"2");
}

#[test]
fn a_newer_version_this_node_cannot_hold_drops_the_older_one() {
    let (s, hlc, clock) = cluster_store();
    let now = clock.now_secs();
    let v1 = hlc.tick();
    assert_eq!(
        s.apply(b"k", &put(b"small", v1), now),
        Ok(Applied::Accepted)
    );
    let huge = vec![b'x'; 2 << 20];
    let v2 = hlc.tick();
    assert_eq!(
        s.apply(b"k", &put(&huge, v2), now),
        Err(StoreError::TooLarge)
    );
    assert_eq!(get(&s, now, b"k"), None, "not the older value");
    assert_eq!(
        s.apply(b"k", &put(b"small", v1), now),
        Ok(Applied::Forgotten)
    );
    let v3 = hlc.tick();
    assert_eq!(s.apply(b"k", &put(b"v3", v3), now), Ok(Applied::Accepted));
}
