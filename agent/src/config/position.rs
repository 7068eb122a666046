//! Where in the file a config error is: `ConfigError` (`file:line:col: reason`), the line and
//! column of a byte offset, and of a key inside its table.

/// Finds `key` inside the table `section` (`""` for the top level, `policy.commands` for an
/// array of tables) and returns its (line, col); else the first mention of `key` anywhere.
pub(super) fn locate(text: &str, section: &str, key: &str) -> (usize, usize) {
    let mut current = String::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(h) = t.strip_prefix('[') {
            current = h.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_string();
        } else if current == section {
            if let Some(rest) = t.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return line_col(text, offset + (line.len() - t.len()));
                }
            }
        }
        offset += line.len();
    }
    // Inline tables (`commands = [{ ... timeout_secs = 0 }]`) and dotted keys.
    let qualified = format!("{section}.{key}");
    let off = text.find(&qualified).or_else(|| text.find(key)).unwrap_or(0);
    line_col(text, off)
}

/// Finds `key` inside the `n`th (0-based) `[[section]]` table and returns its (line, col); else
/// that table's header; else what [`locate`] finds.
pub(super) fn locate_nth(text: &str, section: &str, n: usize, key: &str) -> (usize, usize) {
    let header = format!("[[{section}]]");
    let (mut count, mut inside) = (0usize, false);
    let mut offset = 0;
    let mut header_at = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') {
            inside = t.replace([' ', '\t'], "").starts_with(&header);
            if inside {
                count += 1;
                if count == n + 1 {
                    header_at = Some(offset + (line.len() - t.len()));
                }
            }
        } else if inside && count == n + 1 {
            if let Some(rest) = t.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return line_col(text, offset + (line.len() - t.len()));
                }
            }
        }
        offset += line.len();
    }
    match header_at {
        Some(off) => line_col(text, off),
        None => locate(text, section, key),
    }
}

/// A config error, `file:line:col: reason`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{col}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub reason: String,
}

/// The 1-based (line, column) of byte `offset` in `text` (past the end: the end).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn a_nested_key_is_located_in_its_own_table() {
        let text = "[actions]\ntimeout_secs = 30\n[policy]\nbreaker_window_secs = 0\n[playbooks.limits]\nmax_call_levels = 10\n";
        let e = Config::parse("m.toml", text).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        let e = Config::parse("m.toml", "[playbooks.limits]\nmax_call_levels = 100000\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }
}
