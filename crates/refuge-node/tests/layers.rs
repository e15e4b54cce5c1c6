//! The node's floors, checked (see the table in `src/lib.rs`): every
//! module imports only from its own floor or the floors below, the gRPC
//! services never import each other, no two modules import each other in
//! a loop, and only `work::self_drill` and `work::replicate` use the client
//! library.
//!
//! It reads the sources: every `crate::`, `super::` and `self::` path
//! outside `#[cfg(test)]` modules names the module it reaches (the longest
//! prefix that is a module). `cargo test -p refuge-node --test layers --
//! --nocapture` prints the module graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floors, bottom first.
const FLOORS: [&str; 8] = [
    "config", "floor", "catalog", "policy", "work", "services", "console", "server",
];

/// Every source file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src is readable") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `floor/clock.rs` -> `["floor", "clock"]`, `server/mod.rs` -> `["server"]`,
/// `lib.rs` -> `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module paths named in `code` by a file of module `me`.
fn references(me: &[String], code: &str) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == ':');
        let rest: String = bytes[i..bytes.len().min(i + 8)].iter().collect();
        let head = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|h| rest.starts_with(h));
        let (Some(head), true) = (head, starts_word) else {
            i += 1;
            continue;
        };
        // Where the path starts, then its segments.
        let mut base: Vec<String> = match head {
            "crate::" => Vec::new(),
            _ => me.to_vec(),
        };
        let mut j = i;
        let mut segs: Vec<String> = Vec::new();
        loop {
            let start = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            let seg: String = bytes[start..j].iter().collect();
            match seg.as_str() {
                "crate" | "self" if segs.is_empty() => {}
                "super" if segs.is_empty() => {
                    base.pop();
                }
                "" => break,
                _ => segs.push(seg),
            }
            if bytes.get(j) == Some(&':') && bytes.get(j + 1) == Some(&':') {
                j += 2;
            } else {
                break;
            }
        }
        let mut path = base.clone();
        path.extend(segs);
        if bytes.get(j) == Some(&'{') {
            // `crate::a::{b, c::D}`: each entry's first segment.
            let end = (j..bytes.len()).find(|&k| bytes[k] == '}').unwrap_or(j);
            let inner: String = bytes[j + 1..end].iter().collect();
            for item in inner.split(',') {
                let first = item.trim().split("::").next().unwrap_or("").trim();
                if !first.is_empty() && first != "self" {
                    let mut p = path.clone();
                    p.push(first.to_string());
                    out.push(p);
                }
            }
        }
        out.push(path);
        i = j.max(i + 1);
    }
    out
}

struct Graph {
    /// Module -> modules it imports from (other than itself).
    edges: BTreeMap<String, BTreeSet<String>>,
    /// Files that mention `refuge_client`.
    client_users: Vec<String>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let modules: BTreeSet<Vec<String>> = all.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut client_users = Vec::new();
    for f in &all {
        let me = module_of(&src, f);
        let text = std::fs::read_to_string(f).expect("source is readable");
        let code = code(&text);
        if code.contains("refuge_client") {
            client_users.push(me.join("::"));
        }
        let entry = edges.entry(me.join("::")).or_default();
        for mut r in references(&me, &code) {
            while !r.is_empty() && !modules.contains(&r) {
                r.pop();
            }
            // Reaching one's own module or the crate root's re-exports is
            // not an import between modules.
            if !r.is_empty() && r != me {
                entry.insert(r.join("::"));
            }
        }
    }
    Graph {
        edges,
        client_users,
    }
}

fn floor_of(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or("");
    if top.is_empty() {
        return FLOORS.len(); // the crate root, above everything
    }
    FLOORS
        .iter()
        .position(|f| *f == top)
        .unwrap_or_else(|| panic!("module {module} is on no floor: add it to FLOORS and lib.rs"))
}

#[test]
fn modules_import_only_downward_and_services_not_each_other() {
    let g = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &g.edges {
        println!(
            "{from:<24} -> {}",
            tos.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        for to in tos {
            let (a, b) = (floor_of(from), floor_of(to));
            let top = |m: &str| m.split("::").take(2).collect::<Vec<_>>().join("::");
            if b > a {
                wrong.push(format!("{from} (floor {a}) imports {to} (floor {b})"));
            } else if from.starts_with("services::")
                && to.starts_with("services::")
                && top(from) != top(to)
            {
                wrong.push(format!("service {from} imports service {to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the floors:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_modules_import_each_other_in_a_loop() {
    let g = graph();
    // Depth-first search for a back edge.
    fn visit<'a>(
        m: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(m, 1);
        stack.push(m);
        for n in g.get(m).into_iter().flatten() {
            match state.get(n.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| *s == n).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[at..].iter().map(|s| s.to_string()).collect();
                    cycle.push(n.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(n, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m, 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.edges.keys() {
        if !state.contains_key(m.as_str())
            && let Some(c) = visit(m, &g.edges, &mut state, &mut Vec::new())
        {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn only_the_self_drill_and_replication_use_the_client_library() {
    // The node's own drills restore as an operator would; replication is
    // a client of the peer node (its mutual-TLS channel and error
    // wording). Nothing else in the node may need the client library.
    let g = graph();
    let mut users = g.client_users.clone();
    users.sort();
    assert_eq!(
        users,
        vec![
            "work::replicate".to_string(),
            "work::self_drill".to_string()
        ]
    );
}

#[test]
fn the_reference_reader_sees_every_form_of_path() {
    let me: Vec<String> = ["catalog", "drills"].map(String::from).to_vec();
    let code = "use super::clip;\nuse crate::floor::store::{StoredStream, store_status};\n\
                use crate::{policy, work::drills};\nlet x = super::super::config::X;\n\
                self::inner::f(); not_crate::x; a::crate::y;";
    let refs: BTreeSet<String> = references(&me, code).iter().map(|r| r.join("::")).collect();
    for want in [
        "catalog::clip",
        "floor::store::StoredStream",
        "policy",
        "work",
        "config::X",
        "catalog::drills::inner::f",
    ] {
        assert!(refs.contains(want), "{want} not in {refs:?}");
    }
    assert!(
        !refs.iter().any(|r| r.contains("not_crate") || r == "y"),
        "{refs:?}"
    );
}
