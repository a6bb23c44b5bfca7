//! `nn-remote`: exports `edgeinfer:nn/infer` and wasi:nn and runs every `compute` on a remote
//! server speaking the KServe v2 / Open Inference Protocol REST API
//! (`POST /v2/models/{name}/infer`, JSON tensors) — an edgeinfer host or any other server
//! implementing it. Plugged into a handler as a spin.toml dependency
//! (`"edgeinfer:nn/infer@0.1.0"`), it lets a runtime without models of its own (`spin up`) use
//! models served elsewhere, e.g. on a GPU host.
//!
//! Settings (the handler's `environment`, shared with its dependencies):
//! `NN_REMOTE_URL` (e.g. `http://gpu-host:3000`; required), `NN_REMOTE_TOKEN` (optional bearer
//! token). The URL's host must be in the handler's `allowed_outbound_hosts`.

wit_bindgen::generate!({
    world: "nn-provider",
    path: "../../wit",
    generate_all,
});

mod http;
mod protocol;

use edgeinfer_tensor::TensorData;
use exports::edgeinfer::nn::infer;
use exports::wasi::nn::errors::{self, ErrorCode, GuestError};
use exports::wasi::nn::graph::{self, ExecutionTarget, GraphBuilder, GraphEncoding, GuestGraph};
use exports::wasi::nn::inference::{self, GuestGraphExecutionContext, NamedTensor};
use exports::wasi::nn::tensor::{self, GuestTensor, TensorType};

struct Provider;

/// A tensor held in the component until it is sent.
pub struct Tensor(TensorData);

/// A wasi:nn error: its code and a message.
pub struct Error {
    code: ErrorCode,
    message: String,
}

impl Error {
    fn new(code: ErrorCode, message: impl Into<String>) -> errors::Error {
        errors::Error::new(Error { code, message: message.into() })
    }
}

/// A remote model, by name.
pub struct Graph {
    name: String,
}

/// Execution contexts hold nothing: each compute is one stateless request.
pub struct Context {
    model: String,
}

impl tensor::Guest for Provider {
    type Tensor = Tensor;
}

impl GuestTensor for Tensor {
    fn new(dimensions: Vec<u32>, ty: TensorType, data: Vec<u8>) -> Self {
        Tensor(TensorData::new(dimensions, protocol::element_type(ty), data))
    }
    fn dimensions(&self) -> Vec<u32> {
        self.0.shape.clone()
    }
    fn ty(&self) -> TensorType {
        protocol::tensor_type(self.0.ty)
    }
    fn data(&self) -> Vec<u8> {
        self.0.bytes.to_vec()
    }
}

impl errors::Guest for Provider {
    type Error = Error;
}

impl GuestError for Error {
    fn code(&self) -> ErrorCode {
        self.code
    }
    fn data(&self) -> String {
        self.message.clone()
    }
}

impl graph::Guest for Provider {
    type Graph = Graph;

    fn load(
        _builder: Vec<GraphBuilder>,
        _encoding: GraphEncoding,
        _target: ExecutionTarget,
    ) -> Result<graph::Graph, errors::Error> {
        Err(Error::new(
            ErrorCode::UnsupportedOperation,
            "nn-remote runs models the remote server has loaded: use load-by-name",
        ))
    }

    fn load_by_name(name: String) -> Result<graph::Graph, errors::Error> {
        // Fails early, with the server's answer, when the model is not there.
        let remote = http::Remote::from_env()?;
        let path = format!("/v2/models/{}/ready", protocol::escape(&name));
        let (status, body) = remote.send("GET", &path, None)?;
        protocol::check_status(status, &body)?;
        Ok(graph::Graph::new(Graph { name }))
    }
}

impl GuestGraph for Graph {
    fn init_execution_context(&self) -> Result<inference::GraphExecutionContext, errors::Error> {
        Ok(inference::GraphExecutionContext::new(Context { model: self.name.clone() }))
    }
}

impl inference::Guest for Provider {
    type GraphExecutionContext = Context;
}

/// One inference request to the server: the model's outputs by name.
fn infer_remotely(
    model: &str,
    inputs: &[(&str, &TensorData)],
    outputs: &[String],
) -> Result<Vec<(String, TensorData)>, errors::Error> {
    let remote = http::Remote::from_env()?;
    let body = protocol::infer_request(inputs, outputs)?;
    let path = format!("/v2/models/{}/infer", protocol::escape(model));
    let (status, answer) = remote.send("POST", &path, Some(&body))?;
    protocol::check_status(status, &answer)?;
    protocol::infer_response(answer, outputs)
}

impl GuestGraphExecutionContext for Context {
    fn compute(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, errors::Error> {
        let tensors: Vec<(&str, &TensorData)> =
            inputs.iter().map(|(name, t)| (name.as_str(), &t.get::<Tensor>().0)).collect();
        let outputs = infer_remotely(&self.model, &tensors, &[])?;
        Ok(outputs.into_iter().map(|(name, t)| (name, tensor::Tensor::new(Tensor(t)))).collect())
    }
}

impl infer::Guest for Provider {
    /// The request goes out through WASI 0.2's blocking HTTP: unlike the edgeinfer host's native
    /// `compute`, the handler's other requests wait for the answer.
    async fn compute(
        model: String,
        inputs: Vec<(String, infer::Tensor)>,
        outputs: Vec<String>,
    ) -> Result<Vec<(String, infer::Tensor)>, infer::Error> {
        let inputs: Vec<(String, TensorData)> = inputs
            .into_iter()
            .map(|(name, t)| {
                (name, TensorData::new(t.dimensions, protocol::element_type(wasi_nn_type(t.ty)), t.data))
            })
            .collect();
        let tensors: Vec<(&str, &TensorData)> = inputs.iter().map(|(name, t)| (name.as_str(), t)).collect();
        let computed =
            infer_remotely(&model, &tensors, &outputs).map_err(|e| infer_error(e.get::<Error>()))?;
        Ok(computed
            .into_iter()
            .map(|(name, t)| {
                let ty = infer_type(protocol::tensor_type(t.ty));
                // Decoded from JSON into bytes of their own: handed on without a copy.
                (name, infer::Tensor { dimensions: t.shape, ty, data: Vec::from(t.bytes) })
            })
            .collect())
    }
}

/// A failure as `infer` says it: the server's full queue is `overloaded`, its other 503s
/// `unavailable` (see `protocol::check_status`).
fn infer_error(e: &Error) -> infer::Error {
    let message = e.message.clone();
    if e.message.starts_with("overloaded:") {
        return infer::Error::Overloaded(message);
    }
    if e.message.starts_with("remote server answered 503") {
        return infer::Error::Unavailable(message);
    }
    match e.code {
        ErrorCode::NotFound => infer::Error::NotFound(message),
        ErrorCode::InvalidArgument => infer::Error::InvalidArgument(message),
        ErrorCode::Security => infer::Error::Security(message),
        _ => infer::Error::Runtime(message),
    }
}

fn wasi_nn_type(ty: infer::TensorType) -> TensorType {
    match ty {
        infer::TensorType::Fp16 => TensorType::Fp16,
        infer::TensorType::Fp32 => TensorType::Fp32,
        infer::TensorType::Fp64 => TensorType::Fp64,
        infer::TensorType::Bf16 => TensorType::Bf16,
        infer::TensorType::U8 => TensorType::U8,
        infer::TensorType::I32 => TensorType::I32,
        infer::TensorType::I64 => TensorType::I64,
    }
}

fn infer_type(ty: TensorType) -> infer::TensorType {
    match ty {
        TensorType::Fp16 => infer::TensorType::Fp16,
        TensorType::Fp32 => infer::TensorType::Fp32,
        TensorType::Fp64 => infer::TensorType::Fp64,
        TensorType::Bf16 => infer::TensorType::Bf16,
        TensorType::U8 => infer::TensorType::U8,
        TensorType::I32 => infer::TensorType::I32,
        TensorType::I64 => infer::TensorType::I64,
    }
}

export!(Provider);
