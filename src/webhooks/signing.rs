//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
//! with the endpoint's secret, which receivers check with the standardwebhooks
//! or svix libraries.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The prefix of Standard Webhooks' base64 secrets.
const WHSEC_PREFIX: &str = "whsec_";
/// Standard Webhooks asks for 24 to 64 bytes; fewer is refused.
const MIN_SECRET_BYTES: usize = 24;

/// An endpoint's signing key. Never printed: `Debug` says only that it is set.
#[derive(Clone)]
pub struct SigningSecret {
    key: ring::hmac::Key,
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(redacted)")
    }
}

impl SigningSecret {
    /// A secret as configured: `whsec_<base64>` (what Standard Webhooks and svix
    /// hand out), or any other text, whose bytes are the key. Errors never
    /// repeat the secret.
    pub fn parse(text: &str) -> Result<SigningSecret, String> {
        let text = text.trim();
        let bytes = match text.strip_prefix(WHSEC_PREFIX) {
            Some(encoded) => STANDARD
                .decode(encoded)
                .map_err(|_| "a whsec_ secret must be base64 after the prefix".to_owned())?,
            None => text.as_bytes().to_vec(),
        };
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the secret is {} bytes; at least {MIN_SECRET_BYTES} are needed \
                 (e.g. whsec_ followed by the base64 of 32 random bytes)",
                bytes.len()
            ));
        }
        Ok(SigningSecret {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes),
        })
    }

    /// The `webhook-signature` header value for message `id` sent at
    /// `timestamp` (Unix seconds) with `body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut context = ring::hmac::Context::with_key(&self.key);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        // From the Standard Webhooks specification's reference libraries.
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn short_or_malformed_secrets_are_refused_without_being_repeated() {
        for secret in ["whsec_!!!notbase64", "short", "whsec_c2hvcnQ="] {
            let err = SigningSecret::parse(secret).unwrap_err();
            assert!(!err.contains(secret), "{err}");
        }
        assert!(SigningSecret::parse("a-plain-secret-of-enough-bytes-here").is_ok());
        let debug = format!(
            "{:?}",
            SigningSecret::parse("a-plain-secret-of-enough-bytes-here")
        );
        assert!(!debug.contains("plain"), "{debug}");
    }
}
