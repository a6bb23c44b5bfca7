//! `edgeinfer-bench`: the parts of the benchmark that are ours to build — a load generator, the
//! native in-process pipeline (tokenize + ONNX Runtime, no Wasm) and the raw ONNX Runtime ceiling.
//! `bench/run` starts them next to edgeinfer and the seeds' Python stack and writes BENCHMARKS.md.

mod ceiling;
mod kserve;
mod load;
mod native;
mod pipeline;
mod soak;
mod swap;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "edgeinfer-bench", about = "Benchmark parts: load generator, native pipeline, ORT ceiling")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send requests at a fixed concurrency (closed loop) or rate (open loop); print a JSON result.
    Load(load::LoadArgs),
    /// Load a model over the KServe v2 API in one wire format (REST JSON, REST binary, gRPC).
    Kserve(kserve::KserveArgs),
    /// Serve POST /embed from a native Rust pipeline (tokenizers + ONNX Runtime, no Wasm).
    Native(native::NativeArgs),
    /// Measure the native pipeline in-process at concurrency 1 (no HTTP); print a JSON result.
    Inproc(native::InprocArgs),
    /// Raw ONNX Runtime throughput on pre-tokenized batches; print a JSON result.
    Ceiling(ceiling::CeilingArgs),
    /// A long run against a local server, sampling its resident memory; print a JSON result.
    Soak(soak::SoakArgs),
    /// Deploy new versions of a component through the admin API under load; time each swap.
    Swap(swap::SwapArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Load(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let result = runtime.block_on(load::run(args))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        Command::Kserve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            println!("{}", serde_json::to_string(&runtime.block_on(kserve::run(args))?)?);
            Ok(())
        }
        Command::Native(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(native::serve(args))
        }
        Command::Inproc(args) => {
            println!("{}", serde_json::to_string(&native::inproc(args)?)?);
            Ok(())
        }
        Command::Swap(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            println!("{}", serde_json::to_string(&runtime.block_on(swap::run(args))?)?);
            Ok(())
        }
        Command::Soak(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            println!("{}", serde_json::to_string(&runtime.block_on(soak::run(args))?)?);
            Ok(())
        }
        Command::Ceiling(args) => {
            println!("{}", serde_json::to_string(&ceiling::run(args)?)?);
            Ok(())
        }
    }
}
