//! Logging: structured `tracing` events to stderr (journald captures them under systemd).
//! `MEDIC_LOG` overrides the configured level with an `EnvFilter` directive.

pub fn init(level: &str) {
    let filter = std::env::var("MEDIC_LOG").unwrap_or_else(|_| level.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).with_target(false).try_init();
}
