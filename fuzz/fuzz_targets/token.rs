//! The token parser: any input is a valid token of the format or `None`, never
//! a panic; a parsed token hashes as the store would hash it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patd::domain::token::{SecretHash, TokenFormat};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let format = TokenFormat::default();
    if let Some(hash) = format.parse(text) {
        assert_eq!(hash, SecretHash::of(text), "{text:?}");
    }
    // Any prefix patd accepts parses the same way.
    if let Some((prefix, rest)) = text.split_once('\n')
        && let Ok(format) = TokenFormat::new(prefix)
    {
        let _ = format.parse(rest);
    }
});
