//! The secret format: generation, parsing, checksum, hashing and display hint.
//!
//! A secret is `<prefix><43 base62 random chars><6 base62 chars of CRC32>`, e.g.
//! `patd_` + 49 characters. 43 base62 characters carry 256.03 bits from the OS
//! CSPRNG; the CRC32 of those characters lets a malformed or mistyped token be
//! rejected without touching storage and lets secret scanners confirm a match.
//! Storage only ever sees a domain-separated BLAKE3 hash of the whole secret.

use std::fmt;
use std::sync::LazyLock;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const RANDOM_CHARS: usize = 43;
pub const CHECKSUM_CHARS: usize = 6;
const BODY_CHARS: usize = RANDOM_CHARS + CHECKSUM_CHARS;
pub const DEFAULT_PREFIX: &str = "patd_";
const MAX_PREFIX_CHARS: usize = 16;
/// Length of token ids: 22 base62 characters, 131 random bits.
const ID_CHARS: usize = 22;

/// BLAKE3 in key-derivation mode with a context string of its own, so a token hash
/// can never collide with any other use of BLAKE3 in or around the system.
static HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key("patd 2026-11-27 personal access token v1"));

/// A plaintext secret. `Debug` and `Display` redact it: only [`Secret::expose`]
/// gives the text, and only the create response and the operator CLI call it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The hash under which a secret is stored and looked up.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    pub fn of(secret: &str) -> SecretHash {
        let mut hasher = HASHER.clone();
        hasher.update(secret.as_bytes());
        SecretHash(*hasher.finalize().as_bytes())
    }

    /// Constant-time equality (via `blake3::Hash`), for comparing a stored hash
    /// with the hash of a presented secret.
    pub fn matches(&self, stored: &SecretHash) -> bool {
        blake3::Hash::from_bytes(self.0) == blake3::Hash::from_bytes(stored.0)
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// Bytes read from storage that are not a 32-byte hash.
#[derive(Debug)]
pub struct MalformedHash(pub usize);

impl fmt::Display for MalformedHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stored secret hash is {} bytes, not 32", self.0)
    }
}

impl std::error::Error for MalformedHash {}

impl TryFrom<Vec<u8>> for SecretHash {
    type Error = MalformedHash;

    fn try_from(bytes: Vec<u8>) -> Result<SecretHash, MalformedHash> {
        let len = bytes.len();
        Ok(SecretHash(
            bytes.try_into().map_err(|_| MalformedHash(len))?,
        ))
    }
}

/// Why a token prefix was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidPrefix(pub String);

impl fmt::Display for InvalidPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The configured secret format (its prefix).
#[derive(Clone, Debug)]
pub struct TokenFormat {
    prefix: String,
}

impl Default for TokenFormat {
    fn default() -> Self {
        TokenFormat {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl TokenFormat {
    /// A prefix is 2 to 16 ASCII letters, digits or `_`, ending in `_` so that the
    /// random part is clearly delimited for people and for scanners' regexes.
    pub fn new(prefix: &str) -> Result<TokenFormat, InvalidPrefix> {
        let valid_chars = prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(2..=MAX_PREFIX_CHARS).contains(&prefix.len()) || !valid_chars || !prefix.ends_with('_')
        {
            return Err(InvalidPrefix(format!(
                "token prefix {prefix:?} must be 2 to {MAX_PREFIX_CHARS} ASCII letters, digits or '_', ending in '_'"
            )));
        }
        Ok(TokenFormat {
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A regular expression that matches exactly the secrets of this format.
    pub fn regex(&self) -> String {
        format!("{}[0-9A-Za-z]{{{BODY_CHARS}}}", self.prefix)
    }

    /// A fresh secret from the OS CSPRNG.
    pub fn generate(&self) -> Secret {
        self.compose(&random_base62(RANDOM_CHARS))
    }

    /// The secret whose random part is `random` (43 base62 characters). Only
    /// [`TokenFormat::generate`] and deterministic benchmark fixtures call this.
    pub fn compose(&self, random: &str) -> Secret {
        debug_assert_eq!(random.len(), RANDOM_CHARS);
        let checksum = base62_fixed(crc32fast::hash(random.as_bytes()), CHECKSUM_CHARS);
        Secret(format!("{}{random}{checksum}", self.prefix))
    }

    /// The hash to look up if `presented` is well-formed (prefix, length, alphabet,
    /// checksum), else `None`. Costs no storage access.
    pub fn parse(&self, presented: &str) -> Option<SecretHash> {
        let body = presented.strip_prefix(self.prefix.as_str())?;
        if body.len() != BODY_CHARS || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let (random, checksum) = body.split_at(RANDOM_CHARS);
        if parse_base62(checksum)? != u64::from(crc32fast::hash(random.as_bytes())) {
            return None;
        }
        Some(SecretHash::of(presented))
    }

    /// The non-secret display form: prefix, an ellipsis and the last four characters.
    pub fn hint(&self, secret: &Secret) -> String {
        let text = secret.expose();
        format!("{}...{}", self.prefix, &text[text.len() - 4..])
    }
}

/// A new opaque token id from the OS CSPRNG.
pub fn generate_id() -> String {
    random_base62(ID_CHARS)
}

/// Whether `id` has the shape of a token id (so anything else is a clear
/// INVALID_ARGUMENT rather than a lookup).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == ID_CHARS && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `len` uniformly distributed base62 characters from the OS CSPRNG.
fn random_base62(len: usize) -> String {
    base62_from(len, |buf| {
        getrandom::fill(buf).expect("the OS random number generator failed")
    })
}

/// `len` base62 characters drawn from the bytes `fill` supplies. Bytes of 248 or
/// more are rejected so that `byte % 62` has no bias (248 = 4 * 62).
pub fn base62_from(len: usize, mut fill: impl FnMut(&mut [u8])) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        fill(&mut buf);
        for &byte in buf.iter().filter(|&&b| b < 248) {
            if out.len() == len {
                break;
            }
            out.push(BASE62[usize::from(byte % 62)] as char);
        }
    }
    out
}

fn base62_fixed(mut value: u32, width: usize) -> String {
    let mut digits = vec![b'0'; width];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(digits).expect("base62 digits are ASCII")
}

fn parse_base62(digits: &str) -> Option<u64> {
    digits.bytes().try_fold(0u64, |acc, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            b'a'..=b'z' => b - b'a' + 36,
            _ => return None,
        };
        Some(acc * 62 + u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_has_the_documented_shape_and_parses() {
        let format = TokenFormat::default();
        let secret = format.generate();
        let text = secret.expose();
        assert!(text.starts_with("patd_"));
        assert_eq!(text.len(), "patd_".len() + 49);
        assert!(
            text["patd_".len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        );
        assert_eq!(format.parse(text), Some(SecretHash::of(text)));
    }

    #[test]
    fn secrets_are_distinct() {
        let format = TokenFormat::default();
        let mut seen: Vec<String> = (0..1000)
            .map(|_| format.generate().expose().to_owned())
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 1000);
    }

    #[test]
    fn random_part_uses_the_whole_alphabet() {
        let mut counts = [0usize; 62];
        for _ in 0..500 {
            for b in random_base62(RANDOM_CHARS).bytes() {
                counts[BASE62.iter().position(|&c| c == b).unwrap()] += 1;
            }
        }
        // 21,500 draws, ~347 expected per character: every character appears.
        assert!(counts.iter().all(|&n| n > 200), "{counts:?}");
    }

    #[test]
    fn any_single_character_change_is_rejected() {
        let format = TokenFormat::default();
        let secret = format.generate();
        let text = secret.expose();
        for position in "patd_".len()..text.len() {
            let mut bytes = text.as_bytes().to_vec();
            bytes[position] = if bytes[position] == b'a' { b'b' } else { b'a' };
            let altered = String::from_utf8(bytes).unwrap();
            assert_eq!(format.parse(&altered), None, "position {position}");
        }
    }

    #[test]
    fn malformed_input_is_rejected() {
        let format = TokenFormat::default();
        let valid = format.generate().expose().to_owned();
        let cases = [
            String::new(),
            "patd_".to_owned(),
            valid[..valid.len() - 1].to_owned(),
            format!("{valid}0"),
            valid.replacen("patd_", "ghp_", 1),
            format!(" {valid}"),
            valid.replacen(&valid[10..12], "é", 1),
            "x".repeat(100 * 1024),
            format!("patd_{}", "\u{1F600}".repeat(12) + "a"),
        ];
        for case in cases {
            assert_eq!(format.parse(&case), None, "{case:?}");
        }
    }

    #[test]
    fn checksum_of_all_zeros_is_verified_not_assumed() {
        let format = TokenFormat::default();
        let body = "0".repeat(BODY_CHARS);
        assert_eq!(format.parse(&format!("patd_{body}")), None);
    }

    #[test]
    fn custom_prefix_is_used_and_enforced() {
        let format = TokenFormat::new("acme_pat_").unwrap();
        let secret = format.generate();
        assert!(secret.expose().starts_with("acme_pat_"));
        assert!(format.parse(secret.expose()).is_some());
        assert!(TokenFormat::default().parse(secret.expose()).is_none());
        for bad in ["", "_", "pat", "pat-", "p at_", "averyveryverylongprefix_"] {
            assert!(TokenFormat::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn regex_shape_is_documented() {
        assert_eq!(TokenFormat::default().regex(), "patd_[0-9A-Za-z]{49}");
    }

    #[test]
    fn hash_is_domain_separated_blake3() {
        let text = "patd_example";
        assert_ne!(
            SecretHash::of(text).0,
            *blake3::hash(text.as_bytes()).as_bytes()
        );
        assert_eq!(SecretHash::of(text), SecretHash::of(text));
        assert!(SecretHash::of(text).matches(&SecretHash::of(text)));
        assert!(!SecretHash::of(text).matches(&SecretHash::of("other")));
        assert!(SecretHash::try_from(vec![0u8; 31]).is_err());
        assert_eq!(
            SecretHash::try_from(vec![7u8; 32]).unwrap(),
            SecretHash([7u8; 32])
        );
    }

    #[test]
    fn hint_shows_prefix_and_last_four_only() {
        let format = TokenFormat::default();
        let secret = format.generate();
        let hint = format.hint(&secret);
        assert_eq!(hint, format!("patd_...{}", &secret.expose()[50..]));
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn ids_are_well_formed() {
        let id = generate_id();
        assert!(is_valid_id(&id));
        assert!(!is_valid_id(&id[1..]));
        assert!(!is_valid_id(&format!("{}-", &id[1..])));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn parsing_arbitrary_text_never_panics(text in ".{0,300}") {
                let _ = TokenFormat::default().parse(&text);
            }

            #[test]
            fn token_shaped_text_parses_only_with_its_checksum(body in "[0-9A-Za-z]{49}") {
                let format = TokenFormat::default();
                let candidate = format!("patd_{body}");
                let random = &body[..RANDOM_CHARS];
                let genuine = format.compose(random);
                prop_assert_eq!(format.parse(&candidate).is_some(), candidate == genuine.expose());
            }

            #[test]
            fn composed_secrets_round_trip(random in "[0-9A-Za-z]{43}") {
                let format = TokenFormat::default();
                let secret = format.compose(&random);
                prop_assert_eq!(format.parse(secret.expose()), Some(SecretHash::of(secret.expose())));
            }
        }
    }
}
