//! Time, and the hybrid logical clock that stamps every write.
//!
//! Nothing else in the crate reads the system clock: the store, the sweeper and the protocol
//! layer are handed a [`Clock`], so tests can drive time by hand with [`ManualClock`].
//!
//! A [`Version`] is the HLC stamp of DESIGN.md section 1: 42 bits of milliseconds since
//! 2020-01-01, 12 logical bits, 10 bits of node id. It is also the item's CAS unique, which is
//! why `gets` on one node and `cas` on another can work once replication exists: the token names
//! one write cluster-wide.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds of 2020-01-01T00:00:00Z, the epoch of the physical part of a version.
pub const HLC_EPOCH_MS: u64 = 1_577_836_800_000;

const NODE_BITS: u32 = 10;
const LOGICAL_BITS: u32 = 12;
/// Largest node id that fits in a version.
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;

/// The one source of wall-clock time. Two implementations: the system clock and a manual one
/// for deterministic tests.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> u64;

    /// Whole seconds since the unix epoch, the unit of memcached expiry times.
    fn now_secs(&self) -> u32 {
        // u32 seconds last until 2106; memcached's own exptime field is 32 bits too.
        (self.now_ms() / 1000) as u32
    }
}

/// The operating system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            // A clock set before 1970 is treated as the epoch; versions then only advance
            // through their logical part, which stays correct, just less informative.
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        Self {
            ms: AtomicU64::new(start_ms),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_ms(&self, ms: u64) {
        self.ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }
}

/// A node's id inside the cluster, the low 10 bits of every version it stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(u16);

impl NodeId {
    /// Returns `None` when `id` does not fit in 10 bits.
    pub fn new(id: u16) -> Option<Self> {
        (id <= MAX_NODE_ID).then_some(Self(id))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// A write's version stamp and CAS unique. Totally ordered; 0 means "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Version(pub u64);

impl Version {
    pub const NONE: Version = Version(0);

    /// The lowest version stamped at unix millisecond `ms`: every write made before that
    /// millisecond is older. Used as the barrier of a delayed flush.
    pub fn at_unix_ms(ms: u64) -> Version {
        Version(ms.saturating_sub(HLC_EPOCH_MS) << (LOGICAL_BITS + NODE_BITS))
    }

    /// Milliseconds since [`HLC_EPOCH_MS`].
    pub fn physical_ms(self) -> u64 {
        self.0 >> (NODE_BITS + LOGICAL_BITS)
    }

    pub fn logical(self) -> u16 {
        ((self.0 >> NODE_BITS) & ((1 << LOGICAL_BITS) - 1)) as u16
    }

    pub fn node(self) -> NodeId {
        NodeId((self.0 & u64::from(MAX_NODE_ID)) as u16)
    }

    /// The clock part (physical and logical) without the node id.
    fn stamp(self) -> u64 {
        self.0 >> NODE_BITS
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a remote version was refused by [`Hlc::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("version {version} is {ahead_ms} ms ahead of local time (limit {limit_ms} ms)")]
pub struct ClockSkewError {
    pub version: Version,
    pub ahead_ms: u64,
    pub limit_ms: u64,
}

/// Hybrid logical clock: strictly increasing versions that follow wall time when it moves
/// forward and never go backwards when it does not.
///
/// The state is one atomic word holding `physical << 12 | logical`, so `tick` is a
/// compare-and-swap loop: `max(now << 12, last + 1)` is exactly "physical = max(now, last);
/// logical resets when physical advanced, else increments, carrying into physical on overflow".
pub struct Hlc {
    node: NodeId,
    last: AtomicU64,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hlc")
            .field("node", &self.node)
            .field(
                "last",
                &Version(self.last.load(Ordering::Relaxed) << NODE_BITS),
            )
            .finish()
    }
}

impl Hlc {
    pub fn new(node: NodeId, clock: Arc<dyn Clock>) -> Self {
        Self {
            node,
            last: AtomicU64::new(0),
            clock,
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn physical_now(&self) -> u64 {
        self.clock.now_ms().saturating_sub(HLC_EPOCH_MS)
    }

    /// A new version, strictly greater than every version this clock has issued or observed.
    pub fn tick(&self) -> Version {
        let now = self.physical_now() << LOGICAL_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Version((next << NODE_BITS) | u64::from(self.node.0)),
                Err(seen) => last = seen,
            }
        }
    }

    /// Moves the clock up to a version received from a peer, so that later local writes are
    /// newer than it. A version more than `max_skew` ahead of local wall time is refused and
    /// leaves the clock untouched.
    pub fn observe(&self, remote: Version, max_skew: Duration) -> Result<(), ClockSkewError> {
        let now_ms = self.physical_now();
        let limit_ms = max_skew.as_millis() as u64;
        let ahead_ms = remote.physical_ms().saturating_sub(now_ms);
        if ahead_ms > limit_ms {
            return Err(ClockSkewError {
                version: remote,
                ahead_ms,
                limit_ms,
            });
        }
        self.last.fetch_max(remote.stamp(), Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn manual(ms: u64) -> (Arc<ManualClock>, Hlc) {
        let clock = Arc::new(ManualClock::new(ms));
        let hlc = Hlc::new(NodeId::new(7).unwrap(), clock.clone());
        (clock, hlc)
    }

    #[test]
    fn layout_round_trips() {
        let (_, hlc) = manual(HLC_EPOCH_MS + 12_345);
        let v = hlc.tick();
        assert_eq!(v.physical_ms(), 12_345);
        assert_eq!(v.logical(), 0);
        assert_eq!(v.node().get(), 7);
        let w = hlc.tick();
        assert_eq!(w.physical_ms(), 12_345);
        assert_eq!(w.logical(), 1);
    }

    #[test]
    fn logical_overflow_carries_into_physical() {
        let (_, hlc) = manual(HLC_EPOCH_MS + 10);
        let mut prev = hlc.tick();
        for _ in 0..5000 {
            let v = hlc.tick();
            assert!(v > prev);
            prev = v;
        }
        assert_eq!(prev.physical_ms(), 11);
    }

    #[test]
    fn clock_going_backwards_does_not_go_back() {
        let (clock, hlc) = manual(HLC_EPOCH_MS + 1_000_000);
        let a = hlc.tick();
        clock.set_ms(HLC_EPOCH_MS + 5);
        let b = hlc.tick();
        assert!(b > a);
    }

    #[test]
    fn observe_moves_forward_and_refuses_skew() {
        let (_, hlc) = manual(HLC_EPOCH_MS + 1_000);
        let remote = Version(((2_000u64 << LOGICAL_BITS) | 3) << NODE_BITS | 1);
        hlc.observe(remote, Duration::from_secs(5)).unwrap();
        assert!(hlc.tick() > remote);
        let far = Version((1_000_000u64 << (LOGICAL_BITS + NODE_BITS)) | 1);
        let err = hlc.observe(far, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.limit_ms, 5_000);
        assert!(hlc.tick() < far);
    }

    #[test]
    fn node_id_bounds() {
        assert!(NodeId::new(1023).is_some());
        assert!(NodeId::new(1024).is_none());
    }

    proptest! {
        #[test]
        fn tick_strictly_monotonic(steps in proptest::collection::vec((0i64..3000, 0u8..4), 1..200)) {
            let (clock, hlc) = manual(HLC_EPOCH_MS + 1_000_000);
            let mut prev = Version::NONE;
            for (delta, ticks) in steps {
                // Time may jump forwards or backwards.
                let now = clock.now_ms() as i64 + delta - 1500;
                clock.set_ms(now.max(0) as u64);
                for _ in 0..=ticks {
                    let v = hlc.tick();
                    prop_assert!(v > prev);
                    prop_assert_eq!(v.node().get(), 7);
                    prev = v;
                }
            }
        }
    }
}
