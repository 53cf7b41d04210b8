//! patd: issues, manages and introspects personal access tokens over gRPC.
//!
//! The library is the server, in layers; each may use only the layers listed
//! before it (see ARCHITECTURE.md, and `tests/api/architecture.rs`, which
//! enforces it):
//!
//! 1. [`proto`]: the generated `pat.v1` types.
//! 2. [`domain`]: what a token is and the rules it obeys. Pure.
//! 3. [`metrics`]: counters and histograms, recorded by every layer above.
//! 4. [`store`]: storage on SQLite or Postgres.
//! 5. [`webhooks`]: events delivered from the audit trail (the outbox), and
//!    the expiry reminders.
//! 6. [`verify`]: the hot path: a presented secret checked through the cache.
//! 7. [`api`]: the gRPC services over the verifier and the store.
//! 8. [`serve`]: the process: listeners, TLS, overload, logs, the metrics endpoint.
//! 9. [`config`]: settings from defaults, file, environment and flags.
//!
//! The command line (`src/cli/`) is the binary's, not the library's.

pub mod api;
pub mod config;
pub mod domain;
pub mod metrics;
pub mod serve;
pub mod store;
pub mod verify;
pub mod webhooks;

/// Code generated from `proto/pat/v1/pat.proto`.
pub mod proto {
    tonic::include_proto!("pat.v1");

    /// The encoded descriptors of `pat.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pat_descriptor");
}
