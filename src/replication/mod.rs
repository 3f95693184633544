//! Replication between nodes (DESIGN.md sections 4-6), built sans-IO: the log of local
//! mutations and the peer wire format are plain types; the QUIC transport that moves their
//! bytes is the thin layer on top.
//!
//! The tasks that use them (per-peer senders and receivers, dialing, membership) are in
//! `crate::cluster`.

pub mod apply;
pub mod frame;
pub mod log;
pub mod transport;
