//! Replication between nodes (DESIGN.md sections 4-6), built sans-IO: the log of local
//! mutations and the peer wire format are plain types; the QUIC transport that moves their
//! bytes is the thin layer on top.
//!
//! Status: the log, the frame codec, the apply side (skew guard, HLC observation, LWW
//! merge, conflict counters) and the mutual-TLS QUIC transport exist and are tested; the
//! per-peer
//! senders and the hookup to the dispatcher come with the cluster issue.

pub mod apply;
pub mod frame;
pub mod log;
pub mod transport;
