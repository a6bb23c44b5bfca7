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

mod bindings;
mod failure;
mod http;
mod protocol;

use bindings::exports::edgeinfer::nn::infer;
use bindings::exports::wasi::nn::errors::{self, ErrorCode, GuestError};
use bindings::exports::wasi::nn::graph::{self, ExecutionTarget, GraphBuilder, GraphEncoding, GuestGraph};
use bindings::exports::wasi::nn::inference::{self, GuestGraphExecutionContext, NamedTensor};
use bindings::exports::wasi::nn::tensor::{self, GuestTensor, TensorType};
use edgeinfer_tensor::TensorData;
pub use failure::{Failure, RemoteError};

struct Provider;

/// A tensor held in the component until it is sent.
pub struct Tensor(TensorData);

/// A wasi:nn error resource: its code and a message.
pub struct Error {
    code: ErrorCode,
    message: String,
}

/// As wasi:nn says it: wasi:nn has no overloaded code, so that one keeps the `overloaded:` prefix
/// the edgeinfer host also uses, which handlers answer as 503 Overloaded.
impl From<RemoteError> for errors::Error {
    fn from(e: RemoteError) -> errors::Error {
        let (code, message) = match e.failure {
            Failure::NotFound => (ErrorCode::NotFound, e.message),
            Failure::InvalidArgument => (ErrorCode::InvalidArgument, e.message),
            Failure::Security => (ErrorCode::Security, e.message),
            Failure::Timeout => (ErrorCode::Timeout, e.message),
            Failure::Unsupported => (ErrorCode::UnsupportedOperation, e.message),
            Failure::Overloaded => (ErrorCode::RuntimeError, format!("overloaded: {}", e.message)),
            Failure::Unavailable | Failure::Runtime => (ErrorCode::RuntimeError, e.message),
        };
        errors::Error::new(Error { code, message })
    }
}

/// As infer says it: each failure its case (a timeout is the runtime's).
impl From<RemoteError> for infer::Error {
    fn from(e: RemoteError) -> infer::Error {
        let message = e.message;
        match e.failure {
            Failure::NotFound => infer::Error::NotFound(message),
            Failure::InvalidArgument => infer::Error::InvalidArgument(message),
            Failure::Security => infer::Error::Security(message),
            Failure::Overloaded => infer::Error::Overloaded(message),
            Failure::Unavailable => infer::Error::Unavailable(message),
            Failure::Timeout | Failure::Unsupported | Failure::Runtime => infer::Error::Runtime(message),
        }
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
        Err(RemoteError::new(
            Failure::Unsupported,
            "nn-remote runs models the remote server has loaded: use load-by-name",
        )
        .into())
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
) -> Result<Vec<(String, TensorData)>, RemoteError> {
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
            .map(|(name, t)| (name, TensorData::new(t.dimensions, protocol::element_type(t.ty), t.data)))
            .collect();
        let tensors: Vec<(&str, &TensorData)> = inputs.iter().map(|(name, t)| (name.as_str(), t)).collect();
        let computed = infer_remotely(&model, &tensors, &outputs)?;
        Ok(computed
            .into_iter()
            .map(|(name, t)| {
                let ty = protocol::tensor_type(t.ty);
                // Decoded from JSON into bytes of their own: handed on without a copy.
                (name, infer::Tensor { dimensions: t.shape, ty, data: Vec::from(t.bytes) })
            })
            .collect())
    }
}

bindings::export!(Provider with_types_in bindings);
