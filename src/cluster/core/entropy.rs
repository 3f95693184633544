//! Anti-entropy in the core (DESIGN.md section 6): repairs what the live stream missed
//! (a write in flight when its origin died, a write dropped or refused on the way, a gap)
//! by comparing the stores' bucket digests ([`crate::store::digest`]) with each peer.
//!
//! Each node repairs *itself* from each peer, on that peer's link, one round at a time:
//!
//! ```text
//!   DigestRequest ──►  ◄── Digest (every bucket, and the peer's flushes: merged)
//!   buckets that differ now and differed at the previous comparison too
//!   KeysRequest (a few of them) ──►  ◄── Keys (key, version) of each, listed whole
//!   keys whose version this node would take (the merge's own rule, fences included)
//!   RepairRequest ──►  ◄── Repair (entries with their original versions and origins)
//! ```
//!
//! Pulling, not pushing, is what keeps repair from fighting memory pressure: only the node
//! that would take a version asks for it, and it asks only for what its own merge would
//! accept ([`crate::store::Store::would_take`]): a key it evicted, or whose tombstone it
//! collected, is fenced, so it is not asked for again (a small node is never refilled),
//! and an older value never beats a tombstone (no delete is resurrected). The peer pulls
//! what this node has newer on its own rounds.
//!
//! Writes in flight are not repaired: a bucket must differ at two comparisons in a row,
//! and a key is asked for only once its version is older than [`Entropy::settle_ms`].
//! A bucket found to need nothing (the differences are keys one side forgot, or entries
//! this side has newer) is remembered with both digests and not listed again until
//! either changes, so a node under memory pressure does not list the same buckets every
//! round. Each round lists at most [`BUCKETS_PER_ROUND`] buckets and asks for at most
//! [`crate::replication::frame::MAX_REPAIR_KEYS`] keys; the peer answers within
//! [`LIST_BYTES`] and [`REPAIR_BYTES`]: a large divergence is repaired over several
//! rounds, [`BUSY_MS`] apart while there is work (the buckets still differing were
//! suspect at the comparison before, so each round confirms them at once).
//!
//! No round starts while this node is syncing or receiving any snapshot (its store is
//! then incomplete by design); after a resync every link compares soon.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;

use bytes::Bytes;

use super::{LinkId, PeerError, Replica};
use crate::clock::{Version, HLC_EPOCH_MS};
use crate::cluster::counters::{EntropyCounters, PeerCounters};
use crate::cluster::sync::Phase;
use crate::replication::apply::{apply_flush_state, apply_mutations};
use crate::replication::frame::{BucketList, Digest, Frame, MAX_LIST_BUCKETS, MAX_REPAIR_KEYS};
use crate::replication::log::{Mutation, Op};
use crate::store::BUCKETS;

/// Buckets listed per round (of the [`BUCKETS`]): bounds a round's lists to about this
/// many thousandths of the store.
pub const BUCKETS_PER_ROUND: usize = MAX_LIST_BUCKETS;
/// Between rounds while a repair is under way: with the bounds above, at most about
/// 1.3 MB per round, so about 6.5 MB/s per peer at the most, and a store that differs
/// in every bucket is gone through in 16 rounds, about 3 s.
pub const BUSY_MS: u64 = 200;
/// About the most bytes of one keys answer: buckets that do not fit wait for a later round.
pub const LIST_BYTES: usize = 256 << 10;
/// About the most bytes of values in one repair answer (at least one entry is sent, so
/// one value of any size gets through).
pub const REPAIR_BYTES: usize = 1 << 20;
/// The most answers a peer may have us owe it: it waits for each before asking again.
const ANSWERS_OWED: usize = 4;

/// Timing of the rounds.
#[derive(Debug, Clone, Copy)]
pub struct Entropy {
    /// Between rounds when nothing differs (0: anti-entropy off).
    pub period_ms: u64,
    /// Before the comparison that confirms a difference, and between rounds while
    /// differences remain; also how old a version must be before it is asked for.
    pub confirm_ms: u64,
}

impl Entropy {
    /// A period and the confirmation delay that goes with it (a fifth of it).
    pub fn every(period_ms: u64) -> Entropy {
        Entropy {
            period_ms,
            confirm_ms: period_ms / 5,
        }
    }

    fn settle_ms(&self) -> u64 {
        self.confirm_ms
    }
}

/// Where this node's round with one peer stands.
#[derive(Debug, Default)]
enum Step {
    #[default]
    Idle,
    Digest,
    /// The buckets asked for, with both digests as compared.
    Keys(HashMap<u16, (u64, u64)>),
    Repair(HashSet<Bytes>),
}

/// One link's anti-entropy state.
#[derive(Debug, Default)]
pub(super) struct PeerEntropy {
    /// The peer's hello says it takes part.
    pub enabled: bool,
    next_ms: u64,
    token: u64,
    step: Step,
    /// Buckets that differed at the last comparison.
    suspect: HashSet<u16>,
    /// Buckets found to need nothing, with both digests then.
    quiet: HashMap<u16, (u64, u64)>,
    /// Where the next pick of buckets starts, so that every differing bucket gets a turn.
    rotate: usize,
    /// Answers owed to the peer.
    pub owed: std::collections::VecDeque<Frame>,
}

impl PeerEntropy {
    pub fn new(enabled: bool, first_ms: u64) -> PeerEntropy {
        PeerEntropy {
            enabled,
            next_ms: first_ms,
            ..PeerEntropy::default()
        }
    }
}

impl Replica {
    /// Whether this node may compare its store with peers': it holds what it should
    /// (initial sync done) and no snapshot is arriving.
    fn may_compare(&self) -> bool {
        self.entropy.period_ms > 0
            && self.plan.phase() == Phase::Ready
            && self.sessions.values().all(|s| s.incoming.is_none())
    }

    /// Starts the rounds that are due (called from [`Replica::tick`]).
    pub(super) fn entropy_tick(&mut self, now_ms: u64) {
        if !self.may_compare() {
            return;
        }
        let links: Vec<LinkId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.ae.enabled && matches!(s.ae.step, Step::Idle))
            .filter(|(_, s)| now_ms >= s.ae.next_ms)
            .map(|(l, _)| *l)
            .collect();
        for link in links {
            let token = self.next_token();
            let s = self.sessions.get_mut(&link).expect("listed above");
            s.ae.token = token;
            s.ae.step = Step::Digest;
            s.ae.owed.push_back(Frame::DigestRequest { token });
            let c = s.counters.clone();
            self.count_ae(&c, |c| &c.rounds, 1);
            self.wake = true;
        }
    }

    /// Every link compares soon (a resync just ended here).
    pub(super) fn entropy_soon(&mut self, now_ms: u64) {
        let at = now_ms + self.entropy.confirm_ms;
        for s in self.sessions.values_mut() {
            s.ae.next_ms = s.ae.next_ms.min(at);
        }
    }

    fn next_token(&mut self) -> u64 {
        self.ae_tokens += 1;
        self.ae_tokens
    }

    fn count_ae(&self, peer: &PeerCounters, field: fn(&EntropyCounters) -> &AtomicU64, n: u64) {
        peer.entropy.add(field, n);
        self.counters.entropy.add(field, n);
    }

    /// An anti-entropy frame from the peer on `link` (`handle_live` routes them here).
    pub(super) fn handle_entropy(
        &mut self,
        link: LinkId,
        frame: Frame,
        now_ms: u64,
    ) -> Result<(), PeerError> {
        let Some(s) = self.sessions.get(&link) else {
            return Ok(());
        };
        let c = s.counters.clone();
        self.count_ae(&c, |c| &c.bytes, wire_len(&frame) as u64);
        let now = (now_ms / 1000) as u32;
        let answer = match frame {
            Frame::DigestRequest { token } => Some(Frame::Digest(Digest {
                token,
                flush: self.store.flush_state(now),
                buckets: self.store.digest(),
            })),
            Frame::KeysRequest { token, buckets } => Some(Frame::Keys {
                token,
                lists: self.list(&buckets),
            }),
            Frame::RepairRequest { token, keys } => {
                let items = self.entries(&keys, now);
                self.count_ae(&c, |c| &c.keys_sent, items.len() as u64);
                Some(Frame::Repair { token, items })
            }
            Frame::Digest(d) => {
                self.expect(link, d.token, |s| matches!(s, Step::Digest))?;
                self.compared(link, d, now_ms);
                None
            }
            Frame::Keys { token, lists } => {
                self.expect(link, token, |s| matches!(s, Step::Keys(_)))?;
                self.listed(link, lists, now_ms)?;
                None
            }
            Frame::Repair { token, items } => {
                self.expect(link, token, |s| matches!(s, Step::Repair(_)))?;
                self.repaired(link, items, now_ms)?;
                None
            }
            _ => None,
        };
        if let Some(f) = answer {
            let s = self.sessions.get_mut(&link).expect("looked up above");
            if s.ae.owed.len() >= ANSWERS_OWED {
                return Err(PeerError::Protocol(
                    "the peer asks for anti-entropy answers faster than they are sent".into(),
                ));
            }
            s.ae.owed.push_back(f);
        }
        Ok(())
    }

    /// The next anti-entropy frame to send on `link`, if any (its bytes counted).
    pub(super) fn poll_entropy(&mut self, link: LinkId) -> Option<Frame> {
        let s = self.sessions.get_mut(&link)?;
        let f = s.ae.owed.pop_front()?;
        let c = s.counters.clone();
        self.count_ae(&c, |c| &c.bytes, wire_len(&f) as u64);
        Some(f)
    }

    /// Checks that an answer is the one our round waits for.
    fn expect(&self, link: LinkId, token: u64, step: fn(&Step) -> bool) -> Result<(), PeerError> {
        let s = &self.sessions[&link];
        if s.ae.token != token || !step(&s.ae.step) {
            return Err(PeerError::Protocol(format!(
                "an anti-entropy answer (token {token}) that nothing asked for"
            )));
        }
        Ok(())
    }

    /// The peer's digests arrived: takes its flushes, and asks for the lists of the
    /// buckets that differ for the second time in a row.
    fn compared(&mut self, link: LinkId, d: Digest, now_ms: u64) {
        let now = (now_ms / 1000) as u32;
        let flushes = apply_flush_state(&self.store, &self.hlc, &d.flush, self.max_skew, now);
        self.counters.add(&flushes);
        let mine = self.store.digest();
        let (confirm, period) = (self.entropy.confirm_ms, self.entropy.period_ms);
        let s = self.sessions.get_mut(&link).expect("the caller checked");
        let ae = &mut s.ae;
        let differ: HashSet<u16> = (0..BUCKETS)
            .filter(|&b| mine[b] != d.buckets[b])
            .filter(|&b| ae.quiet.get(&(b as u16)) != Some(&(mine[b], d.buckets[b])))
            .map(|b| b as u16)
            .collect();
        ae.quiet
            .retain(|&b, _| mine[usize::from(b)] != d.buckets[usize::from(b)]);
        let mut confirmed: Vec<u16> = differ.intersection(&ae.suspect).copied().collect();
        confirmed.sort_unstable();
        let n = differ.len() as u64;
        ae.suspect = differ;
        let pick: HashMap<u16, (u64, u64)> = pick(&confirmed, &mut ae.rotate)
            .into_iter()
            .map(|b| (b, (mine[usize::from(b)], d.buckets[usize::from(b)])))
            .collect();
        if pick.is_empty() {
            ae.step = Step::Idle;
            ae.next_ms = now_ms
                + if ae.suspect.is_empty() {
                    period
                } else {
                    confirm
                };
        } else {
            let mut buckets: Vec<u16> = pick.keys().copied().collect();
            buckets.sort_unstable();
            ae.owed.push_back(Frame::KeysRequest {
                token: ae.token,
                buckets,
            });
            ae.step = Step::Keys(pick);
        }
        let c = s.counters.clone();
        self.count_ae(&c, |c| &c.buckets_differing, n);
        self.wake = true;
    }

    /// The peer's lists arrived: asks for the keys whose version this node would take.
    fn listed(
        &mut self,
        link: LinkId,
        lists: Vec<BucketList>,
        now_ms: u64,
    ) -> Result<(), PeerError> {
        let now = (now_ms / 1000) as u32;
        let settled =
            |v: Version| v.physical_ms() + HLC_EPOCH_MS + self.entropy.settle_ms() <= now_ms;
        let s = &self.sessions[&link];
        let Step::Keys(asked) = &s.ae.step else {
            unreachable!("checked by expect");
        };
        let mut want: Vec<Bytes> = Vec::new();
        let mut quiet = Vec::new();
        let mut seen = HashSet::new();
        for (bucket, entries) in lists {
            let Some(digests) = asked.get(&bucket).filter(|_| seen.insert(bucket)) else {
                return Err(PeerError::Protocol(format!(
                    "a list of bucket {bucket}, which was not asked for (or twice)"
                )));
            };
            let mut needs = false;
            for (key, version) in entries {
                if !self.store.would_take(&key, version, now) {
                    continue;
                }
                needs = true;
                if settled(version) && want.len() < MAX_REPAIR_KEYS {
                    want.push(key);
                }
            }
            if !needs {
                quiet.push((bucket, *digests));
            }
        }
        let s = self.sessions.get_mut(&link).expect("looked up above");
        s.ae.quiet.extend(quiet);
        if want.is_empty() {
            s.ae.step = Step::Idle;
            s.ae.next_ms = now_ms + BUSY_MS;
        } else {
            s.ae.owed.push_back(Frame::RepairRequest {
                token: s.ae.token,
                keys: want.clone(),
            });
            s.ae.step = Step::Repair(want.into_iter().collect());
        }
        self.wake = true;
        Ok(())
    }

    /// The peer's entries arrived: merged like any replicated write (fences, tombstones
    /// and flushes refuse what is older); one refused by the clock-skew guard is left for
    /// a later round.
    fn repaired(
        &mut self,
        link: LinkId,
        items: Vec<Mutation>,
        now_ms: u64,
    ) -> Result<(), PeerError> {
        let s = &self.sessions[&link];
        let Step::Repair(asked) = &s.ae.step else {
            unreachable!("checked by expect");
        };
        if let Some(m) = items.iter().find(|m| !asked.contains(&m.key)) {
            return Err(PeerError::Protocol(format!(
                "a repair of key {:?}, which was not asked for",
                String::from_utf8_lossy(&m.key)
            )));
        }
        let now = (now_ms / 1000) as u32;
        let mut rest = &items[..];
        let mut accepted = 0;
        while !rest.is_empty() {
            let (stats, done) = apply_mutations(&self.store, &self.hlc, rest, self.max_skew, now);
            self.counters.add(&stats);
            accepted += stats.accepted;
            rest = &rest[(done + 1).min(rest.len())..];
        }
        let s = self.sessions.get_mut(&link).expect("looked up above");
        s.ae.step = Step::Idle;
        s.ae.next_ms = now_ms + BUSY_MS;
        let (c, peer) = (s.counters.clone(), s.peer.clone());
        self.count_ae(&c, |c| &c.keys_received, accepted);
        if accepted > 0 {
            tracing::info!(node = %self.name, %peer, keys = accepted, "anti-entropy repaired keys the live stream had missed");
        }
        self.wake = true;
        Ok(())
    }

    /// What this node holds in `buckets`, listed whole, within [`LIST_BYTES`]: buckets
    /// that would go over it are left out (the peer asks again on a later round).
    fn list(&self, buckets: &[u16]) -> Vec<BucketList> {
        // Where each asked bucket's list is (buckets are below BUCKETS: checked on decode).
        let mut order = vec![usize::MAX; BUCKETS];
        let mut wanted = [false; BUCKETS];
        for (i, b) in buckets.iter().enumerate() {
            order[usize::from(*b)] = i;
            wanted[usize::from(*b)] = true;
        }
        let mut lists: Vec<BucketList> = buckets.iter().map(|b| (*b, Vec::new())).collect();
        let mut sizes = vec![0usize; buckets.len()];
        let mut active = buckets.len();
        self.store.list_buckets(&wanted, |b, key, version| {
            let i = order[b];
            if i >= active {
                return true;
            }
            sizes[i] += key.len() + 9;
            lists[i].1.push((Bytes::copy_from_slice(key), version));
            // Over the bound: the last bucket still listed goes (one is always kept).
            while active > 1 && sizes[..active].iter().sum::<usize>() > LIST_BYTES {
                active -= 1;
                lists[active].1 = Vec::new();
                sizes[active] = 0;
            }
            true
        });
        lists.truncate(active);
        lists
    }

    /// This node's entries of `keys`, with their versions, within [`REPAIR_BYTES`].
    fn entries(&self, keys: &[Bytes], now: u32) -> Vec<Mutation> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for key in keys {
            if bytes >= REPAIR_BYTES {
                break;
            }
            let entry = self.store.entry(key, now, |e| {
                let op = match e.value {
                    Some(v) => Op::Put {
                        value: Bytes::copy_from_slice(v),
                        flags: e.flags,
                        exptime: e.exptime,
                    },
                    None => Op::Delete,
                };
                Mutation {
                    key: key.clone(),
                    version: e.version,
                    op,
                }
            });
            if let Some(m) = entry {
                bytes += m.cost();
                out.push(m);
            }
        }
        out
    }
}

/// Up to [`BUCKETS_PER_ROUND`] of the `confirmed` buckets (sorted), starting where the
/// last pick stopped.
fn pick(confirmed: &[u16], rotate: &mut usize) -> Vec<u16> {
    let n = confirmed.len();
    if n == 0 {
        return Vec::new();
    }
    let start = confirmed.partition_point(|&b| usize::from(b) < *rotate) % n;
    let take = n.min(BUCKETS_PER_ROUND.min(MAX_LIST_BUCKETS));
    let picked: Vec<u16> = (0..take).map(|i| confirmed[(start + i) % n]).collect();
    *rotate = usize::from(*picked.last().expect("take > 0")) + 1;
    picked
}

/// The encoded length of an anti-entropy frame (for the byte counters).
fn wire_len(f: &Frame) -> usize {
    crate::replication::frame::wire_len(f)
}
