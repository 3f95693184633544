//! The memcached part of `/metrics`: memcached_exporter's metric names, verbatim, so that
//! its dashboards and alerts work unchanged, plus the store's own `meshcached_*` gauges.
//!
//! Values are read at scrape time from the very list `stats` answers with
//! ([`crate::server::report::general`]): the client path pays nothing for metrics, and
//! `stats` and `/metrics` can never disagree. The mapping from stat to metric is
//! memcached_exporter's (`pkg/exporter/exporter.go`), including its `set` command count
//! (`cmd_set` less the CAS commands, which memcached counts in `cmd_set` too).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::server::report::general;
use crate::server::Shared;

/// How a stat is exposed. Counter names are given without the `_total` that the encoder
/// appends.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// `(stat, metric, kind, help)` for every stat that maps to one metric without labels.
const PLAIN: &[(&str, &str, Kind, &str)] = &[
    // memcached_exporter declares this a counter; a counter's name must end in `_total`
    // here, so it is a gauge to keep the name dashboards use.
    ("uptime", "memcached_uptime_seconds", Kind::Gauge, "Number of seconds since the server started."),
    ("time", "memcached_time_seconds", Kind::Gauge, "current UNIX time according to the server."),
    ("rusage_user", "memcached_process_user_cpu_seconds", Kind::Counter, "Accumulated user time for this process."),
    ("rusage_system", "memcached_process_system_cpu_seconds", Kind::Counter, "Accumulated system time for this process."),
    ("bytes_read", "memcached_read_bytes", Kind::Counter, "Total number of bytes read by this server from network."),
    ("bytes_written", "memcached_written_bytes", Kind::Counter, "Total number of bytes sent by this server to network."),
    ("curr_connections", "memcached_current_connections", Kind::Gauge, "Current number of open connections."),
    ("max_connections", "memcached_max_connections", Kind::Gauge, "Maximum number of clients allowed."),
    ("total_connections", "memcached_connections", Kind::Counter, "Total number of connections opened since the server started running."),
    ("rejected_connections", "memcached_connections_rejected", Kind::Counter, "Total number of connections rejected due to hitting the -c limit."),
    ("conn_yields", "memcached_connections_yielded", Kind::Counter, "Total number of connections yielded running due to hitting the -R limit."),
    ("listen_disabled_num", "memcached_connections_listener_disabled", Kind::Counter, "Number of times that memcached has hit its connections limit and disabled its listener."),
    ("bytes", "memcached_current_bytes", Kind::Gauge, "Current number of bytes used to store items."),
    ("limit_maxbytes", "memcached_limit_bytes", Kind::Gauge, "Number of bytes this server is allowed to use for storage."),
    ("curr_items", "memcached_current_items", Kind::Gauge, "Current number of items stored by this instance."),
    ("total_items", "memcached_items", Kind::Counter, "Total number of items stored during the life of this instance."),
    ("evictions", "memcached_items_evicted", Kind::Counter, "Total number of valid items removed from cache to free memory for new items."),
    ("reclaimed", "memcached_items_reclaimed", Kind::Counter, "Total number of times an entry was stored using memory from an expired entry."),
    ("store_too_large", "memcached_item_too_large", Kind::Counter, "The number of times an item exceeded the max-item-size when being stored."),
    ("store_no_memory", "memcached_item_no_memory", Kind::Counter, "The number of times an item could not be stored due to no more memory."),
    ("accepting_conns", "memcached_accepting_connections", Kind::Gauge, "The Memcached server is currently accepting new connections."),
    // The store's deletes and forgotten keys (DESIGN section 1); zero on a standalone node.
    ("tombstones", "meshcached_tombstones", Kind::Gauge, "Deletes remembered so that older writes of their keys arriving late lose."),
    ("tombstone_bytes", "meshcached_tombstone_bytes", Kind::Gauge, "Memory held by tombstones and fences, outside -m."),
    ("tombstones_collected_early", "meshcached_tombstones_collected_early", Kind::Counter, "Tombstones collected before --tombstone-ttl because their budget was full."),
    ("forgotten_fences", "meshcached_forgotten_fences", Kind::Gauge, "Fences kept for forgotten keys (expired, evicted or collected) that still refuse older writes."),
];

/// The commands memcached_exporter breaks down by hit and miss.
const HIT_MISS: &[&str] = &["get", "delete", "incr", "decr", "cas", "touch"];

/// The collector; it holds the server's shared state and reads it on each scrape.
pub struct MemcachedCollector {
    shared: Arc<Shared>,
}

impl MemcachedCollector {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl fmt::Debug for MemcachedCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemcachedCollector")
    }
}

impl Collector for MemcachedCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let shared = &self.shared;
        let list = general(shared, shared.clock().now_secs());
        let stats: HashMap<&str, &str> =
            list.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let int = |name: &str| {
            stats
                .get(name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };

        gauge(
            &mut enc,
            "memcached_up",
            "Could the memcached server be reached.",
            1u64,
        )?;
        let version = stats.get("version").copied().unwrap_or("");
        let mut m = enc.encode_descriptor(
            "memcached_version",
            "The version of this memcached server.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1u64).encode(m.encode_family(&[("version", version)])?)?;

        for &(stat, metric, kind, help) in PLAIN {
            let Some(raw) = stats.get(stat) else { continue };
            // rusage_* are seconds with a fraction; everything else is a whole number.
            match (kind, raw.parse::<u64>()) {
                (Kind::Counter, Ok(n)) => counter(&mut enc, metric, help, n)?,
                (Kind::Gauge, Ok(n)) => gauge(&mut enc, metric, help, n)?,
                (Kind::Counter, Err(_)) => counter(&mut enc, metric, help, parse_f64(raw))?,
                (Kind::Gauge, Err(_)) => gauge(&mut enc, metric, help, parse_f64(raw))?,
            }
        }
        gauge(
            &mut enc,
            "memcached_malloced_bytes",
            "Number of bytes of memory allocated to slab pages.",
            shared.store.used_bytes() as u64,
        )?;

        let mut rows: Vec<(&str, &str, u64)> = Vec::new();
        for op in HIT_MISS {
            rows.push((op, "hit", int(&format!("{op}_hits"))));
            rows.push((op, "miss", int(&format!("{op}_misses"))));
        }
        rows.push(("cas", "badval", int("cas_badval")));
        rows.push(("flush", "hit", int("cmd_flush")));
        let cas = int("cas_misses") + int("cas_hits") + int("cas_badval");
        rows.push(("set", "hit", int("cmd_set").saturating_sub(cas)));
        let mut m = enc.encode_descriptor(
            "memcached_commands",
            "Total number of all requests broken down by command (get, set, etc.) and status.",
            None,
            MetricType::Counter,
        )?;
        for (command, status, n) in rows {
            let labels = [("command", command), ("status", status)];
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }

        let ready = super::readiness(shared).is_ok();
        gauge(
            &mut enc,
            "meshcached_ready",
            "1 when /ready answers 200: serving, synced with the cluster, not shutting down.",
            u64::from(ready),
        )
    }
}

fn parse_f64(raw: &str) -> f64 {
    raw.parse().unwrap_or(0.0)
}

/// Encodes one counter without labels; `name` lacks the `_total` the encoder adds.
pub(super) fn counter<N>(enc: &mut DescriptorEncoder, name: &str, help: &str, n: N) -> fmt::Result
where
    ConstCounter<N>: EncodeMetric,
{
    let c = ConstCounter::new(n);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Encodes one gauge without labels.
pub(super) fn gauge<N>(enc: &mut DescriptorEncoder, name: &str, help: &str, n: N) -> fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let g = ConstGauge::new(n);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}
