//! TLS on every listener, checked with TLS software nobody here wrote: curl (HTTP/2 and
//! HTTP/1.1 by ALPN), Debian's sslscan (protocols and suites), the official `openai` client and
//! `tritonclient.grpc` over TLS; the admin API's mTLS refusing clients in the handshake;
//! `edgeinfer deploy` over HTTPS with a client certificate, audited; one API key with one 401/403
//! rule; certificates rotated under load without a failed request. Certificates come from a test
//! CA made by `tests/clients/make_certs.py` (Python's `cryptography`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Host, KSERVE_TOKEN, Variant, built_wasm, repo_root, wasm_variant};
use serde_json::Value;

const API_KEY: &str = "test-api-key-0123456789";

/// The test CA and the certificates it signs (and the odd ones), made once per test process.
struct Certificates {
    dir: PathBuf,
    /// Serial numbers (upper-case hex) by file stem.
    serials: Value,
}

impl Certificates {
    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

fn certificates() -> &'static Certificates {
    static CERTIFICATES: OnceLock<Certificates> = OnceLock::new();
    CERTIFICATES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("edgeinfer-tls-test-{}", std::process::id()));
        let serials = common::run_client_script("make_certs.py", &[dir.as_os_str()]);
        // The host serves copies, which the rotation test replaces.
        for file in ["server.pem", "server.key"] {
            std::fs::copy(dir.join(file), dir.join(format!("live-{file}"))).unwrap();
        }
        Certificates { dir, serials }
    })
}

/// The default app with KServe (REST and gRPC) on, every listener on TLS, an API key.
fn default_app_host() -> &'static Host {
    static HOST: OnceLock<(Host, Variant)> = OnceLock::new();
    &HOST
        .get_or_init(|| {
            let certs = certificates();
            let config = Variant::kserve_config();
            let host = Host::start_with_env(
                &repo_root().join("spin.toml"),
                &[
                    "--runtime-config-file",
                    config.0.to_str().unwrap(),
                    "--tls-cert",
                    &certs.path("server.pem"),
                    "--tls-key",
                    &certs.path("server.key"),
                    "--grpc-listen",
                    "127.0.0.1:0",
                    "--api-key",
                    API_KEY,
                ],
                &[("EDGEINFER_TEST_KSERVE_TOKEN", KSERVE_TOKEN)],
            );
            (host, config)
        })
        .0
}

/// The small faults app, public and admin listeners on TLS (the files the rotation test
/// replaces), the admin API behind mTLS with the test CA.
fn admin_host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let certs = certificates();
        Host::start_with_env(
            &repo_root().join("tests/apps/faults/spin.toml"),
            &[
                "--runtime-config-file",
                repo_root().join("tests/apps/faults/runtime.toml").to_str().unwrap(),
                "--tls-cert",
                &certs.path("live-server.pem"),
                "--tls-key",
                &certs.path("live-server.key"),
                "--admin-listen",
                "127.0.0.1:0",
                "--admin-client-ca",
                &certs.path("ca.pem"),
            ],
            &[("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN)],
        )
    })
}

/// `curl ARGS -w '\n%{http_code} %{http_version}'` trusting the test CA: (exit code, body,
/// status, HTTP version). Status 0 when no HTTP answer came.
fn curl(args: &[&str]) -> (i32, String, u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert", &certificates().path("ca.pem")])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("curl (Debian's curl) runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (status, version) = last.split_once(' ').unwrap_or(("0", ""));
    let code = output.status.code().unwrap_or(-1);
    if code != 0 {
        eprintln!("curl {}: exit {code}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    (code, body.to_string(), status.parse().unwrap_or(0), version.to_string())
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

#[test]
fn https_and_http2_by_alpn_with_one_api_key_for_every_inference_route() {
    let host = default_app_host();
    assert!(host.base.starts_with("https://127.0.0.1:"), "{}", host.base);
    let embed = host.url("/embed");
    let body = r#"{"inputs": "hello over TLS"}"#;
    let json = ["-H", "content-type: application/json", "-d", body];
    // HTTP/2 when curl offers it, HTTP/1.1 when it does not; the same vectors either way.
    let (code, h2_body, status, version) =
        curl(&[&["--http2", "-H", &bearer(API_KEY)][..], &json, &[&embed]].concat());
    assert_eq!((code, status, version.as_str()), (0, 200, "2"), "{h2_body}");
    let (_, h1_body, status, version) =
        curl(&[&["--http1.1", "-H", &bearer(API_KEY)][..], &json, &[&embed]].concat());
    assert_eq!((status, version.as_str()), (200, "1.1"), "{h1_body}");
    assert_eq!(h2_body, h1_body);
    let vectors: Value = serde_json::from_str(&h2_body).unwrap();
    assert_eq!(vectors[0].as_array().unwrap().len(), 384);
    // One rule: no key (or a malformed header) 401, another key 403; every inference route.
    for route in ["/embed", "/predict", "/v1/embeddings", "/rerank", "/no/such/route"] {
        let url = host.url(route);
        let (_, answer, status, _) = curl(&[&json[..], &[&url]].concat());
        assert_eq!(status, 401, "{route} without the key: {answer}");
        assert_eq!(serde_json::from_str::<Value>(&answer).unwrap()["error_type"], "Unauthorized");
        let (_, answer, status, _) =
            curl(&[&["-H", &bearer("not-the-api-key-0000")][..], &json, &[&url]].concat());
        assert_eq!(status, 403, "{route} with another key: {answer}");
        let (_, _, status, _) = curl(&[&["-H", "Authorization: Token abc"][..], &json, &[&url]].concat());
        assert_eq!(status, 401, "{route} with a malformed header");
    }
    // Probes and scrapers need no key; KServe takes the key or its own token.
    for open in ["/health", "/ready", "/metrics"] {
        assert_eq!(curl(&[&host.url(open)]).2, 200, "{open}");
    }
    let model = host.url("/v2/models/minilm");
    assert_eq!(curl(&["-H", &bearer(API_KEY), &model]).2, 200);
    assert_eq!(curl(&["-H", &bearer(KSERVE_TOKEN), &model]).2, 200);
    assert_eq!(curl(&[&model]).2, 401);
    assert_eq!(curl(&["-H", &bearer("not-the-api-key-0000"), &model]).2, 403);
    // Plain HTTP to the TLS port gets no answer.
    let plain = host.url("/health").replacen("https://", "http://", 1);
    assert_eq!(curl(&[&plain]).2, 0, "plain HTTP on the TLS listener");
}

#[test]
fn the_openai_client_and_tritonclient_grpc_speak_tls_with_the_key() {
    let host = default_app_host();
    let grpc = host.grpc_address();
    assert!(host.log().iter().any(|l| l.contains("over TLS")), "gRPC on TLS");
    let ca = certificates().path("ca.pem");
    let report = common::run_client_script(
        "tls_clients.py",
        &[host.base.as_ref(), grpc.as_ref(), ca.as_ref(), API_KEY.as_ref()],
    );
    assert_eq!(report["openai_dimensions"], 384, "{report}");
    assert!(report["openai_vs_embed_cosine"].as_f64().unwrap() > 0.99999, "{report}");
    assert_eq!(report["openai_wrong_key_status"], 403, "{report}");
    assert_eq!(report["untrusted_ca"], "refused", "{report}");
    assert_eq!(report["grpc_output_shape"], serde_json::json!([1, 4, 384]), "{report}");
    assert_eq!(report["grpc_no_key"], "StatusCode.UNAUTHENTICATED", "{report}");
    assert_eq!(report["grpc_wrong_key"], "StatusCode.PERMISSION_DENIED", "{report}");
}

/// What sslscan (Debian's; scripts/test installs it) finds on `address`: enabled protocols and
/// accepted suites.
fn sslscan(address: &str) -> (Vec<String>, Vec<(String, String, u32)>) {
    let output = Command::new("sslscan")
        .args(["--xml=-", "--no-colour", "--no-heartbleed", "--no-compression", "--no-fallback", address])
        .output()
        .expect("sslscan is not installed (scripts/test installs Debian's sslscan)");
    let xml = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(xml.contains("<ssltest"), "sslscan said: {xml}{}", String::from_utf8_lossy(&output.stderr));
    let attribute = |element: &str, name: &str| -> Option<String> {
        let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(element[start..].split('"').next()?.to_string())
    };
    let elements: Vec<&str> = xml.split('<').collect();
    let protocols = elements
        .iter()
        .filter(|e| e.starts_with("protocol ") && attribute(e, "enabled").as_deref() == Some("1"))
        .map(|e| format!("{} {}", attribute(e, "type").unwrap(), attribute(e, "version").unwrap()))
        .collect();
    let suites = elements
        .iter()
        .filter(|e| e.starts_with("cipher ") && attribute(e, "status").is_some_and(|s| s != "rejected"))
        .map(|e| {
            let bits = attribute(e, "bits").and_then(|b| b.parse().ok()).unwrap_or(0);
            (attribute(e, "sslversion").unwrap_or_default(), attribute(e, "cipher").unwrap_or_default(), bits)
        })
        .collect();
    (protocols, suites)
}

#[test]
fn sslscan_finds_only_tls_1_2_and_1_3_with_strong_suites() {
    let public = default_app_host().base.trim_start_matches("https://").to_string();
    let admin = admin_host().admin.clone().unwrap().trim_start_matches("https://").to_string();
    for address in [public, admin] {
        let (mut protocols, suites) = sslscan(&address);
        protocols.sort();
        assert_eq!(protocols, ["tls 1.2", "tls 1.3"], "{address}: {suites:?}");
        assert!(!suites.is_empty(), "{address}: no suite found");
        for (version, suite, bits) in &suites {
            let weak = ["NULL", "EXP", "RC4", "3DES", "DES-CBC", "MD5", "CBC", "anon"];
            assert!(!weak.iter().any(|w| suite.contains(w)), "{address}: weak suite {version} {suite}");
            assert!(*bits >= 128, "{address}: {version} {suite} has {bits} bits");
            assert!(version == "TLSv1.2" || version == "TLSv1.3", "{address}: {version} {suite}");
        }
        eprintln!("{address}: {protocols:?}, {} suites: {suites:?}", suites.len());
    }
}

#[test]
fn the_admin_api_refuses_clients_without_the_right_certificate_in_the_handshake() {
    let host = admin_host();
    let admin = host.admin.clone().unwrap();
    assert!(admin.starts_with("https://"), "{admin}");
    let app = format!("{admin}/admin/v1/app");
    let certs = certificates();
    let with = |stem: &str| {
        vec![
            "--cert".to_string(),
            certs.path(&format!("{stem}.pem")),
            "--key".into(),
            certs.path(&format!("{stem}.key")),
        ]
    };
    // No certificate, one from another CA, an expired one: no HTTP answer at all.
    let admin_bearer = bearer(ADMIN_TOKEN);
    for refused in [vec![], with("other-client"), with("expired-client")] {
        let args: Vec<&str> =
            refused.iter().map(String::as_str).chain(["-H", admin_bearer.as_str(), &app]).collect();
        let (code, body, status, _) = curl(&args);
        assert_ne!(code, 0, "{refused:?}: {body}");
        assert_eq!(status, 0, "{refused:?}: answered {status} {body}");
    }
    // The right certificate: then the token, by the same rule as everywhere.
    let client = with("client");
    let client: Vec<&str> = client.iter().map(String::as_str).collect();
    let (_, body, status, _) = curl(&[&client[..], &[&app]].concat());
    assert_eq!(status, 401, "{body}");
    let (_, body, status, _) =
        curl(&[&client[..], &["-H", &bearer("not-the-admin-token-00"), &app]].concat());
    assert_eq!(status, 403, "{body}");
    let (_, body, status, _) = curl(&[&client[..], &["-H", &bearer(ADMIN_TOKEN), &app]].concat());
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["app"], "faults");
}

/// Runs `edgeinfer deploy ARGS` with the admin token in the environment: (success, output).
fn deploy(args: &[&str]) -> (bool, String) {
    let args: Vec<&str> = ["deploy"].iter().chain(args).copied().collect();
    let (ok, stdout, stderr) = common::edgeinfer(&args, &[("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN)]);
    (ok, stdout + &stderr)
}

#[test]
fn deploy_speaks_https_with_a_client_certificate_and_every_action_is_audited() {
    let host = admin_host();
    let admin = host.admin.clone().unwrap();
    let certs = certificates();
    let wasm = wasm_variant(&built_wasm("faulty"), "tls-deploy");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&wasm));
    let file = certs.dir.join("steady-tls.wasm");
    std::fs::write(&file, &wasm).unwrap();
    let (manifest, file) = ("tests/apps/faults/spin.toml", file.display().to_string());
    let (ca, cert, key) = (certs.path("ca.pem"), certs.path("client.pem"), certs.path("client.key"));
    // Without the client certificate, the handshake fails and deploy says so.
    let (ok, said) =
        deploy(&["push", "-f", manifest, "--to", &admin, "--ca-file", &ca, "--wasm", &file, "steady"]);
    assert!(!ok, "{said}");
    assert!(said.contains("FAILED: cannot reach the host"), "{said}");
    // Without the CA, the host's certificate is not trusted.
    let (ok, said) = deploy(&[
        "push",
        "-f",
        manifest,
        "--to",
        &admin,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "--wasm",
        &file,
        "steady",
    ]);
    assert!(!ok && said.to_lowercase().contains("certificate"), "{said}");
    let (ok, said) = deploy(&[
        "push",
        "-f",
        manifest,
        "--to",
        &admin,
        "--ca-file",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "--wasm",
        &file,
        "steady",
    ]);
    assert!(ok, "{said}");
    assert!(said.contains(&format!("serving {}", &digest[..12])), "{said}");
    let served = curl(&["-o", "/dev/null", "-D", "-", &host.url("/steady/ok")]).1;
    assert!(served.contains(&format!("x-edgeinfer-version: {}", &digest[..12])), "{served}");
    // The audit: who (the certificate's subject), what, which digest, the outcome; and counts.
    let deadline = Instant::now() + Duration::from_secs(5);
    let audited = loop {
        let line = host.log().into_iter().find(|l| l.contains("audit") && l.contains(&digest));
        if line.is_some() || Instant::now() > deadline {
            break line;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let audited = without_colours(&audited.expect("an audit line for the push"));
    for part in
        ["who=\"O=edgeinfer-tests, CN=deployer\"", "action=\"push\"", "on=\"steady\"", "outcome=\"ok\""]
    {
        assert!(audited.contains(part), "{part} in {audited}");
    }
    let metrics = curl(&[&host.url("/metrics")]).1;
    assert!(
        metrics.lines().any(|l| l.starts_with("edgeinfer_admin_actions_total{")
            && l.contains("action=\"push\"")
            && l.contains("outcome=\"ok\"")),
        "{metrics}"
    );
}

/// A log line without its terminal colour codes.
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

#[test]
fn deploy_refuses_plain_http_to_another_machine_unless_told() {
    // `.invalid` never resolves: nothing is sent anywhere, whatever happens.
    let (ok, said) = deploy(&["push", "--to", "http://edge-7.invalid:3001", "embed"]);
    assert!(!ok, "{said}");
    assert!(said.contains("refusing plain http:// to http://edge-7.invalid:3001"), "{said}");
    assert!(said.contains("--insecure"), "{said}");
    // With --insecure it tries (and fails to resolve the name).
    let (ok, said) = deploy(&["push", "--insecure", "--to", "http://edge-7.invalid:3001", "embed"]);
    assert!(!ok && said.contains("cannot reach the host"), "{said}");
}

#[test]
fn tls_files_that_cannot_serve_stop_the_start_naming_the_file() {
    let certs = certificates();
    let missing = certs.dir.join("no-such-cert.pem").display().to_string();
    let (ok, _, said) = common::edgeinfer(
        &["up", "--listen", "127.0.0.1:0", "--tls-cert", &missing, "--tls-key", &certs.path("server.key")],
        &[],
    );
    assert!(!ok);
    assert!(said.contains(&format!("cannot read the TLS certificate {missing}")), "{said}");
    // A key that belongs to another certificate.
    let (ok, _, said) = common::edgeinfer(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &certs.path("server.pem"),
            "--tls-key",
            &certs.path("client.key"),
        ],
        &[],
    );
    assert!(!ok);
    assert!(said.contains("cannot serve the certificate"), "{said}");
    let (ok, _, said) = common::edgeinfer(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-client-ca",
            &certs.path("ca.pem"),
        ],
        &[("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert!(!ok);
    assert!(said.contains("--admin-client-ca needs TLS on the admin listener"), "{said}");
}

/// The serial number of the certificate a new connection to `address` is shown.
fn served_serial(address: &str) -> String {
    let script = format!(
        "openssl s_client -connect {address} -servername localhost < /dev/null 2>/dev/null | openssl x509 -noout -serial"
    );
    let output = Command::new("bash").args(["-c", &script]).output().unwrap();
    let serial = String::from_utf8_lossy(&output.stdout).trim().trim_start_matches("serial=").to_string();
    // openssl pads to whole bytes, Python's hex does not.
    serial.trim_start_matches('0').to_string()
}

#[test]
fn certificates_rotate_under_load_without_a_failed_request() {
    let host = admin_host();
    let certs = certificates();
    let address = host.base.trim_start_matches("https://").to_string();
    let serial = |stem: &str| certs.serials[stem].as_str().unwrap().trim_start_matches('0').to_string();
    assert_eq!(served_serial(&address), serial("server"));
    let url = host.url("/steady/ok");
    let stop_at = Instant::now() + Duration::from_secs(14);
    // 6 clients; each curl sends 10 requests on one kept-alive connection, then a new one.
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let (mut answered, mut failed) = (0, Vec::new());
                while Instant::now() < stop_at {
                    let output = Command::new("curl")
                        .args(["-sS", "--max-time", "20", "--cacert", &certificates().path("ca.pem")])
                        .args(["-w", "%{http_code}\n"])
                        .args((0..10).flat_map(|_| ["-o", "/dev/null", url.as_str()]))
                        .output()
                        .unwrap();
                    let codes = String::from_utf8_lossy(&output.stdout).into_owned();
                    for code in codes.lines() {
                        if code == "200" { answered += 1 } else { failed.push(code.to_string()) }
                    }
                    if !output.status.success() {
                        failed.push(String::from_utf8_lossy(&output.stderr).into_owned());
                    }
                }
                (answered, failed)
            })
        })
        .collect();
    // Mid-load: the key first, then (after more than a reload check) the certificate, as a
    // careless rotation would; the host keeps the old pair until the new one loads together.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::copy(certs.dir.join("server-rotated.key"), certs.dir.join("live-server.key")).unwrap();
    let mismatched = Instant::now() + Duration::from_secs(6);
    while !host.log().iter().any(|l| l.contains("TLS files changed but cannot serve")) {
        assert!(Instant::now() < mismatched, "the half-rotated pair was not noticed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(served_serial(&address), serial("server"), "the old pair serves on");
    std::fs::copy(certs.dir.join("server-rotated.pem"), certs.dir.join("live-server.pem")).unwrap();
    let rotated = serial("server-rotated");
    let deadline = Instant::now() + Duration::from_secs(6);
    while served_serial(&address) != rotated {
        assert!(Instant::now() < deadline, "the rotated certificate is not served");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut answered, mut failed) = (0, Vec::new());
    for client in clients {
        let (a, f) = client.join().unwrap();
        answered += a;
        failed.extend(f);
    }
    assert!(failed.is_empty(), "{} failed of {}: {failed:?}", failed.len(), answered + failed.len());
    assert!(answered > 60, "only {answered} requests answered");
    assert!(host.log().iter().any(|l| l.contains("TLS certificate files changed")), "the reload is logged");
    eprintln!("{answered} requests answered across the rotation, 0 failed");
}
