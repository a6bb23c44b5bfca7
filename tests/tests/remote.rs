//! The nn-remote model provider: the default app's handlers composed with nn-remote
//! (spin.remote.toml, `--compose-nn-providers`) on a host with no models, forwarding every
//! inference to a second, real edgeinfer host over its KServe v2 API on loopback.

mod common;

use common::{Host, Variant, kserve_host, post_json};
use serde_json::json;

#[test]
fn handlers_with_nn_remote_answer_like_the_model_host() {
    let backend = kserve_host();
    let address = backend.base.trim_start_matches("http://").to_string();
    let manifest = Variant::remote_pointing_at(&address);
    let remote = Host::start(
        &manifest.0,
        &["--compose-nn-providers", "--runtime-config-file", "runtime-config/remote.toml"],
    );

    common::assert_answers_like_the_model_host(&remote.base, &backend);

    // With the model host gone, requests fail clearly and the remote host keeps serving.
    drop(backend);
    let (status, body) = post_json(&remote.url("/embed"), &json!({"inputs": "anyone there?"}));
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error_type"], "Backend");
    assert!(body["error"].as_str().unwrap().contains("cannot reach"), "{body}");
    let (status, _) = post_json(&remote.url("/embed"), &json!({"inputs": ""}));
    assert_eq!(status, 422);
}
