//! Agent-run sensors: probes (TCP, unix socket, HTTP(S), TLS; declared in a playbook's META or
//! `[[probes.check]]`) and program sensors (`[[programs]]`). Each runs as a tokio task on the
//! daemon's runtime, never in the evaluation worker or a playbook, one run in flight at a time,
//! and writes its latest result on the shared [`Board`]; [`Sampler::sample`](super::Sampler::sample)
//! merges the board into `Snapshot.metrics`, so results are plain metric keys with history, the
//! flight recorder and replay like any other. A sensor that has not reported yet is absent
//! (never 0). Why a run failed is kept on the board for `medic status` and the log, not as a
//! metric.
//!
//! [`Sensors`] owns the tasks: [`Sensors::set`] starts, restarts (a changed spec) and stops
//! them to match the loaded playbooks and the config (at start and on reload), and
//! [`Sensors::stop`] ends them all at shutdown. `spec.rs` is what a probe is and where it may
//! connect; `check.rs` runs one probe; `program.rs` runs one program.

pub mod check;
pub mod program;
pub mod spec;

use program::ProgramConfig;
use serde::{Deserialize, Serialize};
use spec::{ConfigProbe, ProbeSpec, Reach};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// `[probes]`: probes declared by the operator, where probes may connect, how many there may be.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// Probes of any address (else loopback and unix sockets only, plus `allow`).
    pub allow_remote: bool,
    /// Host names, addresses and CIDRs probes may reach besides loopback.
    pub allow: Vec<String>,
    /// Most probes, from playbooks and the config together.
    pub max: usize,
    /// Whether a playbook's META probe may match the body (`body`): a pattern answers one bit
    /// of what a local service returns, enough for a playbook that may only `notify` to read
    /// a token off a loopback endpoint bit by bit. Off: body patterns are the config's only.
    pub playbook_body_patterns: bool,
    /// `[[probes.check]]`.
    pub check: Vec<ConfigProbe>,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self { allow_remote: false, allow: Vec::new(), max: 32, playbook_body_patterns: false, check: Vec::new() }
    }
}

/// The most probes a config may allow.
pub const MAX_PROBES: usize = 256;

impl ProbesConfig {
    /// Checks the section (bounds, each probe, each name once, each target reachable); the
    /// error names the key.
    pub fn check(&self, programs: &[ProgramConfig]) -> Result<(), (String, String)> {
        if !(1..=MAX_PROBES).contains(&self.max) {
            return Err(("probes.max".into(), format!("probes.max: {} is out of range: must be 1..={MAX_PROBES}", self.max)));
        }
        let reach = Reach::new(self.allow_remote, &self.allow).map_err(|e| ("probes.allow".to_string(), e))?;
        if self.check.len() > self.max {
            return Err(("probes.check".into(), format!("probes.check: {} probes, more than probes.max ({})", self.check.len(), self.max)));
        }
        let mut names = Vec::new();
        for (i, c) in self.check.iter().enumerate() {
            let at = format!("probes.check[{i}]");
            let s = c.resolve(&at).map_err(|e| ("probes.check.name".to_string(), e))?;
            reach.check(&s).map_err(|e| ("probes.check.name".to_string(), format!("{at}: {e}")))?;
            if names.contains(&s.name) {
                return Err(("probes.check.name".into(), format!("{at}.name: probe {:?} is declared twice", s.name)));
            }
            names.push(s.name);
        }
        if programs.len() > program::MAX_PROGRAMS {
            return Err(("programs".into(), format!("programs: at most {} program sensors", program::MAX_PROGRAMS)));
        }
        let mut names = Vec::new();
        for (i, p) in programs.iter().enumerate() {
            p.check(&format!("programs[{i}]")).map_err(|e| ("programs.name".to_string(), e))?;
            if names.contains(&p.name) {
                return Err(("programs.name".into(), format!("programs[{i}].name: program {:?} is declared twice", p.name)));
            }
            names.push(p.name.clone());
        }
        Ok(())
    }

    /// The probes of the config, resolved (checked by `medic validate`; one that fails here is
    /// left out).
    pub fn specs(&self) -> Vec<ProbeSpec> {
        self.check.iter().enumerate().filter_map(|(i, c)| c.resolve(&format!("probes.check[{i}]")).ok()).collect()
    }
}

/// One sensor the agent runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sensor {
    Probe(ProbeSpec),
    Program(ProgramConfig),
}

impl Sensor {
    /// The prefix of its metric keys, and its key on the board: `probe.<name>`, `program.<name>`.
    pub fn key(&self) -> String {
        match self {
            Sensor::Probe(p) => format!("probe.{}", p.name),
            Sensor::Program(p) => format!("program.{}", p.name),
        }
    }
}

/// A sensor's latest result.
#[derive(Debug, Clone, Serialize)]
pub struct Reading {
    /// Full metric keys and values.
    pub metrics: Vec<(String, f64)>,
    pub ok: bool,
    /// Why the last run failed (or what was cut).
    pub reason: Option<String>,
    pub at_ms: i64,
    /// Older than this (2 × the interval plus the timeout), the reading is no longer merged: a
    /// program stuck past its kill (a D-state read of a dead NFS mount) must not leave its last
    /// `ok = 1` standing; the signals go absent, as for a sensor yet to report.
    #[serde(skip)]
    stale_ms: i64,
    /// Which start of the sensor wrote it (a stopped one's late write is dropped).
    #[serde(skip)]
    generation: u64,
}

/// The latest result of every running sensor, shared by their tasks and the sampler.
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<String, Reading>>>);

impl Board {
    fn put(&self, key: &str, generation: u64, metrics: Vec<(String, f64)>, ok: bool, reason: Option<String>) {
        let Ok(mut b) = self.0.lock() else { return };
        // Only the current start of the sensor writes (its slot is made when it starts).
        if let Some(r) = b.get_mut(key).filter(|r| r.generation == generation) {
            *r = Reading { metrics, ok, reason, at_ms: crate::audit::now_ms(), stale_ms: r.stale_ms, generation };
        }
    }

    fn start(&self, key: &str, generation: u64, stale_ms: i64) {
        if let Ok(mut b) = self.0.lock() {
            b.insert(key.to_string(), Reading { metrics: Vec::new(), ok: false, reason: None, at_ms: 0, stale_ms, generation });
        }
    }

    fn remove(&self, key: &str) {
        if let Ok(mut b) = self.0.lock() {
            b.remove(key);
        }
    }

    /// Adds every reported result to `metrics` (a sensor yet to report, or whose last report
    /// is stale, adds nothing).
    pub fn merge_into(&self, metrics: &mut BTreeMap<String, f64>) {
        let Ok(b) = self.0.lock() else { return };
        let now = crate::audit::now_ms();
        for r in b.values().filter(|r| now.saturating_sub(r.at_ms) <= r.stale_ms) {
            metrics.extend(r.metrics.iter().cloned());
        }
    }

    /// Every sensor's state, for `medic status`: ok, when, why not.
    pub fn status(&self) -> serde_json::Value {
        let Ok(b) = self.0.lock() else { return serde_json::Value::Null };
        let m: serde_json::Map<String, serde_json::Value> = b
            .iter()
            .map(|(k, r)| {
                let v = if r.at_ms == 0 {
                    serde_json::json!({ "reported": false })
                } else {
                    let stale = crate::audit::now_ms().saturating_sub(r.at_ms) > r.stale_ms;
                    serde_json::json!({ "reported": true, "ok": r.ok, "reason": r.reason, "at": crate::audit::now_rfc3339(r.at_ms), "stale": stale })
                };
                (k.clone(), v)
            })
            .collect();
        serde_json::Value::Object(m)
    }
}

/// The running sensors.
pub struct Sensors {
    board: Board,
    reach: Reach,
    running: BTreeMap<String, (Sensor, Option<tokio::task::AbortHandle>)>,
    generation: u64,
}

impl Sensors {
    pub fn new(reach: Reach) -> Self {
        Self { board: Board::default(), reach, running: BTreeMap::new(), generation: 0 }
    }

    pub fn board(&self) -> Board {
        self.board.clone()
    }

    /// How many run.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Runs exactly `wanted`: an unchanged sensor keeps running (and its result), a changed one
    /// restarts, a gone one stops and its result goes. Tasks start on the current tokio runtime;
    /// outside one they start at [`start`](Self::start).
    pub fn set(&mut self, wanted: Vec<Sensor>) {
        let mut next = BTreeMap::new();
        for s in wanted {
            next.insert(s.key(), s);
        }
        let gone: Vec<String> = self.running.iter().filter(|(k, (s, _))| next.get(*k) != Some(s)).map(|(k, _)| k.clone()).collect();
        for k in gone {
            if let Some((_, Some(h))) = self.running.remove(&k) {
                h.abort();
            }
            self.board.remove(&k);
            tracing::info!(message = "Sensor stopped.", sensor = %k);
        }
        for (k, s) in next {
            self.running.entry(k).or_insert((s, None));
        }
        self.start();
    }

    /// Starts the tasks not running yet, when on a tokio runtime.
    pub fn start(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        for (key, (sensor, handle)) in self.running.iter_mut() {
            if handle.is_some() {
                continue;
            }
            self.generation += 1;
            let generation = self.generation;
            self.board.start(key, generation, stale_after_ms(sensor));
            let board = self.board.clone();
            let (key, sensor2, reach) = (key.clone(), sensor.clone(), self.reach.clone());
            tracing::info!(message = "Sensor started.", sensor = %key);
            *handle = Some(rt.spawn(run_sensor(sensor2, reach, board, key, generation)).abort_handle());
        }
    }

    /// Stops every task (a program still running is killed with its group).
    pub fn stop(&mut self) {
        for (k, (_, h)) in std::mem::take(&mut self.running) {
            if let Some(h) = h {
                h.abort();
            }
            self.board.remove(&k);
        }
    }
}

impl Drop for Sensors {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long a reading stays good: two intervals and the timeout.
fn stale_after_ms(sensor: &Sensor) -> i64 {
    let (every, timeout) = match sensor {
        Sensor::Probe(p) => (p.interval_ms, p.timeout_ms),
        Sensor::Program(p) => (p.interval_secs.saturating_mul(1000), p.timeout_secs.saturating_mul(1000)),
    };
    i64::try_from(every.max(spec::MIN_INTERVAL_MS).saturating_mul(2).saturating_add(timeout)).unwrap_or(i64::MAX)
}

async fn run_sensor(sensor: Sensor, reach: Reach, board: Board, key: String, generation: u64) {
    let every_ms = match &sensor {
        Sensor::Probe(p) => p.interval_ms,
        Sensor::Program(p) => p.interval_secs.saturating_mul(1000),
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(every_ms.max(spec::MIN_INTERVAL_MS)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_reason: Option<String> = None;
    loop {
        tick.tick().await;
        let (metrics, ok, reason) = match &sensor {
            Sensor::Probe(p) => {
                let r = check::run(p, &reach).await;
                (r.metrics(&key), r.ok, r.reason)
            }
            Sensor::Program(p) => {
                let r = program::run_once(p).await;
                (r.values.into_iter().map(|(k, v)| (format!("{key}.{k}"), v)).collect(), r.ok, r.reason)
            }
        };
        if reason != last_reason {
            match &reason {
                Some(why) => tracing::warn!(message = "Sensor failing.", sensor = %key, reason = %why),
                None => tracing::info!(message = "Sensor ok.", sensor = %key),
            }
            last_reason.clone_from(&reason);
        }
        board.put(&key, generation, metrics, ok, reason);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// A reading older than two intervals and the timeout is no longer a signal: a sensor stuck
    /// past its kill does not keep its last `ok` standing.
    #[test]
    fn a_stale_reading_is_not_merged() {
        let b = super::Board::default();
        b.start("program.x", 1, 5_000);
        b.put("program.x", 1, vec![("program.x.ok".into(), 1.0)], true, None);
        let mut m = std::collections::BTreeMap::new();
        b.merge_into(&mut m);
        assert_eq!(m.get("program.x.ok"), Some(&1.0));
        if let Ok(mut g) = b.0.lock() {
            g.get_mut("program.x").unwrap().at_ms -= 6_000;
        }
        let mut m = std::collections::BTreeMap::new();
        b.merge_into(&mut m);
        assert!(m.is_empty(), "{m:?}");
        assert_eq!(b.status()["program.x"]["stale"], true);
    }

    #[test]
    fn config_errors_name_the_probe_or_program_and_its_line() {
        let e = Config::parse("m.toml", "node = \"a\"\n[[probes.check]]\nname = \"db\"\ntcp = \"192.0.2.1:5432\"\n").unwrap_err();
        assert!(e.reason.contains("probes.check[0]") && e.reason.contains("not a local address"), "{e}");
        assert_eq!(e.line, 3, "{e}");
        let twice = "[[probes.check]]\nname = \"a\"\ntcp = \"127.0.0.1:1\"\n[[probes.check]]\nname = \"a\"\nunix = \"/run/a.sock\"\n";
        assert!(Config::parse("m.toml", twice).unwrap_err().reason.contains("declared twice"));
        let slow = "[[probes.check]]\nname = \"a\"\ntcp = \"127.0.0.1:1\"\ninterval_secs = 5\ntimeout_ms = 6000\n";
        assert!(Config::parse("m.toml", slow).unwrap_err().reason.contains("probes.check[0].timeout"));
        let e = Config::parse("m.toml", "[[programs]]\nname = \"q\"\nargv = [\"sh\", \"-c\", \"x\"]\n").unwrap_err();
        assert!(e.reason.contains("programs[0].argv"), "{e}");
        assert!(Config::parse("m.toml", "[probes]\nmax = 0\n").unwrap_err().reason.contains("probes.max"));
        let ok = "[probes]\nallow = [\"10.0.0.0/8\"]\n[[probes.check]]\nname = \"db\"\ntcp = \"10.2.3.4:5432\"\n[[programs]]\nname = \"q\"\nargv = [\"/bin/true\"]\n";
        assert!(Config::parse("m.toml", ok).is_ok());
    }

    #[test]
    fn a_sensor_that_has_not_reported_is_absent_and_a_stopped_one_leaves() {
        let mut s = super::Sensors::new(Default::default());
        let p = super::spec::MetaProbe { name: "web".into(), tcp: Some("127.0.0.1:1".into()), ..Default::default() }.resolve("t").unwrap();
        // No runtime: declared, not started; nothing on the board.
        s.set(vec![super::Sensor::Probe(p)]);
        let mut m = std::collections::BTreeMap::new();
        s.board().merge_into(&mut m);
        assert!(m.is_empty());
        assert_eq!(s.len(), 1);
        s.set(Vec::new());
        assert!(s.is_empty());
    }
}
