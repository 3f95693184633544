//! The deterministic simulator (STYLE.md, Tests): N real replica cores, stores and
//! dispatchers in one thread, virtual time, seeded randomness, in-memory links; random
//! schedules of client operations (every mutating command, delayed flushes, expiring items)
//! under partitions short and longer than the tombstone TTL, crashes, graceful restarts
//! with and without state files, memory pressure and skewed clocks. After every schedule
//! the contract of DESIGN.md section 0 is checked (see `check`).
//!
//! `MESHCACHED_SIM_SCHEDULES=N` runs N schedules per test thread instead of the default;
//! `MESHCACHED_SIM_SEED=S` runs only schedule S. A seed that ever failed is kept below as a
//! regression test.

mod check;
mod net;
mod node;
mod rng;
mod scripted;
mod world;

use std::path::PathBuf;

use check::Checker;
use node::Setup;
use rng::Rng;
use world::{World, STEP_MS};

/// 2026-12-01, so that clocks and versions look like production's.
const START_MS: u64 = 1_796_083_200_000;
/// Schedules per test thread in CI (four threads).
const DEFAULT_SCHEDULES: u64 = 750;
/// Seeds that once broke the contract, run on every test run. They name schedules of the
/// generator below (`plan`, `setups`, `request`, `faults`): changing what it draws, or in
/// which order, makes them other schedules, so extend it only at the end of each draw.
/// 29, 212: a peer that took a snapshot instead of the log kept a version older than an
/// expired (and reclaimed) write; 340: a node restarted empty never got a third origin's
/// delete that only a peer held; 9264: a catch-up asked on a connection that a
/// simultaneous dial replaced was never asked again, so a node restarted empty never got
/// back its own write that only its peers held; 3703: a donor that had heard from only the
/// members linked so far about a crashed origin's previous run claimed that origin in its
/// snapshot, so its joiner never got a delete that only a member linked later held.
const REGRESSIONS: &[u64] = &[29, 212, 340, 3703, 9264];
/// How long a healed cluster has to agree before the schedule fails.
const CONVERGE_MS: u64 = 60_000;

/// What a schedule varies.
#[derive(Debug, Clone)]
struct Plan {
    nodes: usize,
    keys: u64,
    active_ms: u64,
    /// Percent chances per 100 ms of each fault.
    partitions: u64,
    crashes: u64,
    stops: u64,
    first_node_alone: bool,
    /// Partitions longer than the tombstone TTL (reconciliation's domain).
    long_partitions: bool,
    /// Whether clients send `flush_all` (rarely): it empties every node, so most
    /// schedules do without.
    flushes: bool,
    state_files: bool,
    small_node: bool,
}

fn plan(rng: &mut Rng) -> Plan {
    Plan {
        nodes: 2 + rng.below(3) as usize,
        keys: 4 + rng.below(20),
        active_ms: 2000 + rng.below(6000),
        partitions: rng.pick(&[0, 2, 5, 10]),
        crashes: rng.pick(&[0, 1, 3]),
        stops: rng.pick(&[0, 1, 3]),
        first_node_alone: rng.chance(50),
        long_partitions: rng.chance(50),
        flushes: rng.chance(30),
        state_files: rng.chance(50),
        small_node: rng.chance(25),
    }
}

fn setups(plan: &Plan, rng: &mut Rng, dir: &std::path::Path) -> Vec<Setup> {
    let addr = |i: usize| -> std::net::SocketAddr {
        format!("127.0.0.1:{}", 7000 + i).parse().expect("valid")
    };
    (0..plan.nodes)
        .map(|i| {
            let seeds = if plan.first_node_alone {
                if i == 0 {
                    vec![]
                } else {
                    vec![addr(0).to_string()]
                }
            } else {
                (0..plan.nodes)
                    .filter(|j| *j != i)
                    .map(|j| addr(j).to_string())
                    .collect()
            };
            Setup {
                name: format!("n{i}"),
                node_id: 1 + i as u16,
                addr: addr(i),
                seeds,
                mem_limit: if plan.small_node && i == plan.nodes - 1 {
                    24 << 10
                } else {
                    4 << 20
                },
                skew_ms: rng.below(3001) as i64 - 1500,
                state_file: plan.state_files.then(|| dir.join(format!("n{i}.state"))),
            }
        })
        .collect()
}

/// Faults that only anti-entropy repairs, drawn from a stream of their own: the
/// generator above keeps every draw it had (regression seeds name the same schedules,
/// these faults added).
#[derive(Debug, Clone, Copy)]
struct Extra {
    /// Percent chance that a batch delivered loses one of its writes (see `World`).
    drop_pct: u64,
    /// A node killed for good, and when (ms into the active phase): what it had sent
    /// reached its peers unevenly, and it never comes back to resend anything.
    gone: Option<(usize, u64)>,
}

fn extra(seed: u64, plan: &Plan) -> Extra {
    let mut rng = Rng::new(seed ^ 0xae5e_ed00_ae5e_ed00);
    let drop_pct = if rng.chance(30) {
        rng.pick(&[2, 10, 30])
    } else {
        0
    };
    // With one seed for all, the others could not find each other again without it.
    let gone = (plan.nodes >= 3 && !plan.first_node_alone && rng.chance(30)).then(|| {
        (
            rng.below(plan.nodes as u64) as usize,
            rng.below(plan.active_ms),
        )
    });
    Extra { drop_pct, gone }
}

/// A random client request against `keys` keys (text and meta commands).
fn request(rng: &mut Rng, plan: &Plan, cas: Option<u64>) -> Vec<u8> {
    let keys = plan.keys;
    let key = format!("k{}", rng.below(keys));
    let exp = match rng.below(10) {
        0 => 1 + rng.below(4) as i64,
        1 => -1,
        _ => 0,
    };
    let value = if rng.chance(30) {
        rng.below(1000).to_string()
    } else {
        let most = if rng.chance(10) { 600 } else { 40 };
        let len = 1 + rng.below(most) as usize;
        let c = (b'a' + rng.below(26) as u8) as char;
        c.to_string().repeat(len)
    };
    let flags = rng.below(4);
    let n = value.len();
    let r = match rng.below(20) {
        0..=5 => format!("set {key} {flags} {exp} {n}\r\n{value}\r\n"),
        6 => format!("add {key} {flags} {exp} {n}\r\n{value}\r\n"),
        7 => format!("replace {key} {flags} {exp} {n}\r\n{value}\r\n"),
        8 => format!("append {key} 0 0 {n}\r\n{value}\r\n"),
        9 => format!("prepend {key} 0 0 {n}\r\n{value}\r\n"),
        10 => format!("incr {key} {}\r\n", 1 + rng.below(9)),
        11 => format!("decr {key} {}\r\n", 1 + rng.below(9)),
        12 | 13 => format!("delete {key}\r\n"),
        14 => format!("touch {key} {exp}\r\n"),
        15 => format!("gat {exp} {key}\r\n"),
        16 => match cas {
            Some(c) => format!("cas {key} {flags} {exp} {n} {c}\r\n{value}\r\n"),
            None => format!("gets {key}\r\n"),
        },
        17 => format!("ms {key} {n} T{}\r\n{value}\r\n", exp.max(0)),
        18 => format!("md {key}\r\n"),
        _ => {
            if plan.flushes && rng.chance(4) {
                format!("flush_all {}\r\n", rng.below(4))
            } else {
                format!("ma {key}\r\n")
            }
        }
    };
    r.into_bytes()
}

/// The CAS of a `gets` answer, if it found the item.
fn cas_of(answer: &str) -> Option<u64> {
    answer.lines().next()?.split(' ').nth(4)?.parse().ok()
}

/// With `MESHCACHED_SIM_TRACE` set, the nodes' logs go to stderr (filter:
/// `MESHCACHED_SIM_LOG`, default `meshcached=info`).
fn init_trace() {
    if std::env::var_os("MESHCACHED_SIM_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(
                std::env::var("MESHCACHED_SIM_LOG").unwrap_or("meshcached=info".into()),
            )
            .without_time()
            .try_init();
    }
}

/// Runs schedule `seed` and returns the contract's violations (empty: it held).
fn run(seed: u64) -> Vec<String> {
    init_trace();
    let mut rng = Rng::new(seed);
    // Faults added after the regression seeds were kept draw from their own stream, so
    // that those seeds still name the schedules that once failed.
    let mut later = Rng::new(seed.rotate_left(17) ^ 0xf11e);
    let plan = plan(&mut rng);
    let dir = TempDir::new(seed);
    let setups = setups(&plan, &mut rng, &dir.0);
    let extra = extra(seed, &plan);
    let mut w = World::new(seed, setups, START_MS);
    w.drop_pct = extra.drop_pct;
    for i in 0..plan.nodes {
        w.start(i, true);
    }
    let end = w.now + plan.active_ms;
    let gone_at = extra.gone.map(|(i, at)| (i, w.now + at));
    // When each stopped node comes back, and whether its state file survived.
    let mut down_until: Vec<Option<(u64, bool)>> = vec![None; plan.nodes];
    let mut heal_at: Vec<(u64, usize, usize)> = Vec::new();
    let mut cas: Option<u64> = None;
    while w.now < end {
        w.step();
        // Client operations on open, running nodes.
        for _ in 0..rng.below(3) {
            let i = rng.below(plan.nodes as u64) as usize;
            let ready = w.nodes[i].as_ref().is_some_and(|n| n.opened) && w.draining[i].is_none();
            if ready {
                let req = request(&mut rng, &plan, cas);
                let node = w.nodes[i].as_ref().expect("checked");
                let answer = node.client(&req);
                world::trace(
                    w.now,
                    format_args!(
                        "n{i} {:?} -> {:?}",
                        String::from_utf8_lossy(&req[..req.len().min(40)]),
                        answer
                    ),
                );
                if req.starts_with(b"gets") {
                    cas = cas_of(&answer);
                } else if req.starts_with(b"cas") {
                    cas = None;
                }
            }
        }
        if w.now % 100 < STEP_MS {
            faults(&mut w, &mut rng, &plan, &mut down_until, &mut heal_at);
        }
        if let Some((g, at)) = gone_at.filter(|&(g, at)| at <= w.now && !w.gone[g]) {
            w.kill_for_good(g);
            down_until[g] = None;
            trace_at(&w, format_args!("n{g} killed for good at {at}"));
        }
        heal_at.retain(|&(t, i, j)| {
            if t <= w.now {
                w.heal(i, j);
            }
            t > w.now
        });
        for (i, d) in down_until.iter_mut().enumerate() {
            if let Some((t, load)) = *d {
                if t <= w.now && w.nodes[i].is_none() && w.draining[i].is_none() && !w.gone[i] {
                    if !load {
                        // The operator lost the state file (a new disk, say).
                        if let Some(path) = &w.setups[i].state_file {
                            let _ = std::fs::remove_file(path);
                        }
                    }
                    // Or started this run without `--state-file`: an older file stays,
                    // and the next start loads it (stale: a peer shows it).
                    let off = plan.state_files && later.chance(20);
                    w.file_off[i] = off;
                    w.start(i, !off);
                    *d = None;
                }
            }
        }
    }
    // Heal everything, bring every node back, and let the cluster agree.
    w.heal_all();
    let flush_quiet = w.now + 8000;
    let deadline = w.now + CONVERGE_MS;
    let mut last_err = String::new();
    loop {
        for i in 0..plan.nodes {
            if w.nodes[i].is_none() && w.draining[i].is_none() && !w.gone[i] {
                w.file_off[i] = false;
                w.start(i, true);
            }
        }
        w.step();
        if w.now % 100 < STEP_MS && w.now >= flush_quiet && w.all_linked() {
            match Checker::agreement(&w.nodes, w.now) {
                Ok(()) => break,
                Err(e) => last_err = e,
            }
        }
        if w.now >= deadline {
            use std::sync::atomic::Ordering::Relaxed;
            for (i, n) in w.nodes.iter().enumerate() {
                let Some(n) = n else { continue };
                let c = n.replica.counters();
                world::trace(
                    w.now,
                    format_args!(
                        "n{i}: evictions {} not_stored {} refused_forgotten {} behind {} skew {}",
                        n.replica.store().stats().evictions,
                        c.not_stored.load(Relaxed),
                        c.refused_forgotten.load(Relaxed),
                        c.rejected_behind.load(Relaxed),
                        c.clock_skew_rejects.load(Relaxed),
                    ),
                );
            }
            w.check.violations.push(format!(
                "no agreement {} s after healing: {last_err}",
                CONVERGE_MS / 1000
            ));
            return report(seed, &plan, w);
        }
    }
    let now = w.now;
    let World { nodes, check, .. } = &mut w;
    check.finish(nodes, now);
    if std::env::var_os("MESHCACHED_SIM_SEED").is_some() {
        let items: Vec<(usize, u64)> = w
            .nodes
            .iter()
            .flatten()
            .map(|n| {
                let secs = (n.now_ms() / 1000) as u32;
                (n.replica.store().dump(secs).len(), n.replica.store().len())
            })
            .collect();
        let ops: Vec<u64> = w
            .nodes
            .iter()
            .flatten()
            .map(|n| n.replica.outbox().last_seq())
            .collect();
        eprintln!(
            "seed {seed}: {plan:?} {extra:?}; converged at +{} ms; items held {items:?}; log entries of the last runs {ops:?}; runs {:?}",
            now - START_MS,
            w.runs
        );
    }
    report(seed, &plan, w)
}

fn trace_at(w: &World, what: std::fmt::Arguments<'_>) {
    world::trace(w.now, what);
}

fn report(seed: u64, plan: &Plan, w: World) -> Vec<String> {
    w.check
        .violations
        .into_iter()
        .map(|v| format!("seed {seed} ({plan:?}): {v}"))
        .collect()
}

/// Throws this 100 ms's faults at the world.
fn faults(
    w: &mut World,
    rng: &mut Rng,
    plan: &Plan,
    down_until: &mut [Option<(u64, bool)>],
    heal_at: &mut Vec<(u64, usize, usize)>,
) {
    let n = plan.nodes as u64;
    if plan.partitions > 0 && rng.chance(plan.partitions) {
        let i = rng.below(n) as usize;
        let j = (i + 1 + rng.below(n - 1) as usize) % plan.nodes;
        // Short ones, and ones longer than the tombstone TTL.
        let len = if plan.long_partitions {
            rng.pick(&[300, 1500, 3000, 6000, 9000])
        } else {
            rng.pick(&[300, 1500, 3000])
        };
        w.partition(i, j);
        heal_at.push((w.now + len, i, j));
    }
    let i = rng.below(n) as usize;
    let up = w.nodes[i].is_some() && w.draining[i].is_none();
    let back = w.now + rng.pick(&[200, 1000, 3000, 6000]);
    if up && plan.crashes > 0 && rng.chance(plan.crashes) {
        w.crash(i);
        down_until[i] = Some((back, true));
    } else if up && plan.stops > 0 && rng.chance(plan.stops) {
        w.stop(i);
        down_until[i] = Some((back, rng.chance(80)));
    }
}

/// A directory for a schedule's state files, removed afterwards.
struct TempDir(PathBuf);

impl TempDir {
    fn new(seed: u64) -> TempDir {
        let p = std::env::temp_dir().join(format!("meshcached-sim-{}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create a temporary directory");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs this thread's share of the schedules (seeds `lane`, `lane + 4`, ...).
fn lane(lane: u64) {
    let seeds: Vec<u64> = match env_u64("MESHCACHED_SIM_SEED") {
        Some(s) if s % 4 == lane => vec![s],
        Some(_) => vec![],
        None => {
            let n = env_u64("MESHCACHED_SIM_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES);
            (0..n).map(|k| k * 4 + lane).collect()
        }
    };
    let mut failures = Vec::new();
    for s in seeds {
        failures.extend(run(s));
        if failures.len() > 20 {
            break;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn schedules_that_once_failed_keep_the_contract() {
    let failures: Vec<String> = REGRESSIONS.iter().flat_map(|&s| run(s)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn random_schedules_keep_the_contract_0() {
    lane(0);
}

#[test]
fn random_schedules_keep_the_contract_1() {
    lane(1);
}

#[test]
fn random_schedules_keep_the_contract_2() {
    lane(2);
}

#[test]
fn random_schedules_keep_the_contract_3() {
    lane(3);
}

/// The case anti-entropy exists for: of three nodes, one writes at full speed and is
/// killed (`kill -9`) for good with writes in flight on both its links; the two others got
/// different prefixes of its log, and nobody will ever send them the rest. They must end
/// up agreeing on everything either of them got.
#[test]
fn survivors_of_a_node_killed_for_good_agree_on_what_it_sent_either() {
    let mut diverged = 0;
    for seed in 0..8u64 {
        let setups: Vec<Setup> = (0..3)
            .map(|i| Setup {
                name: format!("n{i}"),
                node_id: 1 + i as u16,
                addr: format!("127.0.0.1:{}", 7000 + i).parse().expect("valid"),
                seeds: (0..3)
                    .filter(|j| *j != i)
                    .map(|j| format!("127.0.0.1:{}", 7000 + j))
                    .collect(),
                mem_limit: 4 << 20,
                skew_ms: 0,
                state_file: None,
            })
            .collect();
        let mut w = World::new(seed, setups, START_MS);
        for i in 0..3 {
            w.start(i, true);
        }
        while !w.all_linked() {
            w.step();
        }
        // n0 writes every step, and dies with the last ones still on the way.
        for k in 0..400 {
            let node = w.nodes[0].as_ref().expect("up");
            let req = format!("set key{k} 0 0 5\r\nvalue\r\n");
            assert_eq!(node.client(req.as_bytes()), "STORED\r\n");
            if k % 4 == 3 {
                w.step();
            }
        }
        w.kill_for_good(0);
        w.step();
        let held = |w: &World, i: usize| {
            let n = w.nodes[i].as_ref().expect("up");
            n.replica.store().dump((n.now_ms() / 1000) as u32).len()
        };
        let (b, c) = (held(&w, 1), held(&w, 2));
        diverged += usize::from(b != c);
        let deadline = w.now + 30_000;
        loop {
            w.step();
            if w.now % 100 < STEP_MS
                && Checker::agreement(&w.nodes, w.now).is_ok()
                && held(&w, 1) == held(&w, 2)
            {
                break;
            }
            assert!(
                w.now < deadline,
                "seed {seed}: n1 and n2 still differ 30 s after n0 died (they held {b} and {c} of its 400 writes then)"
            );
        }
        assert_eq!(held(&w, 1), b.max(c), "seed {seed}: the longer prefix wins");
    }
    assert!(
        diverged > 0,
        "the survivors always got the same prefix: nothing was tested"
    );
}
