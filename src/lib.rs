//! patd: issues, manages and introspects personal access tokens over gRPC.

pub mod authority;
pub mod bench;
pub mod cache;
pub mod cidr;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod metrics;
pub mod model;
pub mod output;
pub mod overload;
pub mod policy;
pub mod scope;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod token;
pub mod verifier;

/// Code generated from `proto/pat/v1/pat.proto`.
pub mod proto {
    tonic::include_proto!("pat.v1");

    /// The encoded descriptors of `pat.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pat_descriptor");
}
