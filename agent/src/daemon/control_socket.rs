//! The control socket's listener: binding it (root, the agent's user or the control group may
//! connect), accepting connections (at most [`MAX_CONTROL_CONNECTIONS`] at once, one more
//! answered "busy"), and reading each request in a task of its own (peer check, one line of
//! bounded size within [`CONTROL_READ_TIMEOUT`]) so an idle or slow client stalls nothing; only
//! a whole request reaches the loop, which answers it.

use crate::control::{Peer, Request, Response};
use std::sync::Arc;
use std::time::Duration;

/// Binds the control socket: only root (or the agent's user, or `group`) may connect.
pub(super) fn bind_control(path: &std::path::Path, group: Option<&str>) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use: another medic is running", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let gid = group.and_then(crate::control::group_id);
    if let (Some(g), Some(name)) = (gid, group) {
        rustix::fs::chown(path, None, Some(rustix::process::Gid::from_raw(g)))
            .map_err(|e| anyhow::anyhow!("{}: chown to group {name}: {e}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(if gid.is_some() { 0o660 } else { 0o600 }))?;
    Ok(l)
}

/// How long a control connection may take to send its request.
pub const CONTROL_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Control connections served at once; one more is answered "busy" and closed.
pub const MAX_CONTROL_CONNECTIONS: usize = 128;

/// A control request read and checked by its connection's task, for the loop to answer.
pub(super) struct ControlCall {
    pub req: Request,
    pub peer: Peer,
    pub reply: tokio::sync::oneshot::Sender<Response>,
}

/// Accepts control connections; each is read in a task of its own (peer check, one line of at
/// most `MAX_REQUEST` bytes within [`CONTROL_READ_TIMEOUT`]), so an idle or slow client stalls
/// nothing; only a whole request reaches the loop.
pub(super) async fn accept_control(
    listener: tokio::net::UnixListener,
    group: Option<String>,
    calls: tokio::sync::mpsc::Sender<ControlCall>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of fds, most likely: wait rather than spin.
                tracing::warn!(message = "Control socket accept failed.", error = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(message = "Control connection refused: too many at once.", max = MAX_CONTROL_CONNECTIONS);
            let mut out =
                serde_json::to_string(&Response::err("busy: too many control connections at once; try again")).unwrap_or_default();
            out.push('\n');
            let _ = stream.try_write(out.as_bytes());
            continue;
        };
        let (calls, group) = (calls.clone(), group.clone());
        tokio::spawn(async move {
            serve(stream, group.as_deref(), calls).await;
            drop(permit);
        });
    }
}

/// Reads one request from a control connection, has the loop answer it, writes the answer.
async fn serve(stream: tokio::net::UnixStream, group: Option<&str>, calls: tokio::sync::mpsc::Sender<ControlCall>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let Ok(cred) = stream.peer_cred() else { return };
    let peer = Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid().unwrap_or(0) };
    let (r, mut w) = stream.into_split();
    let answer = if !peer.allowed(group) {
        tracing::warn!(message = "Control request refused.", actor = %peer.actor());
        Response::err("permission denied: only root or the control group may use this socket")
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(r.take(crate::control::MAX_REQUEST as u64));
        match tokio::time::timeout(CONTROL_READ_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    if calls.send(ControlCall { req, peer, reply }).await.is_err() {
                        Response::err("the agent is stopping")
                    } else {
                        answer.await.unwrap_or_else(|_| Response::err("the agent is stopping"))
                    }
                }
                Err(e) => Response::err(format!("bad request: {e}")),
            },
            _ => Response::err(format!("no request within {} s", CONTROL_READ_TIMEOUT.as_secs())),
        }
    };
    let mut out = serde_json::to_string(&answer).unwrap_or_default();
    out.push('\n');
    let _ = tokio::time::timeout(CONTROL_READ_TIMEOUT, w.write_all(out.as_bytes())).await;
}
