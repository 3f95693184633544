//! Frames too large for one frame travel in parts (DESIGN.md section 2: any value a node
//! accepts must replicate, and no entry may wedge a link).
//!
//! ```text
//! Part := kind 14, data           (a slice of the encoding of one frame, length prefix
//!                                 included, that is longer than MAX_FRAME; its parts
//!                                 follow one another on the stream, nothing between them)
//! ```
//!
//! A batch holding one value of up to `-I` (1 GiB), or a snapshot piece holding such an
//! item, is encoded as usual and then cut into parts of [`PART_BYTES`]; the receiver's
//! [`Decoder`] joins them and decodes the whole frame, which may be up to
//! [`MAX_ASSEMBLED`] long. Frames up to [`MAX_FRAME`] are sent whole, as the previous
//! release sent them: only an entry that wedged its link before travels in parts.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{parse, FrameError, MAX_FRAME};

pub(super) const PART: u8 = 14;

/// The payload of each part.
pub const PART_BYTES: usize = 16 << 20;

/// The largest frame joined from parts: a value of the largest `-I` (1 GiB) with its key
/// and headers, beside a batch's or a snapshot piece's other entries.
pub const MAX_ASSEMBLED: usize = (1 << 30) + (4 << 20);

/// Cuts the encoding of one frame, given as consecutive chunks, into parts when it is
/// longer than [`MAX_FRAME`]; otherwise leaves it as it is. No byte of a value is copied:
/// the parts' payloads are slices of the chunks.
pub fn split_into_parts(chunks: &mut Vec<Bytes>) {
    split_at(chunks, MAX_FRAME, PART_BYTES);
}

pub(super) fn split_at(chunks: &mut Vec<Bytes>, max_frame: usize, part_bytes: usize) {
    let total: usize = chunks.iter().map(Bytes::len).sum();
    if total <= 4 + max_frame {
        return;
    }
    let whole = std::mem::take(chunks);
    let mut left = total;
    let mut in_part = 0;
    for mut c in whole {
        while !c.is_empty() {
            if in_part == 0 {
                let n = left.min(part_bytes);
                let mut header = BytesMut::with_capacity(5);
                header.put_u32(1 + n as u32);
                header.put_u8(PART);
                chunks.push(header.freeze());
                in_part = n;
            }
            let take = in_part.min(c.len());
            chunks.push(c.split_to(take));
            in_part -= take;
            left -= take;
        }
    }
}

/// Decodes the frames of one stream, joining parts.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The parts of a frame received so far.
    joining: BytesMut,
    /// Stream bytes consumed since the last frame returned.
    wire: usize,
}

impl Decoder {
    /// The next whole frame from the front of `buf`, `Ok(None)` until one is buffered.
    /// Parts are consumed as they come (what a peer can make us hold is bounded by
    /// [`MAX_ASSEMBLED`]); anything malformed is an error, after which the stream is
    /// closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<super::Frame>, FrameError> {
        loop {
            let Some(body) = super::split_frame(buf)? else {
                return Ok(None);
            };
            self.wire += 4 + body.len();
            if body[0] != PART {
                if !self.joining.is_empty() {
                    return Err(FrameError::PartCut);
                }
                return parse(body).map(Some);
            }
            self.joining.extend_from_slice(&body[1..]);
            if self.joining.len() < 4 {
                continue;
            }
            let len = u32::from_be_bytes(self.joining[..4].try_into().expect("4 bytes")) as usize;
            if len > MAX_ASSEMBLED {
                return Err(FrameError::TooLarge(len));
            }
            match self.joining.len().cmp(&(4 + len)) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Greater => {
                    return Err(FrameError::Trailing(self.joining.len() - 4 - len))
                }
                std::cmp::Ordering::Equal => {}
            }
            let mut whole = std::mem::take(&mut self.joining);
            whole.advance(4);
            let body = whole.freeze();
            if body.first() == Some(&PART) {
                return Err(FrameError::PartCut);
            }
            return parse(body).map(Some);
        }
    }

    /// The stream bytes the frame last returned took (all its parts).
    pub fn take_wire(&mut self) -> usize {
        std::mem::take(&mut self.wire)
    }
}
