//! The one glob matcher: `*` (any run of characters) and `?` (one character), nothing else.
//! Every pattern medic matches goes through it: the playbook manifest's targets, the policy's
//! unit and process patterns, `clean_files`'s `glob`, and (one `/`-separated part at a time)
//! `policy.commands` argument patterns. It lives with the actions because they own most of its
//! uses; `playbooks::meta` re-exports it for the manifest.

/// Glob match with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*.service", "nginx.service"));
        assert!(!glob_match("*.service", "nginx.socket"));
        assert!(glob_match("/var/log/*", "/var/log/app"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("/var/log/*", "/etc"));
    }
}
