//! The text and binary dispatcher: each decoded [`Command`] becomes one call into the
//! operations layer ([`super::ops`]), where memcached's rules live once for every dialect,
//! and its [`Outcome`] goes back to the dialect's encoder. Meta commands go to
//! [`super::meta_dispatch`], which lowers them to the same operations. What is left here is
//! translation (which options a text or binary command means) and the commands that change
//! no item (stats, flush_all, version...).

use bytes::BytesMut;

use crate::key::Key;
use crate::protocol::{self, Command, Invalid, Outcome, Reply, Request, StoreMode};
use crate::store::{Flush, FlushMerge};

use super::ops::{self, ArithOp, DeleteOp, StoreOp};
use super::stats::Counter;

pub use super::ops::Ctx;

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
            let key = key.as_ref().map(Key::as_bytes);
            Some(ops::refuse_too_large(ctx, key, mode == StoreMode::Set))
        }
        Command::Delete { key, cas } => Some(delete(ctx, &key, cas)),
        Command::Arith {
            key,
            incr,
            delta,
            initial,
            cas,
        } => Some(arith(ctx, &key, incr, delta, initial, cas)),
        Command::Touch { key, exptime } => {
            let exptime = ctx.expiry(exptime);
            Some(ops::touch(ctx, key.as_bytes(), exptime))
        }
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
        Command::ClusterForget { name } => Some(cluster_forget(ctx, &name)),
        Command::Invalid(inv) => Some(Outcome::Invalid(inv)),
    };
    if let Some(outcome) = outcome {
        protocol::encode(&reply, &outcome, out);
    }
    if req.close {
        After::Close
    } else {
        After::Continue
    }
}

/// A text or binary store. A binary set, add or replace carrying a CAS is conditional on
/// it, as memcached's `process_bin_update` makes it (`NREAD_CAS`; with `-C` no CAS is held,
/// so none is); binary append/prepend keep their mode and check the CAS only against an
/// item that exists. Only a `set` that fails drops the old item, as in memcached.
fn store(
    ctx: &mut Ctx<'_>,
    mode: StoreMode,
    key: &Key,
    flags: u32,
    exptime: i64,
    value: &[u8],
    cas: u64,
) -> Outcome {
    let conditional = matches!(mode, StoreMode::Set | StoreMode::Add | StoreMode::Replace)
        && ctx.held_cas(cas) != 0;
    let op = StoreOp {
        mode: if conditional { StoreMode::Cas } else { mode },
        value,
        flags,
        exptime: ctx.expiry(exptime),
        cas,
        stale_ok: false,
        vivify: false,
        version: None,
        drop_on_failure: mode == StoreMode::Set,
    };
    ops::store(ctx, key.as_bytes(), &op).outcome
}

/// A text or binary delete; binary's CAS of 0 is none.
fn delete(ctx: &mut Ctx<'_>, key: &Key, cas: u64) -> Outcome {
    let op = DeleteOp {
        cas: (cas != 0).then_some(cas),
        ..DeleteOp::default()
    };
    ops::delete(ctx, key.as_bytes(), &op)
}

/// A text or binary incr/decr; binary's initial value creates a missing counter.
fn arith(
    ctx: &mut Ctx<'_>,
    key: &Key,
    incr: bool,
    delta: u64,
    initial: Option<(u64, i64)>,
    cas: u64,
) -> Outcome {
    let op = ArithOp {
        incr,
        delta,
        cas,
        create: initial.map(|(n, e)| (n, ctx.expiry(e))),
        touch: None,
        version: None,
    };
    ops::arith(ctx, key.as_bytes(), &op).outcome
}

/// `refresh_certs`: reloads the client TLS certificates for new connections; on failure
/// the ones in use stay, and the answer says why, as memcached's does.
/// `cluster forget <name>`: `OK`, or `CLIENT_ERROR` saying why nothing changed.
fn cluster_forget(ctx: &Ctx<'_>, name: &[u8]) -> Outcome {
    let Some(cluster) = ctx.shared.cluster.as_deref() else {
        return Outcome::Invalid(Invalid::Client("not a cluster node"));
    };
    let name = String::from_utf8_lossy(name);
    match cluster.forget(&name) {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Invalid(Invalid::Line(format!("CLIENT_ERROR {e}"))),
    }
}

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
        ops::get_and_touch(ctx, key.as_bytes(), exptime, |item| match item {
            Some(item) => protocol::encode_hit(reply, item, cas, out),
            None => protocol::encode_miss(reply, key, out),
        });
    }
    keys.len()
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
