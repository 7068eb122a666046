//! Loading the playbooks (at start, on SIGHUP and on a `reload` command): the bundled set with
//! the local directory layered over it, or a directory given instead. A file that fails keeps
//! its last good version (if any) and is recorded as rejected; a file that disappeared is
//! unloaded; an unchanged file keeps its state and timers.

use super::Agent;
use crate::audit::record::{Kept, PlaybookLoaded, PlaybookRef, PlaybookRejected, PlaybookUnloaded, Record};
use crate::audit::AuditError;
use crate::playbooks;
use crate::telemetry::ids;

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
                let kept = Some(Kept::All(self.playbook_names()));
                self.journal.record(&Record::PlaybookRejected(PlaybookRejected { file: dir, error: e.to_string(), kept }), now)?;
                return Ok(());
            }
        };
        let installed: Vec<&playbooks::Playbook> = self.decider.slots().map(|s| &s.pb).collect();
        let loaded = self.sensors.admit(loaded, &installed);
        let mut seen = Vec::new();
        for res in loaded {
            match res {
                Ok(pb) => {
                    seen.push(pb.file.clone());
                    if self.decider.slot(&pb.file).is_some_and(|s| s.pb.sha256 == pb.sha256) {
                        continue;
                    }
                    tracing::info!(message = "Playbook loaded.", playbook = %pb.meta.name, file = %pb.file);
                    let rec = Record::PlaybookLoaded(PlaybookLoaded {
                        playbook: PlaybookRef::of(&pb),
                        file: pb.file.clone(),
                        meta: serde_json::json!(pb.meta),
                    });
                    self.journal.record(&rec, now)?;
                    self.decider.install(pb);
                }
                Err(e) => {
                    seen.push(e.file.clone());
                    let kept = self.decider.slot(&e.file).map(|s| Kept::Playbook(PlaybookRef::of(&s.pb)));
                    tracing::error!(message = "Playbook rejected.", message_id = ids::PLAYBOOK_REJECTED, file = %e.file, error = %e, kept_previous = kept.is_some());
                    let rec = Record::PlaybookRejected(PlaybookRejected { file: e.file.clone(), error: e.to_string(), kept });
                    self.journal.record(&rec, now)?;
                }
            }
        }
        let gone: Vec<String> = self.decider.files().into_iter().filter(|k| !seen.contains(k)).collect();
        for file in gone {
            if let Some(pb) = self.decider.slot(&file).map(|s| s.pb.clone()) {
                let rec = Record::PlaybookUnloaded(PlaybookUnloaded { playbook: PlaybookRef::of(&pb), file: file.clone() });
                self.journal.record(&rec, now)?;
                self.decider.remove(&file);
            }
        }
        self.declare_files();
        self.sensors.apply(self.decider.slots().map(|s| &s.pb));
        Ok(())
    }
}

impl Agent {
    /// Hands the loaded playbooks' META `files` to the sampler (it picks them up at its next
    /// sample, wherever it runs).
    fn declare_files(&self) {
        let mut specs = Vec::new();
        for file in self.decider.files() {
            if let Some(slot) = self.decider.slot(&file) {
                specs.extend(slot.pb.meta.files.iter().map(|f| (format!("playbook {}", slot.pb.meta.name), f.clone())));
            }
        }
        self.files_declared.set(specs);
    }
}
