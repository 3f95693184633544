//! Replication between nodes (DESIGN.md sections 4-6), built sans-IO: the log of local
//! mutations and the peer wire format are plain types; the QUIC transport that moves their
//! bytes is the thin layer on top.
//!
//! Status: the log, the frame codec and the apply side (skew guard, HLC observation, LWW
//! merge, conflict counters) exist and are tested; the transport, the per-peer
//! senders and the hookup to the dispatcher come with the cluster issue.

pub mod apply;
pub mod frame;
pub mod log;
