//! Which probes and program sensors the agent runs: those of the config (`[[probes.check]]`,
//! `[[programs]]`) and those the loaded playbooks declare in META. At each load a playbook whose
//! probe cannot run here (a target the config does not allow, a name another playbook or the
//! config declares differently, one probe too many; a file name declared differently) is
//! rejected like a playbook that does not compile, naming both declarers; the tasks then match
//! the loaded set. A running playbook keeps the names it declares against newcomers.

use super::Agent;
use crate::config::Config;
use crate::playbooks::{Playbook, PlaybookError};
use crate::signals::files::FileSpec;
use crate::signals::probes::program::ProgramConfig;
use crate::signals::probes::spec::{ProbeSpec, Reach, Target};
use crate::signals::probes::{Board, Sensor, Sensors};
use std::collections::BTreeMap;

/// The agent's sensors and what the config says of them.
pub(super) struct AgentSensors {
    sensors: Sensors,
    reach: Reach,
    config_probes: Vec<ProbeSpec>,
    programs: Vec<ProgramConfig>,
    /// `[files] watch`: names a playbook's META `files` may not declare differently.
    config_files: Vec<FileSpec>,
    max: usize,
    /// `[probes] playbook_body_patterns`.
    body_patterns: bool,
}

impl AgentSensors {
    pub fn new(cfg: &Config) -> Self {
        // `medic validate` (Config::parse) has checked `[probes]`; a bad allow list allows none.
        let reach = Reach::new(cfg.probes.allow_remote, &cfg.probes.allow).unwrap_or_default();
        Self {
            sensors: Sensors::new(reach.clone()),
            reach,
            config_probes: cfg.probes.specs(),
            programs: cfg.programs.clone(),
            config_files: cfg.files.watch.clone(),
            max: cfg.probes.max,
            body_patterns: cfg.probes.playbook_body_patterns,
        }
    }

    pub fn board(&self) -> Board {
        self.sensors.board()
    }

    /// Rejects the playbooks whose probes cannot run alongside the config's and the other
    /// playbooks', and those that declare a probe or a file name (`probe.<name>.*`,
    /// `file.<name>.*`) differently from its owner. Owners, in order: the config; a playbook
    /// already running (`installed`) whose new version still declares the same; then load
    /// order. So a new file cannot take over the signals a running playbook acts on by
    /// declaring the same name first (`000-x.rhai` before `web.rhai`): it is the one rejected.
    pub fn admit(&self, loaded: Vec<Result<Playbook, PlaybookError>>, installed: &[&Playbook]) -> Vec<Result<Playbook, PlaybookError>> {
        let mut owners: BTreeMap<String, (ProbeSpec, String)> =
            self.config_probes.iter().map(|p| (p.name.clone(), (p.clone(), "the config ([[probes.check]])".to_string()))).collect();
        let mut file_owners: BTreeMap<String, (FileSpec, String)> =
            self.config_files.iter().map(|f| (f.name.clone(), (f.clone(), "the config ([files] watch)".to_string()))).collect();
        for pb in loaded.iter().flatten() {
            let Some(old) = installed.iter().find(|o| o.file == pb.file) else { continue };
            for p in pb.meta.probes.iter().filter(|p| old.meta.probes.contains(p)) {
                owners.entry(p.name.clone()).or_insert_with(|| (p.clone(), pb.file.clone()));
            }
            for f in pb.meta.files.iter().filter(|f| old.meta.files.contains(f)) {
                file_owners.entry(f.name.clone()).or_insert_with(|| (f.clone(), pb.file.clone()));
            }
        }
        loaded
            .into_iter()
            .map(|res| {
                let pb = res?;
                let reject = |reason: String| PlaybookError { file: pb.file.clone(), line: 1, col: 1, reason };
                let mut mine = Vec::new();
                for (i, p) in pb.meta.probes.iter().enumerate() {
                    self.reach.check(p).map_err(|e| reject(format!("META.probes[{i}]: {e}")))?;
                    if !self.body_patterns && matches!(&p.target, Target::Http { body: Some(_), .. }) {
                        return Err(reject(format!(
                            "META.probes[{i}].body: a playbook's probe may match the status, not the body, unless the config sets \
                             `[probes] playbook_body_patterns = true` (or declare the probe in `[[probes.check]]`)"
                        )));
                    }
                    match owners.get(&p.name) {
                        Some((q, owner)) if q != p => {
                            return Err(reject(format!(
                                "META.probes[{i}]: probe {:?} is declared differently by {owner} and by {}",
                                p.name, pb.file
                            )))
                        }
                        Some(_) => {}
                        None => mine.push(p.clone()),
                    }
                }
                if owners.len() + mine.len() > self.max {
                    return Err(reject(format!("META.probes: more than probes.max ({}) probes on this node", self.max)));
                }
                let mut my_files = Vec::new();
                for (i, f) in pb.meta.files.iter().enumerate() {
                    match file_owners.get(&f.name) {
                        Some((g, owner)) if g != f => {
                            return Err(reject(format!(
                                "META.files[{i}]: file {:?} is declared differently by {owner} and by {}",
                                f.name, pb.file
                            )))
                        }
                        Some(_) => {}
                        None => my_files.push(f.clone()),
                    }
                }
                for p in mine {
                    owners.insert(p.name.clone(), (p, pb.file.clone()));
                }
                for f in my_files {
                    file_owners.insert(f.name.clone(), (f, pb.file.clone()));
                }
                Ok(pb)
            })
            .collect()
    }

    /// Runs the config's sensors and those of `playbooks` (the loaded set).
    pub fn apply<'a>(&mut self, playbooks: impl Iterator<Item = &'a Playbook>) {
        let mut wanted: Vec<Sensor> = self.config_probes.iter().cloned().map(Sensor::Probe).collect();
        for pb in playbooks {
            for p in &pb.meta.probes {
                if !wanted.iter().any(|s| matches!(s, Sensor::Probe(q) if q.name == p.name)) && wanted.len() < self.max {
                    wanted.push(Sensor::Probe(p.clone()));
                }
            }
        }
        wanted.extend(self.programs.iter().cloned().map(Sensor::Program));
        self.sensors.set(wanted);
    }

    pub fn stop(&mut self) {
        self.sensors.stop();
    }

    pub fn status(&self) -> serde_json::Value {
        self.sensors.board().status()
    }
}

impl Agent {
    /// Starts the sensors' tasks on the current runtime (`daemon::run` calls it once on its own).
    pub fn start_sensors(&mut self) {
        self.sensors.sensors.start();
    }
}
