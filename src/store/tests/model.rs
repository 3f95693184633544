//! The store against a `HashMap` model, with time advancing, memory filling and flushes
//! (immediate and delayed; a standalone node's memcached semantics and a cluster node's set
//! union), on a standalone and on a cluster store.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Set(u8, Vec<u8>, u8),
    Delete(u8),
    Append(u8, Vec<u8>),
    Get(u8),
    Advance(u8),
    /// `flush_all` with this delay in seconds (0: at once).
    Flush(u8),
    /// Writes this many filler items of their own keys, pushing memory.
    Fill(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..16;
    let val = proptest::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        6 => (key.clone(), val.clone(), 0u8..5).prop_map(|(k, v, t)| Op::Set(k, v, t)),
        2 => key.clone().prop_map(Op::Delete),
        2 => (key.clone(), val).prop_map(|(k, v)| Op::Append(k, v)),
        6 => key.prop_map(Op::Get),
        3 => (0u8..3).prop_map(Op::Advance),
        1 => prop_oneof![Just(0u8), 1u8..6].prop_map(Op::Flush),
        1 => (1u8..30).prop_map(Op::Fill),
    ]
}

/// What the store must hold: per key, its value, expiry time and the second it was
/// written; and the flush times pending.
#[derive(Default)]
struct Model {
    items: HashMap<u8, (Vec<u8>, u32, u32)>,
    pending: Vec<u32>,
}

impl Model {
    /// Fires due flushes (each removes what was written before its second) and expires.
    fn advance_to(&mut self, now: u32) {
        for at in self.pending.iter().filter(|&&at| at <= now) {
            self.items.retain(|_, (_, _, written)| *written >= *at);
        }
        self.pending.retain(|&at| at > now);
        self.items.retain(|_, (_, e, _)| *e == 0 || *e > now);
    }

    fn flush(&mut self, at: Option<u32>, merge: FlushMerge) {
        if merge == FlushMerge::Replace {
            self.pending.clear();
        }
        match at {
            None => self.items.clear(),
            Some(at) => self.pending.push(at),
        }
    }
}

/// Runs `ops` against a store and the model. With a small memory the store may have
/// evicted what the model holds (absence is allowed), never hold anything else.
fn run(ops: Vec<Op>, cluster: bool, mem: usize) -> Result<(), TestCaseError> {
    let (s, hlc, clock) = if cluster {
        let (s, hlc, clock) = cluster_store();
        drop(s);
        let cfg = StoreConfig {
            mem_limit: mem,
            shards: 4,
            tombstone_ttl: 600,
            ..StoreConfig::default()
        };
        (Store::new(cfg), hlc, clock)
    } else {
        store(mem, true)
    };
    let merge = if cluster {
        FlushMerge::Union
    } else {
        FlushMerge::Replace
    };
    let mut model = Model::default();
    let mut fill = 0u32;
    for op in ops {
        let now = clock.now_secs();
        model.advance_to(now);
        match op {
            Op::Set(k, v, ttl) => {
                let exptime = if ttl == 0 { 0 } else { now + u32::from(ttl) };
                set(&s, &hlc, now, &[k], &v, exptime).unwrap();
                model.items.insert(k, (v, exptime, now));
            }
            Op::Delete(k) => {
                s.mutate(&[k], now, &hlc, |_| (Mutation::Delete, ()))
                    .unwrap();
                model.items.remove(&k);
            }
            Op::Append(k, v) => {
                s.mutate(&[k], now, &hlc, |cur| match cur {
                    Some(c) => {
                        let put = Put {
                            value: NewValue::Append(&v),
                            flags: 0,
                            exptime: c.exptime,
                            bits: 0,
                            version: None,
                        };
                        (Mutation::Put(put), ())
                    }
                    None => (Mutation::Keep, ()),
                })
                .unwrap();
                if let Some((value, _, written)) = model.items.get_mut(&k) {
                    value.extend_from_slice(&v);
                    *written = now;
                }
            }
            Op::Get(k) => {
                let got = get(&s, now, &[k]).map(|(v, _)| v);
                let want = model.items.get(&k).map(|(v, ..)| v.clone());
                prop_assert!(got.is_none() || got == want, "{:?} vs {:?}", got, want);
            }
            Op::Advance(secs) => clock.advance(std::time::Duration::from_secs(u64::from(secs))),
            Op::Flush(delay) => {
                let at = (delay > 0).then(|| now + u32::from(delay));
                let f = match at {
                    Some(at) => flush_at(&hlc, at),
                    None => flush_now(&hlc),
                };
                s.flush(f, merge, now);
                model.flush(at, merge);
            }
            Op::Fill(n) => {
                for _ in 0..n {
                    fill += 1;
                    let key = format!("fill{fill}");
                    set(&s, &hlc, now, key.as_bytes(), &[b'f'; 100], 0).unwrap();
                }
            }
        }
        prop_assert!(s.used_bytes() <= mem);
        prop_assert_eq!(s.stats().bytes, s.used_bytes());
    }
    let now = clock.now_secs();
    model.advance_to(now);
    let mut dump: Vec<_> = s
        .dump(now)
        .into_iter()
        .filter(|(k, ..)| k.len() == 1)
        .map(|(k, v, ..)| (k[0], v))
        .collect();
    dump.sort();
    let mut expect: Vec<_> = model.items.into_iter().map(|(k, (v, ..))| (k, v)).collect();
    expect.sort();
    if s.stats().evictions == 0 {
        prop_assert_eq!(dump, expect);
    } else {
        prop_assert!(
            dump.iter().all(|e| expect.contains(e)),
            "{:?} ⊄ {:?}",
            dump,
            expect
        );
    }
    Ok(())
}

proptest! {
    /// With memory to spare: exactly the model.
    #[test]
    fn matches_hashmap_model(ops in proptest::collection::vec(op(), 1..300), cluster in any::<bool>()) {
        run(ops, cluster, 64 << 20)?;
    }

    /// With memory filling: a subset of the model, never another value.
    #[test]
    fn under_memory_pressure_holds_a_subset_of_the_model(ops in proptest::collection::vec(op(), 1..300), cluster in any::<bool>()) {
        run(ops, cluster, 3 << 10)?;
    }
}
