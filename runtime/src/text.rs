//! Text shown to a person: error chains printed once, and strings from the
//! guest or a container with their control characters escaped so they
//! cannot drive the terminal they are printed on.

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with every control character (C0, DEL, C1) and backslash escaped
/// (`\n`, `\t`, `\x1b`, `\u{9b}`, `\\`); printable text, spaces and
/// non-ASCII letters are kept as they are.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One line for an error and its causes, `a: b: c`, leaving out a cause
/// whose text the message before it already ends with (an error that
/// prints its source and also returns it from `source()`), so nothing is
/// said twice.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !s.is_empty() && !last.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        last = s;
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        assert!(matches!(escape_control("sleep 1000"), Cow::Borrowed(_)));
        assert_eq!(escape_control("héllo wörld"), "héllo wörld");
        assert_eq!(
            escape_control("a\x1b]0;pwned\x07b\nc\td\\"),
            "a\\x1b]0;pwned\\x07b\\nc\\td\\\\"
        );
        assert_eq!(escape_control("\u{9b}31m\x7f"), "\\u{9b}31m\\x7f");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct PrintsAndReturnsSource(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner reason")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("outer only")]
    struct ReturnsSource(#[source] Inner);

    #[test]
    fn a_cause_already_printed_is_not_repeated() {
        assert_eq!(
            error_chain(&PrintsAndReturnsSource(Inner)),
            "outer: inner reason"
        );
        assert_eq!(
            error_chain(&ReturnsSource(Inner)),
            "outer only: inner reason"
        );
        let e = anyhow::Error::new(PrintsAndReturnsSource(Inner)).context("create container \"x\"");
        assert_eq!(
            error_chain(e.as_ref()),
            "create container \"x\": outer: inner reason"
        );
    }
}
