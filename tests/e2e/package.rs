//! The .deb and .rpm that `packaging/build` makes, tested as an operator meets them. The
//! packages are built once per test process by running `packaging/build` (incremental: cargo
//! reuses the release build), or taken from `$MEDIC_DIST` when it holds them for this version.
//! The upgrade tests also need a *previous* package: `packaging/build` run on this same tree
//! with `MEDIC_PKG_VERSION=<version>~prev`, which dpkg and rpm order before `<version>`.
//!
//! - the .deb's contents, control fields and conffiles (`dpkg-deb -c`, `-f`, `-I`), its binary
//!   (stripped, eBPF embedded, no newer glibc than Depends says), man pages and playbooks;
//! - the .rpm's files, config files and scriptlets (`rpm -qlp`, `-qcp`, `--scripts`), and an
//!   install, upgrade and erase with `rpm --root` into a scratch copy (an overlay) of the Debian
//!   root: rpm runs the scriptlets chrooted there, so the root needs a shell, getent, groupadd
//!   and systemctl, which an empty directory would not have;
//! - lintian on the .deb and rpmlint (Fedora's settings, packaging/rpm/rpmlint.toml) on the .rpm:
//!   no error and no warning;
//! - in the booted container (real systemd, tests/e2e/container.rs): `dpkg -i` on a fresh boot
//!   (active, enabled, group, dry-run, `medic status`), then an upgrade over the previous
//!   package (restarted, edited config, mode and audit chain kept), remove and purge (state
//!   kept, and said).

use crate::container::{rootfs, Container};
use crate::util::Tmpfs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The packages of this tree's version and of the previous one.
pub struct Dist {
    pub dir: PathBuf,
    pub version: String,
    pub deb: PathBuf,
    pub rpm: PathBuf,
    pub old_deb: PathBuf,
    pub old_rpm: PathBuf,
}

pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

pub fn previous_version() -> String {
    format!("{}~prev", version())
}

fn out(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn names(version: &str) -> (String, String) {
    let deb_arch = out(Command::new("dpkg").arg("--print-architecture")).trim().to_string();
    (format!("medic_{version}_{deb_arch}.deb"), format!("medic-{version}-1.{}.rpm", std::env::consts::ARCH))
}

/// `packaging/build` with `MEDIC_PKG_VERSION=version`: the two packages.
fn build(version: &str) -> (PathBuf, PathBuf) {
    let o = Command::new(crate::util::repo().join("packaging/build")).env("MEDIC_PKG_VERSION", version).output().unwrap();
    assert!(
        o.status.success(),
        "packaging/build (after `bash .ci/setup`, which installs cargo-deb and cargo-generate-rpm) failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let paths: Vec<PathBuf> = text.lines().map(|l| crate::util::repo().join(l)).collect();
    assert_eq!(paths.len(), 2, "packaging/build prints the .deb and the .rpm: {text}");
    (paths[0].clone(), paths[1].clone())
}

/// The packages, built once per test process (or found in `$MEDIC_DIST`).
pub fn dist() -> &'static Dist {
    static DIST: OnceLock<Dist> = OnceLock::new();
    DIST.get_or_init(|| {
        let (v, old) = (version(), previous_version());
        if let Some(dir) = std::env::var_os("MEDIC_DIST").map(PathBuf::from) {
            let ((deb, rpm), (old_deb, old_rpm)) = (names(&v), names(&old));
            let [deb, rpm, old_deb, old_rpm] = [deb, rpm, old_deb, old_rpm].map(|n| dir.join(n));
            if [&deb, &rpm, &old_deb, &old_rpm].iter().all(|p| p.is_file()) {
                return Dist { dir, version: v, deb, rpm, old_deb, old_rpm };
            }
        }
        // The previous version first, so that the packages of this version are the last written.
        let (old_deb, old_rpm) = build(&old);
        let (deb, rpm) = build(&v);
        Dist { dir: deb.parent().unwrap().to_path_buf(), version: v, deb, rpm, old_deb, old_rpm }
    })
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::to_string).collect()
}

/// Every subcommand's page name (`medic-audit-verify.8.gz`), from the clap definitions.
fn man_pages() -> Vec<String> {
    fn walk(cmd: &clap::Command, prefix: &str, acc: &mut Vec<String>) {
        acc.push(format!("{prefix}.8.gz"));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &format!("{prefix}-{}", sub.get_name()), acc);
        }
    }
    let mut acc = Vec::new();
    walk(&<medic::cli::Cli as clap::CommandFactory>::command(), "medic", &mut acc);
    acc
}

/// The files both packages hold, as (deb path, rpm path) where they differ.
fn expected_files() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        "/usr/bin/medic",
        "/etc/medic/medic.toml",
        "/usr/share/bash-completion/completions/medic",
        "/usr/share/fish/vendor_completions.d/medic.fish",
        "/usr/share/doc/medic/README.md",
        "/usr/share/doc/medic/CHANGELOG.md",
        "/usr/share/doc/medic/docs/CONFIG.md",
        "/usr/share/doc/medic/docs/PLAYBOOKS.md",
        "/usr/share/doc/medic/docs/FROM-MONIT.md",
        "/usr/share/medic/smoke-test",
    ]
    .iter()
    .map(|p| (p.to_string(), p.to_string()))
    .collect();
    v.push(("/lib/systemd/system/medic.service".into(), "/usr/lib/systemd/system/medic.service".into()));
    v.push(("/usr/share/zsh/vendor-completions/_medic".into(), "/usr/share/zsh/site-functions/_medic".into()));
    for m in man_pages() {
        v.push((format!("/usr/share/man/man8/{m}"), format!("/usr/share/man/man8/{m}")));
    }
    // The Monit examples are documentation: never in the directory the agent loads.
    for e in std::fs::read_dir(crate::util::repo().join("playbooks/examples")).unwrap().flatten() {
        let p = format!("/usr/share/doc/medic/examples/{}", e.file_name().to_string_lossy());
        v.push((p.clone(), p));
    }
    for (f, _, _) in medic::playbooks::bundled::PLAYBOOKS {
        for name in [f.to_string(), f.replace(".rhai", ".test.toml")] {
            v.push((format!("/usr/share/medic/playbooks/{name}"), format!("/usr/share/medic/playbooks/{name}")));
        }
    }
    v
}

#[test]
fn the_deb_holds_every_file_in_its_place_with_the_config_as_its_only_conffile() {
    let d = dist();
    assert!(d.deb.file_name().unwrap().to_string_lossy().starts_with(&format!("medic_{}_", d.version)), "{}", d.deb.display());
    let listing = out(Command::new("dpkg-deb").arg("-c").arg(&d.deb));
    let files: Vec<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();
    for (deb, _) in expected_files() {
        assert!(files.contains(&deb), "{deb} missing from the .deb:\n{listing}");
    }
    let loaded = files.iter().filter(|f| f.starts_with("/usr/share/medic/playbooks/")).count();
    assert_eq!(loaded, 2 * medic::playbooks::bundled::PLAYBOOKS.len(), "only the bundled playbooks where the agent loads them:\n{listing}");
    let bin = listing.lines().find(|l| l.ends_with("./usr/bin/medic")).unwrap();
    let fields: Vec<&str> = bin.split_whitespace().collect();
    assert!(fields[0] == "-rwxr-xr-x" && ["0/0", "root/root"].contains(&fields[1]), "{bin}");
    assert_eq!(lines(&out(Command::new("dpkg-deb").arg("-I").arg(&d.deb).arg("conffiles"))), ["/etc/medic/medic.toml"]);
    let field = |f: &str| out(Command::new("dpkg-deb").arg("-f").arg(&d.deb).arg(f)).trim().to_string();
    assert_eq!(field("Package"), "medic");
    assert_eq!(field("Version"), d.version);
    let depends = field("Depends");
    for dep in ["adduser", "init-system-helpers", "libc6 (>= ", "libgcc-s1"] {
        assert!(depends.contains(dep), "Depends: {depends}");
    }
    let info = out(Command::new("dpkg-deb").arg("-I").arg(&d.deb));
    for script in ["postinst", "prerm", "postrm"] {
        assert!(info.contains(&format!(" {script} ")), "{script} missing:\n{info}");
    }

    // The files themselves: the binary stripped, with the eBPF programs, and no newer glibc than
    // Depends names; the pages and completions real; the playbooks the bundled ones.
    let x = tempfile::tempdir().unwrap();
    out(Command::new("dpkg-deb").arg("-x").arg(&d.deb).arg(x.path()));
    let medic = x.path().join("usr/bin/medic");
    let version = out(Command::new(&medic).arg("--version"));
    assert!(version.contains("eBPF programs: embedded"), "{version}");
    let sections = out(Command::new("readelf").args(["-S", "-W"]).arg(&medic));
    assert!(!sections.contains(".symtab") && !sections.contains(".debug_"), "not stripped:\n{sections}");
    let glibc = out(Command::new("objdump").arg("-T").arg(&medic))
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .map(|v| v.split('.').map(|n| n.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>())
        .max()
        .unwrap();
    let wanted = depends.split("libc6 (>= ").nth(1).and_then(|r| r.split(')').next()).unwrap();
    let wanted: Vec<u32> = wanted.split('.').map(|n| n.parse().unwrap()).collect();
    assert!(glibc <= wanted, "the binary needs GLIBC_{glibc:?}, Depends says libc6 (>= {wanted:?})");
    let page = out(Command::new("zcat").arg(x.path().join("usr/share/man/man8/medic-run.8.gz")));
    assert!(page.contains(".TH medic-run 8") && page.contains("\\-\\-once"), "{page}");
    let bash = std::fs::read_to_string(x.path().join("usr/share/bash-completion/completions/medic")).unwrap();
    assert!(bash.contains("complete") && bash.contains("verify"), "{bash}");
    for (f, src, _) in medic::playbooks::bundled::PLAYBOOKS {
        assert_eq!(std::fs::read_to_string(x.path().join("usr/share/medic/playbooks").join(f)).unwrap(), *src);
    }
    // The packaged config is the repository's, and keeps a fresh install in dry-run: it has no
    // mode setting at all (the mode lives in the state dir; a fresh one is dry-run).
    let cfg = std::fs::read_to_string(x.path().join("etc/medic/medic.toml")).unwrap();
    assert_eq!(cfg, std::fs::read_to_string(crate::util::repo().join("packaging/medic.toml")).unwrap());
    assert!(!cfg.lines().any(|l| l.trim_start().starts_with("mode")), "{cfg}");
}

/// A linter's verdict: `tool args... package`, which must run, and its error and warning lines.
fn lint(tool: &str, args: &[&str], package: &Path, setup: &str) -> Vec<String> {
    let o = Command::new(tool)
        .args(args)
        .arg(package)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}: run 'bash .ci/setup' (apt-get install {setup})"));
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let found: Vec<String> = text
        .lines()
        .filter(|l| ["E: ", "W: "].iter().any(|t| l.starts_with(t) || l.contains(&format!(": {t}"))))
        .map(String::from)
        .collect();
    assert!(o.status.success() || !found.is_empty(), "{tool} failed ({}) without a tag:\n{text}", o.status);
    found
}

/// lintian, as a Debian packager runs it, finds no error and no warning in the .deb: the tags
/// that do not apply are overridden inside the package (packaging/debian/lintian-overrides),
/// each with its reason; the rest were fixed (packaging/README.md, "Lint").
#[test]
fn lintian_finds_no_error_or_warning_in_the_deb() {
    let found = lint("lintian", &["--info", "--display-info"], &dist().deb, "lintian");
    assert!(found.is_empty(), "lintian on {}:\n{}", dist().deb.display(), found.join("\n"));
}

/// rpmlint with Fedora's settings and the filters in packaging/rpm/rpmlint.toml (each with its
/// reason) finds no error and no warning in the .rpm.
#[test]
fn rpmlint_finds_no_error_or_warning_in_the_rpm() {
    let config = crate::util::repo().join("packaging/rpm/rpmlint.toml");
    let found = lint("rpmlint", &["-c", config.to_str().unwrap()], &dist().rpm, "rpmlint");
    assert!(found.is_empty(), "rpmlint on {}:\n{}", dist().rpm.display(), found.join("\n"));
}

#[test]
fn the_rpm_lists_its_files_its_noreplace_config_and_scriptlets() {
    let d = dist();
    let q = |args: &[&str]| out(Command::new("rpm").args(args).arg(&d.rpm));
    assert_eq!(q(&["-qp", "--queryformat", "%{NAME} %{VERSION}-%{RELEASE}"]), format!("medic {}-1", d.version));
    let files = lines(&q(&["-qlp"]));
    for (_, rpm) in expected_files() {
        assert!(files.contains(&rpm), "{rpm} missing from the .rpm: {files:?}");
    }
    assert_eq!(lines(&q(&["-qcp"])), ["/etc/medic/medic.toml"]);
    // %config(noreplace): the RPMFILE_CONFIG (1) and RPMFILE_NOREPLACE (16) bits.
    let flags = q(&["-qp", "--queryformat", "[%{FILENAMES} %{FILEFLAGS}\n]"]);
    let conf = flags.lines().find_map(|l| l.strip_prefix("/etc/medic/medic.toml ")).unwrap().parse::<u32>().unwrap();
    assert_eq!(conf & 17, 17, "medic.toml flags {conf}");
    let scripts = q(&["-qp", "--scripts"]);
    for s in ["groupadd -r medic", "systemctl enable medic.service", "systemctl try-restart medic.service", "kept /var/lib/medic"] {
        assert!(scripts.contains(s), "{s:?} missing from the scriptlets:\n{scripts}");
    }
    let requires = q(&["-qpR"]);
    assert!(requires.contains("libc.so.6") && requires.contains("shadow-utils"), "{requires}");
}

/// An overlay of the Debian root on a tmpfs: a scratch root with a shell, getent, groupadd
/// and systemctl for the rpm scriptlets. Unmounted on drop.
struct ScratchRoot {
    merged: PathBuf,
    _tmpfs: Tmpfs,
    _dir: tempfile::TempDir,
}

impl ScratchRoot {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tmpfs = Tmpfs::mount(&dir.path().join("t"), "size=256m");
        let (up, work, merged) = (tmpfs.0.join("up"), tmpfs.0.join("work"), dir.path().join("root"));
        for d in [&up, &work, &merged] {
            std::fs::create_dir_all(d).unwrap();
        }
        let opts = format!("lowerdir={},upperdir={},workdir={}", rootfs().display(), up.display(), work.display());
        out(Command::new("mount").args(["-t", "overlay", "medic-test", "-o", &opts]).arg(&merged));
        Self { merged, _tmpfs: tmpfs, _dir: dir }
    }

    fn rpm(&self, args: &[&str]) -> Output {
        Command::new("rpm").arg("--root").arg(&self.merged).args(args).output().unwrap()
    }
}

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        if !Command::new("umount").arg(&self.merged).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
        }
    }
}

fn ok(o: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    text
}

#[test]
fn the_rpm_installs_upgrades_and_erases_in_a_scratch_root_keeping_state_and_the_edited_config() {
    let d = dist();
    let root = ScratchRoot::new();
    let r = |p: &str| root.merged.join(p.trim_start_matches('/'));
    // The Debian root has no rpm database and no rpm-named dependencies: --nodeps.
    ok(root.rpm(&["--initdb"]));
    ok(root.rpm(&["-i", "--nodeps", d.old_rpm.to_str().unwrap()]));
    assert!(std::fs::read_to_string(r("/etc/group")).unwrap().lines().any(|l| l.starts_with("medic:")), "%pre made the group");
    let wants = r("/etc/systemd/system/multi-user.target.wants/medic.service");
    // systemctl names the unit by the first directory of its search path that has it (in a
    // Debian root /lib/systemd/system, the same directory as /usr/lib/systemd/system).
    let link = std::fs::read_link(&wants).expect("%post enabled the unit");
    assert!(link.ends_with("systemd/system/medic.service") && r(&link.to_string_lossy()).is_file(), "{}", link.display());
    assert!(r("/etc/medic/playbooks").is_dir());
    assert!(r("/usr/bin/medic").is_file());

    // An operator's edit and the agent's state survive the upgrade.
    let conf = r("/etc/medic/medic.toml");
    let edited = std::fs::read_to_string(&conf).unwrap().replace("# budget_per_hour = 20", "budget_per_hour = 7");
    std::fs::write(&conf, &edited).unwrap();
    std::fs::create_dir_all(r("/var/lib/medic")).unwrap();
    std::fs::write(r("/var/lib/medic/audit.log"), "evidence\n").unwrap();
    ok(root.rpm(&["-U", "--nodeps", d.rpm.to_str().unwrap()]));
    assert_eq!(ok(root.rpm(&["-q", "medic"])).trim(), format!("medic-{}-1.{}", d.version, std::env::consts::ARCH));
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), edited, "%config(noreplace) keeps the edited file");

    // Erase: the edited config is saved as .rpmsave, the state dir kept, and the scriptlet says so.
    let text = ok(root.rpm(&["-e", "--nodeps", "medic"]));
    assert!(text.contains("kept /var/lib/medic"), "{text}");
    assert_eq!(std::fs::read_to_string(r("/var/lib/medic/audit.log")).unwrap(), "evidence\n");
    assert_eq!(std::fs::read_to_string(r("/etc/medic/medic.toml.rpmsave")).unwrap(), edited);
    assert!(!r("/usr/bin/medic").exists() && !wants.exists(), "erased and disabled");
}

/// A booted container with the packages' directory bound at /dist.
fn boot(tag: &str) -> Container {
    let bind = format!("--bind-ro={}:/dist", dist().dir.display());
    Container::boot_with(&format!("medic-pkg-{}-{tag}", std::process::id()), &[&bind])
}

fn run_in(c: &Container, script: &str) -> (bool, String) {
    let o = c.exec(&["sh", "-c", script]);
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn in_dist(p: &Path) -> String {
    format!("/dist/{}", p.file_name().unwrap().to_string_lossy())
}

/// `medic status --json` inside the container, once the agent answers.
fn status(c: &Container) -> serde_json::Value {
    let mut st = serde_json::Value::Null;
    let answered = crate::util::wait_until(30, || {
        let (_, text) = run_in(c, "medic status --json 2>/dev/null");
        st = serde_json::from_str(&text).unwrap_or_default();
        st["last_seq"].is_u64()
    });
    assert!(answered, "medic status did not answer: {}", run_in(c, "medic status; journalctl -u medic --no-pager | tail -30").1);
    st
}

fn active(c: &Container) {
    let up = crate::util::wait_until(30, || run_in(c, "systemctl is-active medic").1.trim() == "active");
    assert!(
        up,
        "medic.service not active:\n{}",
        run_in(c, "systemctl status medic --no-pager; journalctl -u medic --no-pager | tail -30").1
    );
}

#[test]
fn a_fresh_deb_install_starts_medic_in_dry_run_under_systemd_with_its_group() {
    let _port = crate::container::DEFAULT_METRICS_PORT.lock().unwrap_or_else(|e| e.into_inner());
    let d = dist();
    let c = boot("fresh");
    let (installed, text) = run_in(&c, &format!("dpkg -i {}", in_dist(&d.deb)));
    assert!(installed, "{text}");
    assert!(text.contains("started in dry-run"), "{text}");
    active(&c);
    assert_eq!(c.sh("systemctl is-enabled medic"), "enabled");
    assert!(c.sh("getent group medic").starts_with("medic:x:"));
    let st = status(&c);
    assert_eq!(st["mode"]["mode"], "dry-run", "{st}");
    // The packaged config adds /etc/medic/playbooks to the bundled set: all of them run.
    let playbooks = st["playbooks"].as_array().cloned().unwrap_or_default();
    assert_eq!(playbooks.len(), medic::playbooks::bundled::PLAYBOOKS.len(), "{st}");
    assert!(playbooks.iter().all(|p| p["file"].as_str().is_some_and(|f| f.starts_with("bundled:"))), "{st}");
    // Every signal family, the four eBPF ones included, is there under the packaged unit.
    assert_eq!(st["unavailable_signals"], serde_json::json!({}), "{st}");
    // The control socket belongs to the medic group (config control.group), and the pages are there.
    assert_eq!(c.sh("stat -c %G /run/medic/control.sock"), "medic");
    assert!(c.path("/usr/share/man/man8/medic.8.gz").is_file());
    assert!(c.sh("medic --version").contains("eBPF programs: embedded"));
    // The post-install smoke test the package ships for operators passes, every check of it.
    let (passed, text) = run_in(&c, "/usr/share/medic/smoke-test");
    assert!(passed && text.contains("smoke test passed") && !text.contains("FAIL"), "{text}");
    for check in [
        "eBPF programs embedded",
        "medic.service active",
        "Type=notify",
        "watchdog set",
        "every signal family available",
        "audit chain verifies",
        "4 eBPF families loaded",
    ] {
        assert!(text.contains(check), "smoke test output lacks {check:?}:\n{text}");
    }
    // The flight recorder records under the hardened unit (its state directory), and what it
    // recorded replays: once a block is flushed (`recorder.flush_secs`, 10 s) it exports.
    let (exported, text) = run_in(
        &c,
        "for i in $(seq 40); do medic recording export --output /root/r.mrec >/dev/null 2>&1 && break; sleep 1; done; \
         medic recording export --output /root/r.mrec && stat -c %a /var/lib/medic/recording && \
         medic playbook replay --recording /root/r.mrec bundled",
    );
    assert!(exported && text.contains("frames") && text.contains("700"), "{text}");
    assert!(text.contains("replayed") && text.contains("close-wait-leak:"), "{text}");
}

/// Over the previous version (the same tree packaged as `<version>~prev`): the mode, the audit
/// chain, the live budget, an open breaker, the forwarder's cursor and an edited config survive
/// the upgrade; remove and purge keep /var/lib/medic.
#[test]
fn upgrading_the_deb_restarts_medic_keeping_mode_audit_chain_and_the_edited_config_and_remove_and_purge_keep_state() {
    let _port = crate::container::DEFAULT_METRICS_PORT.lock().unwrap_or_else(|e| e.into_inner());
    let d = dist();
    let c = boot("upgrade");
    let (installed, text) = run_in(&c, &format!("dpkg -i {}", in_dist(&d.old_deb)));
    assert!(installed, "{text}");
    active(&c);
    status(&c);
    // Operator state: a locally edited config (replication to a broker on the host, which the
    // container's network is; a tighter max_concurrent), a local playbook whose restarts fail
    // so that the budget is spent and a breaker opens, live mode for two hours, audit records.
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = crate::mqtt::Broker::listening_on(broker_dir.path(), &["127.0.0.1"]);
    broker.start();
    let sub = crate::mqtt::Subscriber::run(broker.port, "auditor-upgrade", 300);
    let conf = std::fs::read_to_string(c.path("/etc/medic/medic.toml")).unwrap();
    let conf = conf.replacen("\n[mqtt]\n", &format!("\n[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {}\n", broker.port), 1);
    let conf = conf.replacen("\n[policy]\n", "\n[policy]\nmax_concurrent = 1\n", 1);
    std::fs::write(c.path("/etc/medic/medic.toml"), &conf).unwrap();
    std::fs::write(
        c.path("/etc/medic/playbooks/upgrade-breaker.rhai"),
        crate::util::playbook_src(
            "upgrade-breaker",
            "#{ kind: \"restart_unit\", target: \"medic-missing.service\" }",
            "100",
            "0s",
            "restart_unit(\"medic-missing.service\", \"test\");",
        ),
    )
    .unwrap();
    c.sh("systemctl restart medic");
    active(&c);
    c.sh("medic mode live --reason 'package upgrade test' --ttl 2h");
    let edited = c.sh("cat /etc/medic/medic.toml");
    // Three failed restarts open the breaker (policy.breaker_after); all records replicated.
    let mut before = serde_json::Value::Null;
    let settled = crate::util::wait_until(60, || {
        before = status(&c);
        before["open_breakers"].as_array().is_some_and(|b| !b.is_empty())
            && before["replication"]["cursor"].as_u64().is_some()
            && before["replication"]["cursor"].as_u64() >= before["last_seq"].as_u64()
    });
    assert!(settled, "no open breaker or not replicated: {before}");
    assert_eq!(before["mode"]["mode"], "live", "{before}");
    let budget_before = before["budget_left"].clone();
    assert!(budget_before["live"].as_u64().is_some_and(|b| b < 20), "the restarts spent live budget: {before}");
    let cursor_before = before["replication"]["cursor"].as_u64().unwrap();
    let id = || c.sh("systemctl show -p InvocationID,MainPID medic");
    let first = id();

    let (upgraded, text) = run_in(&c, &format!("dpkg -i {}", in_dist(&d.deb)));
    assert!(upgraded, "{text}");
    assert_eq!(c.sh("dpkg-query -W -f '${Version}' medic"), d.version);
    active(&c);
    let after = status(&c);
    let second = id();
    assert_ne!(second, first, "restarted on upgrade: new InvocationID and MainPID");
    assert!(second.lines().zip(first.lines()).all(|(a, b)| a != b), "{first} / {second}");
    assert_eq!(c.sh("cat /etc/medic/medic.toml"), edited, "the edited conffile is kept");
    assert_eq!(after["mode"]["mode"], "live", "mode kept: {after}");
    assert!(after["last_seq"].as_u64() > before["last_seq"].as_u64(), "{before} / {after}");
    // Budgets and breakers: rebuilt from the kept audit log by the new version.
    assert_eq!(after["open_breakers"], before["open_breakers"], "breakers kept: {before} / {after}");
    assert_eq!(after["budget_left"], budget_before, "budget kept: {before} / {after}");
    // The forwarder's cursor: the new version goes on from it. Every record reaches the broker,
    // and what was acknowledged before the upgrade is not sent again wholesale (a reset cursor
    // would re-send all of it).
    let caught_up = crate::util::wait_until(60, || {
        let s = status(&c);
        s["replication"]["cursor"].as_u64() >= s["last_seq"].as_u64() && s["replication"]["cursor"].as_u64() > Some(cursor_before)
    });
    assert!(caught_up, "replication after the upgrade: {}", status(&c));
    let node = after["node"].as_str().unwrap_or_default().to_string();
    let last = status(&c)["replication"]["cursor"].as_u64().unwrap();
    let got = sub.seqs(&node);
    let missing: Vec<u64> = (1..=last).filter(|q| !got.contains(q)).collect();
    assert!(missing.is_empty(), "records never replicated: {missing:?}");
    let resent = got.iter().filter(|q| **q <= cursor_before).count() as u64 - cursor_before;
    assert!(resent <= 2, "{resent} records acknowledged before the upgrade were sent again: the cursor was not kept");
    // One chain across both versions: verified, and the new start continues it.
    let verify = run_in(&c, "medic audit verify");
    assert!(verify.0, "{}", verify.1);
    let log = std::fs::read_to_string(c.path("/var/lib/medic/audit.log")).unwrap();
    let kinds: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| r["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(kinds.iter().filter(|k| *k == "agent_started").count() >= 2, "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "agent_stopped"), "a clean stop before the restart: {kinds:?}");

    // Remove: stopped, the state dir and the conffile kept, and the operator is told.
    let (removed, text) = run_in(&c, "dpkg -r medic");
    assert!(removed, "{text}");
    assert!(text.contains("kept /var/lib/medic"), "{text}");
    assert_ne!(run_in(&c, "systemctl is-active medic").1.trim(), "active");
    assert!(c.path("/var/lib/medic/audit.log").is_file());
    assert!(c.path("/etc/medic/medic.toml").is_file());
    // Purge: /etc/medic goes, /var/lib/medic stays, and it says so.
    let (purged, text) = run_in(&c, "dpkg -P medic");
    assert!(purged, "{text}");
    assert!(text.contains("kept /var/lib/medic"), "{text}");
    assert!(!c.path("/etc/medic").exists());
    assert!(c.path("/var/lib/medic/audit.log").is_file());
}
