//! Starts the real `edgeinfer` binary on a free loopback port and talks HTTP to it.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once, mpsc};
use std::time::Duration;

use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repo root").to_path_buf()
}

/// The host binary built by `cargo build -p edgeinfer`: `$EDGEINFER_HOST_BINARY` (scripts/test sets
/// it, since with a separate cargo build directory the test executables do not sit beside it), else
/// the one next to this test binary.
pub fn host_binary() -> PathBuf {
    let binary = match std::env::var_os("EDGEINFER_HOST_BINARY") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
            profile_dir.join("edgeinfer")
        }
    };
    assert!(
        binary.is_file(),
        "{} is missing: build the host first (scripts/test does: cargo build -p edgeinfer)",
        binary.display()
    );
    binary
}

/// Hosts still running; killed at process exit, since hosts shared through statics are never
/// dropped and an orphan would outlive the test run.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

extern "C" fn kill_running_hosts() {
    if let Ok(pids) = RUNNING.lock() {
        for &pid in pids.iter() {
            // SAFETY: plain kill(2) on a child we spawned.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

fn track(pid: u32) {
    static REGISTER: Once = Once::new();
    // SAFETY: registers a C-ABI function with no captured state.
    REGISTER.call_once(|| unsafe {
        libc::atexit(kill_running_hosts);
    });
    RUNNING.lock().unwrap().push(pid);
}

fn untrack(pid: u32) {
    RUNNING.lock().unwrap().retain(|&p| p != pid);
}

/// A running host, killed on drop or at process exit.
pub struct Host {
    child: Child,
    pub base: String,
    /// Its stderr (logs) so far, line by line.
    log: std::sync::Arc<Mutex<Vec<String>>>,
    /// The admin API's base URL, when started with `--admin-listen`.
    pub admin: Option<String>,
}

impl Host {
    /// Runs `edgeinfer up -f MANIFEST --listen 127.0.0.1:0 [extra...]` and waits until it serves.
    pub fn start(manifest: &Path, extra: &[&str]) -> Host {
        Host::start_with_env(manifest, extra, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_with_env(manifest: &Path, extra: &[&str], env: &[(&str, &str)]) -> Host {
        let mut args = vec!["-f", manifest.to_str().expect("a UTF-8 path")];
        args.extend_from_slice(extra);
        Host::spawn(&repo_root(), &args, env)
    }

    /// Runs `edgeinfer up --listen 127.0.0.1:0 [extra...]` in `dir`, as a user starts the app of
    /// the directory they are in (its spin.toml, and its runtime config if it has one).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Host {
        Host::spawn(dir, extra, &[])
    }

    /// Like `start_with_env`, with the host started by `launcher` (a program and its arguments
    /// before `up`: an emulator and the binary it runs, for one).
    pub fn start_by(launcher: &[&OsStr], manifest: &Path, extra: &[&str], env: &[(&str, &str)]) -> Host {
        let mut args = vec!["-f", manifest.to_str().expect("a UTF-8 path")];
        args.extend_from_slice(extra);
        Host::spawn_by(launcher, &repo_root(), &args, env)
    }

    fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Host {
        Host::spawn_by(&[host_binary().as_os_str()], dir, args, env)
    }

    fn spawn_by(launcher: &[&OsStr], dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Host {
        // TEI's API_KEY variable turns the host's key on: only a test that asks for it gets it.
        let mut child = Command::new(launcher[0])
            .args(&launcher[1..])
            .env_remove("API_KEY")
            .envs(env.iter().copied())
            .arg("up")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start edgeinfer");
        track(child.id());
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("Serving ") {
                    let _ = tx.send(address.trim().to_string());
                }
                eprintln!("[edgeinfer] {line}");
                lines.lock().unwrap().push(line);
            }
        });
        // First start on a fresh machine fetches the model and ONNX Runtime and compiles.
        let base = match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(base) => base,
            Err(_) => {
                let status = child.try_wait();
                let _ = child.kill();
                panic!("edgeinfer did not start serving (exit status: {status:?}); see its log above");
            }
        };
        let admin = log
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.strip_prefix("Admin API: ").map(|a| a.trim().to_string()));
        Host { child, base, log, admin }
    }

    /// The host's log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Sends a signal to the host process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Sends `signal` (SIGTERM as systemd stops a service, SIGKILL as a crash) and waits up to
    /// `within` for the host to exit.
    #[allow(dead_code)]
    pub fn stop(mut self, signal: libc::c_int, within: Duration) {
        self.signal(signal);
        assert!(self.wait_exit(within).is_some(), "the host did not exit");
    }

    /// Waits up to `timeout` for the host to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait for the host") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Where the host's KServe gRPC API listens (`up --grpc-listen`), as its log says.
    #[allow(dead_code)]
    pub fn grpc_address(&self) -> String {
        self.log()
            .iter()
            .find_map(|l| Some(l.strip_prefix("KServe v2 gRPC API: ")?.split(' ').next()?.to_string()))
            .expect("the host says where gRPC listens")
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        untrack(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking client with a generous timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().expect("client")
}

/// POSTs JSON and returns (status, parsed body).
pub fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let response = client().post(url).json(body).send().expect("request");
    let status = response.status().as_u16();
    (status, response.json().expect("a JSON body"))
}

/// Asserts an error answer: its status, its `error_type` and a non-empty `error` message.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_type: &str) {
    assert_eq!(status, want_status, "body: {body}");
    assert_eq!(body["error_type"], want_type, "body: {body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "body: {body}");
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Parses `[[f32]]`.
pub fn vectors(body: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("expected [[f32]], got {body}: {e}"))
}

/// The largest absolute difference between two `[[f32]]` answers of the same shape.
pub fn max_difference(a: &Value, b: &Value) -> f32 {
    let (a, b) = (vectors(a), vectors(b));
    assert_eq!(a.len(), b.len());
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// An app whose handlers get their model from nn-remote (at `via`, a base URL) answers `/embed`,
/// `/predict` and the 422 contract as the model host it forwards to (`direct`) does.
pub fn assert_answers_like_the_model_host(via: &str, direct: &Host) {
    let texts = serde_json::json!([
        "A quick test of remote inference.",
        "set a timer for ten minutes",
        "héllo wörld"
    ]);
    let body = serde_json::json!({"inputs": texts});
    let (status, through) = post_json(&format!("{via}/embed"), &body);
    assert_eq!(status, 200, "{through}");
    let difference = max_difference(&through, &post_json(&direct.url("/embed"), &body).1);
    assert!(difference < 1e-6, "embeddings through nn-remote differ by {difference}");

    let body = serde_json::json!({"inputs": texts, "top_k": 3});
    let (status, through) = post_json(&format!("{via}/predict"), &body);
    assert_eq!(status, 200, "{through}");
    assert_eq!(through, post_json(&direct.url("/predict"), &body).1);
    assert_eq!(through[1][0]["label"], "timer");

    // The model host's own errors still come back as JSON errors.
    let (status, body) = post_json(&format!("{via}/predict"), &serde_json::json!({"inputs": ""}));
    assert_eq!((status, body["error_type"].as_str()), (422, Some("Validation")), "{body}");
}

/// The pinned `[onnxruntime]` section of the default runtime config, for tests that write their
/// own runtime config.
pub fn onnxruntime_section() -> String {
    let text = std::fs::read_to_string(repo_root().join("runtime-config/local.toml")).unwrap();
    let section = text.split("[onnxruntime]").nth(1).expect("[onnxruntime] in local.toml");
    format!("[onnxruntime]{section}")
}

/// GETs `path` and returns (status, body text).
pub fn get(host: &Host, path: &str) -> (u16, String) {
    let response = client().get(host.url(path)).send().expect("the host answers");
    (response.status().as_u16(), response.text().unwrap())
}

/// Reads a JSON file under tests/reference.
pub fn reference(name: &str) -> Value {
    let path = repo_root().join("tests/reference").join(name);
    serde_json::from_slice(&std::fs::read(&path).expect("reference file")).expect("reference JSON")
}

/// The admin token the admin-API tests start hosts with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Starts `manifest` (relative to the repo root) with the admin API on a free port, and with
/// `runtime` as its runtime config when given.
pub fn admin_host(manifest: &str, runtime: Option<&str>) -> Host {
    let root = repo_root();
    let runtime = runtime.map(|r| root.join(r).display().to_string());
    let mut args = vec!["--admin-listen", "127.0.0.1:0"];
    if let Some(runtime) = &runtime {
        args.extend(["--runtime-config-file", runtime.as_str()]);
    }
    Host::start_with_env(&root.join(manifest), &args, &[("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN)])
}

/// `GET /admin/v1/app` of a host started by `admin_host`, and the entry of component `id` in it.
pub fn admin_app(host: &Host, id: &str) -> (Value, Value) {
    let url = format!("{}/admin/v1/app", host.admin.as_ref().expect("a host with --admin-listen"));
    let app: Value = client().get(url).bearer_auth(ADMIN_TOKEN).send().unwrap().json().unwrap();
    let component =
        app["components"].as_array().unwrap().iter().find(|c| c["id"] == id).cloned().unwrap_or_default();
    (app, component)
}

/// A component built by `edgeinfer build` (target/wasm32-wasip2/release/NAME.wasm).
pub fn built_wasm(name: &str) -> Vec<u8> {
    let path = repo_root().join(format!("target/wasm32-wasip2/release/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (edgeinfer build)", path.display()))
}

/// `bytes` with a custom section appended: the same code, another version.
pub fn wasm_variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    use wasm_encoder::{ComponentSection, CustomSection};
    let mut out = bytes.to_vec();
    CustomSection { name: "edgeinfer:test-variant".into(), data: tag.as_bytes().into() }
        .append_to_component(&mut out);
    out
}

/// The interpreter that has the pinned client libraries of tests/clients (installed on first use).
pub fn client_python() -> String {
    let output = std::process::Command::new(repo_root().join("scripts/python-clients"))
        .output()
        .expect("run scripts/python-clients");
    assert!(
        output.status.success(),
        "scripts/python-clients failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Runs tests/clients/SCRIPT with `args` under the client interpreter and returns its report:
/// the last line it prints, as JSON. A failing script fails the test with everything it said.
pub fn run_client_script(script: &str, args: &[&std::ffi::OsStr]) -> Value {
    let output = Command::new(client_python())
        .arg(repo_root().join("tests/clients").join(script))
        .args(args)
        .output()
        .expect("run the client script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    eprintln!("{script}: {report}");
    report
}

/// A variant of a TOML file of the repo (a manifest or a runtime config), written in the repo root
/// (where spin.toml's relative paths still hold) and removed on drop.
pub struct Variant(pub PathBuf);

impl Variant {
    /// `file` (relative to the repo root) with `edit` applied to its text.
    pub fn new(file: &str, tag: &str, edit: impl FnOnce(String) -> String) -> Variant {
        // One file per variant: tests of one binary run at once, and one's variant must not be
        // removed under another's start.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        let path = repo_root().join(format!(".test-{tag}-{}-{number}.toml", std::process::id()));
        std::fs::write(&path, edit(text)).unwrap();
        Variant(path)
    }

    /// spin.remote.toml with its model server (`NN_REMOTE_URL`, `allowed_outbound_hosts`) at
    /// `address` (`host:port`), sending `KSERVE_TOKEN`.
    pub fn remote_pointing_at(address: &str) -> Variant {
        Variant::new("spin.remote.toml", "remote", |text| {
            assert!(text.contains("127.0.0.1:3000"), "spin.remote.toml names 127.0.0.1:3000");
            let url = "NN_REMOTE_URL = \"http://127.0.0.1:3000\"";
            assert_eq!(text.matches(url).count(), 2, "both handlers name the model server");
            text.replace(url, &format!("{url}, NN_REMOTE_TOKEN = \"{KSERVE_TOKEN}\""))
                .replace("127.0.0.1:3000", address)
        })
    }

    /// runtime-config/local.toml with the KServe API on for both models, behind `KSERVE_TOKEN`
    /// (from `$EDGEINFER_TEST_KSERVE_TOKEN`, which `kserve_host` sets).
    pub fn kserve_config() -> Variant {
        Variant::new("runtime-config/local.toml", "kserve", |text| {
            format!("{text}\n{KSERVE_SECTION}token_env = \"EDGEINFER_TEST_KSERVE_TOKEN\"\n")
        })
    }
}

/// The KServe API of the default app's models, as the tests turn it on (a token or
/// `public = true` goes with it).
pub const KSERVE_SECTION: &str = "[kserve]\nenabled = true\nmodels = [\"minilm\", \"intents\"]\n";

/// The bearer token of the KServe API in the tests.
pub const KSERVE_TOKEN: &str = "test-kserve-token-0123456789";

/// The default app with the KServe API on (`Variant::kserve_config`).
pub fn kserve_host() -> Host {
    let config = Variant::kserve_config();
    Host::start_with_env(
        &repo_root().join("spin.toml"),
        &["--runtime-config-file", config.0.to_str().unwrap()],
        &[("EDGEINFER_TEST_KSERVE_TOKEN", KSERVE_TOKEN)],
    )
}

impl Drop for Variant {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The CNCF Distribution registry (Debian's `docker-registry`, which scripts/test installs) on a
/// free loopback port, storing under a temporary directory; stopped and removed on drop.
pub struct OciRegistry {
    child: Child,
    /// `127.0.0.1:PORT`, the registry part of references.
    pub address: String,
    /// Its storage (the filesystem driver's root).
    pub storage: PathBuf,
    dir: PathBuf,
}

impl OciRegistry {
    /// An open registry.
    pub fn start() -> OciRegistry {
        OciRegistry::start_with_users(&[])
    }

    /// A registry that lets only these (user, password) pairs in, with HTTP basic auth (htpasswd
    /// with bcrypt, written by the client venv's `bcrypt`).
    pub fn start_with_users(users: &[(&str, &str)]) -> OciRegistry {
        OciRegistry::launch(users, false)
    }

    /// An open registry on HTTPS, with a certificate for 127.0.0.1 signed by a test CA (made with
    /// the `openssl` CLI; `certificate` is the CA's).
    pub fn start_tls() -> OciRegistry {
        OciRegistry::launch(&[], true)
    }

    /// The PEM certificate of the CA that signed the certificate of a registry from `start_tls`.
    pub fn certificate(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn launch(users: &[(&str, &str)], tls: bool) -> OciRegistry {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("edgeinfer-registry-{}-{port}", std::process::id()));
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let mut auth = String::new();
        if !users.is_empty() {
            let htpasswd = dir.join("htpasswd");
            let script = "import bcrypt, sys\nfor pair in sys.argv[1:]:\n    user, password = pair.split(':', 1)\n    print(user + ':' + bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode())";
            let output = Command::new(client_python())
                .args(["-c", script])
                .args(users.iter().map(|(u, p)| format!("{u}:{p}")))
                .output()
                .expect("run bcrypt");
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            std::fs::write(&htpasswd, &output.stdout).unwrap();
            auth =
                format!("auth:\n  htpasswd:\n    realm: edgeinfer-tests\n    path: {}\n", htpasswd.display());
        }
        let mut tls_section = String::new();
        if tls {
            // A test CA, and a server certificate for 127.0.0.1 it signs.
            let script = "set -e\n\
                openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=edgeinfer-test-ca -keyout ca.key -out ca.pem\n\
                openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out server.csr\n\
                printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > server.ext\n\
                openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile server.ext -out cert.pem\n";
            let output =
                Command::new("bash").args(["-c", script]).current_dir(&dir).output().expect("run openssl");
            assert!(output.status.success(), "openssl: {}", String::from_utf8_lossy(&output.stderr));
            tls_section = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            );
        }
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_section}{auth}",
                storage.display()
            ),
        )
        .unwrap();
        let binary = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("docker-registry"))
            .find(|p| p.is_file())
            .expect("docker-registry is not installed (scripts/test installs Debian's docker-registry)");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        track(child.id());
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        OciRegistry { child, address: format!("127.0.0.1:{port}"), storage, dir }
    }

    /// `GET /v2/NAME/manifests/REFERENCE` (as an OCI manifest).
    pub fn manifest(&self, repository: &str, reference: &str) -> Value {
        client()
            .get(format!("http://{}/v2/{repository}/manifests/{reference}", self.address))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// A blob's bytes.
    pub fn blob(&self, repository: &str, digest: &str) -> Vec<u8> {
        let response =
            client().get(format!("http://{}/v2/{repository}/blobs/{digest}", self.address)).send().unwrap();
        assert_eq!(response.status().as_u16(), 200, "blob {digest}");
        response.bytes().unwrap().to_vec()
    }

    /// Where the registry keeps a blob's bytes (its filesystem driver's layout).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// Stops the registry (a registry that is down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        untrack(self.child.id());
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cache directory for one test (`EDGEINFER_CACHE_DIR`): empty of registry data, sharing the
/// user cache's ONNX Runtime, wheels and compiled components (links), so that it tests a first
/// pull without fetching ONNX Runtime again. Removed on drop.
pub struct FreshCache(pub PathBuf);

impl FreshCache {
    pub fn new(tag: &str) -> FreshCache {
        FreshCache::sharing(tag, &["blobs", "wheels", "compiled", "tools"])
    }

    /// Sharing only pip's wheels, the compiled components and tools: every verified file (models,
    /// ONNX Runtime) is fetched again (give ONNX Runtime by `ORT_DYLIB_PATH`).
    pub fn without_files(tag: &str) -> FreshCache {
        FreshCache::sharing(tag, &["wheels", "compiled", "tools"])
    }

    /// A cache of its own that shares only the folders `names` with the user's.
    pub fn sharing(tag: &str, names: &[&str]) -> FreshCache {
        let shared = std::env::var_os("EDGEINFER_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("edgeinfer")))
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/edgeinfer"));
        let dir = std::env::temp_dir().join(format!("edgeinfer-cache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for name in names {
            std::fs::create_dir_all(shared.join(name)).unwrap();
            std::os::unix::fs::symlink(shared.join(name), dir.join(name)).unwrap();
        }
        FreshCache(dir)
    }

    pub fn env(&self) -> (&'static str, &str) {
        ("EDGEINFER_CACHE_DIR", self.0.to_str().unwrap())
    }
}

impl Drop for FreshCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `edgeinfer ARGS` in the repo root with `env`; (success, stdout, stderr).
pub fn edgeinfer(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = Command::new(host_binary())
        .args(args)
        .env_remove("API_KEY")
        .envs(env.iter().copied())
        .current_dir(repo_root())
        .output()
        .expect("run edgeinfer");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    eprintln!("edgeinfer {}:\n{stderr}{stdout}", args.join(" "));
    (output.status.success(), stdout, stderr)
}

/// An OTLP trace receiver on loopback (tests/clients/otlp_receiver.py: gRPC and HTTP/protobuf,
/// decoding with the OpenTelemetry project's protobuf definitions); killed on drop.
#[allow(dead_code)]
pub struct OtlpReceiver {
    child: Child,
    /// Where it appends each span it receives, as a JSON line.
    spans: PathBuf,
    /// `http://127.0.0.1:PORT` of its gRPC and of its HTTP listener.
    pub grpc: String,
    pub http: String,
}

#[allow(dead_code)]
impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let spans =
            std::env::temp_dir().join(format!("edgeinfer-spans-{}-{number}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&spans);
        let mut child = Command::new(client_python())
            .arg(repo_root().join("tests/clients/otlp_receiver.py"))
            .arg(&spans)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the OTLP receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("the receiver's ports");
        let port = |name: &str| {
            let field = line.split_whitespace().find_map(|f| f.strip_prefix(&format!("{name}="))).unwrap();
            format!("http://127.0.0.1:{field}")
        };
        let (grpc, http) = (port("grpc"), port("http"));
        OtlpReceiver { child, spans, grpc, http }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.spans).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The spans received once `done` holds for them (within `timeout`, else what there is).
    pub fn spans_when(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || std::time::Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.spans);
    }
}
