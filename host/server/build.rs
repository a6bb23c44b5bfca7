//! Generates the Open Inference Protocol's gRPC messages and service (server side) from
//! proto/grpc_predict_v2.proto, with protox (a protobuf compiler in Rust: no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["grpc_predict_v2.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        // Raw tensor contents as `Bytes`: views of the received message, not copies.
        .bytes(".inference")
        .compile_fds(descriptors)?;
    Ok(())
}
