//! `medic run`: the agent in the foreground, with the resolved settings handed to the daemon
//! (state dir, playbook dirs, control socket); `--once` runs one tick and prints its decisions.

use super::escape::esc;
use super::exit::{Failure, Outcome};
use crate::audit;
use crate::config::resolve::{Overrides, Settings};
use crate::daemon::Agent;
use anyhow::Context;

pub fn run(o: Overrides, once: bool) -> Outcome {
    // Before any thread starts: freed memory goes back to the kernel (crate::memory).
    let tuned = crate::memory::tune();
    let settings = Settings::load(&o)?;
    let cfg = &settings.config;
    crate::telemetry::init(&cfg.log.level);
    let state_dir = settings.state_dir.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stops = {
        let _in_runtime = rt.enter();
        crate::daemon::StopSignals::listen()?
    };
    let mut agent = Agent::start(cfg, settings.playbooks_dir.clone(), state_dir.clone())
        .with_context(|| format!("starting with state dir {}", state_dir.display()))?;
    // Start-up's transient peak (eBPF loading parses the kernel's BTF; playbooks compile).
    crate::memory::trim();
    let code_released = crate::memory::release_start_up_code();
    tracing::debug!(message = "Heap tuned.", tuned, code_released);
    tracing::info!(message = "Started.", message_id = crate::telemetry::ids::STARTED, node = %agent.node, mode = agent.mode().mode.as_str(), playbooks = ?agent.playbook_names(), audit = %agent.audit_path().display());
    if once {
        // A second sample a moment later gives CPU % and rates something to compare with.
        std::thread::sleep(std::time::Duration::from_millis(250));
        let report = agent.tick(audit::now_ms()).map_err(Failure::op)?;
        for (pb, kind, target, decision, rule) in &report.decisions {
            println!("{}: {kind} {} → {decision} ({rule})", esc(pb), esc(&format!("{target:?}")));
        }
        for (pb, err) in &report.disabled {
            println!("{}: disabled: {}", esc(pb), esc(&err.to_string()));
        }
        println!(
            "evaluated {} playbook(s), {} decision(s); audit log {}",
            report.evaluated.len(),
            report.decisions.len(),
            agent.audit_path().display()
        );
        agent.stop("--once").map_err(Failure::op)?;
        return Ok(());
    }
    // Served by tasks on the loop's runtime; a bind failure is logged and the agent runs on.
    let _metrics = {
        let _in_runtime = rt.enter();
        tokio::spawn(async {
            let mut every = tokio::time::interval(crate::memory::TRIM_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                crate::memory::trim();
                // Code run once a while ago (a reload, an action, a scan) stops counting too.
                crate::memory::release_start_up_code();
            }
        });
        crate::metrics::server::start(&cfg.metrics, agent.metrics())
    };
    rt.block_on(crate::daemon::run(
        agent,
        stops,
        cfg.signals.interval_secs,
        settings.control_socket.clone(),
        cfg.control.group.clone(),
        cfg.mqtt.clone(),
        (cfg.alerts.clone(), crate::config::secs_to_ms(cfg.audit.repeat_window_secs)),
    ))?;
    Ok(())
}
