//! The peer wire format for the live mutation stream (DESIGN.md section 4): versioned,
//! length-prefixed frames.
//!
//! ```text
//! frame  := len:u32 kind:u8 body            (len counts kind and body; big-endian)
//! Batch  := kind 1, run_id:u64 count:u32 entry*
//! entry  := seq:u64 version:u64 op:u8 key_len:u16 key
//!           op 1 (put):    flags:u32 exptime:u32 value_len:u32 value
//!           op 2 (delete): nothing more
//!           op 4 (flush):  at_ms:u64   (version: the flush's issue; at_ms 0: at once)
//!           op 3 (flush, as the previous release sent it, read only): at:u32 seconds,
//!                          with the barrier itself as version
//! Ack    := kind 2, run_id:u64 seq:u64      (highest sequence applied)
//! Hello  := kind 3, name:str8 node_id:u16 run_id:u64 have_run:u64 have_seq:u64
//!           flags:u8 load:u16 wall_ms:u64 run_floor:u64
//!           (first frame on each live stream: who we are, and what we already applied
//!           of the receiver's log: its run id and sequence, 0 and 0 for nothing; flags:
//!           1 = ready (serving, a possible donor), 2 = defer (hold your stream until my
//!           Start or snapshot request: I am choosing a donor), 4 = empty (my store holds
//!           nothing), 8 = clean start, 16 = anti-entropy, 32 = prompt acks (my clients
//!           wait for them); unknown bits are ignored; load: snapshots serving)
//! Members:= kind 4, count:u16 (name:str8 node_id:u16 addr:str8)*
//!           (the members the sender knows, with their cluster addresses)
//! str8   := len:u8 bytes (UTF-8)
//! ```
//!
//! Kinds 5 to 13 are resync's, described in [`sync`]; kind 14 carries a frame longer than
//! [`MAX_FRAME`] in parts ([`parts`]); kinds 15 to 20 are anti-entropy's ([`entropy`]).
//!
//! The protocol version travels in the QUIC ALPN, so frames carry none. [`decode`] is
//! `Ok(None)` until a whole frame is buffered and consumes nothing until then; keys and
//! values are slices of the received frame, never copies. Anything malformed is an error,
//! after which the connection is closed: a peer never makes us guess.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::log::{Entry, Mutation, Op, RunId};
use crate::clock::Version;
use crate::key::MAX_KEY_LEN;
pub use entropy::{wire_len, BucketList, Digest, MAX_LIST_BUCKETS, MAX_REPAIR_KEYS};
pub use sync::{Position, SnapBegin, SnapItemsWriter};

mod entropy;
mod parts;
mod sync;
pub use parts::{split_into_parts, Decoder, MAX_ASSEMBLED, PART_BYTES};

/// The largest frame accepted: a batch of values up to 1 GiB items would need more, so
/// senders split batches; this bounds what a peer can make us buffer.
pub const MAX_FRAME: usize = 64 << 20;

pub(crate) const BATCH: u8 = 1;
const ACK: u8 = 2;
const HELLO: u8 = 3;
const MEMBERS: u8 = 4;
pub(crate) const PUT: u8 = 1;
pub(crate) const DELETE: u8 = 2;
/// A flush as the previous release wrote it (its barrier as version, `at` in seconds):
/// still read, so that a node of that release can feed this one during an upgrade.
const FLUSH_V1: u8 = 3;
const FLUSH: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Batch {
        run_id: RunId,
        entries: Vec<Entry>,
    },
    Ack {
        run_id: RunId,
        seq: u64,
    },
    Hello(Hello),
    Members(Vec<Member>),
    Status {
        ready: bool,
        load: u16,
    },
    Start {
        run_id: RunId,
        seq: u64,
    },
    SnapshotRequest {
        token: u64,
    },
    /// Send me every item and tombstone you hold of this origin (node id), echoing the
    /// token in the walk's `SnapBegin`: the origin restarted without every member having
    /// its previous run's writes (see `cluster::core::catch_up`).
    CatchUp {
        origin: u16,
        token: u64,
    },
    Synced {
        snapshots: u32,
    },
    SnapBegin(SnapBegin),
    SnapItems(Vec<Mutation>),
    SnapEnd {
        items: u64,
        bytes: u64,
    },
    /// Send me your bucket digests (anti-entropy, see `cluster::core::entropy`).
    DigestRequest {
        token: u64,
    },
    Digest(Digest),
    /// List what you hold in these buckets.
    KeysRequest {
        token: u64,
        buckets: Vec<u16>,
    },
    Keys {
        token: u64,
        lists: Vec<BucketList>,
    },
    /// Send me what you hold of these keys.
    RepairRequest {
        token: u64,
        keys: Vec<Bytes>,
    },
    Repair {
        token: u64,
        items: Vec<Mutation>,
    },
}

/// [`Hello::flags`]: the sender serves clients and can be a donor.
pub const HELLO_READY: u8 = 1;
/// [`Hello::flags`]: hold the live stream to the sender until its `Start` or snapshot
/// request (it has no data and is choosing a donor).
pub const HELLO_DEFER: u8 = 2;
/// [`Hello::flags`]: the sender's store is empty (a position of another run then means it
/// needs a snapshot, not just the log).
pub const HELLO_EMPTY: u8 = 4;
/// [`Hello::flags`]: the sender started from a state file its previous run saved after
/// every member had acknowledged every write of that run: nobody lacks any of them.
pub const HELLO_CLEAN: u8 = 8;
/// [`Hello::flags`]: the sender takes part in anti-entropy (frame kinds 15 to 20): only a
/// peer that says so is sent them.
pub const HELLO_AE: u8 = 16;
/// [`Hello::flags`]: the sender's clients wait for acknowledgements (`--ack-replicas`):
/// acknowledge each batch of its writes as soon as it is applied, not at the usual pace.
/// Peers that do not know the flag ignore it (the writes then wait for the usual pace).
pub const HELLO_PROMPT_ACKS: u8 = 32;
/// [`Hello::flags`]: the sender reads SWIM gossip in QUIC datagrams (src/cluster/gossip.rs):
/// only a peer that says so is sent any.
pub const HELLO_GOSSIP: u8 = 64;

/// The first frame each side sends on its live stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub name: String,
    pub node_id: u16,
    pub run_id: RunId,
    /// The receiver's run id and the last sequence of it the sender applied (0, 0: none).
    pub have_run: RunId,
    pub have_seq: u64,
    pub flags: u8,
    /// How many snapshots the sender is serving.
    pub load: u16,
    /// The sender's wall clock (ms since the unix epoch) as it sent the hello: a peer whose
    /// clock is further off than `--max-clock-skew` is refused at once, naming the offset,
    /// instead of having its writes refused one by one (or refusing ours) for ever.
    pub wall_ms: u64,
    /// Every version the sender issues in this run is above this one (its clock when the
    /// run began, past everything it loaded): reconciliation knows from it which of the
    /// sender's writes belong to its current run.
    pub run_floor: u64,
}

/// A cluster member as gossiped: its name, node id and cluster address (`ip:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub node_id: u16,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown mutation op {0}")]
    UnknownOp(u8),
    #[error("frame ends in the middle of a field")]
    Truncated,
    #[error("{0} bytes left over after the frame's contents")]
    Trailing(usize),
    #[error("key of {0} bytes (limit {MAX_KEY_LEN})")]
    KeyTooLong(usize),
    #[error("a name or address is not UTF-8")]
    NotUtf8,
    #[error("a frame's parts were cut by another frame")]
    PartCut,
    #[error("{0} out of bounds: {1}")]
    Count(&'static str, usize),
}

/// Decodes one frame from the front of `buf` (a frame in parts is an error here: streams
/// that may carry them read with a [`Decoder`]).
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    match split_frame(buf)? {
        Some(body) => parse(body).map(Some),
        None => Ok(None),
    }
}

/// Splits one frame's body (kind and contents) off the front of `buf`, once whole.
fn split_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// A bounds-checked reader over one frame's bytes.
struct Reader {
    bytes: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.bytes.len() < n {
            Err(FrameError::Truncated)
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        self.need(1)?;
        Ok(self.bytes.get_u8())
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        self.need(2)?;
        Ok(self.bytes.get_u16())
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.need(4)?;
        Ok(self.bytes.get_u32())
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.need(8)?;
        Ok(self.bytes.get_u64())
    }

    fn slice(&mut self, n: usize) -> Result<Bytes, FrameError> {
        self.need(n)?;
        Ok(self.bytes.split_to(n))
    }

    fn str8(&mut self) -> Result<String, FrameError> {
        let n = usize::from(self.u8()?);
        let b = self.slice(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| FrameError::NotUtf8)
    }
}

/// Writes a string of at most 255 bytes (longer ones are cut at a character boundary;
/// node names and socket addresses are far shorter).
fn put_str8(out: &mut BytesMut, s: &str) {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u8(end as u8);
    out.put_slice(&s.as_bytes()[..end]);
}

fn parse(body: Bytes) -> Result<Frame, FrameError> {
    let mut r = Reader { bytes: body };
    let frame = match r.u8()? {
        BATCH => {
            let run_id = RunId(r.u64()?);
            let count = r.u32()? as usize;
            // Each entry takes at least 19 bytes: a count that cannot fit is a lie, and
            // must not size an allocation.
            if count > r.bytes.len() / 19 {
                return Err(FrameError::Truncated);
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                entries.push(parse_entry(&mut r)?);
            }
            Frame::Batch { run_id, entries }
        }
        ACK => Frame::Ack {
            run_id: RunId(r.u64()?),
            seq: r.u64()?,
        },
        HELLO => Frame::Hello(Hello {
            name: r.str8()?,
            node_id: r.u16()?,
            run_id: RunId(r.u64()?),
            have_run: RunId(r.u64()?),
            have_seq: r.u64()?,
            flags: r.u8()?,
            load: r.u16()?,
            wall_ms: r.u64()?,
            run_floor: r.u64()?,
        }),
        MEMBERS => {
            let count = usize::from(r.u16()?);
            // Each member takes at least 4 bytes.
            if count > r.bytes.len() / 4 {
                return Err(FrameError::Truncated);
            }
            let mut members = Vec::with_capacity(count);
            for _ in 0..count {
                members.push(Member {
                    name: r.str8()?,
                    node_id: r.u16()?,
                    addr: r.str8()?,
                });
            }
            Frame::Members(members)
        }
        sync::STATUS => Frame::Status {
            ready: r.u8()? != 0,
            load: r.u16()?,
        },
        sync::START => Frame::Start {
            run_id: RunId(r.u64()?),
            seq: r.u64()?,
        },
        sync::SNAP_REQUEST => Frame::SnapshotRequest { token: r.u64()? },
        sync::CATCH_UP => Frame::CatchUp {
            origin: r.u16()?,
            token: r.u64()?,
        },
        sync::SYNCED => Frame::Synced {
            snapshots: r.u32()?,
        },
        kind @ (sync::SNAP_BEGIN | sync::SNAP_BEGIN_V1) => {
            Frame::SnapBegin(sync::parse_snap_begin(&mut r, kind)?)
        }
        sync::SNAP_ITEMS => Frame::SnapItems(sync::parse_snap_items(&mut r)?),
        sync::SNAP_END => Frame::SnapEnd {
            items: r.u64()?,
            bytes: r.u64()?,
        },
        entropy::DIGEST_REQUEST => Frame::DigestRequest { token: r.u64()? },
        entropy::DIGEST => Frame::Digest(entropy::parse_digest(&mut r)?),
        entropy::KEYS_REQUEST => {
            let (token, buckets) = entropy::parse_keys_request(&mut r)?;
            Frame::KeysRequest { token, buckets }
        }
        entropy::KEYS => {
            let (token, lists) = entropy::parse_keys(&mut r)?;
            Frame::Keys { token, lists }
        }
        entropy::REPAIR_REQUEST => {
            let (token, keys) = entropy::parse_repair_request(&mut r)?;
            Frame::RepairRequest { token, keys }
        }
        entropy::REPAIR => {
            let (token, items) = entropy::parse_repair(&mut r)?;
            Frame::Repair { token, items }
        }
        parts::PART => return Err(FrameError::PartCut),
        other => return Err(FrameError::UnknownKind(other)),
    };
    if !r.bytes.is_empty() {
        return Err(FrameError::Trailing(r.bytes.len()));
    }
    Ok(frame)
}

fn parse_entry(r: &mut Reader) -> Result<Entry, FrameError> {
    let seq = r.u64()?;
    let mutation = parse_mutation(r, true)?;
    Ok(Entry { seq, mutation })
}

/// `version op key_len key body`, as log entries and snapshot items both carry it (a
/// snapshot holds no flushes: `flush_allowed` is false there).
fn parse_mutation(r: &mut Reader, flush_allowed: bool) -> Result<Mutation, FrameError> {
    let version = Version(r.u64()?);
    let op = r.u8()?;
    let key_len = usize::from(r.u16()?);
    if key_len > MAX_KEY_LEN {
        return Err(FrameError::KeyTooLong(key_len));
    }
    let key = r.slice(key_len)?;
    let op = match op {
        PUT => {
            let flags = r.u32()?;
            let exptime = r.u32()?;
            let len = r.u32()? as usize;
            Op::Put {
                value: r.slice(len)?,
                flags,
                exptime,
            }
        }
        DELETE => Op::Delete,
        FLUSH if flush_allowed => Op::Flush { at_ms: r.u64()? },
        // Its barrier `max(version, at)` is the version it carried, so it means the same.
        FLUSH_V1 if flush_allowed => Op::Flush {
            at_ms: u64::from(r.u32()?) * 1000,
        },
        other => return Err(FrameError::UnknownOp(other)),
    };
    Ok(Mutation { key, version, op })
}

/// Values at least this long are sent as their own chunk by [`encode_batch_chunks`] rather
/// than copied next to their header.
pub const ZERO_COPY_MIN: usize = 512;

/// Appends the encoding of `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0); // patched below
    match frame {
        Frame::Batch { run_id, entries } => {
            batch_into(*run_id, entries, out, &mut |out, value| {
                out.put_slice(value)
            });
        }
        Frame::Ack { run_id, seq } => {
            out.put_u8(ACK);
            out.put_u64(run_id.0);
            out.put_u64(*seq);
        }
        Frame::Hello(h) => {
            out.put_u8(HELLO);
            put_str8(out, &h.name);
            out.put_u16(h.node_id);
            out.put_u64(h.run_id.0);
            out.put_u64(h.have_run.0);
            out.put_u64(h.have_seq);
            out.put_u8(h.flags);
            out.put_u16(h.load);
            out.put_u64(h.wall_ms);
            out.put_u64(h.run_floor);
        }
        Frame::Members(members) => {
            out.put_u8(MEMBERS);
            let members = &members[..members.len().min(usize::from(u16::MAX))];
            out.put_u16(members.len() as u16);
            for m in members {
                put_str8(out, &m.name);
                out.put_u16(m.node_id);
                put_str8(out, &m.addr);
            }
        }
        Frame::Status { ready, load } => {
            out.put_u8(sync::STATUS);
            out.put_u8(u8::from(*ready));
            out.put_u16(*load);
        }
        Frame::Start { run_id, seq } => {
            out.put_u8(sync::START);
            out.put_u64(run_id.0);
            out.put_u64(*seq);
        }
        Frame::SnapshotRequest { token } => {
            out.put_u8(sync::SNAP_REQUEST);
            out.put_u64(*token);
        }
        Frame::CatchUp { origin, token } => {
            out.put_u8(sync::CATCH_UP);
            out.put_u16(*origin);
            out.put_u64(*token);
        }
        Frame::Synced { snapshots } => {
            out.put_u8(sync::SYNCED);
            out.put_u32(*snapshots);
        }
        Frame::SnapBegin(b) => sync::encode_snap_begin(b, out),
        Frame::SnapItems(items) => sync::encode_snap_items(items, out),
        Frame::SnapEnd { items, bytes } => {
            out.put_u8(sync::SNAP_END);
            out.put_u64(*items);
            out.put_u64(*bytes);
        }
        Frame::DigestRequest { token } => {
            out.put_u8(entropy::DIGEST_REQUEST);
            out.put_u64(*token);
        }
        Frame::Digest(d) => entropy::encode_digest(d, out),
        Frame::KeysRequest { token, buckets } => entropy::encode_keys_request(*token, buckets, out),
        Frame::Keys { token, lists } => entropy::encode_keys(*token, lists, out),
        Frame::RepairRequest { token, keys } => entropy::encode_repair_request(*token, keys, out),
        Frame::Repair { token, items } => entropy::encode_repair(*token, items, out),
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Encodes a batch as a list of chunks to write in order: headers and small values are
/// copied into `scratch` and split off it, values of [`ZERO_COPY_MIN`] bytes or more are
/// pushed as the `Bytes` the log holds, without copying. The concatenation is exactly what
/// [`encode`] writes.
pub fn encode_batch_chunks(
    run_id: RunId,
    entries: &[Entry],
    scratch: &mut BytesMut,
    chunks: &mut Vec<Bytes>,
) {
    let len: usize = 1
        + 8
        + 4
        + entries
            .iter()
            .map(|e| {
                let m = &e.mutation;
                19 + m.key.len()
                    + match &m.op {
                        Op::Put { value, .. } => 12 + value.len(),
                        Op::Delete => 0,
                        Op::Flush { .. } => 8,
                    }
            })
            .sum::<usize>();
    scratch.put_u32(len as u32);
    batch_into(run_id, entries, scratch, &mut |scratch, value| {
        if value.len() >= ZERO_COPY_MIN {
            chunks.push(scratch.split().freeze());
            chunks.push(value.clone());
        } else {
            scratch.put_slice(value);
        }
    });
    if !scratch.is_empty() {
        chunks.push(scratch.split().freeze());
    }
}

/// A batch's body; `value` writes each Put's value (copied, or as a chunk of its own).
fn batch_into(
    run_id: RunId,
    entries: &[Entry],
    out: &mut BytesMut,
    value: &mut dyn FnMut(&mut BytesMut, &Bytes),
) {
    out.put_u8(BATCH);
    out.put_u64(run_id.0);
    out.put_u32(entries.len() as u32);
    for e in entries {
        let m = &e.mutation;
        out.put_u64(e.seq);
        out.put_u64(m.version.0);
        out.put_u8(match m.op {
            Op::Put { .. } => PUT,
            Op::Delete => DELETE,
            Op::Flush { .. } => FLUSH,
        });
        // Keys come from the store, so they are within MAX_KEY_LEN.
        out.put_u16(m.key.len() as u16);
        out.put_slice(&m.key);
        match &m.op {
            Op::Put {
                value: v,
                flags,
                exptime,
            } => {
                out.put_u32(*flags);
                out.put_u32(*exptime);
                out.put_u32(v.len() as u32);
                value(out, v);
            }
            Op::Delete => {}
            Op::Flush { at_ms } => out.put_u64(*at_ms),
        }
    }
}

#[cfg(test)]
mod tests;
