//! SWIM membership (src/cluster/membership) in the deterministic simulator: N instances,
//! virtual time, seeded randomness, datagram loss and partitions. Every node joins through
//! `node-0` alone, so each test also checks that joining through one member reaches all.

use meshcached::cluster::membership::sim::{node_name, World};
use meshcached::cluster::membership::{config_for, detection_bound, MemberEvent, Verdict};

const SEEDS: [u64; 4] = [1, 7, 42, 2026];

fn converged_world(n: usize, seed: u64) -> World {
    let mut w = World::new(n, seed);
    let took = w.run_until_true(30_000, World::converged);
    assert!(
        took.is_some(),
        "seed {seed}: {n} nodes never formed one membership"
    );
    w
}

fn bound_ms(n: usize) -> u64 {
    detection_bound(n).as_millis() as u64
}

fn logged(w: &World, observer: &str, subject: &str, verdict: Verdict) -> bool {
    w.log.iter().any(|(_, o, e)| {
        o == observer
            && matches!(e, MemberEvent::Verdict { id, verdict: v } if id.name == subject && *v == verdict)
    })
}

#[test]
fn a_killed_member_is_suspected_then_declared_down_within_the_bound() {
    for seed in SEEDS {
        let mut w = converged_world(5, seed);
        let victim = node_name(3);
        w.kill(&victim);
        let took = w.run_until_true(bound_ms(5), |w| w.all_see(&victim, Verdict::Down));
        assert!(
            took.is_some(),
            "seed {seed}: not down everywhere within {:?}",
            detection_bound(5)
        );
        // Someone suspected it before it was declared down (no verdict without suspicion).
        let suspected = w
            .alive_names()
            .iter()
            .any(|o| logged(&w, o, &victim, Verdict::Suspect));
        assert!(
            suspected,
            "seed {seed}: declared down without being suspected"
        );
        for o in w.alive_names() {
            assert!(
                !logged(&w, &o, &victim, Verdict::Left),
                "seed {seed}: a kill is not a leave"
            );
        }
    }
}

#[test]
fn under_five_percent_loss_no_live_member_is_declared_down() {
    for (n, seed) in [3, 8].into_iter().flat_map(|n| SEEDS.map(|s| (n, s))) {
        let mut w = converged_world(n, seed);
        w.loss_ppm = 50_000;
        let from = w.log.len();
        w.run_for(10 * 60 * 1000);
        let false_downs: Vec<_> = w.log[from..]
            .iter()
            .filter(|(_, _, e)| {
                matches!(
                    e,
                    MemberEvent::Verdict {
                        verdict: Verdict::Down | Verdict::Left,
                        ..
                    }
                )
            })
            .collect();
        assert!(
            false_downs.is_empty(),
            "seed {seed}: live members declared down: {false_downs:?}"
        );
        assert!(w.converged(), "seed {seed}");
    }
}

#[test]
fn a_leave_reaches_every_member_within_a_few_periods() {
    for seed in SEEDS {
        let mut w = converged_world(8, seed);
        let leaver = node_name(5);
        w.leave(&leaver);
        let periods = config_for(8).probe_period.as_millis() as u64 * 4;
        let took = w.run_until_true(periods, |w| w.all_see(&leaver, Verdict::Left));
        assert!(
            took.is_some(),
            "seed {seed}: the leave did not reach everyone in 4 periods"
        );
        w.kill(&leaver);
        // Still left, not down, once it is gone for good.
        w.run_for(bound_ms(8));
        assert!(w.all_see(&leaver, Verdict::Left), "seed {seed}");
    }
}

#[test]
fn a_restart_is_seen_as_a_rename_to_the_newer_run() {
    for seed in SEEDS {
        let mut w = converged_world(5, seed);
        let node = node_name(2);
        let old_run = w.membership(&node).unwrap().id().run;
        w.kill(&node);
        w.run_for(500);
        w.restart(&node);
        let took = w.run_until_true(30_000, World::converged);
        assert!(
            took.is_some(),
            "seed {seed}: the restarted node never rejoined"
        );
        for o in w.alive_names().into_iter().filter(|o| *o != node) {
            let renamed = w.log.iter().any(|(_, obs, e)| {
                obs == &o
                    && matches!(e, MemberEvent::Renamed { old, new } if new.name == node && old.run == old_run && new.run > old_run && new.process != old.process)
            });
            assert!(
                renamed,
                "seed {seed}: {o} did not see {node}'s restart as a rename"
            );
        }
    }
}

#[test]
fn a_partition_heals_back_into_one_membership() {
    for seed in SEEDS {
        let mut w = converged_world(6, seed);
        let side: Vec<String> = (0..3).map(node_name).collect();
        w.partition(&side);
        let split = w.run_until_true(3 * bound_ms(6), |w| {
            w.verdict(&node_name(0), &node_name(4)) == Some(Verdict::Down)
                && w.verdict(&node_name(4), &node_name(0)) == Some(Verdict::Down)
        });
        assert!(
            split.is_some(),
            "seed {seed}: the partition was never noticed"
        );
        w.heal();
        // Each side has declared the other down: it takes an announce to a down member
        // (every 10 s), that member's "you are down" answer, a renewed run and its spread,
        // in both directions (60.6 s for seed 2026).
        let healed = w.run_until_true(120_000, World::converged);
        assert!(
            healed.is_some(),
            "seed {seed}: the partition did not heal into one membership"
        );
    }
}

#[test]
fn a_node_that_lost_every_member_announces_to_its_seeds_again() {
    for seed in SEEDS {
        let mut w = converged_world(3, seed);
        let lonely = node_name(2);
        w.partition(std::slice::from_ref(&lonely));
        let idle = w.run_until_true(3 * bound_ms(3), |w| {
            w.membership(&lonely).unwrap().live_members() == 0
        });
        assert!(
            idle.is_some(),
            "seed {seed}: the cut-off node never noticed"
        );
        w.heal();
        let back = w.run_until_true(30_000, World::converged);
        assert!(
            back.is_some(),
            "seed {seed}: the cut-off node never came back"
        );
    }
}
