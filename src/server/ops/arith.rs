//! incr/decr, for every dialect, as memcached's `do_add_delta` runs them; creating a
//! missing counter (binary's initial value, meta `N` and `J`) and meta's new TTL (`T`) are
//! options.

use crate::clock::Version;
use crate::protocol::{self, Outcome};
use crate::store::{ItemRef, Mutation, NewValue, Put, StoreError};

use super::{Counter, Ctx};

/// One incr/decr request.
#[derive(Debug, Clone, Copy)]
pub struct ArithOp {
    pub incr: bool,
    pub delta: u64,
    /// The counter must have this CAS; 0 for none.
    pub cas: u64,
    /// Create a missing counter with this value and expiry (absolute) instead of answering
    /// `NotFound`.
    pub create: Option<(u64, u32)>,
    /// A new expiry (absolute) for an existing counter: meta `T`.
    pub touch: Option<u32>,
    /// Meta `E`: the counter's new version, instead of the clock's.
    pub version: Option<Version>,
}

/// What an incr/decr did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// `Number` (the new value, the CAS clients see), `NotFound`, `Exists`, `NonNumeric`,
    /// `TooLarge` or `OutOfMemory`.
    pub outcome: Outcome,
    /// The counter was missing and this request created it (or tried to, when it failed).
    pub created: bool,
    /// The counter's expiry before this request (0 for one it created): what a meta `t`
    /// placed before the `T` or `N` that changes it shows.
    pub exptime_before: u32,
}

/// Runs an incr/decr on `key`.
pub fn arith(ctx: &mut Ctx<'_>, key: &[u8], op: &ArithOp) -> Counted {
    let shared = ctx.shared;
    let c = &*ctx;
    let mut created = false;
    let mut exptime_before = 0;
    let result = shared.store.mutate(key, c.now, &shared.hlc, |cur| {
        created = cur.is_none() && op.create.is_some();
        exptime_before = cur.map_or(0, |i| i.exptime);
        decide(op, cur.map(|i| c.visible(i)))
    });
    let outcome = match result {
        Ok((Outcome::Number(n, _), v)) => Outcome::Number(n, ctx.shown(v)),
        Ok((o, _)) => o,
        Err(StoreError::TooLarge) => Outcome::TooLarge,
        Err(StoreError::OutOfMemory) => Outcome::OutOfMemory,
    };
    // As in memcached: a hit is a counter found and changed, a miss one not found and not
    // created; a created counter, a CAS mismatch and a non-number count as neither.
    let counter = match (&outcome, created) {
        (Outcome::Number(..), false) => Some((Counter::IncrHits, Counter::DecrHits)),
        (Outcome::NotFound, _) => Some((Counter::IncrMisses, Counter::DecrMisses)),
        _ => None,
    };
    if let Some((incr, decr)) = counter {
        ctx.bump(if op.incr { incr } else { decr });
    }
    Counted {
        outcome,
        created,
        exptime_before,
    }
}

/// memcached's `do_add_delta` on the current item (its CAS as clients see it).
fn decide(op: &ArithOp, cur: Option<ItemRef<'_>>) -> (Mutation<'static>, Outcome) {
    let Some(cur) = cur else {
        return match op.create {
            Some((n, exptime)) => {
                let put = Put {
                    value: NewValue::Owned(n.to_string().into_bytes()),
                    flags: 0,
                    exptime,
                    bits: 0,
                    version: op.version,
                };
                (Mutation::Put(put), Outcome::Number(n, Version::NONE))
            }
            None => (Mutation::Keep, Outcome::NotFound),
        };
    };
    // An empty value is no number, whatever the CAS says.
    if cur.value.is_empty() {
        return (Mutation::Keep, Outcome::NonNumeric);
    }
    if op.cas != 0 && cur.version.0 != op.cas {
        return (Mutation::Keep, Outcome::Exists);
    }
    let Some(n) = apply_delta(cur.value, op.incr, op.delta) else {
        return (Mutation::Keep, Outcome::NonNumeric);
    };
    let value = counter_bytes(n, cur.value.len());
    // A result that fits is rewritten in place (space-padded), so the item keeps its
    // serve-stale state; a longer one is a new item.
    let in_place = value.len() == cur.value.len();
    let put = Put {
        value: NewValue::Owned(value),
        flags: cur.flags,
        exptime: op.touch.unwrap_or(cur.exptime),
        bits: if in_place { cur.bits } else { 0 },
        version: op.version,
    };
    (Mutation::Put(put), Outcome::Number(n, Version::NONE))
}

/// memcached's `safe_strtoull` applied to a stored value: optional leading whitespace,
/// digits, then the end or whitespace.
pub fn parse_counter(value: &[u8]) -> Option<u64> {
    let start = value.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = &value[start..];
    let rest = rest.strip_prefix(b"+").unwrap_or(rest);
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest.get(digits).is_some_and(|b| !b.is_ascii_whitespace()) {
        return None;
    }
    protocol::parse_u64(&rest[..digits])
}

/// incr/decr on a stored value: `None` when it is not a number; incr wraps at 2^64, decr
/// stops at 0, as in memcached.
pub fn apply_delta(value: &[u8], incr: bool, delta: u64) -> Option<u64> {
    let old = parse_counter(value)?;
    Some(if incr {
        old.wrapping_add(delta)
    } else {
        old.saturating_sub(delta)
    })
}

/// The digits of an incr/decr result, padded with spaces to the old length when shorter, as
/// memcached does when it rewrites a counter in place.
pub fn counter_bytes(n: u64, old_len: usize) -> Vec<u8> {
    let mut digits = n.to_string().into_bytes();
    if digits.len() < old_len {
        digits.resize(old_len, b' ');
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_like_memcached() {
        assert_eq!(parse_counter(b"12"), Some(12));
        assert_eq!(parse_counter(b"9 "), Some(9));
        assert_eq!(parse_counter(b" 7"), Some(7));
        assert_eq!(parse_counter(b"12a"), None);
        assert_eq!(parse_counter(b""), None);
        assert_eq!(parse_counter(b"18446744073709551616"), None);
        assert_eq!(counter_bytes(9, 2), b"9 ");
        assert_eq!(counter_bytes(100, 2), b"100");
    }
}
