//! Target `state`: the state-file decoder (`state::decode`) and its encoder.
//!
//! Input: `mode:u8`, then
//! - mode 0: any bytes as a state file;
//! - mode 1: the same, with the checksum in its last 4 bytes fixed up first, so that the
//!   fuzzer reaches the header and entry checks behind it (the decoder itself has no way
//!   around its checksum);
//! - mode 2: a file built from the input: header, flush barrier and entries.
//!
//! A file that decodes must re-encode to exactly its own bytes (the format has one
//! encoding), its parts must be its entries in order, and its counts and newest version
//! must be those of its entries; a built file must decode back to what built it.

use meshcached::clock::Version;
use meshcached::key::MAX_KEY_LEN;
use meshcached::replication::log::RunId;
use meshcached::state::decode::{decode, Decoded};
use meshcached::state::format::{Encoder, StateHeader};
use meshcached::state::Position;
use meshcached::store::{Exported, Flush, FlushState};

use super::input::Input;

pub fn check(data: &[u8]) {
    let mut input = Input(data);
    match input.u8() % 3 {
        0 => file(input.rest()),
        1 => {
            let mut bytes = input.rest().to_vec();
            fix_checksum(&mut bytes);
            file(&bytes);
        }
        _ => built(&mut input),
    }
}

/// Writes the CRC-32 of everything before the last 4 bytes into them.
pub fn fix_checksum(file: &mut [u8]) {
    if let Some(n) = file.len().checked_sub(4) {
        let crc = crc32fast::hash(&file[..n]);
        file[n..].copy_from_slice(&crc.to_be_bytes());
    }
}

fn encode(
    header: &StateHeader,
    flush: &FlushState,
    forgotten: Version,
    entries: &[Exported<'_>],
) -> Vec<u8> {
    let mut enc = Encoder::new(header, flush, forgotten).expect("a header that decoded encodes");
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        enc.entry(e).expect("an entry that decoded encodes");
        if i % 3 == 0 {
            enc.write_to(&mut out).expect("writing to a Vec");
        }
    }
    let stats = enc.finish(&mut out).expect("writing to a Vec");
    assert_eq!(stats.bytes, out.len() as u64, "SaveStats::bytes");
    out
}

fn consistent<'a>(d: &Decoded<'a>) -> Vec<Exported<'a>> {
    let entries: Vec<Exported<'a>> = d.entries().collect();
    let items = entries.iter().filter(|e| e.value.is_some()).count() as u64;
    assert_eq!(
        (d.items, d.tombstones),
        (items, entries.len() as u64 - items)
    );
    let newest = entries
        .iter()
        .map(|e| e.version)
        .chain(d.flush.flushes.iter().map(|f| f.issued))
        .chain([d.forgotten])
        .max()
        .unwrap_or(Version::NONE);
    assert_eq!(d.max_version, newest, "max_version");
    for n in [1, 2, 5] {
        let joined: Vec<Exported<'a>> = d.parts(n).into_iter().flatten().collect();
        assert_eq!(joined, entries, "parts({n})");
    }
    entries
}

fn file(bytes: &[u8]) {
    let Ok(d) = decode(bytes) else { return };
    let entries = consistent(&d);
    assert_eq!(
        encode(&d.header, &d.flush, d.forgotten, &entries),
        bytes,
        "a decoded file re-encodes to other bytes"
    );
}

fn text(input: &mut Input<'_>) -> String {
    String::from_utf8_lossy(input.string(64)).into_owned()
}

fn built(input: &mut Input<'_>) {
    let header = StateHeader {
        cluster_id: input.u64(),
        node_name: text(input),
        written_ms: input.u64(),
        positions: (0..input.u8() % 4)
            .map(|_| Position {
                origin: text(input),
                run_id: RunId(input.u64()),
                seq: input.u64(),
            })
            .collect(),
    };
    let flushes = (0..input.u8() % 4)
        .map(|_| Flush {
            issued: Version(input.u64()),
            at_ms: input.u64(),
        })
        .collect();
    let flush = FlushState { flushes };
    let forgotten = Version(input.u64());
    let mut entries = Vec::new();
    while !input.is_empty() && entries.len() < 64 {
        let key = input.string(MAX_KEY_LEN);
        if key.is_empty() {
            continue;
        }
        let version = Version(input.u64());
        entries.push(if input.bool() {
            Exported {
                key,
                value: Some(input.string(512)),
                flags: input.u32(),
                exptime: input.u32(),
                version,
            }
        } else {
            Exported {
                key,
                value: None,
                flags: 0,
                exptime: 0,
                version,
            }
        });
    }
    let bytes = encode(&header, &flush, forgotten, &entries);
    let d = decode(&bytes).unwrap_or_else(|e| panic!("a file just written: {e}"));
    assert_eq!(d.header, header);
    assert_eq!(d.flush, flush);
    assert_eq!(d.forgotten, forgotten);
    assert_eq!(consistent(&d), entries);
}
