//! `edgeinfer up --watch`: a change to a component's watched files runs its build and the new
//! build serves without a restart; a failed build or a build that does not start leaves the old
//! version serving. The app is made here: its build command copies a wasm file into place, so the
//! test controls what each "build" produces.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Host, built_wasm, client, wasm_variant};
use sha2::Digest;

const MANIFEST: &str = r#"spin_manifest_version = 2

[application]
name = "watched"

[[trigger.http]]
route = "/..."
component = "app"

[component.app]
source = "out/app.wasm"
[component.app.build]
command = "sh build.sh"
watch = ["build.sh", "src/**/*.wasm"]
"#;

fn app_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgeinfer-watch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src/nested")).unwrap();
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::write(dir.join("spin.toml"), MANIFEST).unwrap();
    std::fs::write(dir.join("runtime.toml"), "# no models\n").unwrap();
    std::fs::write(dir.join("build.sh"), "cp src/nested/next.wasm out/app.wasm\n").unwrap();
    std::fs::write(dir.join("src/nested/next.wasm"), built_wasm("faulty")).unwrap();
    std::fs::write(dir.join("out/app.wasm"), built_wasm("faulty")).unwrap();
    dir
}

fn serving(host: &Host) -> String {
    let response = client().get(host.url("/ok")).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.headers()["x-edgeinfer-version"].to_str().unwrap().to_string()
}

fn short_sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))[..12].to_string()
}

/// Waits until the log has a line containing `text` after the first `skip` lines.
fn wait_for_log(host: &Host, skip: usize, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(line) = host.log().iter().skip(skip).find(|l| l.contains(text)) {
            return line.clone();
        }
        assert!(Instant::now() < deadline, "no log line with {text:?} within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write(dir: &Path, file: &str, bytes: &[u8]) {
    std::fs::write(dir.join(file), bytes).unwrap();
}

#[test]
fn a_changed_build_input_is_rebuilt_and_served_without_a_restart() {
    let dir = app_dir();
    let runtime = dir.join("runtime.toml");
    let host =
        Host::start(&dir.join("spin.toml"), &["--watch", "--runtime-config-file", runtime.to_str().unwrap()]);
    assert!(host.log().iter().any(|l| l.contains("Watching the build inputs of: app")));
    let first = serving(&host);
    assert_eq!(first, short_sha(&built_wasm("faulty")));

    // Edit a watched file: the build copies it into place, and the host swaps it in.
    let v2 = wasm_variant(&built_wasm("faulty"), "watched-v2");
    let mark = host.log().len();
    let changed = Instant::now();
    write(&dir, "src/nested/next.wasm", &v2);
    wait_for_log(&host, mark, "hot-swapped the new build");
    eprintln!("watch: change to new version serving in {} ms", changed.elapsed().as_millis());
    assert_eq!(serving(&host), short_sha(&v2));

    // A build that fails: nothing is swapped.
    let mark = host.log().len();
    write(&dir, "build.sh", b"echo broken on purpose >&2; exit 3\n");
    wait_for_log(&host, mark, "build failed, nothing swapped");
    assert_eq!(serving(&host), short_sha(&v2));

    // A build that produces something that is not a component: refused, the old one serves.
    let mark = host.log().len();
    write(&dir, "build.sh", b"cp src/nested/next.wasm out/app.wasm\n");
    write(&dir, "src/nested/next.wasm", b"\0asm but not really");
    wait_for_log(&host, mark, "the new build does not start, the old version keeps serving");
    assert_eq!(serving(&host), short_sha(&v2));

    // Fixed again: served.
    let v3 = wasm_variant(&built_wasm("faulty"), "watched-v3");
    let mark = host.log().len();
    write(&dir, "src/nested/next.wasm", &v3);
    wait_for_log(&host, mark, "hot-swapped the new build");
    assert_eq!(serving(&host), short_sha(&v3));
    // The process never restarted: one "Serving" line in its log.
    assert_eq!(host.log().iter().filter(|l| l.starts_with("Serving ")).count(), 1);
    drop(host);
    let _ = std::fs::remove_dir_all(dir);
}
