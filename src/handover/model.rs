//! The model test of the handover: the real marker, gate and protocol code
//! on the in-memory store, driven by an abstract run and an abstract live
//! applier through every interleaving of small schedules (two live
//! changes; a stop of the applier, a storage error, a lost answer, the
//! run's lease expiring, the run dying, at any step; the run sealing with
//! or without the applier's pause, as after a pause timeout), checking
//! after every step the promise: every change acked is in the generation
//! the readers are served.
//!
//! The same schedules under `legacy` follow the protocol as it was before
//! this module (a stop while paused writes, a failed lease read skips the
//! journal, nothing fences a journal append after the final replay): the
//! review's three cases are named schedules that break the promise there
//! and keep it here, and the exhaustive search finds a counterexample in
//! the legacy protocol (so the checker can fail).

// Each arm of the run's steps reads as "try this; if it answered, move on":
// folding the tries into match guards would hide them.
#![allow(clippy::collapsible_match)]

use std::collections::HashSet;

use futures::executor::block_on;

use super::gate::{Gate, LeaseView};
use super::marker::Phase;
use super::memory::{MemState, MemStore};
use super::protocol::{Handover, HandoverError, Sealed};
use super::store::{HandoverStore, NewEntry};

const CHANGES: u8 = 2;
const RUN: &str = "r1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Applier {
    Idle,
    Gating { first: u8, last: u8 },
    Writing { first: u8, last: u8, journal: bool },
    Journaling { first: u8, last: u8, token: u8 },
    Acking { last: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Run {
    NotStarted,
    Begun,
    Snapshotted,
    PauseAsked,
    Sealed(Sealed),
    Awaited(i64),
    Replayed,
    Swapped,
    Failed,
    Ended,
    Crashed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Occur,
    Collect(u8),
    Apply,
    StopApplier,
    Advance(u8),
    Blip,
    LoseAnswer,
    ExpireRunLease,
    CrashRun,
}

const STEPS: &[Step] = &[
    Step::Occur,
    Step::Collect(1),
    Step::Collect(2),
    Step::Apply,
    Step::StopApplier,
    Step::Advance(0),
    Step::Advance(1),
    Step::Blip,
    Step::LoseAnswer,
    Step::ExpireRunLease,
    Step::CrashRun,
];

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    store: MemState,
    /// Changes `0..occurred` exist in the sources.
    occurred: u8,
    /// The applier has read `0..read`, acked `0..acked` (in order).
    read: u8,
    acked: u8,
    /// Bit masks of the changes in each generation.
    old: u8,
    new: u8,
    served_new: bool,
    applier: Applier,
    run: Run,
    replayed: i64,
    rounds: u8,
    tokens: u8,
    /// Fault budgets.
    stops: u8,
    blips: u8,
    lost_answers: u8,
    expiries: u8,
    crashes: u8,
    legacy: bool,
}

fn mask(first: u8, last: u8) -> u8 {
    (first..=last).fold(0, |m, c| m | (1 << c))
}

impl World {
    fn new(legacy: bool) -> Self {
        World {
            store: MemState {
                rebuild_lease: Some(LeaseView {
                    run_id: RUN.into(),
                    expired: false,
                }),
                ..MemState::default()
            },
            occurred: 0,
            read: 0,
            acked: 0,
            old: 0,
            new: 0,
            served_new: false,
            applier: Applier::Idle,
            run: Run::NotStarted,
            replayed: 0,
            rounds: 0,
            tokens: 0,
            stops: 1,
            blips: 1,
            lost_answers: 1,
            expiries: 1,
            crashes: 1,
            legacy,
        }
    }

    /// Runs `op` on the protocol over this world's store.
    fn with_store<T>(&mut self, op: impl FnOnce(&Handover<MemStore>) -> T) -> T {
        let handover = Handover::new(MemStore::new(self.store.clone()));
        let out = op(&handover);
        self.store = handover_state(handover);
        out
    }

    fn served(&self) -> u8 {
        if self.served_new {
            self.new
        } else {
            self.old
        }
    }

    /// The promise: every change acked is served.
    fn violation(&self) -> Option<String> {
        let acked = if self.acked == 0 {
            0
        } else {
            mask(0, self.acked - 1)
        };
        let lost = acked & !self.served();
        (lost != 0).then(|| format!("acked changes {lost:#b} are not served: {self:?}"))
    }

    fn restart_applier(&mut self) {
        self.applier = Applier::Idle;
        self.read = self.acked;
    }

    fn replay(&mut self, through: i64) -> bool {
        let replayed = self.replayed;
        match self.with_store(|h| block_on(h.entries(RUN, replayed, through, 100))) {
            Ok(entries) => {
                for e in &entries {
                    let c: u8 = e.number.parse().unwrap_or(0);
                    self.new |= 1 << c;
                }
                self.replayed = match entries.last() {
                    _ if through != i64::MAX => through,
                    Some(last) => last.seq,
                    None => replayed,
                };
                true
            }
            Err(_) => false,
        }
    }

    /// Takes `step` if it can be taken now; false if not.
    fn take(&mut self, step: Step) -> bool {
        let before = self.clone();
        match step {
            Step::Occur if self.occurred < CHANGES => self.occurred += 1,
            Step::Collect(n) if self.applier == Applier::Idle && self.read + n <= self.occurred => {
                self.applier = Applier::Gating {
                    first: self.read,
                    last: self.read + n - 1,
                };
                self.read += n;
            }
            Step::Apply => self.apply(),
            Step::StopApplier if self.stops > 0 && self.applier != Applier::Idle => {
                self.stops -= 1;
                let paused = matches!(
                    self.store.marker.phase,
                    Phase::PauseRequested | Phase::Paused | Phase::Sealed
                );
                match self.applier {
                    // Before: a stop while paused let the batch through.
                    Applier::Gating { first, last } if self.legacy && paused => {
                        self.applier = Applier::Writing {
                            first,
                            last,
                            journal: true,
                        }
                    }
                    _ => self.restart_applier(),
                }
            }
            Step::Advance(choice) => self.run_step(choice),
            Step::Blip if self.blips > 0 && !self.store.fail_next => {
                self.blips -= 1;
                self.store.fail_next = true;
            }
            Step::LoseAnswer if self.lost_answers > 0 && !self.store.lose_next_answer => {
                self.lost_answers -= 1;
                self.store.lose_next_answer = true;
            }
            Step::ExpireRunLease if self.expiries > 0 && self.run_in_progress() => {
                self.expiries -= 1;
                if let Some(l) = &mut self.store.rebuild_lease {
                    l.expired = true;
                }
            }
            Step::CrashRun if self.crashes > 0 && self.run_in_progress() => {
                self.crashes -= 1;
                self.run = Run::Crashed;
                self.store.rebuild_lease = None;
            }
            _ => return false,
        }
        *self != before
    }

    fn run_in_progress(&self) -> bool {
        !matches!(
            self.run,
            Run::NotStarted | Run::Ended | Run::Crashed | Run::Failed | Run::Swapped
        )
    }

    fn apply(&mut self) {
        match self.applier {
            Applier::Idle => {}
            Applier::Gating { first, last } => {
                let gate = if self.legacy {
                    self.legacy_gate()
                } else {
                    self.with_store(|h| block_on(h.gate(false, None)))
                };
                match gate {
                    Gate::Write { journal_for } => {
                        self.applier = Applier::Writing {
                            first,
                            last,
                            journal: journal_for.is_some() || self.legacy,
                        }
                    }
                    Gate::Pause {
                        run_id,
                        acknowledge: true,
                    } => {
                        let _ = self.with_store(|h| block_on(h.acknowledge_pause(&run_id)));
                    }
                    Gate::Abandon { run_id } => {
                        let _ = self.with_store(|h| block_on(h.abandon(&run_id)));
                    }
                    Gate::Pause { .. } | Gate::Hold { .. } => {}
                    Gate::Stop { .. } => self.restart_applier(),
                }
            }
            Applier::Writing {
                first,
                last,
                journal,
            } => {
                if self.served_new {
                    self.new |= mask(first, last);
                } else {
                    self.old |= mask(first, last);
                }
                self.applier = if journal {
                    self.tokens += 1;
                    Applier::Journaling {
                        first,
                        last,
                        token: self.tokens,
                    }
                } else {
                    Applier::Acking { last }
                };
            }
            Applier::Journaling { first, last, token } => {
                if self.legacy {
                    return self.legacy_journal(first, last);
                }
                let entries = entries(first, last);
                let token = format!("t{token}");
                match self.with_store(|h| block_on(h.journal(RUN, &token, &entries))) {
                    Ok(_) => self.applier = Applier::Acking { last },
                    Err(e) if e.is_answer() => self.restart_applier(),
                    Err(_) => {}
                }
            }
            Applier::Acking { last } => {
                self.acked = last + 1;
                self.applier = Applier::Idle;
            }
        }
    }

    /// The pause as the applier honoured it before: a marker it could not
    /// read, or a run it could not see alive, let the batch through.
    fn legacy_gate(&mut self) -> Gate {
        let marker = self.with_store(|h| block_on(h.marker()));
        let lease = self.with_store(|h| block_on(h.store().lease(super::REBUILD_LEASE)));
        match (marker, lease) {
            (Ok(m), Ok(Some(l)))
                if !l.expired
                    && l.run_id == m.run_id
                    && matches!(m.phase, Phase::PauseRequested | Phase::Paused) =>
            {
                Gate::Pause {
                    run_id: m.run_id.clone(),
                    acknowledge: m.phase == Phase::PauseRequested,
                }
            }
            _ => Gate::Write { journal_for: None },
        }
    }

    /// The journal as it was: the marker read until it answers, the run
    /// taken for dead when its lease cannot be read, and an append that
    /// nothing fences.
    fn legacy_journal(&mut self, first: u8, last: u8) {
        let m = self.store.marker.clone();
        let alive = match self.with_store(|h| block_on(h.store().lease(super::REBUILD_LEASE))) {
            Ok(Some(l)) => !l.expired && l.run_id == m.run_id,
            _ => false,
        };
        if matches!(m.phase, Phase::Recording | Phase::PauseRequested) && alive {
            for c in first..=last {
                self.store.marker.seq += 1;
                self.store.entries.insert(
                    self.store.marker.seq,
                    super::memory::MemEntry {
                        run: RUN.into(),
                        token: String::new(),
                        change: Some(c.to_string()),
                    },
                );
            }
        }
        self.applier = Applier::Acking { last };
    }

    fn run_step(&mut self, choice: u8) {
        match (self.run, choice) {
            (Run::NotStarted, 0) => {
                if self.with_store(|h| block_on(h.begin(RUN))).is_ok() {
                    self.run = Run::Begun;
                }
            }
            (Run::Begun, 0) => {
                // The sources are read after the marker records.
                self.new |= if self.occurred == 0 {
                    0
                } else {
                    mask(0, self.occurred - 1)
                };
                self.run = Run::Snapshotted;
            }
            (Run::Snapshotted, 1) if self.rounds == 0 => {
                if self.replay(i64::MAX) {
                    self.rounds += 1;
                }
            }
            (Run::Snapshotted, 0) => match self.with_store(|h| block_on(h.request_pause(RUN))) {
                Ok(()) => self.run = Run::PauseAsked,
                Err(e) if e.is_answer() => self.run = Run::Failed,
                Err(_) => {}
            },
            // Sealing needs no acknowledged pause: a pause that times out,
            // or an applier whose lease expired, is covered by the fence.
            (Run::PauseAsked, 0) if self.legacy => {
                let seq = self.store.marker.seq;
                self.run = Run::Sealed(Sealed {
                    since: 0,
                    through: seq,
                });
            }
            (Run::PauseAsked, 0) => match self.with_store(|h| block_on(h.seal(RUN))) {
                Ok(sealed) => self.run = Run::Sealed(sealed),
                Err(e) if e.is_answer() => self.run = Run::Failed,
                Err(_) => {}
            },
            (Run::Sealed(_), 0) if self.legacy => self.run = Run::Awaited(i64::MAX),
            (Run::Sealed(s), 0) => {
                let present = self
                    .with_store(|h| block_on(h.store().count_entries(RUN, s.since, s.through)))
                    .ok();
                if present == Some((s.through - s.since) as u64) {
                    self.run = Run::Awaited(s.through);
                }
            }
            (Run::Sealed(s), 1) if !self.legacy => {
                let voided =
                    self.with_store(|h| block_on(h.store().void_missing(RUN, s.since, s.through)));
                if voided.is_ok() {
                    self.run = Run::Awaited(s.through);
                }
            }
            (Run::Awaited(through), 0) => {
                if self.replay(through) {
                    self.run = Run::Replayed;
                }
            }
            (Run::Replayed, 0) => {
                // Confirm the lease (a renewal brings back an expired one
                // still ours), then the marker, then move the aliases.
                if let Some(l) = &mut self.store.rebuild_lease {
                    l.expired = false;
                }
                let sealed = self.legacy
                    || matches!(
                        self.with_store(|h| block_on(h.marker())),
                        Ok(m) if m.phase == Phase::Sealed && m.run_id == RUN
                    );
                if sealed {
                    self.served_new = true;
                    self.run = Run::Swapped;
                } else {
                    self.run = Run::Failed;
                }
            }
            (Run::Swapped | Run::Failed, 0) => {
                if self.with_store(|h| block_on(h.end(RUN))).is_ok() {
                    self.run = Run::Ended;
                    self.store.rebuild_lease = None;
                }
            }
            _ => {}
        }
    }
}

fn handover_state(handover: Handover<MemStore>) -> MemState {
    handover.into_store().into_state()
}

fn entries(first: u8, last: u8) -> Vec<NewEntry> {
    (first..=last)
        .map(|c| NewEntry {
            kind: "tcs",
            number: c.to_string(),
            payload: bson::Bson::Null,
        })
        .collect()
}

/// Every state reachable from `start`; the first violation found, if any,
/// and how many states and finished schedules were seen.
fn explore(start: World) -> (Option<String>, usize, usize, usize) {
    let mut seen = HashSet::new();
    let mut stack = vec![start.clone()];
    seen.insert(start);
    let mut finished = 0;
    let mut swapped = 0;
    while let Some(world) = stack.pop() {
        let mut moved = false;
        for step in STEPS {
            let mut next = world.clone();
            if !next.take(*step) {
                continue;
            }
            moved = true;
            if let Some(v) = next.violation() {
                return (
                    Some(format!("after {step:?}: {v}")),
                    seen.len(),
                    finished,
                    swapped,
                );
            }
            if seen.insert(next.clone()) {
                stack.push(next);
            }
        }
        if !moved {
            finished += 1;
            swapped += usize::from(world.served_new);
            // Quiet: the run is over and the applier has everything.
            let all = mask(0, CHANGES - 1);
            if matches!(world.run, Run::Ended | Run::Crashed) && world.acked == CHANGES {
                assert_eq!(
                    world.served() & all,
                    all,
                    "a finished schedule lost a change: {world:?}"
                );
            }
        }
    }
    (None, seen.len(), finished, swapped)
}

/// Plays `steps` (those not possible at their turn are skipped); the first
/// violation, if any.
fn play(legacy: bool, steps: &[Step]) -> Option<String> {
    let mut world = World::new(legacy);
    for step in steps {
        world.take(*step);
        if let Some(v) = world.violation() {
            return Some(format!("after {step:?}: {v}"));
        }
    }
    None
}

use Step::*;

const BEGIN: Step = Advance(0);

#[test]
fn every_interleaving_keeps_every_acked_change() {
    let (violation, states, finished, swapped) = explore(World::new(false));
    assert_eq!(violation, None);
    assert!(states > 10_000, "the search covered {states} states");
    assert!(
        swapped > 0 && swapped < finished,
        "schedules end swapped and not: {swapped} of {finished}"
    );
    eprintln!("handover model: {states} states, {finished} finished schedules ({swapped} swapped), no acked change lost");
}

#[test]
fn the_checker_finds_the_legacy_protocol_losing_changes() {
    let (violation, _, _, _) = explore(World::new(true));
    assert!(
        violation.is_some(),
        "the legacy protocol must lose a change somewhere"
    );
}

#[test]
fn case_1_an_applier_stopped_while_paused_writes_nothing() {
    let steps = [
        BEGIN,
        Advance(0),
        Occur,
        Advance(0),
        Collect(1),
        Apply, // gate: acknowledge the pause
        StopApplier,
        Apply,
        Apply,
        Apply, // legacy: write, skip the journal, ack
        Advance(0),
        Advance(0),
        Advance(0),
        Advance(0), // seal, await, replay, swap
    ];
    assert!(play(true, &steps).is_some(), "the legacy protocol loses it");
    assert_eq!(play(false, &steps), None);
}

#[test]
fn case_2_a_mongodb_blip_at_the_lease_does_not_skip_the_journal() {
    let steps = [
        BEGIN,
        Advance(0),
        Occur,
        Collect(1),
        Apply,
        Apply, // gate, write
        Blip,
        Apply,
        Apply, // legacy: the lease unreadable, no journal, ack
        Advance(0),
        Advance(0),
        Advance(0),
        Advance(0),
        Advance(0), // pause, seal, await, replay, swap
    ];
    assert!(play(true, &steps).is_some(), "the legacy protocol loses it");
    assert_eq!(play(false, &steps), None);
}

#[test]
fn case_3_a_batch_in_flight_when_the_run_seals_is_not_acked() {
    let steps = [
        BEGIN,
        Advance(0),
        Occur,
        Collect(1),
        Apply, // gate: write, journal for r1
        Advance(0),
        Advance(0),
        Advance(0),
        Advance(0), // pause, seal (no wait), await, replay
        Apply,
        Apply,
        Apply,      // write to the old generation, journal, ack
        Advance(0), // swap
    ];
    assert!(play(true, &steps).is_some(), "the legacy protocol loses it");
    assert_eq!(play(false, &steps), None);
}

#[test]
fn a_lost_answer_to_a_reservation_reserves_nothing_twice() {
    let mut world = World::new(false);
    for step in [
        BEGIN,
        Advance(0),
        Occur,
        Collect(1),
        Apply,
        Apply,
        LoseAnswer,
        Apply,
        Apply,
        Apply,
    ] {
        world.take(step);
    }
    assert_eq!(world.acked, 1);
    assert_eq!(world.store.marker.seq, 1, "one reservation for one change");
    assert_eq!(world.store.entries.len(), 1);
}

#[test]
fn a_store_error_mid_journal_is_retried_not_acked() {
    let handover = Handover::new(MemStore::new(MemState::default()));
    block_on(handover.begin(RUN)).unwrap();
    handover.store().0.lock().unwrap().fail_next = true;
    let e = block_on(handover.journal(RUN, "t", &entries(0, 0))).unwrap_err();
    assert!(matches!(e, HandoverError::Storage(_)) && !e.is_answer());
    block_on(handover.journal(RUN, "t", &entries(0, 0))).unwrap();
    assert_eq!(
        block_on(handover.store().count_entries(RUN, 0, 10)).ok(),
        Some(1)
    );
}
