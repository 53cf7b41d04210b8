//! The gRPC services (`TokenService`, `IntrospectionService`, Envoy's
//! `Authorization`) and RFC 7662 introspection over HTTP (`oauth`): thin handlers that authenticate (`auth`), check the request
//! (`requests`, pure), call the verifier or the store, and turn every error into
//! a status in one place (`status`). Also what they share: the peer a call came
//! from, refusal budgets, rate limits, and the conversions to the wire's types.
//!
//! May use: `domain`, `metrics`, `store`, `verify`.

pub mod auth;
pub mod ext_authz;
pub mod forward_auth;
pub mod gate;
pub mod introspection;
pub mod oauth;
pub mod peer;
pub mod rate;
pub mod refusals;
pub mod requests;
pub mod status;
mod suspension;
pub mod tokens;
mod update;
pub mod watch;

use crate::domain::clock;
use crate::domain::model::{TokenRecord, TokenState};
use crate::proto;

/// A stored token as the API shows it, with its state at `now`.
pub fn token_message(record: TokenRecord, now: i64) -> proto::Token {
    let state = match record.state_at(now) {
        TokenState::Active => proto::TokenState::Active,
        TokenState::Expired => proto::TokenState::Expired,
        TokenState::Revoked => proto::TokenState::Revoked,
        TokenState::Suspended => proto::TokenState::Suspended,
    };
    proto::Token {
        id: record.id,
        name: record.name,
        subject: record.owner.subject,
        account: record.owner.account,
        scopes: record.scopes.to_names(),
        created_at: Some(clock::to_timestamp(record.created_at)),
        expires_at: record.expires_at.map(clock::to_timestamp),
        revoked_at: record.revoked_at.map(clock::to_timestamp),
        state: state.into(),
        hint: record.hint,
        last_used_at: record.last_used_at.map(clock::to_timestamp),
        last_used_ip: record.last_used_ip.unwrap_or_default(),
        rotated_at: record.rotated_at.map(clock::to_timestamp),
        allowed_cidrs: record.allowed_cidrs.to_strings(),
        suspended_at: record.suspended_at.map(clock::to_timestamp),
        description: record.description,
        labels: record.labels.to_map(),
        resources: record.resources.to_strings(),
    }
}
