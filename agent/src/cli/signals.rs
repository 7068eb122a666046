//! `medic signals`: two samples a moment apart (so CPU % and rates have something to compare
//! with) with the config's roots and eBPF settings, plus one run of each of the config's probes
//! and program sensors (not the probes of playbooks: those run in `medic run`), printed for
//! humans or as JSON.

use super::escape::esc;
use super::exit::Outcome;
use crate::audit;
use crate::config::resolve::{Overrides, Settings};
use crate::signals::{Roots, Sampler};
use std::path::PathBuf;

pub fn run(json: bool, config: Option<PathBuf>) -> Outcome {
    let settings = Settings::load(&Overrides { config, ..Default::default() })?;
    let s = &settings.config.signals;
    let ebpf = crate::signals::ebpf::EbpfSignals::start(&s.ebpf);
    let mut sampler = Sampler::new(Roots { proc: s.proc_root.clone(), sys: s.sys_root.clone() })
        .with_ebpf(ebpf)
        .with_files(settings.config.files.clone());
    sampler.sample(audit::now_ms());
    std::thread::sleep(std::time::Duration::from_millis(250));
    let mut snap = sampler.sample(audit::now_ms());
    sense_once(&settings.config, &mut snap)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&with_tree(&snap)?)?);
    } else {
        print_snapshot(&snap);
    }
    Ok(())
}

/// The snapshot as JSON with each process's fields derived from the whole list (`children`,
/// `zombie_children`, `rss_tree_bytes`, `fds_pct`): kept out of `ProcessInfo`'s serde (a test
/// case cannot set them, the recorder derives them again), shown here as playbooks see them.
fn with_tree(snap: &crate::signals::Snapshot) -> serde_json::Result<serde_json::Value> {
    let mut v = serde_json::to_value(snap)?;
    if let Some(list) = v.get_mut("processes").and_then(|p| p.as_array_mut()) {
        for (o, p) in list.iter_mut().zip(&snap.processes) {
            if let Some(o) = o.as_object_mut() {
                o.insert("children".into(), p.children.into());
                o.insert("zombie_children".into(), p.zombie_children.into());
                o.insert("rss_tree_bytes".into(), p.rss_tree_bytes.into());
                o.insert("fds_pct".into(), p.fds_pct.into());
            }
        }
    }
    Ok(v)
}

/// Runs the config's probes and programs once each, all at once, into `snap`; why one failed
/// goes to `snap.errors`.
fn sense_once(cfg: &crate::config::Config, snap: &mut crate::signals::Snapshot) -> std::io::Result<()> {
    use crate::signals::probes::{check, program, spec::Reach};
    if cfg.probes.check.is_empty() && cfg.programs.is_empty() {
        return Ok(());
    }
    let reach = Reach::new(cfg.probes.allow_remote, &cfg.probes.allow).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let sensed = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for p in cfg.probes.specs() {
            let reach = reach.clone();
            set.spawn(async move {
                let key = format!("probe.{}", p.name);
                let o = check::run(&p, &reach).await;
                (o.metrics(&key), o.reason.map(|r| format!("{key}: {r}")))
            });
        }
        for p in cfg.programs.clone() {
            set.spawn(async move {
                let key = format!("program.{}", p.name);
                let r = program::run_once(&p).await;
                (r.values.into_iter().map(|(k, v)| (format!("{key}.{k}"), v)).collect(), r.reason.map(|r| format!("{key}: {r}")))
            });
        }
        set.join_all().await
    });
    for (metrics, reason) in sensed {
        snap.metrics.extend(metrics);
        snap.errors.extend(reason);
    }
    Ok(())
}

fn print_snapshot(s: &crate::signals::Snapshot) {
    println!("# metrics");
    for (k, v) in &s.metrics {
        println!("{:<48} {v:.2}", esc(k));
    }
    println!("\n# processes (top 15 by CPU)");
    let mut ps: Vec<_> = s.processes.iter().collect();
    ps.sort_by(|a, b| b.cpu_pct.unwrap_or(0.0).total_cmp(&a.cpu_pct.unwrap_or(0.0)));
    println!("{:>8} {:<16} {:>7} {:>10} {:>5} {:>5} {:<24}", "PID", "NAME", "CPU%", "RSS", "FDS", "CW", "UNIT");
    for p in ps.iter().take(15) {
        println!(
            "{:>8} {:<16} {:>7.1} {:>10} {:>5} {:>5} {:<24}",
            p.pid,
            esc(&p.name),
            p.cpu_pct.unwrap_or(0.0),
            p.rss_bytes,
            p.fds.map_or("-".into(), |f| f.to_string()),
            p.tcp.get("close_wait").copied().unwrap_or(0),
            esc(p.unit.as_deref().unwrap_or("-"))
        );
    }
    if !s.tcp_peers.is_empty() {
        println!("\n# peers with retransmitting sockets");
        for p in &s.tcp_peers {
            println!("{:<40} sockets {} retransmitting {} timeouts {}", esc(&p.peer.to_string()), p.sockets, p.retransmitting, p.timeouts);
        }
    }
    if !s.unavailable.is_empty() {
        println!("\n# unavailable");
        for (k, v) in &s.unavailable {
            println!("{:<16} {}", esc(k), esc(&v.to_string()));
        }
    }
    for e in &s.errors {
        println!("error: {}", esc(&e.to_string()));
    }
}
