//! Text decoder tests: examples, and every input split at every position.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;

fn decode_all(input: &[u8]) -> Vec<String> {
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Ok(Some(req)) = decode(&mut buf, 1 << 20) {
        out.push(format!(
            "{:?}|{:?}|{}|{}",
            req.command, req.reply, req.close, req.swallow
        ));
        if req.close {
            break;
        }
    }
    out
}

/// Feeding the bytes one split at a time must give the same requests as all at once, and
/// `None` must consume nothing.
fn split_everywhere(input: &[u8]) {
    let whole = decode_all(input);
    for cut in 0..=input.len() {
        let mut buf = BytesMut::from(&input[..cut]);
        let mut got = Vec::new();
        loop {
            let before = buf.len();
            match decode(&mut buf, 1 << 20).expect("text decode") {
                Some(req) => {
                    let close = req.close;
                    got.push(format!(
                        "{:?}|{:?}|{}|{}",
                        req.command, req.reply, req.close, req.swallow
                    ));
                    if close {
                        break;
                    }
                }
                None => {
                    assert_eq!(buf.len(), before, "None consumed bytes");
                    break;
                }
            }
        }
        if got.last().is_some_and(|g| g.contains("|true|")) {
            continue;
        }
        buf.extend_from_slice(&input[cut..]);
        while let Some(req) = decode(&mut buf, 1 << 20).expect("text decode") {
            got.push(format!(
                "{:?}|{:?}|{}|{}",
                req.command, req.reply, req.close, req.swallow
            ));
            if req.close {
                break;
            }
        }
        assert_eq!(got, whole, "split at {cut}");
    }
}

#[test]
fn decodes_each_command() {
    let reqs = decode_all(
        b"get a b\r\ngets c\r\nset k 5 0 3\r\nabc\r\ncas k 0 0 1 99 noreply\r\nx\r\nincr n 5\r\n\
decr n 2 noreply\r\ndelete k\r\ntouch k 10\r\ngat 10 k\r\nflush_all 5\r\nversion\r\nverbosity 1\r\n\
stats items\r\nbogus\r\nquit\r\n",
    );
    assert_eq!(reqs.len(), 15, "{reqs:#?}");
    assert!(reqs[0].starts_with("Get { keys: [Key(\"a\"), Key(\"b\")], touch: None, cas: false"));
    assert!(reqs[2]
        .contains("Store { mode: Set, key: Key(\"k\"), flags: 5, exptime: 0, value: b\"abc\""));
    assert!(reqs[3].contains("cas: 99") && reqs[3].contains("noreply: true"));
    assert!(reqs[12].contains("Stats { group: Some(b\"items\") }"));
    assert!(reqs[13].contains("Invalid(Unknown)"));
    assert!(reqs[14].starts_with("Quit") && reqs[14].contains("|true|"));
}

#[test]
fn bad_lines_get_memcached_answers() {
    let r = decode_all(
        b"set k x 0 1\r\nset k 0 0 -1\r\ndelete k 5\r\nincr k x\r\nset k 0 0 1\r\nab\r\n",
    );
    assert!(r[0].contains("bad command line format"));
    assert!(r[1].contains("bad command line format"));
    assert!(r[2].contains("Usage: delete <key> [noreply]"));
    assert!(r[3].contains("invalid numeric delta argument"));
    assert!(r[4].contains("bad data chunk"));
    let long_key = format!("get {}\r\n", "k".repeat(251));
    assert!(decode_all(long_key.as_bytes())[0].contains("bad command line format"));
}

#[test]
fn oversized_value_is_swallowed_not_buffered() {
    let mut buf = BytesMut::from(&b"set k 0 0 5000000\r\n"[..]);
    let req = decode(&mut buf, 1 << 20).unwrap().unwrap();
    assert!(matches!(
        req.command,
        Command::TooLarge {
            mode: StoreMode::Set,
            ..
        }
    ));
    assert_eq!(req.swallow, 5_000_002);
    assert!(buf.is_empty());
}

#[test]
fn overlong_line_closes_without_an_answer() {
    let too_long = |line: &[u8]| {
        let mut buf = BytesMut::from(line);
        decode(&mut buf, 1 << 20)
    };
    let err = |len, limit| Err(TextError::LineTooLong { len, limit });
    assert_eq!(too_long(&[b'a'; MAX_LINE + 1]), err(MAX_LINE + 1, MAX_LINE));
    assert_eq!(
        too_long(&[b'a'; MAX_LINE]),
        Ok(None),
        "at the limit: waiting"
    );
    // gat is not a get for this rule, and neither is a get after more than 100 spaces.
    let mut gat = b"gat 0 ".to_vec();
    gat.resize(MAX_LINE + 1, b'k');
    assert_eq!(too_long(&gat), err(MAX_LINE + 1, MAX_LINE));
    let mut indented = vec![b' '; 101];
    indented.extend_from_slice(b"get ");
    indented.resize(MAX_LINE + 1, b'k');
    assert_eq!(too_long(&indented), err(MAX_LINE + 1, MAX_LINE));
    // An unterminated get may run to MAX_GET_LINE.
    let mut get = vec![b' '; 100];
    get.extend_from_slice(b"gets ");
    get.resize(MAX_GET_LINE, b'k');
    assert_eq!(too_long(&get), Ok(None));
    get.push(b'k');
    assert_eq!(too_long(&get), err(MAX_GET_LINE + 1, MAX_GET_LINE));
    // A long multi-get that is terminated is fine.
    let mut line = b"get".to_vec();
    for i in 0..1000 {
        line.extend_from_slice(format!(" key{i}").as_bytes());
    }
    line.extend_from_slice(b"\r\n");
    let mut buf = BytesMut::from(&line[..]);
    match decode(&mut buf, 1 << 20).unwrap().unwrap().command {
        Command::Get { keys, .. } => assert_eq!(keys.len(), 1000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn data_length_past_int_max_minus_2_is_a_bad_line_without_a_block() {
    for line in [
        &b"set k 0 0 2147483646\r\n"[..],
        b"set k 0 0 2147483647 noreply\r\n",
        b"set k 0 0 +1\r\n",
        b"set k 0 0 000000000001\r\n",
        b"set k noreply\r\n",
    ] {
        let mut buf = BytesMut::from(line);
        let req = decode(&mut buf, 1 << 20).unwrap().unwrap();
        let shown = matches!(req.reply, Reply::Text { noreply: false });
        assert!(
            matches!(req.command, Command::Invalid(BAD_FORMAT)) && shown && req.swallow == 0,
            "{line:?}: {req:?}"
        );
        assert!(buf.is_empty());
    }
    // INT_MAX - 2 itself is a length: too large here, and its block is swallowed.
    let mut buf = BytesMut::from(&b"set k 0 0 2147483645\r\n"[..]);
    let req = decode(&mut buf, 1 << 20).unwrap().unwrap();
    assert!(matches!(req.command, Command::TooLarge { .. }));
    assert_eq!(req.swallow, 2_147_483_647);
}

#[test]
fn storage_flags_and_exptime_are_read_like_strtoul() {
    let r = decode_all(b"set k +5 4294967297 1\r\nx\r\nset k 4294967296 +1 1\r\nx\r\n");
    assert!(r[0].contains("flags: 5, exptime: 1,"), "{}", r[0]);
    assert!(r[1].contains("flags: 0, exptime: 1,"), "{}", r[1]);
}

#[test]
fn splits() {
    split_everywhere(b"get a b\r\nset k 5 0 3\r\nabc\r\nincr n 5\r\nset k 0 0 1\r\nab\r\nquit\r\n");
    split_everywhere(b"set k 0 0 3000000\r\nget x\n");
}

proptest! {
    #[test]
    fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut buf = BytesMut::from(&input[..]);
        for _ in 0..400 {
            match decode(&mut buf, 1024) {
                Ok(Some(req)) if !req.close => continue,
                _ => break,
            }
        }
    }

    #[test]
    fn commands_split_anywhere(cmds in proptest::collection::vec(prop_oneof![
        Just(&b"get a\r\n"[..]), Just(&b"set b 1 2 3\r\nxyz\r\n"[..]), Just(&b"incr c 1\n"[..]),
        Just(&b"delete d noreply\r\n"[..]), Just(&b"nonsense\r\n"[..])], 1..6)) {
        split_everywhere(&cmds.concat());
    }
}

/// `cluster forget <name>` is meshcached's admin command; anything else after `cluster`
/// gets its usage.
#[test]
fn cluster_forget_names_one_member() {
    let got = decode_all(b"cluster forget node-c\r\ncluster forget\r\ncluster drop x\r\n");
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].starts_with("ClusterForget { name: b\"node-c\" }"),
        "{got:?}"
    );
    for usage in &got[1..] {
        assert!(
            usage.starts_with("Invalid(Client(\"usage: cluster forget <member name>\"))"),
            "{usage}"
        );
    }
    split_everywhere(b"cluster forget node-c\r\nget k\r\n");
}
