//! Compiles proto/ to Rust with protox (pure Rust, no system protoc) and writes the
//! file descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // `compile` includes imported files (google/protobuf/timestamp.proto), which
    // reflection clients need to resolve our messages.
    let descriptors = protox::compile(["proto/pat/v1/pat.proto"], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("pat_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
