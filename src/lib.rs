//! meshcached: a memcached-compatible cache server where every node is a master.
//!
//! ```text
//!  client ──TCP/unix──► server::connection ──► protocol::{text,meta,binary}::decode
//!                              │                         │ Request (one command model)
//!                              │                         ▼
//!                              │          server::{dispatch,meta_dispatch} (per dialect)
//!                              │                         │
//!                              │                 server::ops ──► store (sharded,
//!                              │                         │        versioned by clock::Hlc)
//!                              ◄──── answers ◄── protocol::encode ◄──┘
//!
//!  replication:  store journal ─► cluster::outbox (replication::log ring) ─► one sender per
//!                peer ─► QUIC uni stream (replication::transport, mutual TLS) ─► peer's
//!                receiver ─► replication::apply (skew guard, HLC observe, LWW) ─► its store
//! ```
//!
//! The client path: a connection reads bytes, its [`protocol::stream::ClientDecoder`]
//! (dialect, refused data blocks; sans-IO) has the dialect's decoder turn them into a
//! [`protocol::Request`], the dialect's dispatcher lowers it to an operation of the one
//! operations layer (`server::ops`: memcached's rules, written once for every dialect), which
//! runs against the [`store`] under one shard lock, and the dialect's encoder writes the
//! answer. Requests on one connection are answered in order; pipelining is just more
//! requests in the read buffer.
//!
//! Consistency, in plain words: each key is linearizable on one node (every command on a
//! key runs under that key's shard lock). Every write is stamped with a hybrid-logical-clock
//! [`clock::Version`], which is also the CAS value clients see. In a cluster every write's
//! resulting state is replicated asynchronously to every peer, which keeps it only if its
//! version is newer than what it holds for the key (last-writer-wins, deletes kept as
//! tombstones, `flush_all` as a versioned barrier): all nodes converge to the same items
//! with the same CAS values, whatever order the writes arrive in. A client's write never
//! waits for the network.
//!
//! Layering: `clock`, `key` and `protocol` know nothing of the network or the store; the
//! `store` knows nothing of protocols; only the server's dispatchers and operations join
//! protocol to store.

pub mod certs;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod key;
pub mod metrics;
pub mod pidfile;
pub mod privileges;
pub mod protocol;
pub mod replication;
pub mod server;
pub mod state;
pub mod store;
#[cfg(test)]
mod testdir;
