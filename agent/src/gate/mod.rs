//! The gate: the single place that decides what becomes of an action request. Rules run in a
//! fixed order and the first that decides names itself in the audit record (`rule`):
//!
//! 1. **mode** (node, then playbook): a playbook's forced dry-run wins over a live node. The
//!    mode decides whether a request that passes every rule below runs (`executed`) or only
//!    would run (`would_execute`); the record's `mode` is this effective mode.
//! 2. **manifest**: outside the playbook's capability manifest → `denied`.
//! 3. **policy**: protected things (PID 1, medic itself, ssh, logind, journald, dbus, and what
//!    the config lists; a process by its executable and cgroup, never its name: [`protect`])
//!    and the node's allowlists (units, paths, commands) → `denied`. Each kind's own check
//!    (`actions::<kind>::policy_check`) decides, reading a view of the node policy.
//! 4. **maintenance**: outside the playbook's active hours (`META.active`; every kind), or
//!    inside one of the operator's `[[maintenance]]` windows that covers the playbook and kind
//!    (by default every kind but `notify`) → `suppressed`, naming the window and when it ends
//!    ([`maintenance`]). In dry-run too, so dry-run shows what live would do. It uses up no
//!    limit: nothing is noted in the ledgers.
//! 5. **limits**: `cooldown` per (playbook, action, target), `rate_limit` per (playbook,
//!    target) and window, the node-wide hourly `budget`, one action `in_flight` per target, and
//!    a cap on `concurrency` → `suppressed`.
//! 6. **breaker**: the same action on the same target ran `breaker_after` times within the
//!    window and the playbook still asks → `escalated`, and every later request for it is
//!    `suppressed` (`breaker_open`) until an operator resets it. A playbook's own `breaker`
//!    (META) tightens the node's: the smaller `after`, the longer window.
//!
//! Live and dry-run keep separate ledgers, so a dry-run period never uses up a live budget,
//! and dry-run still shows what live mode would do. Time comes from the caller (the snapshot's
//! clock). The ledgers are rebuilt from the audit log at start ([`Gate::replay`]): a restart
//! never refills a budget, resets a cooldown or closes a breaker.
//!
//! The ledgers forget what can no longer decide anything ([`Gate::prune`], run from `decide` at
//! most every [`PRUNE_EVERY_MS`]): a run older than its playbook's longest window (cooldown, rate
//! window), the hourly budget's hour and the breaker window is dropped, and a key with nothing
//! left goes. An open breaker is never forgotten. So a flood of unique targets costs memory for
//! one window, not forever.

use crate::actions::{self, ActionKind, ActionRequest};
use crate::config::PolicyConfig;
use crate::playbooks::meta::{BreakerSpec, Meta};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;

/// The node's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    #[serde(rename = "dry-run")]
    DryRun,
    #[serde(rename = "live")]
    Live,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DryRun => "dry-run",
            Self::Live => "live",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "dry-run" => Some(Self::DryRun),
            "live" => Some(Self::Live),
            _ => None,
        }
    }
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Executed,
    WouldExecute,
    Suppressed,
    Denied,
    Escalated,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::WouldExecute => "would_execute",
            Self::Suppressed => "suppressed",
            Self::Denied => "denied",
            Self::Escalated => "escalated",
        }
    }
}

/// A decision, the rule that made it, the effective mode, and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub decision: Decision,
    pub rule: &'static str,
    pub mode: Mode,
    pub detail: String,
}

pub mod explain;
pub mod maintenance;
/// What a process is, for the protected rule: now beside the kinds that check it.
pub use crate::actions::protect;

/// Units no playbook may restart and whose processes are never signalled (see [`protect`]).
pub use protect::PROTECTED_UNITS;

/// A breaker's key: (playbook, action, target).
pub type BreakerKey = (String, ActionKind, String);

#[derive(Debug, Default, Clone)]
struct Breaker {
    runs: VecDeque<i64>,
    open_since: Option<i64>,
}

/// Cooldown, rate-limit, budget and breaker memory of one mode.
#[derive(Debug, Default)]
struct Ledger {
    last_run: HashMap<BreakerKey, i64>,
    runs: HashMap<(String, String), VecDeque<i64>>,
    budget: VecDeque<i64>,
    breakers: HashMap<BreakerKey, Breaker>,
}

const HOUR_MS: i64 = 3_600_000;
/// How often `decide` prunes the ledgers (of the caller's clock).
pub const PRUNE_EVERY_MS: i64 = 10_000;

impl Ledger {
    fn note_run(&mut self, key: &BreakerKey, counts_budget: bool, now: i64) {
        self.last_run.insert(key.clone(), now);
        self.runs.entry((key.0.clone(), key.2.clone())).or_default().push_back(now);
        if counts_budget {
            self.budget.push_back(now);
        }
        self.breakers.entry(key.clone()).or_default().runs.push_back(now);
    }

    /// Drops what is older than every window that reads it; `window(playbook)` is that
    /// playbook's longest cooldown or rate window, `breaker_ms(playbook)` its breaker window.
    fn prune(&mut self, now: i64, window: impl Fn(&str) -> i64, breaker_ms: impl Fn(&str) -> i64) {
        self.last_run.retain(|k, t| now - *t < window(&k.0));
        self.runs.retain(|k, v| {
            let w = window(&k.0);
            while v.front().is_some_and(|t| *t <= now - w) {
                v.pop_front();
            }
            !v.is_empty()
        });
        while self.budget.front().is_some_and(|t| *t <= now - HOUR_MS) {
            self.budget.pop_front();
        }
        self.breakers.retain(|k, b| {
            let breaker_ms = breaker_ms(&k.0);
            while b.runs.front().is_some_and(|t| *t <= now - breaker_ms) {
                b.runs.pop_front();
            }
            b.open_since.is_some() || !b.runs.is_empty()
        });
    }

    fn len(&self) -> usize {
        self.last_run.len() + self.runs.len() + self.breakers.len()
    }
}

/// An open breaker, for `medic status` and `medic breaker list`.
#[derive(Debug, Clone, Serialize)]
pub struct OpenBreaker {
    pub playbook: String,
    pub action: ActionKind,
    pub target: String,
    pub mode: Mode,
    pub open_since_ms: i64,
}

/// The gate and its memory.
#[derive(Debug)]
pub struct Gate {
    policy: PolicyConfig,
    self_pid: i64,
    dry: Ledger,
    live: Ledger,
    in_flight: HashSet<(ActionKind, String)>,
    running: u32,
    /// Where the protected rule reads what a process is; None for fixtures (`playbook test`),
    /// whose pids are not this host's.
    procfs: Option<PathBuf>,
    /// Longest window (cooldown or rate window, ms) of each playbook seen, for pruning.
    windows: HashMap<String, i64>,
    /// Breaker window (ms) of each playbook with its own `breaker` longer than the node's.
    breaker_windows: HashMap<String, i64>,
    last_prune: i64,
    /// The operator's `[[maintenance]]` windows.
    maintenance: maintenance::Windows,
}

impl Gate {
    pub fn new(policy: PolicyConfig) -> Self {
        Self {
            policy,
            self_pid: std::process::id() as i64,
            dry: Ledger::default(),
            live: Ledger::default(),
            in_flight: HashSet::new(),
            running: 0,
            procfs: Some(PathBuf::from("/proc")),
            windows: HashMap::new(),
            breaker_windows: HashMap::new(),
            last_prune: i64::MIN,
            maintenance: maintenance::Windows::default(),
        }
    }

    /// The same gate with the operator's maintenance windows (`[[maintenance]]`).
    pub fn with_maintenance(self, maintenance: maintenance::Windows) -> Self {
        Self { maintenance, ..self }
    }

    /// The maintenance windows, for `medic status`.
    pub fn maintenance(&self) -> &maintenance::Windows {
        &self.maintenance
    }

    /// The node's breaker.
    fn node_breaker(&self) -> BreakerSpec {
        BreakerSpec { after: self.policy.breaker_after, within_ms: crate::config::secs_to_ms(self.policy.breaker_window_secs) }
    }

    /// The breaker the gate applies to the playbook of `meta` (its own tightens the node's).
    pub fn breaker_of(&self, meta: &Meta) -> BreakerSpec {
        BreakerSpec::tightest(self.node_breaker(), meta.breaker)
    }

    /// What the `maintenance` rule says of `kind` asked by the playbook of `meta` at `now`:
    /// `Some` when it holds the request (active hours first, then the node's windows).
    pub fn maintenance_hold(&self, meta: &Meta, kind: ActionKind, now: i64) -> Option<maintenance::Hold> {
        maintenance::outside_active(&meta.active, now).or_else(|| self.maintenance.hold(&meta.name, kind, now))
    }

    /// A gate for fixture snapshots: the protected rule goes by the request's unit and name
    /// only, since the pids are not this host's processes.
    pub fn for_fixtures(policy: PolicyConfig) -> Self {
        Self { procfs: None, ..Self::new(policy) }
    }

    /// Notes a playbook's windows (at load, and at each decision), so that pruning keeps its
    /// runs for as long as they can matter, also for the playbooks that have not asked yet.
    pub fn note_playbook(&mut self, meta: &Meta) {
        let w = meta.cooldown_ms.max(meta.rate_limit.per_ms).max(0);
        let e = self.windows.entry(meta.name.clone()).or_insert(0);
        *e = (*e).max(w);
        if let Some(b) = meta.breaker {
            let e = self.breaker_windows.entry(meta.name.clone()).or_insert(0);
            *e = (*e).max(b.within_ms);
        }
    }

    /// Forgets what can no longer affect a decision (see the module note). A playbook not seen
    /// (unloaded) keeps its runs for the longest window of any playbook, the budget hour and the
    /// breaker window.
    pub fn prune(&mut self, now: i64) {
        let breaker_ms = self.policy.breaker_window_secs.min(i64::MAX as u64 / 1000) as i64 * 1000;
        let longest_breaker = self.breaker_windows.values().copied().max().unwrap_or(0).max(breaker_ms);
        let longest = self.windows.values().copied().max().unwrap_or(0).max(HOUR_MS).max(longest_breaker);
        let (windows, breakers) = (&self.windows, &self.breaker_windows);
        let window = |pb: &str| windows.get(pb).copied().unwrap_or(longest);
        // A playbook not seen since start keeps its runs for the longest breaker window of any.
        let breaker = |pb: &str| {
            if windows.contains_key(pb) {
                breakers.get(pb).copied().unwrap_or(0).max(breaker_ms)
            } else {
                longest_breaker
            }
        };
        self.dry.prune(now, window, breaker);
        self.live.prune(now, window, breaker);
        self.last_prune = now;
    }

    /// Keys held in the ledgers of both modes (cooldowns, rate windows, breakers): bounded by
    /// what was asked for within the longest window, plus open breakers.
    pub fn ledger_len(&self) -> usize {
        self.dry.len() + self.live.len()
    }

    fn ledger(&mut self, mode: Mode) -> &mut Ledger {
        match mode {
            Mode::DryRun => &mut self.dry,
            Mode::Live => &mut self.live,
        }
    }

    /// The node policy as the kinds' checks read it.
    fn policy_view(&self) -> actions::Policy<'_> {
        let p = &self.policy;
        actions::Policy {
            allowed_units: &p.allowed_units,
            protected_units: &p.protected_units,
            protected_processes: &p.protected_processes,
            allowed_paths: &p.allowed_paths,
            commands: &p.commands,
            self_pid: self.self_pid,
            procfs: self.procfs.as_deref(),
        }
    }

    /// The node policy's verdict on a request, by its kind's check: `Some(reason)` when it is
    /// refused.
    pub fn policy_refuses(&self, req: &ActionRequest) -> Option<(&'static str, String)> {
        actions::policy_check(&self.policy_view(), req)
    }

    /// The allowlist entry a `run_command` request matches (path equal, arguments matched one
    /// to one against the entry's path-like patterns: see [`crate::actions::run_command::arg_matches`]).
    pub fn command_rule(&self, req: &ActionRequest) -> Option<&crate::config::CommandRule> {
        actions::run_command::rule(&self.policy.commands, req)
    }

    pub fn decide(&mut self, meta: &Meta, req: &ActionRequest, node_mode: Mode, now: i64) -> Verdict {
        self.note_playbook(meta);
        if now.saturating_sub(self.last_prune) >= PRUNE_EVERY_MS || now < self.last_prune {
            self.prune(now);
        }
        let mode = if meta.dry_run { Mode::DryRun } else { node_mode };
        let v = |decision, rule, detail: String| Verdict { decision, rule, mode, detail };
        if !meta.allows(req.kind, &req.target) {
            let allowed: Vec<&str> = meta.actions.iter().filter(|c| c.kind == req.kind).map(|c| c.target.as_str()).collect();
            return v(
                Decision::Denied,
                "manifest",
                format!("{} on {:?} is outside the manifest (allowed targets: {allowed:?})", req.kind, req.target),
            );
        }
        if let Some((rule, why)) = self.policy_refuses(req) {
            let rule = if rule == "protected" { "policy:protected" } else { "policy:allowlist" };
            return v(Decision::Denied, rule, why);
        }
        if let Some(hold) = self.maintenance_hold(meta, req.kind, now) {
            return v(Decision::Suppressed, "maintenance", hold.detail);
        }
        let key: BreakerKey = (meta.name.clone(), req.kind, req.target.clone());
        let acts = req.kind.acts();
        let breaker = self.breaker_of(meta);
        let (budget_max, max_concurrent, k, window) =
            (self.policy.budget_per_hour as usize, self.policy.max_concurrent, breaker.after as usize, breaker.within_ms);
        let in_flight = self.in_flight.contains(&(req.kind, req.target.clone()));
        let running = self.running;
        let ledger = self.ledger(mode);
        if let Some(last) = ledger.last_run.get(&key) {
            if now - last < meta.cooldown_ms {
                return v(
                    Decision::Suppressed,
                    "cooldown",
                    format!("cooldown {}: last ran {} ago", secs(meta.cooldown_ms), secs(now - last)),
                );
            }
        }
        let recent = ledger.runs.get_mut(&(key.0.clone(), key.2.clone())).map_or(0, |runs| {
            while runs.front().is_some_and(|t| *t <= now - meta.rate_limit.per_ms) {
                runs.pop_front();
            }
            runs.len()
        });
        if recent >= meta.rate_limit.max as usize {
            return v(
                Decision::Suppressed,
                "rate_limit",
                format!("rate limit {} per {} reached", meta.rate_limit.max, secs(meta.rate_limit.per_ms)),
            );
        }
        if acts {
            while ledger.budget.front().is_some_and(|t| *t <= now - HOUR_MS) {
                ledger.budget.pop_front();
            }
            if ledger.budget.len() >= budget_max {
                return v(Decision::Suppressed, "budget", format!("node budget of {budget_max} actions per hour used up"));
            }
            if mode == Mode::Live && in_flight {
                return v(Decision::Suppressed, "in_flight", format!("an action on {:?} is still running", req.target));
            }
            if mode == Mode::Live && running >= max_concurrent {
                return v(Decision::Suppressed, "concurrency", format!("{running} actions running (policy.max_concurrent)"));
            }
            // Only a key that ran has a breaker entry: a request suppressed earlier leaves none.
            if let Some(b) = ledger.breakers.get_mut(&key) {
                if let Some(since) = b.open_since {
                    return v(
                        Decision::Suppressed,
                        "breaker_open",
                        format!("breaker open since {}; `medic breaker reset` to re-arm", crate::audit::now_rfc3339(since)),
                    );
                }
                while b.runs.front().is_some_and(|t| *t <= now - window) {
                    b.runs.pop_front();
                }
            }
            if let Some(b) = ledger.breakers.get_mut(&key).filter(|b| b.runs.len() >= k) {
                b.open_since = Some(now);
                return v(
                    Decision::Escalated,
                    "breaker",
                    format!(
                        "{} on {:?} ran {} times in {} and the playbook still asks: leaving it to an operator",
                        req.kind,
                        req.target,
                        b.runs.len(),
                        secs(window)
                    ),
                );
            }
        }
        ledger.note_run(&key, acts, now);
        if !acts {
            return v(Decision::Executed, "notify", "a notification only records; nothing on the host changes".into());
        }
        match mode {
            Mode::Live => {
                self.in_flight.insert((req.kind, req.target.clone()));
                self.running += 1;
                v(Decision::Executed, "mode", "the node is live".into())
            }
            Mode::DryRun => {
                let why = if meta.dry_run { "the playbook forces dry-run" } else { "the node is in dry-run" };
                v(Decision::WouldExecute, "mode", format!("{why}: nothing was changed"))
            }
        }
    }

    /// An executed action ended (whatever its outcome).
    pub fn finished(&mut self, kind: ActionKind, target: &str) {
        if self.in_flight.remove(&(kind, target.to_string())) {
            self.running = self.running.saturating_sub(1);
        }
    }

    /// Rebuilds the ledgers from one audit record (called for every record at start). A
    /// record whose time or body does not read is skipped.
    pub fn replay(&mut self, stored: &crate::audit::record::Stored) {
        use crate::audit::record::Record;
        let Some(now) = stored.ts_ms else { return };
        match &stored.record {
            Ok(Record::Action(a)) => {
                let kind = a.action.kind;
                let key = (a.playbook.name.clone(), kind, a.action.target.clone());
                match a.decision {
                    Decision::Executed | Decision::WouldExecute => self.ledger(a.mode).note_run(&key, kind != ActionKind::Notify, now),
                    Decision::Escalated => self.ledger(a.mode).breakers.entry(key).or_default().open_since = Some(now),
                    Decision::Suppressed | Decision::Denied => {}
                }
            }
            Ok(Record::BreakerReset(r)) => {
                self.reset(&(r.playbook.name.clone(), r.action, r.target.clone()));
            }
            _ => {}
        }
    }

    pub fn open_breakers(&self) -> Vec<OpenBreaker> {
        let mut v = Vec::new();
        for (mode, l) in [(Mode::Live, &self.live), (Mode::DryRun, &self.dry)] {
            for (k, b) in &l.breakers {
                if let Some(since) = b.open_since {
                    v.push(OpenBreaker { playbook: k.0.clone(), action: k.1, target: k.2.clone(), mode, open_since_ms: since });
                }
            }
        }
        v.sort_by(|a, b| (a.open_since_ms, &a.playbook, &a.target).cmp(&(b.open_since_ms, &b.playbook, &b.target)));
        v
    }

    /// Closes the breaker (in both modes) and forgets its runs. Returns whether one was open.
    pub fn reset(&mut self, key: &BreakerKey) -> bool {
        let mut was = false;
        for l in [&mut self.live, &mut self.dry] {
            if let Some(b) = l.breakers.get_mut(key) {
                was |= b.open_since.is_some();
                *b = Breaker::default();
            }
        }
        was
    }

    /// Actions left in the hourly budget, per mode.
    pub fn budget_left(&self, now: i64) -> BTreeMap<&'static str, u64> {
        let max = self.policy.budget_per_hour as u64;
        let used = |l: &Ledger| l.budget.iter().filter(|t| **t > now - HOUR_MS).count() as u64;
        BTreeMap::from([("live", max.saturating_sub(used(&self.live))), ("dry-run", max.saturating_sub(used(&self.dry)))])
    }
}

fn secs(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64 / 1000 * 1000)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbooks::meta::{Capability, RateLimit};

    fn meta(cooldown_ms: i64) -> Meta {
        Meta {
            name: "flood".into(),
            description: String::new(),
            interval_ms: 1000,
            tags: Vec::new(),
            dry_run: false,
            actions: vec![Capability { kind: ActionKind::RestartUnit, target: "*.service".into() }],
            rate_limit: RateLimit { max: 2, per_ms: 600_000 },
            cooldown_ms,
            files: Vec::new(),
            active: Vec::new(),
            breaker: None,
            probes: Vec::new(),
        }
    }

    fn restart(target: String) -> ActionRequest {
        ActionRequest {
            kind: ActionKind::RestartUnit,
            target,
            params: Default::default(),
            reason: "flood".into(),
            signals: Default::default(),
        }
    }

    /// Regression: the ledgers kept an entry for every distinct target ever asked for,
    /// suppressed or not (1.5 MB/min under a flood of unique targets).
    #[test]
    fn ledgers_stay_bounded_under_a_flood_of_unique_targets() {
        let mut gate = Gate::new(PolicyConfig { budget_per_hour: 1_000_000, ..Default::default() });
        let m = meta(60_000);
        let t0 = 1_800_000_000_000;
        let mut most = 0;
        // Three simulated hours, two new targets a second, in dry-run (every request is noted).
        for s in 0..3 * 3600 {
            for i in 0..2 {
                gate.decide(&m, &restart(format!("u{s}-{i}.service")), Mode::DryRun, t0 + s * 1000);
            }
            most = most.max(gate.ledger_len());
        }
        // One entry per key within its window (breaker 1 h: 7,200; last run and rate runs for
        // the playbook's longest window, 10 min: 1,200 each) plus one prune period (10 s): never
        // the 21,600 targets asked for.
        assert!(most <= 7_200 + 2 * 1_200 + 3 * 20, "ledger held {most} keys");
        // Two hours of silence: everything can be forgotten.
        gate.prune(t0 + 8 * 3_600_000);
        assert_eq!(gate.ledger_len(), 0);
    }

    #[test]
    fn pruning_keeps_what_still_decides_and_every_open_breaker() {
        let mut gate = Gate::new(PolicyConfig { breaker_after: 1, ..Default::default() });
        let m = meta(0);
        let t0 = 1_800_000_000_000;
        let a = || restart("a.service".into());
        assert_eq!(gate.decide(&m, &a(), Mode::DryRun, t0).decision, Decision::WouldExecute);
        // Rate window (10 min) still holds the run after 9 minutes of pruning.
        gate.prune(t0 + 540_000);
        assert_eq!(gate.decide(&m, &a(), Mode::DryRun, t0 + 540_000).decision, Decision::Escalated);
        gate.prune(t0 + 100 * 3_600_000);
        assert_eq!(gate.open_breakers().len(), 1, "an open breaker is never forgotten");
        assert_eq!(gate.decide(&m, &a(), Mode::DryRun, t0 + 100 * 3_600_000).rule, "breaker_open");
    }

    fn window(from: &str, to: &str) -> maintenance::Windows {
        let c = maintenance::WindowConfig { name: "freeze".into(), from: Some(from.into()), to: Some(to.into()), ..Default::default() };
        maintenance::Windows::resolve(&[c]).expect("a window")
    }

    /// 2026-11-27 (a Friday) at `h`:`m` UTC.
    fn at(h: i64, m: i64) -> i64 {
        1_795_737_600_000 + h * 3_600_000 + m * 60_000
    }

    /// Rule order: manifest and policy deny before maintenance; maintenance suppresses before any
    /// limit and uses none up; after the window the request runs.
    #[test]
    fn maintenance_comes_after_policy_and_before_the_limits_and_uses_up_nothing() {
        let mut gate =
            Gate::for_fixtures(PolicyConfig { budget_per_hour: 1, ..Default::default() }).with_maintenance(window("22:00", "06:00"));
        let m = meta(600_000);
        let inside = at(23, 0);
        // Outside the manifest: still denied by the manifest, not held.
        let off = ActionRequest { kind: ActionKind::SignalProcess, ..restart("x".into()) };
        assert_eq!(gate.decide(&m, &off, Mode::Live, inside).rule, "manifest");
        // Protected unit: denied by policy.
        assert_eq!(gate.decide(&m, &restart("ssh.service".into()), Mode::Live, inside).rule, "policy:protected");
        // Held, live and dry-run alike, as often as asked: no cooldown, rate or budget spent.
        for (i, mode) in [Mode::Live, Mode::DryRun, Mode::Live, Mode::Live].into_iter().enumerate() {
            let v = gate.decide(&m, &restart("a.service".into()), mode, inside + i as i64 * 1000);
            assert_eq!((v.decision, v.rule), (Decision::Suppressed, "maintenance"), "{v:?}");
            assert!(v.detail.contains("\"freeze\"") && v.detail.contains("until 2026-11-28T06:00:00"), "{}", v.detail);
        }
        assert_eq!(gate.ledger_len(), 0);
        // A notification is not held by default.
        let note = ActionRequest { kind: ActionKind::Notify, ..restart("a.service".into()) };
        let m2 = Meta { actions: vec![Capability { kind: ActionKind::Notify, target: "*".into() }], ..meta(0) };
        assert_eq!(gate.decide(&m2, &note, Mode::Live, inside).rule, "notify");
        // At the end of the window it runs, and the one budget slot is spent now.
        let v = gate.decide(&m, &restart("a.service".into()), Mode::Live, at(30, 0));
        assert_eq!(v.decision, Decision::Executed, "{v:?}");
        gate.finished(ActionKind::RestartUnit, "a.service");
        assert_eq!(gate.decide(&m, &restart("b.service".into()), Mode::Live, at(30, 1)).rule, "budget");
    }

    #[test]
    fn outside_active_hours_every_kind_is_held_until_they_start() {
        let mut gate = Gate::for_fixtures(PolicyConfig::default());
        let days: Vec<String> = vec!["mon-fri".into()];
        let m = Meta { active: vec![maintenance::Weekly::parse(&days, "08:00", "18:00", None).expect("hours")], ..meta(0) };
        let v = gate.decide(&m, &restart("a.service".into()), Mode::Live, at(19, 0));
        assert_eq!((v.decision, v.rule), (Decision::Suppressed, "maintenance"));
        assert!(v.detail.contains("active again at 2026-11-30T08:00:00"), "{}", v.detail);
        let checks = gate.checks(&m, ActionKind::RestartUnit, "a.service", Mode::Live, None, at(19, 0));
        let c = checks.iter().find(|c| c.blocks).expect("a blocking check");
        assert_eq!((c.rule, c.until_ms), ("maintenance", Some(at(72 + 8, 0))));
        assert_eq!(gate.decide(&m, &restart("a.service".into()), Mode::Live, at(9, 0)).decision, Decision::Executed);
    }

    /// Monit's "if 2 restarts within 10 cycles then unmonitor": the playbook's breaker opens
    /// before the node's (3 within 1 h), and only the smaller `after` and the longer window count.
    #[test]
    fn a_playbook_breaker_opens_before_the_nodes() {
        let mut gate = Gate::for_fixtures(PolicyConfig { budget_per_hour: 100, ..Default::default() });
        let own = Meta {
            breaker: Some(BreakerSpec { after: 2, within_ms: 600_000 }),
            rate_limit: RateLimit { max: 100, per_ms: 1000 },
            ..meta(0)
        };
        let node = Meta { name: "other".into(), ..own.clone() };
        let node = Meta { breaker: None, ..node };
        assert_eq!(gate.breaker_of(&own), BreakerSpec { after: 2, within_ms: 3_600_000 });
        let t0 = at(9, 0);
        let mut rules = Vec::new();
        for i in 0..3 {
            for m in [&own, &node] {
                let v = gate.decide(m, &restart("a.service".into()), Mode::DryRun, t0 + i * 60_000);
                rules.push((m.name.clone(), v.rule));
            }
        }
        assert_eq!(rules[4], ("flood".to_string(), "breaker"), "{rules:?}");
        assert_eq!(rules[5], ("other".to_string(), "mode"), "{rules:?}");
        // A playbook breaker can only tighten: a looser one leaves the node's.
        let loose = Meta { breaker: Some(BreakerSpec { after: 10, within_ms: 60_000 }), ..meta(0) };
        assert_eq!(gate.breaker_of(&loose), BreakerSpec { after: 3, within_ms: 3_600_000 });
    }
}
