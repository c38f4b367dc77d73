//! How client input appears in an error message or a log line: escaped
//! (quotes, control characters such as CR, LF and NUL as `\r`, `\n`, `\0`,
//! so it cannot forge a log line or break out of a field) and cut to a
//! short prefix (an error never echoes a megabyte back, nor a log line
//! carries one).

use std::fmt;

/// Longest prefix of the input shown, in characters.
pub const SHOWN: usize = 40;

/// `s` as a quoted, escaped prefix: `"abc"`, or `"abcd…"` when cut.
pub fn quote(s: &str) -> Quoted<'_> {
    Quoted(s)
}

/// See [`quote`].
#[derive(Clone, Copy)]
pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = self.0.char_indices().nth(SHOWN).map_or(self.0.len(), |(i, _)| i);
        f.write_str("\"")?;
        for c in self.0[..cut].chars() {
            write!(f, "{}", c.escape_debug())?;
        }
        f.write_str(if cut < self.0.len() { "…\"" } else { "\"" })
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_cuts() {
        assert_eq!(quote("ops").to_string(), r#""ops""#);
        assert_eq!(quote("a\r\nb\0\"c").to_string(), r#""a\r\nb\0\"c""#);
        let long = "é".repeat(1_000_000);
        let shown = quote(&long).to_string();
        assert_eq!(shown, format!("\"{}…\"", "é".repeat(SHOWN)));
        assert!(!quote("x\u{1b}[31m").to_string().contains('\u{1b}'), "no terminal escapes");
    }
}
