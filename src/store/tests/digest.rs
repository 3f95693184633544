//! The bucket digests stay what they would be if recomputed from scratch, whatever
//! changes the store: local writes, deletes and touches, peers' writes and deletes merged
//! in, expiry (lazy and swept), eviction, tombstones collected for their budget or their
//! time, flushes (immediate and delayed), reconciliation's drops and a clear.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Set(u8, u8, u8),
    Delete(u8),
    Touch(u8, u8),
    /// A peer's write (value length) or delete (`None`) of key, its version this many ms
    /// from now (in the past or ahead).
    Remote(u8, Option<u8>, i16),
    Advance(u8),
    Sweep,
    Flush(u8),
    Fill(u8),
    Reconcile(u8),
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..24;
    prop_oneof![
        6 => (key.clone(), 0u8..200, 0u8..4).prop_map(|(k, n, t)| Op::Set(k, n, t)),
        2 => key.clone().prop_map(Op::Delete),
        2 => (key.clone(), 0u8..4).prop_map(|(k, t)| Op::Touch(k, t)),
        6 => (key.clone(), proptest::option::of(0u8..200), any::<i16>())
            .prop_map(|(k, n, d)| Op::Remote(k, n, d)),
        3 => (0u8..3).prop_map(Op::Advance),
        2 => Just(Op::Sweep),
        1 => (0u8..3).prop_map(Op::Flush),
        1 => (1u8..40).prop_map(Op::Fill),
        1 => key.prop_map(Op::Reconcile),
        1 => Just(Op::Clear),
    ]
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::new(T0));
    let hlc = Hlc::new(NodeId::new(1).unwrap(), clock.clone());
    // Small budgets, so that items are evicted and tombstones collected early.
    let s = Store::new(StoreConfig {
        mem_limit: 8 << 10,
        shards: 4,
        tombstone_ttl: 2,
        tombstone_mem: Some(2 << 10),
        ..StoreConfig::default()
    });
    let mut fill = 0u32;
    for op in ops {
        let now = clock.now_secs();
        let key = |k: u8| format!("key{k}").into_bytes();
        match op {
            Op::Set(k, n, ttl) => {
                let exptime = if ttl == 0 { 0 } else { now + u32::from(ttl) };
                let _ = set(&s, &hlc, now, &key(k), &vec![b'v'; usize::from(n)], exptime);
            }
            Op::Delete(k) => {
                s.mutate(&key(k), now, &hlc, |_| (Mutation::DeleteMissing, ()))
                    .unwrap();
            }
            Op::Touch(k, ttl) => {
                let exptime = if ttl == 0 { 0 } else { now + u32::from(ttl) };
                let touch = Mutation::Update {
                    exptime: Some(exptime),
                    set_bits: 0,
                    clear_bits: 0,
                    bump: true,
                    version: None,
                };
                s.mutate(&key(k), now, &hlc, |_| (touch, ())).unwrap();
            }
            Op::Remote(k, n, d) => {
                let ms = clock.now_ms().saturating_add_signed(i64::from(d));
                let version = Version(Version::at_unix_ms(ms).0 | 2);
                let value = vec![b'r'; usize::from(n.unwrap_or(0))];
                let m = match n {
                    Some(_) => Remote::Put {
                        value: &value,
                        flags: 0,
                        exptime: 0,
                        version,
                    },
                    None => Remote::Delete { version },
                };
                let _ = s.apply(&key(k), &m, now);
            }
            Op::Advance(secs) => clock.advance(std::time::Duration::from_secs(u64::from(secs))),
            Op::Sweep => {
                s.sweep(now, 64);
            }
            Op::Flush(delay) => {
                let f = if delay == 0 {
                    flush_now(&hlc)
                } else {
                    flush_at(&hlc, now + u32::from(delay))
                };
                s.flush(f, FlushMerge::Union, now);
            }
            Op::Fill(n) => {
                for _ in 0..n {
                    fill += 1;
                    let _ = set(
                        &s,
                        &hlc,
                        now,
                        format!("fill{fill}").as_bytes(),
                        &[b'f'; 100],
                        0,
                    );
                }
            }
            Op::Reconcile(k) => {
                let h = s.hash(&key(k));
                s.forget_where(now, |hash, _| hash == h);
            }
            Op::Clear => {
                s.clear();
            }
        }
        prop_assert!(
            s.digest() == s.digest_from_scratch(),
            "digest wrong after {:?}",
            op
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn digests_follow_every_change(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops)?;
    }
}

#[test]
fn equal_contents_have_equal_digests_and_one_version_apart_differ_in_one_bucket() {
    let (a, hlc, clock) = cluster_store();
    let (b, _, _) = cluster_store();
    let now = clock.now_secs();
    let v1 = hlc.tick();
    let v2 = hlc.tick();
    let put = |v| Remote::Put {
        value: b"x",
        flags: 0,
        exptime: 0,
        version: v,
    };
    // Different arrival orders, different per-process key hashes: the same digests.
    a.apply(b"k", &put(v1), now).unwrap();
    a.apply(b"k", &put(v2), now).unwrap();
    a.apply(b"j", &Remote::Delete { version: v1 }, now).unwrap();
    b.apply(b"j", &Remote::Delete { version: v1 }, now).unwrap();
    b.apply(b"k", &put(v2), now).unwrap();
    assert_eq!(a.digest(), b.digest());
    b.apply(b"k", &put(hlc.tick()), now).unwrap();
    let differ: Vec<usize> = (0..BUCKETS)
        .filter(|&i| a.digest()[i] != b.digest()[i])
        .collect();
    assert_eq!(differ, vec![bucket_of(key_hash(b"k"))]);
    let mut listed = Vec::new();
    let mut wanted = [false; BUCKETS];
    for &b in &differ {
        wanted[b] = true;
    }
    a.list_buckets(&wanted, |b, k, v| {
        assert_eq!(b, differ[0]);
        listed.push((k.to_vec(), v));
        true
    });
    assert_eq!(listed, vec![(b"k".to_vec(), v2)]);
}
