//! Loading the playbooks (at start, on SIGHUP and on a `reload` command): the bundled set with
//! the local directory layered over it, or a directory given instead. A file that fails keeps
//! its last good version (if any) and is recorded as rejected; a file that disappeared is
//! unloaded; an unchanged file keeps its state and timers.

use super::journal::obj;
use super::Agent;
use crate::audit::AuditError;
use crate::decide::pb_ref;
use crate::playbooks;
use crate::telemetry::ids;
use serde_json::json;

impl Agent {
    /// (Re)loads the playbooks directory. A file that fails keeps its last good version (if
    /// any) and is recorded as rejected; a file that disappeared is unloaded.
    pub fn reload(&mut self) -> Result<(), AuditError> {
        let now = crate::audit::now_ms();
        let loaded = match playbooks::load_with(self.decider.runtime(), self.playbooks_dir.as_deref(), self.local_playbooks_dir.as_deref())
        {
            Ok(l) => l,
            Err(e) => {
                let dir =
                    self.playbooks_dir.as_ref().or(self.local_playbooks_dir.as_ref()).map(|d| d.display().to_string()).unwrap_or_default();
                tracing::error!(message = "Playbooks directory unreadable; keeping the loaded set.", message_id = ids::PLAYBOOK_REJECTED, dir = %dir, error = %e);
                let kept = self.playbook_names();
                self.journal.record("playbook_rejected", obj(json!({ "file": dir, "error": e.to_string(), "kept": kept })), now)?;
                return Ok(());
            }
        };
        let mut seen = Vec::new();
        for res in loaded {
            match res {
                Ok(pb) => {
                    seen.push(pb.file.clone());
                    if self.decider.slot(&pb.file).is_some_and(|s| s.pb.sha256 == pb.sha256) {
                        continue;
                    }
                    tracing::info!(message = "Playbook loaded.", playbook = %pb.meta.name, file = %pb.file);
                    self.journal.record(
                        "playbook_loaded",
                        obj(json!({ "playbook": pb_ref(&pb), "file": pb.file, "meta": pb.meta })),
                        now,
                    )?;
                    self.decider.install(pb);
                }
                Err(e) => {
                    seen.push(e.file.clone());
                    let kept = self.decider.slot(&e.file).map(|s| pb_ref(&s.pb));
                    tracing::error!(message = "Playbook rejected.", message_id = ids::PLAYBOOK_REJECTED, file = %e.file, error = %e, kept_previous = kept.is_some());
                    self.journal.record("playbook_rejected", obj(json!({ "file": e.file, "error": e.to_string(), "kept": kept })), now)?;
                }
            }
        }
        let gone: Vec<String> = self.decider.files().into_iter().filter(|k| !seen.contains(k)).collect();
        for file in gone {
            if let Some(pb) = self.decider.slot(&file).map(|s| s.pb.clone()) {
                self.journal.record("playbook_unloaded", obj(json!({ "playbook": pb_ref(&pb), "file": file })), now)?;
                self.decider.remove(&file);
            }
        }
        Ok(())
    }
}
