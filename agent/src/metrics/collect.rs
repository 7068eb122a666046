//! Metrics read when scraped, not kept: the process's own CPU, memory and file descriptors
//! (`process_*`, the names every Prometheus client library uses, from `/proc/self`), and the
//! eBPF programs' run counts and run time (the kernel's `bpf_stats`, found by program id).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::os::fd::OwnedFd;

/// The process's own resources, from `proc` (normally `/proc`).
#[derive(Debug)]
pub struct Process {
    proc: std::path::PathBuf,
}

/// What one read of `/proc/self` gives.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessStat {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
}

/// Parses `/proc/<pid>/stat` (the fields after the command name, which may hold spaces and
/// parentheses) with the clock tick, page size and boot time given.
pub fn parse_stat(stat: &str, ticks_per_sec: u64, page: u64, boot_time: u64) -> Option<ProcessStat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    let hz = ticks_per_sec.max(1) as f64;
    Some(ProcessStat {
        cpu_seconds: (num(14)?.saturating_add(num(15)?)) as f64 / hz,
        start_time_seconds: boot_time as f64 + num(22)? as f64 / hz,
        virtual_bytes: num(23)?,
        resident_bytes: num(24)?.saturating_mul(page),
    })
}

impl Process {
    pub fn new(proc: impl Into<std::path::PathBuf>) -> Self {
        Self { proc: proc.into() }
    }

    fn read(&self) -> Option<ProcessStat> {
        let stat = std::fs::read_to_string(self.proc.join("self/stat")).ok()?;
        let boot = std::fs::read_to_string(self.proc.join("stat"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok())))
            .unwrap_or(0);
        parse_stat(&stat, rustix::param::clock_ticks_per_second(), rustix::param::page_size() as u64, boot)
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: f64) -> std::fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

impl Collector for Process {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        if let Some(s) = self.read() {
            let c = ConstCounter::new(s.cpu_seconds);
            c.encode(enc.encode_descriptor(
                "process_cpu",
                "User and system CPU time medic used",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?)?;
            gauge(&mut enc, "process_resident_memory", "Resident memory of medic", Some(&Unit::Bytes), s.resident_bytes as f64)?;
            gauge(&mut enc, "process_virtual_memory", "Virtual memory of medic", Some(&Unit::Bytes), s.virtual_bytes as f64)?;
            gauge(&mut enc, "process_start_time", "When medic started (unix time)", Some(&Unit::Seconds), s.start_time_seconds)?;
        }
        if let Ok(d) = std::fs::read_dir(self.proc.join("self/fd")) {
            gauge(&mut enc, "process_open_fds", "File descriptors medic holds open", None, d.count() as f64)?;
        }
        if let Some(max) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            gauge(&mut enc, "process_max_fds", "medic's limit of open file descriptors", None, max as f64)?;
        }
        Ok(())
    }
}

/// One eBPF program medic loaded: its family, its name in the object, its kernel id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub family: &'static str,
    pub name: String,
    pub id: u32,
}

/// The eBPF programs' run counts and run time. The kernel counts them only while stats are on:
/// the `kernel.bpf_stats_enabled` sysctl, or a `BPF_ENABLE_STATS` file descriptor, which this
/// holds for the agent's life when `metrics.bpf_stats` is set.
#[derive(Debug)]
pub struct Bpf {
    programs: Vec<Program>,
    _stats: Option<OwnedFd>,
}

impl Bpf {
    /// `enable`: turn the kernel's counting on for as long as this lives (needs CAP_SYS_ADMIN;
    /// when refused, says so in the log and goes on with what the sysctl gives).
    pub fn new(programs: Vec<Program>, enable: bool) -> Self {
        let stats = if enable && !programs.is_empty() {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!(message = "eBPF run-time statistics not enabled.", error_code = "bpf_stats_unavailable", error = %e);
                    None
                }
            }
        } else {
            None
        };
        Self { programs, _stats: stats }
    }

    fn enabled(&self) -> bool {
        self._stats.is_some() || std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() != "0")
    }
}

impl Collector for Bpf {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        gauge(
            &mut enc,
            "medic_ebpf_stats_enabled",
            "1 when the kernel counts eBPF program runs (metrics.bpf_stats or kernel.bpf_stats_enabled)",
            None,
            if self.enabled() { 1.0 } else { 0.0 },
        )?;
        if self.programs.is_empty() {
            return Ok(());
        }
        // One pass over the host's programs (ids are cheap to walk), keeping ours.
        let mut found: Vec<(&Program, u64, f64)> = Vec::with_capacity(self.programs.len());
        for info in aya::programs::loaded_programs().flatten() {
            if let Some(p) = self.programs.iter().find(|p| p.id == info.id()) {
                found.push((p, info.run_count(), info.run_time().as_secs_f64()));
            }
        }
        let labels = |p: &Program| [("family", p.family.to_string()), ("program", p.name.clone())];
        let mut runs = enc.encode_descriptor(
            "medic_ebpf_program_runs",
            "Times the kernel ran the eBPF program (counted while bpf stats are on)",
            None,
            MetricType::Counter,
        )?;
        for (p, n, _) in &found {
            ConstCounter::new(*n).encode(runs.encode_family(&labels(p))?)?;
        }
        let mut time = enc.encode_descriptor(
            "medic_ebpf_program_run",
            "Time the kernel spent running the eBPF program (counted while bpf stats are on)",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for (p, _, t) in &found {
            ConstCounter::new(*t).encode(time.encode_family(&labels(p))?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_command_name_holding_parentheses_and_spaces() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 123456789 300 18446744073709551615";
        let s = parse_stat(stat, 100, 4096, 1_700_000_000).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.start_time_seconds, 1_700_000_010.0);
        assert_eq!(s.virtual_bytes, 123_456_789);
        assert_eq!(s.resident_bytes, 300 * 4096);
    }

    #[test]
    fn a_short_or_garbled_stat_is_none_not_a_panic() {
        for s in ["", "1 (x", "1 (x) S", "1 (x) S 1 2 3 x y z", ")))"] {
            assert_eq!(parse_stat(s, 100, 4096, 0), None, "{s:?}");
        }
    }
}
