//! The dispatcher: memcached's command semantics, written once against the store.
//!
//! Every dialect's request arrives here as a [`Command`]; each command becomes a closure run
//! by [`Store::mutate`] or [`Store::read`] under one shard lock, and its [`Outcome`] goes back
//! to the dialect's encoder. This is the only module that joins protocol to store.

use bytes::BytesMut;

use crate::clock::Version;
use crate::key::Key;
use crate::protocol::{self, Command, Invalid, Outcome, Reply, Request, StoreMode};
use crate::store::{Flush, FlushMerge, ItemRef, Mutation, NewValue, Put, StoreError};

use super::stats::{Counter, LocalCounters};
use super::Shared;

/// memcached's REALTIME_MAXDELTA: expiry times up to 30 days are relative.
const RELATIVE_MAX: i64 = 60 * 60 * 24 * 30;

/// What the connection must do after a request.
#[derive(Debug, Clone)]
pub enum After {
    Continue,
    Close,
    /// The answer so far passed [`ANSWER_CHUNK`] bytes: write it out, then run this, the
    /// rest of the request (a multi-key get), so that one request cannot make the server
    /// buffer without bound.
    More(Box<Request>),
}

/// How much answer a connection may hold before writing it out.
pub const ANSWER_CHUNK: usize = 256 * 1024;

/// Everything a command needs: the shared server state, the time of this batch of requests
/// and the connection's counters.
pub struct Ctx<'a> {
    pub shared: &'a Shared,
    /// Unix seconds.
    pub now: u32,
    pub counters: &'a mut LocalCounters,
}

impl Ctx<'_> {
    /// memcached's `realtime()`: 0 is never; negative is already expired; up to 30 days is
    /// relative to now; anything larger is an absolute unix time.
    pub fn expiry(&self, exptime: i64) -> u32 {
        match exptime {
            0 => 0,
            e if e < 0 => 1,
            e if e > RELATIVE_MAX => u32::try_from(e).unwrap_or(u32::MAX),
            e => self.now.saturating_add(e as u32),
        }
    }

    fn bump(&mut self, c: Counter) {
        self.counters.bump(c);
    }

    /// The item as clients may see it: with `-C` its CAS reads as 0 (memcached's items have
    /// no CAS then), although the version is still kept for replication.
    pub fn visible<'i>(&self, item: ItemRef<'i>) -> ItemRef<'i> {
        if self.shared.config.cas_enabled {
            item
        } else {
            ItemRef {
                version: Version::NONE,
                ..item
            }
        }
    }

    fn visible_outcome(&self, outcome: Outcome) -> Outcome {
        if self.shared.config.cas_enabled {
            return outcome;
        }
        match outcome {
            Outcome::Stored(_) => Outcome::Stored(Version::NONE),
            Outcome::Touched(_) => Outcome::Touched(Version::NONE),
            Outcome::Number(n, _) => Outcome::Number(n, Version::NONE),
            other => other,
        }
    }
}

/// Runs one request and writes its answer to `out`. Returns what the connection must do
/// next; for a multi-key get that answered only part of its keys, the rest to run.
pub fn execute(ctx: &mut Ctx<'_>, req: Request, out: &mut BytesMut) -> After {
    let reply = req.reply;
    let outcome = match req.command {
        Command::Get {
            mut keys,
            touch,
            cas,
        } => {
            let done = get(ctx, &reply, &keys, touch, cas, out);
            if done < keys.len() {
                let rest = keys.split_off(done);
                let command = Command::Get {
                    keys: rest,
                    touch,
                    cas,
                };
                return After::More(Box::new(Request {
                    command,
                    reply,
                    close: req.close,
                    swallow: 0,
                }));
            }
            protocol::encode_end(&reply, out);
            None
        }
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            value,
            cas,
        } => Some(store(ctx, mode, &key, flags, exptime, &value, cas)),
        Command::TooLarge { mode, key } => {
            ctx.bump(Counter::StoreTooLarge);
            if let (StoreMode::Set, Some(key)) = (mode, key) {
                drop_after_failed_set(ctx, key.as_bytes());
            }
            Some(Outcome::TooLarge)
        }
        Command::Delete { key, cas } => Some(delete(ctx, &key, cas)),
        Command::Arith {
            key,
            incr,
            delta,
            initial,
            cas,
        } => Some(arith(ctx, &key, incr, delta, initial, cas)),
        Command::Touch { key, exptime } => Some(touch(ctx, &key, exptime)),
        Command::Flush { delay } => Some(flush(ctx, delay)),
        Command::Version => Some(Outcome::Version(super::VERSION)),
        Command::Verbosity => Some(Outcome::Ok),
        Command::Stats { group } => match group.as_deref().and_then(cachedump_args) {
            // Its answer is ITEM lines, not STAT lines: text only, as in memcached.
            Some(args) if matches!(reply, Reply::Text { .. }) => {
                super::dump::cachedump(ctx, args, out);
                None
            }
            _ => Some(super::report::stats(ctx, group.as_deref())),
        },
        Command::MetaDump { items, resume } => {
            if let Some(next) = super::dump::metadump(ctx, items, resume, out) {
                let command = Command::MetaDump {
                    items,
                    resume: next,
                };
                return After::More(Box::new(Request {
                    command,
                    reply,
                    close: req.close,
                    swallow: 0,
                }));
            }
            None
        }
        Command::Noop => Some(Outcome::Ok),
        Command::Quit => Some(Outcome::Ok),
        Command::Shutdown => {
            if ctx.shared.config.shutdown_enabled {
                ctx.shared.request_shutdown();
                return After::Close;
            }
            Some(Outcome::Invalid(Invalid::Raw(
                "SERVER_ERROR: shutdown not enabled",
            )))
        }
        Command::Meta(cmd) => {
            ctx.bump(Counter::CmdMeta);
            let Reply::Meta(meta_reply) = &reply else {
                unreachable_reply(out);
                return After::Close;
            };
            return super::meta_dispatch::execute(ctx, cmd, meta_reply, out);
        }
        Command::RefreshCerts => Some(refresh_certs(ctx)),
        Command::Invalid(inv) => Some(Outcome::Invalid(inv)),
    };
    if let Some(outcome) = outcome {
        protocol::encode(&reply, &ctx.visible_outcome(outcome), out);
    }
    if req.close {
        After::Close
    } else {
        After::Continue
    }
}

/// `refresh_certs`: reloads the client TLS certificates for new connections; on failure
/// the ones in use stay, and the answer says why, as memcached's does.
fn refresh_certs(ctx: &Ctx<'_>) -> Outcome {
    let Some(tls) = &ctx.shared.tls else {
        return Outcome::Invalid(Invalid::Raw("Error TLS not enabled"));
    };
    match tls.refresh(ctx.shared.clock().now_ms()) {
        Ok(()) => {
            tracing::info!("refresh_certs: client TLS certificates reloaded");
            Outcome::Ok
        }
        Err(e) => {
            tracing::error!("refresh_certs: the certificates in use are kept: error {e}");
            Outcome::Invalid(Invalid::Line(format!("Error {e}")))
        }
    }
}

/// The arguments of `stats cachedump ...` (everything after the word), if that is the
/// group asked for.
fn cachedump_args(group: &[u8]) -> Option<&[u8]> {
    let rest = group.strip_prefix(b"cachedump")?;
    (rest.is_empty() || rest[0] == b' ').then_some(rest)
}

/// A meta command decoded with a non-meta reply is a decoder bug; answer instead of panic.
fn unreachable_reply(out: &mut BytesMut) {
    out.extend_from_slice(b"SERVER_ERROR internal error\r\n");
}

/// Answers the keys in order and returns how many it answered: all of them, unless the
/// answer passed [`ANSWER_CHUNK`] first (at least one key is always answered).
fn get(
    ctx: &mut Ctx<'_>,
    reply: &Reply,
    keys: &[Key],
    touch: Option<i64>,
    cas: bool,
    out: &mut BytesMut,
) -> usize {
    let shared = ctx.shared;
    let exptime = touch.map(|t| ctx.expiry(t));
    for (i, key) in keys.iter().enumerate() {
        if out.len() >= ANSWER_CHUNK && i > 0 {
            return i;
        }
        let Some(exptime) = exptime else {
            ctx.bump(Counter::CmdGet);
            let hit = shared
                .store
                .read(key.as_bytes(), ctx.now, true, |item| match item {
                    Some(item) => {
                        protocol::encode_hit(reply, &ctx.visible(item), cas, out);
                        true
                    }
                    None => {
                        protocol::encode_miss(reply, key, out);
                        false
                    }
                });
            ctx.bump(if hit {
                Counter::GetHits
            } else {
                Counter::GetMisses
            });
            continue;
        };
        // gat/gats and binary touch count as touches, not gets, as in memcached. The item is
        // answered as found, under the same lock as the touch: even a touch into the past
        // returns it once, as memcached does, before it is gone.
        ctx.bump(Counter::CmdTouch);
        let touched = shared
            .store
            .fetch_mutate(key.as_bytes(), ctx.now, &shared.hlc, |cur| match cur {
                Some(item) => {
                    // In a cluster the touch takes a new version, chosen here so that the
                    // CAS answered is the item's from now on (a `gats` then `cas` works).
                    let version = shared.replicated().then(|| shared.hlc.tick());
                    let shown = ItemRef {
                        exptime,
                        version: version.unwrap_or(item.version),
                        ..ctx.visible(item)
                    };
                    protocol::encode_hit(reply, &shown, cas, out);
                    (touch_to(shared, exptime, version), true, true)
                }
                None => {
                    protocol::encode_miss(reply, key, out);
                    (Mutation::Keep, false, false)
                }
            });
        let hit = matches!(touched, Ok((true, _)));
        ctx.bump(if hit {
            Counter::TouchHits
        } else {
            Counter::TouchMisses
        });
    }
    keys.len()
}

/// A touch: a new expiry. On a standalone node the CAS stays, as in memcached (so `gets`,
/// `touch`, `cas` works); once writes replicate, a touch must carry a new version to win
/// by last-writer-wins everywhere (DESIGN.md section 2), and the CAS changes with it.
pub fn touch_mutation(shared: &Shared, exptime: u32) -> Mutation<'static> {
    touch_to(shared, exptime, None)
}

/// [`touch_mutation`] with the new version already chosen (`None`: the store ticks).
fn touch_to(shared: &Shared, exptime: u32, version: Option<Version>) -> Mutation<'static> {
    Mutation::Update {
        exptime: Some(exptime),
        set_bits: 0,
        clear_bits: 0,
        bump: shared.replicated(),
        version,
    }
}

/// memcached removes the old value when a set fails (too large, or no memory with `-M`)
/// rather than let a stale value survive a write the client made.
pub fn drop_after_failed_set(ctx: &Ctx<'_>, key: &[u8]) {
    let _ = ctx
        .shared
        .store
        .mutate(key, ctx.now, &ctx.shared.hlc, |_| (Mutation::Delete, ()));
}

/// Whether a storage request is conditional on the item's CAS: the text `cas` command, or
/// any binary set/add/replace/append/prepend carrying a nonzero CAS.
fn checks_cas(mode: StoreMode, cas: u64) -> bool {
    mode == StoreMode::Cas || cas != 0
}

/// The storage decision shared by every dialect: given the current item, what to write and
/// what to answer.
pub fn store_decision<'v>(
    mode: StoreMode,
    cur: Option<ItemRef<'_>>,
    value: &'v [u8],
    flags: u32,
    exptime: u32,
    cas: u64,
) -> (Mutation<'v>, Outcome) {
    let put = |value| {
        Mutation::Put(Put {
            value,
            flags,
            exptime,
            bits: 0,
            version: None,
        })
    };
    if checks_cas(mode, cas) {
        let Some(cur) = cur else {
            return (Mutation::Keep, Outcome::NotFound);
        };
        if cur.version.0 != cas {
            return (Mutation::Keep, Outcome::Exists);
        }
    }
    match (mode, cur) {
        (StoreMode::Add, Some(_)) if !checks_cas(mode, cas) => {
            (Mutation::Keep, Outcome::NotStored { exists: true })
        }
        (StoreMode::Replace | StoreMode::Append | StoreMode::Prepend, None) => {
            (Mutation::Keep, Outcome::NotStored { exists: false })
        }
        (StoreMode::Append, Some(cur)) => (
            Mutation::Put(Put {
                value: NewValue::Append(value),
                flags: cur.flags,
                exptime: cur.exptime,
                bits: 0,
                version: None,
            }),
            Outcome::Stored(Version::NONE),
        ),
        (StoreMode::Prepend, Some(cur)) => (
            Mutation::Put(Put {
                value: NewValue::Prepend(value),
                flags: cur.flags,
                exptime: cur.exptime,
                bits: 0,
                version: None,
            }),
            Outcome::Stored(Version::NONE),
        ),
        _ => (put(NewValue::Bytes(value)), Outcome::Stored(Version::NONE)),
    }
}

fn store(
    ctx: &mut Ctx<'_>,
    mode: StoreMode,
    key: &Key,
    flags: u32,
    exptime: i64,
    value: &[u8],
    cas: u64,
) -> Outcome {
    ctx.bump(Counter::CmdSet);
    let shared = ctx.shared;
    let exptime = ctx.expiry(exptime);
    if shared
        .store
        .too_large(key.as_bytes().len(), value.len(), flags)
    {
        ctx.bump(Counter::StoreTooLarge);
        if mode == StoreMode::Set {
            drop_after_failed_set(ctx, key.as_bytes());
        }
        return Outcome::TooLarge;
    }
    let cas_disabled = !shared.config.cas_enabled && checks_cas(mode, cas);
    let result = shared
        .store
        .mutate(key.as_bytes(), ctx.now, &shared.hlc, |cur| {
            if cas_disabled {
                // With -C items have no CAS, so a CAS condition can never hold.
                let outcome = if cur.is_some() {
                    Outcome::Exists
                } else {
                    Outcome::NotFound
                };
                return (Mutation::Keep, outcome);
            }
            store_decision(mode, cur, value, flags, exptime, cas)
        });
    let outcome = match result {
        Ok((Outcome::Stored(_), v)) => Outcome::Stored(v),
        Ok((o, _)) => o,
        // An append that would outgrow the item limit is NOT_STORED in memcached.
        Err(StoreError::TooLarge) if matches!(mode, StoreMode::Append | StoreMode::Prepend) => {
            Outcome::NotStored { exists: false }
        }
        Err(StoreError::TooLarge) => Outcome::TooLarge,
        Err(StoreError::OutOfMemory) => {
            ctx.bump(Counter::StoreNoMemory);
            if mode == StoreMode::Set {
                drop_after_failed_set(ctx, key.as_bytes());
            }
            Outcome::OutOfMemory
        }
    };
    if checks_cas(mode, cas) {
        ctx.bump(match outcome {
            Outcome::Stored(_) => Counter::CasHits,
            Outcome::Exists => Counter::CasBadval,
            _ => Counter::CasMisses,
        });
    }
    outcome
}

fn delete(ctx: &mut Ctx<'_>, key: &Key, cas: u64) -> Outcome {
    let shared = ctx.shared;
    let miss = absent_delete(shared);
    let result = shared
        .store
        .mutate(key.as_bytes(), ctx.now, &shared.hlc, |cur| {
            match cur.map(|c| ctx.visible(c)) {
                None if cas == 0 => (miss, Outcome::NotFound),
                None => (Mutation::Keep, Outcome::NotFound),
                Some(cur) if cas != 0 && cur.version.0 != cas => (Mutation::Keep, Outcome::Exists),
                Some(_) => (Mutation::Delete, Outcome::Deleted),
            }
        });
    let outcome = result.map_or(Outcome::NotFound, |(o, _)| o);
    ctx.bump(if outcome == Outcome::Deleted {
        Counter::DeleteHits
    } else {
        Counter::DeleteMisses
    });
    outcome
}

/// What a delete of a key this node does not hold does. Standalone: nothing. In a cluster
/// it still writes (and replicates) a tombstone while answering `NOT_FOUND`: the key may be
/// missing here only because this node evicted it, or because the write that created it is
/// still on its way, and a client's delete must not leave the key alive on the peers.
pub fn absent_delete(shared: &Shared) -> Mutation<'static> {
    if shared.replicated() {
        Mutation::DeleteMissing
    } else {
        Mutation::Keep
    }
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

fn arith(
    ctx: &mut Ctx<'_>,
    key: &Key,
    incr: bool,
    delta: u64,
    initial: Option<(u64, i64)>,
    cas: u64,
) -> Outcome {
    let shared = ctx.shared;
    let initial = initial.map(|(n, e)| (n, ctx.expiry(e)));
    let result = shared
        .store
        .mutate(key.as_bytes(), ctx.now, &shared.hlc, |cur| {
            let Some(cur) = cur else {
                return match initial {
                    Some((n, exptime)) => (
                        Mutation::Put(Put {
                            value: NewValue::Owned(n.to_string().into_bytes()),
                            flags: 0,
                            exptime,
                            bits: 0,
                            version: None,
                        }),
                        Outcome::Number(n, Version::NONE),
                    ),
                    None => (Mutation::Keep, Outcome::NotFound),
                };
            };
            if cas != 0 && ctx.visible(cur).version.0 != cas {
                return (Mutation::Keep, Outcome::Exists);
            }
            let Some(n) = apply_delta(cur.value, incr, delta) else {
                return (Mutation::Keep, Outcome::NonNumeric);
            };
            let put = Put {
                value: NewValue::Owned(counter_bytes(n, cur.value.len())),
                flags: cur.flags,
                exptime: cur.exptime,
                bits: 0,
                version: None,
            };
            (Mutation::Put(put), Outcome::Number(n, Version::NONE))
        });
    let outcome = match result {
        Ok((Outcome::Number(n, _), v)) => Outcome::Number(n, v),
        Ok((o, _)) => o,
        Err(StoreError::TooLarge) => Outcome::TooLarge,
        Err(StoreError::OutOfMemory) => Outcome::OutOfMemory,
    };
    let hit = matches!(
        outcome,
        Outcome::Number(..) | Outcome::NonNumeric | Outcome::Exists
    );
    ctx.bump(match (incr, hit) {
        (true, true) => Counter::IncrHits,
        (true, false) => Counter::IncrMisses,
        (false, true) => Counter::DecrHits,
        (false, false) => Counter::DecrMisses,
    });
    outcome
}

fn touch(ctx: &mut Ctx<'_>, key: &Key, exptime: i64) -> Outcome {
    ctx.bump(Counter::CmdTouch);
    let shared = ctx.shared;
    let exptime = ctx.expiry(exptime);
    let result = shared
        .store
        .mutate(key.as_bytes(), ctx.now, &shared.hlc, |cur| match cur {
            Some(_) => (touch_mutation(shared, exptime), true),
            None => (Mutation::Keep, false),
        });
    match result {
        Ok((true, v)) => {
            ctx.bump(Counter::TouchHits);
            Outcome::Touched(v)
        }
        _ => {
            ctx.bump(Counter::TouchMisses);
            Outcome::NotFound
        }
    }
}

fn flush(ctx: &mut Ctx<'_>, delay: i64) -> Outcome {
    let shared = ctx.shared;
    if !shared.config.flush_enabled {
        return Outcome::Invalid(Invalid::Client("flush_all not allowed"));
    }
    ctx.bump(Counter::CmdFlush);
    // A delayed flush removes what was written before its time comes: its barrier is the
    // first version of that second. Its own version is an ordinary one, so that peers take
    // it however far ahead its time is (DESIGN.md section 2).
    let at_ms = if delay > 0 {
        u64::from(ctx.expiry(delay)) * 1000
    } else {
        0
    };
    let flush = Flush {
        issued: shared.hlc.tick(),
        at_ms,
    };
    match &shared.outbox {
        Some(outbox) => {
            shared.store.flush(flush, FlushMerge::Union, ctx.now);
            outbox.record_flush(flush);
        }
        None => shared.store.flush(flush, FlushMerge::Replace, ctx.now),
    }
    Outcome::Ok
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
