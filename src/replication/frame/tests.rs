//! Frame codec tests: round trips split anywhere, chunked batches, garbage, and the
//! previous release's flush encodings.

use super::*;
use crate::store::{Flush, FlushState};
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
                _ => Op::Flush {
                    at_ms: u64::from(exptime) * 1000 + u64::from(flags % 1000),
                },
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
        (
            "[a-z0-9-]{0,20}",
            any::<u16>(),
            any::<[u64; 4]>(),
            any::<(u8, u16)>()
        )
            .prop_map(|(name, id, n, (flags, load))| {
                Frame::Hello(Hello {
                    name,
                    node_id: id,
                    run_id: RunId(n[0]),
                    have_run: RunId(n[1]),
                    have_seq: n[2],
                    flags,
                    load,
                    wall_ms: n[3],
                    run_floor: n[0] ^ n[3],
                })
            }),
        proptest::collection::vec(("[a-z0-9-]{0,20}", any::<u16>(), "[0-9.:]{0,21}"), 0..4)
            .prop_map(|ms| Frame::Members(
                ms.into_iter()
                    .map(|(name, node_id, addr)| Member {
                        name,
                        node_id,
                        addr
                    })
                    .collect()
            )),
        (any::<bool>(), any::<u16>()).prop_map(|(ready, load)| Frame::Status { ready, load }),
        (any::<u64>(), any::<u64>()).prop_map(|(r, seq)| Frame::Start {
            run_id: RunId(r),
            seq
        }),
        any::<u64>().prop_map(|token| Frame::SnapshotRequest { token }),
        (any::<u16>(), any::<u64>()).prop_map(|(origin, token)| Frame::CatchUp { origin, token }),
        any::<u32>().prop_map(|snapshots| Frame::Synced { snapshots }),
        (
            any::<[u64; 3]>(),
            proptest::collection::vec(any::<(u64, u64)>(), 0..5),
            proptest::collection::vec(("[a-z0-9-]{0,20}", any::<u64>(), any::<u64>()), 0..3)
        )
            .prop_map(|(n, flushes, ps)| Frame::SnapBegin(SnapBegin {
                log_seq: n[0],
                items: n[1],
                flush: FlushState {
                    flushes: flushes
                        .into_iter()
                        .map(|(v, at_ms)| Flush {
                            issued: Version(v),
                            at_ms
                        })
                        .collect(),
                },
                positions: ps
                    .into_iter()
                    .map(|(origin, r, seq)| Position {
                        origin,
                        run_id: RunId(r),
                        seq
                    })
                    .collect(),
                token: n[2],
            })),
        proptest::collection::vec(entry(), 0..4).prop_map(|es| Frame::SnapItems(
            es.into_iter()
                .map(|e| {
                    let mut m = e.mutation;
                    if let Op::Flush { .. } = m.op {
                        m.op = Op::Delete;
                    }
                    m
                })
                .collect()
        )),
        (any::<u64>(), any::<u64>()).prop_map(|(items, bytes)| Frame::SnapEnd { items, bytes }),
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

    /// The chunked encoding of a batch is byte for byte the plain one, and large values
    /// are not copied.
    #[test]
    fn chunks_concatenate_to_the_encoding(run in any::<u64>(), entries in proptest::collection::vec(entry(), 0..5), big in 0usize..2000) {
        let mut entries = entries;
        if let Some(e) = entries.first_mut() {
            e.mutation.op = Op::Put { value: Bytes::from(vec![7u8; big]), flags: 1, exptime: 2 };
        }
        let frame = Frame::Batch { run_id: RunId(run), entries: entries.clone() };
        let mut plain = BytesMut::new();
        encode(&frame, &mut plain);
        let (mut scratch, mut chunks) = (BytesMut::new(), Vec::new());
        encode_batch_chunks(RunId(run), &entries, &mut scratch, &mut chunks);
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        prop_assert_eq!(&joined[..], &plain[..]);
        if let Some(Op::Put { value, .. }) = entries.first().map(|e| &e.mutation.op) {
            if value.len() >= ZERO_COPY_MIN {
                prop_assert!(chunks.iter().any(|c| c.as_ptr() == value.as_ptr()));
            }
        }
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
    let mut unknown = BytesMut::from(&[0, 0, 0, 1, 99][..]);
    assert_eq!(decode(&mut unknown), Err(FrameError::UnknownKind(99)));
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

/// The in-place writer a donor uses encodes exactly what [`encode`] does.
#[test]
fn snap_items_writer_matches_the_encoding() {
    use crate::store::Exported;
    let exported = [
        Exported {
            key: b"a",
            value: Some(b"xyz"),
            flags: 7,
            exptime: 9,
            version: Version(11),
        },
        Exported {
            key: b"gone",
            value: None,
            flags: 0,
            exptime: 0,
            version: Version(12),
        },
    ];
    let mut built = BytesMut::new();
    built.put_u8(0xee); // the writer appends after whatever is there
    let mut w = SnapItemsWriter::begin(&mut built);
    for e in &exported {
        w.push(&mut built, e);
    }
    assert_eq!(w.count(), 2);
    w.finish(&mut built);
    let _ = built.split_to(1);
    let items = vec![
        Mutation {
            key: Bytes::from_static(b"a"),
            version: Version(11),
            op: Op::Put {
                value: Bytes::from_static(b"xyz"),
                flags: 7,
                exptime: 9,
            },
        },
        Mutation {
            key: Bytes::from_static(b"gone"),
            version: Version(12),
            op: Op::Delete,
        },
    ];
    let mut plain = BytesMut::new();
    encode(&Frame::SnapItems(items.clone()), &mut plain);
    assert_eq!(&built[..], &plain[..]);
    assert_eq!(decode(&mut built), Ok(Some(Frame::SnapItems(items))));
}

/// A node of the previous release sends a flush with its barrier as version and its time in
/// seconds, and a snapshot start with one floor and one pending flush: both still read, as
/// the flushes they meant (the barrier of each is the version it carried).
#[test]
fn the_previous_releases_flushes_still_decode() {
    let mut batch = BytesMut::new();
    batch.put_u32(1 + 8 + 4 + 8 + 8 + 1 + 2 + 4);
    batch.put_u8(BATCH);
    batch.put_u64(3);
    batch.put_u32(1);
    batch.put_u64(1); // seq
    batch.put_u64(500); // version: the barrier
    batch.put_u8(3); // FLUSH_V1
    batch.put_u16(0);
    batch.put_u32(1_800_000_000);
    let Ok(Some(Frame::Batch { entries, .. })) = decode(&mut batch) else {
        panic!("a batch");
    };
    assert_eq!(entries[0].mutation.version, Version(500));
    assert_eq!(
        entries[0].mutation.op,
        Op::Flush {
            at_ms: 1_800_000_000_000
        }
    );

    let mut begin = BytesMut::new();
    begin.put_u32(1 + 8 + 8 + 8 + 8 + 4 + 2);
    begin.put_u8(9); // SNAP_BEGIN_V1
    begin.put_u64(7);
    begin.put_u64(100);
    begin.put_u64(40); // floor
    begin.put_u64(60); // pending version
    begin.put_u32(1_800_000_000); // pending time, seconds
    begin.put_u16(0);
    let Ok(Some(Frame::SnapBegin(b))) = decode(&mut begin) else {
        panic!("a snapshot start");
    };
    let flush = |v, at_ms| Flush {
        issued: Version(v),
        at_ms,
    };
    assert_eq!(
        b.flush.flushes,
        vec![flush(40, 0), flush(60, 1_800_000_000_000)]
    );
    assert_eq!(b.flush.flushes[0].barrier(), Version(40));
    assert_eq!((b.log_seq, b.items), (7, 100));
}

proptest! {
    /// A frame cut into parts (here at a small size, as [`split_into_parts`] does above
    /// MAX_FRAME) is joined back by the decoder whatever the reads' sizes, with the frames
    /// around it; its wire size is all its parts'.
    #[test]
    fn parts_join_back_into_the_frame(
        frames in proptest::collection::vec(frame(), 1..3),
        big in 200usize..3000,
        part in 1usize..200,
        read in 1usize..500,
    ) {
        let entry = Entry {
            seq: 9,
            mutation: Mutation {
                key: Bytes::from_static(b"big"),
                version: Version(77),
                op: Op::Put { value: Bytes::from(vec![5u8; big]), flags: 1, exptime: 0 },
            },
        };
        let (mut scratch, mut chunks) = (BytesMut::new(), Vec::new());
        encode_batch_chunks(RunId(3), std::slice::from_ref(&entry), &mut scratch, &mut chunks);
        let whole: usize = chunks.iter().map(Bytes::len).sum();
        parts::split_at(&mut chunks, 100, part);
        let mut wire = BytesMut::new();
        encode(&frames[0], &mut wire);
        let before = wire.len();
        for c in &chunks {
            wire.extend_from_slice(c);
        }
        let parted = wire.len() - before;
        prop_assert!(parted > whole, "parts add headers");
        for f in &frames[1..] {
            encode(f, &mut wire);
        }
        let mut want = vec![frames[0].clone(), Frame::Batch { run_id: RunId(3), entries: vec![entry] }];
        want.extend(frames[1..].iter().cloned());
        let mut decoder = Decoder::default();
        let (mut buf, mut got, mut wires) = (BytesMut::new(), Vec::new(), Vec::new());
        for piece in wire.chunks(read) {
            buf.extend_from_slice(piece);
            while let Some(f) = decoder.decode(&mut buf).unwrap() {
                got.push(f);
                wires.push(decoder.take_wire());
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, want);
        prop_assert_eq!(wires[1], parted);
    }

    /// Garbage, parts included, is an error or a need for more bytes, never a panic.
    #[test]
    fn garbage_parts_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut buf = BytesMut::new();
        for b in bytes.chunks(7) {
            buf.put_u32(1 + b.len() as u32);
            buf.put_u8(parts::PART);
            buf.put_slice(b);
        }
        let mut decoder = Decoder::default();
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
    }
}

fn part(data: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(1 + data.len() as u32);
    b.put_u8(parts::PART);
    b.put_slice(data);
    b
}

#[test]
fn malformed_parts_are_errors() {
    // A part where a whole frame is due (a hello, or any stream read without a decoder).
    assert_eq!(decode(&mut part(b"xyz")), Err(FrameError::PartCut));
    // Another frame between the parts of one.
    let mut buf = part(&[0, 0, 1, 0]);
    encode(&Frame::SnapEnd { items: 1, bytes: 2 }, &mut buf);
    assert_eq!(
        Decoder::default().decode(&mut buf),
        Err(FrameError::PartCut)
    );
    // A joined frame over the limit is refused as soon as its length is known.
    let over = (MAX_ASSEMBLED as u32 + 1).to_be_bytes();
    assert_eq!(
        Decoder::default().decode(&mut part(&over)),
        Err(FrameError::TooLarge(MAX_ASSEMBLED + 1))
    );
    // Parts that run past the frame they carry.
    let mut inner = BytesMut::new();
    encode(&Frame::SnapEnd { items: 1, bytes: 2 }, &mut inner);
    inner.put_u8(0);
    assert_eq!(
        Decoder::default().decode(&mut part(&inner)),
        Err(FrameError::Trailing(1))
    );
    // Parts within parts.
    let mut nested = BytesMut::new();
    nested.put_u32(2);
    nested.put_u8(parts::PART);
    nested.put_u8(0);
    assert_eq!(
        Decoder::default().decode(&mut part(&nested)),
        Err(FrameError::PartCut)
    );
}

#[test]
fn frames_up_to_the_limit_are_not_cut() {
    let mut chunks = vec![Bytes::from(vec![0u8; 104])];
    parts::split_at(&mut chunks, 100, 10);
    assert_eq!(chunks.len(), 1);
    parts::split_at(&mut chunks, 99, 10);
    assert_eq!(chunks.len(), 22, "11 parts, each a header and a slice");
}

#[test]
fn anti_entropy_frames_round_trip_and_their_lengths_are_known() {
    let put = Mutation {
        key: Bytes::from_static(b"k"),
        version: Version(9),
        op: Op::Put {
            value: Bytes::from_static(b"value"),
            flags: 3,
            exptime: 7,
        },
    };
    let tomb = Mutation {
        key: Bytes::from_static(b"gone"),
        version: Version(10),
        op: Op::Delete,
    };
    let frames = vec![
        Frame::DigestRequest { token: 1 },
        Frame::Digest(Digest {
            token: 2,
            flush: FlushState {
                flushes: vec![Flush {
                    issued: Version(5),
                    at_ms: 6,
                }],
            },
            buckets: (0..crate::store::BUCKETS as u64).collect(),
        }),
        Frame::KeysRequest {
            token: 3,
            buckets: vec![0, 17, 1023],
        },
        Frame::Keys {
            token: 4,
            lists: vec![
                (17, vec![(Bytes::from_static(b"a"), Version(1))]),
                (1023, vec![]),
            ],
        },
        Frame::RepairRequest {
            token: 5,
            keys: vec![Bytes::from_static(b"a"), Bytes::from_static(b"bb")],
        },
        Frame::Repair {
            token: 6,
            items: vec![put, tomb],
        },
    ];
    for f in frames {
        let mut out = BytesMut::new();
        encode(&f, &mut out);
        assert_eq!(wire_len(&f), out.len(), "{f:?}");
        assert_eq!(decode(&mut out).unwrap(), Some(f));
        assert!(out.is_empty());
    }
}

#[test]
fn anti_entropy_counts_out_of_bounds_are_errors() {
    let frame = |body: &[u8]| {
        let mut b = BytesMut::new();
        b.put_u32(body.len() as u32);
        b.put_slice(body);
        decode(&mut b)
    };
    // A digest of the wrong number of buckets.
    let mut d = vec![16u8];
    d.extend_from_slice(&[0; 8]);
    d.push(0);
    d.extend_from_slice(&3u16.to_be_bytes());
    d.extend_from_slice(&[0; 24]);
    assert!(matches!(frame(&d), Err(FrameError::Count(..))));
    // Too many buckets asked for, and a bucket out of range.
    let mut k = vec![17u8];
    k.extend_from_slice(&[0; 8]);
    k.extend_from_slice(&65u16.to_be_bytes());
    assert!(matches!(frame(&k), Err(FrameError::Count(..))));
    let mut k = vec![17u8];
    k.extend_from_slice(&[0; 8]);
    k.extend_from_slice(&1u16.to_be_bytes());
    k.extend_from_slice(&1024u16.to_be_bytes());
    assert!(matches!(frame(&k), Err(FrameError::Count(..))));
    // Too many keys asked for; a list claiming more entries than its bytes hold.
    let mut r = vec![19u8];
    r.extend_from_slice(&[0; 8]);
    r.extend_from_slice(&5000u32.to_be_bytes());
    assert!(matches!(frame(&r), Err(FrameError::Count(..))));
    let mut l = vec![18u8];
    l.extend_from_slice(&[0; 8]);
    l.extend_from_slice(&1u16.to_be_bytes());
    l.extend_from_slice(&0u16.to_be_bytes());
    l.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(frame(&l), Err(FrameError::Truncated)));
}
