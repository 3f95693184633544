//! The frames of resync (DESIGN.md section 6): readiness and load announcements, where a
//! peer's live stream should start, and the snapshot stream.
//!
//! ```text
//! Status  := kind 5, ready:u8 load:u16          (sent when either changes)
//! Start   := kind 6, run_id:u64 seq:u64         (stream your log to me after this point)
//! SnapReq := kind 7, token:u64                   (send me your whole store, and echo this
//!                                                token in its SnapBegin)
//! CatchUp := kind 13, origin:u16 token:u64      (send me every item and tombstone you
//!                                                hold of this origin, echoing the token)
//! Synced  := kind 8, snapshots:u32              (you have my log up to where your sync
//!                                                began, and this many snapshots of mine)
//! SnapBegin := kind 12, log_seq:u64 items:u64 flushes:u8 (issued:u64 at_ms:u64)*
//!              count:u16 (origin:str8 run_id:u64 seq:u64)* token:u64
//!              (first frame of a snapshot stream: the donor's own log position the walk
//!              covers, about how many entries it holds, the flushes that still matter to
//!              it (fired or pending, see [`crate::store::Flush`]), what it had applied of
//!              each origin's log when its walk began, and the token of the request the
//!              walk began after, 0 for none)
//! SnapBegin of the previous release, kind 9 (read only): log_seq:u64 items:u64 floor:u64
//!              pending_version:u64 pending_at:u32 (seconds) count:u16 position*
//! SnapItems := kind 10, count:u32 item*
//! item    := version:u64 op:u8 key_len:u16 key   op 1 (put): flags:u32 exptime:u32
//!                                                value_len:u32 value; op 2 (tombstone)
//! SnapEnd := kind 11, items:u64 bytes:u64        (last frame of a snapshot stream)
//! ```

use bytes::{BufMut, BytesMut};

use super::{parse_mutation, put_str8, FrameError, Reader, DELETE, PUT};
use crate::clock::Version;
use crate::replication::log::{Mutation, Op, RunId};
use crate::store::{Exported, Flush, FlushState};

pub(super) const STATUS: u8 = 5;
pub(super) const START: u8 = 6;
pub(super) const SNAP_REQUEST: u8 = 7;
pub(super) const SYNCED: u8 = 8;
/// The previous release's snapshot start (one floor, one pending flush): still read.
pub(super) const SNAP_BEGIN_V1: u8 = 9;
pub(super) const SNAP_ITEMS: u8 = 10;
pub(super) const SNAP_END: u8 = 11;
pub(super) const SNAP_BEGIN: u8 = 12;
pub(super) const CATCH_UP: u8 = 13;

/// What a donor had applied of one origin's log when its snapshot walk began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub origin: String,
    pub run_id: RunId,
    pub seq: u64,
}

/// The first frame of a snapshot stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapBegin {
    /// Every write of the donor's own log up to this sequence is in its store when the walk
    /// begins: once the snapshot is applied, the receiver has the donor's log up to here.
    pub log_seq: u64,
    /// Items and tombstones the donor holds (the receiver makes room up front).
    pub items: u64,
    pub flush: FlushState,
    pub positions: Vec<Position>,
    /// The token of the latest `SnapshotRequest` received before this walk began (0: none):
    /// the receiver then knows the walk saw everything the donor had applied when the
    /// request arrived (reconciliation relies on it).
    pub token: u64,
}

pub(super) fn encode_snap_begin(b: &SnapBegin, out: &mut BytesMut) {
    out.put_u8(SNAP_BEGIN);
    out.put_u64(b.log_seq);
    out.put_u64(b.items);
    put_flushes(&b.flush, out);
    let positions = &b.positions[..b.positions.len().min(usize::from(u16::MAX))];
    out.put_u16(positions.len() as u16);
    for p in positions {
        put_str8(out, &p.origin);
        out.put_u64(p.run_id.0);
        out.put_u64(p.seq);
    }
    out.put_u64(b.token);
}

pub(super) fn parse_snap_begin(r: &mut Reader, kind: u8) -> Result<SnapBegin, FrameError> {
    let log_seq = r.u64()?;
    let items = r.u64()?;
    let flush = if kind == SNAP_BEGIN_V1 {
        parse_flush_v1(r)?
    } else {
        parse_flushes(r)?
    };
    let count = usize::from(r.u16()?);
    // Each position takes at least 17 bytes.
    if count > r.bytes.len() / 17 {
        return Err(FrameError::Truncated);
    }
    let mut positions = Vec::with_capacity(count);
    for _ in 0..count {
        positions.push(Position {
            origin: r.str8()?,
            run_id: RunId(r.u64()?),
            seq: r.u64()?,
        });
    }
    let token = if kind == SNAP_BEGIN_V1 { 0 } else { r.u64()? };
    Ok(SnapBegin {
        log_seq,
        items,
        flush,
        positions,
        token,
    })
}

/// `count:u8 (issued:u64 at_ms:u64)*`: the flushes that still matter to a store.
pub(super) fn put_flushes(state: &FlushState, out: &mut BytesMut) {
    // A store holds at most MAX_PENDING + 1 flushes, well within a u8.
    let flushes = &state.flushes[..state.flushes.len().min(usize::from(u8::MAX))];
    out.put_u8(flushes.len() as u8);
    for f in flushes {
        out.put_u64(f.issued.0);
        out.put_u64(f.at_ms);
    }
}

pub(super) fn parse_flushes(r: &mut Reader) -> Result<FlushState, FrameError> {
    let count = usize::from(r.u8()?);
    let mut flushes = Vec::with_capacity(count);
    for _ in 0..count {
        flushes.push(Flush {
            issued: Version(r.u64()?),
            at_ms: r.u64()?,
        });
    }
    Ok(FlushState { flushes })
}

/// The previous release's flush barrier and pending flush, as flushes: the barrier is a
/// flush in effect at once, and the pending one's barrier was its version.
fn parse_flush_v1(r: &mut Reader) -> Result<FlushState, FrameError> {
    let floor = r.u64()?;
    let pending = r.u64()?;
    let at = r.u32()?;
    let mut flushes = Vec::new();
    if floor != 0 {
        flushes.push(Flush {
            issued: Version(floor),
            at_ms: 0,
        });
    }
    if pending != 0 {
        flushes.push(Flush {
            issued: Version(pending),
            at_ms: u64::from(at) * 1000,
        });
    }
    Ok(FlushState { flushes })
}

/// Builds one `SnapItems` frame in place, entry by entry, straight from the store's walk
/// (the one copy a snapshot makes of each value).
pub struct SnapItemsWriter {
    start: usize,
    count: u32,
}

impl SnapItemsWriter {
    pub fn begin(out: &mut BytesMut) -> Self {
        let start = out.len();
        out.put_u32(0); // length, patched by finish
        out.put_u8(SNAP_ITEMS);
        out.put_u32(0); // count, patched by finish
        SnapItemsWriter { start, count: 0 }
    }

    pub fn push(&mut self, out: &mut BytesMut, e: &Exported<'_>) {
        self.count += 1;
        out.put_u64(e.version.0);
        out.put_u8(if e.value.is_some() { PUT } else { DELETE });
        // Keys come from the store, so they are within MAX_KEY_LEN.
        out.put_u16(e.key.len() as u16);
        out.put_slice(e.key);
        if let Some(v) = e.value {
            out.put_u32(e.flags);
            out.put_u32(e.exptime);
            out.put_u32(v.len() as u32);
            out.put_slice(v);
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn finish(self, out: &mut BytesMut) {
        let len = (out.len() - self.start - 4) as u32;
        out[self.start..self.start + 4].copy_from_slice(&len.to_be_bytes());
        out[self.start + 5..self.start + 9].copy_from_slice(&self.count.to_be_bytes());
    }
}

pub(super) fn encode_snap_items(items: &[Mutation], out: &mut BytesMut) {
    out.put_u8(SNAP_ITEMS);
    put_items(items, out);
}

/// `count:u32 item*`, as a snapshot's items frame carries them (read by
/// [`parse_snap_items`]).
pub(super) fn put_items(items: &[Mutation], out: &mut BytesMut) {
    out.put_u32(items.len() as u32);
    for m in items {
        out.put_u64(m.version.0);
        match &m.op {
            Op::Put {
                value,
                flags,
                exptime,
            } => {
                out.put_u8(PUT);
                out.put_u16(m.key.len() as u16);
                out.put_slice(&m.key);
                out.put_u32(*flags);
                out.put_u32(*exptime);
                out.put_u32(value.len() as u32);
                out.put_slice(value);
            }
            // A snapshot holds items and tombstones only.
            Op::Delete | Op::Flush { .. } => {
                out.put_u8(DELETE);
                out.put_u16(m.key.len() as u16);
                out.put_slice(&m.key);
            }
        }
    }
}

pub(super) fn parse_snap_items(r: &mut Reader) -> Result<Vec<Mutation>, FrameError> {
    let count = r.u32()? as usize;
    // Each item takes at least 11 bytes.
    if count > r.bytes.len() / 11 {
        return Err(FrameError::Truncated);
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(parse_mutation(r, false)?);
    }
    Ok(items)
}
