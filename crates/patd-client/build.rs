//! patd-client's own view of the contract: the messages and the client stubs
//! (no servers), compiled from the workspace's `proto/` with protox.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    let descriptors = protox::compile(["../../proto/pat/v1/pat.proto"], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
