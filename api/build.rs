//! Compiles `proto/` (package `nexus.v1`) into Rust with `protox`, a protobuf compiler written
//! in Rust, so a fresh machine builds without `protoc`. Also writes the encoded descriptor set
//! the gRPC server's reflection service serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // Imports (google/protobuf/struct.proto, bundled with protox) are included, so reflection
    // clients can resolve every type a message names.
    let descriptors = protox::compile(["nexus/v1/nexus.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("nexus_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The client takes any channel: tests and tools bring their own connector (this
        // crate does not depend on tonic's transport).
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
