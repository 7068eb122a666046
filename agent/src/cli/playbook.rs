//! `medic playbook check|test`: compile playbooks, and play their test cases, with the node's
//! resolved settings (`--config`, else the default file, else the built-in defaults): its
//! `[playbooks.limits]`, its history reach (`[signals]`) and, for `test`, its `[policy]`. So a
//! playbook that passes here is not refused by the agent on that node. Both say first which
//! config they used. `validate` compiles with the same [`runtime`].

use super::exit::{check as ok_if, Outcome};
use crate::config::resolve::{Overrides, Settings};
use crate::playbooks::{self, bundled, testing, HistoryReach, Runtime};
use anyhow::anyhow;
use std::path::{Path, PathBuf};

/// The engine the agent builds from these settings: the config's limits and history reach.
pub fn runtime(settings: &Settings) -> Runtime {
    Runtime::new(settings.config.playbooks.limits).with_history(HistoryReach::of(&settings.config.signals))
}

fn settings(config: Option<PathBuf>) -> Result<Settings, super::exit::Failure> {
    let s = Settings::load(&Overrides { config, ..Default::default() })?;
    println!("using {}", s.source);
    Ok(s)
}

pub fn check(files: &[PathBuf], config: Option<PathBuf>) -> Outcome {
    let rt = runtime(&settings(config)?);
    let mut ok = true;
    for f in files {
        let label = f.display().to_string();
        match playbooks::read_source(f) {
            Ok(src) => match rt.compile(&label, &src) {
                Ok(pb) => println!("{label}: ok ({})", pb.meta.name),
                Err(e) => {
                    println!("{e}");
                    ok = false;
                }
            },
            Err(e) => {
                println!("{label}: {e}");
                ok = false;
            }
        }
    }
    ok_if(ok)
}

pub fn test(path: Option<&Path>, config: Option<PathBuf>) -> Outcome {
    let settings = settings(config)?;
    let rt = std::sync::Arc::new(runtime(&settings));
    let (mut passed, mut failed) = (0, 0);
    for (file, src, tfile, tests) in test_sources(path)? {
        let Some(tests) = tests else {
            println!("{file}: no test cases (expected {tfile})");
            continue;
        };
        match testing::run(&rt, settings.policy(), &settings.config.maintenance_windows(), &file, &src, &tfile, &tests) {
            Ok(results) => {
                for r in results {
                    if r.passed {
                        passed += 1;
                        println!("ok   {file}: {}", r.name);
                    } else {
                        failed += 1;
                        println!("FAIL {file}: {}\n{}", r.name, r.message);
                    }
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {e}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    ok_if(failed == 0 && passed > 0)
}

/// (playbook label, source, tests label, tests source if the file exists).
type TestSource = (String, String, String, Option<String>);

/// The playbooks and test files PATH names.
fn test_sources(path: Option<&Path>) -> anyhow::Result<Vec<TestSource>> {
    let Some(path) = path else {
        return Ok(bundled::PLAYBOOKS
            .iter()
            .map(|(f, s, t)| {
                (format!("bundled:{f}"), s.to_string(), format!("bundled:{}", f.replace(".rhai", ".test.toml")), Some(t.to_string()))
            })
            .collect());
    };
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> =
            std::fs::read_dir(path)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "rhai")).collect();
        v.sort();
        v
    } else if path.to_string_lossy().ends_with(".test.toml") {
        vec![PathBuf::from(path.to_string_lossy().replace(".test.toml", ".rhai"))]
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|f| {
            let src = playbooks::read_source(&f).map_err(|e| anyhow!("{}: {e}", f.display()))?;
            let t = f.with_extension("test.toml");
            let tests = playbooks::read_source(&t).ok();
            Ok((f.display().to_string(), src, t.display().to_string(), tests))
        })
        .collect()
}
