//! The node's mode (dry-run or live), persisted in `<state_dir>/mode.json` so that it survives
//! restarts. A fresh install has no file and is in dry-run. A change with a TTL carries the
//! whole state before it (`previous`: its mode, actor, reason and its own expiry) and reverts to
//! exactly that state at expiry; if that state's expiry passed meanwhile, the one before it is
//! taken, and so on, and dry-run when none is left. So a TTL change can never extend another
//! state's life: no sequence of changes leaves a node live past the expiry its live change was
//! given. The chain is kept short: a state that would have expired by the time it is reached is
//! dropped when a change is made, and at most `MAX_DEPTH` states are kept (the oldest falls to
//! dry-run, the safe direction). A file written by an older medic has `revert_to` without
//! `previous`: it reverts to dry-run. The file is written atomically (temp file, fsync, rename, fsync
//! of the directory); a file that cannot be read or parsed means the mode is unknown, and an
//! unknown mode is dry-run.

use crate::gate::Mode;

/// States kept in a chain of TTL changes (the current one included).
pub const MAX_DEPTH: usize = 8;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

pub const FILE_NAME: &str = "mode.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeState {
    pub mode: Mode,
    /// When this mode was set, ms since the epoch (0 for a fresh install).
    pub since_ms: i64,
    pub actor: String,
    pub reason: String,
    /// When it reverts by itself, ms since the epoch.
    pub expires_ms: Option<i64>,
    /// The mode it reverts to at expiry (shown; `previous` decides).
    pub revert_to: Option<Mode>,
    /// The state it reverts to at expiry, as it was (with its own expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<ModeState>>,
}

impl ModeState {
    pub fn fresh() -> Self {
        Self {
            mode: Mode::DryRun,
            since_ms: 0,
            actor: "install".into(),
            reason: "fresh install: dry-run until an operator says otherwise".into(),
            expires_ms: None,
            revert_to: None,
            previous: None,
        }
    }

    /// The state in force at `t` if nothing else happens: this one until it expires, then the
    /// one before it (resolved the same way); `None` when the chain runs out (dry-run).
    pub fn at(&self, t: i64) -> Option<&ModeState> {
        let mut cur = self;
        while cur.expired(t) {
            cur = cur.previous.as_deref()?;
        }
        Some(cur)
    }

    /// The state after a change to `mode` at `now`. Without a TTL it stands alone; with one it
    /// keeps the state in force now (as it will be at the new expiry) to revert to.
    pub fn change(&self, mode: Mode, actor: String, reason: String, ttl_secs: Option<u64>, now: i64) -> ModeState {
        let mut next = ModeState { mode, since_ms: now, actor, reason, expires_ms: None, revert_to: None, previous: None };
        if let Some(ttl) = ttl_secs {
            let ttl_ms = (ttl.min(crate::control::command::MAX_TTL_SECS) as i64).saturating_mul(1000);
            next.expires_ms = Some(now.saturating_add(ttl_ms).max(now.saturating_add(1)));
            next.previous = Some(Box::new(self.clone()));
            next = next.compacted(MAX_DEPTH - 1);
        }
        next
    }

    /// Drops the states that would be expired when reached, and those past `depth`.
    fn compacted(mut self, depth: usize) -> ModeState {
        let prev = self.previous.take();
        if let (Some(e), Some(p), true) = (self.expires_ms, prev, depth > 0) {
            self.previous = p.at(e).cloned().map(|q| Box::new(q.compacted(depth - 1)));
        }
        if self.expires_ms.is_some() {
            self.revert_to = Some(self.previous.as_ref().map_or(Mode::DryRun, |p| p.mode));
        } else {
            self.revert_to = None;
        }
        self
    }

    /// What follows this state once it has expired at `now` (`None` while it has not): the state
    /// before it exactly as it was, unless that expired too; dry-run when nothing is left.
    pub fn successor(&self, now: i64) -> Option<ModeState> {
        if !self.expired(now) {
            return None;
        }
        Some(match self.previous.as_deref().and_then(|p| p.at(now)) {
            Some(p) => p.clone(),
            None => ModeState {
                mode: Mode::DryRun,
                since_ms: now,
                actor: "medic (ttl expiry)".into(),
                reason: format!("ttl of the change by {} expired and no state before it is still in force", self.actor),
                expires_ms: None,
                revert_to: None,
                previous: None,
            },
        })
    }

    /// Reads the persisted mode; `Ok(None)` when there is none (a fresh install).
    pub fn load(state_dir: &Path) -> Result<Option<Self>, String> {
        let p = state_dir.join(FILE_NAME);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| format!("{}: {e}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    /// Saves atomically (temp file, fsync, rename, fsync of the directory).
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let p = state_dir.join(FILE_NAME);
        let tmp = state_dir.join(format!(".{FILE_NAME}.tmp"));
        let mut f = super::create_private(&tmp)?;
        f.write_all(serde_json::to_string_pretty(self).unwrap_or_default().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        std::fs::File::open(state_dir)?.sync_all()
    }

    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = 1000;

    fn live_for_an_hour() -> ModeState {
        ModeState::fresh().change(Mode::Live, "signed".into(), "r".into(), Some(3600), 0)
    }

    /// Applies expiry at `t` as the agent's tick does.
    fn tick(m: &mut ModeState, t: i64) {
        if let Some(n) = m.successor(t) {
            *m = n;
        }
    }

    #[test]
    fn a_ttl_dry_run_on_a_node_live_for_an_hour_reverts_to_that_hour_not_to_live_forever() {
        let live = live_for_an_hour();
        let mut m = live.change(Mode::DryRun, "mallory".into(), "r".into(), Some(1), 10 * S);
        assert_eq!(m.revert_to, Some(Mode::Live));
        tick(&mut m, 11 * S);
        assert_eq!(m, live, "exactly the state before, its expiry included");
        tick(&mut m, 3600 * S);
        assert_eq!(m.mode, Mode::DryRun);
        assert_eq!(m.expires_ms, None);
    }

    #[test]
    fn a_ttl_dry_run_outliving_the_live_state_stays_in_dry_run() {
        let mut m = live_for_an_hour().change(Mode::DryRun, "x".into(), "r".into(), Some(7200), 10 * S);
        assert_eq!(m.revert_to, Some(Mode::DryRun));
        tick(&mut m, 7210 * S);
        assert_eq!((m.mode, m.expires_ms), (Mode::DryRun, None));
    }

    #[test]
    fn nested_ttl_dry_runs_unwind_in_order_and_the_chain_stays_short() {
        let live = live_for_an_hour();
        let mut m = live.clone();
        for i in 0..100 {
            m = m.change(Mode::DryRun, format!("d{i}"), "r".into(), Some(1000 - i), 5 * S);
        }
        let mut depth = 0;
        let mut cur = Some(&m);
        while let Some(c) = cur {
            depth += 1;
            cur = c.previous.as_deref();
        }
        assert!(depth <= MAX_DEPTH, "{depth}");
        tick(&mut m, 2000 * S);
        assert!(m.mode == Mode::DryRun || m == live);
        tick(&mut m, 3600 * S);
        assert_eq!(m.mode, Mode::DryRun);
    }

    #[test]
    fn an_older_file_with_revert_to_but_no_previous_reverts_to_dry_run() {
        let text = r#"{"mode":"dry-run","since_ms":1,"actor":"a","reason":"r","expires_ms":2,"revert_to":"live"}"#;
        let m: ModeState = serde_json::from_str(text).unwrap();
        assert_eq!(m.successor(3).unwrap().mode, Mode::DryRun);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Wait(i64),
        /// A live change the node accepts as authorized (signed, or root on the socket).
        Live(Option<u64>),
        /// A dry-run anyone may send.
        Dry(Option<u64>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1i64..400).prop_map(Op::Wait),
            proptest::option::of(1u64..300).prop_map(Op::Live),
            proptest::option::of(1u64..300).prop_map(Op::Dry),
        ]
    }

    fn depth(m: &ModeState) -> usize {
        1 + m.previous.as_deref().map_or(0, depth)
    }

    proptest! {
        // A fixed count in the suite; PROPTEST_CASES runs more (bench/proptest_long.sh).
        #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)))]

        /// Live at t only while an authorized live change allows it (its TTL not run out, and
        /// no permanent dry-run after it); a TTL dry-run reverts to exactly the state before it.
        #[test]
        fn no_sequence_of_changes_keeps_a_node_live_longer_than_allowed(ops in proptest::collection::vec(op(), 1..60)) {
            let mut m = ModeState::fresh();
            let mut t: i64 = 0;
            // (index, until) of authorized live changes; index of the last permanent dry-run.
            let mut lives: Vec<(usize, Option<i64>)> = Vec::new();
            let mut last_permanent_dry: Option<usize> = None;
            let mut revert_check: Option<(i64, ModeState)> = None;
            for (i, o) in ops.iter().enumerate() {
                match o {
                    Op::Wait(dt) => t += dt * S,
                    Op::Live(ttl) => {
                        m = m.change(Mode::Live, "ok".into(), "r".into(), *ttl, t);
                        lives.push((i, ttl.map(|x| t + x as i64 * S)));
                        revert_check = None;
                    }
                    Op::Dry(ttl) => {
                        let before = m.clone();
                        m = m.change(Mode::DryRun, "anyone".into(), "r".into(), *ttl, t);
                        match ttl {
                            None => { last_permanent_dry = Some(i); revert_check = None; }
                            Some(x) => revert_check = Some((t + *x as i64 * S, before)),
                        }
                    }
                }
                tick(&mut m, t);
                if m.mode == Mode::Live {
                    let allowed = lives.iter().any(|(li, until)| {
                        last_permanent_dry.is_none_or(|d| d < *li) && until.is_none_or(|u| t < u)
                    });
                    prop_assert!(allowed, "live at {t} without an allowance: {m:?}");
                    prop_assert!(m.expires_ms.is_none_or(|e| t < e));
                }
                if let Some((at, before)) = &revert_check {
                    if t >= *at {
                        let want = before.at(t);
                        if depth(before) < MAX_DEPTH - 1 {
                            match want {
                                Some(w) => prop_assert_eq!(&m, w),
                                None => prop_assert_eq!((m.mode, m.expires_ms), (Mode::DryRun, None)),
                            }
                        } else {
                            prop_assert!(want.is_some_and(|w| *w == m) || m.mode == Mode::DryRun);
                        }
                        revert_check = None;
                    }
                }
            }
        }
    }
}
