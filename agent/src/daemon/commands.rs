//! Commands, whatever their edge: the control socket's requests ([`Agent::control`]) and the
//! broker's fleet commands ([`Agent::remote`]: scope, signature, bounded recording, a summary of
//! rejections past ten a minute per topic) are both applied by [`Agent::apply`], the one path.
//! Also the mode: its changes, persisted and recorded with the safer state durable first, and
//! their expiry.

use super::Agent;
use crate::audit::record::{self, PlaybookRef, Record};
use crate::audit::AuditError;
use crate::control::command::{Command, CommandError, Incoming, Origin};
use crate::control::mode::ModeState;
use crate::control::{Peer, Request, Response};
use crate::gate::Mode;
use crate::telemetry::ids;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const REJECTIONS_RECORDED_PER_MIN: u32 = 10;

/// Rejected commands of one topic within a minute.
#[derive(Debug, Default)]
pub(super) struct Rejections {
    since_ms: i64,
    recorded: u32,
    suppressed: u64,
    by_code: BTreeMap<&'static str, u64>,
}

impl Agent {
    /// Reverts a mode change whose TTL has passed to exactly the state before it (or dry-run
    /// when that expired too; `ModeState::successor`), and records it. Also writes the summary
    /// of rejected commands whose minute ended.
    pub(super) fn expire_mode(&mut self, now: i64) -> Result<(), AuditError> {
        self.flush_rejections(now);
        let Some(next) = self.mode.successor(now) else { return Ok(()) };
        let old = self.mode.clone();
        self.apply_mode(next, &old, true, now)
    }

    /// Persists and records a mode change: the safer state is always durable first (a switch to
    /// dry-run takes effect and is saved before it is recorded, so the brake works even when the
    /// log cannot be written; a switch to live is recorded, then saved, then takes effect).
    fn apply_mode(&mut self, next: ModeState, old: &ModeState, expired: bool, now: i64) -> Result<(), AuditError> {
        let (actor, reason) = if expired {
            let back = if next.since_ms == now {
                next.reason.clone()
            } else {
                format!("back to the state set by {} ({})", next.actor, next.reason)
            };
            ("medic (ttl expiry)".to_string(), format!("ttl of the change by {} expired; {back}", old.actor))
        } else {
            (next.actor.clone(), next.reason.clone())
        };
        let change = record::ModeChange {
            from: old.mode,
            to: next.mode,
            actor: actor.clone(),
            reason: reason.clone(),
            expires: next.expires_ms.map(crate::audit::now_rfc3339),
            revert_to: next.revert_to,
        };
        let rec = if expired { Record::ModeExpired(change) } else { Record::ModeChange(change) };
        let save = |m: &ModeState, dir: &std::path::Path| {
            m.save(dir).map_err(|source| AuditError::Io { path: dir.join(crate::control::mode::FILE_NAME), source })
        };
        if next.mode == Mode::DryRun {
            self.mode = next.clone();
            save(&next, &self.state_dir)?;
            self.journal.record(&rec, now)?;
        } else {
            self.journal.record(&rec, now)?;
            save(&next, &self.state_dir)?;
            self.mode = next.clone();
        }
        tracing::warn!(
            message = "Mode changed.",
            message_id = ids::MODE_CHANGED,
            from = old.mode.as_str(),
            to = next.mode.as_str(),
            actor = %actor,
            reason = %reason,
            expires = next.expires_ms.map(crate::audit::now_rfc3339),
        );
        self.publish_metrics();
        Ok(())
    }

    /// Applies one command, whatever its origin (the control socket or the broker): the one
    /// path, so that the two cannot drift. Authorization is the edge's (peer credentials, or a
    /// signature checked in `remote`); here each command is validated, recorded, and only then
    /// changes state (except a switch to dry-run, see `apply_mode`).
    pub fn apply(&mut self, cmd: Command, origin: &Origin, now: i64) -> Result<Value, CommandError> {
        use crate::control::command::bounded;
        match cmd {
            Command::Status => Ok(self.status(now)),
            Command::Breakers => Ok(json!(self.decider.gate().open_breakers())),
            Command::Explain { playbook, target } => {
                let mode = crate::decide::explain::ModeNow { mode: self.mode.mode, until_ms: self.mode.expires_ms };
                let answer = self.decider.explain(playbook.as_deref(), target.as_deref(), mode, now).map_err(CommandError::NotFound)?;
                Ok(json!({ "node": self.node, "mode": self.mode.mode.as_str(), "at": crate::audit::now_rfc3339(now), "playbooks": answer }))
            }
            Command::SetMode { mode, reason, ttl_secs } => {
                let old = self.mode.clone();
                let next = old.change(mode, origin.actor(), bounded(&reason), ttl_secs, now);
                if let Err(e) = self.apply_mode(next, &old, false, now) {
                    let already = if mode == Mode::DryRun && self.mode.mode == Mode::DryRun { "dry-run is in effect, but " } else { "" };
                    return Err(CommandError::NotRecorded(format!("{already}{e}")));
                }
                Ok(self.status(now)["mode"].clone())
            }
            Command::ResetBreaker { playbook, action, target, reason } => {
                if !self.decider.gate().open_breakers().iter().any(|b| b.playbook == playbook && b.action == action && b.target == target) {
                    return Err(CommandError::NoBreaker(format!("{} {action} {:?}", bounded(&playbook), bounded(&target))));
                }
                // The playbook as every record names it: with the hash of the version loaded now.
                let pb = self
                    .decider
                    .slots()
                    .find(|s| s.pb.meta.name == playbook)
                    .map_or_else(|| PlaybookRef::named(&playbook), |s| PlaybookRef::of(&s.pb));
                let rec = Record::BreakerReset(record::BreakerReset {
                    playbook: pb,
                    action,
                    target: target.clone(),
                    actor: origin.actor(),
                    reason: bounded(&reason),
                });
                self.journal.record(&rec, now).map_err(|e| CommandError::NotRecorded(e.to_string()))?;
                self.decider.gate_mut().reset(&(playbook, action, target));
                Ok(json!({ "reset": true }))
            }
            Command::Reload => {
                self.reload().map_err(|e| CommandError::NotRecorded(e.to_string()))?;
                Ok(json!({ "playbooks": self.playbook_names() }))
            }
        }
    }

    /// Whether a rejected command on `channel` gets a record of its own; past
    /// `REJECTIONS_RECORDED_PER_MIN` a minute it is only counted.
    fn rejection_recorded(&mut self, channel: &str, code: &'static str, now: i64) -> bool {
        self.flush_rejections(now);
        let r = self.rejections.entry(channel.to_string()).or_insert_with(|| Rejections { since_ms: now, ..Default::default() });
        if r.recorded < REJECTIONS_RECORDED_PER_MIN {
            r.recorded += 1;
            return true;
        }
        r.suppressed += 1;
        *r.by_code.entry(code).or_default() += 1;
        false
    }

    /// Records one summary per topic whose minute of rejections ended with some only counted.
    pub(super) fn flush_rejections(&mut self, now: i64) {
        let due: Vec<String> =
            self.rejections.iter().filter(|(_, r)| now.saturating_sub(r.since_ms) >= 60_000).map(|(k, _)| k.clone()).collect();
        for k in due {
            let Some(r) = self.rejections.remove(&k) else { continue };
            if r.suppressed == 0 {
                continue;
            }
            let until = if now == i64::MAX { crate::audit::now_ms() } else { now };
            let rec = Record::CommandsRejected(record::CommandsRejected {
                topic: k.clone(),
                count: r.suppressed,
                by_code: r.by_code.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
                since: crate::audit::now_rfc3339(r.since_ms),
                until: crate::audit::now_rfc3339(until),
            });
            tracing::warn!(message = "Fleet commands rejected without a record each.", topic = %k, count = r.suppressed);
            if self.journal.record(&rec, until).is_err() {
                self.rejections.insert(k, r); // tried again at the next tick
            }
        }
    }

    /// Answers one control request from `peer`.
    pub fn control(&mut self, req: Request, peer: &Peer) -> Response {
        let now = crate::audit::now_ms();
        let result = Command::from_request(req).and_then(|cmd| self.apply(cmd, &Origin::Local { actor: peer.actor() }, now));
        match result {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(e.to_string()),
        }
    }

    /// Handles a publish on a command topic (see `control::remote`) and returns its ack (none
    /// for a packet whose topic is not known). Refused: retained messages, payloads over the
    /// limit, duplicate keys, a scope that is not the topic's or does not include this node,
    /// and unsigned live or breaker commands. Every command is recorded, its claimed fields
    /// bounded; rejections past `REJECTIONS_RECORDED_PER_MIN` a minute on a topic are counted
    /// and summarised instead.
    pub fn remote(&mut self, inc: &Incoming) -> Option<Value> {
        use crate::control::command::bounded;
        use crate::control::remote::{self, Scope};
        let now = crate::audit::now_ms();
        let scope = Scope::of_topic(&self.prefix, &inc.topic).filter(|s| s.includes(&self.node, &self.groups));
        let parsed = if inc.retained { Err(CommandError::Retained) } else { remote::parse(&inc.payload, inc.bytes) };
        let (id, op, claimed) = match &parsed {
            Ok((c, _)) => (bounded(&c.id), bounded(&c.op), bounded(c.actor.as_deref().unwrap_or("unknown"))),
            Err(_) => (String::new(), String::new(), "unknown".to_string()),
        };
        let result = parsed.and_then(|(env, raw)| {
            let scope = scope.clone().ok_or_else(|| CommandError::Scope("not a command topic of this node".into()))?;
            if let Some(named) = env.scope.as_deref() {
                if Scope::parse(named).as_ref() != Some(&scope) {
                    return Err(CommandError::Scope(format!("names {:?}, received on the topic of {scope}", bounded(named))));
                }
            }
            let cmd = env.command()?;
            let key = if cmd.needs_signature() { Some(self.verifier.check(&env, &raw, &scope, now / 1000)?) } else { None };
            let origin = Origin::Remote { topic: inc.topic.clone(), actor: claimed.clone(), key };
            self.apply(cmd, &origin, now)
        });
        let channel = if scope.is_some() { bounded(&inc.topic) } else { "other".to_string() };
        let (ok, detail, code) = match &result {
            Ok(v) => (true, v.clone(), None),
            Err(e) => (false, json!(bounded(&e.to_string())), Some(e.code())),
        };
        let rec = Record::Command(record::CommandRecord {
            topic: bounded(&inc.topic),
            command_id: id.clone(),
            op,
            actor: claimed,
            accepted: ok,
            result: if ok { detail.clone() } else { Value::Null },
            error: if ok { None } else { detail.as_str().map(str::to_string) },
            error_code: code.map(str::to_string),
            payload_bytes: inc.bytes as u64,
            retained: inc.retained,
        });
        let recorded = match code {
            None => true,
            Some(c) => self.rejection_recorded(&channel, c, now),
        };
        if recorded {
            if let Err(e) = self.journal.record(&rec, now) {
                tracing::error!(message = "Fleet command not recorded.", error_code = e.code(), error = %e);
            }
        }
        if let Some(c) = code {
            tracing::warn!(message = "Fleet command rejected.", topic = %channel, id = %id, error_code = c, error = %detail);
        }
        scope.as_ref()?;
        Some(
            json!({ "node": self.node, "id": id, "ok": ok, "result": if ok { detail.clone() } else { Value::Null }, "error": if ok { Value::Null } else { detail }, "error_code": code }),
        )
    }
}
