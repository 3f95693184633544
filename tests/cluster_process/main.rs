//! The cluster as real `meshcached` processes on 127.0.0.1, each node's log in a file: nodes
//! refuse peers they must not trust (another CA, a clashing node id) and refuse to start
//! with bad certificates or without any; junk on the cluster port harms nothing; a stopped
//! peer catches up after SIGCONT, or, past the replication backlog, is resynced by a
//! snapshot; a late joiner is served only once it holds everything; SIGTERM drains, SIGKILL
//! and a restart converge; `meshcached demo`; repcached's `-x`/`-X` flags; with
//! `--ack-replicas`, a write answered `STORED` survives its node's `kill -9`; the member
//! lifecycle (left on SIGTERM, `cluster forget`, rejoining).

mod ack_replicas;
mod anti_entropy;
mod catch_up;
#[path = "../common/mod.rs"]
mod common;
mod demo;
mod large;
mod lifecycle;
mod membership;
mod resync;
mod security;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::procs::*;
use common::{
    binary, eventually, free_port, free_udp_pair, free_udp_port, read_log, run_to_exit, Client,
    TempDir, DEADLINE,
};
use meshcached::certs::{generate_ca, write_node_dir};
