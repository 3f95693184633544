//! Meta decoder tests: every command and flag, memcached's error wording, the line-level
//! number and base64 rules, and every input split at every position.

use bytes::BytesMut;
use proptest::prelude::*;

use super::flags::{base64_encode, tokenize};
use super::*;
use crate::protocol::text;

const MAX: usize = 1 << 20;

/// Decodes through the text decoder, which frames lines and hands meta ones over.
fn decode_all(input: &[u8], max_value: usize) -> Vec<Request> {
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(req) = text::decode(&mut buf, max_value).expect("meta decode") {
        out.push(req);
    }
    out
}

fn one(input: &str) -> Request {
    let mut reqs = decode_all(input.as_bytes(), MAX);
    assert_eq!(reqs.len(), 1, "{input:?} gave {reqs:?}");
    reqs.remove(0)
}

fn meta_cmd(input: &str) -> (MetaCommand, MetaReply) {
    match one(input) {
        Request {
            command: Command::Meta(c),
            reply: Reply::Meta(r),
            ..
        } => (c, r),
        other => panic!("{input:?} gave {other:?}"),
    }
}

/// The CLIENT_ERROR message (and swallow) a line gets.
fn error_of(input: &str) -> (&'static str, usize) {
    match one(input) {
        Request {
            command: Command::Invalid(Invalid::Client(m)),
            reply: Reply::Meta(r),
            swallow,
            ..
        } => {
            assert_eq!(r, MetaReply::default());
            (m, swallow)
        }
        other => panic!("{input:?} gave {other:?}"),
    }
}

fn key(k: &str) -> Key {
    Key::parse(Bytes::copy_from_slice(k.as_bytes())).expect("test key")
}

fn opaque(o: &str) -> Ret {
    Ret::Opaque(Bytes::copy_from_slice(o.as_bytes()))
}

#[test]
fn mg_flags() {
    let (cmd, reply) = meta_cmd("mg foo s v t c f l h k Oab q u T30 N-1 R5 E77 C9\r\n");
    assert_eq!(
        cmd,
        MetaCommand::Get(MetaGet {
            key: key("foo"),
            touch: Some(30),
            vivify: Some(-1),
            recache: Some(5),
            no_bump: true,
            compare_cas: Some(9),
            cas_in: Some(77),
        })
    );
    assert!(reply.value && reply.quiet && !reply.base64);
    assert_eq!(reply.key, Some(key("foo")));
    assert_eq!(
        reply.rets,
        vec![
            Ret::Size,
            Ret::Ttl,
            Ret::Cas,
            Ret::ClientFlags,
            Ret::LastAccess,
            Ret::Hit,
            Ret::Key,
            opaque("Oab"),
            Ret::Touch,
            Ret::Vivify,
            Ret::Recache,
        ]
    );
    // No flags, bare \n, runs of spaces.
    let (cmd, reply) = meta_cmd("mg  foo\n");
    assert!(matches!(cmd, MetaCommand::Get(g) if g.key == key("foo") && g.touch.is_none()));
    assert!(reply.rets.is_empty() && !reply.value);
}

#[test]
fn base64_keys() {
    let (cmd, reply) = meta_cmd("mg Zm9v b k v\r\n");
    assert!(matches!(&cmd, MetaCommand::Get(g) if g.key.as_bytes() == b"foo"));
    assert!(reply.base64);
    // Binary bytes are fine once decoded; spaces and control characters included.
    let (cmd, _) = meta_cmd("md AAEgCg== b\r\n");
    assert!(matches!(&cmd, MetaCommand::Delete(d) if d.key.as_bytes() == b"\x00\x01 \n"));
    assert_eq!(error_of("mg Zm9v== b\r\n").0, "error decoding key");
    assert_eq!(error_of("mg !!!! b\r\n").0, "error decoding key");
    // ma says the same thing about every flag problem.
    assert_eq!(error_of("ma !!!! b\r\n").0, "invalid or duplicate flag");
}

#[test]
fn ms_decodes_value_and_flags() {
    let (cmd, reply) = meta_cmd("ms Zm9v 5 T90 F7 C12 E13 I MA N30 c k s b q\r\nhello\r\n");
    let MetaCommand::Set(s) = cmd else {
        panic!("not a set")
    };
    assert_eq!(s.key.as_bytes(), b"foo");
    assert_eq!(s.value.as_deref(), Some(&b"hello"[..]));
    assert_eq!(s.mode, StoreMode::Append);
    assert_eq!(
        (s.flags, s.exptime, s.compare_cas, s.cas_in),
        (7, 90, Some(12), Some(13))
    );
    assert!(s.invalidate && reply.quiet && reply.base64);
    assert_eq!(s.vivify, Some(30));
    assert_eq!(
        reply.rets,
        vec![Ret::Touch, Ret::Vivify, Ret::Cas, Ret::Key, Ret::Size]
    );
    for (m, mode) in [
        ("", StoreMode::Set),
        (" MS", StoreMode::Set),
        (" ME", StoreMode::Add),
        (" MP", StoreMode::Prepend),
        (" MR", StoreMode::Replace),
        // Only the byte after M counts.
        (" MEXTRA", StoreMode::Add),
    ] {
        let (cmd, _) = meta_cmd(&format!("ms k 1{m}\r\nx\r\n"));
        assert!(matches!(cmd, MetaCommand::Set(s) if s.mode == mode), "{m}");
    }
    // A value may hold anything, CRLF included; an empty one is fine.
    let (cmd, _) = meta_cmd("ms k 4\r\n\r\n\0x\r\n");
    assert!(matches!(cmd, MetaCommand::Set(s) if s.value.as_deref() == Some(&b"\r\n\0x"[..])));
    let (cmd, _) = meta_cmd("ms k 0\r\n\r\n");
    assert!(matches!(cmd, MetaCommand::Set(s) if s.value.as_deref() == Some(&b""[..])));
}

#[test]
fn ms_errors_swallow_the_data_once_its_length_is_known() {
    // Length unknown: nothing swallowed (the data line will be read as a command).
    assert_eq!(error_of("ms foo\r\n"), ("bad command line format", 0));
    assert_eq!(error_of("ms foo abc\r\n"), ("bad command line format", 0));
    assert_eq!(error_of("ms foo -1\r\n"), ("bad command line format", 0));
    assert_eq!(
        error_of("ms foo 000000000001\r\n"),
        ("bad command line format", 0)
    );
    assert_eq!(error_of("ms foo 2 !\r\n"), ("bad command line format", 0));
    // Length known: errors swallow length + 2.
    assert_eq!(error_of("ms foo 2 Z\r\n"), ("invalid flag", 4));
    assert_eq!(error_of("ms foo 2 c c\r\n"), ("duplicate flag", 4));
    assert_eq!(
        error_of("ms foo 2 Tx\r\n"),
        ("bad token in command line format", 4)
    );
    assert_eq!(error_of("ms foo 2 F-1\r\n"), ("bad command line format", 4));
    assert_eq!(
        error_of("ms foo 2 MZ\r\n"),
        ("invalid mode for ms M token", 4)
    );
    assert_eq!(
        error_of("ms foo 2 M\r\n"),
        ("invalid mode for ms M token", 4)
    );
    let long = format!("ms {} 2\r\n", "k".repeat(251));
    assert_eq!(error_of(&long), ("bad command line format", 4));
    // The length's odd forms mcmc accepts.
    let (cmd, _) = meta_cmd("ms foo - T0\r\n\r\n");
    assert!(matches!(cmd, MetaCommand::Set(s) if s.value.as_deref() == Some(&b""[..])));
}

#[test]
fn ms_data_block_checks() {
    // Found once the data is there: the block is consumed with the answer.
    let reqs = decode_all(b"ms foo 2\r\nhiX\r\nmn\r\n", MAX);
    assert!(matches!(
        &reqs[0].command,
        Command::Invalid(Invalid::Client("bad data chunk"))
    ));
    assert_eq!(reqs[0].swallow, 0);
    // "\n" is left, then mn.
    assert_eq!(reqs.len(), 3);
    let opaque = format!("ms foo 2 O{}\r\nhi\r\n", "o".repeat(32));
    assert_eq!(error_of(&opaque), ("opaque token too long", 0));
}

#[test]
fn ms_too_large_is_swallowed_not_buffered() {
    let mut buf = BytesMut::from(&b"ms big 100 T5 k\r\nxxxx"[..]);
    let req = text::decode(&mut buf, 10)
        .expect("decode")
        .expect("answered at once");
    assert_eq!(req.swallow, 102);
    assert_eq!(&buf[..], b"xxxx", "only the line is consumed");
    assert!(matches!(
        req.command,
        Command::Meta(MetaCommand::Set(MetaSet { value: None, .. }))
    ));
    // Flag errors still come first.
    let mut buf = BytesMut::from(&b"ms big 100 zz\r\n"[..]);
    let req = text::decode(&mut buf, 10)
        .expect("decode")
        .expect("answered");
    assert!(matches!(
        req.command,
        Command::Invalid(Invalid::Client("invalid flag"))
    ));
    assert_eq!(req.swallow, 102);
}

#[test]
fn ms_waits_for_its_data() {
    let mut buf = BytesMut::from(&b"ms foo 5 T1\r\nhel"[..]);
    assert!(text::decode(&mut buf, MAX).expect("decode").is_none());
    assert_eq!(&buf[..], b"ms foo 5 T1\r\nhel");
    buf.extend_from_slice(b"lo\r\n");
    assert!(text::decode(&mut buf, MAX).expect("decode").is_some());
    assert!(buf.is_empty());
}

#[test]
fn md_and_ma() {
    let (cmd, reply) = meta_cmd("md foo C5 E6 I x T30 F3 q k O1\r\n");
    assert_eq!(
        cmd,
        MetaCommand::Delete(MetaDelete {
            key: key("foo"),
            compare_cas: Some(5),
            cas_in: Some(6),
            invalidate: true,
            remove_value: true,
            exptime: Some(30),
            flags: 3,
        })
    );
    assert!(reply.quiet);
    assert_eq!(reply.rets, vec![Ret::Touch, Ret::Key, opaque("O1")]);
    let (cmd, reply) = meta_cmd("ma n N0 J13 D30 MD T9 C1 E2 t c v\r\n");
    assert_eq!(
        cmd,
        MetaCommand::Arith(MetaArith {
            key: key("n"),
            incr: false,
            delta: 30,
            initial: 13,
            vivify: Some(0),
            touch: Some(9),
            compare_cas: Some(1),
            cas_in: Some(2),
        })
    );
    assert!(reply.value);
    let (cmd, _) = meta_cmd("ma n\r\n");
    assert!(matches!(cmd, MetaCommand::Arith(a) if a.incr && a.delta == 1 && a.initial == 0));
    for (m, incr) in [("MI", true), ("M+", true), ("MD", false), ("M-", false)] {
        let (cmd, _) = meta_cmd(&format!("ma n {m}\r\n"));
        assert!(
            matches!(cmd, MetaCommand::Arith(a) if a.incr == incr),
            "{m}"
        );
    }
    assert_eq!(error_of("ma n Mi\r\n").0, "invalid mode for ma M token");
    assert_eq!(error_of("ma n M\r\n").0, "invalid mode for ma M token");
    // ma: one message for every flag problem; md says what is wrong.
    for bad in [
        "zz",
        "q q",
        "Dabc",
        "D-1",
        "D18446744073709551616",
        "Jx N0",
        "Cabc",
    ] {
        assert_eq!(
            error_of(&format!("ma n {bad}\r\n")).0,
            "invalid or duplicate flag"
        );
    }
    assert_eq!(error_of("md n zz\r\n").0, "invalid flag");
    assert_eq!(error_of("md n q q\r\n").0, "duplicate flag");
    assert_eq!(
        error_of("md n Cabc\r\n").0,
        "bad token in command line format"
    );
    assert_eq!(error_of("ma n Dabc\r\n").0, "invalid or duplicate flag");
    assert_eq!(error_of("mg n Jabc\r\n").0, "invalid numeric initial value");
    assert_eq!(error_of("mg n Dabc\r\n").0, "invalid numeric delta value");
}

#[test]
fn me_and_mn() {
    let (cmd, reply) = meta_cmd("me foo\r\n");
    assert_eq!(cmd, MetaCommand::Debug(key("foo")));
    assert!(!reply.base64);
    // 1.6.45 decodes a base64 key only when a token follows the b.
    let (cmd, _) = meta_cmd("me Zm9v b\r\n");
    assert_eq!(cmd, MetaCommand::Debug(key("Zm9v")));
    let (cmd, reply) = meta_cmd("me Zm9v b x\r\n");
    assert_eq!(cmd, MetaCommand::Debug(key("foo")));
    assert!(reply.base64);
    assert_eq!(error_of("me ! b x\r\n").0, "bad command line format");
    assert_eq!(error_of("me\r\n").0, "bad command line format");
    assert_eq!(error_of("me foo !\r\n").0, "bad command line format");
    assert_eq!(meta_cmd("mn\r\n").0, MetaCommand::Noop);
    assert_eq!(meta_cmd("mn anything at all !\r\n").0, MetaCommand::Noop);
    // "mn\n" is shorter than memcached's minimum command.
    assert_eq!(error_of("mn\n").0, "bad command line format");
}

#[test]
fn line_errors() {
    for (line, msg) in [
        ("mg\r\n", "bad command line format"),
        ("mg foo !\r\n", "bad command line format"),
        ("mg foo {\r\n", "bad command line format"),
        ("mg foo 5\r\n", "invalid flag"),
        ("mg foo S\r\n", "invalid flag"),
        ("mg foo [\r\n", "invalid flag"),
        ("mg foo v v\r\n", "duplicate flag"),
        ("mg foo T\r\n", "bad token in command line format"),
        ("mg foo T5x\r\n", "bad token in command line format"),
        ("mg foo Cx\r\n", "bad token in command line format"),
        // F keeps the default message, or an earlier one.
        ("mg foo Fx\r\n", "bad command line format"),
        ("mg foo Tx Fx\r\n", "bad token in command line format"),
        // Later errors replace earlier ones; unknown flags stop at once.
        ("mg foo Tx Nx Cx zz\r\n", "invalid flag"),
        (
            "mg foo a b c d e f g h i j k l m n o p q r s\r\n",
            "options flags are too long",
        ),
        ("mg foo\tbar v\r\n", "bad command line format"),
    ] {
        assert_eq!(error_of(line).0, msg, "{line:?}");
    }
    let long = format!("mg {} v\r\n", "k".repeat(251));
    assert_eq!(error_of(&long).0, "bad command line format");
    let ok = format!("mg {} v\r\n", "k".repeat(250));
    assert!(matches!(one(&ok).command, Command::Meta(_)));
    // 20 tokens are looked at (here: an unknown flag), 21 are too many.
    assert!(matches!(
        one("mg foo a1 b c d e f g h i j k l m n o p q r\r\n").command,
        Command::Invalid(Invalid::Client("invalid flag"))
    ));
    assert!(matches!(
        one("mg foo s v t c f l h k O1 q u T1 N1 R1 E1 P L x\r\n").command,
        Command::Meta(_)
    ));
}

#[test]
fn tokenizer() {
    let toks = |l: &str, m| tokenize(l.as_bytes(), m).map(|t| t.len());
    assert_eq!(toks("mg  foo   v ", 2), Some(3));
    assert_eq!(toks("mg ! v", 2), Some(3), "the key is not a flag");
    assert_eq!(toks("mg foo ~", 2), None);
    assert_eq!(toks("ms foo -1 v", 3), Some(4), "the length is not a flag");
    let many = format!("mg k{}", " v".repeat(40));
    assert_eq!(toks(&many, 2), Some(23));
}

#[test]
fn base64_like_memcached() {
    assert_eq!(base64_decode(b"Zm9v").as_deref(), Some(&b"foo"[..]));
    assert_eq!(base64_decode(b"Zm9vYg==").as_deref(), Some(&b"foob"[..]));
    assert_eq!(base64_decode(b"Zm9vYmE=").as_deref(), Some(&b"fooba"[..]));
    // Characters outside the alphabet are skipped; decoding stops at padding.
    assert_eq!(base64_decode(b"Zm!9v").as_deref(), Some(&b"foo"[..]));
    assert_eq!(base64_decode(b"Zg==Zm9v").as_deref(), Some(&b"f"[..]));
    assert_eq!(base64_decode(b"Zm9"), None);
    assert_eq!(base64_decode(b"===="), None);
    assert_eq!(base64_decode(b""), None);
    for len in 0..20u8 {
        let raw: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
        let mut enc = Vec::new();
        base64_encode(&raw, &mut enc);
        if len > 0 {
            assert_eq!(base64_decode(&enc), Some(raw));
        }
    }
}

#[test]
fn encode_outcomes() {
    let reply = MetaReply {
        key: Some(key("k")),
        rets: vec![Ret::Key, opaque("O1"), Ret::Cas],
        ..MetaReply::default()
    };
    let enc = |reply: &MetaReply, o: Outcome| {
        let mut out = BytesMut::new();
        encode(reply, &o, &mut out);
        String::from_utf8(out.to_vec()).expect("utf8")
    };
    assert_eq!(
        enc(&reply, Outcome::Stored(crate::clock::Version(9))),
        "HD kk O1 c9\r\n"
    );
    assert_eq!(enc(&reply, Outcome::NotFound), "NF kk O1\r\n");
    let quiet = MetaReply {
        quiet: true,
        ..reply.clone()
    };
    assert_eq!(enc(&quiet, Outcome::Deleted), "");
    assert_eq!(enc(&quiet, Outcome::Exists), "EX kk O1\r\n");
    assert_eq!(
        enc(&quiet, Outcome::Invalid(Invalid::Client("bad"))),
        "CLIENT_ERROR bad\r\n"
    );
    let value = MetaReply {
        value: true,
        ..reply
    };
    assert_eq!(
        enc(&value, Outcome::Number(42, crate::clock::Version(3))),
        "VA 2 kk O1 c3\r\n42\r\n"
    );
    let mut out = BytesMut::new();
    encode_miss(&value, &key("k"), &mut out);
    assert_eq!(&out[..], b"EN kk O1\r\n");
}

const PIPELINE: &[u8] = b"mg foo s v t\r\nms foo 3 T90 c\r\nbar\r\nmd foo q\r\nma n N0 J5 v\r\n\
me foo\r\nmn\r\nms x 2 zz\r\nhi\r\nmg Zm9v b k\r\nms big 30 k\r\n012345678901234567890123456789\r\n\
ms bad 2\r\nabcd\r\nmg\nmn\r\n";

fn render(reqs: &[Request]) -> Vec<String> {
    reqs.iter()
        .map(|r| format!("{:?}|{:?}|{}|{}", r.command, r.reply, r.close, r.swallow))
        .collect()
}

/// Decodes `input` fed in two parts, honouring swallow like the connection does.
fn decode_split(input: &[u8], cut: usize, max_value: usize) -> Vec<Request> {
    let mut buf = BytesMut::from(&input[..cut]);
    let mut rest = &input[cut..];
    let mut got = Vec::new();
    let mut swallow = 0usize;
    loop {
        let n = swallow.min(buf.len());
        let _ = buf.split_to(n);
        swallow -= n;
        if swallow == 0 {
            let before = buf.len();
            match text::decode(&mut buf, max_value).expect("decode") {
                Some(req) => {
                    swallow = req.swallow;
                    got.push(req);
                    continue;
                }
                None => assert_eq!(buf.len(), before, "None consumed bytes"),
            }
        }
        if rest.is_empty() {
            return got;
        }
        buf.extend_from_slice(rest);
        rest = &[];
    }
}

#[test]
fn split_at_every_position() {
    let whole = render(&decode_split(PIPELINE, PIPELINE.len(), 20));
    assert_eq!(whole.len(), 13, "{whole:#?}");
    for cut in 0..=PIPELINE.len() {
        assert_eq!(
            render(&decode_split(PIPELINE, cut, 20)),
            whole,
            "cut at {cut}"
        );
    }
}

fn meta_line() -> impl Strategy<Value = Vec<u8>> {
    let word = prop::sample::select(vec![
        "mg", "ms", "md", "ma", "me", "mn", "foo", "Zm9v", "b", "v", "q", "k", "s", "t", "c", "f",
        "h", "l", "u", "x", "I", "T30", "T-1", "N0", "R5", "C1", "E9", "F7", "D3", "J4", "MA",
        "ME", "M", "Mz", "Oab", "2", "-1", "0", "!", "zz", "\t", "\r", "", "  ", "\u{ff}",
    ]);
    prop::collection::vec(word, 0..10).prop_map(|w| {
        let mut line = w.join(" ").into_bytes();
        line.extend_from_slice(b"\r\n");
        line
    })
}

proptest! {
    #[test]
    fn random_lines_never_panic(lines in prop::collection::vec(meta_line(), 1..6), cut in any::<prop::sample::Index>()) {
        let input: Vec<u8> = lines.concat();
        let whole = render(&decode_split(&input, input.len(), 64));
        let cut = cut.index(input.len() + 1);
        prop_assert_eq!(render(&decode_split(&input, cut, 64)), whole);
    }

    #[test]
    fn random_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        // Meta commands only: make it start like one.
        bytes.splice(0..0, b"mg ".iter().copied());
        bytes.push(b'\n');
        let _ = decode_split(&bytes, bytes.len(), 64);
        bytes[1] = b's';
        let _ = decode_split(&bytes, bytes.len() / 2, 64);
    }
}
