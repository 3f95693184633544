//! One simulated node: a real replica core, store, HLC and dispatcher, on a manual clock
//! the world sets (with this node's skew), wired as the server wires them (the store's
//! journal feeds the core's outbox).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use meshcached::clock::{Hlc, ManualClock, NodeId};
use meshcached::cluster::core::{Entropy, Replica, ReplicaConfig};
use meshcached::config::Config;
use meshcached::protocol::stream::ClientDecoder;
use meshcached::replication::log::RunId;
use meshcached::server::dispatch::{self, Ctx};
use meshcached::server::state_file::StateFile;
use meshcached::server::stats::LocalCounters;
use meshcached::server::Shared;
use meshcached::store::{Store, StoreConfig};

pub const TOMBSTONE_TTL_S: u32 = 4;
pub const MAX_SKEW: Duration = Duration::from_secs(5);
/// Anti-entropy's period: well within the tombstone TTL, as in production (10 s against
/// hours), so that a delete the stream missed is repaired before its tombstone may go.
pub const AE_PERIOD_MS: u64 = 1000;
/// `--remove-down-after`'s default (72 h): no schedule lasts long enough to reach it.
pub const REMOVE_DOWN_AFTER_MS: u64 = 72 * 3600 * 1000;

/// How a node is set up, fixed for the whole schedule.
#[derive(Debug, Clone)]
pub struct Setup {
    pub name: String,
    pub node_id: u16,
    pub addr: std::net::SocketAddr,
    pub seeds: Vec<String>,
    pub mem_limit: usize,
    pub skew_ms: i64,
    pub state_file: Option<PathBuf>,
}

pub struct Node {
    pub setup: Setup,
    pub clock: Arc<ManualClock>,
    pub replica: Replica,
    pub shared: Shared,
    /// The run (counted from 0 per node slot).
    pub run: u32,
    /// Whether the client port is open (the core said ready).
    pub opened: bool,
}

impl Node {
    /// Starts a run of the node at world time `now_ms`; with `load_state`, from its state
    /// file when it has one.
    pub fn start(setup: &Setup, run: u32, now_ms: u64, seed: u64, load_state: bool) -> Node {
        let clock = Arc::new(ManualClock::new(skewed(now_ms, setup.skew_ms)));
        let node_id = NodeId::new(setup.node_id).expect("ids fit");
        let hlc = Arc::new(Hlc::new(node_id, clock.clone()));
        let store = Arc::new(Store::with_hash_seed(
            StoreConfig {
                mem_limit: setup.mem_limit,
                max_item_size: 4096,
                evict: true,
                cas_enabled: true,
                shards: 4,
                tombstone_ttl: TOMBSTONE_TTL_S,
                tombstone_mem: Some(64 << 10),
            },
            seed,
        ));
        let positions = match (&setup.state_file, load_state) {
            (Some(path), true) => {
                let file = state_file(setup, path);
                let positions = file.load(&store, &hlc);
                // As the server does before it serves (a failure there stops it).
                if positions.is_some() {
                    file.invalidate().expect("remove the loaded state file");
                }
                positions
            }
            _ => None,
        };
        let cfg = ReplicaConfig {
            name: setup.name.clone(),
            node_id,
            seeds: setup.seeds.clone(),
            max_skew: MAX_SKEW,
            tombstone_ttl_ms: u64::from(TOMBSTONE_TTL_S) * 1000,
            join_timeout_ms: 10_000,
            repl_backlog: 16 << 10,
            entropy: Entropy::every(ae_period_ms()),
            remove_down_after_ms: REMOVE_DOWN_AFTER_MS,
        };
        let run_id = RunId(seed | 1);
        let replica = Replica::new(&cfg, store.clone(), hlc.clone(), positions, run_id, seed);
        let outbox = replica.outbox().clone();
        let journal_outbox = outbox.clone();
        let hooked = store.set_journal(Box::new(move |key, change| {
            journal_outbox.record_change(key, change)
        }));
        assert!(hooked.is_ok(), "a fresh store has no journal");
        let config = Config {
            mem_limit: setup.mem_limit,
            max_item_size: 4096,
            ..Config::default()
        };
        let shared = Shared::embedded(config, store, hlc, Some(outbox));
        let opened = replica.opened();
        Node {
            setup: setup.clone(),
            clock,
            replica,
            shared,
            run,
            opened,
        }
    }

    /// This node's wall clock at world time `world_ms`.
    pub fn set_time(&self, world_ms: u64) {
        self.clock.set_ms(skewed(world_ms, self.setup.skew_ms));
    }

    pub fn now_ms(&self) -> u64 {
        use meshcached::clock::Clock;
        self.clock.now_ms()
    }

    /// Runs one client request (text or meta) and returns the answer.
    pub fn client(&self, request: &[u8]) -> String {
        let mut decoder = ClientDecoder::new(4096);
        let mut buf = BytesMut::from(request);
        let mut out = BytesMut::new();
        let mut counters = LocalCounters::default();
        let now = (self.now_ms() / 1000) as u32;
        while let Ok(Some(req)) = decoder.decode(&mut buf) {
            let mut ctx = Ctx {
                shared: &self.shared,
                now,
                counters: &mut counters,
            };
            let _ = dispatch::execute(&mut ctx, req, &mut out);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// [`AE_PERIOD_MS`], or `MESHCACHED_SIM_AE_PERIOD_MS` (0 turns anti-entropy off: to see
/// which schedules need it).
fn ae_period_ms() -> u64 {
    std::env::var("MESHCACHED_SIM_AE_PERIOD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(AE_PERIOD_MS)
}

pub fn state_file(setup: &Setup, path: &std::path::Path) -> StateFile {
    StateFile {
        path: path.to_path_buf(),
        cluster_id: 7,
        node_name: setup.name.clone(),
        tombstone_ttl: TOMBSTONE_TTL_S,
    }
}

fn skewed(world_ms: u64, skew_ms: i64) -> u64 {
    world_ms.saturating_add_signed(skew_ms)
}
