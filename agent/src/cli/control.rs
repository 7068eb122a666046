//! Reaching the running agent: the socket to talk to (resolved from `--socket` or the config),
//! and one request with its answer mapped to a [`Failure`] (refused: 1; unreachable: 3).

use super::exit::Failure;
use super::ControlArgs;
use crate::config::resolve::{Overrides, Settings};
use crate::control::Request;
use std::path::PathBuf;

/// The socket `c` names: `--socket` as given (no config is read), else the one the settings
/// resolve.
pub fn socket(c: &ControlArgs) -> Result<PathBuf, Failure> {
    if let Some(s) = &c.socket {
        return Ok(s.clone());
    }
    let settings = Settings::load(&Overrides { config: c.config.clone(), ..Default::default() })?;
    Ok(settings.client_socket())
}

/// Sends `req` and returns the agent's result.
pub fn call(c: &ControlArgs, req: &Request) -> Result<serde_json::Value, Failure> {
    let socket = socket(c)?;
    match crate::control::call(&socket, req) {
        Ok(r) if r.ok => Ok(r.result),
        Ok(r) => Err(Failure::Refused(r.error.unwrap_or_default())),
        Err(e) => Err(Failure::op(anyhow::anyhow!(e))),
    }
}
