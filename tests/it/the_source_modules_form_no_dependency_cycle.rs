//! Property: the top-level modules of `src/` depend on each other without a cycle, and the leaf
//! modules (destination names, URLs, the wire format, selectors, metrics, transport) depend on
//! nothing else of meshmq. A reader can then go bottom-up, and each module's "must not touch"
//! holds. Edges are the `crate::MODULE` paths a module's non-test code names (in `use` lines and
//! inline paths alike); test code (`#[cfg(test)]` and onwards, `*tests.rs`, the HA simulation)
//! is left out, as tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Modules that must import nothing of ours.
const LEAVES: &[&str] = &[
    "destination",
    "url",
    "wire",
    "selector",
    "metrics",
    "transport",
];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The first segment of every `crate::` path in `code`, including each item of a
/// `crate::{a::X, b}` group.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> Option<String> {
        let s = s.trim_start();
        let end = s
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(s.len());
        (end > 0).then(|| s[..end].to_string())
    };
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group's top level on commas.
            let (mut depth, mut start) = (0usize, 0usize);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.extend(ident(&group[start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(ident(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.extend(ident(rest));
        }
    }
    out
}

/// Module → the other modules its non-test code names.
fn graph(src: &Path) -> Graph {
    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut g = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with("tests.rs") || rel.starts_with("ha/sim") {
            continue;
        }
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "main" || module == "lib" {
            continue;
        }
        let text = fs::read_to_string(&file).expect("read source");
        let code = match text.find("#[cfg(test)]") {
            Some(at) => &text[..at],
            None => &text,
        };
        let deps = g.entry(module.clone()).or_default();
        deps.extend(crate_paths(code).into_iter().filter(|d| *d != module));
    }
    g
}

/// One cycle of `g`, as the modules along it, if there is any.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, d, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(g, m, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_of_src_form_no_cycle_and_the_leaves_import_nothing_of_ours() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    for leaf in LEAVES {
        assert!(g.contains_key(*leaf), "no module named {leaf} under src/");
    }
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "the modules of src/ depend on each other in a cycle: {}\nthe whole graph: {g:#?}",
            cycle.join(" -> ")
        );
    }
    for leaf in LEAVES {
        let deps = &g[*leaf];
        assert!(
            deps.is_empty(),
            "{leaf} is a leaf module but imports {deps:?} of meshmq"
        );
    }
}

#[test]
fn the_checker_sees_grouped_and_inline_paths_and_reports_a_cycle() {
    let code = "use crate::{broker::{Broker, Draft}, config};\nfn f() { crate::store::open(); }";
    let found: Vec<String> = crate_paths(code).into_iter().collect();
    assert_eq!(found, ["broker", "config", "store"]);

    let mut g = Graph::new();
    g.entry("store".into()).or_default().insert("broker".into());
    g.entry("broker".into())
        .or_default()
        .insert("config".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("config".into()).or_default().insert("store".into());
    let cycle = find_cycle(&g).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
}
