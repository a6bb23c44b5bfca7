//! The default app's /embed, composed by `edgeinfer compose` with the tokenizer and the nn-local
//! model provider into one standalone component, served by stock `wasmtime serve` (wasmtime-cli
//! 48, no edgeinfer host involved) and compared with Python's ONNX Runtime reference.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{cosine, host_binary, post_json, reference, repo_root, vectors};
use serde_json::{Value, json};

/// The stock wasmtime CLI: `EDGEINFER_WASMTIME`, which scripts/test sets from
/// scripts/wasmtime-cli (that script installs it into the user's cache).
fn wasmtime_cli() -> PathBuf {
    let path = std::env::var_os("EDGEINFER_WASMTIME").map(PathBuf::from).unwrap_or_else(|| {
        let output = Command::new(repo_root().join("scripts/wasmtime-cli"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/wasmtime-cli");
        assert!(output.status.success(), "scripts/wasmtime-cli failed");
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    });
    assert!(path.is_file(), "no wasmtime CLI at {}", path.display());
    path
}

/// Kills the server when the test ends, passing or not.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn composed_embed_runs_under_stock_wasmtime_serve() {
    let dir = std::env::temp_dir().join(format!("edgeinfer-wasmtime-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("embed.wasm");
    let compose = Command::new(host_binary())
        .args(["compose", "embed", "-o"])
        .arg(&wasm)
        .current_dir(repo_root())
        .output()
        .expect("run edgeinfer compose");
    let log = String::from_utf8_lossy(&compose.stderr);
    assert!(compose.status.success(), "edgeinfer compose failed: {log}");
    let imports =
        log.lines().find_map(|l| l.split_once("it imports ")).map(|(_, i)| i).expect("imports line");
    assert!(!imports.contains("edgeinfer:nn"), "the model provider must be composed in: {imports}");
    assert!(!imports.contains("wasi:nn"), "nothing may import wasi:nn: {imports}");
    assert!(!imports.contains("edgeinfer:text"), "the tokenizer must be composed in: {imports}");

    // The printed command, on a free port and with this machine's wasmtime.
    let printed = String::from_utf8(compose.stdout).unwrap();
    let mut words: Vec<String> = printed.split_whitespace().map(String::from).collect();
    assert_eq!(words[..2], ["wasmtime", "serve"], "{printed}");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = words.iter().position(|w| w == "--addr").expect("--addr in the printed command") + 1;
    words[addr] = format!("127.0.0.1:{port}");
    let mut child = Command::new(wasmtime_cli())
        .args(&words[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wasmtime serve");
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("[wasmtime] {line}");
                if line.contains("Serving HTTP") {
                    let _ = tx.send(());
                }
            }
        });
    }
    let mut server = Server(child);
    let started = Instant::now();
    // It compiles the 24 MB component first (a release wasmtime: seconds).
    while rx.recv_timeout(Duration::from_millis(200)).is_err() {
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("wasmtime serve exited with {status} before serving; see its output above");
        }
        assert!(started.elapsed() < Duration::from_secs(300), "wasmtime serve did not start in 300 s");
    }
    eprintln!("wasmtime serve started serving in {:.1} s", started.elapsed().as_secs_f64());

    let url = format!("http://127.0.0.1:{port}/embed");
    let cases = reference("embeddings.json");
    let cases: Vec<&Value> =
        cases.as_array().unwrap().iter().filter(|c| c["needs_truncate"] != true).take(16).collect();
    let texts: Vec<&Value> = cases.iter().map(|c| &c["text"]).collect();
    let first = Instant::now();
    let (status, body) = post_json(&url, &json!({"inputs": texts}));
    assert_eq!(status, 200, "{body}");
    eprintln!("first /embed of {} sentences: {:.2} s", texts.len(), first.elapsed().as_secs_f64());
    let got = vectors(&body);
    assert_eq!(got.len(), cases.len());
    let mut worst = 1f32;
    for (case, vector) in cases.iter().zip(&got) {
        let want: Vec<f32> = serde_json::from_value(case["embedding"].clone()).unwrap();
        worst = worst.min(cosine(vector, &want));
    }
    eprintln!("wasmtime serve vs Python ONNX Runtime: min cosine {worst:.6} over {} sentences", cases.len());
    assert!(worst >= 0.999, "min cosine {worst}");

    // The handler's validation is the same outside edgeinfer.
    let (status, body) = post_json(&url, &json!({"inputs": []}));
    assert_eq!((status, body["error_type"].as_str()), (422, Some("Validation")), "{body}");
    assert!(server.0.try_wait().unwrap().is_none(), "wasmtime serve is still up");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
