//! `medic recording export`: a stretch of the flight recorder's recording as one
//! self-contained file, to replay elsewhere (`medic playbook replay --recording FILE`, on a
//! laptop: no agent, root or /proc needed there).

use super::exit::{Failure, Outcome};
use super::replay::parse_time;
use crate::config::resolve::{Overrides, Settings};
use std::path::PathBuf;

/// Which stretch of which recording, and the config that finds it (shared by `recording
/// export` and `playbook replay`).
#[derive(clap::Args)]
pub struct Stretch {
    /// Start of the stretch: an RFC 3339 time (2026-11-27T10:00:00Z) or a duration ago (2h).
    /// Default: the oldest frame.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// End of the stretch, as --from. Default: the newest frame.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// The agent's state directory: its recording is `<DIR>/recording` (or `[recorder] dir`).
    #[arg(long, value_name = "DIR", conflicts_with = "recording")]
    state_dir: Option<PathBuf>,
    /// A recording directory, or a file written by `medic recording export`.
    #[arg(long, value_name = "PATH")]
    recording: Option<PathBuf>,
    /// The node's config: where its recording is and, for replay, its policy, playbook limits
    /// and history shape. Default: /etc/medic/medic.toml if it exists, else built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// A [`Stretch`] resolved: the settings, the recording's path, and the range in ms.
pub struct Resolved {
    pub settings: Settings,
    pub recording: PathBuf,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl Stretch {
    pub fn resolve(&self) -> Result<Resolved, Failure> {
        let settings = Settings::load(&Overrides { config: self.config.clone(), state_dir: self.state_dir.clone(), ..Default::default() })?;
        let recording = self.recording.clone().unwrap_or_else(|| settings.config.recorder.dir_in(&settings.state_dir));
        let from = self.from.as_deref().map(parse_time).transpose().map_err(|e| Failure::Usage(format!("--from: {e}")))?;
        let to = self.to.as_deref().map(parse_time).transpose().map_err(|e| Failure::Usage(format!("--to: {e}")))?;
        Ok(Resolved { settings, recording, from, to })
    }
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Where to write the file (replaced atomically, mode 0600).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    stretch: Stretch,
}

pub fn export(a: ExportArgs) -> Outcome {
    let Resolved { recording: src, from, to, .. } = a.stretch.resolve()?;
    let s = crate::recorder::export(&src, from, to, &a.output).map_err(|e| Failure::op(anyhow::anyhow!("{e}")))?;
    let span = match (s.first_ms, s.last_ms) {
        (Some(f), Some(l)) => format!("{} to {}", crate::audit::now_rfc3339(f), crate::audit::now_rfc3339(l)),
        _ => "no frames".into(),
    };
    println!("wrote {}: {} frames ({span}), {} bytes", a.output.display(), s.frames, s.bytes);
    if s.frames == 0 {
        return Err(Failure::Refused(format!("no recorded frames in {} for that stretch", src.display())));
    }
    Ok(())
}
