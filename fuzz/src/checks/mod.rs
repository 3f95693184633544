//! Invariant checks, one module per fuzz target, shared by the fuzz targets and by the
//! main crate's corpus replay test (`tests/fuzz_corpus.rs`, which includes this directory
//! with `#[path]`). They use meshcached's public decoders only, so they build wherever
//! the main crate does, with or without libFuzzer.
//!
//! Each `check(data)` returns normally or panics with the invariant that failed. Beyond
//! "no panic", they check:
//! - client streams (`text`, `meta`, `binary`): the same bytes fed in arbitrary chunks
//!   decode to the same requests as fed whole; "need more bytes" consumes nothing (but a
//!   refused data block being discarded); what a decoder holds while it waits stays within
//!   its limit;
//! - `dialects`: one operation written in text, meta and binary decodes to the same command;
//! - `frame`: peer frames decode the same whole or chunked, stay within `MAX_FRAME`, and
//!   encode/decode round-trip both ways;
//! - `state`: a state file that decodes re-encodes to exactly its own bytes, its parts
//!   are its entries, and files built from parts decode back to them.

pub mod binary;
pub mod client;
pub mod dialects;
pub mod frame;
pub mod input;
pub mod meta;
pub mod state;
pub mod text;

/// A target's check: returns, or panics saying which invariant failed.
pub type Check = fn(&[u8]);

/// Every target by its corpus directory name (`fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Check)] = &[
    ("text", text::check),
    ("meta", meta::check),
    ("binary", binary::check),
    ("dialects", dialects::check),
    ("frame", frame::check),
    ("state", state::check),
];
