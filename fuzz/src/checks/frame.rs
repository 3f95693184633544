//! Target `frame`: the peer frame codec (`replication::frame`).
//!
//! Input: `mode:u8`, then either
//! - (even mode) `seed:u64 stream...`: any bytes as a peer's stream of frames. Whole and in
//!   seeded pieces they must decode to the same frames and the same error; "need more"
//!   consumes nothing and holds less than one frame of at most `MAX_FRAME`; every frame
//!   decoded re-encodes to bytes that decode to it again;
//! - (odd mode) a frame built from the input: it encodes, and decodes back to itself; a
//!   batch's zero-copy chunks are its encoding; a snapshot's items written in place by
//!   `SnapItemsWriter` are its encoding.

use bytes::{Bytes, BytesMut};
use meshcached::clock::Version;
use meshcached::key::MAX_KEY_LEN;
use meshcached::replication::frame::{
    decode, encode, encode_batch_chunks, Decoder, Frame, FrameError, Hello, Member, Position,
    SnapBegin, SnapItemsWriter, MAX_FRAME,
};
use meshcached::replication::log::{Entry, Mutation, Op, RunId};
use meshcached::store::{Exported, Flush, FlushState};

use super::input::{chunks, Input};

pub fn check(data: &[u8]) {
    let mut input = Input(data);
    if input.u8() % 2 == 0 {
        let seed = input.u64();
        stream(input.rest(), seed);
    } else {
        round_trip(&frame(&mut input));
    }
}

/// Decodes a stream fed in `sizes` pieces: the frames, then the error if one came.
fn drive(stream: &[u8], sizes: &[usize]) -> (Vec<Frame>, Option<FrameError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    for &size in sizes {
        buf.extend_from_slice(&stream[at..at + size]);
        at += size;
        loop {
            let before = buf.len();
            match decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => {
                    assert_eq!(buf.len(), before, "`need more` consumed bytes");
                    if buf.len() >= 4 {
                        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                        assert!(len <= MAX_FRAME, "waiting for a frame over MAX_FRAME");
                        assert!(buf.len() < 4 + len, "a whole frame held undecoded");
                    }
                    break;
                }
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

/// As [`drive`], with a [`Decoder`].
fn drive_joining(stream: &[u8], sizes: &[usize]) -> (Vec<Frame>, Option<FrameError>) {
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::default();
    let mut frames = Vec::new();
    let mut at = 0;
    for &size in sizes {
        buf.extend_from_slice(&stream[at..at + size]);
        at += size;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fn stream(bytes: &[u8], seed: u64) {
    let all = if bytes.is_empty() {
        vec![]
    } else {
        vec![bytes.len()]
    };
    let whole = drive(bytes, &all);
    let sizes = chunks(seed, bytes.len());
    let pieces = drive(bytes, &sizes);
    assert_eq!(whole, pieces, "whole vs pieces");
    // A stream decoder (which joins frames sent in parts) reads the same stream in pieces
    // without a panic; where no part came, it decodes exactly what `decode` does.
    let joined = drive_joining(bytes, &sizes);
    if !matches!(whole.1, Some(FrameError::PartCut)) {
        assert_eq!(whole, joined, "decode vs Decoder");
    }
    for f in &whole.0 {
        round_trip(f);
    }
}

/// `encode` then `decode` gives the frame back, consuming exactly its bytes.
fn round_trip(f: &Frame) {
    let mut out = BytesMut::new();
    encode(f, &mut out);
    let len = out.len();
    let mut buf = out.clone();
    buf.extend_from_slice(b"next");
    match decode(&mut buf) {
        Ok(Some(back)) => assert_eq!(&back, f, "round trip"),
        other => panic!("{f:?} encoded to {out:?}, which decodes to {other:?}"),
    }
    assert_eq!(
        &buf[..],
        b"next",
        "decode consumed other than the frame's {len} bytes"
    );
    match f {
        Frame::Batch { run_id, entries } => {
            let mut scratch = BytesMut::new();
            let mut chunks = Vec::new();
            encode_batch_chunks(*run_id, entries, &mut scratch, &mut chunks);
            assert_eq!(chunks.concat(), out.to_vec(), "batch chunks vs encode");
        }
        Frame::SnapItems(items) => {
            let mut written = BytesMut::new();
            let mut w = SnapItemsWriter::begin(&mut written);
            for m in items {
                let value = match &m.op {
                    Op::Put { value, .. } => Some(&value[..]),
                    _ => None,
                };
                let (flags, exptime) = match m.op {
                    Op::Put { flags, exptime, .. } => (flags, exptime),
                    _ => (0, 0),
                };
                w.push(
                    &mut written,
                    &Exported {
                        key: &m.key,
                        value,
                        flags,
                        exptime,
                        version: m.version,
                    },
                );
            }
            assert_eq!(w.count() as usize, items.len());
            w.finish(&mut written);
            assert_eq!(written, out, "SnapItemsWriter vs encode");
        }
        _ => {}
    }
}

/// A string the codec carries (at most 255 bytes of UTF-8).
fn name(input: &mut Input<'_>) -> String {
    input
        .string(255)
        .iter()
        .map(|&b| char::from(b'!' + b % 90))
        .collect()
}

fn key(input: &mut Input<'_>) -> Bytes {
    Bytes::copy_from_slice(input.string(MAX_KEY_LEN))
}

/// A mutation; `flush` allows the op a live batch has and a snapshot has not.
fn mutation(input: &mut Input<'_>, flush: bool) -> Mutation {
    let key = key(input);
    let version = Version(input.u64());
    let op = match input.u8() % if flush { 3 } else { 2 } {
        0 => Op::Put {
            value: Bytes::copy_from_slice(input.string(1024)),
            flags: input.u32(),
            exptime: input.u32(),
        },
        1 => Op::Delete,
        _ => Op::Flush { at_ms: input.u64() },
    };
    Mutation { key, version, op }
}

fn some<T>(input: &mut Input<'_>, max: u8, mut one: impl FnMut(&mut Input<'_>) -> T) -> Vec<T> {
    let n = input.u8() % (max + 1);
    (0..n).map(|_| one(input)).collect()
}

fn frame(input: &mut Input<'_>) -> Frame {
    match input.u8() % 11 {
        0 => Frame::Batch {
            run_id: RunId(input.u64()),
            entries: some(input, 8, |i| Entry {
                seq: i.u64(),
                mutation: mutation(i, true),
            }),
        },
        1 => Frame::Ack {
            run_id: RunId(input.u64()),
            seq: input.u64(),
        },
        2 => Frame::Hello(Hello {
            name: name(input),
            node_id: input.u16(),
            run_id: RunId(input.u64()),
            have_run: RunId(input.u64()),
            have_seq: input.u64(),
            flags: input.u8(),
            load: input.u16(),
            wall_ms: input.u64(),
            run_floor: input.u64(),
        }),
        3 => Frame::Members(some(input, 8, |i| Member {
            name: name(i),
            node_id: i.u16(),
            addr: name(i),
        })),
        4 => Frame::Status {
            ready: input.bool(),
            load: input.u16(),
        },
        5 => Frame::Start {
            run_id: RunId(input.u64()),
            seq: input.u64(),
        },
        6 if input.bool() => Frame::CatchUp {
            origin: input.u16(),
            token: input.u64(),
        },
        6 => Frame::SnapshotRequest { token: input.u64() },
        7 => Frame::Synced {
            snapshots: input.u32(),
        },
        8 => {
            let log_seq = input.u64();
            let items = input.u64();
            let flushes = some(input, 8, |i| Flush {
                issued: Version(i.u64()),
                at_ms: i.u64(),
            });
            Frame::SnapBegin(SnapBegin {
                log_seq,
                items,
                flush: FlushState { flushes },
                positions: some(input, 8, |i| Position {
                    origin: name(i),
                    run_id: RunId(i.u64()),
                    seq: i.u64(),
                }),
                token: input.u64(),
            })
        }
        9 => Frame::SnapItems(some(input, 8, |i| mutation(i, false))),
        _ => Frame::SnapEnd {
            items: input.u64(),
            bytes: input.u64(),
        },
    }
}
