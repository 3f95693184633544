//! Scripted schedules: faults too rare to count on the random generator for, played step
//! by step on the same world (real cores and stores, virtual time, in-memory links).

use std::net::SocketAddr;

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
    let deadline = w.now + PHASE_MS;
    while !done(w) {
        assert!(
            w.now < deadline,
            "{what}: not within {PHASE_MS} ms (virtual)"
        );
        w.step();
    }
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
    until(&mut w, "the pair links up", serving);
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
