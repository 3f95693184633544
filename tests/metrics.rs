//! `--metrics-listen` against the real binary: `/metrics` parsed by Prometheus' own Python
//! parser (`prometheus_client.parser`) agrees with `stats` and uses memcached_exporter's
//! names; every metric is documented in METRICS.md; `/ready` goes 503 -> 200 across a
//! joining node's initial sync and 200 -> 503 while it drains on SIGTERM; `/health` is 200.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::procs::{certify, loopback, resume, set, stop, Proc};
use common::{
    binary, eventually, free_port, free_udp_pair, http_get, Client, Node, TempDir, DEADLINE,
};
use meshcached::certs::generate_ca;

/// One sample as the Python parser read it.
#[derive(Debug)]
struct Sample {
    family: String,
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text with `prometheus_client.parser` (pip `prometheus-client`, which
/// .ci/run installs); panics if the parser refuses the text.
fn parse(text: &str) -> Vec<Sample> {
    const SCRIPT: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ";".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{fam.name}\t{fam.type}\t{s.name}\t{labels}\t{s.value!r}")
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed the parser");
    let out = child.wait_with_output().expect("python3 ran");
    assert!(
        out.status.success(),
        "prometheus_client.parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let labels = f[3]
                .split(';')
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Sample {
                family: f[0].to_string(),
                kind: f[1].to_string(),
                name: f[2].to_string(),
                labels,
                value: f[4].parse().expect("a number"),
            }
        })
        .collect()
}

/// The value of the sample `name` with exactly `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
        .value
}

fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, body) = http_get(addr, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

fn stat(c: &mut Client, name: &str) -> f64 {
    c.stats()[name].parse().expect("a number")
}

/// The metrics memcached_exporter's dashboards use are there under its names, with its
/// types, and agree with `stats`.
#[test]
fn metrics_use_memcached_exporter_names_and_agree_with_stats() {
    let (node, metrics) = Node::start_with_metrics(&[]);
    let mut c = node.client();
    assert_eq!(c.line("set a 0 0 1\r\nx"), "STORED\r\n");
    assert_eq!(c.line("set b 0 0 1\r\ny"), "STORED\r\n");
    assert!(c.call(b"get a\r\n", b"END\r\n").starts_with("VALUE a"));
    assert_eq!(c.call(b"get nope\r\n", b"END\r\n"), "END\r\n");
    assert_eq!(c.line("cas a 0 0 1 1\r\nz"), "EXISTS\r\n");
    assert_eq!(c.line("delete nope"), "NOT_FOUND\r\n");
    assert_eq!(c.line("incr nope 1"), "NOT_FOUND\r\n");

    let m = scrape(metrics);
    let cmd = |command, status| {
        value(
            &m,
            "memcached_commands_total",
            &[("command", command), ("status", status)],
        )
    };
    assert_eq!(cmd("get", "hit"), stat(&mut c, "get_hits"));
    assert_eq!(cmd("get", "hit"), 1.0);
    assert_eq!(cmd("get", "miss"), 1.0);
    assert_eq!(cmd("cas", "badval"), 1.0);
    assert_eq!(cmd("delete", "miss"), 1.0);
    assert_eq!(cmd("incr", "miss"), 1.0);
    // memcached counts a cas in cmd_set too; the exporter subtracts it.
    assert_eq!(stat(&mut c, "cmd_set"), 3.0);
    assert_eq!(cmd("set", "hit"), 2.0);
    assert_eq!(value(&m, "memcached_current_items", &[]), 2.0);
    assert_eq!(
        value(&m, "memcached_items_total", &[]),
        stat(&mut c, "total_items")
    );
    assert_eq!(
        value(&m, "memcached_limit_bytes", &[]),
        64.0 * 1024.0 * 1024.0
    );
    assert_eq!(value(&m, "memcached_max_connections", &[]), 1024.0);
    assert_eq!(value(&m, "memcached_up", &[]), 1.0);
    assert_eq!(value(&m, "meshcached_ready", &[]), 1.0);
    assert!(value(&m, "memcached_current_connections", &[]) >= 1.0);
    assert!(value(&m, "memcached_read_bytes_total", &[]) > 0.0);
    let version = m
        .iter()
        .find(|s| s.name == "memcached_version")
        .expect("memcached_version");
    assert!(version.labels["version"].starts_with("1.6.45 meshcached-"));
    let kind = |family: &str| {
        m.iter()
            .find(|s| s.family == family)
            .map(|s| s.kind.clone())
            .unwrap_or_else(|| panic!("no family {family}"))
    };
    assert_eq!(kind("memcached_commands"), "counter");
    assert_eq!(kind("memcached_current_items"), "gauge");
    assert_documented(&m);

    let (status, body) = http_get(metrics, "/health").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _) = http_get(metrics, "/nowhere").unwrap();
    assert_eq!(status, 404);
}

/// Every sample's metric has a row in METRICS.md.
fn assert_documented(samples: &[Sample]) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/METRICS.md"))
        .expect("METRICS.md");
    for s in samples {
        assert!(
            doc.contains(&format!("| `{}`", s.name)),
            "{} is not documented in METRICS.md",
            s.name
        );
    }
}

/// A node spawned without waiting for its client port (it opens only after the initial
/// sync), killed on drop.
struct Joiner(Child);

impl Drop for Joiner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `/ready` answers at all; returns its status and body.
fn ready(addr: SocketAddr) -> (u16, String) {
    let mut got = None;
    eventually(DEADLINE, "/ready answers", || {
        got = http_get(addr, "/ready");
        got.is_some()
    });
    got.expect("answered")
}

/// `/ready` is 503 while a joining node waits for its peer and syncs, 200 once it holds
/// what the peer holds, and 503 again from SIGTERM on while it drains its writes to a peer
/// that does not acknowledge them (stopped).
#[test]
fn ready_follows_the_initial_sync_and_the_drain() {
    let dir = TempDir::new("metrics-ready");
    let ca = generate_ca().expect("CA");
    certify(&ca, &dir, "node-a");
    let b_certs = certify(&ca, &dir, "node-b");
    let (pa, pb) = free_udp_pair();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let b_port = free_port();
    // node-b joins node-a, which is not running yet.
    let log = std::fs::File::create(dir.join("node-b.log")).unwrap();
    let mut b = Joiner(
        Command::new(binary())
            .args(["-p", &b_port.to_string(), "-l", "127.0.0.1", "-t", "2"])
            .args([
                "--node-name",
                "node-b",
                "--node-id",
                "2",
                "--certs-dir",
                &b_certs,
            ])
            .args(["--cluster-listen", &loopback(pb), "--join", &loopback(pa)])
            .args(["--join-timeout", "10m", "--drain-timeout", "20s"])
            .args(["--metrics-listen", &metrics.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn node-b"),
    );
    let (status, body) = ready(metrics);
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("syncing"), "{body}");
    assert_eq!(http_get(metrics, "/health").unwrap().0, 200);
    let accepting = || value(&scrape(metrics), "memcached_accepting_connections", &[]);
    assert_eq!(accepting(), 0.0, "the client port is closed while syncing");

    let a = Proc::start(&dir, "node-a", 1, pa, &[]);
    set(&mut a.client(), "before", "join");
    eventually(DEADLINE, "node-b is ready", || {
        http_get(metrics, "/ready").is_some_and(|(s, _)| s == 200)
    });
    let mut cb = Client::connect(SocketAddr::from(([127, 0, 0, 1], b_port)));
    eventually(DEADLINE, "node-b holds node-a's key", || {
        cb.call(b"get before\r\n", b"END\r\n").contains("join")
    });
    let m = scrape(metrics);
    assert_eq!(
        value(&m, "meshcached_sync_state", &[("state", "ready")]),
        1.0
    );
    assert_eq!(value(&m, "meshcached_peer_up", &[("peer", "node-a")]), 1.0);
    assert_eq!(value(&m, "meshcached_peers_connected", &[]), 1.0);
    eventually(DEADLINE, "node-a is a ready member on node-b", || {
        let m = scrape(metrics);
        value(
            &m,
            "meshcached_member_state",
            &[("member", "node-a"), ("state", "ready")],
        ) == 1.0
            && value(&m, "meshcached_members", &[("state", "ready")]) == 1.0
    });
    assert_eq!(value(&m, "memcached_accepting_connections", &[]), 1.0);
    assert!(value(&m, "meshcached_snapshots_received_total", &[]) >= 1.0);
    assert_documented(&m);

    // node-a stops acknowledging; node-b takes a write it must hand over before leaving.
    stop(&a);
    set(&mut cb, "unacked", "write");
    drop(cb);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(b.0.id() as i32, libc::SIGTERM) };
    let mut seen = None;
    eventually(DEADLINE, "/ready says 503 while draining", || {
        seen = http_get(metrics, "/ready").filter(|(s, _)| *s == 503);
        seen.is_some()
    });
    let (_, body) = seen.unwrap();
    assert!(body.starts_with("draining"), "{body}");
    assert_eq!(accepting(), 0.0, "no new clients while draining");
    resume(&a);
    eventually(Duration::from_secs(30), "node-b exits", || {
        matches!(b.0.try_wait(), Ok(Some(_)))
    });
    assert!(b.0.wait().unwrap().success());
}

/// Connections that never send a request cannot make a probe wait: beyond the endpoint's
/// capacity a connection is answered `503` at once (before, it waited in the kernel's
/// backlog until a header time-out freed a slot, seconds, past a kubelet probe's 1 s),
/// and a slot freed is served again.
#[test]
fn idle_connections_cannot_make_a_probe_wait() {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _node = Node::start(&["--metrics-listen", &metrics.to_string()]);
    assert_eq!(http_get(metrics, "/health").map(|r| r.0), Some(200));
    let idle: Vec<std::net::TcpStream> = (0..meshcached::metrics::MAX_CONNECTIONS)
        .map(|_| std::net::TcpStream::connect(metrics).expect("connect"))
        .collect();
    // The endpoint accepts them in order: the probe after them finds every slot taken.
    let (status, body) = http_get(metrics, "/health").expect("an answer");
    assert_eq!((status, body.as_str()), (503, "too many connections\n"));
    drop(idle);
    eventually(DEADLINE, "served again once the idle ones are gone", || {
        http_get(metrics, "/health").is_some_and(|r| r.0 == 200)
    });
}
