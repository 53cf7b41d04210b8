//! The text rules: a value accepted as a name holds no forbidden character;
//! what is sanitised or escaped holds none either, and escaping reads back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patd::domain::text;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = text::validate_text("name", value, 100) {
        assert!(!name.chars().any(text::is_forbidden));
        assert!(name.chars().count() <= 100);
    }
    assert!(!text::sanitize(value, 200).chars().any(text::is_forbidden));
    let escaped = text::escape(value, false);
    assert!(!escaped.chars().any(text::is_forbidden));
    if !value.contains('\\') && !value.contains('"') {
        let json = format!("\"{escaped}\"");
        if let Ok(back) = serde_json_free_unescape(&json) {
            assert_eq!(back, value);
        }
    }
});

/// JSON `\uXXXX` escapes (and surrogate pairs) undone, as a JSON parser would.
fn serde_json_free_unescape(json: &str) -> Result<String, ()> {
    let inner = &json[1..json.len() - 1];
    let mut units: Vec<u16> = Vec::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if chars.next() != Some('u') {
                return Err(());
            }
            let hex: String = chars.by_ref().take(4).collect();
            units.push(u16::from_str_radix(&hex, 16).map_err(|_| ())?);
        } else {
            let mut buf = [0u16; 2];
            units.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    String::from_utf16(&units).map_err(|_| ())
}
