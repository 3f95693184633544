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
