//! Hot swap through the admin API: a new version of a component replaces the old one under load
//! with no failed and no dropped request, broken uploads are refused while the old version keeps
//! serving, rollback restores the previous version, and admin calls need the token.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN as TOKEN, Host, admin_app, built_wasm, client, wasm_variant as variant};
use serde_json::{Value, json};
use sha2::Digest;

fn admin_host() -> Host {
    common::admin_host("spin.toml", None)
}

fn embed_wasm() -> Vec<u8> {
    built_wasm("embed")
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// PUTs a component version; (status, JSON body).
fn deploy(host: &Host, id: &str, bytes: &[u8], sha: &str) -> (u16, Value) {
    let url = format!("{}/admin/v1/components/{id}?sha256={sha}", host.admin.as_ref().unwrap());
    let response = client().put(url).bearer_auth(TOKEN).body(bytes.to_vec()).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

fn admin_post(host: &Host, path: &str) -> (u16, Value) {
    let url = format!("{}{path}", host.admin.as_ref().unwrap());
    let response = client().post(url).bearer_auth(TOKEN).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

/// POSTs one embedding request; (status, answering version, body).
fn embed(host: &Host) -> (u16, String, Value) {
    let response = client()
        .post(host.url("/embed"))
        .json(&json!({"inputs": "a hot swap must not drop me"}))
        .send()
        .unwrap();
    let version =
        response.headers().get("x-edgeinfer-version").map_or("", |v| v.to_str().unwrap()).to_string();
    (response.status().as_u16(), version, response.json().unwrap_or(Value::Null))
}

fn serving_version(host: &Host) -> String {
    let (status, version, _) = embed(host);
    assert_eq!(status, 200);
    version
}

/// One request of the load: when it was sent and answered, and how.
struct Sent {
    sent: Instant,
    answered: Instant,
    outcome: Result<(u16, String, Value), String>,
}

#[test]
fn a_swap_under_load_drops_nothing_and_takes_effect_at_once() {
    let host = Arc::new(admin_host());
    let (_, v1, reference) = embed(&host);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (host, stop) = (host.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let outcome = client()
                        .post(host.url("/embed"))
                        .json(&json!({"inputs": "a hot swap must not drop me"}))
                        .send()
                        .map_err(|e| e.to_string())
                        .map(|r| {
                            let version = r
                                .headers()
                                .get("x-edgeinfer-version")
                                .map_or("", |v| v.to_str().unwrap())
                                .to_string();
                            (r.status().as_u16(), version, r.json().unwrap_or(Value::Null))
                        });
                    sent.push(Sent { sent: at, answered: Instant::now(), outcome });
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let next = variant(&embed_wasm(), "v2");
    let upload = Instant::now();
    let (status, body) = deploy(&host, "embed", &next, &sha256(&next));
    let deployed = Instant::now();
    assert_eq!(status, 200, "{body}");
    let v2 = body["version"].as_str().unwrap()[..12].to_string();
    assert_ne!(v1, v2);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<Sent> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();

    let failed: Vec<&String> = sent.iter().filter_map(|s| s.outcome.as_ref().err()).collect();
    assert!(failed.is_empty(), "no request may fail or be dropped: {failed:?}");
    let mut counts = (0, 0);
    for s in &sent {
        let (status, version, body) = s.outcome.as_ref().unwrap();
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body, &reference, "the same code answers the same, on either version");
        match version.as_str() {
            v if v == v1 => counts.0 += 1,
            v if v == v2 => counts.1 += 1,
            other => panic!("answered by an unknown version {other}"),
        }
        if s.sent >= deployed {
            assert_eq!(version, &v2, "requests sent after the deploy answered are served by the new version");
        }
    }
    assert!(counts.0 > 0 && counts.1 > 0, "both versions served: {counts:?}");
    let first_new = sent
        .iter()
        .filter(|s| s.outcome.as_ref().is_ok_and(|(_, v, _)| *v == v2))
        .map(|s| s.answered)
        .min()
        .unwrap();
    eprintln!(
        "hot swap under load: {} requests ({} on the old version, {} on the new), 0 failed; upload → deployed {:.0} ms \
         (host: {}), upload → first answer by the new version {:.0} ms",
        sent.len(),
        counts.0,
        counts.1,
        (deployed - upload).as_secs_f64() * 1000.0,
        body,
        (first_new - upload).as_secs_f64() * 1000.0
    );
}

#[test]
fn broken_uploads_are_refused_and_the_old_version_keeps_serving() {
    let host = admin_host();
    let v1 = serving_version(&host);
    let garbage = b"\0asm this is not a component".to_vec();
    let (status, body) = deploy(&host, "embed", &garbage, &sha256(&garbage));
    assert_eq!((status, body["error_type"].as_str()), (400, Some("InvalidComponent")), "{body}");

    let good = variant(&embed_wasm(), "damaged in transit");
    let (status, body) = deploy(&host, "embed", &good, &sha256(b"something else"));
    assert_eq!((status, body["error_type"].as_str()), (400, Some("ChecksumMismatch")), "{body}");

    // A real component, but not an HTTP handler: it does not export wasi:http/handler.
    let tokenizer = built_wasm("tokenizer");
    let (status, body) = deploy(&host, "embed", &tokenizer, &sha256(&tokenizer));
    assert_eq!((status, body["error_type"].as_str()), (400, Some("InvalidComponent")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("still serving"), "{body}");

    let (status, body) = deploy(&host, "nonexistent", &good, &sha256(&good));
    assert_eq!((status, body["error_type"].as_str()), (404, Some("ComponentNotFound")), "{body}");
    let url = format!("{}/admin/v1/components/embed", host.admin.as_ref().unwrap());
    let response = client().put(url).bearer_auth(TOKEN).body(good.clone()).send().unwrap();
    assert_eq!(response.status().as_u16(), 400, "the checksum is required");

    assert_eq!(serving_version(&host), v1, "every refused upload left the old version serving");
}

#[test]
fn rollback_restores_the_previous_version() {
    let host = admin_host();
    let v1 = serving_version(&host);
    let (status, body) = admin_post(&host, "/admin/v1/components/embed/rollback");
    assert_eq!((status, body["error_type"].as_str()), (409, Some("NoPreviousVersion")), "{body}");

    let next = variant(&embed_wasm(), "v2");
    let (status, body) = deploy(&host, "embed", &next, &sha256(&next));
    assert_eq!(status, 200, "{body}");
    let v2 = serving_version(&host);
    assert_ne!(v1, v2);
    let (app, embed) = admin_app(&host, "embed");
    assert_eq!(embed["previous"][0].as_str().unwrap()[..12], v1, "{app}");
    let routes = embed["routes"].as_array().unwrap();
    assert!(routes.contains(&json!("/embed")) && routes.len() == 7, "TEI's routes: {app}");

    let (status, body) = admin_post(&host, "/admin/v1/components/embed/rollback");
    assert_eq!(status, 200, "{body}");
    assert_eq!(serving_version(&host), v1, "the previous version serves again");
}

#[test]
fn admin_calls_need_the_token() {
    let host = admin_host();
    let admin = host.admin.clone().unwrap();
    let url = format!("{admin}/admin/v1/app");
    let response = client().get(&url).send().unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        client().get(&url).bearer_auth("wrong-token-0123456789abc").send().unwrap().status().as_u16(),
        403
    );
    assert_eq!(
        client()
            .get(&url)
            .header("authorization", format!("Basic {TOKEN}"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    let next = variant(&embed_wasm(), "unauthorised");
    let response = client()
        .put(format!("{admin}/admin/v1/components/embed?sha256={}", sha256(&next)))
        .bearer_auth("wrong-token-0123456789abc")
        .body(next)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 403, "no deploy without the token");
    assert_eq!(client().get(&url).bearer_auth(TOKEN).send().unwrap().status().as_u16(), 200);
    // With the token: a wrong method or an unknown path is a JSON error like any other.
    let call = |method: reqwest::Method, path: &str| {
        let response = client().request(method, format!("{admin}{path}")).bearer_auth(TOKEN).send().unwrap();
        (response.status().as_u16(), response.json::<Value>().unwrap())
    };
    let (status, body) = call(reqwest::Method::GET, "/admin/v1/components/embed");
    assert_eq!((status, body["error_type"].as_str()), (405, Some("MethodNotAllowed")), "{body}");
    assert_eq!(body["error"], "use PUT");
    let (status, body) = call(reqwest::Method::DELETE, "/admin/v1/models/minilm/reload");
    assert_eq!((status, body["error"].as_str()), (405, Some("use POST")), "{body}");
    let (status, body) = call(reqwest::Method::GET, "/admin/v1/nothing/here");
    assert_eq!((status, body["error_type"].as_str()), (404, Some("NotFound")), "{body}");
    // The admin API is not on the public listener.
    assert_eq!(client().get(host.url("/admin/v1/app")).send().unwrap().status().as_u16(), 404);
}
