//! Binary codec tests: every opcode, malformed and oversized requests, split frames,
//! random input, and responses against hand-written bytes.

use super::*;
use crate::clock::Version;
use proptest::prelude::*;

const MAX: usize = 100;

fn req(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
    let body = (extras.len() + key.len() + value.len()) as u32;
    let mut v = vec![REQUEST_MAGIC, opcode];
    v.extend_from_slice(&(key.len() as u16).to_be_bytes());
    v.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    v.extend_from_slice(&body.to_be_bytes());
    v.extend_from_slice(&0xa1b2c3d4u32.to_be_bytes());
    v.extend_from_slice(&cas.to_be_bytes());
    [v, extras.to_vec(), key.to_vec(), value.to_vec()].concat()
}

/// Decodes a complete frame, which must be consumed whole.
fn one(bytes: &[u8]) -> (Command, BinReply, bool) {
    let mut buf = BytesMut::from(bytes);
    let req = decode(&mut buf, MAX).unwrap().unwrap();
    assert!(buf.is_empty() && req.swallow == 0, "{req:?}");
    let Reply::Binary(r) = req.reply else {
        panic!("not binary")
    };
    assert_eq!(r.opaque, 0xa1b2c3d4);
    (req.command, r, req.close)
}

fn invalid(bytes: &[u8]) -> (Invalid, bool) {
    let mut buf = BytesMut::from(bytes);
    let req = decode(&mut buf, MAX).unwrap().unwrap();
    let Command::Invalid(inv) = req.command else {
        panic!("{req:?}")
    };
    (inv, req.close)
}

fn incr_extras(delta: u64, initial: u64, exp: u32) -> Vec<u8> {
    [
        &delta.to_be_bytes()[..],
        &initial.to_be_bytes(),
        &exp.to_be_bytes(),
    ]
    .concat()
}

#[test]
fn gets() {
    for (op, quiet, with_key, touch) in [
        (GET, false, false, None),
        (GETQ, true, false, None),
        (GETK, false, true, None),
        (GETKQ, true, true, None),
        (GAT, false, false, Some(100)),
        (GATQ, true, false, Some(100)),
        (GATK, false, true, Some(100)),
        (GATKQ, true, true, Some(100)),
        (TOUCH, false, false, Some(100)),
    ] {
        let extras = if touch.is_some() {
            &100u32.to_be_bytes()[..]
        } else {
            &[]
        };
        let (cmd, r, close) = one(&req(op, extras, b"foo", b"", 9));
        let expect = BinReply {
            opcode: op,
            opaque: 0xa1b2c3d4,
            quiet,
            with_key,
        };
        assert_eq!((r, close), (expect, false));
        let Command::Get {
            keys,
            touch: t,
            cas: true,
        } = cmd
        else {
            panic!("{cmd:?}")
        };
        assert_eq!((keys[0].as_bytes(), t), (&b"foo"[..], touch));
    }
}

#[test]
fn stores() {
    let extras = [0xdeadbeefu32.to_be_bytes(), u32::MAX.to_be_bytes()].concat();
    for (op, mode, quiet) in [
        (SET, StoreMode::Set, false),
        (SETQ, StoreMode::Set, true),
        (ADD, StoreMode::Add, false),
        (ADDQ, StoreMode::Add, true),
        (REPLACE, StoreMode::Replace, false),
        (REPLACEQ, StoreMode::Replace, true),
        (APPEND, StoreMode::Append, false),
        (APPENDQ, StoreMode::Append, true),
        (PREPEND, StoreMode::Prepend, false),
        (PREPENDQ, StoreMode::Prepend, true),
    ] {
        let ex: &[u8] = if matches!(mode, StoreMode::Append | StoreMode::Prepend) {
            &[]
        } else {
            &extras
        };
        let (cmd, r, _) = one(&req(op, ex, b"k", b"value", 7));
        assert_eq!(r.quiet, quiet);
        let Command::Store {
            mode: m,
            key,
            flags,
            exptime,
            value,
            cas,
        } = cmd
        else {
            panic!("{cmd:?}")
        };
        assert_eq!(
            (m, key.as_bytes(), &value[..], cas),
            (mode, &b"k"[..], &b"value"[..], 7)
        );
        if !ex.is_empty() {
            assert_eq!((flags, exptime), (0xdeadbeef, i64::from(u32::MAX)));
        }
    }
}

#[test]
fn other_requests() {
    let (cmd, r, _) = one(&req(DELETEQ, &[], b"k", b"", 5));
    assert!(matches!(cmd, Command::Delete { cas: 5, .. }) && r.quiet);
    let (cmd, r, _) = one(&req(INCREMENTQ, &incr_extras(2, 10, 60), b"k", b"", 3));
    let Command::Arith {
        incr: true,
        delta: 2,
        initial: Some((10, 60)),
        cas: 3,
        ..
    } = cmd
    else {
        panic!("{cmd:?}")
    };
    assert!(r.quiet);
    let (cmd, _, _) = one(&req(DECREMENT, &incr_extras(1, 10, u32::MAX), b"k", b"", 0));
    assert!(matches!(
        cmd,
        Command::Arith {
            incr: false,
            initial: None,
            ..
        }
    ));
    assert!(matches!(
        one(&req(FLUSH, &[], b"", b"", 0)).0,
        Command::Flush { delay: 0 }
    ));
    let (cmd, r, _) = one(&req(FLUSHQ, &30u32.to_be_bytes(), b"", b"", 0));
    assert!(matches!(cmd, Command::Flush { delay: 30 }) && r.quiet);
    assert!(matches!(one(&req(NOOP, &[], b"", b"", 0)).0, Command::Noop));
    assert!(matches!(
        one(&req(VERSION, &[], b"", b"", 0)).0,
        Command::Version
    ));
    assert!(matches!(
        one(&req(STAT, &[], b"", b"", 0)).0,
        Command::Stats { group: None }
    ));
    let (cmd, _, _) = one(&req(STAT, &[], b"items", b"", 0));
    assert!(matches!(cmd, Command::Stats { group: Some(g) } if g == "items"));
    for op in [QUIT, QUITQ] {
        let (cmd, r, close) = one(&req(op, &[], b"", b"", 0));
        assert!(matches!(cmd, Command::Quit) && close && r.quiet == (op == QUITQ));
    }
    // memcached 1.6 serves neither VERBOSITY nor SASL (when built without it).
    for frame in [
        req(0x1b, &1u32.to_be_bytes(), b"", b"", 0),
        req(SASL_LIST_MECHS, &[], b"", b"", 0),
        req(SASL_AUTH, &[], b"PLAIN", b"\0u\0p", 0),
        req(0x50, &[1, 2], b"key", b"value", 0),
    ] {
        assert!(matches!(
            one(&frame),
            (Command::Invalid(Invalid::Unknown), _, false)
        ));
    }
}

#[test]
fn malformed_requests_answer_and_close() {
    let einval = (BAD_ARGS, true);
    assert_eq!(invalid(&req(GET, &[0; 4], b"k", b"", 0)), einval);
    assert_eq!(invalid(&req(GET, &[], b"", b"", 0)), einval);
    assert_eq!(invalid(&req(GET, &[], b"k", b"v", 0)), einval);
    assert_eq!(invalid(&req(SET, &[0; 4], b"k", b"v", 0)), einval);
    assert_eq!(invalid(&req(APPEND, &[0; 8], b"k", b"v", 0)), einval);
    assert_eq!(invalid(&req(INCREMENT, &[0; 20], b"k", b"x", 0)), einval);
    assert_eq!(invalid(&req(FLUSH, &[0; 4], b"k", b"", 0)), einval);
    assert_eq!(invalid(&req(NOOP, &[], b"", b"x", 0)), einval);
    assert_eq!(invalid(&req(TOUCH, &[], b"k", b"", 0)), einval);
    assert_eq!(invalid(&req(STAT, &[1], b"", b"", 0)), einval);
    assert_eq!(invalid(&req(0x1b, &[1], &[b'k'; 251], b"", 0)), einval);
    // Extras and key longer than the body: "Unknown command", then close.
    let mut frame = req(GET, &[], b"abc", b"", 0);
    frame[11] = 1;
    assert_eq!(invalid(&frame), (Invalid::Unknown, true));
    // A body over 1 GiB is refused from its header alone.
    let mut frame = req(SET, &[], b"", b"", 0);
    frame[8..12].copy_from_slice(&(MAX_BODY as u32 + 1).to_be_bytes());
    assert_eq!(invalid(&frame), einval);
    let mut buf = BytesMut::from(&b"\x81\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"[..]);
    assert_eq!(decode(&mut buf, MAX).unwrap_err(), BinError::BadMagic(0x81));
}

#[test]
fn values_too_large_are_skipped_not_buffered() {
    let extras = [0u8; 8];
    let frame = req(SET, &extras, b"big", &[b'x'; MAX + 1], 0);
    let head = HEADER_LEN + 8 + 3;
    for have in [head, head + 5, frame.len()] {
        let mut buf = BytesMut::from(&frame[..have]);
        let req = decode(&mut buf, MAX).unwrap().unwrap();
        let Command::TooLarge {
            mode: StoreMode::Set,
            key: Some(k),
        } = &req.command
        else {
            panic!("{req:?}")
        };
        assert_eq!(k.as_bytes(), b"big");
        // What was consumed plus what is to be skipped is exactly the frame.
        assert_eq!(have - buf.len() + req.swallow, frame.len());
        assert_eq!(req.swallow, if have == frame.len() { 0 } else { MAX + 1 });
    }
    // An unknown opcode's surplus body is skipped the same way.
    let frame = req(0x50, &[], b"k", b"0123456789", 0);
    let mut buf = BytesMut::from(&frame[..HEADER_LEN + 3]);
    let req = decode(&mut buf, MAX).unwrap().unwrap();
    assert_eq!((req.swallow, buf.len()), (10, 2));
}

#[test]
fn split_anywhere_consumes_nothing_until_complete() {
    let frames = [
        req(GETK, &[], b"key", b"", 0),
        req(SET, &[0, 0, 0, 1, 0, 0, 0, 2], b"key", b"some value", 1),
        req(APPENDQ, &[], b"key", b"tail", 0),
        req(INCREMENT, &incr_extras(1, 2, 3), b"n", b"", 0),
        req(GAT, &[0, 0, 0, 9], b"key", b"", 0),
        req(STAT, &[], b"settings", b"", 0),
        req(NOOP, &[], b"", b"", 0),
    ];
    for frame in &frames {
        for cut in 0..frame.len() {
            let mut buf = BytesMut::from(&frame[..cut]);
            assert!(
                decode(&mut buf, MAX).unwrap().is_none(),
                "cut {cut} of {frame:?}"
            );
            assert_eq!(&buf[..], &frame[..cut]);
        }
    }
    let mut buf = BytesMut::from(&frames.concat()[..]);
    for _ in &frames {
        assert!(decode(&mut buf, MAX).unwrap().is_some());
    }
    assert!(buf.is_empty());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        drain(bytes);
    }

    #[test]
    fn random_requests_never_panic(
        opcode in any::<u8>(), keylen in 0u16..300, extlen in 0u8..32,
        bodylen in 0u32..700, tail in proptest::collection::vec(any::<u8>(), 0..700),
    ) {
        let mut frame = vec![REQUEST_MAGIC, opcode];
        frame.extend_from_slice(&keylen.to_be_bytes());
        frame.extend_from_slice(&[extlen, 0, 0, 0]);
        frame.extend_from_slice(&bodylen.to_be_bytes());
        frame.extend_from_slice(&[0; 12]);
        frame.extend_from_slice(&tail);
        drain(frame);
    }
}

/// Decodes until stuck; every request must consume something.
fn drain(bytes: Vec<u8>) {
    let mut buf = BytesMut::from(&bytes[..]);
    loop {
        let before = buf.clone();
        match decode(&mut buf, MAX) {
            Ok(Some(_)) => assert!(buf.len() < before.len()),
            Ok(None) => return assert_eq!(buf, before),
            Err(_) => return,
        }
    }
}

fn reply(opcode: u8) -> BinReply {
    let (_, quiet) = unquiet(opcode);
    BinReply {
        opcode,
        opaque: 0x01020304,
        quiet,
        with_key: matches!(opcode, GETK | GETKQ),
    }
}

fn encoded(opcode: u8, outcome: Outcome) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(&reply(opcode), &outcome, &mut out);
    out.to_vec()
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn hits_and_misses() {
    let item = ItemRef {
        key: b"foo",
        value: b"bar",
        flags: 0xdeadbeef,
        exptime: 0,
        version: Version(0x1122334455667788),
        last_access: 0,
        fetched: false,
        bits: 0,
    };
    let (mut get, mut getk, mut touch) = (BytesMut::new(), BytesMut::new(), BytesMut::new());
    encode_hit(&reply(GETQ), &item, &mut get);
    encode_hit(&reply(GETK), &item, &mut getk);
    encode_hit(&reply(TOUCH), &item, &mut touch);
    let head = "01020304 1122334455667788 deadbeef";
    assert_eq!(
        get,
        hex(&format!("8109 0000 04 00 0000 00000007 {head} 626172"))
    );
    assert_eq!(
        getk,
        hex(&format!(
            "810c 0003 04 00 0000 0000000a {head} 666f6f 626172"
        ))
    );
    assert_eq!(touch, hex(&format!("811c 0000 04 00 0000 00000004 {head}")));
    let key = Key::binary(Bytes::from_static(b"foo")).unwrap();
    let miss = |op| {
        let mut out = BytesMut::new();
        encode_miss(&reply(op), &key, &mut out);
        out.to_vec()
    };
    let zero = "01020304 0000000000000000";
    assert_eq!(
        miss(GETK),
        hex(&format!("810c 0003 00 00 0001 00000003 {zero} 666f6f"))
    );
    let not_found = hex(&format!(
        "8100 0000 00 00 0001 00000009 {zero} 4e6f7420666f756e64"
    ));
    assert_eq!(miss(GET), not_found);
    assert!(miss(GETQ).is_empty() && miss(GETKQ).is_empty());
}

/// (status, body) of a single response, after checking its header.
fn status(bytes: &[u8]) -> (u16, &[u8]) {
    assert_eq!(bytes[0], RESPONSE_MAGIC);
    assert_eq!(bytes[12..16], [1, 2, 3, 4]);
    assert_eq!(
        u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize,
        bytes.len() - 24
    );
    (u16::from_be_bytes([bytes[6], bytes[7]]), &bytes[24..])
}

#[test]
fn outcomes() {
    assert!(encoded(SETQ, Outcome::Stored(Version(5))).is_empty());
    assert_eq!(
        encoded(SET, Outcome::Stored(Version(5)))[16..],
        5u64.to_be_bytes()
    );
    assert_eq!(
        status(&encoded(ADD, Outcome::NotStored { exists: true })),
        (2, &b"Data exists for key."[..])
    );
    assert_eq!(
        status(&encoded(REPLACEQ, Outcome::NotStored { exists: false })),
        (1, &b"Not found"[..])
    );
    assert_eq!(
        status(&encoded(APPENDQ, Outcome::NotStored { exists: false })),
        (5, &b"Not stored."[..])
    );
    assert_eq!(
        status(&encoded(SET, Outcome::TooLarge)),
        (3, &b"Too large."[..])
    );
    assert_eq!(status(&encoded(SETQ, Outcome::Exists)).0, 2);
    assert_eq!(
        status(&encoded(DELETEQ, Outcome::NotFound)),
        (1, &b"Not found"[..])
    );
    assert!(
        encoded(DELETEQ, Outcome::Deleted).is_empty() && encoded(QUITQ, Outcome::Ok).is_empty()
    );
    assert_eq!(
        status(&encoded(INCREMENT, Outcome::NonNumeric)).1,
        b"Non-numeric server-side value for incr or decr"
    );
    assert_eq!(
        status(&encoded(SET, Outcome::OutOfMemory)),
        (0x82, &b"Out of memory allocating item"[..])
    );
    assert_eq!(
        status(&encoded(0x1b, Outcome::Invalid(Invalid::Unknown))),
        (0x81, &b"Unknown command"[..])
    );
    assert_eq!(
        status(&encoded(GET, Outcome::Invalid(BAD_ARGS))),
        (4, &b"Invalid arguments"[..])
    );
    assert_eq!(
        status(&encoded(FLUSH, Outcome::Invalid(Invalid::Client("x")))),
        (0x20, &b"Auth failure."[..])
    );
    assert_eq!(
        status(&encoded(VERSION, Outcome::Version("1.6.45"))),
        (0, &b"1.6.45"[..])
    );
    let zero = "01020304 0000000000000000";
    assert_eq!(
        encoded(INCREMENTQ, Outcome::Number(5, Version(9))),
        Vec::<u8>::new(),
    );
    assert_eq!(
        encoded(INCREMENT, Outcome::Number(5, Version(9))),
        hex("8105 0000 00 00 0000 00000008 01020304 0000000000000009 0000000000000005")
    );
    let stats = Outcome::Stats(vec![("pid".into(), "1".into())]);
    assert_eq!(
        encoded(STAT, stats),
        hex(&format!(
            "8110 0003 00 00 0000 00000004 {zero} 70696431 8110 0000 00 00 0000 00000000 {zero}"
        ))
    );
    assert_eq!(
        encoded(STAT, Outcome::Invalid(Invalid::Unknown))[6..8],
        [0, 1]
    );
}

#[test]
fn a_bad_header_is_answered_before_its_key_arrives() {
    // GET with keylen 65535: refused on the 24-byte header alone.
    let mut header = [0u8; 24];
    header[0] = 0x80;
    header[2] = 0xff;
    header[3] = 0xff;
    header[8..12].copy_from_slice(&65535u32.to_be_bytes());
    let mut buf = BytesMut::from(&header[..]);
    let req = decode(&mut buf, 1 << 20)
        .unwrap()
        .expect("answered without the key");
    assert!(req.close);
    assert!(matches!(req.command, Command::Invalid(_)));
}
