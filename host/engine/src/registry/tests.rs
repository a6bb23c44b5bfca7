//! The registry over a fake engine loader: model files are small text files naming the model's
//! input and its version, so that loads, failures and reloads run without ONNX Runtime.

use std::time::Duration;

use super::*;
use crate::engines::{ElementType, EngineError, TensorData};
use edgeinfer_config::runtime_config::RuntimeConfig;

/// A model file `"INPUT VERSION"` is an engine with input INPUT (I64 `[rows, seq]`) and output
/// `out` (I64 `[rows, 1]`) = VERSION per row; each run takes `RUN_TIME`. A file named `slow*`
/// takes a second to load.
struct FakeLoader;

const RUN_TIME: Duration = Duration::from_millis(150);

struct FakeEngine {
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    version: i64,
}

impl EngineLoader for FakeLoader {
    fn load(&self, path: &Path, _config: &ModelConfig) -> Result<Arc<dyn Engine>> {
        let text = std::fs::read_to_string(path)?;
        let (input, version) = text.trim().split_once(' ').ok_or_else(|| anyhow::anyhow!("not a model"))?;
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("slow")) {
            std::thread::sleep(Duration::from_secs(1));
        }
        let spec = |name: &str, shape: Vec<i64>| TensorSpec {
            name: name.to_string(),
            ty: Some(ElementType::I64),
            shape,
            symbols: vec![],
        };
        Ok(Arc::new(FakeEngine {
            inputs: vec![spec(input, vec![-1, -1])],
            outputs: vec![spec("out", vec![-1, 1])],
            version: version.parse()?,
        }))
    }
}

impl Engine for FakeEngine {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<(String, TensorData)>) -> Result<Vec<(String, TensorData)>, EngineError> {
        std::thread::sleep(RUN_TIME);
        let rows = inputs[0].1.shape[0];
        let out = (0..rows).flat_map(|_| self.version.to_le_bytes()).collect::<Vec<u8>>();
        Ok(vec![("out".into(), TensorData::new(vec![rows, 1], ElementType::I64, out))])
    }
}

/// A directory of model files and a registry over `models` (runtime-config TOML).
fn registry(files: &[(&str, &str)], models: &str) -> (GraphRegistry, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "edgeinfer-registry-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let config = RuntimeConfig::parse(models).unwrap();
    (GraphRegistry::load_with(&config.model, &dir, Arc::new(FakeLoader)), dir)
}

/// The version that answers one compute of `model`.
async fn version(registry: &GraphRegistry, model: &str) -> i64 {
    let graph = registry.get(model).expect("the model serves");
    let input = graph.inputs[0].name.clone();
    let outputs =
        graph.batcher.compute(vec![(input, TensorData::new(vec![1, 1], ElementType::I64, vec![0; 8]))]);
    let outputs = outputs.await.unwrap();
    i64::from_le_bytes(outputs[0].1.bytes[..8].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_load_is_recorded_and_the_others_serve() {
    let (registry, _) = registry(
        &[("good.txt", "ids 1"), ("bad.txt", "garbage")],
        r#"
        [model.good]
        path = "good.txt"
        [model.missing]
        path = "nowhere.txt"
        [model.corrupt]
        path = "good.txt"
        sha256 = "00"
        [model.unreadable]
        path = "bad.txt"
        "#,
    );
    assert_eq!(version(&registry, "good").await, 1);
    let error = |name: &str| registry.failure(name).map(|f| f.error.clone()).unwrap_or_default();
    assert!(error("missing").contains("does not exist"), "{}", error("missing"));
    assert!(error("corrupt").contains("is corrupt: sha256 is"), "{}", error("corrupt"));
    assert!(error("unreadable").contains("not a model"), "{}", error("unreadable"));
    assert!(registry.get("missing").is_none() && registry.slot("missing").is_some());
    assert_eq!(registry.failures().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_switches_when_ready_and_calls_in_flight_finish_on_the_old_graph() {
    let files = [("v1.txt", "ids 1"), ("v2.txt", "ids 2"), ("slow-v3.txt", "ids 3")];
    let (registry, dir) = registry(&files, "[model.m]\npath = \"v1.txt\"\n");
    let registry = Arc::new(registry);
    // Six calls queue on v1 (150 ms each, one at a time); v2 takes over while they wait.
    let in_flight: Vec<_> = (0..6)
        .map(|_| {
            let registry = registry.clone();
            tokio::spawn(async move { version(&registry, "m").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (loaded, replaced) =
        registry.reload("m", ReloadRequest { path: Some("v2.txt".into()), sha256: None }).await.unwrap();
    assert_eq!(
        (loaded.path.clone(), replaced.unwrap().path.clone()),
        (dir.join("v2.txt"), dir.join("v1.txt"))
    );
    assert!(!in_flight.last().unwrap().is_finished(), "the switch came while calls were still queued on v1");
    assert_eq!(version(&registry, "m").await, 2, "calls after the switch run on v2");
    for call in in_flight {
        assert_eq!(call.await.unwrap(), 1, "calls queued before the switch finish on v1");
    }

    // While a new version loads (a second), the serving one answers, and a second reload waits
    // its turn: refused.
    let reload = tokio::spawn({
        let registry = registry.clone();
        async move { registry.reload("m", ReloadRequest { path: Some("slow-v3.txt".into()), sha256: None }).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(version(&registry, "m").await, 2);
    let again = registry.reload("m", ReloadRequest::default()).await;
    assert!(matches!(again, Err(ReloadError::InProgress(_))), "one reload at a time");
    reload.await.unwrap().unwrap();
    assert_eq!(version(&registry, "m").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_serve_is_refused_and_the_model_serves_as_before() {
    let files = [("v1.txt", "ids 1"), ("other.txt", "tokens 2"), ("v3.txt", "ids 3")];
    let (registry, _) =
        registry(&files, "[model.m]\npath = \"v1.txt\"\n[model.late]\npath = \"later.txt\"\n");
    let reload = |path: &str, sha256: Option<&str>| {
        registry.reload("m", ReloadRequest { path: Some(path.into()), sha256: sha256.map(String::from) })
    };
    let Err(ReloadError::Incompatible(message)) = reload("other.txt", None).await else {
        panic!("incompatible")
    };
    assert!(message.contains("input ids is gone") && message.contains("input tokens is new"), "{message}");
    assert!(matches!(reload("nowhere.txt", None).await, Err(ReloadError::Invalid(_))));
    assert!(matches!(reload("v3.txt", Some("00")).await, Err(ReloadError::Invalid(_))), "wrong checksum");
    assert_eq!(version(&registry, "m").await, 1, "still v1");
    assert!(matches!(
        registry.reload("nope", ReloadRequest::default()).await,
        Err(ReloadError::UnknownModel(_))
    ));
    // A model that failed to load becomes available by a reload from a good file.
    assert!(registry.get("late").is_none());
    registry.reload("late", ReloadRequest { path: Some("v3.txt".into()), sha256: None }).await.unwrap();
    assert_eq!(version(&registry, "late").await, 3);
    assert!(registry.failures().is_empty());
}
