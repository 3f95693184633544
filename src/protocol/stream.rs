//! One client connection's byte stream, sans-IO: what the connection does between reading
//! bytes and dispatching requests, kept here so that it can be driven (and fuzzed) without
//! a socket.
//!
//! The first byte fixes the dialect for the whole connection, as in memcached (0x80:
//! binary; anything else: text, which carries meta commands too). A request whose data
//! block is refused (`Request::swallow`) has that many following bytes discarded as they
//! arrive, never buffered. Apart from those discarded bytes, [`ClientDecoder::decode`]
//! consumes nothing unless it returns a request.

use bytes::{Buf, BytesMut};

use super::binary::{self, BinError};
use super::text::{self, TextError};
use super::Request;

/// A client protocol, chosen by the connection's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Text and meta commands.
    Text,
    Binary,
}

/// Why a connection must be closed without another answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Binary(#[from] BinError),
}

/// Decodes the requests of one connection from its read buffer.
#[derive(Debug, Clone)]
pub struct ClientDecoder {
    max_value: usize,
    dialect: Option<Dialect>,
    /// Bytes of a refused data block still to discard.
    swallow: usize,
    /// Leading bytes of the buffer known to hold no newline (text).
    scanned: usize,
}

impl ClientDecoder {
    /// `max_value` is the `-I` limit: larger values are refused and discarded unread.
    pub fn new(max_value: usize) -> Self {
        ClientDecoder {
            max_value,
            dialect: None,
            swallow: 0,
            scanned: 0,
        }
    }

    /// The dialect, once the first byte has arrived.
    pub fn dialect(&self) -> Option<Dialect> {
        self.dialect
    }

    /// Bytes of a refused data block that are still to be discarded.
    pub fn swallowing(&self) -> usize {
        self.swallow
    }

    /// The next request in `buf`, `Ok(None)` when more bytes are needed, or why the
    /// connection must close. After an error the decoder must not be used again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, StreamError> {
        if self.swallow > 0 {
            let n = self.swallow.min(buf.len());
            buf.advance(n);
            self.swallow -= n;
            if self.swallow > 0 {
                return Ok(None);
            }
        }
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let dialect = *self.dialect.get_or_insert(if first == 0x80 {
            Dialect::Binary
        } else {
            Dialect::Text
        });
        let req = match dialect {
            Dialect::Text => text::decode_from(buf, self.max_value, &mut self.scanned)?,
            Dialect::Binary => binary::decode(buf, self.max_value)?,
        };
        if let Some(req) = &req {
            self.scanned = 0;
            self.swallow = req.swallow;
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Command, Invalid};

    #[test]
    fn the_first_byte_fixes_the_dialect_for_the_connection() {
        let mut d = ClientDecoder::new(1024);
        let mut buf = BytesMut::new();
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert_eq!(d.dialect(), None);
        buf.extend_from_slice(b"mn\r\n");
        assert!(d.decode(&mut buf).unwrap().is_some());
        assert_eq!(d.dialect(), Some(Dialect::Text));
        // A later 0x80 is text too: an unknown command, not a binary header.
        buf.extend_from_slice(b"\x80x\r\n");
        let req = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(req.command, Command::Invalid(Invalid::Unknown));

        let mut d = ClientDecoder::new(1024);
        let mut buf = BytesMut::from(&b"\x80\x0a\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"[..]);
        assert_eq!(d.decode(&mut buf).unwrap().unwrap().command, Command::Noop);
        assert_eq!(d.dialect(), Some(Dialect::Binary));
        // Text on a binary connection: a bad magic byte once a header's worth has come.
        buf.extend_from_slice(b"get k\r\n");
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"get a-longer-key\r\n");
        assert!(matches!(d.decode(&mut buf), Err(StreamError::Binary(_))));
    }

    #[test]
    fn a_refused_data_block_is_discarded_as_it_arrives() {
        let mut d = ClientDecoder::new(4);
        let mut buf = BytesMut::from(&b"set k 0 0 10\r\nabc"[..]);
        let req = d.decode(&mut buf).unwrap().unwrap();
        assert!(matches!(req.command, Command::TooLarge { .. }));
        assert_eq!(d.swallowing(), 12, "10 bytes and their \\r\\n");
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(buf.is_empty(), "the block's first bytes are gone");
        assert_eq!(d.swallowing(), 9);
        buf.extend_from_slice(b"defghij\r\nmn\r\n");
        let req = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            req.command,
            Command::Meta(crate::protocol::meta::MetaCommand::Noop)
        );
        assert_eq!(d.swallowing(), 0);
        assert!(buf.is_empty());
    }
}
