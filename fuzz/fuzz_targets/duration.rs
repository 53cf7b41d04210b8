//! Durations as configuration and policies give them: parsed or refused with
//! a message naming the key, never a panic, never echoing the value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match patd::clock::parse_duration("shutdown_grace", text) {
        Ok(_) => {}
        Err(err) => {
            assert!(err.starts_with("shutdown_grace "), "{err}");
            if text.len() > 3 && !"is not a duration like".contains(text) {
                assert!(!err.contains(text), "{text:?}: {err}");
            }
        }
    }
});
