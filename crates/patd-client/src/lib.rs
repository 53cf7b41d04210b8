//! Use patd from a Rust service.
//!
//! - [`Client`]: a typed async client for every `pat.v1` RPC, plaintext or TLS
//!   (with a client certificate if asked), with a credential, timeouts, and
//!   retries with backoff for idempotent calls that meet `UNAVAILABLE`.
//! - [`Authenticator`]: verifies a presented bearer token in-process. A token
//!   seen recently is answered from memory; malformed tokens never leave the
//!   process; expiry is enforced at its instant; revocations, deletions and
//!   rotations anywhere in the fleet arrive through one `WatchChanges`
//!   subscription and drop the token at once. If that stream has been silent
//!   for `max_staleness`, the cache is not trusted and every verify asks patd;
//!   if patd cannot be reached, verify fails (never a [`Principal`] it could not
//!   check).
//! - [`AuthLayer`]: tower middleware over an `Authenticator`, for tonic services
//!   (`UNAUTHENTICATED` / `PERMISSION_DENIED`) and HTTP services such as axum
//!   (401 with `WWW-Authenticate: Bearer …`, 403 `insufficient_scope`), putting
//!   the [`Principal`] into the request's extensions; with the `axum` feature,
//!   `Principal` is also an axum extractor.
//!
//! Depends on tonic, prost, tower, http and tokio (plus blake3 and crc32fast for
//! the local checks); nothing of the server.

mod authenticator;
#[cfg(feature = "axum")]
mod axum;
mod client;
mod format;
mod layer;
mod watch;

pub use authenticator::{Authenticator, AuthenticatorSettings, Claims, Principal, VerifyError};
pub use client::{Client, ClientBuilder, Tls};
pub use format::TokenShape;
pub use layer::{AuthFuture, AuthLayer, AuthService};

/// The `pat.v1` messages and client stubs, compiled from patd's `proto/`.
pub mod proto {
    tonic::include_proto!("pat.v1");
}
