//! The command line: parses what the user typed (clap), resolves it against the config, and
//! calls into the library. Exit codes: 0 success, 1 a failed check (invalid config or
//! playbook, failing test, broken audit chain), 2 a usage error, 3 an operational error.

mod escape;
use escape::esc;
mod fleet;

use crate::audit;
use crate::config::Config;
use crate::daemon::Agent;
use crate::playbooks::{self, bundled, testing, Runtime};
use crate::signals::{Roots, Sampler};
use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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
    Signals {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
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
    },
    /// Run the test cases beside playbooks (<name>.test.toml) on a simulated clock.
    /// PATH is a directory, a .rhai file, or omitted for the bundled playbooks.
    Test { path: Option<PathBuf> },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Show records, oldest first.
    Show {
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
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
        /// Also require this record to be in the log: a checkpoint (or any record) as JSON, as
        /// the broker holds it, or `{"seq":N,"hash":"…"}`; inline or a file name.
        #[arg(long, value_name = "JSON|FILE")]
        checkpoint: Option<String>,
    },
}

/// Parses arguments and runs; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("medic: error: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn state_dir_of(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(d) = arg {
        return Ok(d);
    }
    let (cfg, _) = Config::load(None)?;
    Ok(cfg.state_dir())
}

fn socket_of(c: &ControlArgs) -> anyhow::Result<PathBuf> {
    if let Some(s) = &c.socket {
        return Ok(s.clone());
    }
    let (cfg, _) = Config::load(c.config.as_deref())?;
    let own = cfg.control_socket(&cfg.state_dir());
    // A member of the control group (not root) talks to the system agent's socket, unless an
    // agent of their own is listening on theirs.
    let system = Path::new(crate::config::SYSTEM_CONTROL_SOCKET);
    if cfg.control.socket.is_none() && !own.exists() && system.exists() {
        return Ok(system.to_path_buf());
    }
    Ok(own)
}

/// Sends a control request; prints an error and returns exit code 3 when it fails.
fn control_call(c: &ControlArgs, req: &crate::control::Request) -> anyhow::Result<Result<serde_json::Value, ExitCode>> {
    let socket = socket_of(c)?;
    match crate::control::call(&socket, req) {
        Ok(r) if r.ok => Ok(Ok(r.result)),
        Ok(r) => {
            eprintln!("medic: {}", r.error.unwrap_or_default());
            Ok(Err(ExitCode::from(1)))
        }
        Err(e) => {
            eprintln!("medic: {e}");
            Ok(Err(ExitCode::from(3)))
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    use crate::control::Request;
    match cli.command {
        Command::Mode { mode, reason, ttl, node, group, fleet, sign_key, wait, control } => {
            let ttl_secs = match ttl.as_deref().map(humantime::parse_duration).transpose() {
                Ok(t) => t.map(|d| d.as_secs().max(1)),
                Err(e) => {
                    eprintln!("medic: --ttl: {e} (e.g. 30m, 2h)");
                    return Ok(ExitCode::from(2));
                }
            };
            if node.is_some() || group.is_some() || fleet {
                return remote_mode(&control, &mode, &reason, ttl_secs, node, group, sign_key, wait);
            }
            match control_call(&control, &Request::SetMode { mode, reason, ttl_secs })? {
                Ok(m) => {
                    let exp = m
                        .get("expires")
                        .and_then(|v| v.as_str())
                        .map(|e| format!(" until {e}, then {}", m["revert_to"].as_str().unwrap_or("?")))
                        .unwrap_or_default();
                    println!(
                        "mode: {}{} (set by {})",
                        esc(m["mode"].as_str().unwrap_or("?")),
                        esc(&exp),
                        esc(m["actor"].as_str().unwrap_or("?"))
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(code) => Ok(code),
            }
        }
        Command::Fleet(FleetCmd::Status { json, config }) => {
            let (cfg, _) = Config::load(config.as_deref())?;
            match fleet::statuses(&cfg.mqtt, Duration::from_secs(2)) {
                Ok(all) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&all)?);
                    } else {
                        println!("{:<20} {:<8} {:<8} {:<26} {:>8} VERSION", "NODE", "ONLINE", "MODE", "EXPIRES", "LAST SEQ");
                        for (n, v) in &all {
                            println!(
                                "{:<20} {:<8} {:<8} {:<26} {:>8} {}",
                                esc(n),
                                v["online"],
                                esc(v["mode"]["mode"].as_str().unwrap_or("-")),
                                esc(v["mode"]["expires"].as_str().unwrap_or("-")),
                                v["last_seq"],
                                esc(v["version"].as_str().unwrap_or("-"))
                            );
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("medic: {e}");
                    Ok(ExitCode::from(3))
                }
            }
        }
        Command::Status { json, control } => match control_call(&control, &Request::Status)? {
            Ok(st) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&st)?);
                } else {
                    print_status(&st);
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        Command::Breaker(BreakerCmd::List { json, control }) => match control_call(&control, &Request::Breakers)? {
            Ok(list) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else if list.as_array().is_none_or(|a| a.is_empty()) {
                    println!("no open breakers");
                } else {
                    for b in list.as_array().into_iter().flatten() {
                        println!(
                            "{} {} {} ({}), open since {}",
                            esc(b["playbook"].as_str().unwrap_or("")),
                            esc(b["action"].as_str().unwrap_or("")),
                            esc(&b["target"].to_string()),
                            esc(b["mode"].as_str().unwrap_or("")),
                            audit::now_rfc3339(b["open_since_ms"].as_i64().unwrap_or(0))
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        Command::Breaker(BreakerCmd::Reset { playbook, action, target, reason, control }) => {
            match control_call(&control, &Request::ResetBreaker { playbook, action, target, reason })? {
                Ok(_) => {
                    println!("breaker reset");
                    Ok(ExitCode::SUCCESS)
                }
                Err(code) => Ok(code),
            }
        }
        Command::Run { config, playbooks, state_dir, once } => {
            let (cfg, _) = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("medic: {e:#}");
                    return Ok(ExitCode::from(1));
                }
            };
            crate::telemetry::init(&cfg.log.level);
            let playbooks = playbooks.or(cfg.playbooks_dir.clone());
            let state_dir = state_dir.unwrap_or_else(|| cfg.state_dir());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let stops = {
                let _in_runtime = rt.enter();
                crate::daemon::StopSignals::listen()?
            };
            let mut agent = Agent::start(&cfg, playbooks, state_dir.clone())
                .with_context(|| format!("starting with state dir {}", state_dir.display()))?;
            tracing::info!(message = "Started.", message_id = crate::telemetry::ids::STARTED, node = %agent.node, mode = agent.mode().mode.as_str(), playbooks = ?agent.playbook_names(), audit = %agent.audit_path().display());
            if once {
                // A second sample a moment later gives CPU % and rates something to compare with.
                std::thread::sleep(std::time::Duration::from_millis(250));
                let report = agent.tick(audit::now_ms())?;
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
                agent.stop("--once")?;
                return Ok(ExitCode::SUCCESS);
            }
            let socket = cfg.control_socket(&state_dir);
            // Served by tasks on the loop's runtime; a bind failure is logged and the agent runs on.
            let _metrics = {
                let _in_runtime = rt.enter();
                crate::metrics::server::start(&cfg.metrics, agent.metrics())
            };
            rt.block_on(crate::daemon::run(agent, stops, cfg.signals.interval_secs, socket, cfg.control.group.clone(), cfg.mqtt.clone()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { config, playbooks } => {
            let mut ok = true;
            let cfg = match Config::load(config.as_deref()) {
                Ok((c, path)) => {
                    println!("config: {}: ok", path.map_or("(built-in defaults)".into(), |p| p.display().to_string()));
                    c
                }
                Err(e) => {
                    println!("{e:#}");
                    ok = false;
                    Config::default()
                }
            };
            let m = &cfg.mqtt;
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
            let dir = playbooks.or(cfg.playbooks_dir.clone());
            let rt = Runtime::new(cfg.playbooks.limits).with_history(playbooks::HistoryReach::of(&cfg.signals));
            let local = cfg.local_playbooks_dir.as_deref();
            let loaded = playbooks::load_with(&rt, dir.as_deref(), local)
                .map_err(|e| anyhow!("{}: {e}", dir.as_deref().or(local).unwrap_or(Path::new("")).display()))?;
            for r in loaded {
                match r {
                    Ok(pb) => println!("{}: ok ({})", pb.file, pb.meta.name),
                    Err(e) => {
                        println!("{e}");
                        ok = false;
                    }
                }
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Playbook(PlaybookCmd::Check { files }) => {
            let rt = Runtime::new(Default::default()).with_history(node_history());
            let mut ok = true;
            for f in files {
                let label = f.display().to_string();
                match playbooks::read_source(&f) {
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
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Playbook(PlaybookCmd::Test { path }) => playbook_test(path.as_deref()),
        Command::Signals { json } => {
            let (cfg, _) = Config::load(None).unwrap_or_default();
            let ebpf = crate::signals::ebpf::EbpfSignals::start(&cfg.signals.ebpf);
            let mut sampler = Sampler::new(Roots { proc: cfg.signals.proc_root, sys: cfg.signals.sys_root }).with_ebpf(ebpf);
            sampler.sample(audit::now_ms());
            std::thread::sleep(std::time::Duration::from_millis(250));
            let snap = sampler.sample(audit::now_ms());
            if json {
                println!("{}", serde_json::to_string_pretty(&snap)?);
            } else {
                print_snapshot(&snap);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCmd::Tail { fleet: _, json, config }) => {
            let (cfg, _) = Config::load(config.as_deref())?;
            match fleet::tail(&cfg.mqtt, json) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("medic: {e}");
                    Ok(ExitCode::from(3))
                }
            }
        }
        Command::Audit(AuditCmd::Verify { state_dir, checkpoint }) => {
            let dir = state_dir_of(state_dir)?;
            let checkpoint = match checkpoint {
                None => None,
                Some(c) => {
                    let text = if c.trim_start().starts_with('{') {
                        c
                    } else {
                        std::fs::read_to_string(&c).with_context(|| format!("reading checkpoint {c}"))?
                    };
                    match audit::verify::Checkpoint::parse(&text) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            eprintln!("medic: checkpoint: {e}");
                            return Ok(ExitCode::from(2));
                        }
                    }
                }
            };
            match audit::verify::verify_with(&dir, checkpoint.as_ref()).with_context(|| format!("reading {}", dir.display()))? {
                Ok(v) => {
                    println!(
                        "{}: ok, {} record(s) in {} segment(s), seq {}..{}, chain intact (last hash {})",
                        dir.display(),
                        v.records,
                        v.segments,
                        v.first_seq,
                        v.last_seq,
                        v.last_hash
                    );
                    if let Some(c) = &checkpoint {
                        println!("checkpoint seq {} found with its hash", c.seq);
                    }
                    for (seq, after) in &v.rewinds {
                        println!("warning: seq {seq} records a rewind: records after seq {after} were lost (audit_rewound)");
                    }
                    for seq in &v.chain_breaks {
                        println!("warning: seq {seq} records a chain break found at start (audit_chain_broken)");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(b) => {
                    println!("{}: {b}", dir.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Audit(AuditCmd::Show { state_dir, since, playbook, json }) => {
            let dir = state_dir_of(state_dir)?;
            let since = since.map(|s| parse_since(&s)).transpose()?;
            audit::verify::for_each_record(&dir, |r| {
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("{e}");
                        return;
                    }
                };
                let ts = r.get("ts").and_then(|v| v.as_str()).unwrap_or("");
                if let Some(s) = since {
                    if humantime::parse_rfc3339_weak(ts).is_ok_and(|t| t < s) {
                        return;
                    }
                }
                let pb = audit::record::playbook_name(&r);
                if playbook.as_deref().is_some_and(|want| pb.as_deref() != Some(want)) {
                    return;
                }
                if json {
                    println!("{}", audit::canonical(&serde_json::Value::Object(r)));
                } else {
                    println!("{}", show_line(&r));
                }
            })
            .with_context(|| format!("reading {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `medic mode ... --node/--group/--fleet`: publish, wait for acks, report.
#[allow(clippy::too_many_arguments)]
fn remote_mode(
    control: &ControlArgs,
    mode: &str,
    reason: &str,
    ttl_secs: Option<u64>,
    node: Option<String>,
    group: Option<String>,
    sign_key: Option<PathBuf>,
    wait: u64,
) -> anyhow::Result<ExitCode> {
    let (cfg, _) = Config::load(control.config.as_deref())?;
    let m = &cfg.mqtt;
    use crate::control::remote::Scope;
    let scope = match (&node, &group) {
        (Some(n), _) => Scope::Node(n.clone()),
        (_, Some(g)) => Scope::Group(g.clone()),
        _ => Scope::Fleet,
    };
    let topic = scope.topic(&m.prefix);
    let actor = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "unknown".into());
    // The scope is part of what is signed: the command is good on this topic only.
    let mut cmd = serde_json::json!({ "id": uuid::Uuid::now_v7().to_string(), "op": "set_mode", "scope": scope.to_string(), "mode": mode, "reason": reason, "actor": actor });
    if let Some(t) = ttl_secs {
        cmd["ttl_secs"] = t.into();
    }
    if let Some(k) = &sign_key {
        if let Err(e) = fleet::sign(&mut cmd, k) {
            eprintln!("medic: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    let expected: Vec<String> = match fleet::statuses(m, Duration::from_secs(2)) {
        Ok(s) => s
            .into_iter()
            .filter(|(n, v)| {
                v["online"] == serde_json::Value::Bool(true)
                    && node.as_ref().is_none_or(|want| want == n)
                    && group.as_ref().is_none_or(|g| v["groups"].as_array().is_some_and(|a| a.iter().any(|x| x == g)))
            })
            .map(|(n, _)| n)
            .collect(),
        Err(e) => {
            eprintln!("medic: {e}");
            return Ok(ExitCode::from(3));
        }
    };
    let acks = match fleet::send(m, &topic, &cmd, Duration::from_secs(wait)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("medic: {e}");
            return Ok(ExitCode::from(3));
        }
    };
    let mut failed = false;
    for a in &acks {
        let n = a["node"].as_str().unwrap_or("?");
        if a["ok"] == serde_json::Value::Bool(true) {
            println!("{n:<20} confirmed: {}", a["result"]);
        } else {
            failed = true;
            println!("{n:<20} REJECTED: {}", a["error"].as_str().unwrap_or(""));
        }
    }
    let answered: Vec<&str> = acks.iter().filter_map(|a| a["node"].as_str()).collect();
    let silent: Vec<&String> = expected.iter().filter(|n| !answered.contains(&n.as_str())).collect();
    for n in &silent {
        println!("{n:<20} did not answer within {wait}s");
    }
    println!(
        "{} confirmed, {} rejected, {} did not answer",
        acks.iter().filter(|a| a["ok"] == serde_json::Value::Bool(true)).count(),
        acks.iter().filter(|a| a["ok"] != serde_json::Value::Bool(true)).count(),
        silent.len()
    );
    Ok(if failed || !silent.is_empty() || acks.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn print_status(st: &serde_json::Value) {
    let m = &st["mode"];
    let s = |v: &serde_json::Value| esc(v.as_str().unwrap_or("")).into_owned();
    println!("node:     {} (medic {})", s(&st["node"]), s(&st["version"]));
    let exp = m["expires"].as_str().map(|e| format!(", reverts to {} at {e}", s(&m["revert_to"]))).unwrap_or_default();
    println!("mode:     {}{exp}\n          set by {}: {}", s(&m["mode"]), s(&m["actor"]), s(&m["reason"]));
    let a = &st["audit"];
    if a["writable"] == serde_json::Value::Bool(false) {
        println!(
            "audit:    NOT WRITABLE since {}: {}\n          no action is decided or started until it is",
            s(&a["down_since"]),
            s(&a["error"])
        );
    } else {
        println!("audit:    {} (last seq {})", s(&a["path"]), st["last_seq"]);
    }
    let i = &a["integrity"];
    if i["rewound"].is_object() {
        let r = &i["rewound"];
        println!(
            "audit:    REWOUND (recorded at seq {}, {}): seq {}..{} lost: {}",
            r["seq"],
            s(&r["ts"]),
            r["lost_from_seq"],
            r["lost_to_seq"],
            s(&r["reason"])
        );
    }
    if i["chain_broken"].is_object() {
        let b = &i["chain_broken"];
        println!(
            "audit:    CHAIN BROKEN after seq {} (recorded at seq {}, {}): {}",
            b["after_seq"],
            b["seq"],
            s(&b["ts"]),
            s(&b["reason"])
        );
    }
    let r = &st["replication"];
    if r.is_object() {
        if r["connected"] == serde_json::Value::Bool(true) {
            println!("mqtt:     connected to {}, acknowledged up to seq {}", s(&r["broker"]), r["cursor"]);
        } else {
            println!(
                "mqtt:     NOT CONNECTED to {} ({}); records wait in the local log (acknowledged up to seq {})",
                s(&r["broker"]),
                esc(r["error"].as_str().unwrap_or("connecting")),
                r["cursor"]
            );
        }
    }
    println!(
        "budget:   {} live, {} dry-run actions left this hour; {} running",
        st["budget_left"]["live"], st["budget_left"]["dry-run"], st["running_actions"]
    );
    println!("playbooks:");
    for p in st["playbooks"].as_array().into_iter().flatten() {
        let state = match p["disabled_until"].as_str() {
            Some(u) => format!("DISABLED until {u}: {}", s(&p["last_error"])),
            None if p["forced_dry_run"] == serde_json::Value::Bool(true) => "loaded (forced dry-run)".into(),
            None => "loaded".into(),
        };
        println!("  {:<24} {state}", s(&p["name"]));
    }
    let breakers = st["open_breakers"].as_array().cloned().unwrap_or_default();
    println!(
        "breakers: {}",
        if breakers.is_empty() { "none open".to_string() } else { format!("{} open (medic breaker list)", breakers.len()) }
    );
    if let Some(u) = st["unavailable_signals"].as_object().filter(|u| !u.is_empty()) {
        println!("unavailable signals: {}", esc(&u.keys().cloned().collect::<Vec<_>>().join(", ")));
    }
    print_history(&st["history"]);
}

/// The history's fill, and what it refused or evicted: a refused series is one playbooks see
/// as unavailable.
fn print_history(h: &serde_json::Value) {
    if !h.is_object() {
        return;
    }
    let mib = |v: &serde_json::Value| format!("{:.1} MiB", v.as_f64().unwrap_or(0.0) / 1_048_576.0);
    let keys = |v: &serde_json::Value| {
        esc(&v.as_array().into_iter().flatten().filter_map(|k| k.as_str()).collect::<Vec<_>>().join(", ")).into_owned()
    };
    println!(
        "history:  {} of {} series over {} s, {} (bound {}); {} series of exited processes dropped",
        h["series"],
        h["max_series"],
        h["span_secs"],
        mib(&h["bytes"]),
        mib(&h["bound_bytes"]),
        h["evicted_exited"]
    );
    if h["refused"].as_u64().unwrap_or(0) > 0 {
        println!(
            "          FULL: {} series refused since start, {} at the last tick (playbooks see them as unavailable; raise signals.max_series)\n          last refused: {}",
            h["refused"], h["refusing_now"], keys(&h["last_refused"])
        );
    }
    if h["evicted_live"].as_u64().unwrap_or(0) > 0 {
        println!(
            "          {} live series evicted for series playbooks read or node-wide ones\n          last evicted: {}",
            h["evicted_live"],
            keys(&h["last_evicted"])
        );
    }
}

fn parse_since(s: &str) -> anyhow::Result<std::time::SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let d = humantime::parse_duration(s).map_err(|_| anyhow!("--since {s:?}: expected RFC 3339 time or a duration like 1h"))?;
    Ok(std::time::SystemTime::now() - d)
}

/// One audit record as a line for humans; everything in it came from the log: escaped.
fn show_line(r: &serde_json::Map<String, serde_json::Value>) -> String {
    esc(&show_line_raw(r)).into_owned()
}

fn show_line_raw(r: &serde_json::Map<String, serde_json::Value>) -> String {
    let g = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let seq = r.get("seq").and_then(|v| v.as_u64()).unwrap_or(0);
    let pb = audit::record::playbook_name(r).unwrap_or_default();
    let head = format!("{seq:>6} {} {:<18}", g("ts"), g("kind"));
    match g("kind") {
        "action" => {
            let a = r.get("action").cloned().unwrap_or_default();
            let reason = r.get("trigger").and_then(|t| t.get("reason")).and_then(|v| v.as_str()).unwrap_or("");
            format!(
                "{head} {pb}: {} {} → {} ({}) — {reason}",
                a.get("kind").and_then(|v| v.as_str()).unwrap_or(""),
                a.get("target").map(|v| v.to_string()).unwrap_or_default(),
                g("decision"),
                g("rule")
            )
        }
        "playbook_rejected" | "playbook_disabled" => format!("{head} {pb} {}", g("error")),
        _ if !pb.is_empty() => format!("{head} {pb}"),
        _ => head,
    }
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

/// What the node's history holds (its config's `[signals]`, else the defaults): `playbook
/// check` and `playbook test` judge windows against it, as the agent will.
fn node_history() -> playbooks::HistoryReach {
    playbooks::HistoryReach::of(&Config::load(None).unwrap_or_default().0.signals)
}

fn playbook_test(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let rt = std::sync::Arc::new(Runtime::new(Default::default()).with_history(node_history()));
    let (mut passed, mut failed) = (0, 0);
    for (file, src, tfile, tests) in test_sources(path)? {
        let Some(tests) = tests else {
            println!("{file}: no test cases (expected {tfile})");
            continue;
        };
        match testing::run(&rt, &Default::default(), &file, &src, &tfile, &tests) {
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
    Ok(if failed == 0 && passed > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
