//! Mutation fuzzing of the two config parsers: 20,000 mangled spin.toml and runtime-config texts
//! must each come back as `Ok` or a clear `Err`, never a panic.

use crate::manifest::Manifest;
use crate::runtime_config::RuntimeConfig;

/// Deterministic xorshift.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Byte flips, truncations, deleted, duplicated and swapped lines, spliced TOML fragments.
fn mutate(seed: &str, rng: &mut Rng) -> String {
    const FRAGMENTS: &[&str] = &[
        "[",
        "]]",
        "=",
        "\"",
        "'''",
        "[component.x]",
        "[[trigger.http]]",
        "route = 5",
        "source = []",
        "ai_models = \"x\"",
        "device = \"cuda:-1\"",
        "path = { a = 1 }",
        "\u{0}",
        "é",
        "= =",
        "#",
        "[model.m.batching]",
        "max_batch_size = -1",
        "files = [{}]",
        "dependencies = 3",
    ];
    let mut lines: Vec<String> = seed.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(lines.len());
        match rng.below(6) {
            0 if !lines.is_empty() => {
                lines.remove(at);
            }
            1 if !lines.is_empty() => {
                let line = lines[at].clone();
                lines.insert(at, line);
            }
            2 if lines.len() > 1 => {
                let other = rng.below(lines.len());
                lines.swap(at, other);
            }
            3 => lines.insert(at, FRAGMENTS[rng.below(FRAGMENTS.len())].to_string()),
            4 if !lines.is_empty() && !lines[at].is_empty() => {
                let line = &mut lines[at];
                let cut = rng.below(line.len());
                let cut = (0..=cut).rev().find(|&i| line.is_char_boundary(i)).unwrap_or(0);
                line.truncate(cut);
            }
            _ if !lines.is_empty() => {
                let mut bytes = lines[at].clone().into_bytes();
                if !bytes.is_empty() {
                    let i = rng.below(bytes.len());
                    const BYTES: &[u8] = b" =[]{}\",.#-_0aZ";
                    bytes[i] = BYTES[rng.below(BYTES.len())];
                }
                lines[at] = String::from_utf8_lossy(&bytes).into_owned();
            }
            _ => {}
        }
    }
    lines.join("\n")
}

#[test]
fn mangled_manifests_and_runtime_configs_never_panic() {
    let manifest = include_str!("../../../spin.toml");
    let runtime = include_str!("../../../runtime-config/local.toml");
    let faults = include_str!("../../../tests/apps/faults/runtime.toml");
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    let (mut ok, mut err) = (0, 0);
    for i in 0..20_000 {
        let result = match i % 3 {
            0 => Manifest::parse(&mutate(manifest, &mut rng), ".".into()).map(drop),
            1 => RuntimeConfig::parse(&mutate(runtime, &mut rng)).map(drop),
            _ => RuntimeConfig::parse(&mutate(faults, &mut rng)).map(drop),
        };
        match result {
            Ok(()) => ok += 1,
            Err(e) => {
                assert!(!format!("{e:#}").is_empty());
                err += 1;
            }
        }
    }
    eprintln!("20,000 mangled configs: {ok} parsed, {err} rejected with an error, none panicked");
    // Both outcomes occur: the mutations are neither all harmless nor all fatal.
    assert!(ok > 100 && err > 100, "ok {ok}, err {err}");
}
