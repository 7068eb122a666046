//! Human output of data that came from the node or the log (process names, units, reasons,
//! targets, actors): a process can name itself with escape sequences, and a playbook or a broker
//! publisher writes reasons and actors. Printed raw, they would write to root's terminal (move
//! the cursor, retitle the window, hide text) or reorder what is shown (bidi overrides). Every
//! such string is passed through [`esc`] before it is printed; JSON output stays JSON.

use std::borrow::Cow;

/// Characters that are never printed as themselves: control characters (C0, DEL, C1), bidi
/// controls, zero-width and invisible format characters, line and paragraph separators.
fn dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// `s` with dangerous characters written as `\u{..}` escapes (and `\` as `\\`, so an escape in
/// the output always means one was made).
pub fn esc(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| dangerous(c) || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if dangerous(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn escape_sequences_and_bidi_overrides_are_shown_not_obeyed() {
        assert_eq!(esc("sshd"), "sshd");
        assert_eq!(esc("\u{1b}]0;pwned\u{7}x"), "\\u{1b}]0;pwned\\u{7}x");
        assert_eq!(esc("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(esc("a\nb\r\u{9b}"), "a\\u{a}b\\u{d}\\u{9b}");
        assert_eq!(esc("c:\\x"), "c:\\\\x");
        assert_eq!(esc("naïve → ok"), "naïve → ok");
    }
}
