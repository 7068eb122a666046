//! The command line: what the user can type (clap), `main`, and a dispatch that calls one
//! function per command. Each group of commands lives in a file of its own (`run.rs`,
//! `validate.rs`, `playbook.rs`, `signals.rs`, `audit.rs`, `mode.rs`, `status.rs`,
//! `breaker.rs`, `fleet.rs`); each resolves the config through
//! `config::resolve::Settings::load`, and returns a `Failure` that `exit.rs` maps to the exit
//! code, in one place: 0 success, 1 a failed check (invalid playbook, failing test, broken audit
//! chain, a refused request), 2 a usage or config error, 3 an operational error.

mod audit;
mod breaker;
mod control;
mod escape;
mod exit;
mod explain;
mod fleet;
mod mode;
mod playbook;
mod recording;
mod replay;
mod run;
mod signals;
mod status;
mod validate;

pub use exit::Failure;

use crate::config::resolve::Overrides;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// `medic --version`: the version, and whether this build embeds the eBPF programs (and if not,
/// why), so that an eBPF-less build is never silent.
fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let ebpf = match crate::signals::ebpf::embedded() {
            Ok(()) => "embedded (tcp, sock, sched, block; CO-RE, tp_btf: no tracefs needed)".to_string(),
            Err(why) => format!("NOT embedded ({why}): eBPF signals are unavailable; install clang-19 and libbpf-dev, then rebuild"),
        };
        format!("{}\neBPF programs: {ebpf}", env!("CARGO_PKG_VERSION"))
    })
}

#[derive(Parser)]
#[command(
    name = "medic",
    version,
    long_version = long_version(),
    about = "Host-level auto-remediation agent.",
    long_about = "\
medic senses CPU, memory, disk, socket and TCP signals, evaluates Rhai playbooks against them, \
passes every requested action through one gate, and records every decision in a local, \
hash-chained, fsync'd audit log. A fresh install runs in dry-run: it decides and records what \
it would do and changes nothing on the host until an operator runs `medic mode live`.

Run `medic run` to start the agent on its defaults (bundled playbooks, dry-run, a state dir you \
can write)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground (SIGTERM/SIGINT stop it, SIGHUP reloads playbooks).
    Run {
        /// Config file (TOML). Default: /etc/medic/medic.toml if it exists, else built-in defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Directory of *.rhai playbooks. Default: the config's playbooks_dir, else the bundled set
        /// and the config's local_playbooks_dir.
        #[arg(long, value_name = "DIR")]
        playbooks: Option<PathBuf>,
        /// Where the audit log lives. Default: the config's state_dir, else /var/lib/medic (root)
        /// or ~/.local/state/medic.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Run one tick (sample, evaluate every playbook, record) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Check the config and every playbook; print file:line:col and exit 1 on any error.
    Validate {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        playbooks: Option<PathBuf>,
    },
    /// Check or test playbooks.
    #[command(subcommand)]
    Playbook(PlaybookCmd),
    /// Print the current signal snapshot.
    ///
    /// The config's probes (`[[probes.check]]`) and program sensors (`[[programs]]`) are run
    /// once each (within their timeouts) and shown; probes declared in playbooks' META are
    /// not: they run in `medic run` only.
    Signals {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Config file (its [signals] roots and eBPF settings). Default: /etc/medic/medic.toml if
        /// it exists, else built-in defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Read or verify the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Switch the running agent to live or dry-run (through its local control socket). The
    /// change, its actor (from the socket's peer credentials) and reason are audit records.
    Mode {
        /// `live` or `dry-run`.
        #[arg(value_parser = ["live", "dry-run"])]
        mode: String,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
        /// Revert to the current mode by itself after this long (e.g. 30m, 2h).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Over MQTT: one node (instead of the local agent).
        #[arg(long, value_name = "NODE", group = "scope")]
        node: Option<String>,
        /// Over MQTT: every node of a group.
        #[arg(long, value_name = "GROUP", group = "scope")]
        group: Option<String>,
        /// Over MQTT: the whole fleet.
        #[arg(long, group = "scope")]
        fleet: bool,
        /// Ed25519 secret key (64 hex digits) to sign the command; live mode needs it.
        #[arg(long, value_name = "FILE")]
        sign_key: Option<PathBuf>,
        /// Over MQTT: how long to wait for acknowledgements, in seconds.
        #[arg(long, default_value_t = 5)]
        wait: u64,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// The fleet, over the broker in the config's [mqtt].
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Show the running agent's mode, playbooks, budgets, breakers and audit health.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List or reset circuit breakers opened by actions that did not help.
    #[command(subcommand)]
    Breaker(BreakerCmd),
    /// The flight recorder's recording of what the agent sampled.
    #[command(subcommand)]
    Recording(RecordingCmd),
    /// Why a playbook did (or did not) act: when it was last evaluated and is next due, the
    /// values it read, what it asked and the gate's verdict, and what would block an action
    /// on its targets now (mode, manifest, policy, cooldown, rate limit, budget, in flight,
    /// breaker) with the time until each clears. Asks the running agent.
    Explain {
        /// One playbook by name (default: every loaded one).
        playbook: Option<String>,
        /// Check this target (a unit, a pid, a path, a command) instead of the playbook's own.
        #[arg(long, value_name = "TARGET")]
        target: Option<String>,
        /// One JSON object per playbook, one per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// How to reach the running agent.
#[derive(clap::Args)]
struct ControlArgs {
    /// Config file, to find the socket. Default: /etc/medic/medic.toml if it exists.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The control socket. Default: control.socket from the config, /run/medic/control.sock as
    /// root; for anyone else <state dir>/control.sock when an agent of theirs listens there,
    /// else the system agent's /run/medic/control.sock (members of control.group may use it).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Every node's retained status: online, mode and its expiry, last seq, version.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BreakerCmd {
    /// Open breakers.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Re-arm one breaker: the playbook may act on that target again.
    Reset {
        playbook: String,
        /// The action kind (restart_unit, signal_process, clean_files, run_command).
        action: String,
        target: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

#[derive(Subcommand)]
enum PlaybookCmd {
    /// Compile and statically check playbook files (syntax, META, unknown functions, manifest).
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The node's config: its [playbooks.limits] and [signals] history reach apply.
        /// Default: /etc/medic/medic.toml if it exists, else built-in defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run the test cases beside playbooks (<name>.test.toml) on a simulated clock, gated by the
    /// node's policy. PATH is a directory, a .rhai file, or omitted for the bundled playbooks.
    Test {
        path: Option<PathBuf>,
        /// The node's config: its [policy], [playbooks.limits] and [signals] history reach
        /// apply. Default: /etc/medic/medic.toml if it exists, else built-in defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Replay playbooks over the flight recorder's timeline (what the agent sampled), in
    /// dry-run with the node's policy: what they would have asked, what the gate would have
    /// decided, when; a summary per playbook.
    Replay(replay::ReplayArgs),
}

#[derive(Subcommand)]
enum RecordingCmd {
    /// Write a stretch of the recording as one file, to replay on another machine.
    Export(recording::ExportArgs),
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Show records, oldest first.
    Show {
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Config file, to find the state dir. Default: /etc/medic/medic.toml if it exists.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Only records at or after T (RFC 3339, e.g. 2026-11-26T10:00:00Z, or a duration ago: 1h).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Only records of this playbook.
        #[arg(long, value_name = "NAME")]
        playbook: Option<String>,
        /// One JSON record per line, as stored.
        #[arg(long)]
        json: bool,
    },
    /// Stream records as they are written: with --fleet, every node's, from the broker.
    Tail {
        /// Every node's records from the broker in the config's [mqtt].
        #[arg(long, required = true)]
        fleet: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Verify the hash chain across segments, against the anchor and the forwarder's cursor;
    /// exit 1 naming the first bad seq.
    Verify {
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Config file, to find the state dir. Default: /etc/medic/medic.toml if it exists.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Also require this record to be in the log: a checkpoint (or any record) as JSON, as
        /// the broker holds it, or `{"seq":N,"hash":"…"}`; inline or a file name.
        #[arg(long, value_name = "JSON|FILE")]
        checkpoint: Option<String>,
    },
}

/// Parses arguments and runs; returns the process exit code.
pub fn main() -> ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(),
    }
}

/// One function per command.
fn dispatch(cli: Cli) -> exit::Outcome {
    match cli.command {
        Command::Run { config, playbooks, state_dir, once } => {
            run::run(Overrides { config, state_dir, playbooks_dir: playbooks, socket: None }, once)
        }
        Command::Validate { config, playbooks } => validate::run(config, playbooks),
        Command::Playbook(PlaybookCmd::Check { files, config }) => playbook::check(&files, config),
        Command::Playbook(PlaybookCmd::Test { path, config }) => playbook::test(path.as_deref(), config),
        Command::Signals { json, config } => signals::run(json, config),
        Command::Audit(AuditCmd::Show { state_dir, config, since, playbook, json }) => {
            audit::show(state_dir, config, since, playbook, json)
        }
        Command::Audit(AuditCmd::Verify { state_dir, config, checkpoint }) => audit::verify(state_dir, config, checkpoint),
        Command::Audit(AuditCmd::Tail { fleet: _, json, config }) => fleet::tail_cmd(json, config),
        Command::Mode { mode, reason, ttl, node, group, fleet, sign_key, wait, control } => {
            mode::run(mode, reason, ttl, mode::Target { node, group, fleet, sign_key, wait }, &control)
        }
        Command::Fleet(FleetCmd::Status { json, config }) => fleet::status_cmd(json, config),
        Command::Status { json, control } => status::run(json, &control),
        Command::Explain { playbook, target, json, control } => explain::run(playbook, target, json, &control),
        Command::Playbook(PlaybookCmd::Replay(args)) => replay::run(args),
        Command::Recording(RecordingCmd::Export(args)) => recording::export(args),
        Command::Breaker(BreakerCmd::List { json, control }) => breaker::list(json, &control),
        Command::Breaker(BreakerCmd::Reset { playbook, action, target, reason, control }) => {
            breaker::reset(playbook, action, target, reason, &control)
        }
    }
}
