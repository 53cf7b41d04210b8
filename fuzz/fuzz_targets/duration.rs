//! Durations as configuration and policies give them: parsed or refused with
//! a message naming the key, never a panic, and never echoing the value: the
//! message is one of a fixed few, whatever was typed.
#![no_main]

use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "shutdown_grace is not a duration like \"10s\" or \"1m\": ";
const REASONS: [&str; 6] = [
    "invalid character at position N",
    "expected a number at position N",
    "a unit is needed after the number (ms, s, m, h, d, …)",
    "unknown unit (known: ns, us, ms, s, m, h, d, w, M, y)",
    "the number is too large",
    "it is empty",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(err) = patd::domain::clock::parse_duration("shutdown_grace", text) {
        let reason = err.strip_prefix(PREFIX).unwrap_or_else(|| panic!("{err}"));
        let shape: String = reason
            .split(|c: char| c.is_ascii_digit())
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join("N");
        let shape = if reason.ends_with(|c: char| c.is_ascii_digit()) {
            format!("{shape}N")
        } else {
            shape
        };
        assert!(REASONS.contains(&shape.as_str()), "{text:?}: {err}");
    }
});
