//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, tonic), on its own
//! listener: the KServe API's models, token, admission control, batcher and metrics, as REST
//! (`kserve`) has them. Tensors arrive as `raw_input_contents` (views of the received message) or
//! typed `contents`, and always go back as `raw_output_contents` (views of the engine's output).
//! Errors are gRPC statuses whose message is the REST error's, with its `x-error-type`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::net::TcpListener;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::kserve::{self, Kserve};
use crate::{HostError, error::ERROR_TYPE_HEADER};
use edgeinfer_engine::engines::{ElementType, TensorData, TensorSpec};
use edgeinfer_runtime::app::App;

/// The messages and service generated from proto/grpc_predict_v2.proto by build.rs.
#[allow(clippy::all, missing_docs)]
mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;

/// The service's full name, the route label of its calls (`/inference.GRPCInferenceService/...`).
const SERVICE: &str = "inference.GRPCInferenceService";

/// Serves the API on `listener` until `shutdown` resolves, then lets calls in flight finish.
pub(crate) async fn serve(
    app: Arc<App>,
    kserve: Arc<Kserve>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let max_message = usize::try_from(kserve.max_request_body_bytes()).unwrap_or(usize::MAX);
    let service = GrpcInferenceServiceServer::new(Grpc { app, kserve })
        .max_decoding_message_size(max_message)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

struct Grpc {
    app: Arc<App>,
    kserve: Arc<Kserve>,
}

/// A call's failure: the REST API's error and message.
type Failure = (HostError, String);

impl Grpc {
    /// Runs one call: the token check, then `handle`; counted and logged like an HTTP request.
    async fn call<Req, Res, Fut>(
        &self,
        rpc: &'static str,
        request: tonic::Request<Req>,
        handle: impl FnOnce(Req) -> Fut,
    ) -> Result<tonic::Response<Res>, Status>
    where
        Fut: Future<Output = Result<Res, Failure>>,
    {
        let started = Instant::now();
        let peer = request.remote_addr();
        let result = match self.authorize(request.metadata()) {
            Ok(()) => handle(request.into_inner()).await,
            Err(refused) => Err(refused),
        };
        let route = format!("/{SERVICE}/{rpc}");
        let (status, error_type) = match &result {
            Ok(_) => (200, None),
            Err((error, _)) => (error.status().as_u16(), Some(error.error_type())),
        };
        crate::count_request(&route, "host", "-", status, error_type, started.elapsed());
        tracing::info!(
            route,
            component = "host",
            status,
            us = started.elapsed().as_micros() as u64,
            error_type,
            peer = peer.as_ref().map(SocketAddr::to_string),
            "grpc request"
        );
        result.map(tonic::Response::new).map_err(|(error, message)| status_of(error, message))
    }

    fn authorize(&self, metadata: &MetadataMap) -> Result<(), Failure> {
        let Some(token) = self.kserve.token() else {
            return Ok(());
        };
        let given = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given.is_some_and(|given| crate::constant_time_eq(given, token)) {
            true => Ok(()),
            false => Err((HostError::Unauthorized, "a valid bearer token is required".into())),
        }
    }

    async fn infer(&self, request: proto::ModelInferRequest) -> Result<proto::ModelInferResponse, Failure> {
        check_version(&request.model_version)?;
        // The model first: an unknown name is 404 whatever the inputs.
        kserve::served_model(&self.app, &self.kserve, &request.model_name)?;
        let inputs = decode_inputs(request.inputs, request.raw_input_contents)
            .map_err(|message| (HostError::Validation, message))?;
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
        self.call("ServerLive", request, |_| async { Ok(proto::ServerLiveResponse { live: true }) }).await
    }

    async fn server_ready(
        &self,
        request: tonic::Request<proto::ServerReadyRequest>,
    ) -> Result<tonic::Response<proto::ServerReadyResponse>, Status> {
        self.call("ServerReady", request, |_| async {
            Ok(proto::ServerReadyResponse { ready: self.kserve.ready(&self.app) })
        })
        .await
    }

    async fn model_ready(
        &self,
        request: tonic::Request<proto::ModelReadyRequest>,
    ) -> Result<tonic::Response<proto::ModelReadyResponse>, Status> {
        self.call("ModelReady", request, |r| async move {
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
        self.call("ServerMetadata", request, |_| async {
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
        self.call("ModelMetadata", request, |r| async move {
            check_version(&r.version)?;
            let graph = kserve::served_model(&self.app, &self.kserve, &r.name)?;
            let specs = |specs: &[TensorSpec]| -> Vec<TensorMetadata> {
                specs
                    .iter()
                    .map(|s| TensorMetadata {
                        name: s.name.clone(),
                        datatype: s.ty.map_or("BYTES", ElementType::datatype).into(),
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
        self.call("ModelInfer", request, |r| self.infer(r)).await
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
) -> Result<Vec<(String, TensorData)>, String> {
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(format!("raw_input_contents has {} entries for {} inputs", raw.len(), inputs.len()));
    }
    let mut raw = raw.into_iter();
    inputs
        .into_iter()
        .map(|input| {
            let name = &input.name;
            let ty = ElementType::from_datatype(&input.datatype).ok_or_else(|| {
                let known: Vec<&str> = ElementType::ALL.iter().map(|t| t.datatype()).collect();
                format!(
                    "input {name:?}: datatype {:?} is not supported ({} are)",
                    input.datatype,
                    known.join(", ")
                )
            })?;
            let shape: Vec<u32> = input
                .shape
                .iter()
                .map(|&d| {
                    u32::try_from(d).map_err(|_| format!("input {name:?}: dimension {d} is not a size"))
                })
                .collect::<Result<_, _>>()?;
            let elements = TensorData::elements(&shape)
                .filter(|n| n.checked_mul(ty.size()).is_some())
                .ok_or_else(|| format!("input {name:?}: shape {shape:?} is too large"))?;
            let bytes = match (raw.next(), input.contents) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "input {name:?} has contents while the request uses raw_input_contents"
                    ));
                }
                (Some(bytes), None) => bytes,
                (None, Some(contents)) => typed_bytes(name, ty, elements, contents)?,
                (None, None) => {
                    return Err(format!(
                        "input {name:?} has no contents and the request no raw_input_contents"
                    ));
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
) -> Result<Bytes, String> {
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
        ElementType::F16 | ElementType::BF16 => {
            return Err(format!("input {name:?}: {} travels only as raw_input_contents", ty.datatype()));
        }
    };
    if count != elements {
        return Err(format!("input {name:?}: the shape needs {elements} values, {field} has {count}"));
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
            let e = decode_inputs(inputs, raw).unwrap_err();
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
