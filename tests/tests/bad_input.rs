//! Bad-input campaign: a generated corpus of malformed requests against the default app. Every
//! answer must be a 4xx with a JSON `{error, error_type}` body and the same type in its
//! `x-error-type` header (or, for a mutation that happens to be a valid request, a 200), never a
//! 5xx; the host must be alive at the end.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::{Host, client, repo_root};
use serde_json::{Value, json};

/// Deterministic xorshift: the same corpus on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One malformed request.
struct Case {
    category: &'static str,
    method: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// Mutations may produce a valid request by accident: 200 is then fine.
    may_succeed: bool,
}

fn case(category: &'static str, body: impl Into<Vec<u8>>) -> Case {
    Case {
        category,
        method: "POST",
        content_type: Some("application/json"),
        body: body.into(),
        may_succeed: false,
    }
}

fn corpus() -> Vec<Case> {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let valid = br#"{"inputs": ["a valid sentence", "another one"], "normalize": true, "truncate": false}"#;
    let mut cases = Vec::new();
    for _ in 0..2000 {
        // Broken JSON: truncated at a random point.
        let cut = rng.below(valid.len() - 1);
        cases.push(case("truncated json", &valid[..cut]));
    }
    for _ in 0..2000 {
        // Random byte flips.
        let mut body = valid.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(body.len());
            body[at] = rng.next() as u8;
        }
        cases.push(Case { may_succeed: true, ..case("byte flips", body) });
    }
    let wrong_values = [
        json!(1),
        json!(1.5),
        json!(true),
        json!(null),
        json!({"text": "x"}),
        json!([1, 2]),
        json!([["nested"]]),
        json!([null]),
        json!(["ok", 5]),
    ];
    for i in 0..1000 {
        // Wrong types for each field.
        let value = wrong_values[i % wrong_values.len()].clone();
        let body = match i % 3 {
            0 => json!({"inputs": value}),
            1 => json!({"inputs": "x", "normalize": if value.is_boolean() { json!("yes") } else { value }}),
            _ => json!({"inputs": "x", "truncate": if value.is_boolean() { json!(0) } else { value }}),
        };
        cases.push(case("wrong types", body.to_string()));
    }
    for _ in 0..1000 {
        // Deep nesting, up to well past any parser's recursion limit.
        let depth = 1 + rng.below(5000);
        let body = format!("{{\"inputs\": {}\"x\"{}}}", "[".repeat(depth), "]".repeat(depth));
        cases.push(case("deep nesting", body));
    }
    for _ in 0..1000 {
        // Invalid UTF-8 inside the string: bytes that never occur in UTF-8.
        let mut body = br#"{"inputs": "text "#.to_vec();
        for _ in 0..1 + rng.below(3) {
            body.push([0xff, 0xfe, 0xc0, 0xc1, 0xf8][rng.below(5)]);
        }
        body.extend_from_slice(br#" more"}"#);
        cases.push(case("invalid utf-8", body));
    }
    for _ in 0..1000 {
        // Control characters other than tab, newline and carriage return.
        let mut c = rng.below(0x20) as u32;
        if matches!(c, 0x09 | 0x0a | 0x0d) {
            c = 0x7f;
        }
        cases.push(case(
            "control characters",
            json!({"inputs": format!("before {} after", char::from_u32(c).unwrap())}).to_string(),
        ));
    }
    let blanks = ["", " ", "   ", "\n", "\t\t", " \r\n "];
    for i in 0..1000 {
        // Empty and whitespace-only text, alone or in a list.
        let blank = blanks[i % blanks.len()];
        let inputs = if i % 2 == 0 { json!(blank) } else { json!(["fine", blank]) };
        cases.push(case("empty text", json!({"inputs": inputs}).to_string()));
    }
    for i in 0..20 {
        // Megabyte strings: over the body limit.
        cases.push(case("megabyte strings", json!({"inputs": "w".repeat((1 << 20) + i * 1000)}).to_string()));
    }
    for _ in 0..100 {
        // 10,000-element arrays.
        let items: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
        cases.push(case("huge arrays", json!({"inputs": items}).to_string()));
    }
    for i in 0..1400 {
        // Wrong methods and content types.
        let mut c = case("method or content type", &valid[..]);
        match i % 7 {
            0 => c.method = "GET",
            1 => c.method = "PUT",
            2 => c.method = "DELETE",
            3 => c.method = "PATCH",
            4 => c.content_type = Some("text/plain"),
            5 => c.content_type = Some("multipart/form-data; boundary=x"),
            _ => c.content_type = None,
        }
        cases.push(c);
    }
    cases
}

#[test]
fn ten_thousand_malformed_requests_no_crash_no_5xx_every_4xx_json() {
    let cases = corpus();
    assert!(cases.len() >= 10_000, "{} cases", cases.len());
    let host = Host::start(&repo_root().join("spin.toml"), &[]);
    let url = host.url("/embed");
    let failures = Mutex::new(Vec::new());
    let tally = Mutex::new(BTreeMap::<(&str, u16), usize>::new());
    std::thread::scope(|scope| {
        for chunk in cases.chunks(cases.len().div_ceil(4)) {
            let (url, failures, tally) = (&url, &failures, &tally);
            scope.spawn(move || {
                let client = client();
                for c in chunk {
                    let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
                    let mut request = client.request(method, url.as_str()).body(c.body.clone());
                    if let Some(content_type) = c.content_type {
                        request = request.header("content-type", content_type);
                    }
                    let response =
                        request.send().unwrap_or_else(|e| panic!("{}: no answer: {e}", c.category));
                    let status = response.status().as_u16();
                    let header = response.headers().get("x-error-type").cloned();
                    let body = response.bytes().unwrap();
                    *tally.lock().unwrap().entry((c.category, status)).or_default() += 1;
                    // The type is in the body and in `x-error-type`, which the host counts by.
                    let json_error = serde_json::from_slice::<Value>(&body).is_ok_and(|b| {
                        b["error"].is_string()
                            && b["error_type"]
                                .as_str()
                                .is_some_and(|t| header.as_ref().is_some_and(|h| h == t))
                    });
                    let ok = match status {
                        200 => c.may_succeed,
                        400..=499 => json_error,
                        _ => false,
                    };
                    if !ok {
                        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                        failures.lock().unwrap().push(format!("{}: {status} {shown}", c.category));
                    }
                }
            });
        }
    });
    let tally = tally.into_inner().unwrap();
    eprintln!("bad-input campaign, {} requests: {tally:?}", cases.len());
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} bad answers, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let health = client().get(host.url("/health")).send().expect("the host is alive");
    assert_eq!(health.status().as_u16(), 200);
}
