//! The crate's import graph, read from the sources: no file may reach itself through
//! imports (issue #22), and `config/` may import only what is listed in
//! `CONFIG_MAY_IMPORT`. Nodes are files (`config/runtime`, `policy/route`); an edge is a
//! `crate::…` or `super::…` path outside comments and `#[cfg(test)]` modules, resolved to
//! the file that defines the item (through a folder's `pub use child::…` re-exports). A
//! folder's `mod.rs` naming its own children is its table of contents, not an import.
//! The surge tool (`src/surge/`, in the library since #26: `ecluse-surge` and `ecluse demo --surge` use it) is checked too.
//!
//! It also bounds each file's production code (`file_sizes_stay_under_the_bound`): a file
//! past the bound holds several concepts and becomes a folder (issue #22).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// What `config/` may import besides itself: the clock, the pure decisions, and (until
/// the settings and the live state are split, issue #22) what `config/runtime/` still
/// builds while it validates. The list may shrink, never grow.
const CONFIG_MAY_IMPORT: &[&str] = &[
    "clock",
    "policy/",
    "metrics",
    "instance",
    "tls",
    "pages",
    "pages/render",
    "pages/time",
    "cache/space",
    "upstream",
    "waiting_room",
];

/// Known circles left inside one folder (the page renderer checks the queue page's
/// samples at load; the queue page is rendered by the renderer). None between folders.
const KNOWN_CIRCLES: &[&[&str]] = &[&["pages/queue", "pages/render"]];

struct Tree {
    /// Module path (`config/runtime`, `cache` for `cache/mod.rs`) → file.
    files: BTreeMap<String, PathBuf>,
    /// (module, item name) → the child module a `pub use child::…` re-exports it from.
    reexports: HashMap<(String, String), String>,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") || parts == ["main"] || parts == ["lib"] {
        return None;
    }
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    Some(parts.join("/"))
}

/// The source without comments and without `#[cfg(test)] mod … { … }` blocks.
fn code_of(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for line in text.lines() {
        let l = match line.find("//") {
            // `//` inside a string (a URL) keeps the line: only the path matters here.
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        s.push_str(l);
        s.push('\n');
    }
    let marker = "#[cfg(test)]";
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest.find(marker) {
        out.push_str(&rest[..i]);
        let after = rest[i + marker.len()..].trim_start();
        if !after.starts_with("mod ") {
            out.push_str(marker);
            rest = &rest[i + marker.len()..];
            continue;
        }
        let Some(open) = after.find('{') else {
            rest = after;
            continue;
        };
        let mut depth = 0usize;
        let mut end = after.len();
        for (j, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn idents(s: &str) -> Vec<&str> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

fn load() -> (Tree, BTreeMap<String, String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    walk(&src, &mut all);
    let mut tree = Tree {
        files: BTreeMap::new(),
        reexports: HashMap::new(),
    };
    let mut code = BTreeMap::new();
    for f in all {
        let Some(m) = module_of(&src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("read source");
        code.insert(m.clone(), code_of(&text));
        tree.files.insert(m, f);
    }
    for (m, f) in &tree.files {
        if !f.ends_with("mod.rs") {
            continue;
        }
        for stmt in code[m].split(';') {
            let t = stmt.trim();
            let Some(rest) = t
                .strip_prefix("pub use ")
                .or_else(|| t.strip_prefix("pub(crate) use "))
            else {
                continue;
            };
            let Some((child, names)) = rest.split_once("::") else {
                continue;
            };
            let child = format!("{m}/{}", child.trim());
            if tree.files.contains_key(&child) {
                for n in idents(names) {
                    tree.reexports
                        .insert((m.clone(), n.to_string()), child.clone());
                }
            }
        }
    }
    (tree, code)
}

/// The file a path (`["config", "runtime", "Route"]`) lands in, if it names one of ours.
fn resolve(tree: &Tree, segs: &[&str]) -> Option<String> {
    for k in (1..=segs.len()).rev() {
        let m = segs[..k].join("/");
        if tree.files.contains_key(&m) {
            if let Some(next) = segs.get(k) {
                if let Some(c) = tree.reexports.get(&(m.clone(), (*next).to_string())) {
                    return Some(c.clone());
                }
            }
            return Some(m);
        }
    }
    None
}

/// Every path after `prefix` in `code`, expanded through one level of `{a, b::c}`.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find(prefix) {
        let at = from + i;
        from = at + prefix.len();
        // `$crate::` in macros and `xcrate::` are not ours.
        if code[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
        {
            continue;
        }
        let tail = &code[from..];
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let head: Vec<&str> = tail[..end].split("::").filter(|s| !s.is_empty()).collect();
        if tail[end..].starts_with('{') {
            let close = tail[end..].find('}').map_or(tail.len(), |j| end + j);
            for item in tail[end + 1..close].split(',') {
                let mut p = head.clone();
                p.extend(
                    item.trim()
                        .split("::")
                        .map(str::trim)
                        .filter(|s| !s.is_empty()),
                );
                out.push(p);
            }
        } else {
            out.push(head);
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let (tree, code) = load();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, c) in &code {
        let is_mod = tree.files[m].ends_with("mod.rs");
        let parent: Vec<&str> = {
            let mut p: Vec<&str> = m.split('/').collect();
            if !is_mod {
                p.pop();
            }
            p
        };
        let mut targets = Vec::new();
        for p in paths_after(c, "crate::") {
            targets.extend(resolve(&tree, &p));
        }
        for p in paths_after(c, "super::") {
            let mut base: Vec<&str> = if is_mod {
                let mut b: Vec<&str> = m.split('/').collect();
                b.pop();
                b
            } else {
                parent.clone()
            };
            let mut p = p.as_slice();
            while p.first() == Some(&"super") {
                base.pop();
                p = &p[1..];
            }
            let mut full = base.clone();
            full.extend_from_slice(p);
            targets.extend(resolve(&tree, &full));
        }
        for t in targets {
            // A folder's mod.rs naming its own children is its table of contents.
            let own_child = is_mod && t.starts_with(&format!("{m}/"));
            if t != *m && !own_child {
                edges.entry(m.clone()).or_default().insert(t);
            }
        }
    }
    edges
}

/// Strongly connected components with more than one file (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct St<'a> {
        e: &'a BTreeMap<String, BTreeSet<String>>,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut St<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        if let Some(ws) = s.e.get(v) {
            for w in ws {
                if !s.index.contains_key(w.as_str()) {
                    visit(s, w);
                    let lw = s.low[w.as_str()];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(lw));
                } else if s.on.contains(w.as_str()) {
                    let iw = s.index[w.as_str()];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(iw));
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = St {
        e: edges,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_import_circles() {
    let edges = graph();
    assert!(
        edges
            .get("config/runtime/routes")
            .is_some_and(|t| t.contains("policy/route")),
        "the import reader found nothing: {edges:?}"
    );
    let found: Vec<Vec<String>> = circles(&edges)
        .into_iter()
        .filter(|c| {
            !KNOWN_CIRCLES
                .iter()
                .any(|k| k.iter().copied().eq(c.iter().map(String::as_str)))
        })
        .collect();
    let show: Vec<String> = found
        .iter()
        .map(|c| {
            let links: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    edges[a]
                        .iter()
                        .filter(|b| c.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            links.join(", ")
        })
        .collect();
    assert!(found.is_empty(), "import circles: {show:#?}");
}

#[test]
fn config_imports_nothing_above_it() {
    let edges = graph();
    let allowed = |t: &str| {
        t.starts_with("config")
            || CONFIG_MAY_IMPORT
                .iter()
                .any(|a| t == *a || (a.ends_with('/') && t.starts_with(a)))
    };
    let bad: Vec<String> = edges
        .iter()
        .filter(|(m, _)| m.as_str() == "config" || m.starts_with("config/"))
        .flat_map(|(m, ts)| {
            ts.iter()
                .filter(|t| !allowed(t))
                .map(move |t| format!("{m} -> {t}"))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "config imports the layers above it: {bad:#?}"
    );
}

/// The most lines a file under `src/` may hold outside its `#[cfg(test)] mod … { … }`
/// blocks (comment lines count: a file is read whole).
const MAX_PRODUCTION_LINES: usize = 900;

/// Files still above [`MAX_PRODUCTION_LINES`], each with the most it may hold. The list
/// only shrinks: a listed file may not grow, and one split below the bound must leave it.
const LONG_FILES: &[(&str, usize)] = &[
    // Being split in this session (issue #22): remove at merge.
    // Still to split.
    ("cluster/fleet_room.rs", 1057),
    ("policy/waiting_room.rs", 905),
];

#[test]
fn file_sizes_stay_under_the_bound() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    walk(&src, &mut all);
    let mut sizes = BTreeMap::new();
    for f in &all {
        let text = std::fs::read_to_string(f).expect("read source");
        let rel = f.strip_prefix(&src).expect("under src").to_string_lossy();
        sizes.insert(rel.replace('\\', "/"), code_of(&text).lines().count());
    }
    assert!(
        sizes.len() > 50 && sizes.values().any(|&n| n > MAX_PRODUCTION_LINES),
        "the size reader found nothing: {sizes:?}"
    );
    let mut bad = Vec::new();
    for (file, &n) in &sizes {
        match LONG_FILES.iter().find(|(f, _)| f == file) {
            None if n > MAX_PRODUCTION_LINES => bad.push(format!(
                "{file}: {n} lines of production code (bound {MAX_PRODUCTION_LINES}): split it by concept into a folder"
            )),
            Some((_, cap)) if n > *cap => bad.push(format!(
                "{file}: grew from {cap} to {n} lines, above the bound {MAX_PRODUCTION_LINES}: put the new code in a file of its own, or split it"
            )),
            Some(_) if n <= MAX_PRODUCTION_LINES => bad.push(format!(
                "{file}: {n} lines, now under the bound: remove it from LONG_FILES"
            )),
            _ => {}
        }
    }
    for (file, _) in LONG_FILES {
        if !sizes.contains_key(*file) {
            bad.push(format!("{file} is gone: remove it from LONG_FILES"));
        }
    }
    assert!(bad.is_empty(), "files over the size bound: {bad:#?}");
}
