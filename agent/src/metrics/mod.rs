//! Metrics: what the agent is doing, as Prometheus text at `GET /metrics` on `metrics.listen`.
//!
//! One [`Metrics`] value, made at start and shared (`Arc`) by the loop, the evaluation worker,
//! the audit log (fsync latency) and the HTTP responder ([`server`]). Updates are atomics and
//! short-lived locks taken by `prometheus-client` inside one call, never across an await; the
//! loop sets the state gauges (mode, audit, forwarder) once per tick and on every mode change.
//! What is cheaper read when asked for is read at scrape time by collectors ([`collect`]): the
//! process's CPU and memory from `/proc/self`, and the eBPF programs' run counts and run time
//! from the kernel (`bpf_stats`).
//!
//! Names follow Prometheus conventions: `medic_` prefix (`process_` for the process's own),
//! base units (seconds, bytes), `_total` for counters; every label value comes from a bounded
//! set (decisions, rules, action kinds, statuses, modes, the four eBPF families, their programs,
//! the loaded playbooks). Targets are never labels. docs/OPERATIONS.md lists every metric.

pub mod collect;
pub mod server;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// The address `[metrics]` listens on by default: loopback only, the port node_exporter's
/// neighbours leave free (9464 is registered for Prometheus exporters of this kind).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// `[metrics]` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Socket address of the `/metrics` endpoint (`host:port`; port 0 picks a free one);
    /// `""` turns the endpoint off.
    pub listen: String,
    /// Have the kernel count the eBPF programs' runs and run time while medic runs
    /// (`BPF_ENABLE_STATS`; costs a few ns per program run). Off: the counts are those of the
    /// `kernel.bpf_stats_enabled` sysctl, zero unless someone turned it on.
    pub bpf_stats: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: DEFAULT_LISTEN.into(), bpf_stats: false }
    }
}

impl MetricsConfig {
    /// The address to listen on; `None` when the endpoint is off. `Err` names what is wrong.
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, String> {
        let l = self.listen.trim();
        if l.is_empty() {
            return Ok(None);
        }
        l.parse().map(Some).map_err(|e| {
            format!(
                "metrics.listen: {:?} is not a socket address ({e}); write \"127.0.0.1:9464\", \"[::1]:9464\", or \"\" for off",
                self.listen
            )
        })
    }
}

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `metrics.listen` is not a socket address.
    #[error("{0}")]
    Address(String),
    /// The address could not be bound (in use, not local, not permitted).
    #[error("metrics endpoint: bind {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
}

impl MetricsError {
    /// A stable, low-cardinality code (logs, docs).
    pub fn code(&self) -> &'static str {
        match self {
            MetricsError::Address(_) => "metrics_bad_address",
            MetricsError::Bind { .. } => "metrics_bind_failed",
        }
    }
}

type Labels1 = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];
type Labels3 = [(&'static str, String); 3];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 0.1 ms … 3.3 s, doubling.
fn fast_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// 1 ms … 33 s, doubling (ticks, actions).
fn slow_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric medic keeps, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ticks: Counter,
    tick_seconds: Histogram,
    overruns: Counter,
    sample_seconds: Histogram,
    eval_seconds: HistogramFamily<Labels1>,
    eval_failures: Family<Labels2, Counter>,
    decisions: Family<Labels3, Counter>,
    actions: Family<Labels2, Counter>,
    action_seconds: HistogramFamily<Labels1>,
    playbooks_loaded: Gauge,
    playbooks_disabled: Gauge,
    audit_last_seq: Gauge,
    audit_writable: Gauge,
    /// Shared with the audit log, which observes each append.
    pub audit_fsync_seconds: Histogram,
    forwarder_enabled: Gauge,
    forwarder_connected: Gauge,
    forwarder_lag: Gauge,
    ebpf_loaded: Family<Labels1, Gauge>,
    ebpf_families: Gauge,
    ring_drops: Family<Labels1, Counter>,
    mode: Family<Labels1, Gauge>,
    mode_expiry: Gauge,
    scrapes: Counter,
    /// Requests answered with an error (bad, too big, too slow, other path or method).
    pub http_errors: Family<Labels1, Counter>,
    /// Connections refused for want of a slot.
    pub http_refused: Counter,
    /// Alert delivery (`alerts/`), by sink: notifications accepted, failed POSTs, records too old
    /// to deliver, and the age of the oldest record waiting.
    pub alerts_delivered: Family<Labels1, Counter>,
    pub alerts_failures: Family<Labels2, Counter>,
    pub alerts_dropped: Family<Labels1, Counter>,
    pub alerts_lag_seconds: Family<Labels1, Gauge>,
    /// Last scrape's encoding time in µs (for `docs/BENCHMARKS.md` and the curious).
    last_encode_us: AtomicU64,
}

impl Metrics {
    /// Registers every metric; `ebpf` is whether this build embeds the eBPF programs.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Self {
            ticks: Counter::default(),
            tick_seconds: slow_buckets(),
            overruns: Counter::default(),
            sample_seconds: fast_buckets(),
            eval_seconds: Family::new_with_constructor(fast_buckets),
            eval_failures: Family::default(),
            decisions: Family::default(),
            actions: Family::default(),
            action_seconds: Family::new_with_constructor(slow_buckets),
            playbooks_loaded: Gauge::default(),
            playbooks_disabled: Gauge::default(),
            audit_last_seq: Gauge::default(),
            audit_writable: Gauge::default(),
            audit_fsync_seconds: fast_buckets(),
            forwarder_enabled: Gauge::default(),
            forwarder_connected: Gauge::default(),
            forwarder_lag: Gauge::default(),
            ebpf_loaded: Family::default(),
            ebpf_families: Gauge::default(),
            ring_drops: Family::default(),
            mode: Family::default(),
            mode_expiry: Gauge::default(),
            scrapes: Counter::default(),
            http_errors: Family::default(),
            http_refused: Counter::default(),
            alerts_delivered: Family::default(),
            alerts_failures: Family::default(),
            alerts_dropped: Family::default(),
            alerts_lag_seconds: Family::default(),
            last_encode_us: AtomicU64::new(0),
            registry: Registry::default(),
        };
        let build: Family<Labels2, Gauge> = Family::default();
        let ebpf = match crate::signals::ebpf::embedded() {
            Ok(()) => "embedded".to_string(),
            Err(_) => "missing".to_string(),
        };
        build.get_or_create(&[("version", env!("CARGO_PKG_VERSION").to_string()), ("ebpf", ebpf)]).set(1);
        r.register("medic_build_info", "The build: version, and whether the eBPF programs are embedded (value 1)", build);
        r.register("medic_ticks", "Ticks completed (sample, evaluate, gate, record)", m.ticks.clone());
        r.register_with_unit(
            "medic_tick_duration",
            "Time from a tick's start to its last decision recorded",
            Unit::Seconds,
            m.tick_seconds.clone(),
        );
        r.register("medic_tick_overruns", "Ticks skipped because the last evaluation was still running", m.overruns.clone());
        r.register_with_unit(
            "medic_sample_duration",
            "Time one sample of procfs and the eBPF maps took",
            Unit::Seconds,
            m.sample_seconds.clone(),
        );
        r.register_with_unit(
            "medic_playbook_evaluation_duration",
            "Time one playbook's evaluation took",
            Unit::Seconds,
            m.eval_seconds.clone(),
        );
        r.register(
            "medic_playbook_failures",
            "Evaluations that failed or hit a limit (the playbook is then disabled for a back-off), by error code",
            m.eval_failures.clone(),
        );
        r.register("medic_playbooks_loaded", "Playbooks loaded", m.playbooks_loaded.clone());
        r.register("medic_playbooks_disabled", "Playbooks disabled for a back-off after a failure", m.playbooks_disabled.clone());
        r.register(
            "medic_decisions",
            "Gate decisions, written or coalesced into a repeat window, by playbook, decision and rule",
            m.decisions.clone(),
        );
        r.register("medic_actions", "Executed actions that ended, by kind and outcome status", m.actions.clone());
        r.register_with_unit("medic_action_duration", "How long an executed action ran", Unit::Seconds, m.action_seconds.clone());
        r.register("medic_audit_last_seq", "The last seq written to the audit log", m.audit_last_seq.clone());
        r.register(
            "medic_audit_writable",
            "1 when the audit log can be written; 0 while it cannot (nothing is decided then)",
            m.audit_writable.clone(),
        );
        r.register_with_unit(
            "medic_audit_fsync_duration",
            "Time to write one audit record and fdatasync it",
            Unit::Seconds,
            m.audit_fsync_seconds.clone(),
        );
        r.register("medic_forwarder_enabled", "1 when replication to MQTT is on ([mqtt] enabled)", m.forwarder_enabled.clone());
        r.register("medic_forwarder_connected", "1 while the forwarder is connected to the broker", m.forwarder_connected.clone());
        r.register("medic_forwarder_lag_records", "Audit records written but not yet acknowledged by the broker", m.forwarder_lag.clone());
        r.register("medic_ebpf_families_loaded", "eBPF families loaded (of tcp, sock, sched, block)", m.ebpf_families.clone());
        r.register("medic_ebpf_family_loaded", "1 when the eBPF family is loaded, 0 when it is unavailable", m.ebpf_loaded.clone());
        r.register(
            "medic_ebpf_ring_drops",
            "Events an eBPF program could not put on its ring buffer (the ring was full)",
            m.ring_drops.clone(),
        );
        r.register("medic_mode", "1 for the mode in effect (dry-run or live), 0 for the other", m.mode.clone());
        r.register(
            "medic_mode_expiry_timestamp_seconds",
            "When the mode in effect reverts (unix time); 0 when it does not expire",
            m.mode_expiry.clone(),
        );
        r.register("medic_metrics_scrapes", "Answers to GET /metrics", m.scrapes.clone());
        r.register(
            "medic_metrics_http_errors",
            "Requests to the metrics endpoint answered with an error, by status",
            m.http_errors.clone(),
        );
        r.register(
            "medic_metrics_http_refused",
            "Connections to the metrics endpoint refused, or dropped before their request was in for a newer one: too many at once",
            m.http_refused.clone(),
        );
        r.register("medic_alerts_delivered", "Notifications a sink accepted (2xx), by sink", m.alerts_delivered.clone());
        r.register("medic_alerts_failures", "POSTs to a sink that failed (retried), by sink and error code", m.alerts_failures.clone());
        r.register(
            "medic_alerts_dropped",
            "Records older than the sink's max_age_secs when their turn came, not delivered",
            m.alerts_dropped.clone(),
        );
        r.register(
            "medic_alerts_lag_seconds",
            "Age of the oldest record a sink has still to deliver (0 when it is up to date)",
            m.alerts_lag_seconds.clone(),
        );
        for mode in ["dry-run", "live"] {
            let _ = m.mode.get_or_create(&[("mode", mode.to_string())]);
        }
        Self { registry: r, ..m }
    }

    /// Adds a collector read at scrape time (the process, the eBPF programs).
    pub fn with_collector(mut self, c: Box<dyn prometheus_client::collector::Collector>) -> Self {
        self.registry.register_collector(c);
        self
    }

    /// The Prometheus text exposition (0.0.4) of every metric, or OpenMetrics when `openmetrics`.
    pub fn encode(&self, openmetrics: bool) -> String {
        let t = std::time::Instant::now();
        self.scrapes.inc();
        let mut out = String::with_capacity(16 * 1024);
        let res = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if let Err(e) = res {
            tracing::warn!(message = "Metrics not encoded.", error_code = "metrics_encode_failed", error = %e);
        }
        self.last_encode_us.store(t.elapsed().as_micros().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
        out
    }

    /// How long the last [`encode`](Self::encode) took.
    pub fn last_encode(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.last_encode_us.load(Ordering::Relaxed))
    }

    /// A tick ended after `secs`.
    pub fn tick(&self, secs: f64) {
        self.ticks.inc();
        self.tick_seconds.observe(secs);
    }

    pub fn overrun(&self) {
        self.overruns.inc();
    }

    pub fn sampled(&self, secs: f64) {
        self.sample_seconds.observe(secs);
    }

    pub fn evaluated(&self, playbook: &str, secs: f64) {
        self.eval_seconds.get_or_create(&[("playbook", playbook.to_string())]).observe(secs);
    }

    pub fn eval_failed(&self, playbook: &str, code: &str) {
        self.eval_failures.get_or_create(&[("playbook", playbook.to_string()), ("error_code", code.to_string())]).inc();
    }

    pub fn decided(&self, playbook: &str, decision: &str, rule: &str) {
        let l = [("playbook", playbook.to_string()), ("decision", decision.to_string()), ("rule", rule.to_string())];
        self.decisions.get_or_create(&l).inc();
    }

    /// An executed action ended with `status` after `secs`.
    pub fn action_ended(&self, kind: &str, status: &str, secs: f64) {
        self.actions.get_or_create(&[("kind", kind.to_string()), ("outcome", status.to_string())]).inc();
        self.action_seconds.get_or_create(&[("kind", kind.to_string())]).observe(secs);
    }

    /// The loaded and disabled playbooks.
    pub fn playbooks(&self, loaded: usize, disabled: usize) {
        self.playbooks_loaded.set(loaded.try_into().unwrap_or(i64::MAX));
        self.playbooks_disabled.set(disabled.try_into().unwrap_or(i64::MAX));
    }

    /// The audit log's last seq and whether it can be written.
    pub fn audit(&self, last_seq: u64, writable: bool) {
        self.audit_last_seq.set(last_seq.try_into().unwrap_or(i64::MAX));
        self.audit_writable.set(writable.into());
    }

    /// Replication's state, when it is on: connected, and the last seq the broker acknowledged.
    pub fn forwarder(&self, health: Option<(bool, u64)>, last_seq: u64) {
        self.forwarder_enabled.set(health.is_some().into());
        let (connected, acked) = health.unwrap_or((false, last_seq));
        self.forwarder_connected.set(connected.into());
        self.forwarder_lag.set(last_seq.saturating_sub(acked).try_into().unwrap_or(i64::MAX));
    }

    /// Which eBPF families are loaded.
    pub fn ebpf_families(&self, loaded: &[&str]) {
        for f in ["tcp", "sock", "sched", "block"] {
            self.ebpf_loaded.get_or_create(&[("family", f.to_string())]).set(loaded.contains(&f).into());
        }
        self.ebpf_families.set(loaded.len().try_into().unwrap_or(i64::MAX));
    }

    /// A family's ring-buffer drops since it was loaded (the kernel's counter).
    pub fn ring_drops(&self, family: &str, total: u64) {
        self.ring_drops.get_or_create(&[("family", family.to_string())]).inner().store(total, Ordering::Relaxed);
    }

    /// The mode in effect and when it expires (ms since the epoch).
    pub fn mode(&self, mode: &str, expires_ms: Option<i64>) {
        for m in ["dry-run", "live"] {
            self.mode.get_or_create(&[("mode", m.to_string())]).set((m == mode).into());
        }
        self.mode_expiry.set(expires_ms.map_or(0, |ms| ms.div_euclid(1000)));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_is_parsed_or_refused_with_the_key() {
        assert_eq!(MetricsConfig::default().address().unwrap().unwrap().to_string(), DEFAULT_LISTEN);
        assert_eq!(MetricsConfig { listen: String::new(), ..Default::default() }.address().unwrap(), None);
        let e = MetricsConfig { listen: "localhost".into(), ..Default::default() }.address().unwrap_err();
        assert!(e.contains("metrics.listen"), "{e}");
    }

    #[test]
    fn every_family_encodes_with_its_unit_and_suffix() {
        let m = Metrics::new();
        m.tick(0.01);
        m.decided("p", "would_execute", "dry_run");
        m.ring_drops("tcp", 7);
        m.mode("live", Some(1_700_000_000_500));
        let text = m.encode(false);
        for want in [
            "medic_ticks_total 1",
            "medic_tick_duration_seconds_count 1",
            "medic_decisions_total{playbook=\"p\",decision=\"would_execute\",rule=\"dry_run\"} 1",
            "medic_ebpf_ring_drops_total{family=\"tcp\"} 7",
            "medic_mode{mode=\"live\"} 1",
            "medic_mode_expiry_timestamp_seconds 1700000000",
            "medic_build_info{version=",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(m.encode(true).ends_with("# EOF\n"));
    }
}
