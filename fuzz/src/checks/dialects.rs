//! Target `dialects`: one operation, written in text, meta and binary, must decode to the
//! same command in each (the dialects share one command model, DESIGN.md section 2). The
//! operation is built from the input; the check renders it three ways, decodes each
//! rendering as a fresh connection would, and compares what each decoded to with the
//! operation itself.
//!
//! A key that is not printable is written only where it can be: meta (base64, `b`) and
//! binary; text `delete` has no CAS, so a delete with one is meta and binary only. Writes
//! may be quiet: text `noreply`, meta `q`, binary's quiet opcodes.

use bytes::BytesMut;
use meshcached::protocol::binary::consts::*;
use meshcached::protocol::meta::{MetaCommand, MetaGet};
use meshcached::protocol::stream::ClientDecoder;
use meshcached::protocol::{Command, Reply, Request, StoreMode};

use super::input::Input;

/// An operation, in the terms every dialect can express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Store {
        mode: StoreMode,
        key: Vec<u8>,
        flags: u32,
        exptime: i64,
        value: Vec<u8>,
        cas: u64,
        quiet: bool,
    },
    Get {
        key: Vec<u8>,
        touch: Option<i64>,
    },
    Touch {
        key: Vec<u8>,
        exptime: i64,
    },
    Delete {
        key: Vec<u8>,
        cas: u64,
        quiet: bool,
    },
    Arith {
        key: Vec<u8>,
        incr: bool,
        delta: u64,
        quiet: bool,
    },
}

const MODES: [StoreMode; 5] = [
    StoreMode::Set,
    StoreMode::Add,
    StoreMode::Replace,
    StoreMode::Append,
    StoreMode::Prepend,
];

/// The operation the input describes, and whether its key is printable.
fn op(input: &mut Input<'_>) -> (Op, bool) {
    let printable = input.bool();
    let raw = input.string(250);
    let key: Vec<u8> = if printable {
        raw.iter().map(|&b| 0x21 + b % 94).collect()
    } else {
        // Its base64 form must fit memcached's 250-byte key token.
        raw[..raw.len().min(186)].to_vec()
    };
    let key = if key.is_empty() { b"k".to_vec() } else { key };
    // Binary expiry times are unsigned 32-bit; text and meta ones are C ints.
    let exptime = i64::from(input.u32() & 0x7fff_ffff);
    // Text `noreply`, meta `q`, binary's quiet opcodes.
    let quiet = input.bool();
    let op = match input.u8() % 11 {
        m @ 0..=4 => {
            let mode = MODES[usize::from(m)];
            let appending = matches!(mode, StoreMode::Append | StoreMode::Prepend);
            let flags = input.u32();
            let cas = if mode == StoreMode::Set {
                input.u64()
            } else {
                0
            };
            Op::Store {
                mode,
                key,
                // Append and prepend keep the item's flags and expiry.
                flags: if appending { 0 } else { flags },
                exptime: if appending { 0 } else { exptime },
                value: input.string(300).to_vec(),
                cas,
                quiet,
            }
        }
        5 => Op::Get { key, touch: None },
        6 => Op::Get {
            key,
            touch: Some(exptime),
        },
        7 => Op::Touch { key, exptime },
        8 => Op::Delete {
            key,
            cas: if input.bool() { input.u64() } else { 0 },
            quiet,
        },
        n => Op::Arith {
            key,
            incr: n == 9,
            delta: input.u64(),
            quiet,
        },
    };
    (op, printable)
}

fn key_of(op: &Op) -> &[u8] {
    match op {
        Op::Store { key, .. }
        | Op::Get { key, .. }
        | Op::Touch { key, .. }
        | Op::Delete { key, .. }
        | Op::Arith { key, .. } => key,
    }
}

fn text(op: &Op) -> Option<Vec<u8>> {
    let key = String::from_utf8(key_of(op).to_vec()).ok()?;
    let mut out = match op {
        Op::Store {
            mode,
            flags,
            exptime,
            value,
            cas,
            quiet,
            ..
        } => {
            let cmd = match (mode, cas) {
                (StoreMode::Set, 0) => "set",
                (StoreMode::Set, _) => "cas",
                (StoreMode::Add, _) => "add",
                (StoreMode::Replace, _) => "replace",
                (StoreMode::Append, _) => "append",
                (StoreMode::Prepend, _) => "prepend",
                (StoreMode::Cas, _) => unreachable!("never generated"),
            };
            let cas = if *cas == 0 {
                String::new()
            } else {
                format!(" {cas}")
            };
            let noreply = if *quiet { " noreply" } else { "" };
            let len = value.len();
            let mut line =
                format!("{cmd} {key} {flags} {exptime} {len}{cas}{noreply}\r\n").into_bytes();
            line.extend_from_slice(value);
            line
        }
        Op::Get { touch: None, .. } => format!("get {key}").into_bytes(),
        Op::Get { touch: Some(t), .. } => format!("gat {t} {key}").into_bytes(),
        Op::Touch { exptime, .. } => format!("touch {key} {exptime}").into_bytes(),
        Op::Delete {
            cas: 0,
            quiet: false,
            ..
        } => format!("delete {key}").into_bytes(),
        Op::Delete { cas: 0, .. } => format!("delete {key} noreply").into_bytes(),
        Op::Delete { .. } => return None,
        Op::Arith {
            incr, delta, quiet, ..
        } => {
            let cmd = if *incr { "incr" } else { "decr" };
            let noreply = if *quiet { " noreply" } else { "" };
            format!("{cmd} {key} {delta}{noreply}").into_bytes()
        }
    };
    out.extend_from_slice(b"\r\n");
    Some(out)
}

fn base64(raw: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in raw.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn meta(op: &Op, printable: bool) -> Vec<u8> {
    let (key, b) = if printable {
        (
            String::from_utf8(key_of(op).to_vec()).expect("printable"),
            "",
        )
    } else {
        (base64(key_of(op)), " b")
    };
    let mut out = match op {
        Op::Store {
            mode,
            flags,
            exptime,
            value,
            cas,
            quiet,
            ..
        } => {
            let m = match mode {
                StoreMode::Add => 'E',
                StoreMode::Replace => 'R',
                StoreMode::Append => 'A',
                StoreMode::Prepend => 'P',
                _ => 'S',
            };
            let cas = if *cas == 0 {
                String::new()
            } else {
                format!(" C{cas}")
            };
            let q = if *quiet { " q" } else { "" };
            let mut line = format!(
                "ms {key} {} F{flags} T{exptime} M{m}{cas}{b}{q}\r\n",
                value.len()
            )
            .into_bytes();
            line.extend_from_slice(value);
            line
        }
        Op::Get { touch: None, .. } => format!("mg {key} v{b}").into_bytes(),
        Op::Get { touch: Some(t), .. } => format!("mg {key} v T{t}{b}").into_bytes(),
        Op::Touch { exptime, .. } => format!("mg {key} T{exptime}{b}").into_bytes(),
        Op::Delete { cas, quiet, .. } => {
            let c = if *cas == 0 {
                String::new()
            } else {
                format!(" C{cas}")
            };
            let q = if *quiet { " q" } else { "" };
            format!("md {key}{c}{b}{q}").into_bytes()
        }
        Op::Arith {
            incr, delta, quiet, ..
        } => {
            let m = if *incr { 'I' } else { 'D' };
            let q = if *quiet { " q" } else { "" };
            format!("ma {key} D{delta} M{m}{b}{q}").into_bytes()
        }
    };
    out.extend_from_slice(b"\r\n");
    out
}

fn binary(op: &Op) -> Vec<u8> {
    let key = key_of(op);
    let quiet = matches!(
        op,
        Op::Store { quiet: true, .. }
            | Op::Delete { quiet: true, .. }
            | Op::Arith { quiet: true, .. }
    );
    let (opcode, extras, value, cas): (u8, Vec<u8>, &[u8], u64) = match op {
        Op::Store {
            mode,
            flags,
            exptime,
            value,
            cas,
            ..
        } => {
            let mut extras = flags.to_be_bytes().to_vec();
            extras.extend_from_slice(&(*exptime as u32).to_be_bytes());
            let (opcode, extras) = match mode {
                StoreMode::Add => (ADD, extras),
                StoreMode::Replace => (REPLACE, extras),
                StoreMode::Append => (APPEND, vec![]),
                StoreMode::Prepend => (PREPEND, vec![]),
                _ => (SET, extras),
            };
            (opcode, extras, value, *cas)
        }
        Op::Get { touch: None, .. } => (GET, vec![], &[], 0),
        Op::Get { touch: Some(t), .. } => (GAT, (*t as u32).to_be_bytes().to_vec(), &[], 0),
        Op::Touch { exptime, .. } => (TOUCH, (*exptime as u32).to_be_bytes().to_vec(), &[], 0),
        Op::Delete { cas, .. } => (DELETE, vec![], &[], *cas),
        Op::Arith { incr, delta, .. } => {
            let mut extras = delta.to_be_bytes().to_vec();
            extras.extend_from_slice(&0u64.to_be_bytes());
            // An expiration of all ones: fail on a miss rather than create.
            extras.extend_from_slice(&u32::MAX.to_be_bytes());
            let opcode = if *incr { INCREMENT } else { DECREMENT };
            (opcode, extras, &[], 0)
        }
    };
    let opcode = if quiet { quiet_opcode(opcode) } else { opcode };
    let mut out = vec![REQUEST_MAGIC, opcode];
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.push(extras.len() as u8);
    out.extend_from_slice(&[0, 0, 0]);
    let body = extras.len() + key.len() + value.len();
    out.extend_from_slice(&(body as u32).to_be_bytes());
    out.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(&extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

/// The quiet variant of a binary opcode.
fn quiet_opcode(opcode: u8) -> u8 {
    match opcode {
        SET => SETQ,
        ADD => ADDQ,
        REPLACE => REPLACEQ,
        APPEND => APPENDQ,
        PREPEND => PREPENDQ,
        DELETE => DELETEQ,
        INCREMENT => INCREMENTQ,
        DECREMENT => DECREMENTQ,
        other => other,
    }
}

/// Whether a request's answer is to be left out on success.
fn quiet_reply(reply: &Reply) -> bool {
    match reply {
        Reply::Text { noreply } => *noreply,
        Reply::Meta(m) => m.quiet,
        Reply::Binary(b) => b.quiet,
    }
}

/// The operation a decoded request stands for, in the terms of [`Op`].
pub fn meaning(req: &Request) -> Option<Op> {
    let opcode = match &req.reply {
        Reply::Binary(b) => Some(b.opcode),
        _ => None,
    };
    let quiet = quiet_reply(&req.reply);
    Some(match &req.command {
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            value,
            cas,
        } => {
            let mode = if *mode == StoreMode::Cas {
                StoreMode::Set
            } else {
                *mode
            };
            let appending = matches!(mode, StoreMode::Append | StoreMode::Prepend);
            Op::Store {
                mode,
                key: key.as_bytes().to_vec(),
                flags: if appending { 0 } else { *flags },
                exptime: if appending { 0 } else { *exptime },
                value: value.to_vec(),
                cas: *cas,
                quiet,
            }
        }
        Command::Get { keys, touch, .. } if keys.len() == 1 => {
            let key = keys[0].as_bytes().to_vec();
            match (opcode, touch) {
                (Some(TOUCH), Some(exptime)) => Op::Touch {
                    key,
                    exptime: *exptime,
                },
                _ => Op::Get { key, touch: *touch },
            }
        }
        Command::Touch { key, exptime } => Op::Touch {
            key: key.as_bytes().to_vec(),
            exptime: *exptime,
        },
        Command::Delete { key, cas } => Op::Delete {
            key: key.as_bytes().to_vec(),
            cas: *cas,
            quiet,
        },
        Command::Arith {
            key,
            incr,
            delta,
            initial: None,
            cas: 0,
        } => Op::Arith {
            key: key.as_bytes().to_vec(),
            incr: *incr,
            delta: *delta,
            quiet,
        },
        Command::Meta(m) => meta_meaning(m, &req.reply)?,
        _ => return None,
    })
}

fn meta_meaning(m: &MetaCommand, reply: &Reply) -> Option<Op> {
    let value = matches!(reply, Reply::Meta(r) if r.value);
    let quiet = quiet_reply(reply);
    Some(match m {
        MetaCommand::Set(s) => {
            let appending = matches!(s.mode, StoreMode::Append | StoreMode::Prepend);
            Op::Store {
                mode: s.mode,
                key: s.key.as_bytes().to_vec(),
                flags: if appending { 0 } else { s.flags },
                exptime: if appending { 0 } else { s.exptime },
                value: s.value.as_ref()?.to_vec(),
                cas: s.compare_cas.unwrap_or(0),
                quiet,
            }
        }
        MetaCommand::Get(MetaGet { key, touch, .. }) => match (touch, value) {
            (Some(exptime), false) => Op::Touch {
                key: key.as_bytes().to_vec(),
                exptime: *exptime,
            },
            (touch, true) => Op::Get {
                key: key.as_bytes().to_vec(),
                touch: *touch,
            },
            (None, false) => return None,
        },
        MetaCommand::Delete(d) => Op::Delete {
            key: d.key.as_bytes().to_vec(),
            cas: d.compare_cas.unwrap_or(0),
            quiet,
        },
        MetaCommand::Arith(a) => Op::Arith {
            key: a.key.as_bytes().to_vec(),
            incr: a.incr,
            delta: a.delta,
            quiet,
        },
        _ => return None,
    })
}

/// Decodes `bytes` as a new connection would: exactly one request, nothing left over.
fn decode_one(bytes: &[u8], dialect: &str) -> Request {
    let mut decoder = ClientDecoder::new(1 << 20);
    let mut buf = BytesMut::from(bytes);
    let req = match decoder.decode(&mut buf) {
        Ok(Some(req)) => req,
        other => panic!("{dialect}: {bytes:?} decoded to {other:?}"),
    };
    assert!(buf.is_empty(), "{dialect}: {} bytes left over", buf.len());
    req
}

pub fn check(data: &[u8]) {
    let (op, printable) = op(&mut Input(data));
    let mut renderings = vec![("meta", meta(&op, printable)), ("binary", binary(&op))];
    if printable {
        renderings.extend(text(&op).map(|t| ("text", t)));
    }
    for (dialect, bytes) in renderings {
        let req = decode_one(&bytes, dialect);
        assert_eq!(
            meaning(&req),
            Some(op.clone()),
            "{dialect}: {:?} decoded to {req:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
}
