//! The source tree's shape: no two files of a crate use each other's names (an import circle),
//! directly or around a loop. Cargo already refuses circles between crates; this checks the files
//! inside each host crate and component. A file "uses" another when it names it (`crate::x`,
//! `super::x`, `use crate::{x, ...}`, or, in the crate root, `x::`); re-exports (`pub use`) and
//! module declarations are structure, not use, and unit tests are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Circles allowed to stay for now, each sorted, with why it has not been cut yet. A new circle
/// fails the test, and so does one listed here that is gone (then strike it). None today.
const KNOWN: &[(&str, &[&str])] = &[];

/// The crates to check: every host crate and component with a `src`.
fn crates(root: &Path) -> Vec<PathBuf> {
    let mut crates = vec![root.join("host")];
    for parent in ["host", "components", "tests/components"] {
        for entry in std::fs::read_dir(root.join(parent)).unwrap() {
            let dir = entry.unwrap().path();
            if dir.join("Cargo.toml").is_file() && dir.join("src").is_dir() {
                crates.push(dir);
            }
        }
    }
    crates.sort();
    crates
}

/// Module path (`crate`, `a`, `a::b`) of each `.rs` file under `src`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut name = relative.to_string_lossy().replace('/', "::");
            if name == "lib" || name == "main" {
                name = "crate".into();
            } else if let Some(parent) = name.strip_suffix("::mod") {
                name = parent.to_string();
            }
            found.insert(name, path);
        }
    }
    found
}

/// The code of a file that counts: no unit tests, comments, re-exports or module declarations.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap();
    let mut kept = String::new();
    let mut statement = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        // Whole statements: a `pub use` may span lines.
        statement.push_str(line);
        statement.push('\n');
        if !statement.trim_start().starts_with("pub") && !statement.trim_start().starts_with("mod ") {
            kept.push_str(&statement);
            statement.clear();
            continue;
        }
        let head = statement.trim_start().trim_start_matches("pub(crate) ").trim_start_matches("pub ");
        let structure = head.starts_with("use ") || head.starts_with("mod ");
        if !structure {
            kept.push_str(&statement);
            statement.clear();
        } else if head.starts_with("mod ") && statement.trim_end().ends_with('{') {
            // An inline module (`mod x { ... }`): its body is code.
            kept.push_str(&statement);
            statement.clear();
        } else if statement.trim_end().ends_with(';') {
            // A re-export or module declaration, whole (a `pub use a::{` group may span lines).
            statement.clear();
        }
    }
    kept
}

/// Identifiers that directly follow `prefix` in `text`.
fn after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        names.push(&rest[..end]);
    }
    names
}

/// Which modules each module uses.
fn uses(modules: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for (name, path) in modules {
        let text = code(path);
        let mut used = BTreeSet::new();
        let mut named = |target: &str, fallback: &str| {
            let target = if modules.contains_key(target) { target } else { fallback };
            if target != name {
                used.insert(target.to_string());
            }
        };
        for target in after(&text, "crate::") {
            named(target, "crate");
        }
        let parent = name.rsplit_once("::").map_or("crate", |(parent, _)| parent);
        for target in after(&text, "super::") {
            named(target, parent);
        }
        for group in text.split("use crate::{").skip(1) {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let first = item.trim().split("::").next().unwrap_or("");
                if first.starts_with(|c: char| c.is_ascii_uppercase()) {
                    named("crate", "crate");
                } else if !first.is_empty() {
                    named(first, "crate");
                }
            }
        }
        if name == "crate" {
            for target in modules.keys().filter(|m| *m != "crate" && !m.contains("::")) {
                if !after(&text, &format!("{target}::")).is_empty() {
                    used.insert(target.clone());
                }
            }
        }
        edges.insert(name.clone(), used);
    }
    edges
}

/// The circles of `edges`: strongly connected sets of more than one module, each sorted.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Modules that reach each other are in one circle.
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(at) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> = edges.keys().map(|m| (m, reach(m))).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for (module, reaches) in &reached {
        let circle: Vec<String> = reaches
            .iter()
            .filter(|other| reached.get(other).is_some_and(|r| r.contains(*module)))
            .cloned()
            .collect();
        if circle.len() > 1 {
            found.insert(circle);
        }
    }
    found.into_iter().collect()
}

#[test]
fn no_file_uses_a_file_that_uses_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut found = Vec::new();
    for dir in crates(root) {
        let src = dir.join("src");
        let crate_name = dir.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        for circle in circles(&uses(&modules(&src))) {
            found.push((crate_name.clone(), circle));
        }
    }
    let known: Vec<(String, Vec<String>)> = KNOWN
        .iter()
        .map(|(krate, circle)| (krate.to_string(), circle.iter().map(|m| m.to_string()).collect()))
        .collect();
    let new: Vec<_> = found.iter().filter(|c| !known.contains(c)).collect();
    let gone: Vec<_> = known.iter().filter(|c| !found.contains(c)).collect();
    assert!(new.is_empty(), "import circles (files that use each other, around a loop): {new:?}");
    assert!(gone.is_empty(), "these known circles are gone: strike them from KNOWN: {gone:?}");
}

#[test]
fn the_check_sees_a_circle() {
    // Two files naming each other, and a root that only declares and re-exports them.
    let dir = std::env::temp_dir().join(format!("edgeinfer-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("lib.rs"), "mod a;\nmod b;\npub use a::{\n    A,\n};\npub use b::B;\n").unwrap();
    std::fs::write(dir.join("a.rs"), "use crate::b::B;\npub struct A(B);\n").unwrap();
    std::fs::write(dir.join("b.rs"), "pub struct B;\nfn f() -> super::a::A { todo!() }\n").unwrap();
    let edges = uses(&modules(&dir));
    assert!(edges["crate"].is_empty(), "re-exports, one spanning lines, are not uses: {edges:?}");
    assert_eq!(circles(&edges), vec![vec!["a".to_string(), "b".to_string()]]);
    // Cut one way, no circle.
    std::fs::write(dir.join("b.rs"), "pub struct B;\n").unwrap();
    assert!(circles(&uses(&modules(&dir))).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
