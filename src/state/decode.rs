//! Reading a state file: [`decode`] checks a whole file held in memory (checksum, version,
//! header, the shape of every entry) before a single entry is handed out, so that a caller
//! applying them never stops half-way. The layout is in [`format`](super::format).

use super::format::{
    Position, StateHeader, END, FLUSH_LEN, FORMAT, ITEM, MAGIC, MIN_POSITION_LEN, PREAMBLE_LEN,
    TOMBSTONE, TRAILER_LEN,
};
use crate::clock::Version;
use crate::key::MAX_KEY_LEN;
use crate::replication::log::RunId;
use crate::store::{Exported, Flush, FlushState};

/// What is wrong with a file's bytes. Nothing is applied anywhere before [`decode`] has
/// returned `Ok`, so none of these leaves any state changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("it does not start with the state file magic")]
    NotAStateFile,
    #[error("it is in format version {found}, and this build reads only version {supported}")]
    Format { found: u32, supported: u32 },
    #[error("it was cut short: {len} bytes with no end marker")]
    Truncated { len: usize },
    #[error("its checksum does not match its contents")]
    Checksum,
    #[error("its checksum matches but its contents are malformed: {0}")]
    Malformed(String),
}

/// A whole state file, checked: checksum, version, header, and every entry's shape.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub header: StateHeader,
    pub flush: FlushState,
    /// The highest version the store that saved it had forgotten.
    pub forgotten: Version,
    pub items: u64,
    pub tombstones: u64,
    /// The newest version anywhere in the file: entries, the flushes' own versions (not
    /// their barriers, which may lie in the future) and the forgotten floor.
    pub max_version: Version,
    entries: &'a [u8],
    /// Where every [`CHECKPOINT`]th entry starts in `entries`, the first one included.
    checkpoints: Vec<usize>,
}

/// How many entries apart [`Decoded::parts`] may cut.
const CHECKPOINT: u64 = 1 << 14;

impl<'a> Decoded<'a> {
    /// The entries, in file order. Their shape was checked by [`decode`].
    pub fn entries(&self) -> Entries<'a> {
        Entries(Reader(self.entries))
    }

    /// The entries cut into at most `n` runs of about as many entries each (fewer for a
    /// small file), for loading on several threads; in file order, one after the other.
    pub fn parts(&self, n: usize) -> Vec<Entries<'a>> {
        let cuts = &self.checkpoints;
        if cuts.is_empty() {
            return Vec::new();
        }
        let n = n.clamp(1, cuts.len());
        let starts = (0..n).map(|i| cuts[i * cuts.len() / n]);
        let ends = starts.clone().skip(1).chain([self.entries.len()]);
        starts
            .zip(ends)
            .map(|(start, end)| Entries(Reader(&self.entries[start..end])))
            .collect()
    }
}

/// Checks a whole state file. Nothing about the file is believed before its checksum
/// matches, and every length is bounds-checked even after that.
pub fn decode(data: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    if data.len() < MAGIC.len() {
        // An empty file, or one cut inside the magic, is a short file of ours.
        return Err(if MAGIC.starts_with(data) {
            DecodeError::Truncated { len: data.len() }
        } else {
            DecodeError::NotAStateFile
        });
    }
    if !data.starts_with(MAGIC) {
        return Err(DecodeError::NotAStateFile);
    }
    if data.len() < PREAMBLE_LEN + TRAILER_LEN {
        return Err(DecodeError::Truncated { len: data.len() });
    }
    let (covered, crc) = data.split_at(data.len() - 4);
    if crc32fast::hash(covered).to_be_bytes() != crc {
        let trailer = &data[data.len() - TRAILER_LEN..];
        return Err(if trailer.starts_with(END) {
            DecodeError::Checksum
        } else {
            DecodeError::Truncated { len: data.len() }
        });
    }
    let mut r = Reader(&data[MAGIC.len()..data.len() - TRAILER_LEN]);
    let format = r.u32()?;
    if format != FORMAT {
        return Err(DecodeError::Format {
            found: format,
            supported: FORMAT,
        });
    }
    let cluster_id = r.u64()?;
    let written_ms = r.u64()?;
    let node_name = r.str16("node name")?;
    let flushes = usize::from(r.u8()?);
    if flushes > r.0.len() / FLUSH_LEN {
        return Err(malformed(format!("{flushes} flushes")));
    }
    let flush = FlushState {
        flushes: (0..flushes)
            .map(|_| {
                Ok(Flush {
                    issued: Version(r.u64()?),
                    at_ms: r.u64()?,
                })
            })
            .collect::<Result<_, Short>>()?,
    };
    let forgotten = Version(r.u64()?);
    let count = r.u32()? as usize;
    // A count the bytes left cannot hold is a lie, and must not size an allocation.
    if count > r.0.len() / MIN_POSITION_LEN {
        return Err(malformed(format!("{count} replication positions")));
    }
    let mut positions = Vec::with_capacity(count);
    for _ in 0..count {
        let origin = r.str16("peer name")?;
        let run_id = RunId(r.u64()?);
        let seq = r.u64()?;
        positions.push(Position {
            origin,
            run_id,
            seq,
        });
    }
    let entries = r.0;

    let issued = flush.flushes.iter().map(|f| f.issued);
    let mut max_version = issued.fold(forgotten, Version::max);
    let (mut items, mut tombstones) = (0u64, 0u64);
    let mut walk = Reader(entries);
    let mut checkpoints = Vec::new();
    loop {
        let at = entries.len() - walk.0.len();
        let Some(e) = next_entry(&mut walk)? else {
            break;
        };
        if (items + tombstones) % CHECKPOINT == 0 {
            checkpoints.push(at);
        }
        max_version = max_version.max(e.version);
        if e.value.is_some() {
            items += 1;
        } else {
            tombstones += 1;
        }
    }
    let mut trailer = Reader(&data[data.len() - TRAILER_LEN..]);
    // The checksum matched, so the end marker is there unless the writer was wrong.
    if trailer.bytes(END.len())? != END {
        return Err(malformed("no end marker"));
    }
    let written = trailer.u64()?;
    if written != items + tombstones {
        return Err(malformed(format!(
            "the trailer counts {written} entries but {} were found",
            items + tombstones
        )));
    }
    Ok(Decoded {
        header: StateHeader {
            cluster_id,
            node_name,
            written_ms,
            positions,
        },
        flush,
        forgotten,
        items,
        tombstones,
        max_version,
        entries,
        checkpoints,
    })
}

fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(what.into())
}

/// Reads the entry at the front of `r`; `None` at the end of the entries.
fn next_entry<'a>(r: &mut Reader<'a>) -> Result<Option<Exported<'a>>, DecodeError> {
    let Ok(kind) = r.u8() else {
        return Ok(None);
    };
    let key_len = usize::from(r.u8()?);
    if key_len == 0 || key_len > MAX_KEY_LEN {
        return Err(malformed(format!("a key of {key_len} bytes")));
    }
    let key = r.bytes(key_len)?;
    let version = Version(r.u64()?);
    let (value, flags, exptime) = match kind {
        ITEM => {
            let flags = r.u32()?;
            let exptime = r.u32()?;
            let len = r.u32()? as usize;
            (Some(r.bytes(len)?), flags, exptime)
        }
        TOMBSTONE => (None, 0, 0),
        other => return Err(malformed(format!("entry kind {other}"))),
    };
    Ok(Some(Exported {
        key,
        value,
        flags,
        exptime,
        version,
    }))
}

/// The entries of a [`Decoded`] file, as the store exported them.
#[derive(Debug, Clone)]
pub struct Entries<'a>(Reader<'a>);

impl<'a> Iterator for Entries<'a> {
    type Item = Exported<'a>;

    fn next(&mut self) -> Option<Exported<'a>> {
        // `decode` walked these very bytes without an error, so none comes up here.
        next_entry(&mut self.0).ok().flatten()
    }
}

/// A bounds-checked reader.
#[derive(Debug, Clone)]
struct Reader<'a>(&'a [u8]);

/// A field runs past the end of the bytes a [`Reader`] was given. In a file whose checksum
/// matched, only a wrong writer does that, so the message need not say where.
struct Short;

impl From<Short> for DecodeError {
    fn from(_: Short) -> Self {
        malformed("a field runs past the end of its section")
    }
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Short> {
        if self.0.len() < n {
            return Err(Short);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        self.bytes(N)?.try_into().map_err(|_| Short)
    }

    fn u8(&mut self) -> Result<u8, Short> {
        self.array::<1>().map(|[b]| b)
    }

    fn u32(&mut self) -> Result<u32, Short> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, Short> {
        self.array().map(u64::from_be_bytes)
    }

    fn str16(&mut self, what: &str) -> Result<String, DecodeError> {
        let len = self.array().map(u16::from_be_bytes)?;
        let bytes = self.bytes(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| malformed(format!("the {what} is not UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::format::tests::{encode, entry, fix_crc, flush, header, FORGOTTEN};
    use crate::state::format::Encoder;

    #[test]
    fn round_trip_of_header_flush_and_entries() {
        let entries = [
            entry(b"a", Some(b"hello"), 10),
            entry(b"gone", None, 300),
            entry(b"empty", Some(b""), 20),
        ];
        let file = encode(&entries);
        let d = decode(&file).unwrap();
        assert_eq!(d.header, header());
        assert_eq!(d.flush, flush());
        assert_eq!(d.forgotten, FORGOTTEN);
        assert_eq!((d.items, d.tombstones), (2, 1));
        assert_eq!(
            d.max_version, FORGOTTEN,
            "the forgotten floor is above every entry"
        );
        assert_eq!(d.entries().collect::<Vec<_>>(), entries);

        let empty = Encoder::new(&header(), &FlushState::default(), Version::NONE).unwrap();
        let mut file = Vec::new();
        empty.finish(&mut file).unwrap();
        let d = decode(&file).unwrap();
        assert_eq!(d.flush, FlushState::default());
        assert_eq!(d.entries().count(), 0);
        assert_eq!(d.parts(4).len(), 0);
    }

    #[test]
    fn parts_cut_the_entries_at_checkpoints_in_order() {
        let keys: Vec<String> = (0..50_000).map(|i| format!("k{i}")).collect();
        let entries: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Exported {
                key: k.as_bytes(),
                ..entry(b"-", (i % 2 == 0).then_some(b"v"), i as u64 + 1)
            })
            .collect();
        let file = encode(&entries);
        let d = decode(&file).unwrap();
        for n in [1, 2, 3, 4, 100] {
            let parts = d.parts(n);
            assert_eq!(parts.len(), n.min(4), "checkpoints at 0, 16K, 32K, 48K");
            let sizes: Vec<usize> = d.parts(n).into_iter().map(Iterator::count).collect();
            assert!(
                sizes[..sizes.len() - 1].iter().all(|&s| s >= 16_384),
                "{sizes:?}"
            );
            let joined: Vec<_> = parts.into_iter().flatten().collect();
            assert_eq!(joined, entries, "{n} parts");
        }
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        let file = encode(&[entry(b"k", Some(b"v"), 1), entry(b"t", None, 2)]);
        for i in 0..file.len() {
            for bit in [0x01, 0x80] {
                let mut bad = file.clone();
                bad[i] ^= bit;
                let err = decode(&bad).unwrap_err();
                let want_marker = i >= file.len() - TRAILER_LEN && i < file.len() - 12;
                match err {
                    DecodeError::NotAStateFile => assert!(i < MAGIC.len(), "byte {i}"),
                    DecodeError::Truncated { .. } => assert!(want_marker, "byte {i}"),
                    DecodeError::Checksum => assert!(i >= MAGIC.len() && !want_marker),
                    other => panic!("byte {i}: {other:?}"),
                }
            }
        }
        for len in 0..file.len() {
            let err = decode(&file[..len]).unwrap_err();
            assert!(
                matches!(err, DecodeError::Truncated { .. } | DecodeError::Checksum),
                "cut at {len}: {err:?}"
            );
        }
    }

    #[test]
    fn other_versions_and_lying_contents_with_a_good_checksum() {
        let file = encode(&[entry(b"k", Some(b"v"), 1)]);
        let mut old = file.clone();
        old[8..12].copy_from_slice(&0u32.to_be_bytes());
        fix_crc(&mut old);
        let want = DecodeError::Format {
            found: 0,
            supported: FORMAT,
        };
        assert_eq!(decode(&old).unwrap_err(), want);

        // The writer is trusted no further than the checksum: a lying count, key length or
        // kind is still caught.
        let at_flushes = PREAMBLE_LEN + 8 + 8 + 2 + 2;
        let at_positions = at_flushes + 1 + 2 * FLUSH_LEN + 8;
        let at_entry = at_positions + 4 + 2 + 2 + 8 + 8;
        for (offset, value, want) in [
            (at_positions, 0xff, "replication positions"),
            (at_entry, 9, "entry kind 9"),
            (at_entry + 1, 0, "a key of 0 bytes"),
            (at_entry + 1, 251, "a key of 251 bytes"),
            (file.len() - 5, 2, "the trailer counts 2 entries"),
            (at_flushes, 0xff, "255 flushes"),
        ] {
            let mut bad = file.clone();
            bad[offset] = value;
            fix_crc(&mut bad);
            match decode(&bad) {
                Err(DecodeError::Malformed(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{want}: {other:?}"),
            }
        }
        let mut bad = file.clone();
        let n = bad.len();
        bad[n - TRAILER_LEN - 2] = 0xff; // value_len (last byte) of the only entry
        fix_crc(&mut bad);
        assert!(matches!(decode(&bad), Err(DecodeError::Malformed(_))));
    }
}
