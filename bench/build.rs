//! The KServe v2 gRPC client (`edgeinfer-bench kserve --protocol grpc`), generated from the host's
//! proto file (host/server/proto/grpc_predict_v2.proto) with protox: no protoc needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../host/server/proto");
    let descriptors = protox::compile(["grpc_predict_v2.proto"], ["../host/server/proto"])?;
    tonic_prost_build::configure().build_server(false).bytes(".inference").compile_fds(descriptors)?;
    Ok(())
}
