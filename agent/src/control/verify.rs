//! Signed fleet commands: the Ed25519 signature over a command's canonical JSON without `sig`
//! by a key of the node's trusted-keys directory, its timestamp window, and the nonces accepted
//! within it, kept in `<state_dir>/nonces` and fsync'd before a command counts (a restart does
//! not forget them; a store that cannot be read refuses older signed commands). Parsing the
//! envelope and its scope is `remote`'s.

use super::command::CommandError;
use super::remote::{Envelope, Scope};
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Nonces remembered at once; past this, signed commands are refused until the window moves.
pub const MAX_NONCES: usize = 4096;
/// The accepted nonces of the window, one `<ts> <nonce>` line each.
pub const NONCE_FILE: &str = "nonces";
/// How far a signed command's `ts` may be from the node's clock, in seconds.
pub const WINDOW_SECS: i64 = 300;
/// The canonical bytes a signature covers.
pub fn signed_bytes(raw: &Value) -> Vec<u8> {
    let mut v = raw.clone();
    if let Value::Object(m) = &mut v {
        m.remove("sig");
    }
    crate::audit::canonical(&v).into_bytes()
}

/// Checks signatures against the trusted keys and remembers nonces within the window, in
/// memory and in `<state_dir>/nonces`.
#[derive(Default)]
pub struct Verifier {
    keys: Vec<(String, VerifyingKey)>,
    seen: HashMap<String, i64>,
    /// Where accepted nonces are kept; `None`: memory only (tests).
    store: Option<PathBuf>,
    /// When the nonce store could not be read: signed commands made before this (s since the
    /// epoch) are refused, since whether they were used cannot be known.
    not_before: Option<i64>,
}

impl Verifier {
    /// Loads `*.pub` files (64 hex digits each) from `dir` (a missing dir means no keys) and the
    /// accepted nonces of the window from `state_dir`.
    pub fn load(dir: &Path, state_dir: &Path) -> Self {
        let mut keys = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "pub") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let key = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .and_then(|b| VerifyingKey::from_bytes(&b).ok());
                match key {
                    Some(k) => keys.push((p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), k)),
                    None => tracing::warn!(message = "Trusted key unreadable; ignored.", file = %p.display()),
                }
            }
        }
        let store = state_dir.join(NONCE_FILE);
        let now_s = crate::audit::now_ms() / 1000;
        let (seen, not_before) = match read_nonces(&store) {
            Ok(seen) => (seen, None),
            Err(e) => {
                tracing::error!(message = "Accepted nonces unreadable; signed commands made before now are refused.", error_code = "nonce_store", file = %store.display(), error = %e);
                (HashMap::new(), Some(now_s))
            }
        };
        Self { keys, seen, store: Some(store), not_before }
    }

    /// A verifier over `keys` that keeps nonces in memory only (tests).
    pub fn with_keys(keys: Vec<(String, VerifyingKey)>) -> Self {
        Self { keys, ..Default::default() }
    }

    /// The name of the key that signed `raw` for `scope` (the scope of the topic it arrived
    /// on), or why it is not acceptable. An accepted nonce is durable before this returns.
    pub fn check(&mut self, cmd: &Envelope, raw: &Value, scope: &Scope, now_s: i64) -> Result<String, CommandError> {
        let sig = cmd.sig.as_deref().ok_or(CommandError::Unsigned)?;
        let bad = |m: &str| CommandError::Signature(m.to_string());
        let ts = cmd.ts.ok_or_else(|| bad("signed commands need `ts`"))?;
        if now_s.abs_diff(ts) > WINDOW_SECS as u64 {
            return Err(bad(&format!("expired or from the future: ts {ts} is more than {WINDOW_SECS} s from now ({now_s})")));
        }
        if self.not_before.is_some_and(|nb| ts <= nb) {
            return Err(bad("made before the agent lost its nonce store; sign it again"));
        }
        let nonce = cmd.nonce.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| bad("signed commands need a `nonce`"))?;
        if nonce.len() > 128 || nonce.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("`nonce` must be 1 to 128 characters without spaces"));
        }
        let named = cmd.scope.as_deref().ok_or_else(|| CommandError::Scope("signed commands must name their `scope`".into()))?;
        if Scope::parse(named).as_ref() != Some(scope) {
            return Err(CommandError::Scope(format!("signed for {:?}, received on the topic of {scope}", super::command::bounded(named))));
        }
        let sig = hex::decode(sig)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| bad("`sig` is not a hex Ed25519 signature"))?;
        let msg = signed_bytes(raw);
        let key = self
            .keys
            .iter()
            .find(|(_, k)| k.verify(&msg, &sig).is_ok())
            .map(|(n, _)| n.clone())
            .ok_or_else(|| bad("signature does not verify with any trusted key"))?;
        self.seen.retain(|_, t| now_s.abs_diff(*t) <= 2 * WINDOW_SECS as u64);
        if self.seen.contains_key(nonce) {
            return Err(CommandError::Replayed(nonce.to_string()));
        }
        if self.seen.len() >= MAX_NONCES {
            return Err(CommandError::NonceStore(format!("{MAX_NONCES} nonces within the window; try again later")));
        }
        self.seen.insert(nonce.to_string(), ts);
        if let Err(e) = self.save() {
            self.seen.remove(nonce);
            return Err(CommandError::NonceStore(e.to_string()));
        }
        Ok(key)
    }

    fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.store else { return Ok(()) };
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{NONCE_FILE}.tmp"));
        let mut f = super::create_private(&tmp)?;
        let mut text = String::new();
        for (n, t) in &self.seen {
            text.push_str(&format!("{t} {n}\n"));
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// The nonce file: `<ts> <nonce>` lines; a missing file is an empty set.
fn read_nonces(path: &Path) -> Result<HashMap<String, i64>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let (ts, nonce) = line
            .split_once(' ')
            .and_then(|(t, n)| Some((t.parse::<i64>().ok()?, n)))
            .ok_or_else(|| format!("line {}: expected `<ts> <nonce>`", i + 1))?;
        out.insert(nonce.to_string(), ts);
    }
    Ok(out)
}
