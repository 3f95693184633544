//! Membership: which nodes are alive, suspected, down or gone, decided by SWIM (the
//! `foca` crate) rather than by whether a QUIC connection happens to be open.
//!
//! A connection says only "I can reach that peer now"; SWIM adds the cluster's opinion:
//! each period a node probes one member directly, and if the answer is late asks a few
//! others to probe it for it (indirect probes), so that one bad path does not condemn a
//! live node. An unanswered member is *suspected*, given time to refute, then declared
//! *down*, and the verdict spreads by piggybacking on the probes. A node that stops on
//! purpose says so first (`leave`), and is then *left*, not down, everywhere. With two
//! nodes there is nobody to probe through: detection is the direct probe alone, which is
//! what the connection's own idle timeout already gives; SWIM then adds the suspicion
//! grace period and the left/down distinction, not better detection.
//!
//! Sans-IO like the rest of the cluster core: [`Membership`] takes datagrams and the time
//! and hands back datagrams to send (to a member *name*: the shell owns the connections),
//! the next timer, and [`MemberEvent`]s; it never reads a clock. Its timers live in one
//! ordered queue ([`runtime::TimerQueue`]). The simulator in [`sim`] runs many of them
//! with virtual time, loss and partitions.

pub mod codec;
pub mod identity;
pub mod runtime;
pub mod sim;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::time::Duration;

use bytes::Bytes;
use foca::{Foca, NoCustomBroadcast, State};
use rand::rngs::SmallRng;
use rand::SeedableRng;

pub use codec::{CodecError, KnownNames, LeftLog, WireCodec, MAX_GOSSIP_MEMBERS};
pub use identity::MemberId;
use runtime::Effects;

/// The largest gossip datagram: below what any QUIC path carries (1200-byte packets minus
/// QUIC's own overhead), so every peer can receive what every other sends.
pub const MAX_GOSSIP_PACKET: usize = 1024;
/// The fewest times an update is passed on (see [`config_for`]).
const MIN_TRANSMISSIONS: NonZeroU8 = NonZeroU8::new(10).expect("10 is not zero");
/// How often a node that knows no live member announces itself to its seeds again.
pub const REANNOUNCE_MS: u64 = 2_000;
/// How often a node tells members it believes down that it exists (heals partitions).
pub const ANNOUNCE_TO_DOWN_MS: u64 = 10_000;

/// A member's state as the node acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    Suspect,
    Down,
    /// Down because it said it was leaving.
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// The member's state changed to `verdict`.
    Verdict { id: MemberId, verdict: Verdict },
    /// A new run of a member replaced the one known (it restarted, or rejoined after a
    /// false "down"): for the sync planner, the same thing as a restart.
    Renamed { old: MemberId, new: MemberId },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    /// Nothing changed: the datagram was dropped.
    #[error("gossip from {claimed} arrived on the connection of {conn}")]
    Spoofed { claimed: String, conn: String },
    /// Nothing changed: the datagram was dropped.
    #[error("undecodable gossip: {0}")]
    Undecodable(#[from] CodecError),
    /// foca refused the datagram or the call; its state may have changed in part.
    #[error("membership: {0}")]
    Foca(String),
}

/// Counters for `stats` and the benchmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MembershipCounters {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    /// Datagrams whose sender was not the connection's certificate name.
    pub spoofed: u64,
    pub undecodable: u64,
    pub refused: u64,
}

/// foca's configuration for a cluster of `members` nodes (this one included): its LAN
/// preset (memberlist's), which scales the suspicion time and the number of times an update
/// is retransmitted with the logarithm of the member count, with our packet bound and a
/// faster announce to down members.
pub fn config_for(members: usize) -> foca::Config {
    let n = NonZeroU32::new(u32::try_from(members.max(1)).unwrap_or(u32::MAX))
        .unwrap_or(NonZeroU32::MIN);
    let mut c = foca::Config::new_lan(n);
    c.max_packet_size = NonZeroUsize::new(MAX_GOSSIP_PACKET).unwrap_or(NonZeroUsize::MIN);
    // The preset sends an update 4 log10(n + 1) times: twice for 3 members, where a
    // suspicion or its refutation then fails to arrive often enough under 5 % loss to
    // declare live members down (hundreds of times in two simulated hours; see
    // benches/README.md). Small clusters can afford more: the floor costs bytes, not time.
    c.max_transmissions = c.max_transmissions.max(MIN_TRANSMISSIONS);
    if let Some(p) = c.periodic_announce_to_down_members.as_mut() {
        p.frequency = Duration::from_millis(ANNOUNCE_TO_DOWN_MS);
    }
    c
}

/// The longest a killed member of a `members`-node cluster takes to be declared down by
/// everyone: probed within two rounds of the member list (foca shuffles each round), one
/// period to fail, the suspicion time, and two periods to spread.
pub fn detection_bound(members: usize) -> Duration {
    let c = config_for(members);
    let rounds = 2 * members.saturating_sub(1) as u32 + 3;
    c.probe_period * rounds + c.suspect_to_down_after
}

type Swim = Foca<MemberId, WireCodec, SmallRng, NoCustomBroadcast>;

pub struct Membership {
    foca: Swim,
    fx: Effects,
    left: LeftLog,
    /// The names foca holds, which bound what its codec takes in.
    names: KnownNames,
    seeds: Vec<String>,
    /// What was last reported per member name.
    view: BTreeMap<String, (MemberId, Verdict)>,
    events: VecDeque<MemberEvent>,
    sends: VecDeque<(String, Bytes)>,
    scaled_for: usize,
    next_reannounce_ms: u64,
    leaving: bool,
    pub counters: MembershipCounters,
}

impl Membership {
    /// `rng_seed` makes the probe order replayable (the simulator passes its seed).
    pub fn new(id: MemberId, rng_seed: u64) -> Membership {
        let left = LeftLog::default();
        let names = KnownNames::default();
        let codec = WireCodec {
            left: left.clone(),
            names: names.clone(),
        };
        Membership {
            names,
            foca: Foca::new(id, config_for(1), SmallRng::seed_from_u64(rng_seed), codec),
            fx: Effects::default(),
            left,
            seeds: Vec::new(),
            view: BTreeMap::new(),
            events: VecDeque::new(),
            sends: VecDeque::new(),
            scaled_for: 1,
            next_reannounce_ms: 0,
            leaving: false,
            counters: MembershipCounters::default(),
        }
    }

    /// This node's current identity (a new run after a rejoin).
    pub fn id(&self) -> &MemberId {
        self.foca.identity()
    }

    /// The names this node announces itself to when it knows no live member.
    pub fn set_seeds(&mut self, names: Vec<String>) {
        let me = self.id().name.clone();
        self.seeds = names.into_iter().filter(|n| *n != me).collect();
    }

    pub fn config(&self) -> foca::Config {
        config_for(self.scaled_for)
    }

    /// Live (alive or suspected) members other than this node.
    pub fn live_members(&self) -> usize {
        self.foca.num_members()
    }

    /// The run of `name` last heard of, and its state.
    pub fn member(&self, name: &str) -> Option<(&MemberId, Verdict)> {
        self.view.get(name).map(|(id, v)| (id, *v))
    }

    pub fn verdict(&self, name: &str) -> Option<Verdict> {
        self.view.get(name).map(|(_, v)| *v)
    }

    /// Tells `name` (a node we just connected to, a seed) that this node exists; its answer
    /// brings the member list. Ignored for a member already known live, and once leaving.
    pub fn announce_to(&mut self, name: &str, now_ms: u64) {
        if self.leaving || name == self.id().name {
            return;
        }
        if matches!(self.verdict(name), Some(Verdict::Alive | Verdict::Suspect)) {
            return;
        }
        let dst = MemberId::placeholder(name);
        let _ = self.call(now_ms, |f, fx| f.announce(dst, fx));
    }

    /// A datagram that arrived on the connection of `conn_name` (its certificate name).
    pub fn handle_datagram(
        &mut self,
        conn_name: &str,
        data: &[u8],
        now_ms: u64,
    ) -> Result<(), MembershipError> {
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += data.len() as u64;
        let header = match codec::decode_header(data) {
            Ok(h) => h,
            Err(e) => {
                self.counters.undecodable += 1;
                return Err(e.into());
            }
        };
        if header.src.name != conn_name {
            self.counters.spoofed += 1;
            return Err(MembershipError::Spoofed {
                claimed: header.src.name,
                conn: conn_name.to_string(),
            });
        }
        self.call(now_ms, |f, fx| f.handle_data(data, fx))
    }

    /// Fires every timer due by `now_ms`, in order, and announces to the seeds again if
    /// this node knows no live member.
    pub fn handle_timers(&mut self, now_ms: u64) {
        while let Some(timer) = self.fx.timers.pop_due(now_ms) {
            let _ = self.call(now_ms, |f, fx| f.handle_timer(timer, fx));
        }
        if !self.leaving && self.live_members() == 0 && now_ms >= self.next_reannounce_ms {
            self.next_reannounce_ms = now_ms + REANNOUNCE_MS;
            for seed in self.seeds.clone() {
                let dst = MemberId::placeholder(&seed);
                let _ = self.call(now_ms, |f, fx| f.announce(dst, fx));
            }
        }
    }

    /// When [`Membership::handle_timers`] next has something to do.
    pub fn next_timer_ms(&self) -> u64 {
        let reannounce = if self.leaving || self.live_members() > 0 || self.seeds.is_empty() {
            u64::MAX
        } else {
            self.next_reannounce_ms
        };
        self.fx
            .timers
            .next_due()
            .unwrap_or(u64::MAX)
            .min(reannounce)
    }

    /// Tells the cluster this node is leaving (a few members directly; they spread it).
    /// Keep delivering datagrams and timers for a moment afterwards so it gets out.
    pub fn leave(&mut self, now_ms: u64) {
        if self.leaving {
            return;
        }
        self.left.insert(self.foca.identity());
        self.leaving = true;
        let _ = self.call(now_ms, |f, fx| f.leave_cluster(fx));
    }

    pub fn poll_send(&mut self) -> Option<(String, Bytes)> {
        self.sends.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// Runs one call into foca, then collects what it produced.
    fn call(
        &mut self,
        now_ms: u64,
        f: impl FnOnce(&mut Swim, &mut Effects) -> Result<(), foca::Error>,
    ) -> Result<(), MembershipError> {
        self.fx.now_ms = now_ms;
        let result = f(&mut self.foca, &mut self.fx).map_err(|e| {
            self.counters.refused += 1;
            MembershipError::Foca(e.to_string())
        });
        for (to, data) in self.fx.sends.drain(..) {
            self.counters.datagrams_out += 1;
            self.counters.bytes_out += data.len() as u64;
            self.sends.push_back((to.name, data));
        }
        self.rescale();
        self.refresh_view();
        result
    }

    /// Re-derives foca's configuration when the member count moves.
    fn rescale(&mut self) {
        let members = self.live_members() + 1;
        if members != self.scaled_for && self.foca.set_config(config_for(members)).is_ok() {
            self.scaled_for = members;
        }
    }

    /// Compares foca's member list with what was last reported and queues the changes.
    fn refresh_view(&mut self) {
        // What foca holds bounds what the codec takes in next, and what is remembered
        // here: a member foca dropped makes room for another.
        let held: HashSet<&str> = self
            .foca
            .iter_membership_state()
            .map(|m| m.id().name.as_str())
            .collect();
        self.view.retain(|name, _| held.contains(name.as_str()));
        self.names.set(held.into_iter());
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            let verdict = match m.state() {
                State::Alive => Verdict::Alive,
                State::Suspect => Verdict::Suspect,
                State::Down if self.left.contains(id) => Verdict::Left,
                State::Down => Verdict::Down,
            };
            let known = self.view.get(&id.name);
            if known.is_some_and(|(k, v)| k == id && *v == verdict) {
                continue;
            }
            match known {
                Some((old, _)) if old != id => self.events.push_back(MemberEvent::Renamed {
                    old: old.clone(),
                    new: id.clone(),
                }),
                _ => {}
            }
            let news = match known {
                // A member first heard of as down was never up here: nothing to report.
                None => verdict != Verdict::Down && verdict != Verdict::Left,
                Some((_, v)) => *v != verdict,
            };
            if news {
                self.events.push_back(MemberEvent::Verdict {
                    id: id.clone(),
                    verdict,
                });
            }
            self.view.insert(id.name.clone(), (id.clone(), verdict));
        }
    }

    /// Timers waiting (for tests: none may be lost).
    pub fn timers_pending(&self) -> usize {
        self.fx.timers.len()
    }
}

#[cfg(test)]
mod tests;
