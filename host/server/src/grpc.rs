//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, tonic), on its own
//! listener: the KServe API's models, token, admission control, batcher and metrics, as REST
//! (`kserve`) has them; the token and admission are checked before a message is read. Tensors arrive as `raw_input_contents` (views of the received message) or
//! typed `contents`, and always go back as `raw_output_contents` (views of the engine's output).
//! Errors are gRPC statuses whose message is the REST error's, with its `x-error-type`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::body::Body;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::{ERROR_TYPE_HEADER, HostError};
use crate::kserve::{self, Kserve};
use crate::observe::{ObserveLayer, Surface};
use crate::served::Served;
use edgeinfer_engine::engines::{ElementType, TensorData, TensorSpec};
use edgeinfer_runtime::app::App;
use edgeinfer_tensor::TensorError;

/// The messages and service generated from proto/grpc_predict_v2.proto by build.rs.
#[allow(clippy::all, missing_docs)]
mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;

/// The service's full name; its methods' paths are the route labels of its calls.
const SERVICE: &str = "inference.GRPCInferenceService";

/// The methods served (anything else is answered `UNIMPLEMENTED` by tonic).
const METHODS: [&str; 6] =
    ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"];

/// Streams (calls) in flight on one connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// A whole call (message upload, queue, inference) must end within this; and a connection must
/// answer HTTP/2 pings (every 30 s, within 10 s) to stay open.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown` resolves, then lets calls in flight finish.
pub(crate) async fn serve(
    app: Arc<App>,
    kserve: Arc<Kserve>,
    listener: crate::listener::Listener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let max_message = usize::try_from(kserve.max_request_body_bytes()).unwrap_or(usize::MAX);
    // Compressed requests are accepted; answers are not compressed (tensors hardly shrink).
    let service = GrpcInferenceServiceServer::new(Grpc { app, kserve: kserve.clone() })
        .max_decoding_message_size(max_message)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Deflate);
    let incoming = crate::listener::incoming(listener);
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .timeout(CALL_TIMEOUT)
        .layer(ObserveLayer::new(Surface {
            listener: "grpc",
            provisional: Box::new(|uri| Served::host(&route_of(uri.path()))),
            outcome: |_, headers| outcome(headers),
            log_inputs: false,
            // gRPC's convention: `package.Service/Method`.
            span_name: |_, route| route.trim_start_matches('/').to_string(),
        }))
        .layer(tower::layer::layer_fn(move |inner| Gate { inner, kserve: kserve.clone() }))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// The metric label of a call to `path`: its method's, or `unmatched` (bounded, whatever is sent).
fn route_of(path: &str) -> String {
    let method = path.strip_prefix(&format!("/{SERVICE}/")).unwrap_or_default();
    match METHODS.contains(&method) {
        true => format!("/{SERVICE}/{method}"),
        false => format!("/{SERVICE}/unmatched"),
    }
}

/// In front of the service, before a message is read: the token check, and for `ModelInfer` a
/// slot of the API's admission control (shared with REST), held until the answer. (`observe`,
/// around it, counts and logs every call, whoever answered it, tonic included.)
#[derive(Clone)]
struct Gate<S> {
    inner: S,
    kserve: Arc<Kserve>,
}

impl<S> tower::Service<http::Request<Body>> for Gate<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The service polled ready is the one called; its clone waits for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let kserve = self.kserve.clone();
        Box::pin(async move {
            let path = request.uri().path();
            let method = path.strip_prefix(&format!("/{SERVICE}/")).unwrap_or_default().to_string();
            let is_infer = method == "ModelInfer";
            // In `observe`'s span (this runs as its future is polled).
            let span = tracing::Span::current();
            span.record("rpc.system", "grpc");
            if METHODS.contains(&method.as_str()) {
                span.record("rpc.method", method.as_str());
            }
            // The message must arrive as fast as a REST body must.
            let request = request.map(|body| Body::new(Deadline::new(body, crate::body::READ_TIMEOUT)));
            match authorize(&kserve, request.headers()) {
                Err(refused) => Ok(refused.into_http()),
                Ok(()) if is_infer => match kserve.admission.admit().await {
                    Some(_slot) => inner.call(request).await,
                    None => Ok(status_of(HostError::Overloaded, kserve::OVERLOADED.into()).into_http()),
                },
                Ok(()) => inner.call(request).await,
            }
        })
    }
}

/// A request body that fails once `limit` has passed before its end.
struct Deadline {
    body: Body,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl Deadline {
    fn new(body: Body, limit: Duration) -> Deadline {
        Deadline { body, sleep: Box::pin(tokio::time::sleep(limit)), limit }
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if let std::task::Poll::Ready(frame) = std::pin::Pin::new(&mut self.body).poll_frame(cx) {
            return std::task::Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Some(Err(Status::deadline_exceeded(
                format!("the request message did not arrive within {} s", self.limit.as_secs()),
            )))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Refuses a call without the API's bearer token (none needed when the API is public).
fn authorize(kserve: &Kserve, headers: &http::HeaderMap) -> Result<(), Status> {
    kserve
        .authorized(headers)
        .map_err(|refusal| status_of(refusal.error(), refusal.message(crate::kserve::TOKEN_NAME)))
}

/// A call's outcome as the request metrics label it: the HTTP status of its gRPC code and its
/// error type. Errors of a unary call come "trailers-only", in the response's headers; a success
/// has no `grpc-status` there.
fn outcome(headers: &http::HeaderMap) -> (u16, Option<String>) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32);
    let error_type = headers.get(ERROR_TYPE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let status = match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::Cancelled => 499,
        Code::ResourceExhausted => 413,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 500,
    };
    let error_type = error_type.or_else(|| (code != Code::Ok).then(|| format!("{code:?}")));
    (status, error_type)
}

struct Grpc {
    app: Arc<App>,
    kserve: Arc<Kserve>,
}

/// A call's failure: the REST API's error and message.
type Failure = (HostError, String);

impl Grpc {
    /// Runs one call's handler (the token and, for inference, admission were checked by `Gate`).
    async fn call<Req, Res, Fut>(
        &self,
        request: tonic::Request<Req>,
        handle: impl FnOnce(Req) -> Fut,
    ) -> Result<tonic::Response<Res>, Status>
    where
        Fut: Future<Output = Result<Res, Failure>>,
    {
        handle(request.into_inner())
            .await
            .map(tonic::Response::new)
            .map_err(|(error, message)| status_of(error, message))
    }

    async fn infer(&self, request: proto::ModelInferRequest) -> Result<proto::ModelInferResponse, Failure> {
        check_version(&request.model_version)?;
        // The model first: an unknown name is 404 whatever the inputs.
        kserve::served_model(&self.app, &self.kserve, &request.model_name)?;
        let unsupported = |parameters: &HashMap<String, proto::InferParameter>| {
            parameters.keys().find(|k| k.starts_with("shared_memory") || *k == "classification").cloned()
        };
        let asked = request.inputs.iter().map(|i| (&i.name, &i.parameters));
        let asked = asked.chain(request.outputs.iter().map(|o| (&o.name, &o.parameters)));
        for (name, parameters) in asked {
            if let Some(key) = unsupported(parameters) {
                return Err((
                    HostError::Validation,
                    format!(
                        "tensor {name:?}: parameter {key:?} is not supported (no shared memory or classification extensions)"
                    ),
                ));
            }
        }
        let inputs = decode_inputs(request.inputs, request.raw_input_contents)
            .map_err(|e| (HostError::Validation, e.0))?;
        let requested: Vec<&str> = request.outputs.iter().map(|o| o.name.as_str()).collect();
        let requested = (!requested.is_empty()).then_some(requested.as_slice());
        let (graph, outputs) =
            kserve::infer(&self.app, &self.kserve, &request.model_name, inputs, requested).await?;
        let (tensors, raw): (Vec<InferOutputTensor>, Vec<Bytes>) = outputs
            .into_iter()
            .map(|(name, tensor)| {
                let described = InferOutputTensor {
                    name,
                    datatype: tensor.ty.datatype().into(),
                    shape: tensor.shape.iter().map(|&d| i64::from(d)).collect(),
                    ..Default::default()
                };
                (described, tensor.bytes)
            })
            .unzip();
        Ok(proto::ModelInferResponse {
            model_name: graph.name.clone(),
            id: request.id,
            outputs: tensors,
            raw_output_contents: raw,
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(
        &self,
        request: tonic::Request<proto::ServerLiveRequest>,
    ) -> Result<tonic::Response<proto::ServerLiveResponse>, Status> {
        self.call(request, |_| async { Ok(proto::ServerLiveResponse { live: true }) }).await
    }

    async fn server_ready(
        &self,
        request: tonic::Request<proto::ServerReadyRequest>,
    ) -> Result<tonic::Response<proto::ServerReadyResponse>, Status> {
        self.call(request, |_| async {
            Ok(proto::ServerReadyResponse { ready: self.kserve.ready(&self.app) })
        })
        .await
    }

    async fn model_ready(
        &self,
        request: tonic::Request<proto::ModelReadyRequest>,
    ) -> Result<tonic::Response<proto::ModelReadyResponse>, Status> {
        self.call(request, |r| async move {
            check_version(&r.version)?;
            // A model it serves that failed to load is not ready; a name it does not serve is 404.
            match kserve::served_model(&self.app, &self.kserve, &r.name) {
                Ok(_) => Ok(proto::ModelReadyResponse { ready: true }),
                Err((HostError::ModelUnavailable, _)) => Ok(proto::ModelReadyResponse { ready: false }),
                Err(failure) => Err(failure),
            }
        })
        .await
    }

    async fn server_metadata(
        &self,
        request: tonic::Request<proto::ServerMetadataRequest>,
    ) -> Result<tonic::Response<proto::ServerMetadataResponse>, Status> {
        self.call(request, |_| async {
            Ok(proto::ServerMetadataResponse {
                name: "edgeinfer".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                extensions: kserve::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
            })
        })
        .await
    }

    async fn model_metadata(
        &self,
        request: tonic::Request<proto::ModelMetadataRequest>,
    ) -> Result<tonic::Response<proto::ModelMetadataResponse>, Status> {
        self.call(request, |r| async move {
            check_version(&r.version)?;
            let graph = kserve::served_model(&self.app, &self.kserve, &r.name)?;
            let specs = |specs: &[TensorSpec]| -> Vec<TensorMetadata> {
                specs
                    .iter()
                    .map(|s| TensorMetadata {
                        name: s.name.clone(),
                        datatype: s.ty.map_or(kserve::UNSUPPORTED, ElementType::datatype).into(),
                        shape: s.shape.clone(),
                    })
                    .collect()
            };
            Ok(proto::ModelMetadataResponse {
                name: graph.name.clone(),
                versions: Vec::new(),
                platform: kserve::PLATFORM.into(),
                inputs: specs(&graph.inputs),
                outputs: specs(&graph.outputs),
            })
        })
        .await
    }

    async fn model_infer(
        &self,
        request: tonic::Request<proto::ModelInferRequest>,
    ) -> Result<tonic::Response<proto::ModelInferResponse>, Status> {
        // The call's span is `observe`'s (the child of the caller's `traceparent`): it gets the model.
        tracing::Span::current().record("model", request.get_ref().model_name.as_str());
        self.call(request, |r| self.infer(r)).await
    }
}

/// edgeinfer serves one version of each model: the version must be left empty.
fn check_version(version: &str) -> Result<(), Failure> {
    match version {
        "" => Ok(()),
        other => Err((
            HostError::ModelNotFound,
            format!(
                "model version {other:?}: edgeinfer serves one version of each model; leave the version empty"
            ),
        )),
    }
}

/// The gRPC status of a REST error: the code a gRPC client expects, the same message, and the
/// error's type in `x-error-type` metadata.
fn status_of(error: HostError, message: String) -> Status {
    let code = match error {
        HostError::Validation | HostError::BadRequest => Code::InvalidArgument,
        HostError::Unauthorized => Code::Unauthenticated,
        HostError::Forbidden => Code::PermissionDenied,
        HostError::NotFound | HostError::ModelNotFound => Code::NotFound,
        HostError::Overloaded | HostError::ModelUnavailable => Code::Unavailable,
        HostError::PayloadTooLarge => Code::ResourceExhausted,
        HostError::Deadline | HostError::BodyTimeout => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    let mut status = Status::new(code, message);
    status.metadata_mut().insert(ERROR_TYPE_HEADER, MetadataValue::from_static(error.error_type()));
    status
}

/// The request's input tensors: every one from `raw` (one entry per input, in order) or every one
/// from its typed `contents`; the error names the input and what is wrong.
fn decode_inputs(
    inputs: Vec<InferInputTensor>,
    raw: Vec<Bytes>,
) -> Result<Vec<(String, TensorData)>, TensorError> {
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(
            format!("raw_input_contents has {} entries for {} inputs", raw.len(), inputs.len()).into()
        );
    }
    let mut raw = raw.into_iter();
    inputs
        .into_iter()
        .map(|input| {
            let name = &input.name;
            let (ty, shape, elements) =
                edgeinfer_tensor::kserve::tensor_header("input", name, &input.datatype, &input.shape)?;
            let bytes = match (raw.next(), input.contents) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "input {name:?} has contents while the request uses raw_input_contents"
                    )
                    .into());
                }
                (Some(bytes), None) => bytes,
                (None, Some(contents)) => typed_bytes(name, ty, elements, contents)?,
                (None, None) => {
                    return Err(format!(
                        "input {name:?} has no contents and the request no raw_input_contents"
                    )
                    .into());
                }
            };
            let tensor = TensorData::new(shape, ty, bytes);
            tensor.validate().map_err(|e| format!("input {name:?}: {e}"))?;
            Ok((input.name, tensor))
        })
        .collect()
}

/// Typed `contents` as little-endian bytes, checked against the element count.
fn typed_bytes(
    name: &str,
    ty: ElementType,
    elements: usize,
    contents: proto::InferTensorContents,
) -> Result<Bytes, TensorError> {
    let (field, count, bytes): (&str, usize, Vec<u8>) = match ty {
        ElementType::I64 => {
            let v = &contents.int64_contents;
            ("int64_contents", v.len(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        ElementType::I32 => {
            let v = &contents.int_contents;
            ("int_contents", v.len(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        ElementType::U8 => {
            let v = &contents.uint_contents;
            let bytes = v
                .iter()
                .map(|&x| u8::try_from(x).map_err(|_| format!("input {name:?}: {x} is not a UINT8")))
                .collect::<Result<Vec<u8>, String>>()?;
            ("uint_contents", v.len(), bytes)
        }
        ElementType::F32 => {
            let v = &contents.fp32_contents;
            ("fp32_contents", v.len(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        ElementType::F64 => {
            let v = &contents.fp64_contents;
            ("fp64_contents", v.len(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        ElementType::Bytes => {
            let v = &contents.bytes_contents;
            let bytes = edgeinfer_tensor::encode_byte_strings(v.iter().map(|b| &b[..]));
            ("bytes_contents", v.len(), bytes)
        }
        ElementType::F16 | ElementType::BF16 => {
            return Err(
                format!("input {name:?}: {} travels only as raw_input_contents", ty.datatype()).into()
            );
        }
    };
    if count != elements {
        return Err(format!("input {name:?}: the shape needs {elements} values, {field} has {count}").into());
    }
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        name: &str,
        datatype: &str,
        shape: &[i64],
        contents: Option<proto::InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            contents,
            ..Default::default()
        }
    }

    #[test]
    fn raw_inputs_are_views_and_typed_inputs_become_bytes() {
        let raw = Bytes::from([7i64, -1].map(i64::to_le_bytes).concat());
        let decoded = decode_inputs(vec![input("ids", "INT64", &[1, 2], None)], vec![raw.clone()]).unwrap();
        assert_eq!(decoded[0].1.bytes.as_ptr(), raw.as_ptr(), "no copy of raw contents");
        let typed = proto::InferTensorContents { int64_contents: vec![7, -1], ..Default::default() };
        let from_typed = decode_inputs(vec![input("ids", "INT64", &[1, 2], Some(typed))], vec![]).unwrap();
        assert_eq!(from_typed, decoded);
        // BYTES: raw contents in the protocol's layout, or one `bytes_contents` entry per element.
        let layout = edgeinfer_tensor::encode_byte_strings([&b"one"[..], b"two!"]);
        let raw =
            decode_inputs(vec![input("s", "BYTES", &[2], None)], vec![Bytes::from(layout.clone())]).unwrap();
        let strings = vec![Bytes::from_static(b"one"), Bytes::from_static(b"two!")];
        let typed = proto::InferTensorContents { bytes_contents: strings, ..Default::default() };
        let from_typed = decode_inputs(vec![input("s", "BYTES", &[2], Some(typed))], vec![]).unwrap();
        assert_eq!(raw, from_typed);
        assert_eq!(raw[0].1.bytes, layout);
    }

    #[test]
    fn malformed_inputs_say_what_is_wrong() {
        let eight = || Bytes::from(vec![0u8; 8]);
        let typed =
            |v: Vec<i64>| Some(proto::InferTensorContents { int64_contents: v, ..Default::default() });
        let cases: Vec<(Vec<InferInputTensor>, Vec<Bytes>, &str)> = vec![
            (
                vec![input("a", "INT64", &[1], None), input("b", "INT64", &[1], None)],
                vec![eight()],
                "1 entries for 2 inputs",
            ),
            (vec![input("a", "INT64", &[2], None)], vec![eight()], "needs 16 bytes, got 8"),
            (vec![input("a", "INT64", &[-1], None)], vec![eight()], "dimension -1 is not a size"),
            (vec![input("a", "STRING", &[1], None)], vec![eight()], "datatype \"STRING\" is not supported"),
            (
                vec![input("a", "INT64", &[1], typed(vec![1]))],
                vec![eight()],
                "while the request uses raw_input_contents",
            ),
            (
                vec![input("a", "INT64", &[3], typed(vec![1, 2]))],
                vec![],
                "needs 3 values, int64_contents has 2",
            ),
            (vec![input("a", "INT64", &[1], None)], vec![], "has no contents"),
            (
                vec![input("a", "FP16", &[1], typed(vec![]))],
                vec![],
                "FP16 travels only as raw_input_contents",
            ),
        ];
        for (inputs, raw, expected) in cases {
            let e = decode_inputs(inputs, raw).unwrap_err().0;
            assert!(e.contains(expected), "{expected}: {e}");
        }
    }

    #[test]
    fn errors_map_to_the_codes_grpc_clients_expect() {
        let status = status_of(HostError::Overloaded, "queue full".into());
        assert_eq!((status.code(), status.message()), (Code::Unavailable, "queue full"));
        assert_eq!(status.metadata().get(ERROR_TYPE_HEADER).unwrap(), "Overloaded");
        assert_eq!(status_of(HostError::ModelNotFound, String::new()).code(), Code::NotFound);
        assert_eq!(status_of(HostError::Unauthorized, String::new()).code(), Code::Unauthenticated);
        assert_eq!(status_of(HostError::Validation, String::new()).code(), Code::InvalidArgument);
        assert_eq!(status_of(HostError::Backend, String::new()).code(), Code::Internal);
    }
}
