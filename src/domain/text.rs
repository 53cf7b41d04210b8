//! Rules for text a client gives patd to store or to search by (token names,
//! subjects, accounts, filters, leak-report sources), and for showing stored
//! text on a terminal.
//!
//! Stored text is read back by people (`patd list`, `patd events`, audit
//! exports), so it must not be able to move a cursor, recolour a terminal,
//! reverse the reading order of what follows (Trojan Source, CVE-2021-42574),
//! hide itself, or forge a line. Refused everywhere:
//!
//! - control characters (Unicode `Cc`: C0, DEL and C1, including NUL, which
//!   Postgres text cannot hold);
//! - format characters (`Cf`: bidi embeddings, overrides and isolates,
//!   zero-width spaces and joiners, the BOM, tag characters, …);
//! - line and paragraph separators (`Zl`, `Zp`);
//!
//! and a value made only of whitespace and invisible characters is blank.

use std::borrow::Cow;

use crate::domain::error::InvalidArgument;

/// Unicode 15.1 `General_Category=Cf`.
const FORMAT: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Characters that are neither refused nor whitespace but show nothing
/// (default-ignorable code points and blank-looking letters): allowed inside a
/// value, not as all of it.
const INVISIBLE: &[(u32, u32)] = &[
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180D),
    (0x180F, 0x180F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xE0100, 0xE01EF),
];

fn in_ranges(c: char, ranges: &[(u32, u32)]) -> bool {
    let c = u32::from(c);
    ranges.iter().any(|&(low, high)| (low..=high).contains(&c))
}

/// Whether `c` may never appear in stored, human-readable text.
pub fn is_forbidden(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || in_ranges(c, FORMAT)
}

fn is_blank(c: char) -> bool {
    c.is_whitespace() || in_ranges(c, INVISIBLE)
}

/// A required human-readable field: trimmed, non-blank, at most `max_chars`
/// characters, no forbidden character. Messages name the field and the first
/// offending character by code point (never echoing the value).
pub fn validate_text(
    field: &str,
    value: &str,
    max_chars: usize,
) -> Result<String, InvalidArgument> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(InvalidArgument(format!("{field} is required")));
    }
    check_chars(field, trimmed, max_chars)?;
    if trimmed.chars().all(is_blank) {
        return Err(InvalidArgument(format!(
            "{field} is blank: it has only invisible characters"
        )));
    }
    Ok(trimmed.to_owned())
}

/// An optional text filter (e.g. `name_contains`): trimmed, `None` when empty,
/// else held to the rules of the field it searches.
pub fn validate_filter(
    field: &str,
    value: &str,
    max_chars: usize,
) -> Result<Option<String>, InvalidArgument> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    check_chars(field, trimmed, max_chars)?;
    Ok(Some(trimmed.to_owned()))
}

fn check_chars(field: &str, value: &str, max_chars: usize) -> Result<(), InvalidArgument> {
    // Counting stops past the maximum: a huge value costs no more than a long one.
    let chars = value.chars().take(max_chars + 1).count();
    if chars > max_chars {
        return Err(InvalidArgument(format!(
            "{field} is longer than {max_chars} characters: at most {max_chars} are allowed"
        )));
    }
    if let Some(bad) = value.chars().find(|&c| is_forbidden(c)) {
        return Err(InvalidArgument(format!(
            "{field} must not contain control, format or bidirectional characters (found U+{:04X})",
            u32::from(bad)
        )));
    }
    Ok(())
}

/// Text a client gives that patd keeps whatever it holds (a leak report's
/// `source` must never stop the revocation): forbidden characters become
/// U+FFFD, and it is cut to `max_chars` characters.
pub fn sanitize(value: &str, max_chars: usize) -> String {
    value
        .trim()
        .chars()
        .take(max_chars)
        .map(|c| if is_forbidden(c) { '\u{FFFD}' } else { c })
        .collect()
}

/// `value` safe to print on a terminal: every forbidden character as a JSON
/// escape (`\u001b`, `\u202e`; astral ones as surrogate pairs), so the result
/// is also a valid JSON string body and reads the same in both.
/// `keep_newlines` lets `\n` through (for output patd formats in lines itself).
pub fn escape(value: &str, keep_newlines: bool) -> Cow<'_, str> {
    let needs = |c: char| is_forbidden(c) && !(keep_newlines && c == '\n');
    if !value.chars().any(needs) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 16);
    for c in value.chars() {
        if needs(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names_refuse_controls_bidi_separators_and_blank_values() {
        for bad in [
            "a\u{0}b",
            "a\u{1b}[31mred",
            "admin\u{202e}txt.exe",
            "x\u{2066}y",
            "line\u{2028}break",
            "para\u{2029}graph",
            "zero\u{200b}width",
            "bom\u{feff}",
            "tag\u{e0041}",
            "c1\u{9b}",
            "del\u{7f}",
        ] {
            let err = validate_text("name", bad, 100).unwrap_err();
            assert!(err.0.contains("must not contain"), "{bad:?}: {err}");
            assert!(err.0.contains("U+"), "{err}");
        }
        for blank in ["\u{3164}", " \u{2800} ", "\u{115f}\u{fe0f}"] {
            let err = validate_text("name", blank, 100).unwrap_err();
            assert!(err.0.contains("blank"), "{blank:?}: {err}");
        }
        assert_eq!(
            validate_text("name", "  ", 100).unwrap_err().0,
            "name is required"
        );
        for good in [
            "ci deploy",
            "Déploiement façade",
            "部署",
            "emoji 🚀",
            "a\u{fe0f}",
        ] {
            assert_eq!(validate_text("name", good, 100).unwrap(), good);
        }
        assert!(validate_text("name", &"n".repeat(101), 100).is_err());
        assert!(validate_text("name", &"é".repeat(100), 100).is_ok());
    }

    #[test]
    fn filters_are_optional_bounded_and_checked() {
        assert_eq!(validate_filter("name_contains", "  ", 100), Ok(None));
        assert_eq!(
            validate_filter("name_contains", " ci ", 100),
            Ok(Some("ci".to_owned()))
        );
        let huge = "%".repeat(100_000);
        assert!(
            validate_filter("name_contains", &huge, 100)
                .unwrap_err()
                .0
                .contains("longer than 100")
        );
        assert!(validate_filter("name_contains", "a\0b", 100).is_err());
    }

    #[test]
    fn sources_are_kept_but_defused() {
        let source = sanitize(" https://x.example/\u{1b}[2J\nfake line\u{202e} ", 200);
        assert_eq!(
            source,
            "https://x.example/\u{fffd}[2J\u{fffd}fake line\u{fffd}"
        );
        assert_eq!(sanitize(&"a".repeat(500), 200).chars().count(), 200);
        assert_eq!(sanitize("a\0b", 200), "a\u{fffd}b");
    }

    #[test]
    fn escaping_defuses_terminals_and_stays_valid_json() {
        assert!(matches!(escape("plain café", false), Cow::Borrowed(_)));
        assert_eq!(escape("a\u{1b}[31mb\nc", false), "a\\u001b[31mb\\u000ac");
        assert_eq!(escape("a\nb\u{202e}", true), "a\nb\\u202e");
        assert_eq!(escape("\u{e0041}", false), "\\udb40\\udc41");
        let json = format!("\"{}\"", escape("x\u{202e}\u{9b}\u{e0041}y", false));
        let parsed: String = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, "x\u{202e}\u{9b}\u{e0041}y");
    }

    proptest! {
        #[test]
        fn escaped_text_holds_no_forbidden_character(value in "\\PC*|[\\x00-\\x{10ffff}]{0,40}") {
            prop_assert!(!escape(&value, false).chars().any(is_forbidden));
            prop_assert!(!sanitize(&value, 200).chars().any(is_forbidden));
            if let Ok(valid) = validate_text("name", &value, 100) {
                prop_assert!(!valid.chars().any(is_forbidden));
                prop_assert!(!valid.chars().all(is_blank));
            }
        }
    }
}
