//! Configuration files: loaded or refused with a message, never a panic; and
//! a refusal never repeats what the file says (it could be a password).
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Planted where a value would go: it must not come back in an error.
const MARKER: &str = "hunter2hunter2";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = patd::config::Config::from_file_text(text);
    // The same file with the marker as every empty quoted value (keys are
    // named in errors on purpose: they say what to fix).
    let planted = text.replace("= \"\"", &format!("= \"{MARKER}\""));
    if let Err(err) = patd::config::Config::from_file_text(&planted) {
        assert!(!err.contains(MARKER), "{planted:?}: {err}");
    }
});
