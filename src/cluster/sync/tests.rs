//! The sync plan's decisions, one scenario per test.

use super::*;

fn names(actions: &[Action]) -> Vec<String> {
    actions.iter().map(|a| format!("{a:?}")).collect()
}

#[test]
fn a_fresh_node_takes_one_snapshot_from_the_least_loaded_ready_peer() {
    let mut plan = SyncPlan::new(false, true, 0, 10_000, 5_000);
    assert!(plan.defer());
    plan.up("b", true, 2, false, true);
    // Not everyone connected yet, and the grace period not over: wait.
    assert!(plan.step(10, false).is_empty());
    plan.up("c", true, 0, false, true);
    plan.up("d", false, 0, true, true);
    assert_eq!(
        plan.step(20, true),
        vec![Action::RequestSnapshot("c".into())]
    );
    assert_eq!(plan.phase(), Phase::Syncing);
    assert!(plan.defer(), "positions unknown until the snapshot begins");
    // The donor's positions release the other held streams, not the donor's.
    assert_eq!(
        plan.snapshot_began("c"),
        vec![Action::Start("b".into()), Action::Start("d".into())]
    );
    assert!(!plan.defer());
    plan.synced("c", 1);
    plan.synced("b", 0);
    plan.synced("d", 0);
    assert!(
        plan.step(30, true).is_empty(),
        "the snapshot is not applied yet"
    );
    plan.snapshot_applied("c");
    assert_eq!(
        plan.step(40, true),
        vec![Action::Ready(ReadyReason::Synced { peers: 3 })]
    );
    assert!(plan.opened());
}

#[test]
fn a_peer_whose_hello_crossed_the_donor_s_positions_is_started_at_once() {
    let mut plan = SyncPlan::new(false, true, 0, 10_000, 5_000);
    plan.up("b", true, 0, false, true);
    assert_eq!(
        plan.step(1, true),
        vec![Action::RequestSnapshot("b".into())]
    );
    assert!(plan.snapshot_began("b").is_empty());
    // c was sent a deferring hello before the positions came; its hello comes after.
    assert_eq!(
        plan.up("c", true, 0, false, true),
        vec![Action::Start("c".into())]
    );
    plan.synced("b", 1);
    plan.snapshot_applied("b");
    assert!(
        plan.step(2, true).is_empty(),
        "c has not said we are synced"
    );
    plan.synced("c", 0);
    assert_eq!(
        plan.step(3, true),
        vec![Action::Ready(ReadyReason::Synced { peers: 2 })]
    );
    // After the node is ready, the same.
    assert_eq!(
        plan.up("d", true, 0, false, true),
        vec![Action::Start("d".into())]
    );
}

#[test]
fn a_new_connection_to_the_donor_asks_again() {
    let mut plan = SyncPlan::new(false, true, 0, 10_000, 5_000);
    plan.up("b", true, 0, false, true);
    assert_eq!(
        plan.step(1, true),
        vec![Action::RequestSnapshot("b".into())]
    );
    // b's connection is replaced before its snapshot began: no down() for the old one.
    assert!(plan.up("b", true, 0, false, true).is_empty(), "held again");
    assert_eq!(plan.phase(), Phase::Choosing);
    assert_eq!(
        plan.step(2, true),
        vec![Action::RequestSnapshot("b".into())]
    );
}

#[test]
fn the_grace_period_bounds_the_wait_for_other_members() {
    let mut plan = SyncPlan::new(false, true, 0, 10_000, 5_000);
    plan.up("b", true, 0, false, true);
    assert!(plan.step(100, false).is_empty());
    assert_eq!(
        plan.step(100 + DONOR_GRACE_MS, false),
        vec![Action::RequestSnapshot("b".into())]
    );
}

/// Every member as empty as this node: nothing to copy. It looks the same as a whole
/// cluster restarted at once without state files, so the port opens only once the clock
/// lead is waited out (as a first node's: see `SyncPlan::new`).
#[test]
fn a_new_cluster_has_nothing_to_copy() {
    let mut plan = SyncPlan::new(false, true, 0, 10_000, 5_000);
    plan.up("b", false, 0, true, true);
    assert!(plan.step(5, false).is_empty(), "b may not be all there is");
    let actions = plan.step(6, true);
    assert_eq!(names(&actions), vec!["Start(\"b\")"], "{actions:?}");
    assert_eq!(plan.phase(), Phase::Ready);
    assert!(!plan.opened(), "the clock lead is not waited out");
    assert!(plan.step(4_999, true).is_empty());
    assert_eq!(names(&plan.step(5_000, true)), ["Ready(NewCluster)"]);

    // Without a lead to wait out, at once.
    let mut plan = SyncPlan::new(false, true, 0, 10_000, 0);
    plan.up("b", false, 0, true, true);
    assert_eq!(
        names(&plan.step(6, true)),
        vec!["Start(\"b\")", "Ready(NewCluster)"]
    );
}

/// A node with `--join` that becomes ready without a sync (here: no peer answered within a
/// `--join-timeout` shorter than `--max-clock-skew`) knows no more than a first node: it
/// waits out the clock lead too. One that synced does not.
#[test]
fn a_join_node_ready_without_a_sync_waits_out_the_clock_lead() {
    let mut alone = SyncPlan::new(true, true, 0, 1_000, 5_000);
    assert!(alone.step(1_000, false).is_empty());
    assert!(!alone.opened());
    assert_eq!(names(&alone.step(5_000, false)), ["Ready(NoPeer)"]);

    let mut synced = SyncPlan::new(true, true, 0, 1_000, 5_000);
    synced.up("b", true, 0, false, false);
    synced.synced("b", 0);
    assert_eq!(
        synced.step(10, true),
        vec![Action::Ready(ReadyReason::Synced { peers: 1 })]
    );
}

#[test]
fn losing_the_donor_chooses_another() {
    let mut plan = SyncPlan::new(false, true, 0, 10_000, 5_000);
    plan.up("b", true, 0, false, true);
    plan.up("c", true, 1, false, true);
    assert_eq!(
        plan.step(1, true),
        vec![Action::RequestSnapshot("b".into())]
    );
    plan.snapshot_began("b");
    plan.down("b");
    assert_eq!(plan.phase(), Phase::Choosing);
    assert!(plan.defer());
    assert!(
        plan.step(2, false).is_empty(),
        "b may come back: a grace period again"
    );
    assert_eq!(
        plan.step(2 + DONOR_GRACE_MS, false),
        vec![Action::RequestSnapshot("c".into())]
    );
    // c's positions restart the streams again (c's own stream started with the request).
    plan.up("b", true, 0, false, true);
    assert_eq!(plan.snapshot_began("c"), vec![Action::Start("b".into())]);
}

#[test]
fn with_data_every_peer_syncs_by_delta() {
    let mut plan = SyncPlan::new(true, true, 0, 10_000, 5_000);
    assert!(!plan.defer());
    plan.up("b", true, 0, false, false);
    plan.up("c", true, 0, false, false);
    plan.synced("b", 0);
    assert!(plan.step(1, true).is_empty());
    plan.synced("c", 1); // c's log did not reach back: it sent a snapshot
    assert!(plan.step(2, true).is_empty());
    plan.snapshot_applied("c");
    assert_eq!(
        plan.step(3, true),
        vec![Action::Ready(ReadyReason::Synced { peers: 2 })]
    );
}

#[test]
fn the_join_timeout_opens_the_port_when_no_one_can_help() {
    // --max-clock-skew below --join-timeout: the lead is over when the timeout fires.
    let mut alone = SyncPlan::new(true, true, 0, 1_000, 500);
    assert!(alone.step(999, false).is_empty());
    assert_eq!(
        alone.step(1_000, false),
        vec![Action::Ready(ReadyReason::NoPeer)]
    );

    // Peers that answer but cannot give a snapshot (all syncing themselves).
    let mut stuck = SyncPlan::new(false, true, 0, 1_000, 500);
    stuck.up("b", false, 0, false, true);
    assert!(stuck.step(10, true).is_empty());
    let actions = stuck.step(1_000, true);
    assert_eq!(
        names(&actions),
        vec!["Start(\"b\")", "Ready(NoDonor)"],
        "{actions:?}"
    );

    // A snapshot under way is waited for.
    let mut slow = SyncPlan::new(false, true, 0, 1_000, 5_000);
    slow.up("b", true, 0, false, true);
    slow.step(1, true);
    assert!(slow.step(5_000, true).is_empty());
    assert!(!slow.opened());
}

#[test]
fn no_peers_configured_is_ready_at_once_and_a_restart_keeps_the_port_open() {
    let mut plan = SyncPlan::new(false, false, 0, 10_000, 0);
    assert!(plan.opened());
    assert_eq!(plan.phase(), Phase::Ready);
    assert!(!plan.defer());
    plan.restart();
    assert!(plan.defer());
    assert!(plan.opened());
}

#[test]
fn a_first_node_opens_only_once_its_clock_lead_is_waited_out() {
    let mut plan = SyncPlan::new(false, false, 1_000, 10_000, 5_000);
    assert_eq!(plan.phase(), Phase::Ready);
    assert!(
        !plan.defer(),
        "it has no one to wait for to know its positions"
    );
    assert!(!plan.opened());
    assert!(plan.step(5_999, false).is_empty());
    assert!(!plan.opened());
    assert_eq!(
        names(&plan.step(6_000, false)),
        ["Ready(ClockLead)"],
        "the port opens at start + max skew"
    );
    assert!(plan.opened());
    assert!(plan.step(7_000, false).is_empty(), "only once");
}

#[test]
fn a_first_node_synced_during_its_clock_lead_still_waits_it_out() {
    let mut plan = SyncPlan::new(false, false, 0, 10_000, 5_000);
    // Its stale contents were discarded (a peer proved its state file stale): it syncs
    // again, and a donor's snapshot completes before the lead is over.
    plan.restart();
    plan.up("b", true, 0, false, false);
    let asked = plan.step(300, true);
    assert_eq!(names(&asked), ["RequestSnapshot(\"b\")"]);
    plan.snapshot_began("b");
    plan.snapshot_applied("b");
    plan.synced("b", 1);
    assert!(
        plan.step(1_000, true).is_empty(),
        "synced, but within the lead"
    );
    assert!(!plan.opened());
    assert_eq!(names(&plan.step(5_000, true)), ["Ready(ClockLead)"]);
    assert!(plan.opened());
}
