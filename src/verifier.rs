//! The one place a presented secret is checked: format and checksum first (no
//! storage access for junk), then the stored hash, then the token's state.

use crate::clock;
use crate::model::{TokenRecord, TokenState};
use crate::store::{Store, StoreResult};
use crate::token::TokenFormat;

/// Why a presented token is not active. Never sent to introspection callers
/// (RFC 7662); logged at debug level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inactive {
    Malformed,
    Unknown,
    Expired,
    Revoked,
}

#[derive(Clone)]
pub struct Verifier {
    format: TokenFormat,
    store: Store,
}

impl Verifier {
    pub fn new(format: TokenFormat, store: Store) -> Verifier {
        Verifier { format, store }
    }

    pub fn format(&self) -> &TokenFormat {
        &self.format
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The token `presented` stands for, if it is active now. A storage failure is
    /// an error, never an answer: the caller must fail closed.
    pub async fn verify(&self, presented: &str) -> StoreResult<Result<TokenRecord, Inactive>> {
        let Some(hash) = self.format.parse(presented) else {
            return Ok(Err(Inactive::Malformed));
        };
        let Some(record) = self.store.find_by_hash(&hash).await? else {
            return Ok(Err(Inactive::Unknown));
        };
        Ok(match record.state_at(clock::now_micros()) {
            TokenState::Active => Ok(record),
            TokenState::Expired => Err(Inactive::Expired),
            TokenState::Revoked => Err(Inactive::Revoked),
        })
    }
}
