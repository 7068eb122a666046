//! `medic-gen OUT_DIR`: writes medic's man pages and shell completions, generated from the same
//! clap definitions the binary parses (`medic::cli::Cli`), so they cannot drift from its options.
//! packaging/build runs it and puts the files into the packages:
//!
//! - `OUT_DIR/man/medic.8`, and a page per subcommand at every level (`medic-run.8`,
//!   `medic-audit-verify.8`, ...), section 8 (a daemon and its administration commands);
//! - `OUT_DIR/completions/medic.bash`, `_medic` (zsh) and `medic.fish`.

use anyhow::{bail, Context};
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: medic-gen OUT_DIR (writes OUT_DIR/man/*.8 and OUT_DIR/completions/*)");
    };
    let out = PathBuf::from(out);
    let man = out.join("man");
    let completions = out.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut cmd = medic::cli::Cli::command().disable_help_subcommand(true);
    // build() gives every subcommand its display name (`medic-audit-verify`), the page's title.
    cmd.build();
    pages(&cmd, &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "medic", &completions)
            .with_context(|| format!("writing the {shell} completion into {}", completions.display()))?;
    }
    Ok(())
}

/// One page for `cmd` and one for each of its subcommands, recursively.
fn pages(cmd: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages(sub, dir)?;
    }
    let page = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .source(format!("medic {}", env!("CARGO_PKG_VERSION")))
        .manual("System Administration");
    page.generate_to(dir).with_context(|| format!("writing {} into {}", page.get_filename(), dir.display()))?;
    Ok(())
}
