//! `medic validate`: the config and every playbook the agent would load, checked as the agent
//! would (its limits and history reach); `ExecStartPre` and `ExecReload` run it. A config that
//! does not load is a config error (exit 2, printed once by `main`); the playbooks are still
//! checked, with the defaults, so one run shows every mistake.

use super::exit::{Failure, Outcome};
use crate::config::resolve::{Overrides, Settings, Source};
use crate::config::Config;
use anyhow::anyhow;
use std::path::{Path, PathBuf};

pub fn run(config: Option<PathBuf>, playbooks: Option<PathBuf>) -> Outcome {
    let o = Overrides { config, playbooks_dir: playbooks, ..Default::default() };
    let mut ok = true;
    let (settings, config_error) = match Settings::load(&o) {
        Ok(s) => {
            let label = match &s.source {
                Source::File(p) => p.display().to_string(),
                Source::Defaults => "(built-in defaults)".into(),
            };
            println!("config: {label}: ok");
            (s, None)
        }
        Err(e) => (Settings::resolve(Config::default(), Source::Defaults, &o), Some(e)),
    };
    let m = &settings.config.mqtt;
    for (what, f) in [
        ("mqtt.ca_file", &m.ca_file),
        ("mqtt.cert_file", &m.cert_file),
        ("mqtt.key_file", &m.key_file),
        ("mqtt.password_file", &m.password_file),
    ] {
        if let Some(f) = f {
            if let Err(e) = std::fs::File::open(f) {
                println!("{what}: {}: {e}", f.display());
                ok = false;
            }
        }
    }
    let rt = super::playbook::runtime(&settings);
    let (dir, local) = (settings.playbooks_dir.as_deref(), settings.local_playbooks_dir.as_deref());
    let loaded =
        crate::playbooks::load_with(&rt, dir, local).map_err(|e| anyhow!("{}: {e}", dir.or(local).unwrap_or(Path::new("")).display()))?;
    for r in loaded {
        match r {
            Ok(pb) => println!("{}: ok ({})", pb.file, pb.meta.name),
            Err(e) => {
                println!("{e}");
                ok = false;
            }
        }
    }
    if let Some(e) = config_error {
        return Err(Failure::Config(e));
    }
    super::exit::check(ok)
}
