//! The key-listing commands against a real memcached: `lru_crawler metadump` (every
//! answer whose text is deterministic, and the fields of each item's line that do not
//! depend on the implementation) and `stats cachedump`'s error and empty answers (its
//! listing differs on purpose: memcached shows only an LRU segment).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::server::{self, request, ServerProc};

/// Sends one command and reads its answer (every answer here ends with `\r\n` only on its
/// last line). memcached answers BUSY while its background crawler runs: asked again.
fn ask(port: u16, cmd: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = request(port, format!("{cmd}\r\n").as_bytes(), b"\r\n")
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        if !reply.starts_with("BUSY") || Instant::now() > end {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One item's comparable fields: exp is -1, fetch, cls, and flags when shown (1.6.45 and
/// meshcached show them, 1.6.18 does not).
type Fields = (bool, String, String, Option<String>);

/// A metadump's items by key; the other fields (times, CAS, internal size) differ between
/// implementations.
fn items(reply: &str) -> BTreeMap<String, Fields> {
    let body = reply
        .strip_suffix("END\r\n")
        .unwrap_or_else(|| panic!("no END: {reply:?}"));
    body.lines()
        .map(|line| {
            let fields: BTreeMap<&str, &str> =
                line.split(' ').filter_map(|f| f.split_once('=')).collect();
            (
                fields["key"].to_string(),
                (
                    fields["exp"] == "-1",
                    fields["fetch"].to_string(),
                    fields["cls"].to_string(),
                    fields.get("flags").map(|f| f.to_string()),
                ),
            )
        })
        .collect()
}

#[test]
fn metadump_and_cachedump() {
    let reference = ServerProc::start(
        "memcached",
        &server::reference_binary(),
        &[],
        server::running_as_root(),
    );
    let subject = ServerProc::start("meshcached", &server::subject_binary(), &[], false);
    let both = |cmd: &str| (ask(reference.port, cmd), ask(subject.port, cmd));
    let same = |cmd: &str| {
        let (want, got) = both(cmd);
        assert_eq!(got, want, "{cmd}");
    };
    same("lru_crawler metadump all");
    for cmd in [
        "lru_crawler metadump 0",
        "lru_crawler metadump 64",
        "lru_crawler metadump x",
        "lru_crawler metadump 1,x",
        "lru_crawler metadump",
        "stats cachedump",
        "stats cachedump 1",
        "stats cachedump x 0",
        "stats cachedump 64 0",
        "stats cachedump 2 0",
    ] {
        same(cmd);
    }
    for port in [reference.port, subject.port] {
        let setup = "set plain 0 0 1\r\nx\r\nset odd%key/:2 5 1000 2\r\nyy\r\nget plain\r\n";
        request(port, setup.as_bytes(), b"END\r\n").expect("setup");
    }
    for cmd in [
        "lru_crawler metadump all",
        "lru_crawler metadump hash",
        "lru_crawler metadump 1",
        "lru_crawler metadump 1,2",
    ] {
        let (want, got) = both(cmd);
        let (want, got) = (items(&want), items(&got));
        assert_eq!(want.len(), 2, "{cmd}: {want:?}");
        // 1.6.18 has no flags field; 1.6.45 and meshcached do.
        let comparable = |m: &BTreeMap<String, Fields>| {
            m.iter()
                .map(|(k, (e, f, c, _))| (k.clone(), (*e, f.clone(), c.clone())))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(comparable(&got), comparable(&want), "{cmd}");
        assert_eq!(got["odd%25key%2F%3A2"].3.as_deref(), Some("5"), "{cmd}");
    }
    same("lru_crawler metadump 2");
}
