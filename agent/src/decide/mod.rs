//! The decide step, the one code path from a snapshot to gated requests: which playbooks are
//! due ([`Decider::plan`]: the interval since the last evaluation, every one after an eBPF
//! wake-up, none while a back-off lasts), their evaluation ([`evaluate`], pure: the snapshot,
//! the history and each playbook's own state), the back-off of a playbook that failed, and the
//! gate's verdict on each request ([`Decider::settle`]). It does no I/O: it takes the time, the
//! mode, the node's policy and limits from its caller and hands back typed [`Event`]s.
//!
//! Four callers drive it, so they cannot disagree: the daemon (which records each event before
//! it counts, and starts what was executed), `medic playbook test` (a case's timeline on a
//! simulated clock), `medic playbook replay` (a recording's timeline) and `medic explain` (what
//! the last evaluation read and asked, [`LastEval`], and what would block a target now).
//!
//! A caller that cannot record an event (the audit log failed) returns an error from its sink:
//! the step stops there, and an `executed` verdict that was not recorded is forgotten by the gate
//! (it never ran), so nothing counts that is not durable.

pub mod explain;
pub mod replay;

use crate::actions::ActionRequest;
use crate::gate::{Decision, Gate, Mode, Verdict};
use crate::playbooks::{api::State, EvalError, Evaluation, Playbook, Runtime};
use crate::signals::history::History;
use crate::signals::Snapshot;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How long a failing playbook is disabled: `first_ms`, doubling per failure in a row, at most
/// `max_ms` (config `playbooks.disable_secs`, `playbooks.max_disable_secs`).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first_ms: i64,
    pub max_ms: i64,
}

impl Backoff {
    /// The back-off after `failures` failures in a row.
    pub fn after(&self, failures: u32) -> i64 {
        self.first_ms.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(self.max_ms)
    }
}

/// What one request became, kept for `medic explain`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Asked {
    pub kind: String,
    pub target: String,
    pub decision: &'static str,
    pub rule: &'static str,
    pub detail: String,
}

/// A playbook's last evaluation: when, what it read (bounded as a request's `signals` are), what
/// it asked and what the gate made of it, or why it failed. Kept per playbook, replaced by the
/// next evaluation, so answering `medic explain` costs nothing until someone asks.
#[derive(Debug, Clone, Default)]
pub struct LastEval {
    pub at_ms: i64,
    pub reads: BTreeMap<String, Value>,
    pub reads_omitted: usize,
    pub requests: Vec<Asked>,
    pub error: Option<String>,
}

/// How much earlier than its interval a playbook is due: a quarter of the interval, at most
/// 250 ms. Ticks come late by a jittering millisecond or so, so `now - last < interval` alone
/// skipped a 1 s playbook about one tick in five (a tick 999 ms after one that was 1 ms late);
/// ticks are a second apart (only an eBPF wake-up, which evaluates everything, comes between),
/// so the slack never makes a playbook run more often than its ticks allow.
pub fn due_slack_ms(interval_ms: i64) -> i64 {
    (interval_ms / 4).clamp(0, 250)
}

/// One loaded playbook and its run-time state.
#[derive(Debug)]
pub struct Slot {
    pub pb: Playbook,
    pub state: State,
    pub last_eval_ms: Option<i64>,
    pub disabled_until: Option<i64>,
    pub failures: u32,
    pub last_error: Option<String>,
    pub last: Option<LastEval>,
}

impl Slot {
    fn new(pb: Playbook) -> Self {
        Self { pb, state: State::default(), last_eval_ms: None, disabled_until: None, failures: 0, last_error: None, last: None }
    }

    /// When it is next evaluated (`None`: at the next tick).
    pub fn next_due_ms(&self) -> Option<i64> {
        let due = self.last_eval_ms.map(|t| t.saturating_add(self.pb.meta.interval_ms - due_slack_ms(self.pb.meta.interval_ms)));
        match (due, self.disabled_until) {
            (Some(d), Some(u)) => Some(d.max(u)),
            (d, u) => d.or(u),
        }
    }
}

/// A playbook due in a tick, with what it evaluates with (owned: it may go to another thread).
#[derive(Debug)]
pub struct Due {
    pub file: String,
    pub pb: Playbook,
    pub state: State,
}

/// One due playbook's evaluation.
#[derive(Debug)]
pub struct Done {
    pub due: Due,
    pub result: Result<Evaluation, EvalError>,
}

/// What the decide step hands back, in order, for the caller to record (and act on).
#[derive(Debug)]
pub enum Event<'a> {
    /// A playbook's back-off ended: it is evaluated again from this tick.
    Enabled { pb: &'a Playbook },
    /// A request and the gate's verdict on it.
    Decided { pb: &'a Playbook, request: ActionRequest, verdict: Verdict },
    /// The playbook failed (an error or a limit of the engine) and is disabled until `until_ms`.
    Disabled { pb: &'a Playbook, error: EvalError, until_ms: i64, failures: u32 },
}

/// Owns the playbook slots and the gate; see the module note.
pub struct Decider {
    rt: Arc<Runtime>,
    /// Keyed by file, so a reload replaces each file's playbook in place.
    slots: BTreeMap<String, Slot>,
    gate: Gate,
    backoff: Backoff,
}

impl Decider {
    pub fn new(rt: Arc<Runtime>, gate: Gate, backoff: Backoff) -> Self {
        Self { rt, slots: BTreeMap::new(), gate, backoff }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    pub fn gate_mut(&mut self) -> &mut Gate {
        &mut self.gate
    }

    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.values()
    }

    pub fn slot(&self, file: &str) -> Option<&Slot> {
        self.slots.get(file)
    }

    pub fn playbook_names(&self) -> Vec<String> {
        self.slots.values().map(|s| s.pb.meta.name.clone()).collect()
    }

    /// Installs a playbook for its file; false when that exact source is already there (its
    /// state and timers are kept). A changed source starts afresh.
    pub fn install(&mut self, pb: Playbook) -> bool {
        if self.slots.get(&pb.file).is_some_and(|s| s.pb.sha256 == pb.sha256) {
            return false;
        }
        self.gate.note_playbook(&pb.meta);
        self.slots.insert(pb.file.clone(), Slot::new(pb));
        true
    }

    /// Unloads the playbook of `file`.
    pub fn remove(&mut self, file: &str) -> Option<Playbook> {
        self.slots.remove(file).map(|s| s.pb)
    }

    /// The files loaded.
    pub fn files(&self) -> Vec<String> {
        self.slots.keys().cloned().collect()
    }

    /// The playbooks due at `now`, and, when the tick was woken early (`wake`: an eBPF event, the
    /// fast disk watch), those that read what woke it (`Playbook::wakes`), re-enabling (through
    /// `sink`) those whose back-off ended. A sink error stops the plan there.
    pub fn plan<E>(
        &mut self,
        now: i64,
        wake: crate::signals::wake::Wake,
        sink: &mut dyn FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<Vec<Due>, E> {
        let mut due = Vec::new();
        for (file, slot) in self.slots.iter_mut() {
            if let Some(until) = slot.disabled_until {
                if now < until {
                    continue;
                }
                slot.disabled_until = None;
                sink(Event::Enabled { pb: &slot.pb })?;
            }
            if !slot.pb.wakes.intersects(wake)
                && slot.last_eval_ms.is_some_and(|t| now - t < slot.pb.meta.interval_ms - due_slack_ms(slot.pb.meta.interval_ms))
            {
                continue;
            }
            slot.last_eval_ms = Some(now);
            due.push(Due { file: file.clone(), pb: slot.pb.clone(), state: slot.state.clone() });
        }
        Ok(due)
    }

    /// Gates each evaluation's requests with `mode` (the mode current *now*, which may differ from
    /// the one when the evaluation started), and disables a playbook that failed. Each event
    /// goes to `sink` before the next is decided; a sink error stops the step there (an
    /// `executed` verdict the sink refused is undone in the gate: it never ran). A playbook
    /// reloaded or unloaded during its evaluation no longer speaks for its file: its requests
    /// are dropped (and returned, by name, to be logged).
    pub fn settle<E>(
        &mut self,
        done: Vec<Done>,
        mode: Mode,
        now: i64,
        sink: &mut dyn FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<Vec<String>, E> {
        let mut dropped = Vec::new();
        for Done { due, result } in done {
            let Some(slot) = self.slots.get_mut(&due.file).filter(|s| s.pb.sha256 == due.pb.sha256) else {
                dropped.push(due.pb.meta.name.clone());
                continue;
            };
            match result {
                Ok(ev) => {
                    slot.failures = 0;
                    slot.last = Some(LastEval {
                        at_ms: now,
                        reads: ev.reads,
                        reads_omitted: ev.reads_omitted,
                        requests: Vec::with_capacity(ev.requests.len()),
                        error: None,
                    });
                    for request in ev.requests {
                        let verdict = self.gate.decide(&slot.pb.meta, &request, mode, now);
                        if let Some(last) = slot.last.as_mut() {
                            last.requests.push(Asked {
                                kind: request.kind.to_string(),
                                target: request.target.clone(),
                                decision: verdict.decision.as_str(),
                                rule: verdict.rule,
                                detail: verdict.detail.clone(),
                            });
                        }
                        let (executed, kind, target) = (verdict.decision == Decision::Executed, request.kind, request.target.clone());
                        if let Err(e) = sink(Event::Decided { pb: &slot.pb, request, verdict }) {
                            if executed {
                                self.gate.finished(kind, &target);
                            }
                            return Err(e);
                        }
                    }
                }
                Err(error) => {
                    slot.failures += 1;
                    slot.last_error = Some(error.to_string());
                    slot.last = Some(LastEval { at_ms: now, error: Some(error.to_string()), ..Default::default() });
                    let until_ms = now + self.backoff.after(slot.failures);
                    slot.disabled_until = Some(until_ms);
                    sink(Event::Disabled { pb: &slot.pb, error, until_ms, failures: slot.failures })?;
                }
            }
        }
        Ok(dropped)
    }
}

/// Due playbooks from which one tick's evaluation is shared with a second thread.
pub const PARALLEL_FROM: usize = 64;
/// Threads one tick's evaluation uses at most (the worker and one helper).
pub const EVAL_THREADS: usize = 2;

/// Evaluates each due playbook on one snapshot and its history (the snapshot already pushed).
/// Runs anywhere (the daemon's worker thread, inline). A panic inside one evaluation is that
/// playbook's error. `timed` is told each playbook's name and seconds taken, in `due`'s order.
/// From [`PARALLEL_FROM`] due playbooks on a machine with more than one core, a second thread
/// (scoped: it ends before this returns) takes playbooks from the same queue; each evaluation
/// is independent (its own state, requests and deadline; the tick's lists and the history's
/// read marks are shared behind locks), and the results come back in `due`'s order, so what
/// is settled, and in which order, is as with one thread.
pub fn evaluate(rt: &Runtime, due: Vec<Due>, snap: &Arc<Snapshot>, history: &Arc<History>, timed: &mut dyn FnMut(&str, f64)) -> Vec<Done> {
    // One tick: the entity lists are built once for all the playbooks.
    let tick = crate::playbooks::api::Tick::new(snap.clone(), history.clone());
    let one = |d: &Due| {
        let t = std::time::Instant::now();
        let run = std::panic::AssertUnwindSafe(|| rt.evaluate_in(&d.pb, &tick, &d.state));
        let result = std::panic::catch_unwind(run).unwrap_or_else(|p| {
            let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
            Err(EvalError { code: "runtime_error", message: format!("{}: evaluation panicked: {}", d.pb.file, what.unwrap_or_default()) })
        });
        (result, t.elapsed().as_secs_f64())
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(EVAL_THREADS);
    let results: Vec<(Result<Evaluation, EvalError>, f64)> = if threads > 1 && due.len() >= PARALLEL_FROM {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || {
            let mut got = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(d) = due.get(i) else { break };
                got.push((i, one(d)));
            }
            got
        };
        let all = std::thread::scope(|s| {
            let helper = std::thread::Builder::new().name("medic-eval-2".into()).spawn_scoped(s, work);
            let mut mine = work();
            // A helper that could not start leaves its share to this thread (the queue is shared).
            if let Ok(h) = helper {
                mine.extend(h.join().unwrap_or_default());
            }
            mine
        });
        let mut slots: Vec<Option<_>> = due.iter().map(|_| None).collect();
        for (i, r) in all {
            if let Some(s) = slots.get_mut(i) {
                *s = Some(r);
            }
        }
        // Nothing is lost even if the helper died: what it took is evaluated again here.
        slots.into_iter().zip(&due).map(|(r, d)| r.unwrap_or_else(|| one(d))).collect()
    } else {
        due.iter().map(one).collect()
    };
    let mut out = Vec::with_capacity(due.len());
    for (d, (result, secs)) in due.into_iter().zip(results) {
        timed(&d.pb.meta.name, secs);
        out.push(Done { due: d, result });
    }
    out
}

/// A simulated timeline's driver: `playbook test` and `playbook replay` push each snapshot here.
/// One tick = push into the history, plan, evaluate, settle in `mode`, exactly as the daemon's
/// tick does, with the snapshot's clock.
pub struct Timeline {
    pub decider: Decider,
    pub history: Arc<History>,
    pub mode: Mode,
}

/// One decision or back-off seen on a timeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decided {
    pub ts_ms: i64,
    pub playbook: String,
    pub kind: String,
    pub target: String,
    pub decision: &'static str,
    pub rule: &'static str,
    pub detail: String,
}

/// What a tick of a timeline produced.
#[derive(Debug, Default)]
pub struct Step {
    pub decisions: Vec<Decided>,
    /// (playbook, error, disabled until)
    pub disabled: Vec<(String, String, i64)>,
    pub enabled: Vec<String>,
    /// The playbooks evaluated in this tick.
    pub evaluated: Vec<String>,
}

impl Timeline {
    /// One tick on `snap` (its `ts_ms` is the clock); `forced`: what woke it early, in the
    /// recording (the playbooks that read it evaluate, due or not).
    pub fn tick(&mut self, snap: Snapshot, forced: crate::signals::wake::Wake) -> Step {
        let now = snap.ts_ms;
        Arc::make_mut(&mut self.history).push(&snap);
        let snap = Arc::new(snap);
        let mut step = Step::default();
        let mut sink = |ev: Event<'_>| -> Result<(), std::convert::Infallible> {
            match ev {
                Event::Enabled { pb } => step.enabled.push(pb.meta.name.clone()),
                Event::Decided { pb, request, verdict } => step.decisions.push(Decided {
                    ts_ms: now,
                    playbook: pb.meta.name.clone(),
                    kind: request.kind.to_string(),
                    target: request.target,
                    decision: verdict.decision.as_str(),
                    rule: verdict.rule,
                    detail: verdict.detail,
                }),
                Event::Disabled { pb, error, until_ms, .. } => step.disabled.push((pb.meta.name.clone(), error.to_string(), until_ms)),
            }
            Ok(())
        };
        let Ok(due) = self.decider.plan(now, forced, &mut sink);
        let evaluated = due.iter().map(|d| d.pb.meta.name.clone()).collect();
        let done = evaluate(&self.decider.rt, due, &snap, &self.history, &mut |_, _| {});
        let Ok(_) = self.decider.settle(done, self.mode, now, &mut sink);
        Step { evaluated, ..step }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::wake::Wake;

    /// Enough due playbooks to share the tick with a second thread: every one evaluated once,
    /// with its own state, and the results (and the timings) in the order they were due.
    #[test]
    fn a_shared_tick_keeps_the_due_order() {
        let rt = Runtime::new(crate::playbooks::engine::Limits::default());
        let n = PARALLEL_FROM * 3;
        let due: Vec<Due> = (0..n)
            .map(|i| {
                // Some slow, some fast, so the two threads interleave.
                let work = if i % 7 == 0 { "let x = 0; for j in 0..2000 { x += j; }" } else { "" };
                let src = format!("const META = #{{ name: \"p{i}\", description: \"d\", interval: \"1s\", actions: [#{{ kind: \"notify\", target: \"*\" }}], rate_limit: #{{ max: 1, per: \"1h\" }}, cooldown: \"1s\" }};\nfn evaluate(node, state) {{ {work} state.set(\"n\", (state.get(\"n\") ?? 0) + 1); notify(\"p{i}\"); }}\n");
                Due { file: format!("p{i}.rhai"), pb: rt.compile(&format!("p{i}.rhai"), &src).unwrap(), state: State::default() }
            })
            .collect();
        let states: Vec<State> = due.iter().map(|d| d.state.clone()).collect();
        let snap = Arc::new(Snapshot::default());
        let mut timed = Vec::new();
        let done = evaluate(&rt, due, &snap, &Arc::new(History::new(600_000, 1000, 100)), &mut |name, _| timed.push(name.to_string()));
        assert_eq!(done.len(), n);
        for (i, d) in done.iter().enumerate() {
            assert_eq!(d.due.pb.meta.name, format!("p{i}"));
            assert_eq!(d.result.as_ref().unwrap().requests[0].target, format!("p{i}"));
            assert_eq!(timed[i], format!("p{i}"));
            assert_eq!(states[i].len(), 1);
        }
    }

    /// A 1 s playbook on 1 s ticks that jitter by a millisecond is evaluated at every tick
    /// (it used to skip the tick that came 999 ms after a late one), and never twice within a
    /// tick's spacing; a 10 s playbook every tenth tick.
    #[test]
    fn jittering_ticks_skip_no_evaluation() {
        let rt = Arc::new(Runtime::new(crate::playbooks::engine::Limits::default()));
        let pb = |name: &str, interval: &str| {
            rt.compile(
                &format!("{name}.rhai"),
                &format!("const META = #{{ name: \"{name}\", description: \"d\", interval: \"{interval}\", actions: [], rate_limit: #{{ max: 1, per: \"1h\" }}, cooldown: \"1s\" }};\nfn evaluate(node, state) {{}}\n"),
            )
            .unwrap()
        };
        let mut d = Decider::new(rt.clone(), Gate::for_fixtures(Default::default()), Backoff { first_ms: 300_000, max_ms: 3_600_000 });
        d.install(pb("fast", "1s"));
        d.install(pb("slow", "10s"));
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for i in 0..100i64 {
            // Late by 0 or 1 ms, alternately: the pattern that skipped.
            let now = 1_000_000 + i * 1000 + (i % 2);
            let due = d.plan::<()>(now, Wake::NONE, &mut |_| Ok(())).unwrap();
            for x in due {
                *counts.entry(x.pb.meta.name.clone()).or_default() += 1;
            }
        }
        assert_eq!(counts["fast"], 100, "{counts:?}");
        assert_eq!(counts["slow"], 10, "{counts:?}");
        // A tick half a second after an evaluation (no wake-up) does not evaluate again.
        let due = d.plan::<()>(1_000_000 + 99 * 1000 + 500, Wake::NONE, &mut |_| Ok(())).unwrap();
        assert!(due.is_empty(), "{:?}", due.iter().map(|x| &x.pb.meta.name).collect::<Vec<_>>());
    }
}
