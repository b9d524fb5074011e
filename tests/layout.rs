//! The folder tree shows the flow: a `/proc` floor and OTLP values at the bottom, observe ->
//! diagnose -> report above them, receive and run as orchestrations, cli on top. This test
//! reads the sources and holds that shape: no top-level module imports one that imports it
//! back (directly or around a loop), the two floors import nothing of the crate, and no source
//! file grows past the size a reader can hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
}

/// Top-level module -> the top-level modules its files name as `crate::x`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in files {
        let rel = path.strip_prefix(&format!("{}/", src.display())).unwrap();
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
        if top == "lib" || top == "main" {
            continue;
        }
        let deps = g.entry(top.to_string()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                deps.insert(name);
            }
        }
    }
    g
}

#[test]
fn top_level_modules_form_no_loop() {
    let g = graph();
    // Depth-first search for a back edge, reporting the loop.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = stack.iter().position(|s| s == n) {
            panic!("import loop: {} -> {n}", stack[at..].join(" -> "));
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            visit(d, g, stack, done);
        }
        stack.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        visit(n, &g, &mut Vec::new(), &mut done);
    }
    for floor in ["proc", "otlp", "error"] {
        assert_eq!(
            g.get(floor).cloned().unwrap_or_default(),
            BTreeSet::new(),
            "{floor} must import nothing else of the crate"
        );
    }
    // The flow: observe, diagnose and report never reach up into the orchestrations.
    for lower in ["observe", "diagnose", "report", "ledger", "snapshot"] {
        for upper in ["receive", "run", "cli"] {
            assert!(
                !g[lower].contains(upper),
                "{lower} imports {upper}: {:?}",
                g[lower]
            );
        }
    }
}

#[test]
fn no_source_file_is_longer_than_a_reader_can_hold() {
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let long: Vec<String> = files
        .iter()
        .filter(|(_, t)| t.lines().count() > 560)
        .map(|(p, t)| format!("{p}: {} lines", t.lines().count()))
        .collect();
    assert!(long.is_empty(), "split these: {long:?}");
}
