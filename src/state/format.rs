//! The state file's layout, and the [`Encoder`] that writes it: a header and the store's
//! exported entries turned into bytes for any [`Write`], with no file in sight. Reading is
//! in [`decode`](super::decode).
//!
//! ```text
//! file     := magic format:u32 header entry* trailer          (big-endian throughout)
//! magic    := "MESHSTAT"
//! header   := cluster_id:u64 written_ms:u64 node:str16
//!             flushes:u8 (issued:u64 at_ms:u64)*              (the flushes that still matter:
//!                                                              fired or pending, by the store)
//!             forgotten:u64                                   (the highest version the store
//!                                                              forgot: refused at or below for
//!                                                              keys held nothing for)
//!             positions:u32 position*
//! position := origin:str16 run_id:u64 seq:u64
//! entry    := kind:u8 key_len:u8 key version:u64
//!             kind 1 (item):      flags:u32 exptime:u32 value_len:u32 value
//!             kind 2 (tombstone): nothing more
//! trailer  := 0:u8 "END" count:u64 crc:u32
//!             (count: entries written; crc: CRC-32 of every byte of the file before it)
//! str16    := len:u16 bytes (UTF-8)
//! ```
//!
//! `magic`, `format` and the 16-byte `trailer` keep their place in every format version,
//! so that damage is told apart from a version this build does not read: the checksum is
//! verified before the version is looked at, and a file whose checksum fails but whose
//! end marker is missing was cut short rather than corrupted. Entries carry no length of
//! their own because nothing needs to skip them: the file is read whole, and the only
//! reader is one that understands its version.

use std::io::{self, Write};

use crate::clock::Version;
use crate::key::MAX_KEY_LEN;
use crate::store::{Exported, FlushState};

pub const MAGIC: &[u8; 8] = b"MESHSTAT";
/// The format this build writes and the only one it reads. 2: flushes as `(issued, at)`
/// sets, and the forgotten floor.
pub const FORMAT: u32 = 2;
pub(super) const END: &[u8; 4] = b"\0END";
pub(super) const TRAILER_LEN: usize = 16;
/// Magic and format version.
pub(super) const PREAMBLE_LEN: usize = MAGIC.len() + 4;
pub(super) const ITEM: u8 = 1;
pub(super) const TOMBSTONE: u8 = 2;
/// The smallest position: an empty origin, a run id and a sequence number.
pub(super) const MIN_POSITION_LEN: usize = 2 + 8 + 8;
/// A flush: its version and time.
pub(super) const FLUSH_LEN: usize = 8 + 8;

/// What this node had applied of one peer's replication log when it saved: the same
/// record a snapshot's first frame carries.
pub use crate::replication::frame::Position;

/// Everything in a state file but the entries, the flushes and the forgotten floor (which
/// [`save`] takes from the store itself).
///
/// [`save`]: super::save
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateHeader {
    /// The [`cluster_id`](super::cluster_id) of the cluster's CA certificate.
    pub cluster_id: u64,
    pub node_name: String,
    /// Unix milliseconds when the file was saved.
    pub written_ms: u64,
    pub positions: Vec<Position>,
}

/// Why a header or entry cannot be written in this format (the encoder refuses whatever
/// [`decode`](super::decode::decode) would). The store's own limits make entries always fit; names come from
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{what} ({len}) is over the format's limit of {limit}")]
    DoesNotFit {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("a key is empty")]
    EmptyKey,
}

/// `len` as a length field of type `T`, if it is within `limit`.
fn length<T: TryFrom<usize>>(
    what: &'static str,
    len: usize,
    limit: usize,
) -> Result<T, EncodeError> {
    let fits = T::try_from(len).ok().filter(|_| len <= limit);
    fits.ok_or(EncodeError::DoesNotFit { what, len, limit })
}

/// Streams a state file: the header first, then entries as the store's walk hands them
/// over, then the trailer. Bytes are gathered in one buffer and handed to the writer in
/// pieces as large as the caller likes, with the checksum kept on the way out.
pub struct Encoder {
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    stats: SaveStats,
}

/// What a state file holds, as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveStats {
    pub items: u64,
    pub tombstones: u64,
    /// The file's size.
    pub bytes: u64,
}

impl Encoder {
    pub fn new(
        header: &StateHeader,
        flush: &FlushState,
        forgotten: Version,
    ) -> Result<Self, EncodeError> {
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&FORMAT.to_be_bytes());
        buf.extend_from_slice(&header.cluster_id.to_be_bytes());
        buf.extend_from_slice(&header.written_ms.to_be_bytes());
        put_str16(&mut buf, "the node name's length", &header.node_name)?;
        let flushes: u8 = length("the number of flushes", flush.flushes.len(), 255)?;
        buf.push(flushes);
        for f in &flush.flushes {
            buf.extend_from_slice(&f.issued.0.to_be_bytes());
            buf.extend_from_slice(&f.at_ms.to_be_bytes());
        }
        buf.extend_from_slice(&forgotten.0.to_be_bytes());
        let positions = header.positions.len();
        let count: u32 = length("the number of positions", positions, u32::MAX as usize)?;
        buf.extend_from_slice(&count.to_be_bytes());
        for p in &header.positions {
            put_str16(&mut buf, "a peer name's length", &p.origin)?;
            buf.extend_from_slice(&p.run_id.0.to_be_bytes());
            buf.extend_from_slice(&p.seq.to_be_bytes());
        }
        Ok(Self {
            buf,
            crc: crc32fast::Hasher::new(),
            stats: SaveStats::default(),
        })
    }

    /// Adds one exported entry to the buffer.
    pub fn entry(&mut self, e: &Exported<'_>) -> Result<(), EncodeError> {
        if e.key.is_empty() {
            return Err(EncodeError::EmptyKey);
        }
        let key_len: u8 = length("a key's length", e.key.len(), MAX_KEY_LEN)?;
        let b = &mut self.buf;
        match e.value {
            Some(value) => {
                let value_len: u32 = length("a value's length", value.len(), u32::MAX as usize)?;
                b.reserve(2 + e.key.len() + 20 + value.len());
                b.push(ITEM);
                b.push(key_len);
                b.extend_from_slice(e.key);
                b.extend_from_slice(&e.version.0.to_be_bytes());
                b.extend_from_slice(&e.flags.to_be_bytes());
                b.extend_from_slice(&e.exptime.to_be_bytes());
                b.extend_from_slice(&value_len.to_be_bytes());
                b.extend_from_slice(value);
                self.stats.items += 1;
            }
            None => {
                b.push(TOMBSTONE);
                b.push(key_len);
                b.extend_from_slice(e.key);
                b.extend_from_slice(&e.version.0.to_be_bytes());
                self.stats.tombstones += 1;
            }
        }
        Ok(())
    }

    /// Bytes gathered and not yet written.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Hands the gathered bytes to `w`.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<()> {
        self.crc.update(&self.buf);
        w.write_all(&self.buf)?;
        self.stats.bytes += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is left and the trailer.
    pub fn finish(mut self, w: &mut impl Write) -> io::Result<SaveStats> {
        self.buf.extend_from_slice(END);
        let count = self.stats.items + self.stats.tombstones;
        self.buf.extend_from_slice(&count.to_be_bytes());
        self.crc.update(&self.buf);
        let crc = self.crc.finalize();
        self.buf.extend_from_slice(&crc.to_be_bytes());
        w.write_all(&self.buf)?;
        self.stats.bytes += self.buf.len() as u64;
        Ok(self.stats)
    }
}

fn put_str16(out: &mut Vec<u8>, what: &'static str, s: &str) -> Result<(), EncodeError> {
    let len: u16 = length(what, s.len(), u16::MAX as usize)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::replication::log::RunId;
    use crate::store::Flush;

    pub(crate) fn header() -> StateHeader {
        StateHeader {
            cluster_id: 0x0123_4567_89ab_cdef,
            node_name: "n1".into(),
            written_ms: 1_700_000_000_000,
            positions: vec![Position {
                origin: "n2".into(),
                run_id: RunId(9),
                seq: 42,
            }],
        }
    }

    pub(crate) fn flush() -> FlushState {
        let flush = |issued, at_ms| Flush {
            issued: Version(issued),
            at_ms,
        };
        FlushState {
            flushes: vec![flush(5, 0), flush(77, 1_800_000_000_000)],
        }
    }

    /// The forgotten floor the test files carry.
    pub(crate) const FORGOTTEN: Version = Version(400);

    pub(crate) fn entry(
        key: &'static [u8],
        value: Option<&'static [u8]>,
        v: u64,
    ) -> Exported<'static> {
        Exported {
            key,
            value,
            flags: if value.is_some() { 0xdead_beef } else { 0 },
            exptime: if value.is_some() { 1_900_000_000 } else { 0 },
            version: Version(v),
        }
    }

    pub(crate) fn encode(entries: &[Exported<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = Encoder::new(&header(), &flush(), FORGOTTEN).unwrap();
        for (i, e) in entries.iter().enumerate() {
            enc.entry(e).unwrap();
            if i % 2 == 0 {
                enc.write_to(&mut out).unwrap();
            }
        }
        let stats = enc.finish(&mut out).unwrap();
        assert_eq!(stats.bytes, out.len() as u64);
        out
    }

    /// Re-computes the checksum of a file patched on purpose.
    pub(crate) fn fix_crc(file: &mut [u8]) {
        let n = file.len() - 4;
        let crc = crc32fast::hash(&file[..n]);
        file[n..].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn names_and_keys_that_do_not_fit_are_refused_when_writing() {
        let mut h = header();
        h.node_name = "x".repeat(70_000);
        let err = Encoder::new(&h, &flush(), FORGOTTEN).err().unwrap();
        assert_eq!(
            err.to_string(),
            "the node name's length (70000) is over the format's limit of 65535"
        );
        let mut enc = Encoder::new(&header(), &flush(), FORGOTTEN).unwrap();
        let long = vec![b'k'; 251];
        for (key, want) in [(&long[..], "a key's length (251)"), (b"", "a key is empty")] {
            let e = Exported {
                key,
                ..entry(b"k", None, 1)
            };
            let err = enc.entry(&e).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}");
        }
        assert_eq!(enc.stats, SaveStats::default());
    }
}
