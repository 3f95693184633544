//! Driving a client byte stream through meshcached's `ClientDecoder` the way a connection
//! does (append what arrived, decode until it needs more), and the invariants every client
//! dialect shares.

use bytes::BytesMut;
use meshcached::key::MAX_KEY_LEN;
use meshcached::protocol::binary::consts::HEADER_LEN;
use meshcached::protocol::stream::{ClientDecoder, Dialect, StreamError};
use meshcached::protocol::text::{TextError, MAX_GET_LINE, MAX_LINE};
use meshcached::protocol::Request;

use super::input::chunks;

/// How a run over a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Every byte was used; the decoder waits for more.
    NeedMore,
    /// A request asked for the connection to be closed after its answer.
    Closed,
    /// The decoder refused the stream: the connection closes without a reply.
    Error(StreamError),
}

/// The requests decoded from a stream, and how it ended.
#[derive(Debug)]
pub struct Run {
    pub requests: Vec<Request>,
    pub end: End,
}

/// Feeds `stream` in pieces of `sizes` bytes (which must add up to its length), decoding
/// after each piece, and checks on the way that "need more" consumed nothing but a refused
/// data block's bytes and that what the decoder holds is within its limit.
pub fn drive(stream: &[u8], max_value: usize, sizes: &[usize]) -> Run {
    assert_eq!(
        sizes.iter().sum::<usize>(),
        stream.len(),
        "harness: chunk sizes"
    );
    let mut decoder = ClientDecoder::new(max_value);
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    let mut at = 0;
    for &size in sizes {
        buf.extend_from_slice(&stream[at..at + size]);
        at += size;
        loop {
            let before = buf.len();
            let swallowing = decoder.swallowing();
            match decoder.decode(&mut buf) {
                Ok(Some(req)) => {
                    let close = req.close;
                    requests.push(req);
                    if close {
                        return Run {
                            requests,
                            end: End::Closed,
                        };
                    }
                }
                Ok(None) => {
                    assert_eq!(
                        before - buf.len(),
                        swallowing.min(before),
                        "`need more` consumed bytes other than a refused data block's"
                    );
                    check_held(decoder.dialect(), &buf, max_value);
                    break;
                }
                Err(e) => {
                    return Run {
                        requests,
                        end: End::Error(e),
                    }
                }
            }
        }
    }
    Run {
        requests,
        end: End::NeedMore,
    }
}

/// What a decoder may hold while it waits for more bytes.
fn check_held(dialect: Option<Dialect>, buf: &[u8], max_value: usize) {
    let held = buf.len();
    match dialect {
        None => assert_eq!(held, 0, "bytes held before any dialect was chosen"),
        // A complete line is held only while its data block comes in.
        Some(Dialect::Text) => match buf.iter().position(|&b| b == b'\n') {
            Some(nl) => assert!(
                held <= nl + 1 + max_value + 2,
                "text: {held} bytes held for a line of {} and values of at most {max_value}",
                nl + 1
            ),
            None => {
                assert!(held <= MAX_GET_LINE, "text: {held} bytes of one line held");
                let indent = buf.iter().take_while(|&&b| b == b' ').count();
                let get = buf[indent..].starts_with(b"get ") || buf[indent..].starts_with(b"gets ");
                assert!(
                    held <= MAX_LINE || (get && indent <= 100),
                    "text: {held} bytes of a line that is not a get held"
                );
            }
        },
        Some(Dialect::Binary) => assert!(
            held <= HEADER_LEN + 255 + MAX_KEY_LEN + max_value,
            "binary: {held} bytes held with values of at most {max_value}"
        ),
    }
}

/// Whether a run stopped on a line it gave up waiting for.
fn line_too_long(end: &End) -> Option<usize> {
    match end {
        End::Error(StreamError::Text(TextError::LineTooLong { limit, .. })) => Some(*limit),
        _ => None,
    }
}

/// A request as the connection acts on it; how many bytes of a refused block are still to
/// come (`swallow`) depends on how many had arrived, not on what was asked.
fn meaning(r: &Request) -> Request {
    Request {
        swallow: 0,
        ..r.clone()
    }
}

/// The same stream fed two ways must mean the same requests and end the same way, with one
/// exception memcached has too: a line longer than the limit is given up on only while its
/// newline has not arrived, so a run that received the newline in the same piece may read
/// on where the other closed (at the same request).
pub fn same(whole: &Run, pieces: &Run, how: &str) {
    let a: Vec<Request> = whole.requests.iter().map(meaning).collect();
    let b: Vec<Request> = pieces.requests.iter().map(meaning).collect();
    match (line_too_long(&whole.end), line_too_long(&pieces.end)) {
        (Some(x), Some(y)) => {
            assert_eq!(x, y, "{how}: different line limits");
            assert_eq!(a, b, "{how}: requests before the over-long line");
        }
        (None, Some(_)) => {
            assert!(b.len() <= a.len(), "{how}: more requests before closing");
            assert_eq!(
                a[..b.len()],
                b[..],
                "{how}: requests before the over-long line"
            );
        }
        _ => {
            assert_eq!(a, b, "{how}: requests");
            assert_eq!(whole.end, pieces.end, "{how}: end of stream");
        }
    }
}

/// The client-stream invariants for one stream: whole, in seeded pieces, and (when short)
/// a byte at a time.
pub fn check_stream(stream: &[u8], max_value: usize, seed: u64) {
    let all = if stream.is_empty() {
        vec![]
    } else {
        vec![stream.len()]
    };
    let whole = drive(stream, max_value, &all);
    let pieces = drive(stream, max_value, &chunks(seed, stream.len()));
    same(&whole, &pieces, "whole vs pieces");
    if stream.len() <= 256 {
        let bytes = drive(stream, max_value, &vec![1; stream.len()]);
        same(&whole, &bytes, "whole vs bytes");
    }
}
