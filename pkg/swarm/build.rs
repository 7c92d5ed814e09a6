//! Compiles the node-to-node protocol (proto/*.proto) with protox, a .proto compiler in Rust, so
//! no `protoc` binary is needed to build the agent.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/swarm.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
