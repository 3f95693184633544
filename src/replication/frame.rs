//! The peer wire format for the live mutation stream (DESIGN.md section 4): versioned,
//! length-prefixed frames.
//!
//! ```text
//! frame  := len:u32 kind:u8 body            (len counts kind and body; big-endian)
//! Batch  := kind 1, run_id:u64 count:u32 entry*
//! entry  := seq:u64 version:u64 op:u8 key_len:u16 key
//!           op 1 (put):    flags:u32 exptime:u32 value_len:u32 value
//!           op 2 (delete): nothing more
//!           op 3 (flush):  at:u32
//! Ack    := kind 2, run_id:u64 seq:u64      (highest sequence applied)
//! ```
//!
//! The protocol version travels in the QUIC ALPN, so frames carry none. [`decode`] is
//! `Ok(None)` until a whole frame is buffered and consumes nothing until then; keys and
//! values are slices of the received frame, never copies. Anything malformed is an error,
//! after which the connection is closed: a peer never makes us guess.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::log::{Entry, Mutation, Op, RunId};
use crate::clock::Version;
use crate::key::MAX_KEY_LEN;

/// The largest frame accepted: a batch of values up to 1 GiB items would need more, so
/// senders split batches; this bounds what a peer can make us buffer.
pub const MAX_FRAME: usize = 64 << 20;

const BATCH: u8 = 1;
const ACK: u8 = 2;
const PUT: u8 = 1;
const DELETE: u8 = 2;
const FLUSH: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Batch { run_id: RunId, entries: Vec<Entry> },
    Ack { run_id: RunId, seq: u64 },
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
}

/// Decodes one frame from the front of `buf`.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
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
    let body = buf.split_to(len).freeze();
    parse(body).map(Some)
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
        other => return Err(FrameError::UnknownKind(other)),
    };
    if !r.bytes.is_empty() {
        return Err(FrameError::Trailing(r.bytes.len()));
    }
    Ok(frame)
}

fn parse_entry(r: &mut Reader) -> Result<Entry, FrameError> {
    let seq = r.u64()?;
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
        FLUSH => Op::Flush { at: r.u32()? },
        other => return Err(FrameError::UnknownOp(other)),
    };
    Ok(Entry {
        seq,
        mutation: Mutation { key, version, op },
    })
}

/// Appends the encoding of `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0); // patched below
    match frame {
        Frame::Batch { run_id, entries } => {
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
                        value,
                        flags,
                        exptime,
                    } => {
                        out.put_u32(*flags);
                        out.put_u32(*exptime);
                        out.put_u32(value.len() as u32);
                        out.put_slice(value);
                    }
                    Op::Delete => {}
                    Op::Flush { at } => out.put_u32(*at),
                }
            }
        }
        Frame::Ack { run_id, seq } => {
            out.put_u8(ACK);
            out.put_u64(run_id.0);
            out.put_u64(*seq);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = Entry> {
        let key = proptest::collection::vec(any::<u8>(), 0..40);
        let value = proptest::collection::vec(any::<u8>(), 0..100);
        (
            any::<u64>(),
            any::<u64>(),
            key,
            0u8..3,
            value,
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(seq, v, key, op, value, flags, exptime)| {
                let op = match op {
                    0 => Op::Put {
                        value: Bytes::from(value),
                        flags,
                        exptime,
                    },
                    1 => Op::Delete,
                    _ => Op::Flush { at: exptime },
                };
                Entry {
                    seq,
                    mutation: Mutation {
                        key: Bytes::from(key),
                        version: Version(v),
                        op,
                    },
                }
            })
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u64>(), proptest::collection::vec(entry(), 0..5)).prop_map(|(r, entries)| {
                Frame::Batch {
                    run_id: RunId(r),
                    entries,
                }
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(r, seq)| Frame::Ack {
                run_id: RunId(r),
                seq
            }),
        ]
    }

    proptest! {
        /// Frames round-trip, and the same bytes split at any position decode the same
        /// way, with `None` consuming nothing.
        #[test]
        fn round_trip_split_anywhere(frames in proptest::collection::vec(frame(), 1..4), cut in any::<proptest::sample::Index>()) {
            let mut wire = BytesMut::new();
            for f in &frames {
                encode(f, &mut wire);
            }
            let cut = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            loop {
                let before = buf.len();
                match decode(&mut buf).unwrap() {
                    Some(f) => got.push(f),
                    None => { prop_assert_eq!(buf.len(), before); break; }
                }
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = decode(&mut buf).unwrap() {
                got.push(f);
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, frames);
        }

        /// Garbage from a peer is an error or a need for more bytes, never a panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf) {}
        }
    }

    #[test]
    fn malformed_frames_are_errors() {
        let mut huge = BytesMut::from(&(MAX_FRAME as u32 + 1).to_be_bytes()[..]);
        assert_eq!(decode(&mut huge), Err(FrameError::TooLarge(MAX_FRAME + 1)));
        let mut unknown = BytesMut::from(&[0, 0, 0, 1, 9][..]);
        assert_eq!(decode(&mut unknown), Err(FrameError::UnknownKind(9)));
        // A batch claiming a million entries in a few bytes.
        let mut lying = BytesMut::new();
        lying.put_u32(13);
        lying.put_u8(BATCH);
        lying.put_u64(1);
        lying.put_u32(1_000_000);
        assert_eq!(decode(&mut lying), Err(FrameError::Truncated));
        let mut trailing = BytesMut::new();
        encode(
            &Frame::Ack {
                run_id: RunId(1),
                seq: 2,
            },
            &mut trailing,
        );
        trailing[3] += 1;
        trailing.put_u8(0);
        assert_eq!(decode(&mut trailing), Err(FrameError::Trailing(1)));
    }
}
