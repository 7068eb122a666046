//! The bundled playbooks and their test cases, embedded in the binary so that `medic run` works
//! with no files installed. The sources live in the repository's `playbooks/` folder.

/// (file name, playbook source, test cases source).
pub const PLAYBOOKS: &[(&str, &str, &str)] = &[
    (
        "disk_old_logs.rhai",
        include_str!("../../../playbooks/disk_old_logs.rhai"),
        include_str!("../../../playbooks/disk_old_logs.test.toml"),
    ),
    (
        "close_wait_leak.rhai",
        include_str!("../../../playbooks/close_wait_leak.rhai"),
        include_str!("../../../playbooks/close_wait_leak.test.toml"),
    ),
    (
        "runaway_process.rhai",
        include_str!("../../../playbooks/runaway_process.rhai"),
        include_str!("../../../playbooks/runaway_process.test.toml"),
    ),
    (
        "unit_memory_growth.rhai",
        include_str!("../../../playbooks/unit_memory_growth.rhai"),
        include_str!("../../../playbooks/unit_memory_growth.test.toml"),
    ),
    (
        "tcp_retransmit_storm.rhai",
        include_str!("../../../playbooks/tcp_retransmit_storm.rhai"),
        include_str!("../../../playbooks/tcp_retransmit_storm.test.toml"),
    ),
    ("runq_latency.rhai", include_str!("../../../playbooks/runq_latency.rhai"), include_str!("../../../playbooks/runq_latency.test.toml")),
    ("disk_latency.rhai", include_str!("../../../playbooks/disk_latency.rhai"), include_str!("../../../playbooks/disk_latency.test.toml")),
];
