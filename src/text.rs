//! Text helpers every layer shares: long server answers, error bodies and
//! message details are cut to a size that fits a log line, an error or an
//! AMQP header, always on a character boundary.

use std::borrow::Cow;

/// `s` cut to at most `max_bytes` bytes (on a character boundary), with `…`
/// appended when something was cut.
pub fn clip(s: &str, max_bytes: usize) -> Cow<'_, str> {
    if s.len() <= max_bytes {
        return Cow::Borrowed(s);
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_on_a_character_boundary() {
        assert_eq!(clip("abc", 10), "abc");
        assert!(matches!(clip("abc", 3), Cow::Borrowed(_)));
        assert_eq!(clip("ééé", 3), "é…");
        assert_eq!(clip("abcdef", 4), "abcd…");
    }
}
