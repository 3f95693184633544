//! The operations layer driven the way clients drive it: requests decoded from bytes and
//! run through the dispatchers, on nodes built in this process (standalone, or replicated
//! with an outbox no peer reads) that share a manual clock.

mod drift;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use crate::clock::{Hlc, ManualClock, NodeId, Version};
use crate::cluster::outbox::Outbox;
use crate::config::Config;
use crate::protocol::stream::ClientDecoder;
use crate::replication::log::RunId;
use crate::server::dispatch::{self, Ctx};
use crate::server::stats::LocalCounters;
use crate::server::Shared;
use crate::store::{Store, StoreConfig};

const START_MS: u64 = 1_800_000_000_000;

/// The kinds of node whose rules differ (DESIGN.md section 2, and memcached's `-C`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Standalone,
    Replicated,
    /// Standalone with `-C`: no CAS is shown or can be asked for.
    NoCas,
}

/// An item as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    value: Vec<u8>,
    flags: u32,
    exptime: u32,
    bits: u8,
    version: Version,
}

struct Node {
    shared: Shared,
    clock: Arc<ManualClock>,
}

impl Node {
    fn new(flavour: Flavour, clock: Arc<ManualClock>) -> Node {
        let replicated = flavour == Flavour::Replicated;
        let cas_enabled = flavour != Flavour::NoCas;
        let store = Arc::new(Store::new(StoreConfig {
            cas_enabled,
            shards: 4,
            tombstone_ttl: if replicated { 600 } else { 0 },
            ..StoreConfig::default()
        }));
        let node = NodeId::new(1).expect("1 fits in 10 bits");
        let hlc = Arc::new(Hlc::new(node, clock.clone()));
        let outbox = replicated.then(|| Arc::new(Outbox::new(RunId(1), 1 << 20)));
        let config = Config {
            cas_enabled,
            ..Config::default()
        };
        Node {
            shared: Shared::embedded(config, store, hlc, outbox),
            clock,
        }
    }

    fn now(&self) -> u32 {
        use crate::clock::Clock;
        (self.clock.now_ms() / 1000) as u32
    }

    /// Runs the requests in `wire` on a fresh connection (its first byte picks the
    /// dialect) and returns everything answered.
    fn send(&self, wire: &[u8]) -> Vec<u8> {
        let mut decoder = ClientDecoder::new(1 << 20);
        let mut buf = BytesMut::from(wire);
        let mut out = BytesMut::new();
        let mut counters = LocalCounters::default();
        while let Ok(Some(req)) = decoder.decode(&mut buf) {
            let mut ctx = Ctx {
                shared: &self.shared,
                now: self.now(),
                counters: &mut counters,
            };
            let _ = dispatch::execute(&mut ctx, req, &mut out);
        }
        out.to_vec()
    }

    fn text(&self, wire: &str) -> String {
        String::from_utf8_lossy(&self.send(wire.as_bytes())).into_owned()
    }

    /// The item held for `key`, read without counting an access.
    fn held(&self, key: &str) -> Option<Held> {
        let store = &self.shared.store;
        store.read(key.as_bytes(), self.now(), false, |item| {
            item.map(|i| Held {
                value: i.value.to_vec(),
                flags: i.flags,
                exptime: i.exptime,
                bits: i.bits,
                version: i.version,
            })
        })
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }
}

/// Meta flags whose effect could not replicate are refused on a replicated node, for every
/// command that has them, and change nothing: `E` (a client's CAS could break the version
/// order) and `I` (the stale mark does not travel with an item).
#[test]
fn meta_flags_that_cannot_replicate_are_refused() {
    let node = Node::new(Flavour::Replicated, Arc::new(ManualClock::new(START_MS)));
    assert_eq!(node.text("set k 0 0 2\r\nv1\r\n"), "STORED\r\n");
    assert_eq!(node.text("set n 0 0 1\r\n5\r\n"), "STORED\r\n");
    let (k, n) = (node.held("k"), node.held("n"));
    for (req, flag) in [
        ("ms k 2 E12345\r\nv2\r\n", 'E'),
        ("ms k 2 MA E12345\r\nv2\r\n", 'E'),
        ("ms k 2 I\r\nv2\r\n", 'I'),
        ("ms k 2 I C1\r\nv2\r\n", 'I'),
        ("md k I\r\n", 'I'),
        ("md k x I\r\n", 'I'),
        ("md k E99\r\n", 'E'),
        ("md k x E99\r\n", 'E'),
        ("mg k T30 E99\r\n", 'E'),
        ("mg new N30 E99\r\n", 'E'),
        ("ma n E99\r\n", 'E'),
        ("ma new N0 E99\r\n", 'E'),
    ] {
        assert_eq!(
            node.text(req),
            format!("CLIENT_ERROR {flag} flag not allowed on a replicated node\r\n"),
            "{req:?}"
        );
    }
    assert_eq!(node.held("k"), k, "k unchanged");
    assert_eq!(node.held("n"), n, "n unchanged");
    assert_eq!(node.held("new"), None, "nothing created");
    // The same commands without those flags are served.
    assert_eq!(node.text("md k x\r\nma n\r\n"), "HD\r\nHD\r\n");
}
