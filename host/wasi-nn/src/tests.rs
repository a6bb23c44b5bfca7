//! The guest-facing rules, called as a component's imports would be, over a fake model provider:
//! no engine, no model files, no component.

use std::sync::Mutex;

use std::sync::Arc;

use wasmtime::component::{Resource, ResourceTable};

use super::*;
use crate::wasi_nn::bindings::wasi::nn::{errors, graph, inference, tensor};
use crate::wasi_nn::tensor::TensorType;

/// `echo` returns its inputs (recording where their bytes were), `busy` is always full, `picky`
/// refuses its inputs, `broken` failed to load; anything else does not exist.
#[derive(Default)]
struct FakeModels {
    received: Mutex<Vec<usize>>,
}

struct FakeModel {
    name: &'static str,
    models: Arc<FakeModels>,
}

impl Model for FakeModel {
    fn compute(&self, inputs: Tensors, _caller: Caller) -> ComputeFuture<'_> {
        Box::pin(async move {
            match self.name {
                "echo" => {
                    let mut received = self.models.received.lock().unwrap();
                    received.extend(inputs.iter().map(|(_, t)| t.bytes.as_ptr() as usize));
                    // Flattened, so that an output is told apart from the input it came from.
                    let flat = |t: TensorData| TensorData::new(vec![t.bytes.len() as u32], t.ty, t.bytes);
                    Ok(inputs.into_iter().map(|(name, t)| (format!("{name}-out"), flat(t))).collect())
                }
                "busy" => Err(ModelError::Overloaded("queue full".into())),
                _ => Err(ModelError::InvalidArgument("input \"x\" must be I64".into())),
            }
        })
    }
}

struct Provider(Arc<FakeModels>);

/// The fake models as a provider.
pub(crate) fn provider() -> Arc<dyn ModelProvider> {
    Arc::new(Provider(Arc::new(FakeModels::default())))
}

impl ModelProvider for Provider {
    fn model(&self, name: &str) -> Result<Arc<dyn Model>, ModelError> {
        let name = match name {
            "echo" => "echo",
            "busy" => "busy",
            "picky" => "picky",
            "broken" => return Err(ModelError::Unavailable("model \"broken\" failed to load".into())),
            other => return Err(ModelError::NotFound(format!("no model named {other:?}"))),
        };
        Ok(Arc::new(FakeModel { name, models: self.0.clone() }))
    }
}

struct Guest {
    ctx: NnCtx,
    table: ResourceTable,
    models: Arc<FakeModels>,
    /// The handles of the last compute's inputs.
    sent: Vec<u32>,
}

impl Guest {
    fn new(allowed: &[&str]) -> Guest {
        let models = Arc::new(FakeModels::default());
        let allowed = Arc::new(allowed.iter().map(|s| s.to_string()).collect());
        Guest {
            ctx: NnCtx::new(Arc::new(Provider(models.clone())), allowed),
            table: ResourceTable::new(),
            models,
            sent: vec![],
        }
    }

    fn view(&mut self) -> NnView<'_> {
        NnView { ctx: &mut self.ctx, table: &mut self.table }
    }

    /// The code and message of a wasi:nn error the guest got.
    fn error(&mut self, error: Resource<NnError>) -> (ErrorCode, String) {
        let mut view = self.view();
        let code = errors::HostError::code(&mut view, Resource::new_borrow(error.rep())).unwrap();
        let message = errors::HostError::data(&mut view, error).unwrap();
        (code, message)
    }

    fn load(&mut self, name: &str) -> Result<Resource<GraphHandle>, (ErrorCode, String)> {
        let loaded = graph::Host::load_by_name(&mut self.view(), name.into()).unwrap();
        loaded.map_err(|e| self.error(e))
    }

    async fn compute(
        &mut self,
        model: &str,
        inputs: Vec<(&str, Vec<u8>)>,
    ) -> Result<Tensors, (ErrorCode, String)> {
        let graph = self.load(model)?;
        let context = graph::HostGraph::init_execution_context(&mut self.view(), graph).unwrap().unwrap();
        let mut handles = Vec::new();
        for (name, bytes) in inputs {
            let len = bytes.len() as u32;
            let tensor =
                tensor::HostTensor::new(&mut self.view(), vec![1, len], TensorType::U8, bytes).unwrap();
            self.sent.push(tensor.rep());
            handles.push((name.to_string(), tensor));
        }
        let computed =
            inference::HostGraphExecutionContext::compute(&mut self.view(), context, handles).await;
        match computed.unwrap() {
            Ok(outputs) => {
                Ok(outputs.into_iter().map(|(name, t)| (name, self.table.get(&t).unwrap().clone())).collect())
            }
            Err(e) => Err(self.error(e)),
        }
    }
}

#[test]
fn a_component_loads_only_its_own_models_by_name() {
    let mut guest = Guest::new(&["echo", "broken", "gone"]);
    assert!(guest.load("echo").is_ok());
    let (code, message) = guest.load("secret").unwrap_err();
    assert_eq!(code, ErrorCode::Security);
    assert!(message.contains("not in this component's ai_models"), "{message}");
    assert_eq!(guest.load("gone").unwrap_err().0, ErrorCode::NotFound);
    let (code, message) = guest.load("broken").unwrap_err();
    assert_eq!((code, message.as_str()), (ErrorCode::RuntimeError, "model \"broken\" failed to load"));
    let from_bytes = graph::Host::load(
        &mut guest.view(),
        vec![b"\0asm".to_vec()],
        graph::GraphEncoding::Onnx,
        graph::ExecutionTarget::Cpu,
    );
    let (code, _) = guest.error(from_bytes.unwrap().unwrap_err());
    assert_eq!(code, ErrorCode::Security, "guest bytes are never loaded as a model");
}

#[tokio::test]
async fn compute_takes_the_inputs_without_copying_and_leaves_none_behind() {
    let mut guest = Guest::new(&["echo"]);
    let bytes = vec![1, 2, 3];
    let address = bytes.as_ptr() as usize;
    let outputs = guest.compute("echo", vec![("ids", bytes)]).await.unwrap();
    assert_eq!(*guest.models.received.lock().unwrap(), [address], "the model got the guest's own bytes");
    assert_eq!(outputs[0].0, "ids-out");
    assert_eq!(outputs[0].1, TensorData::new(vec![3], ElementType::U8, vec![1, 2, 3]));
    let input = Resource::<TensorData>::new_borrow(guest.sent[0]);
    // Its handle is free, or reused by an output: the input left the instance's table.
    if let Ok(reused) = guest.table.get(&input) {
        assert_eq!(reused.shape, [3], "only an output may hold the input's handle now");
    }
}

#[tokio::test]
async fn each_failure_has_its_error_code() {
    let mut guest = Guest::new(&["busy", "picky"]);
    let (code, message) = guest.compute("busy", vec![("ids", vec![0])]).await.unwrap_err();
    // Handlers answer 503 Overloaded on this prefix (components/text-handler).
    assert_eq!((code, message.as_str()), (ErrorCode::RuntimeError, "overloaded: queue full"));
    let (code, message) = guest.compute("picky", vec![("ids", vec![0])]).await.unwrap_err();
    assert_eq!((code, message.as_str()), (ErrorCode::InvalidArgument, "input \"x\" must be I64"));
}
