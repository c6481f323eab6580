//! The runs: many random schedules of three and of five members, the quirks' seeds, a replay
//! with a full trace, and check quorum on a fixed schedule.

use super::*;

/// Runs one schedule; on a violation, replays it with a trace and returns the report.
fn run_schedule(members: usize, seed: u64, quirks: Quirks) -> Result<Stats, String> {
    let params = Params::new(members, seed, quirks);
    match Sim::new(params, seed, false).run() {
        Ok(stats) => Ok(stats),
        Err(violation) => {
            let mut sim = Sim::new(params, seed, true);
            let again = sim.run();
            let trace = sim.trace.take().unwrap_or_default();
            let tail = trace.len().saturating_sub(400);
            let mut report = format!(
                "{members} members, {:?} sync, seed {seed}: {violation}\n\
                 (replay: set REPLAY to Some(({members}, {seed})) in src/ha/sim/mod.rs, or run \
                 MESHMQ_SIM_REPLAY={members}:{seed} cargo test --profile ci --lib \
                 ha::sim::tests::replay -- --nocapture)\n",
                params.sync
            );
            if quirks != Quirks::NONE {
                let _ = writeln!(report, "with {quirks:?} (MESHMQ_SIM_QUIRKS)");
            }
            if again.as_ref().err() != Some(&violation) {
                let _ = writeln!(report, "the replay differs: {again:?}");
            }
            for line in &trace[tail..] {
                let _ = writeln!(report, "{line}");
            }
            Err(report)
        }
    }
}

/// Runs `count` schedules from seed `first` (both overridable with `MESHMQ_SIM_SCHEDULES` and
/// `MESHMQ_SIM_FIRST_SEED` for a longer soak).
fn run_many(members: usize, count: u64) {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let count = env("MESHMQ_SIM_SCHEDULES", count);
    let first = env("MESHMQ_SIM_FIRST_SEED", 0);
    let quirks = Quirks::from_env();
    let mut total = Stats::default();
    let seeds = REGRESSIONS
        .iter()
        .filter(|&&(n, _)| n == members)
        .map(|&(_, s)| s)
        .chain(first..first + count);
    for seed in seeds {
        match run_schedule(members, seed, quirks) {
            Ok(s) => {
                total.events += s.events;
                total.lost_records += s.lost_records;
                total.excused += s.excused;
                total.epochs += s.epochs;
                total.receipts += s.receipts;
                total.faults += s.faults;
            }
            Err(report) => panic!("{report}"),
        }
    }
    eprintln!("{members} members, {count} schedules: {total:?}");
}

#[test]
fn three_members_never_commit_twice_nor_lose_a_receipted_write() {
    if REPLAY.is_none() {
        run_many(3, 3000);
    }
}

#[test]
fn five_members_never_commit_twice_nor_lose_a_receipted_write() {
    if REPLAY.is_none() {
        run_many(5, 1000);
    }
}

/// The checks are not blind to the mistakes they exist for: each quirk loses a receipted write.
/// (A follower counted twice — the old `count_sessions` quirk — is now the real master
/// machine's business: `ha::replication::machine` tests that one member is one replica.)
#[test]
fn a_follow_after_a_lost_publish_or_a_wiped_journal_loses_writes() {
    for &(quirks, members, seed) in QUIRK_SEEDS {
        let result = Sim::new(Params::new(members, seed, quirks), seed, false).run();
        match result {
            Err(violation) if violation.contains("receipted write") => {}
            other => panic!(
                "{quirks:?}, {members} members, seed {seed}: expected a lost receipted write, \
                 got {other:?} (find a new seed: see QUIRK_SEEDS)"
            ),
        }
    }
}

/// Replays `REPLAY`, or `MESHMQ_SIM_REPLAY=<members>:<seed>`, printing the whole trace (with
/// the quirks in `MESHMQ_SIM_QUIRKS`).
#[test]
fn replay_one_schedule() {
    let from_env = std::env::var("MESHMQ_SIM_REPLAY").ok().and_then(|v| {
        let (members, seed) = v.split_once(':')?;
        Some((members.parse().ok()?, seed.parse().ok()?))
    });
    if let Some((members, seed)) = from_env.or(REPLAY) {
        let mut sim = Sim::new(Params::new(members, seed, Quirks::from_env()), seed, true);
        let result = sim.run();
        for line in sim.trace.take().unwrap_or_default() {
            eprintln!("{line}");
        }
        if let Err(violation) = result {
            panic!("{members} members, seed {seed}: {violation}");
        }
    }
}

/// Check quorum on a fixed schedule, with no other fault: once the group serves, its master is
/// cut from every other member but not from ZooKeeper, for 15 s. A member the others reach is
/// elected and receipts within a session timeout of the old master's check quorum (it
/// stepped down, withdrew, and the others elected without it); the invariants checked as
/// events happen hold (never two committers of one epoch, no receipted write lost); after the
/// heal the old master follows the new one, and the group settles with every receipted write.
#[test]
fn a_master_cut_from_its_followers_but_not_zookeeper_gives_way_to_one_they_reach() {
    for members in [3, 5] {
        let mut worst = 0;
        for seed in 0..20 {
            let p = Params {
                chaos: 0,
                settle: 80_000 * MS,
                fault_every: Time::MAX / 4,
                ..Params::new(members, seed, Quirks::NONE)
            };
            let bound = p.quorum_timeout.max(2 * p.session_timeout) + p.session_timeout;
            let mut sim = Sim::new(p, seed, false);
            let run = |sim: &mut Sim| -> Result<(usize, Time), String> {
                sim.begin();
                sim.run_until(10_000 * MS)?;
                let old = (0..members)
                    .find(|&m| {
                        sim.members[m]
                            .node
                            .as_ref()
                            .is_some_and(|n| n.term.is_some())
                    })
                    .ok_or("no master after 10 s")?;
                let old_epoch = sim.zk.epoch;
                for o in (0..members).filter(|&o| o != old) {
                    sim.fault(Fault::CutPeers(old, o))?;
                }
                let cut = sim.now;
                sim.run_until(cut + 15_000 * MS)?;
                let first = sim
                    .receipts
                    .iter()
                    .filter(|r| r.epoch > old_epoch)
                    .map(|r| r.at)
                    .min()
                    .ok_or("no receipt in a newer epoch during the cut")?;
                for o in (0..members).filter(|&o| o != old) {
                    sim.fault(Fault::HealPeers(old, o))?;
                }
                sim.run_until(p.chaos + p.settle)?;
                sim.check_settled()?;
                let role = sim.members[old]
                    .node
                    .as_ref()
                    .map(|n| n.machine.role().clone());
                if !matches!(role, Some(ElectionRole::Following { .. })) {
                    return Err(format!(
                        "the old master m{old} does not follow after the heal: {role:?}"
                    ));
                }
                Ok((old, first - cut))
            };
            match run(&mut sim) {
                Ok((old, took)) => {
                    worst = worst.max(took);
                    assert!(
                    took <= bound,
                    "{members} members, seed {seed}: m{old} cut at 10 s, the first receipt of a \
                     newer epoch came {} ms later, past {} ms",
                    took / MS,
                    bound / MS
                    )
                }
                Err(e) => panic!("{members} members, seed {seed}: {e}"),
            }
        }
        eprintln!(
            "{members} members: the first receipt of a newer epoch came at most {} ms after the cut",
            worst / MS
        );
    }
}
