//! The admin API in process, without the built binary or a network: an app of one routed
//! component, `hello` (the smallest wasi:http handler, `HANDLER` below: it instantiates, as every
//! version must before it serves, and traps if ever called, which the admin API never does), and
//! two models on a fake engine loader (`m`, which loads, and `broken`, whose file is missing).
//! Calls go straight to `handle` (token check, routing, JSON errors, audit), the registry behind
//! a fake `Fetch`. Versions differ by a custom section appended to `HANDLER`.

use std::path::{Path as FilePath, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::Value;

use super::*;
use edgeinfer_config::manifest::Manifest;
use edgeinfer_config::runtime_config::{ModelConfig, RuntimeConfig};
use edgeinfer_engine::engines::{ElementType, Engine as ModelEngine, EngineError, TensorData, TensorSpec};
use edgeinfer_engine::registry::{EngineLoader, GraphRegistry};
use edgeinfer_runtime::compile::{CompileCache, engine_profile, host_target};

const TOKEN: &str = "an-admin-token-0123456789";
const BEARER: &str = "Bearer an-admin-token-0123456789";
const REFERENCE: &str =
    "registry.example/app@sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// `HANDLER`, written with `wat` 1.254 from:
///
/// ```wat
/// (component
///   (import "wasi:http/types@0.3.0" (instance $types
///     (export "request" (type (sub resource)))
///     (export "response" (type (sub resource)))
///     (type $os (option string))
///     (type $dns-r (record (field "rcode" $os) (field "info-code" (option u16))))
///     (export "DNS-error-payload" (type $dns (eq $dns-r)))
///     (type $tls-r (record (field "alert-id" (option u8)) (field "alert-message" $os)))
///     (export "TLS-alert-received-payload" (type $tls (eq $tls-r)))
///     (type $fs-r (record (field "field-name" $os) (field "field-size" (option u32))))
///     (export "field-size-payload" (type $fs (eq $fs-r)))
///     (type $error-code (variant
///       ;; the 39 cases of wasi:http/types@0.3.0's error-code, in order
///       (case "DNS-timeout") (case "DNS-error" $dns) ... (case "internal-error" $os)))
///     (export "error-code" (type (eq $error-code)))))
///   (alias export $types "request" (type $request))
///   (alias export $types "response" (type $response))
///   (alias export $types "error-code" (type $error-code))
///   (core module $m
///     (memory (export "memory") 0)
///     (func (export "handle") (param i32) (result i32) unreachable)
///     (func (export "callback") (param i32 i32 i32) (result i32) unreachable))
///   (core instance $i (instantiate $m))
///   (type $handle-ty (func async (param "request" (own $request))
///     (result (result (own $response) (error $error-code)))))
///   (func $handle (type $handle-ty)
///     (canon lift (core func $i "handle") (memory (core memory $i "memory")) async
///       (callback (func $i "callback"))))
///   (instance $handler (export "handle" (func $handle)))
///   (export "wasi:http/handler@0.3.0" (instance $handler)))
/// ```
const HANDLER: &[&str] = &[
    "0061736d0d00010007e409014215040007726571756573740301040008726573706f6e73650301016b73016b7b0172020572",
    "636f64650209696e666f2d636f646503040011444e532d6572726f722d7061796c6f6164030004016b7d01720208616c6572",
    "742d6964060d616c6572742d6d6573736167650204001a544c532d616c6572742d72656365697665642d7061796c6f616403",
    "0007016b790172020a6669656c642d6e616d65020a6669656c642d73697a65090400126669656c642d73697a652d7061796c",
    "6f616403000a016b77016b79016b0b016b79016b79016b77016b790171270b444e532d74696d656f7574000009444e532d65",
    "72726f720105001564657374696e6174696f6e2d6e6f742d666f756e6400001764657374696e6174696f6e2d756e61766169",
    "6c61626c6500001964657374696e6174696f6e2d49502d70726f6869626974656400001964657374696e6174696f6e2d4950",
    "2d756e726f757461626c65000012636f6e6e656374696f6e2d72656675736564000015636f6e6e656374696f6e2d7465726d",
    "696e61746564000012636f6e6e656374696f6e2d74696d656f7574000017636f6e6e656374696f6e2d726561642d74696d65",
    "6f7574000018636f6e6e656374696f6e2d77726974652d74696d656f7574000018636f6e6e656374696f6e2d6c696d69742d",
    "72656163686564000012544c532d70726f746f636f6c2d6572726f72000015544c532d63657274696669636174652d657272",
    "6f72000012544c532d616c6572742d726563656976656401080013485454502d726571756573742d64656e69656400001c48",
    "5454502d726571756573742d6c656e6774682d7265717569726564000016485454502d726571756573742d626f64792d7369",
    "7a65010c001b485454502d726571756573742d6d6574686f642d696e76616c6964000018485454502d726571756573742d55",
    "52492d696e76616c6964000019485454502d726571756573742d5552492d746f6f2d6c6f6e67000020485454502d72657175",
    "6573742d6865616465722d73656374696f6e2d73697a65010d0018485454502d726571756573742d6865616465722d73697a",
    "65010e0021485454502d726571756573742d747261696c65722d73656374696f6e2d73697a65010f0019485454502d726571",
    "756573742d747261696c65722d73697a65010b0018485454502d726573706f6e73652d696e636f6d706c6574650000214854",
    "54502d726573706f6e73652d6865616465722d73656374696f6e2d73697a6501100019485454502d726573706f6e73652d68",
    "65616465722d73697a65010b0017485454502d726573706f6e73652d626f64792d73697a6501110022485454502d72657370",
    "6f6e73652d747261696c65722d73656374696f6e2d73697a650112001a485454502d726573706f6e73652d747261696c6572",
    "2d73697a65010b001d485454502d726573706f6e73652d7472616e736665722d636f64696e670102001c485454502d726573",
    "706f6e73652d636f6e74656e742d636f64696e6701020015485454502d726573706f6e73652d74696d656f75740000134854",
    "54502d757067726164652d6661696c6564000013485454502d70726f746f636f6c2d6572726f7200000d6c6f6f702d646574",
    "6563746564000013636f6e66696775726174696f6e2d6572726f7200000e696e7465726e616c2d6572726f7201020004000a",
    "6572726f722d636f64650300130a1a010015776173693a687474702f747970657340302e332e300500062603030000077265",
    "717565737403000008726573706f6e73650300000a6572726f722d636f646501570061736d01000000010d0260017f017f60",
    "037f7f7f017f03030200010503010000071e03066d656d6f727902000668616e646c6500000863616c6c6261636b00010a09",
    "020300000b0300000b0009046e616d650002016d020401000000071704690169026a01050103430107726571756573740400",
    "06062403000001000668616e646c6500020100066d656d6f7279000001000863616c6c6261636b080b010000000303000607",
    "0107050d010101000668616e646c6501000b1d010017776173693a687474702f68616e646c657240302e332e30050100006d",
    "0e636f6d706f6e656e742d6e616d65010600110100016d0106001201000169010a0101000668616e646c65012c0304010772",
    "6571756573740208726573706f6e7365030a6572726f722d636f6465070968616e646c652d74790112050200057479706573",
    "010768616e646c6572",
];

/// The first version of `hello`.
fn handler() -> Vec<u8> {
    hex::decode(HANDLER.concat()).expect("HANDLER is hex")
}

/// Another version of `hello`: `HANDLER` with a custom section naming `tag`.
fn version(tag: &str) -> Vec<u8> {
    let name = b"edgeinfer-test";
    let content_len = 1 + name.len() + tag.len();
    assert!(content_len < 128 && name.len() < 128, "one-byte LEB128 lengths");
    let mut bytes = handler();
    bytes.extend([0, content_len as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(tag.as_bytes());
    bytes
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// A model file `"INPUT"` is an engine with one input named INPUT (so that a file naming another
/// input is incompatible); a file named `held*` is loading until `RELEASE_HELD` (at most 10 s),
/// `HELD_LOADING` saying when one is. Nothing runs on it.
struct FakeLoader;

static HELD_LOADING: AtomicBool = AtomicBool::new(false);
static RELEASE_HELD: AtomicBool = AtomicBool::new(false);

struct FakeEngine {
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl EngineLoader for FakeLoader {
    fn load(&self, path: &FilePath, _config: &ModelConfig) -> anyhow::Result<Arc<dyn ModelEngine>> {
        let input = std::fs::read_to_string(path)?.trim().to_string();
        anyhow::ensure!(!input.is_empty(), "{} is not a model", path.display());
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("held")) {
            HELD_LOADING.store(true, Ordering::SeqCst);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !RELEASE_HELD.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let spec =
            |name: String| TensorSpec { name, ty: Some(ElementType::I64), shape: vec![-1], symbols: vec![] };
        Ok(Arc::new(FakeEngine { inputs: vec![spec(input)], outputs: vec![spec("out".to_string())] }))
    }
}

impl ModelEngine for FakeEngine {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&self, _inputs: Vec<(String, TensorData)>) -> Result<Vec<(String, TensorData)>, EngineError> {
        Err(EngineError::Runtime("the admin tests run no inference".to_string()))
    }
}

/// What the fake registry answers a pull with.
#[derive(Clone)]
enum Pulled {
    Bytes(Vec<u8>),
    Invalid(&'static str),
    Untrusted(&'static str),
    Unreachable(&'static str),
}

/// A `Fetch` that answers what the test set and records what it was asked: (reference,
/// component) for pulls, (url, sha256) for files.
struct FakeFetch {
    pulled: Mutex<Pulled>,
    file: Mutex<Result<PathBuf, String>>,
    asked: Mutex<Vec<(String, String)>>,
}

impl FakeFetch {
    fn new() -> Arc<FakeFetch> {
        Arc::new(FakeFetch {
            pulled: Mutex::new(Pulled::Invalid("nothing to pull")),
            file: Mutex::new(Err("nothing to fetch".to_string())),
            asked: Mutex::default(),
        })
    }

    fn pulls(&self, pulled: Pulled) {
        *self.pulled.lock().unwrap() = pulled;
    }

    fn serves_file(&self, file: Result<PathBuf, String>) {
        *self.file.lock().unwrap() = file;
    }

    fn asked(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.asked.lock().unwrap())
    }
}

impl Fetch for FakeFetch {
    fn component(
        &self,
        reference: String,
        component: String,
    ) -> BoxFuture<'static, Result<Vec<u8>, FetchError>> {
        self.asked.lock().unwrap().push((reference, component));
        let answer = match self.pulled.lock().unwrap().clone() {
            Pulled::Bytes(bytes) => Ok(bytes),
            Pulled::Invalid(reason) => Err(FetchError::Invalid(reason.to_string())),
            Pulled::Untrusted(reason) => Err(FetchError::Untrusted(reason.to_string())),
            Pulled::Unreachable(reason) => Err(FetchError::Registry(
                anyhow::anyhow!("{reason}").context("cannot reach registry.example"),
            )),
        };
        Box::pin(async move { answer })
    }

    fn file(&self, url: String, sha256: String) -> BoxFuture<'static, anyhow::Result<PathBuf>> {
        self.asked.lock().unwrap().push((url, sha256));
        let answer = self.file.lock().unwrap().clone().map_err(anyhow::Error::msg);
        Box::pin(async move { answer })
    }
}

/// The app under test, its directory (model files) and the admin router over it.
#[derive(Clone)]
struct Admin {
    app: Arc<App>,
    dir: PathBuf,
    router: Router,
}

/// A fresh directory for one test's app.
fn app_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "edgeinfer-admin-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An app `admin-test` of component `hello` on `/hello/...` and models `m` (input `ids`) and
/// `broken`, with the admin API over `sources`.
fn admin_api(sources: Sources) -> Admin {
    let dir = app_dir();
    std::fs::write(dir.join("hello.wasm"), handler()).unwrap();
    std::fs::write(dir.join("m.model"), "ids").unwrap();
    let manifest = Manifest::parse(
        "spin_manifest_version = 2\n[application]\nname = \"admin-test\"\n[[trigger.http]]\nroute = \"/hello/...\"\ncomponent = \"hello\"\n[component.hello]\nsource = \"hello.wasm\"\n",
        dir.clone(),
    )
    .expect("manifest");
    let config =
        RuntimeConfig::parse("[model.m]\npath = \"m.model\"\n[model.broken]\npath = \"missing.model\"\n")
            .expect("runtime config");
    let registry = Arc::new(GraphRegistry::load_with(&config.model, &dir, Arc::new(FakeLoader)));
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true).wasm_component_model_async(true).epoch_interruption(true);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let cache = CompileCache::new(dir.join("cache"), engine_profile(false, host_target()));
    let app = App::load(
        Arc::new(manifest),
        &Default::default(),
        registry,
        &engine,
        cache,
        false,
        Default::default(),
    )
    .expect("the app loads");
    let app = Arc::new(app);
    Admin { router: router(app.clone(), sources), app, dir }
}

fn with_fetcher(fetch: &Arc<FakeFetch>) -> Sources {
    Sources { fetch: Some(fetch.clone()), trusted: None }
}

struct Answered {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
}

impl Admin {
    /// `method path` with the admin token and `body`.
    async fn call(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Answered {
        self.call_with(method, path, &[("authorization", BEARER)], body).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answered {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let who = Caller { peer: "127.0.0.1:40000".parse().unwrap(), certificate: None };
        let response = handle(self.router.clone(), TOKEN, request, &who).await;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answered { status: parts.status, headers: parts.headers, body }
    }

    /// Uploads `bytes` as a new version of `hello`, `query` after its sha256.
    async fn upload(&self, bytes: &[u8], query: &str) -> Answered {
        let path = format!("/admin/v1/components/hello?sha256={}{query}", sha256(bytes));
        self.call(Method::PUT, &path, bytes.to_vec()).await
    }

    async fn pull(&self, body: &str) -> Answered {
        self.call(Method::POST, "/admin/v1/components/hello/pull", body.to_string()).await
    }

    async fn reload(&self, model: &str, body: &str) -> Answered {
        self.call(Method::POST, &format!("/admin/v1/models/{model}/reload"), body.to_string()).await
    }

    /// The version `hello` serves, the versions kept for rollback, and its canary's.
    fn serving(&self) -> (String, Vec<String>, Option<String>) {
        let slot = &self.app.components["hello"];
        let previous = slot.previous().iter().map(|p| p.version.clone()).collect();
        (slot.current().version.clone(), previous, slot.canary().map(|c| c.version.version.clone()))
    }

    /// The sha256 of the file model `name` serves.
    fn model_sha256(&self, name: &str) -> Option<String> {
        self.app.registry.get(name).map(|g| g.sha256.clone())
    }
}

/// A JSON error of `status` and `error_type` (in the body and its header), with a message.
#[track_caller]
fn assert_error(answer: &Answered, status: u16, error_type: &str) {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.body);
    assert_eq!(answer.body["error_type"], error_type, "{}", answer.body);
    assert!(answer.body["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", answer.body);
    assert_eq!(answer.headers[crate::error::ERROR_TYPE_HEADER], error_type);
}

/// The answer's error message.
fn message(answer: &Answered) -> &str {
    answer.body["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn every_call_needs_the_admin_token_before_anything_else() {
    let admin = admin_api(Sources::default());
    let v1 = sha256(&handler());
    // No token: 401 asking for a bearer token; a token that is not the admin token: 403.
    let missing = admin.call_with(Method::GET, "/admin/v1/app", &[], "").await;
    assert_error(&missing, 401, "Unauthorized");
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    assert_eq!(missing.headers["connection"], "close", "a refused call's connection is closed");
    assert!(message(&missing).contains("the admin token is required"), "{}", missing.body);
    let wrong = admin
        .call_with(Method::GET, "/admin/v1/app", &[("authorization", "Bearer not-the-token-0000")], "")
        .await;
    assert_error(&wrong, 403, "Forbidden");
    assert!(wrong.headers.get("www-authenticate").is_none(), "a 403 asks for nothing");
    assert_eq!(message(&wrong), "the bearer token sent is not the admin token");
    // A token not sent as `Bearer <token>` is no token.
    let basic = format!("Basic {TOKEN}");
    assert_error(
        &admin.call_with(Method::GET, "/admin/v1/app", &[("authorization", &basic)], "").await,
        401,
        "Unauthorized",
    );
    assert_error(
        &admin.call_with(Method::GET, "/admin/v1/app", &[("authorization", TOKEN)], "").await,
        401,
        "Unauthorized",
    );
    // Checked before routing: an unknown path or a wrong method is refused the same way.
    assert_error(&admin.call_with(Method::GET, "/admin/v1/nothing", &[], "").await, 401, "Unauthorized");
    assert_error(&admin.call_with(Method::DELETE, "/admin/v1/app", &[], "").await, 401, "Unauthorized");
    // An upload or a rollback refused changes nothing.
    let v2 = version("v2");
    let path = format!("/admin/v1/components/hello?sha256={}", sha256(&v2));
    assert_error(&admin.call_with(Method::PUT, &path, &[], v2.clone()).await, 401, "Unauthorized");
    let wrong_token = [("authorization", "Bearer not-the-token-0000")];
    assert_error(&admin.call_with(Method::PUT, &path, &wrong_token, v2).await, 403, "Forbidden");
    let rollback = "/admin/v1/components/hello/rollback";
    assert_error(&admin.call_with(Method::POST, rollback, &wrong_token, "").await, 403, "Forbidden");
    assert_eq!(admin.serving(), (v1, vec![], None));
    // The scheme is case-insensitive; the token is not.
    let lower = format!("bearer {TOKEN}");
    assert_eq!(
        admin.call_with(Method::GET, "/admin/v1/app", &[("authorization", &lower)], "").await.status,
        StatusCode::OK
    );
    let upper = format!("Bearer {}", TOKEN.to_uppercase());
    assert_error(
        &admin.call_with(Method::GET, "/admin/v1/app", &[("authorization", &upper)], "").await,
        403,
        "Forbidden",
    );
}

#[tokio::test]
async fn the_app_is_described_with_versions_routes_and_models() {
    let admin = admin_api(Sources::default());
    let described = admin.call(Method::GET, "/admin/v1/app", "").await;
    assert_eq!(described.status, StatusCode::OK, "{}", described.body);
    assert_eq!(described.body["app"], "admin-test");
    assert_eq!(
        described.body["components"],
        serde_json::json!([{
            "id": "hello", "version": sha256(&handler()), "routes": ["/hello/..."], "previous": [], "canary": null,
        }])
    );
    let models = described.body["models"].as_array().unwrap();
    assert_eq!(models.len(), 2, "{}", described.body);
    assert_eq!(models[0]["name"], "m");
    assert_eq!(models[0]["ready"], true);
    assert_eq!(models[0]["sha256"], sha256(b"ids"));
    assert_eq!(models[0]["path"], admin.dir.join("m.model").display().to_string());
    assert_eq!(models[1]["name"], "broken");
    assert_eq!(models[1]["ready"], false);
    assert!(models[1]["error"].as_str().unwrap().contains("does not exist"), "{}", described.body);
}

#[tokio::test]
async fn unknown_paths_wrong_methods_and_unknown_components_are_json_errors() {
    let admin = admin_api(Sources::default());
    let unrouted = admin.call(Method::GET, "/admin/v1/nothing", "").await;
    assert_error(&unrouted, 404, "NotFound");
    assert_eq!(message(&unrouted), "no admin route /admin/v1/nothing");
    assert_error(&admin.call(Method::GET, "/admin/v2/app", "").await, 404, "NotFound");
    assert_error(&admin.call(Method::POST, "/admin/v1/components/hello/restart", "").await, 404, "NotFound");
    for (method, path, allowed) in [
        (Method::POST, "/admin/v1/app", "GET"),
        (Method::DELETE, "/admin/v1/app", "GET"),
        (Method::GET, "/admin/v1/components/hello", "PUT"),
        (Method::POST, "/admin/v1/components/hello", "PUT"),
        (Method::GET, "/admin/v1/components/hello/pull", "POST"),
        (Method::PUT, "/admin/v1/components/hello/rollback", "POST"),
        (Method::GET, "/admin/v1/components/hello/promote", "POST"),
        (Method::DELETE, "/admin/v1/components/hello/abort", "POST"),
        (Method::GET, "/admin/v1/models/m/reload", "POST"),
    ] {
        let refused = admin.call(method.clone(), path, "").await;
        assert_error(&refused, 405, "MethodNotAllowed");
        assert_eq!(refused.headers["allow"], allowed, "{method} {path}");
        assert_eq!(message(&refused), format!("use {allowed}"));
    }
    // A component the app does not route, whatever the call.
    let v2 = version("v2");
    let upload = format!("/admin/v1/components/nope?sha256={}", sha256(&v2));
    let unknown = admin.call(Method::PUT, &upload, v2).await;
    assert_error(&unknown, 404, "ComponentNotFound");
    assert_eq!(message(&unknown), "the app has no routed component \"nope\"");
    for action in ["pull", "rollback", "promote", "abort"] {
        let path = format!("/admin/v1/components/nope/{action}");
        let body = format!(r#"{{"reference": "{REFERENCE}"}}"#);
        assert_error(&admin.call(Method::POST, &path, body).await, 404, "ComponentNotFound");
    }
    // A path parameter that is not UTF-8 is refused as JSON too.
    assert_error(&admin.call(Method::POST, "/admin/v1/components/%FF/rollback", "").await, 400, "BadRequest");
    assert_eq!(admin.serving(), (sha256(&handler()), vec![], None));
}

#[tokio::test]
async fn an_upload_is_checked_before_it_can_serve() {
    let admin = admin_api(Sources::default());
    let v1 = sha256(&handler());
    let v2 = version("v2");
    let unchecked = admin.call(Method::PUT, "/admin/v1/components/hello", v2.clone()).await;
    assert_error(&unchecked, 400, "Validation");
    assert!(message(&unchecked).contains("?sha256=HEX"), "{}", unchecked.body);
    // A damaged upload: its sha256 is not the one given.
    let other = sha256(b"another file");
    let damaged =
        admin.call(Method::PUT, &format!("/admin/v1/components/hello?sha256={other}"), v2.clone()).await;
    assert_error(&damaged, 400, "ChecksumMismatch");
    assert_eq!(
        message(&damaged),
        format!(
            "the upload's sha256 is {}, not {other}: it was damaged or is not the file meant",
            sha256(&v2)
        )
    );
    // Canary parameters out of range or unknown.
    for query in
        ["&canary=150", "&canary=-1", "&canary=half", "&canary=5&mode=blue", "&canary=5&sticky=cookie"]
    {
        assert_error(&admin.upload(&v2, query).await, 400, "Validation");
    }
    // Bytes that are not a component of this app.
    let not_wasm = b"not a component".to_vec();
    let invalid = admin.upload(&not_wasm, "").await;
    assert_error(&invalid, 400, "InvalidComponent");
    assert!(
        message(&invalid).starts_with(&format!(
            "the upload is not a servable version of hello; still serving {}: ",
            &v1[..12]
        )),
        "{}",
        invalid.body
    );
    // Over the upload limit as declared.
    let path = format!("/admin/v1/components/hello?sha256={}", sha256(&v2));
    let declared = (MAX_UPLOAD_BYTES + 1).to_string();
    let auth = ("authorization", BEARER);
    let too_large = admin.call_with(Method::PUT, &path, &[auth, ("content-length", &declared)], v2).await;
    assert_error(&too_large, 413, "PayloadTooLarge");
    assert_eq!(admin.serving(), (v1, vec![], None), "nothing refused was swapped in");
}

#[tokio::test]
async fn deploys_rollbacks_and_canaries_switch_what_serves() {
    let admin = admin_api(Sources::default());
    let (v1, v2, v3) = (sha256(&handler()), version("v2"), version("v3"));
    let (v2_sha, v3_sha) = (sha256(&v2), sha256(&v3));
    assert_error(
        &admin.call(Method::POST, "/admin/v1/components/hello/rollback", "").await,
        409,
        "NoPreviousVersion",
    );
    let deployed = admin.upload(&v2, "").await;
    assert_eq!(deployed.status, StatusCode::OK, "{}", deployed.body);
    assert_eq!(deployed.body["id"], "hello");
    assert_eq!(deployed.body["version"], v2_sha.clone());
    assert_eq!(deployed.body["replaced"], v1);
    for timing in ["received_ms", "validated_ms", "total_ms"] {
        assert!(deployed.body[timing].is_u64(), "{timing}: {}", deployed.body);
    }
    assert_eq!(admin.serving(), (v2_sha.clone(), vec![v1.clone()], None));
    let described = admin.call(Method::GET, "/admin/v1/app", "").await.body;
    assert_eq!(described["components"][0]["previous"], serde_json::json!([v1]));
    // The same bytes again (the sha256 in capitals): nothing changes.
    let path = format!("/admin/v1/components/hello?sha256={}", v2_sha.to_uppercase());
    let again = admin.call(Method::PUT, &path, v2.clone()).await;
    assert_eq!(
        (again.status, &again.body["unchanged"]),
        (StatusCode::OK, &Value::Bool(true)),
        "{}",
        again.body
    );
    assert_eq!(admin.serving(), (v2_sha.clone(), vec![v1.clone()], None));
    // Back to the first version, and no further.
    let rolled_back = admin.call(Method::POST, "/admin/v1/components/hello/rollback", "").await;
    assert_eq!(rolled_back.status, StatusCode::OK, "{}", rolled_back.body);
    assert_eq!(rolled_back.body["version"], v1.clone());
    assert_eq!(rolled_back.body["replaced"], v2_sha.clone());
    assert_eq!(admin.serving(), (v1.clone(), vec![], None));
    assert_error(
        &admin.call(Method::POST, "/admin/v1/components/hello/rollback", "").await,
        409,
        "NoPreviousVersion",
    );
    // A canary takes a share of the traffic beside the stable version, until aborted...
    assert_error(&admin.call(Method::POST, "/admin/v1/components/hello/abort", "").await, 409, "NoCanary");
    assert_error(&admin.call(Method::POST, "/admin/v1/components/hello/promote", "").await, 409, "NoCanary");
    let canary = admin.upload(&v3, "&canary=25&mode=shadow&sticky=header:x-user").await;
    assert_eq!(canary.status, StatusCode::OK, "{}", canary.body);
    assert_eq!(canary.body["canary"], v3_sha);
    assert_eq!(canary.body["percent"], 25.0);
    assert_eq!(canary.body["stable"], v1);
    assert_eq!(admin.serving(), (v1.clone(), vec![], Some(v3_sha.clone())));
    let described = admin.call(Method::GET, "/admin/v1/app", "").await.body;
    assert_eq!(
        described["components"][0]["canary"],
        serde_json::json!({"version": v3_sha, "percent": 25.0, "mode": "shadow", "sticky": "header:x-user"})
    );
    let aborted = admin.call(Method::POST, "/admin/v1/components/hello/abort", "").await;
    assert_eq!(aborted.status, StatusCode::OK, "{}", aborted.body);
    assert_eq!(aborted.body["version"], v1.clone());
    assert_eq!(aborted.body["aborted"], v3_sha.clone());
    assert_eq!(admin.serving(), (v1.clone(), vec![], None));
    assert_error(&admin.call(Method::POST, "/admin/v1/components/hello/abort", "").await, 409, "NoCanary");
    // ... or promoted to stable.
    assert_eq!(admin.upload(&v3, "&canary=10").await.status, StatusCode::OK);
    let described = admin.call(Method::GET, "/admin/v1/app", "").await.body;
    assert_eq!(described["components"][0]["canary"]["mode"], "split");
    assert_eq!(described["components"][0]["canary"]["sticky"], "none");
    let promoted = admin.call(Method::POST, "/admin/v1/components/hello/promote", "").await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.body);
    assert_eq!(promoted.body["version"], v3_sha.clone());
    assert_eq!(promoted.body["replaced"], v1.clone());
    assert_eq!(admin.serving(), (v3_sha.clone(), vec![v1.clone()], None));
    assert_error(&admin.call(Method::POST, "/admin/v1/components/hello/promote", "").await, 409, "NoCanary");
}

/// A P-256 key made with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` for
/// tests (edgeinfer-trust's own), and its public key.
const PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMennXnU6AHPmzvtl\n4HilZTPGP91a/TLumiCNcCajXEehRANCAASD993vN+8QI0/1TDRN4MHA5dJPRVXy\n/aGU0w3T+KOrqXwEkEzOhVllTUTdYi/I0ukStL6n4eMnjMI1kxzoMPBZ\n-----END PRIVATE KEY-----\n";
const PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEg/fd7zfvECNP9Uw0TeDBwOXST0VV\n8v2hlNMN0/ijq6l8BJBMzoVZZU1E3WIvyNLpErS+p+HjJ4zCNZMc6DDwWQ==\n-----END PUBLIC KEY-----\n";

#[tokio::test]
async fn with_trusted_keys_an_upload_serves_only_when_signed() {
    let keys = app_dir();
    std::fs::write(keys.join("admin.pub"), PUBLIC_KEY).unwrap();
    std::fs::write(keys.join("admin.pem"), PRIVATE_KEY).unwrap();
    let trusted = edgeinfer_trust::TrustedKeys::load(&[keys.join("admin.pub")]).unwrap();
    let signer = edgeinfer_trust::SigningKey::load(&keys.join("admin.pem")).unwrap();
    let admin = admin_api(Sources { fetch: None, trusted: Some(Arc::new(trusted)) });
    let (v1, v2) = (sha256(&handler()), version("v2"));
    let path = format!("/admin/v1/components/hello?sha256={}", sha256(&v2));
    let auth = ("authorization", BEARER);
    let unsigned = admin.call(Method::PUT, &path, v2.clone()).await;
    assert_error(&unsigned, 400, "SignatureRejected");
    assert!(message(&unsigned).contains("no signature"), "{}", unsigned.body);
    assert!(message(&unsigned).ends_with("; the old version still serves"), "{}", unsigned.body);
    let elsewhere = signer.sign(b"other bytes");
    let not_these_bytes =
        admin.call_with(Method::PUT, &path, &[auth, (SIGNATURE_HEADER, &elsewhere)], v2.clone()).await;
    assert_error(&not_these_bytes, 400, "SignatureRejected");
    assert!(
        message(&not_these_bytes).contains("does not verify with any trusted key (admin.pub)"),
        "{}",
        not_these_bytes.body
    );
    let garbled =
        admin.call_with(Method::PUT, &path, &[auth, (SIGNATURE_HEADER, "not base64!")], v2.clone()).await;
    assert_error(&garbled, 400, "SignatureRejected");
    assert_eq!(admin.serving(), (v1.clone(), vec![], None), "nothing unsigned serves");
    // The checksum is checked first: a damaged upload is refused as damaged.
    let signature = signer.sign(&v2);
    let other = format!("/admin/v1/components/hello?sha256={}", sha256(b"other"));
    let damaged =
        admin.call_with(Method::PUT, &other, &[auth, (SIGNATURE_HEADER, &signature)], v2.clone()).await;
    assert_error(&damaged, 400, "ChecksumMismatch");
    let signed =
        admin.call_with(Method::PUT, &path, &[auth, (SIGNATURE_HEADER, &signature)], v2.clone()).await;
    assert_eq!(signed.status, StatusCode::OK, "{}", signed.body);
    assert_eq!(admin.serving(), (sha256(&v2), vec![v1], None));
}

#[tokio::test]
async fn a_pull_needs_a_fetcher_and_a_well_formed_body() {
    let admin = admin_api(Sources::default());
    let body = format!(r#"{{"reference": "{REFERENCE}"}}"#);
    let no_fetcher = admin.pull(&body).await;
    assert_error(&no_fetcher, 404, "NotFound");
    assert_eq!(message(&no_fetcher), "this host pulls no components from registries");
    // The body is checked first.
    let malformed = admin.pull("{").await;
    assert_error(&malformed, 400, "Validation");
    assert!(message(&malformed).starts_with("expected {\"reference\""), "{}", malformed.body);
    let fetch = FakeFetch::new();
    fetch.pulls(Pulled::Bytes(version("v2")));
    let admin = admin_api(with_fetcher(&fetch));
    for malformed in ["", "{}", r#"{"reference": 7}"#, r#"{"reference": "r", "tag": "latest"}"#] {
        assert_error(&admin.pull(malformed).await, 400, "Validation");
    }
    let canary = admin.call(Method::POST, "/admin/v1/components/hello/pull?canary=200", body.clone()).await;
    assert_error(&canary, 400, "Validation");
    let huge = format!(r#"{{"reference": "{}"}}"#, "r".repeat(64 << 10));
    assert_error(&admin.pull(&huge).await, 413, "PayloadTooLarge");
    assert!(fetch.asked().is_empty(), "nothing fetched for a refused call");
    assert_eq!(admin.serving(), (sha256(&handler()), vec![], None));
}

#[tokio::test]
async fn a_refused_pull_says_why_and_what_still_serves() {
    let fetch = FakeFetch::new();
    let admin = admin_api(with_fetcher(&fetch));
    let v1 = sha256(&handler());
    let body = format!(r#"{{"reference": "{REFERENCE}"}}"#);
    let still = format!("cannot pull hello from {REFERENCE}; still serving {}: ", &v1[..12]);
    fetch.pulls(Pulled::Invalid("the reference names a tag, not a digest"));
    let invalid = admin.pull(&body).await;
    assert_error(&invalid, 400, "Validation");
    assert_eq!(message(&invalid), format!("{still}the reference names a tag, not a digest"));
    fetch.pulls(Pulled::Untrusted("no trusted key signed the artifact"));
    let untrusted = admin.pull(&body).await;
    assert_error(&untrusted, 400, "SignatureRejected");
    assert_eq!(message(&untrusted), format!("{still}no trusted key signed the artifact"));
    fetch.pulls(Pulled::Unreachable("connection refused"));
    let unreachable = admin.pull(&body).await;
    assert_error(&unreachable, 502, "Registry");
    assert_eq!(message(&unreachable), format!("{still}cannot reach registry.example: connection refused"));
    // Pulled bytes that are not a servable component.
    fetch.pulls(Pulled::Bytes(b"not a component".to_vec()));
    assert_error(&admin.pull(&body).await, 400, "InvalidComponent");
    let hello = (REFERENCE.to_string(), "hello".to_string());
    assert_eq!(fetch.asked(), vec![hello.clone(), hello.clone(), hello.clone(), hello]);
    assert_eq!(admin.serving(), (v1, vec![], None), "nothing refused was swapped in");
}

#[tokio::test]
async fn a_pulled_component_deploys_or_goes_on_trial() {
    let fetch = FakeFetch::new();
    let admin = admin_api(with_fetcher(&fetch));
    let (v1, v2, v3) = (sha256(&handler()), version("v2"), version("v3"));
    fetch.pulls(Pulled::Bytes(v2.clone()));
    let pulled = admin.pull(&format!(r#"{{"reference": "{REFERENCE}", "component": "greeter"}}"#)).await;
    assert_eq!(pulled.status, StatusCode::OK, "{}", pulled.body);
    assert_eq!(pulled.body["version"], sha256(&v2));
    assert_eq!(pulled.body["replaced"], v1.clone());
    assert_eq!(pulled.body["reference"], REFERENCE);
    assert_eq!(pulled.body["pulled_bytes"], v2.len());
    assert_eq!(
        fetch.asked(),
        vec![(REFERENCE.to_string(), "greeter".to_string())],
        "the artifact's component named"
    );
    fetch.pulls(Pulled::Bytes(v3.clone()));
    let path = "/admin/v1/components/hello/pull?canary=50";
    let canary = admin.call(Method::POST, path, format!(r#"{{"reference": "{REFERENCE}"}}"#)).await;
    assert_eq!(canary.status, StatusCode::OK, "{}", canary.body);
    assert_eq!(canary.body["canary"], sha256(&v3));
    assert_eq!(canary.body["percent"], 50.0);
    assert_eq!(admin.serving(), (sha256(&v2), vec![v1], Some(sha256(&v3))));
}

#[tokio::test]
async fn a_model_reloads_from_its_file_or_another() {
    let admin = admin_api(Sources::default());
    let dir = &admin.dir;
    std::fs::write(dir.join("m2.model"), "ids ").unwrap();
    std::fs::write(dir.join("other-input.model"), "tokens").unwrap();
    let (first, second) = (sha256(b"ids"), sha256(b"ids "));
    // The same file again.
    let again = admin.reload("m", "").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["sha256"], first.clone());
    assert_eq!(again.body["replaced"], first.clone());
    // Another file, of the same inputs and outputs.
    let switched = admin.reload("m", r#"{"path": "m2.model"}"#).await;
    assert_eq!(switched.status, StatusCode::OK, "{}", switched.body);
    assert_eq!(switched.body["name"], "m");
    assert_eq!(switched.body["sha256"], second.clone());
    assert_eq!(switched.body["replaced"], first);
    assert_eq!(switched.body["path"], dir.join("m2.model").display().to_string());
    assert!(switched.body["load_ms"].is_u64(), "{}", switched.body);
    assert_eq!(admin.model_sha256("m"), Some(second.clone()));
    // Refused: a file of other inputs, a missing file, a file not of the sha256 given.
    let incompatible = admin.reload("m", r#"{"path": "other-input.model"}"#).await;
    assert_error(&incompatible, 400, "IncompatibleModel");
    assert!(message(&incompatible).contains("input ids is gone"), "{}", incompatible.body);
    assert!(message(&incompatible).ends_with("; the model serves as before"), "{}", incompatible.body);
    let missing = admin.reload("m", r#"{"path": "nowhere.model"}"#).await;
    assert_error(&missing, 400, "InvalidModel");
    assert!(message(&missing).ends_with("; the model serves as before"), "{}", missing.body);
    let pinned = format!(r#"{{"path": "m.model", "sha256": "{}"}}"#, sha256(b"something else"));
    let corrupt = admin.reload("m", &pinned).await;
    assert_error(&corrupt, 400, "InvalidModel");
    assert!(message(&corrupt).contains("is corrupt"), "{}", corrupt.body);
    assert_eq!(admin.model_sha256("m"), Some(second), "a refused reload changes nothing");
    // A model that failed to load becomes available by a reload from a file that loads.
    assert_error(&admin.reload("broken", "").await, 400, "InvalidModel");
    let repaired = admin.reload("broken", r#"{"path": "m.model"}"#).await;
    assert_eq!(
        (repaired.status, &repaired.body["replaced"]),
        (StatusCode::OK, &Value::Null),
        "{}",
        repaired.body
    );
    assert_eq!(admin.model_sha256("broken"), Some(first));
    assert_error(&admin.reload("nope", "").await, 404, "ModelNotFound");
}

#[tokio::test]
async fn a_reload_body_is_checked_before_anything_is_fetched_or_loaded() {
    let fetch = FakeFetch::new();
    let admin = admin_api(with_fetcher(&fetch));
    let sha = sha256(b"a model");
    let url = "https://models.example/m.onnx";
    let bodies = [
        ("{".to_string(), "the body is not {\"path\" or \"url\", \"sha256\"}"),
        (r#"{"file": "m.model"}"#.to_string(), "unknown field"),
        (r#"{"path": 7}"#.to_string(), "invalid type"),
        (
            format!(r#"{{"path": "m.model", "url": "{url}", "sha256": "{sha}"}}"#),
            "give path or url, not both",
        ),
        (format!(r#"{{"url": "{url}"}}"#), "a url needs its sha256"),
        (format!(r#"{{"url": "{url}", "sha256": "abc"}}"#), "sha256 must be 64 hex digits"),
        (format!(r#"{{"url": "ftp://models.example/m.onnx", "sha256": "{sha}"}}"#), "url must be https://"),
    ];
    for (body, says) in &bodies {
        let refused = admin.reload("m", body).await;
        assert_error(&refused, 400, "Validation");
        assert!(message(&refused).contains(*says), "{body}: {}", refused.body);
    }
    let by_url = format!(r#"{{"url": "{url}", "sha256": "{sha}"}}"#);
    assert_error(&admin.reload("nope", &by_url).await, 404, "ModelNotFound");
    let huge = format!(r#"{{"path": "{}"}}"#, "m".repeat(64 << 10));
    assert_error(&admin.reload("m", &huge).await, 413, "PayloadTooLarge");
    assert!(fetch.asked().is_empty(), "nothing fetched for a refused call");
    assert_eq!(admin.model_sha256("m"), Some(sha256(b"ids")));
    // A host without a fetcher loads no urls.
    let no_fetcher = admin_api(Sources::default()).reload("m", &by_url).await;
    assert_error(&no_fetcher, 404, "NotFound");
    assert_eq!(message(&no_fetcher), "this host fetches no model files by url");
}

#[tokio::test]
async fn a_model_reloads_from_a_url_through_the_fetcher() {
    let fetch = FakeFetch::new();
    let admin = admin_api(with_fetcher(&fetch));
    let fetched = admin.dir.join("fetched.model");
    std::fs::write(&fetched, "ids  ").unwrap();
    let sha = sha256(b"ids  ");
    // A presigned url's query is never answered.
    let url = "https://models.example/m.onnx?X-Amz-Signature=secret";
    fetch.serves_file(Err(format!("HTTP 403 from {url}")));
    let body = format!(r#"{{"url": "{url}", "sha256": "{}"}}"#, sha.to_uppercase());
    let refused = admin.reload("m", &body).await;
    assert_error(&refused, 400, "InvalidModel");
    assert_eq!(
        message(&refused),
        "cannot fetch https://models.example/m.onnx: HTTP 403 from https://models.example/m.onnx; the model serves as before"
    );
    assert_eq!(admin.model_sha256("m"), Some(sha256(b"ids")));
    fetch.serves_file(Ok(fetched.clone()));
    let reloaded = admin.reload("m", &body).await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.body);
    assert_eq!(reloaded.body["sha256"], sha.clone());
    assert_eq!(reloaded.body["path"], fetched.display().to_string());
    assert_eq!(admin.model_sha256("m"), Some(sha.clone()));
    // The fetcher was asked for the url as given, with the sha256 in lower case.
    assert_eq!(fetch.asked(), vec![(url.to_string(), sha.clone()), (url.to_string(), sha)]);
}

#[tokio::test]
async fn one_reload_of_a_model_at_a_time() {
    let admin = admin_api(Sources::default());
    std::fs::write(admin.dir.join("held.model"), "ids").unwrap();
    let first = tokio::spawn({
        let admin = admin.clone();
        async move { admin.reload("m", r#"{"path": "held.model"}"#).await }
    });
    while !HELD_LOADING.load(Ordering::SeqCst) {
        assert!(!first.is_finished(), "the first reload ended before it loaded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Released on the way out, whether the test passes or not.
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            RELEASE_HELD.store(true, Ordering::SeqCst);
        }
    }
    let release = Release;
    let second = admin.reload("m", "").await;
    assert_error(&second, 409, "ReloadInProgress");
    assert_eq!(message(&second), "model \"m\" is already being reloaded");
    drop(release);
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(admin.reload("m", "").await.status, StatusCode::OK, "free again once done");
}
