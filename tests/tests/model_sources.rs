//! `[[asset]] url = ...`: files fetched over HTTP from a server the test runs on loopback, and from
//! S3 (moto's server, from PyPI), as `edgeinfer fetch` does on a first start. A good download
//! lands verified; a cut transfer or a 503 is retried; a 404, a missing key, a wrong sum or a
//! server that is down fail with the URL and the sums named, and never leave a file that looks
//! valid.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{host_binary, repo_root};
use sha2::{Digest, Sha256};

/// A file server: `/file` answers the file, `/cut-twice` cuts the first two transfers halfway,
/// `/busy-once` answers 503 first, anything else 404; `Range: bytes=N-` is honoured (206) on the
/// first two. Counts requests and bytes of content sent by path.
struct FileServer {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    sent: Arc<Mutex<HashMap<String, usize>>>,
}

impl FileServer {
    fn start(content: Vec<u8>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let sent: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (counted, measured) = (hits.clone(), sent.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request_line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // Read the headers up to the blank line, keeping a `Range: bytes=N-`.
                let (mut line, mut from) = (String::new(), None::<usize>);
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        from = value.trim().trim_end_matches('-').parse().ok();
                    }
                    line.clear();
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let hit = {
                    let mut hits = counted.lock().unwrap();
                    let count = hits.entry(path.clone()).or_insert(0);
                    *count += 1;
                    *count
                };
                let from =
                    from.filter(|f| *f < content.len() && matches!(path.as_str(), "/file" | "/cut-twice"));
                let rest = &content[from.unwrap_or(0)..];
                let head = |status: &str, length: usize| {
                    let range = match from {
                        Some(f) => {
                            format!("content-range: bytes {f}-{}/{}\r\n", content.len() - 1, content.len())
                        }
                        None => String::new(),
                    };
                    format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {length}\r\n{range}connection: close\r\n\r\n"
                    )
                };
                let ok = if from.is_some() { "206 Partial Content" } else { "200 OK" };
                let body: &[u8] = match (path.as_str(), hit) {
                    ("/file", _) | ("/cut-twice", 3..) | ("/busy-once", 2..) => rest,
                    ("/cut-twice", _) => &rest[..rest.len() / 2],
                    _ => &[],
                };
                *measured.lock().unwrap().entry(path.clone()).or_insert(0) += body.len();
                let _ = match (path.as_str(), hit) {
                    ("/file", _) | ("/cut-twice", _) | ("/busy-once", 2..) => stream
                        .write_all(head(ok, rest.len()).as_bytes())
                        .and_then(|()| stream.write_all(body)),
                    ("/busy-once", _) => stream.write_all(head("503 Service Unavailable", 0).as_bytes()),
                    _ => stream.write_all(head("404 Not Found", 0).as_bytes()),
                };
            }
        });
        FileServer { base, hits, sent }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Bytes of content sent for `path`, all requests together.
    fn sent(&self, path: &str) -> usize {
        self.sent.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// An app directory with one URL asset, and its own empty cache.
struct App {
    dir: PathBuf,
}

impl App {
    fn new(tag: &str, url: &str, sha256: &str) -> App {
        let dir = std::env::temp_dir().join(format!("edgeinfer-sources-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("runtime-config")).unwrap();
        std::fs::write(
            dir.join("spin.toml"),
            "spin_manifest_version = 2\n\n[application]\nname = \"sources\"\n",
        )
        .unwrap();
        let asset =
            format!("[[asset]]\npath = \"models/tokenizer.json\"\nsha256 = \"{sha256}\"\nurl = \"{url}\"\n");
        std::fs::write(dir.join("runtime-config/local.toml"), asset).unwrap();
        App { dir }
    }

    /// `edgeinfer fetch` on it: (success, what it said).
    fn fetch(&self) -> (bool, String) {
        let output = self
            .command("fetch")
            // Not fetched here: this test is about the asset.
            .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
            .output()
            .expect("run edgeinfer fetch");
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    }

    /// `edgeinfer SUBCOMMAND -f` on it, with its own cache.
    fn command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(host_binary());
        command
            .args([subcommand, "-f"])
            .arg(self.dir.join("spin.toml"))
            .env("EDGEINFER_CACHE_DIR", self.dir.join("cache"))
            .env("RUST_BACKTRACE", "0");
        command
    }

    fn target(&self) -> PathBuf {
        self.dir.join("models/tokenizer.json")
    }

    /// Every file left in the cache, partial ones included.
    fn cached_files(&self) -> Vec<PathBuf> {
        walk_files(&self.dir.join("cache"))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn content() -> (Vec<u8>, String) {
    let bytes = std::fs::read(repo_root().join("models/all-minilm-l6-v2/tokenizer.json")).unwrap();
    let sum = hex::encode(Sha256::digest(&bytes));
    (bytes, sum)
}

#[test]
fn a_url_asset_lands_verified_and_transient_failures_are_retried() {
    let (bytes, sum) = content();
    let server = FileServer::start(bytes.clone());
    for (path, tries) in [("/file", 1), ("/cut-twice", 3), ("/busy-once", 2)] {
        let app = App::new(&path[1..], &format!("{}{path}", server.base), &sum);
        let (ok, said) = app.fetch();
        assert!(ok, "{path}: {said}");
        assert_eq!(std::fs::read(app.target()).unwrap(), bytes, "{path}: the file in place");
        assert_eq!(server.hits(path), tries, "{path}: tries\n{said}");
        if tries > 1 {
            assert!(said.contains("retrying in"), "{path}: {said}");
        }
        if path == "/cut-twice" {
            // Each retry asked for the rest only: not one byte was sent twice.
            assert!(said.contains("resuming after"), "{said}");
            assert_eq!(server.sent(path), bytes.len(), "{path}: bytes sent");
        }
        assert!(!app.cached_files().iter().any(|f| f.to_string_lossy().ends_with(".partial")), "{path}");
        // A second fetch takes the cached copy: no request.
        std::fs::remove_file(app.target()).unwrap();
        let (ok, said) = app.fetch();
        assert!(ok, "{said}");
        assert_eq!(server.hits(path), tries, "{path}: served from the cache the second time");
    }
}

#[test]
fn bad_sources_fail_naming_the_url_and_leave_no_file() {
    let (bytes, sum) = content();
    let server = FileServer::start(bytes);
    let wrong = "0".repeat(64);
    let down = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/file", listener.local_addr().unwrap())
    };
    let cases = [
        ("missing", format!("{}/missing", server.base), sum.clone(), vec!["404"]),
        ("wrong-sum", format!("{}/file", server.base), wrong.clone(), vec![sum.as_str(), wrong.as_str()]),
        ("down", down.clone(), sum.clone(), vec!["gave up after 4 tries"]),
    ];
    for (tag, url, expected, mentions) in cases {
        let app = App::new(tag, &url, &expected);
        let (ok, said) = app.fetch();
        assert!(!ok, "{tag}: fetch succeeded");
        assert!(said.contains(&url), "{tag}: the URL is named: {said}");
        for mention in mentions {
            assert!(said.contains(mention), "{tag}: {mention:?} in {said}");
        }
        assert!(!app.target().exists(), "{tag}: nothing in place");
        assert_eq!(app.cached_files(), Vec::<PathBuf>::new(), "{tag}: nothing left in the cache");
    }
    assert_eq!(server.hits("/missing"), 1, "a 404 is not retried");
}

#[test]
fn an_asset_has_exactly_one_source() {
    let app = App::new("two-sources", "https://example.invalid/x", &"0".repeat(64));
    let config = app.dir.join("runtime-config/local.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}pip = \"x==1\"\nmember = \"x/y\"\n")).unwrap();
    let (ok, said) = app.fetch();
    assert!(!ok && said.contains("not both"), "{said}");
    std::fs::write(&config, text.replace("https://example.invalid/x", "ftp://example.invalid/x")).unwrap();
    let (ok, said) = app.fetch();
    assert!(!ok && said.contains("https://, http://, s3:// or oci://"), "{said}");
}

/// The ONNX Runtime library the other tests fetched into the user's cache (pinned in local.toml).
fn onnxruntime_library() -> PathBuf {
    let section = common::onnxruntime_section();
    let sha = section.split("sha256 = \"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let member = section.split("member = \"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let cache = std::env::var_os("EDGEINFER_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/edgeinfer"));
    let file = Path::new(&member).file_name().unwrap().to_owned();
    let path = cache.join("blobs").join(sha).join(file);
    assert!(path.is_file(), "{} (run `edgeinfer fetch`)", path.display());
    path
}

#[test]
fn edgeinfer_up_fetches_url_assets_and_models_on_its_first_start() {
    // The provisioning `up` does on a blocking thread of its runtime: an asset, and the model it
    // then serves, each from its URL.
    let (bytes, sum) = content();
    let server = FileServer::start(bytes.clone());
    let model = std::fs::read(repo_root().join("models/all-minilm-l6-v2/model.onnx")).unwrap();
    let model_sum = hex::encode(Sha256::digest(&model));
    let model_server = FileServer::start(model.clone());
    let app = App::new("up", &format!("{}/file", server.base), &sum);
    let config = app.dir.join("runtime-config/local.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let section = format!(
        "[model.minilm]\npath = \"models/minilm.onnx\"\nurl = \"{}/file\"\nsha256 = \"{model_sum}\"\n\n",
        model_server.base
    );
    std::fs::write(&config, format!("{section}{text}")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = app
        .command("up")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("ORT_DYLIB_PATH", onnxruntime_library())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start edgeinfer up");
    let ready = format!("http://127.0.0.1:{port}/ready");
    let started = std::time::Instant::now();
    let answered = loop {
        if let Ok(response) = common::client().get(&ready).send() {
            break response.status().as_u16();
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut said = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut said).unwrap();
            panic!("edgeinfer up exited ({status}) before serving:\n{said}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "no answer from {ready}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answered, 200, "the model fetched from its URL serves");
    assert_eq!(std::fs::read(app.target()).unwrap(), bytes, "the asset is in place");
    assert_eq!(std::fs::read(app.dir.join("models/minilm.onnx")).unwrap(), model, "the model is in place");
    assert_eq!((server.hits("/file"), model_server.hits("/file")), (1, 1));
}

#[test]
fn a_model_url_must_be_pinned() {
    let app = App::new("unpinned", "https://example.invalid/x", &"0".repeat(64));
    let config = app.dir.join("runtime-config/local.toml");
    std::fs::write(&config, "[model.m]\npath = \"m.onnx\"\nurl = \"https://example.invalid/m.onnx\"\n")
        .unwrap();
    let (ok, said) = app.fetch();
    assert!(!ok && said.contains("[model.m] has a url but no sha256"), "{said}");
}

/// moto's S3 server on a free loopback port, stopped on drop.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // `moto_server`, run as a module: the venv's scripts name the path it was built at.
        let child = Command::new(common::client_python())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < std::time::Duration::from_secs(60), "moto_server did not start");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        S3Server { child, endpoint }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn s3_assets_come_from_the_bucket_with_the_standard_aws_settings() {
    let (bytes, sum) = content();
    let s3 = S3Server::start();
    let file = repo_root().join("models/all-minilm-l6-v2/tokenizer.json");
    let put = Command::new(common::client_python())
        .arg(repo_root().join("tests/clients/s3_put.py"))
        .args([&s3.endpoint, "models", "minilm/tokenizer.json"])
        .arg(&file)
        .output()
        .expect("run s3_put.py");
    assert!(put.status.success(), "s3_put.py: {}", String::from_utf8_lossy(&put.stderr));
    let fetch = |url: &str, sha256: &str, tag: &str| {
        let app = App::new(tag, url, sha256);
        let output = app
            .command("fetch")
            .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
            .env("AWS_ENDPOINT_URL", &s3.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .output()
            .expect("run edgeinfer fetch");
        let said = String::from_utf8_lossy(&output.stderr).into_owned();
        let landed = std::fs::read(app.target()).ok();
        let partials =
            app.cached_files().iter().filter(|f| f.to_string_lossy().ends_with(".partial")).count();
        (output.status.success(), said, landed, partials)
    };
    let (ok, said, landed, _) = fetch("s3://models/minilm/tokenizer.json", &sum, "s3-good");
    assert!(ok, "{said}");
    assert_eq!(landed.as_deref(), Some(bytes.as_slice()), "the object, verified, in place");

    // The same with nothing in the environment but a profile: endpoint, region and keys from the
    // AWS shared config and credentials files.
    let app = App::new("s3-profile", "s3://models/minilm/tokenizer.json", &sum);
    let aws = app.dir.join("aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[default]\nregion = eu-west-3\n\n[profile edge]\nregion = us-east-1\nendpoint_url = {}\n",
            s3.endpoint
        ),
    )
    .unwrap();
    std::fs::write(
        aws.join("credentials"),
        "[edge]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    let output = app
        .command("fetch")
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .env("AWS_PROFILE", "edge")
        .env("AWS_CONFIG_FILE", aws.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", aws.join("credentials"))
        .output()
        .expect("run edgeinfer fetch");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read(app.target()).unwrap(), bytes, "fetched with the profile's settings");

    let (ok, said, landed, partials) = fetch("s3://models/minilm/nope.json", &sum, "s3-missing");
    assert!(!ok && said.contains("s3://models/minilm/nope.json"), "{said}");
    assert!(!said.contains("retrying"), "a missing key is not retried: {said}");
    assert_eq!((landed, partials), (None, 0));

    let wrong = "1".repeat(64);
    let (ok, said, landed, partials) = fetch("s3://models/minilm/tokenizer.json", &wrong, "s3-wrong");
    assert!(!ok && said.contains(&sum) && said.contains(&wrong), "both sums named: {said}");
    assert_eq!((landed, partials), (None, 0));
}

/// Every file under `dir`.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walk_files(&path)) } else { out.push(path) }
    }
    out
}

/// runtime-config/local.toml with the minilm model at `path` (relative to the repo root), fetched
/// from `url` pinned by `sha256`.
fn minilm_from(path: &str, url: &str, sha256: &str) -> common::Variant {
    common::Variant::new("runtime-config/local.toml", "minilm-url", |text| {
        let line = "path = \"models/all-minilm-l6-v2/model.onnx\"\ndevice";
        assert!(text.contains(line), "local.toml's [model.minilm] path");
        text.replacen(line, &format!("path = \"{path}\"\nurl = \"{url}\"\nsha256 = \"{sha256}\"\ndevice"), 1)
    })
}

#[test]
fn the_model_comes_from_s3_then_is_reloaded_from_a_new_key_under_load() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let s3 = S3Server::start();
    let put = |key: &str, file: &Path| {
        let output = Command::new(common::client_python())
            .arg(repo_root().join("tests/clients/s3_put.py"))
            .args([&s3.endpoint, "models", key])
            .arg(file)
            .output()
            .expect("run s3_put.py");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    // v1: the int8 model the default app serves; v2: the same checkpoint exported in float32.
    let int8 = repo_root().join("models/all-minilm-l6-v2/model.onnx");
    let int8_sum = hex::encode(Sha256::digest(std::fs::read(&int8).unwrap()));
    let scratch = std::env::temp_dir().join(format!("edgeinfer-s3-reload-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let float32 = scratch.join("model.onnx");
    let (ok, _, said) = common::edgeinfer(
        &["export", "models/all-minilm-l6-v2", "-o", float32.to_str().unwrap(), "--pooling", "none"],
        &[],
    );
    assert!(ok, "{said}");
    let float32_sum = hex::encode(Sha256::digest(std::fs::read(&float32).unwrap()));
    put("minilm/v1/model.onnx", &int8);
    put("minilm/v2/model.onnx", &float32);

    let placed = format!("models/.test-s3-{}/minilm.onnx", std::process::id());
    let config = minilm_from(&placed, "s3://models/minilm/v1/model.onnx", &int8_sum);
    let cache = common::FreshCache::without_files("s3-reload");
    let ort = onnxruntime_library();
    let env = [
        cache.env(),
        ("ORT_DYLIB_PATH", ort.to_str().unwrap()),
        ("EDGEINFER_ADMIN_TOKEN", common::ADMIN_TOKEN),
        ("AWS_ENDPOINT_URL", &s3.endpoint),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let host = std::sync::Arc::new(common::Host::start_with_env(
        &repo_root().join("spin.toml"),
        &["--runtime-config-file", config.0.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"],
        &env,
    ));
    let said = host.log().join("\n");
    assert!(said.contains("fetching s3://models/minilm/v1/model.onnx"), "fetched from the bucket: {said}");
    assert_eq!(std::fs::read(repo_root().join(&placed)).unwrap(), std::fs::read(&int8).unwrap());

    let body = serde_json::json!({"inputs": ["a model reload from the bucket must not drop me", "nor me"]});
    let (status, before) = common::post_json(&host.url("/embed"), &body);
    assert_eq!(status, 200, "{before}");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (host, stop, body) = (host.clone(), stop.clone(), body.clone());
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(common::post_json(&host.url("/embed"), &body));
                }
                answers
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let reload = |body: serde_json::Value| {
        let url = format!("{}/admin/v1/models/minilm/reload", host.admin.as_ref().unwrap());
        let response =
            common::client().post(url).bearer_auth(common::ADMIN_TOKEN).json(&body).send().unwrap();
        (response.status().as_u16(), response.json::<serde_json::Value>().unwrap())
    };
    let (status, reloaded) =
        reload(serde_json::json!({"url": "s3://models/minilm/v2/model.onnx", "sha256": float32_sum}));
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(
        (reloaded["sha256"].as_str(), reloaded["replaced"].as_str()),
        (Some(&*float32_sum), Some(&*int8_sum))
    );
    std::thread::sleep(std::time::Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let (_, after) = common::post_json(&host.url("/embed"), &body);
    assert_ne!(after, before, "the float32 model answers");
    for (a, b) in common::vectors(&before).iter().zip(&common::vectors(&after)) {
        assert!(common::cosine(a, b) > 0.99, "the same checkpoint: cosine {}", common::cosine(a, b));
    }
    let answers: Vec<(u16, serde_json::Value)> =
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, answer)| *status != 200 || (*answer != before && *answer != after))
        .collect();
    eprintln!("reload from s3 under load: {} requests, {} failed", answers.len(), failed.len());
    assert!(
        answers.len() > 20 && failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );

    // Refused reloads keep the model serving: a wrong sum, a missing key, a url without its sum.
    // (A pinned sum already in the cache is served from there: the cache holds content by sum.)
    let wrong = "1".repeat(64);
    let (status, answer) =
        reload(serde_json::json!({"url": "s3://models/minilm/v1/model.onnx", "sha256": wrong}));
    assert_eq!((status, answer["error_type"].as_str()), (400, Some("InvalidModel")), "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains(&int8_sum) && error.contains(&wrong), "both sums named: {answer}");
    let (status, answer) =
        reload(serde_json::json!({"url": "s3://models/minilm/v9/model.onnx", "sha256": "2".repeat(64)}));
    assert_eq!((status, answer["error_type"].as_str()), (400, Some("InvalidModel")), "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("s3://models/minilm/v9/model.onnx"), "{answer}");
    let (status, answer) = reload(serde_json::json!({"url": "s3://models/minilm/v2/model.onnx"}));
    assert_eq!((status, answer["error_type"].as_str()), (400, Some("Validation")), "{answer}");
    assert_eq!(common::post_json(&host.url("/embed"), &body).1, after);
    let blobs = cache.0.join("blobs");
    let partials =
        walk_files(&blobs).into_iter().filter(|f| f.to_string_lossy().contains(".partial")).count();
    assert_eq!(partials, 0, "refused fetches leave nothing half-written");
    drop(host);
    let _ = std::fs::remove_dir_all(repo_root().join(placed).parent().unwrap());
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn a_full_disk_fails_the_download_and_leaves_no_file() {
    let (bytes, sum) = content();
    let server = FileServer::start(bytes);
    let app = App::new("full-disk", &format!("{}/file", server.base), &sum);
    // Files may not grow past 256 KiB (`ulimit -f`; SIGXFSZ ignored, so the write fails with
    // EFBIG as it would with ENOSPC); the tokenizer is 466 KB.
    let output = Command::new("bash")
        .args(["-c", "ulimit -f 256; trap '' XFSZ; exec \"$0\" \"$@\""])
        .arg(host_binary())
        .args(["fetch", "-f"])
        .arg(app.dir.join("spin.toml"))
        .env("EDGEINFER_CACHE_DIR", app.dir.join("cache"))
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .expect("run edgeinfer fetch under ulimit");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && said.contains("File too large") && said.contains("cannot write"),
        "{said}"
    );
    assert!(!said.contains("retrying"), "a full disk is not retried: {said}");
    assert!(!app.target().exists());
    assert_eq!(app.cached_files(), Vec::<PathBuf>::new(), "nothing left in the cache");
}
