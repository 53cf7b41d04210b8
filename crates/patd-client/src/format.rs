//! The shape of a patd secret, checked locally so that junk never leaves the
//! process: `<prefix><43 base62 characters><6 base62 characters of their CRC32>`.

const RANDOM_CHARS: usize = 43;
const CHECKSUM_CHARS: usize = 6;

/// The token format of one patd installation (its prefix; `patd_` by default).
#[derive(Clone, Debug)]
pub struct TokenShape {
    prefix: String,
}

impl Default for TokenShape {
    fn default() -> Self {
        TokenShape::new("patd_")
    }
}

impl TokenShape {
    pub fn new(prefix: impl Into<String>) -> TokenShape {
        TokenShape {
            prefix: prefix.into(),
        }
    }

    /// Whether `token` could be a secret of this installation: prefix, length,
    /// alphabet and checksum. Costs no call.
    pub fn is_well_formed(&self, token: &str) -> bool {
        let Some(body) = token.strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        if body.len() != RANDOM_CHARS + CHECKSUM_CHARS
            || !body.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return false;
        }
        let (random, checksum) = body.split_at(RANDOM_CHARS);
        parse_base62(checksum) == Some(u64::from(crc32fast::hash(random.as_bytes())))
    }
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
    fn only_well_formed_tokens_pass() {
        let shape = TokenShape::default();
        // A real secret's shape: 43 random characters and their CRC32.
        let random = "DZhsW6sA9cWBUSfpcfShwPYjqCTy2guQVdgt6mF9aPj";
        let mut checksum = crc32fast::hash(random.as_bytes());
        let mut digits = [b'0'; CHECKSUM_CHARS];
        const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        for digit in digits.iter_mut().rev() {
            *digit = BASE62[(checksum % 62) as usize];
            checksum /= 62;
        }
        let token = format!("patd_{random}{}", std::str::from_utf8(&digits).unwrap());
        assert!(shape.is_well_formed(&token));
        let last = if token.ends_with('a') { "b" } else { "a" };
        let wrong = format!("{}{last}", &token[..token.len() - 1]);
        for junk in [
            "",
            "patd_",
            "Bearer x",
            &token[..token.len() - 1],
            &wrong,
            &token.replace("patd_", "acme_"),
        ] {
            assert!(!shape.is_well_formed(junk), "{junk:?}");
        }
        assert!(TokenShape::new("acme_").is_well_formed(&token.replace("patd_", "acme_")));
    }
}
