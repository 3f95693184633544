//! Scripted schedules: faults too rare to count on the random generator for, played step
//! by step on the same world (real cores and stores, virtual time, in-memory links).

use std::net::SocketAddr;

use meshcached::clock::{Version, HLC_EPOCH_MS};

use crate::check::Checker;
use crate::node::Setup;
use crate::world::World;
use crate::{TempDir, START_MS};

/// How long (virtual) each phase may take before the schedule fails.
const PHASE_MS: u64 = 3_000;

/// Two nodes on clocks that agree, each with a `--state-file` in `dir`.
fn pair(dir: &std::path::Path) -> Vec<Setup> {
    let addr =
        |i: usize| -> SocketAddr { format!("127.0.0.1:{}", 7100 + i).parse().expect("valid") };
    (0..2)
        .map(|i| Setup {
            name: format!("n{i}"),
            node_id: 1 + i as u16,
            addr: addr(i),
            seeds: vec![addr(1 - i).to_string()],
            mem_limit: 4 << 20,
            skew_ms: 0,
            state_file: Some(dir.join(format!("n{i}.state"))),
        })
        .collect()
}

/// Steps until `done`, failing the test after [`PHASE_MS`] of virtual time.
fn until(w: &mut World, what: &str, done: impl Fn(&World) -> bool) {
    until_within(w, what, PHASE_MS, done);
}

fn serving(w: &World) -> bool {
    w.nodes.iter().all(|n| n.as_ref().is_some_and(|n| n.opened)) && w.all_linked()
}

fn agreed(w: &World) -> bool {
    serving(w) && Checker::agreement(&w.nodes, w.now).is_ok()
}

fn client(w: &World, i: usize, request: &str) -> String {
    w.nodes[i]
        .as_ref()
        .expect("node is up")
        .client(request.as_bytes())
}

/// Stops node `i` gracefully and waits until it is gone (drained, file saved unless its
/// run is `file_off`).
fn stop(w: &mut World, i: usize) {
    w.stop(i);
    until(w, "a graceful stop", |w| w.nodes[i].is_none());
}

/// DESIGN.md section 6: a state file is trusted only for the run that wrote it. A run
/// started without `--state-file` leaves the previous run's file in place; the next start
/// from it must not take the file for current. Before the peers' hellos were checked
/// against the file's run, n0 came back holding `v1` (the file's value) while n1 held `v2`
/// (n0's own later write, which peers never send back), for good.
#[test]
fn a_state_file_older_than_the_last_run_is_found_stale() {
    let dir = TempDir::new(u64::MAX - 1);
    let mut w = World::new(1, pair(&dir.0), START_MS);
    w.start(0, true);
    w.start(1, true);
    // A new cluster (both empty) opens once the clock lead is waited out.
    let lead = crate::node::MAX_SKEW.as_millis() as u64;
    until_within(&mut w, "the pair links up", lead + PHASE_MS, serving);
    assert_eq!(client(&w, 0, "set k 0 0 2\r\nv1\r\n"), "STORED\r\n");
    until(&mut w, "v1 reaches n1", agreed);
    // A clean stop: the file holds v1, and every member has all of the run.
    stop(&mut w, 0);
    // The operator starts n0 without --state-file: it syncs from n1 and overwrites k.
    w.file_off[0] = true;
    w.start(0, false);
    until(&mut w, "n0's second run links up", serving);
    assert_eq!(client(&w, 0, "set k 0 0 2\r\nv2\r\n"), "STORED\r\n");
    until(&mut w, "v2 reaches n1", agreed);
    assert_eq!(client(&w, 1, "get k\r\n"), "VALUE k 0 2\r\nv2\r\nEND\r\n");
    stop(&mut w, 0);
    // Back with --state-file: the file on disk is the first run's.
    w.file_off[0] = false;
    w.start(0, true);
    until(&mut w, "n0 gets its own later write back", agreed);
    for i in 0..2 {
        assert_eq!(
            client(&w, i, "get k\r\n"),
            "VALUE k 0 2\r\nv2\r\nEND\r\n",
            "node n{i}"
        );
    }
    let stale = w.nodes[0]
        .as_ref()
        .expect("up")
        .replica
        .sync_counters()
        .stale_state_files
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(stale, 1, "n0 found its file stale once");
}

/// DESIGN.md section 1: a restarted node must not issue a version it issued before. n0 is
/// a first node (no `--join`); n1, whose clock is 4 s ahead, joins it, and n0's clock
/// follows n1's versions up. n0 writes `k` (a version 4 s ahead of its wall clock), the
/// write reaches n1, then n0 crashes and restarts at once while cut off from n1. Before a
/// first node waited out `--max-clock-skew` after its start, it served at once, and when
/// its wall clock reached that version's millisecond it issued the same version again,
/// for another value of `k`: the CAS token of the first write matched the second, and the
/// two nodes held two values under one version, which the merge takes for one write and
/// anti-entropy's digests cannot tell apart (a divergence for good).
#[test]
fn a_restarted_first_node_never_issues_a_version_again() {
    let addr =
        |i: usize| -> SocketAddr { format!("127.0.0.1:{}", 7200 + i).parse().expect("valid") };
    let setups = (0..2)
        .map(|i| Setup {
            name: format!("n{i}"),
            node_id: 1 + i as u16,
            addr: addr(i),
            seeds: if i == 0 {
                vec![]
            } else {
                vec![addr(0).to_string()]
            },
            mem_limit: 4 << 20,
            skew_ms: if i == 0 { 0 } else { 4_000 },
            state_file: None,
        })
        .collect();
    crate::init_trace();
    let mut w = World::new(2, setups, START_MS);
    w.start(0, false);
    w.start(1, false);
    let lead = crate::node::MAX_SKEW.as_millis() as u64;
    until_within(&mut w, "the pair links up", lead + PHASE_MS, serving);
    assert_eq!(client(&w, 1, "set a 0 0 1\r\nx\r\n"), "STORED\r\n");
    until(&mut w, "n1's write reaches n0", |w| holds(w, 0, "a"));
    let wall = wall_ms(&w, 0) - HLC_EPOCH_MS;
    assert_eq!(client(&w, 0, "set k 0 0 3\r\nold\r\n"), "STORED\r\n");
    let old = cas_of(&w, 0, "k");
    assert!(
        old.physical_ms() > wall + 3_000,
        "n0's clock followed n1's: {old:?} at n0's {wall} ms"
    );
    until(&mut w, "k reaches n1", |w| holds(w, 1, "k"));

    w.partition(0, 1);
    w.crash(0);
    w.start(0, false);
    // Once n0 serves again and its wall clock has reached the old version's millisecond,
    // write `k` as many times as it takes to issue that version again, if it can be.
    let at = old.physical_ms() + HLC_EPOCH_MS;
    until_within(&mut w, "n0 serves again", lead + PHASE_MS, |w| {
        w.nodes[0].as_ref().is_some_and(|n| n.opened) && wall_ms(w, 0) >= at
    });
    let mut issued = Vec::new();
    for _ in 0..=old.logical() {
        assert_eq!(client(&w, 0, "set k 0 0 3\r\nnew\r\n"), "STORED\r\n");
        issued.push(cas_of(&w, 0, "k"));
    }
    assert!(
        issued.iter().all(|&v| v > old),
        "n0's second run issued {issued:?}, not all above its first run's {old:?}"
    );
    w.heal(0, 1);
    until(&mut w, "the pair agrees again", agreed);
    for i in 0..2 {
        assert_eq!(
            client(&w, i, "get k\r\n"),
            "VALUE k 0 3\r\nnew\r\nEND\r\n",
            "node n{i}"
        );
    }
}

/// Steps until `done`, failing the test after `ms` of virtual time.
fn until_within(w: &mut World, what: &str, ms: u64, done: impl Fn(&World) -> bool) {
    let deadline = w.now + ms;
    while !done(w) {
        assert!(w.now < deadline, "{what}: not within {ms} ms (virtual)");
        w.step();
    }
}

fn wall_ms(w: &World, i: usize) -> u64 {
    w.nodes[i].as_ref().expect("node is up").now_ms()
}

/// The CAS value (= version) node `i` holds for `key`.
fn cas_of(w: &World, i: usize, key: &str) -> Version {
    let answer = client(w, i, &format!("gets {key}\r\n"));
    let cas = crate::cas_of(&answer).unwrap_or_else(|| panic!("gets {key} on n{i}: {answer:?}"));
    Version(cas)
}

fn holds(w: &World, i: usize, key: &str) -> bool {
    w.nodes[i].as_ref().is_some_and(|n| {
        n.client(format!("get {key}\r\n").as_bytes())
            .starts_with("VALUE")
    })
}
