//! `stats` values are not comparable between two servers, so the scripts elide
//! them. Their names are: monitoring tools and exporters look stats up by name,
//! so meshcached must report every general stat memcached reports, except the
//! few below that only describe memcached's own machinery.

use crate::server::{self, request, ServerProc};

/// memcached stats that describe memcached's own machinery rather than a cache
/// (slab allocator, LRU background threads, libevent, the `watch` logger, NAPI
/// thread selection). A name ending in `_` is a prefix.
const STATS_NOT_APPLICABLE: &[&str] = &[
    "libevent",
    "slab_",
    "slabs_moved",
    "lru_crawler_",
    "lru_maintainer_juggles",
    "log_",
    "unexpected_napi_ids",
    "round_robin_fallback",
];

/// Every general stat name memcached reports must be in meshcached's `stats`.
#[test]
fn stats_names() {
    let reference = ServerProc::start(
        "memcached",
        &server::reference_binary(),
        &[],
        server::running_as_root(),
    );
    let subject = ServerProc::start("meshcached", &server::subject_binary(), &[], false);
    let expected = stat_names(reference.port).unwrap_or_else(|e| panic!("memcached `stats`: {e}"));
    let actual = stat_names(subject.port)
        .unwrap_or_else(|e| panic!("meshcached `stats`: {e}\n{}", subject.stderr()));
    let not_applicable = |name: &str| {
        STATS_NOT_APPLICABLE.iter().any(|p| {
            if p.ends_with('_') {
                name.starts_with(p)
            } else {
                name == *p
            }
        })
    };
    let missing: Vec<&String> = expected
        .iter()
        .filter(|n| !not_applicable(n) && !actual.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "meshcached's `stats` lacks memcached's stat names: {missing:?}"
    );
}

fn stat_names(port: u16) -> Result<Vec<String>, String> {
    let text = request(port, b"stats\r\n", b"END\r\n")?;
    let mut names = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty() && *l != "END") {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("STAT"), Some(name), Some(_value)) => names.push(name.to_string()),
            _ => return Err(format!("malformed stats line {line:?}")),
        }
    }
    Ok(names)
}

/// With `-o idle_timeout=N`, memcached adds `idle_kicks` between the auth counters and the
/// byte counters of `stats`, and shows N in `stats settings`: meshcached alike.
#[test]
fn idle_timeout_stats() {
    let extra = ["-o".to_string(), "idle_timeout=5".to_string()];
    let reference = ServerProc::start(
        "memcached",
        &server::reference_binary(),
        &extra,
        server::running_as_root(),
    );
    let subject = ServerProc::start("meshcached", &server::subject_binary(), &extra, false);
    let around_kicks = |port: u16| {
        let names = stat_names(port).unwrap_or_else(|e| panic!("`stats`: {e}"));
        let at = names
            .iter()
            .position(|n| n == "auth_cmds")
            .expect("auth_cmds");
        names[at..at + 5].to_vec()
    };
    let want = around_kicks(reference.port);
    assert_eq!(
        want,
        [
            "auth_cmds",
            "auth_errors",
            "idle_kicks",
            "bytes_read",
            "bytes_written"
        ]
    );
    assert_eq!(around_kicks(subject.port), want);
    for port in [reference.port, subject.port] {
        let text = request(port, b"stats settings\r\n", b"END\r\n").expect("stats settings");
        assert!(text.contains("STAT idle_timeout 5\r\n"), "{text}");
    }
}
