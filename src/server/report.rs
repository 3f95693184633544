//! The `stats` family of replies, with memcached's field names and meanings.
//!
//! Fields memcached reports about machinery we do not have (slab rebalancing, the LRU
//! crawler, extstore) are reported with the value memcached shows when that machinery is
//! idle, so that dashboards and clients that expect the names keep working.

use std::sync::atomic::Ordering;

use crate::cluster::{EntropyCounters, SyncCounters};
use crate::protocol::{Invalid, Outcome};

use super::dispatch::Ctx;
use super::stats::{rusage, Counter};
use super::{Shared, VERSION};
use swim::{swim_stats, swim_verdict};

mod swim;

/// Name/value pairs, in the order `stats` lists them.
pub type Stats = Vec<(String, String)>;

fn push(out: &mut Stats, name: &str, value: impl ToString) {
    out.push((name.to_string(), value.to_string()));
}

pub fn stats(ctx: &mut Ctx<'_>, group: Option<&[u8]>) -> Outcome {
    // Make this connection's own counts visible in its own `stats` reply.
    ctx.shared.counters.absorb(ctx.counters);
    match group {
        None => Outcome::Stats(general(ctx.shared, ctx.now)),
        Some(b"settings") => Outcome::Stats(settings(ctx)),
        Some(b"items") => Outcome::Stats(items(ctx)),
        Some(b"slabs") => Outcome::Stats(slabs(ctx)),
        // memcached without `-o track_sizes`, which meshcached has no counterpart for.
        Some(b"sizes") => Outcome::Stats(vec![("sizes_status".into(), "disabled".into())]),
        Some(b"conns") => Outcome::Stats(Vec::new()),
        Some(b"replication") => Outcome::Stats(replication(ctx)),
        Some(b"cluster") => Outcome::Stats(cluster(ctx)),
        Some(b"reset") => {
            ctx.shared.counters.reset();
            Outcome::Invalid(Invalid::Raw("RESET"))
        }
        _ => Outcome::Invalid(Invalid::Unknown),
    }
}

/// What `stats` answers, at `now` (unix seconds); also what `/metrics` reads, so that the
/// two can never disagree.
pub fn general(shared: &Shared, now: u32) -> Stats {
    let cfg = &shared.config;
    let store = shared.store.stats();
    let c = |name: Counter| shared.counters.get(name);
    let now_ms = shared.clock().now_ms();
    let (user, system) = rusage();
    let mut s = Vec::with_capacity(96);
    push(&mut s, "pid", std::process::id());
    push(
        &mut s,
        "uptime",
        now_ms.saturating_sub(shared.started_ms) / 1000,
    );
    push(&mut s, "time", now);
    push(&mut s, "version", VERSION);
    push(&mut s, "libevent", "tokio");
    push(&mut s, "pointer_size", usize::BITS);
    push(&mut s, "rusage_user", format!("{user:.6}"));
    push(&mut s, "rusage_system", format!("{system:.6}"));
    push(&mut s, "max_connections", cfg.max_conns);
    push(
        &mut s,
        "curr_connections",
        shared.conns.curr.load(Ordering::Relaxed),
    );
    push(
        &mut s,
        "total_connections",
        shared.conns.total.load(Ordering::Relaxed),
    );
    push(
        &mut s,
        "rejected_connections",
        shared.conns.rejected.load(Ordering::Relaxed),
    );
    push(
        &mut s,
        "connection_structures",
        shared.conns.curr.load(Ordering::Relaxed),
    );
    push(&mut s, "response_obj_oom", 0);
    push(&mut s, "response_obj_count", 0);
    push(&mut s, "response_obj_bytes", 0);
    push(&mut s, "read_buf_oom", 0);
    push(&mut s, "reserved_fds", 0);
    push(
        &mut s,
        "read_buf_count",
        shared.conns.curr.load(Ordering::Relaxed),
    );
    push(&mut s, "read_buf_bytes", 0);
    push(&mut s, "read_buf_bytes_free", 0);
    // Counters in memcached's order, with the store's get_expired/get_flushed after the
    // get hits and misses.
    use Counter::*;
    for counter in [CmdGet, CmdSet, CmdFlush, CmdTouch, CmdMeta] {
        push(&mut s, counter.stat_name(), c(counter));
    }
    push(&mut s, "get_hits", c(Counter::GetHits));
    push(&mut s, "get_misses", c(Counter::GetMisses));
    push(&mut s, "get_expired", store.get_expired);
    push(&mut s, "get_flushed", store.get_flushed);
    for counter in [
        DeleteMisses,
        DeleteHits,
        IncrMisses,
        IncrHits,
        DecrMisses,
        DecrHits,
        CasMisses,
        CasHits,
        CasBadval,
        TouchHits,
        TouchMisses,
        StoreTooLarge,
        StoreNoMemory,
    ] {
        push(&mut s, counter.stat_name(), c(counter));
    }
    push(&mut s, "auth_cmds", 0);
    push(&mut s, "auth_errors", 0);
    // Shown only with an idle timeout, as memcached does.
    if cfg.idle_timeout > 0 {
        push(&mut s, IdleKicks.stat_name(), c(IdleKicks));
    }
    push(&mut s, BytesRead.stat_name(), c(BytesRead));
    push(&mut s, BytesWritten.stat_name(), c(BytesWritten));
    push(&mut s, "limit_maxbytes", cfg.mem_limit);
    // memcached's 0 means its listeners are paused (at the connection limit); here they
    // are closed until the initial sync ends, and again from a shutdown request on.
    let accepting = shared.is_serving() && !shared.stopping();
    push(&mut s, "accepting_conns", u8::from(accepting));
    push(&mut s, "listen_disabled_num", 0);
    push(&mut s, "time_in_listen_disabled_us", 0);
    push(&mut s, "threads", cfg.threads);
    push(&mut s, "conn_yields", 0);
    push(&mut s, "hash_power_level", 16);
    push(&mut s, "hash_bytes", 524288);
    push(&mut s, "hash_is_expanding", 0);
    push(&mut s, "slab_reassign_rescues", 0);
    push(&mut s, "slab_reassign_chunk_rescues", 0);
    push(&mut s, "slab_reassign_evictions_nomem", 0);
    push(&mut s, "slab_reassign_inline_reclaim", 0);
    push(&mut s, "slab_reassign_busy_items", 0);
    push(&mut s, "slab_reassign_busy_deletes", 0);
    push(&mut s, "slab_reassign_running", 0);
    push(&mut s, "slabs_moved", 0);
    push(&mut s, "lru_crawler_running", 0);
    push(&mut s, "lru_crawler_starts", 0);
    push(&mut s, "lru_maintainer_juggles", 0);
    push(&mut s, "malloc_fails", 0);
    push(&mut s, "log_worker_dropped", 0);
    push(&mut s, "log_worker_written", 0);
    push(&mut s, "log_watcher_skipped", 0);
    push(&mut s, "log_watcher_sent", 0);
    push(&mut s, "log_watchers", 0);
    if let Some(tls) = &shared.tls {
        // memcached's, in its order; ssl_new_sessions only with ssl_session_cache.
        if let Some(n) = tls.new_sessions() {
            push(&mut s, "ssl_new_sessions", n);
        }
        let counters = &tls.counters;
        push(
            &mut s,
            "ssl_handshake_errors",
            counters.handshake_errors.load(Ordering::Relaxed),
        );
        push(
            &mut s,
            "ssl_proto_errors",
            counters.proto_errors.load(Ordering::Relaxed),
        );
        push(
            &mut s,
            "time_since_server_cert_refresh",
            tls.secs_since_refresh(now_ms),
        );
    }
    push(&mut s, "unexpected_napi_ids", 0);
    push(&mut s, "round_robin_fallback", 0);
    push(&mut s, "bytes", store.bytes);
    push(&mut s, "curr_items", store.curr_items);
    push(&mut s, "total_items", store.total_items);
    push(&mut s, "slab_global_page_pool", 0);
    push(&mut s, "expired_unfetched", store.expired_unfetched);
    push(&mut s, "evicted_unfetched", store.evicted_unfetched);
    push(&mut s, "evicted_active", 0);
    push(&mut s, "evictions", store.evictions);
    push(&mut s, "reclaimed", store.reclaimed);
    push(&mut s, "crawler_reclaimed", 0);
    push(&mut s, "crawler_items_checked", 0);
    push(&mut s, "lrutail_reflocked", 0);
    push(&mut s, "moves_to_cold", 0);
    push(&mut s, "moves_to_warm", 0);
    push(&mut s, "moves_within_lru", 0);
    push(&mut s, "direct_reclaims", 0);
    push(&mut s, "lru_bumps_dropped", 0);
    // Replication (DESIGN.md section 1's counters); zero on a standalone node.
    let cluster = shared.cluster.as_deref();
    let n = |f: fn(&crate::cluster::ClusterCounters) -> &std::sync::atomic::AtomicU64| {
        cluster.map_or(0, |c| f(&c.counters).load(Ordering::Relaxed))
    };
    // Writes received from peers, by what last-writer-wins did with each (Couchbase's
    // outcomes). Every replicated write is counted, not only conflicts (two origins writing
    // one key concurrently, which a newer write cannot be told apart from); they were
    // misnamed `repl_conflicts_*` before (the README's upgrade notes say so).
    push(&mut s, "repl_writes_accepted", n(|c| &c.accepted));
    push(
        &mut s,
        "repl_writes_rejected_behind",
        n(|c| &c.rejected_behind),
    );
    push(
        &mut s,
        "repl_writes_rejected_identical",
        n(|c| &c.rejected_identical),
    );
    push(
        &mut s,
        "repl_refused_forgotten",
        n(|c| &c.refused_forgotten),
    );
    push(&mut s, "repl_not_stored", n(|c| &c.not_stored));
    push(&mut s, "clock_skew_rejects", n(|c| &c.clock_skew_rejects));
    push(&mut s, "repl_resyncs_needed", n(|c| &c.resyncs_needed));
    push(&mut s, "peers_refused", n(|c| &c.peers_refused));
    push(&mut s, "ack_waits", n(|c| &c.ack_waits));
    push(&mut s, "ack_timeouts", n(|c| &c.ack_timeouts));
    push(&mut s, "tombstones", store.tombstones);
    push(&mut s, "tombstone_bytes", store.tombstone_bytes);
    push(
        &mut s,
        "tombstones_collected_early",
        store.tombstones_collected,
    );
    push(&mut s, "forgotten_fences", store.fences);
    push(&mut s, "forgotten_floor", store.forgotten_floor);
    push(
        &mut s,
        "peers_connected",
        cluster.map_or(0, |c| c.peers_connected()),
    );
    push(&mut s, "sync_state", sync_state(cluster));
    push(
        &mut s,
        "clock_outvoted",
        u64::from(cluster.is_some_and(|c| c.clock_outvoted().is_some())),
    );
    let k = |f: fn(&SyncCounters) -> &std::sync::atomic::AtomicU64| {
        cluster.map_or(0, |c| f(&c.sync_counters).load(Ordering::Relaxed))
    };
    push(&mut s, "snapshots_sent", k(|c| &c.snapshots_sent));
    push(&mut s, "snapshots_received", k(|c| &c.snapshots_received));
    push(
        &mut s,
        "snapshot_items_received",
        k(|c| &c.snapshot_items_received),
    );
    push(
        &mut s,
        "snapshot_bytes_received",
        k(|c| &c.snapshot_bytes_received),
    );
    push(&mut s, "catch_ups_sent", k(|c| &c.catch_ups_sent));
    push(
        &mut s,
        "catch_up_items_received",
        k(|c| &c.catch_up_items_received),
    );
    push(&mut s, "reconciled_drops", k(|c| &c.reconciled_drops));
    push(&mut s, "stale_state_files", k(|c| &c.stale_state_files));
    let ae = |f: fn(&EntropyCounters) -> &std::sync::atomic::AtomicU64| {
        cluster.map_or(0, |c| f(&c.counters.entropy).load(Ordering::Relaxed))
    };
    push(&mut s, "ae_rounds", ae(|c| &c.rounds));
    push(&mut s, "ae_buckets_differing", ae(|c| &c.buckets_differing));
    push(&mut s, "ae_keys_sent", ae(|c| &c.keys_sent));
    push(&mut s, "ae_keys_received", ae(|c| &c.keys_received));
    push(&mut s, "ae_bytes", ae(|c| &c.bytes));
    swim_stats(&mut s, cluster);
    s
}

/// `stats replication`: this node's log, then one group of lines per peer.
fn replication(ctx: &Ctx<'_>) -> Stats {
    let mut s = Vec::new();
    let Some(cluster) = ctx.shared.cluster.as_deref() else {
        push(&mut s, "mode", "standalone");
        return s;
    };
    let r = cluster.report();
    push(&mut s, "mode", "cluster");
    push(&mut s, "node_name", &r.name);
    push(&mut s, "node_id", r.node_id);
    push(&mut s, "run_id", r.run_id);
    push(&mut s, "log_last_seq", r.last_seq);
    push(&mut s, "log_oldest_seq", r.oldest_seq);
    push(&mut s, "log_bytes", r.backlog_bytes);
    push(&mut s, "peers", r.peers.len());
    for p in &r.peers {
        let f = |field: &str| format!("peer:{}:{field}", p.name);
        let addr = p.addr.map_or_else(|| "-".to_string(), |a| a.to_string());
        push(&mut s, &f("node_id"), p.node_id);
        push(&mut s, &f("address"), addr);
        push(&mut s, &f("state"), p.state);
        push(&mut s, &f("connected_since"), p.connected_since);
        push(&mut s, &f("last_sent_seq"), p.sent_seq);
        push(&mut s, &f("last_acked_seq"), p.acked_seq);
        push(&mut s, &f("lag_mutations"), p.lag_mutations);
        push(&mut s, &f("lag_ms"), p.lag_ms);
        push(&mut s, &f("bytes_sent"), p.bytes_sent);
        push(&mut s, &f("bytes_received"), p.bytes_received);
        push(&mut s, &f("reconnects"), p.reconnects);
        push(&mut s, &f("rtt_us"), p.rtt_us);
        push(&mut s, &f("mtu"), p.mtu);
        push(&mut s, &f("datagrams_sent"), p.datagrams_sent);
        push(&mut s, &f("lost_packets"), p.lost_packets);
        push(&mut s, &f("cwnd"), p.cwnd);
        push(&mut s, &f("black_holes"), p.black_holes);
        push(&mut s, &f("flow_blocked_sent"), p.blocked_sent);
        push(&mut s, &f("flow_blocked_received"), p.blocked_received);
        push(&mut s, &f("ae_rounds"), p.ae[0]);
        push(&mut s, &f("ae_buckets_differing"), p.ae[1]);
        push(&mut s, &f("ae_keys_sent"), p.ae[2]);
        push(&mut s, &f("ae_keys_received"), p.ae[3]);
        push(&mut s, &f("ae_bytes"), p.ae[4]);
    }
    s
}

/// The node's `sync_state` (`stats`): where its initial sync stands.
fn sync_state(cluster: Option<&crate::cluster::Cluster>) -> &'static str {
    cluster.map_or("standalone", |c| c.sync_state())
}

/// `stats cluster`: one line per member and field, this node first: `state` (joining,
/// syncing, ready, suspect, down, left; see `cluster::MemberState`), `address`,
/// `node_id`, `last_contact` (unix seconds of the last time it was linked: now while it
/// is, `-` if never) and its lag on this node's writes (`-` for a member forgotten). A
/// forgotten member is listed as `left` until it joins again; `members` counts the others
/// and this node.
fn cluster(ctx: &Ctx<'_>) -> Stats {
    let mut s = Vec::new();
    let Some(cluster) = ctx.shared.cluster.as_deref() else {
        push(&mut s, "mode", "standalone");
        return s;
    };
    let r = cluster.report();
    let members = cluster.members();
    let now = ctx.now;
    push(&mut s, "mode", "cluster");
    push(&mut s, "node_name", &r.name);
    let current = members.iter().filter(|m| m.forgotten.is_none()).count();
    push(&mut s, "members", current + 1);
    let mut member = |name: &str, field: &str, value: String| {
        push(&mut s, &format!("member:{name}:{field}"), value);
    };
    let addr = cluster
        .local_addr()
        .map_or_else(|| "-".to_string(), |a| a.to_string());
    let own_state = match sync_state(Some(cluster)) {
        "ready" => "ready",
        "waiting_for_peers" => "joining",
        _ => "syncing",
    };
    member(&r.name, "state", own_state.to_string());
    member(&r.name, "address", addr);
    member(&r.name, "node_id", r.node_id.to_string());
    member(&r.name, "last_contact", now.to_string());
    member(&r.name, "lag_writes", "0".to_string());
    member(&r.name, "lag_ms", "0".to_string());
    for m in &members {
        let addr = m.addr.map_or_else(|| "-".to_string(), |a| a.to_string());
        member(&m.name, "state", m.state.as_str().to_string());
        member(&m.name, "address", addr);
        member(&m.name, "node_id", m.node_id.to_string());
        let contact = match m.last_contact_ms {
            0 => "-".to_string(),
            ms => (ms / 1000).to_string(),
        };
        member(&m.name, "last_contact", contact);
        let peer = r.peers.iter().find(|p| p.name == m.name);
        let lag = |f: fn(&crate::cluster::PeerReport) -> u64| {
            peer.filter(|_| m.forgotten.is_none())
                .map_or_else(|| "-".to_string(), |p| f(p).to_string())
        };
        member(&m.name, "lag_writes", lag(|p| p.lag_mutations));
        member(&m.name, "lag_ms", lag(|p| p.lag_ms));
        member(&m.name, "swim", swim_verdict(cluster, &m.name).to_string());
    }
    s
}

/// The cluster's settings in `stats settings` (memcached has none: names of our own, with
/// durations in their unit), after memcached's; a standalone node says only that.
fn cluster_settings(s: &mut Stats, cfg: &crate::config::Config) {
    let Some(c) = &cfg.cluster else {
        push(s, "cluster", "no");
        return;
    };
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    push(s, "cluster", "yes");
    push(s, "node_name", &c.node_name);
    push(s, "node_id", c.node_id.get());
    push(s, "cluster_listen", c.listen);
    push(s, "certs_dir", c.certs_dir.display());
    let join: Vec<String> = c.join.iter().map(ToString::to_string).collect();
    push(
        s,
        "join",
        if join.is_empty() {
            "NULL".to_string()
        } else {
            join.join(",")
        },
    );
    push(s, "repl_backlog", c.repl_backlog);
    push(s, "max_clock_skew_ms", c.max_clock_skew.as_millis());
    push(s, "tombstone_ttl", c.tombstone_ttl);
    push(s, "join_timeout_ms", c.join_timeout.as_millis());
    push(s, "serve_while_syncing", yes_no(c.serve_while_syncing));
    push(s, "drain_timeout_ms", c.drain_timeout.as_millis());
    push(s, "remove_down_after_ms", c.remove_down_after.as_millis());
    push(s, "ack_replicas", c.ack_replicas);
    push(s, "ack_timeout_ms", c.ack_timeout.as_millis());
    push(
        s,
        "anti_entropy_period_ms",
        c.anti_entropy_period.as_millis(),
    );
    let state_file = c
        .state_file
        .as_ref()
        .map_or("NULL".to_string(), |p| p.display().to_string());
    push(s, "state_file", state_file);
}

fn settings(ctx: &Ctx<'_>) -> Stats {
    let cfg = &ctx.shared.config;
    let on_off = |b: bool| if b { "yes" } else { "no" };
    let mut s = Vec::with_capacity(48);
    push(&mut s, "maxbytes", cfg.mem_limit);
    push(&mut s, "maxconns", cfg.max_conns);
    push(
        &mut s,
        "tcpport",
        cfg.listen.first().map_or(0, |l| l.addr.port()),
    );
    push(&mut s, "udpport", 0);
    let inter = cfg
        .listen
        .iter()
        .map(|l| l.addr.ip().to_string())
        .collect::<Vec<_>>()
        .join(",");
    push(
        &mut s,
        "inter",
        if inter.is_empty() {
            "NULL".to_string()
        } else {
            inter
        },
    );
    push(&mut s, "verbosity", cfg.verbose);
    push(&mut s, "oldest", 0);
    push(&mut s, "evictions", if cfg.evict { "on" } else { "off" });
    let domain = cfg
        .unix_socket
        .as_ref()
        .map_or("NULL".to_string(), |p| p.display().to_string());
    push(&mut s, "domain_socket", domain);
    push(&mut s, "umask", format!("{:o}", cfg.unix_mask));
    push(&mut s, "shutdown_command", on_off(cfg.shutdown_enabled));
    push(&mut s, "growth_factor", "1.25");
    push(&mut s, "chunk_size", 48);
    push(&mut s, "num_threads", cfg.threads);
    push(&mut s, "num_threads_per_udp", cfg.threads);
    push(&mut s, "stat_key_prefix", ":");
    push(&mut s, "detail_enabled", "no");
    push(&mut s, "reqs_per_event", 20);
    push(&mut s, "cas_enabled", on_off(cfg.cas_enabled));
    push(&mut s, "tcp_backlog", 1024);
    push(&mut s, "binding_protocol", "auto-negotiate");
    push(&mut s, "auth_enabled_sasl", "no");
    push(&mut s, "auth_enabled_ascii", "no");
    push(&mut s, "item_size_max", cfg.max_item_size);
    push(&mut s, "maxconns_fast", "yes");
    push(&mut s, "hashpower_init", 0);
    push(&mut s, "slab_reassign", "no");
    push(&mut s, "slab_automove", 0);
    push(&mut s, "lru_crawler", "no");
    push(&mut s, "lru_maintainer_thread", "no");
    push(&mut s, "hot_lru_pct", 20);
    push(&mut s, "warm_lru_pct", 40);
    push(&mut s, "temp_lru", "false");
    push(&mut s, "flush_enabled", on_off(cfg.flush_enabled));
    push(&mut s, "dump_enabled", "yes");
    push(&mut s, "idle_timeout", cfg.idle_timeout);
    tls_settings(&mut s, cfg.tls.as_ref());
    push(&mut s, "eviction_policy", "clock");
    cluster_settings(&mut s, cfg);
    s
}

/// The `ssl_*` lines of `stats settings`, which memcached built with TLS (as Debian's is)
/// shows whether or not `-Z` is on; what C's printf shows for an unset path is kept.
fn tls_settings(s: &mut Stats, tls: Option<&crate::config::TlsConfig>) {
    let path = |p: Option<&std::path::PathBuf>, none: &str| {
        p.map_or(none.to_string(), |p| p.display().to_string())
    };
    let on_off = |b: bool| if b { "yes" } else { "no" };
    push(s, "ssl_enabled", on_off(tls.is_some()));
    push(
        s,
        "ssl_chain_cert",
        path(tls.map(|t| &t.chain_cert), "(null)"),
    );
    push(
        s,
        "ssl_key",
        path(tls.and_then(|t| t.key.as_ref()), "(null)"),
    );
    let verify = tls.map_or(0, |t| t.verify_mode.openssl_flags());
    push(s, "ssl_verify_mode", verify);
    // OpenSSL's SSL_FILETYPE_PEM, the only format read.
    push(s, "ssl_keyformat", 1);
    push(s, "ssl_ciphers", "NULL");
    push(
        s,
        "ssl_ca_cert",
        path(tls.and_then(|t| t.ca_cert.as_ref()), "NULL"),
    );
    // rustls' largest record, as memcached's default buffer.
    push(s, "ssl_wbuf_size", 16384);
    push(
        s,
        "ssl_session_cache",
        on_off(tls.is_some_and(|t| t.session_cache)),
    );
    push(s, "ssl_kernel_tls", "no");
    let min = tls.map_or(crate::config::TlsVersion::Tls12, |t| t.min_version);
    push(s, "ssl_min_version", min.name());
}

/// `stats items`: memcached reports per slab class; we have one class, reported as 1.
fn items(ctx: &Ctx<'_>) -> Stats {
    let st = ctx.shared.store.stats();
    if st.curr_items == 0 {
        return Vec::new();
    }
    let mut s = Vec::new();
    let mut item = |name: &str, v: u64| push(&mut s, &format!("items:1:{name}"), v);
    item("number", st.curr_items);
    item("age", 0);
    item("evicted", st.evictions);
    item("evicted_nonzero", st.evicted_nonzero);
    item("evicted_time", u64::from(st.last_evicted_age));
    item("outofmemory", 0);
    item("tailrepairs", 0);
    item("reclaimed", st.reclaimed);
    item("expired_unfetched", st.expired_unfetched);
    item("evicted_unfetched", st.evicted_unfetched);
    s
}

/// `stats slabs`: one pseudo slab class holding everything, plus the totals.
fn slabs(ctx: &Ctx<'_>) -> Stats {
    let st = ctx.shared.store.stats();
    let mut s = Vec::new();
    if st.curr_items > 0 {
        let avg = st.bytes as u64 / st.curr_items.max(1);
        push(&mut s, "1:chunk_size", avg);
        push(&mut s, "1:used_chunks", st.curr_items);
        push(&mut s, "1:mem_requested", st.bytes);
    }
    push(&mut s, "active_slabs", u64::from(st.curr_items > 0));
    push(&mut s, "total_malloced", ctx.shared.store.used_bytes());
    s
}
