//! No import cycle between the agent's modules: every file of `src/` is a node, every path
//! it names through `crate::`, `super::` or `self::` (in `use` statements and inline) an edge
//! to the file that defines that module, and the test fails on any strongly connected group
//! of two or more files, naming them. Test code (`tests.rs`, `tests/` folders, inline
//! `#[cfg(test)] mod tests { .. }`) is left out: it may reach anywhere.
//!
//! A parent's relative references to its own children (`mod a; use a::X;`) are not edges:
//! a folder's `mod.rs` contains its children, and the children's `super::` edges point back
//! at it; the layering question is only between modules that do not contain each other.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// A module path from the crate root (`["discovery", "kubernetes"]`).
type Module = Vec<String>;

/// The agent's module graph: each file's module, and the modules its paths lead to.
fn agent_graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    let modules: BTreeMap<Module, PathBuf> = files
        .iter()
        .filter_map(|f| module_of(&src, f).map(|m| (m, f.clone())))
        .collect();
    assert!(
        modules.len() > 50,
        "the agent's files were not found under {}",
        src.display()
    );
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let deps = graph.entry(module.clone()).or_default();
        for path in paths(&text) {
            let Some(target) = resolve(module, &path, &modules) else {
                continue;
            };
            if target != *module {
                deps.insert(target);
            }
        }
    }
    graph
}

#[test]
fn no_import_cycle_between_modules() {
    let graph = agent_graph();
    let cycles: Vec<String> = strongly_connected(&graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            c.iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(" <-> ")
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles between modules:\n{}",
        cycles.join("\n")
    );
}

/// The kernel adapter is a leaf: `ebpf/` imports only itself and the OS helpers (and
/// `apm-common`, aya, std, which are not modules of the agent).
#[test]
fn the_kernel_adapter_is_a_leaf() {
    let graph = agent_graph();
    let mut outside = Vec::new();
    for (module, deps) in &graph {
        if module.first().map(String::as_str) != Some("ebpf") {
            continue;
        }
        for d in deps {
            if !matches!(d.first().map(String::as_str), Some("ebpf" | "os")) {
                outside.push(format!("{} -> {}", module.join("::"), d.join("::")));
            }
        }
    }
    assert!(graph.contains_key(&module("ebpf::decode")));
    assert!(outside.is_empty(), "ebpf/ imports from above: {outside:?}");
}

/// The checker finds a cycle where there is one, through `use` trees and inline paths.
#[test]
fn the_checker_sees_cycles() {
    let mut modules = BTreeMap::new();
    for m in ["a", "b", "c", "c::d"] {
        modules.insert(module(m), PathBuf::new());
    }
    let a = "use crate::{b::{self, X}, std_like};\nfn f() {}\n#[cfg(test)]\nmod tests {\n use crate::c::d::Y;\n}";
    let b = "// use crate::a::Z; (a comment)\npub fn g() { crate::c::d::h() }";
    let d = "use super::super::a::F as G;";
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, text) in [("a", a), ("b", b), ("c::d", d)] {
        let deps = graph.entry(module(m)).or_default();
        for p in paths(text) {
            if let Some(t) = resolve(&module(m), &p, &modules) {
                deps.insert(t);
            }
        }
    }
    assert_eq!(graph[&module("a")], BTreeSet::from([module("b")]));
    assert_eq!(graph[&module("b")], BTreeSet::from([module("c::d")]));
    assert_eq!(graph[&module("c::d")], BTreeSet::from([module("a")]));
    let groups = strongly_connected(&graph);
    assert!(groups.iter().any(|g| g.len() == 3), "{groups:?}");
    graph.insert(module("c::d"), BTreeSet::new());
    assert!(strongly_connected(&graph).iter().all(|g| g.len() == 1));
}

fn module(s: &str) -> Module {
    s.split("::").map(str::to_owned).collect()
}

/// Every `.rs` file under `dir`, test files left out.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "tests" {
                collect(&path, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" {
            out.push(path);
        }
    }
}

/// The module a file defines; None for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<Module> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    match last.as_str() {
        "mod.rs" => {}
        "lib.rs" | "main.rs" if parts.is_empty() => return None,
        other => parts.push(other.trim_end_matches(".rs").to_owned()),
    }
    Some(parts)
}

/// The paths a file names through `crate`, `super` or `self`, test modules and comments left
/// out.
fn paths(text: &str) -> Vec<String> {
    let code = without_tests(&without_comments(text));
    let mut out = Vec::new();
    let mut rest = String::new();
    let mut i = 0;
    while let Some(at) = find_word(&code[i..], "use") {
        let start = i + at;
        rest.push_str(&code[i..start]);
        let Some(end) = code[start..].find(';') else {
            break;
        };
        expand("", &code[start + 3..start + end], &mut out);
        i = start + end + 1;
    }
    rest.push_str(&code[i..]);
    // Inline paths: `crate::a::b`, `super::super::c`.
    for root in ["crate", "super", "self"] {
        let mut j = 0;
        while let Some(at) = find_word(&rest[j..], root) {
            let start = j + at;
            let path: String = rest[start..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if path.len() > root.len() + 2 && path[root.len()..].starts_with("::") {
                out.push(path.trim_end_matches(':').to_owned());
            }
            j = start + path.len().max(1);
        }
    }
    out.retain(|p| ["crate", "super", "self"].iter().any(|r| p.starts_with(r)));
    out
}

/// Where `word` starts in `s` as a whole word.
fn find_word(s: &str, word: &str) -> Option<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(at) = s[from..].find(word) {
        let i = from + at;
        let before = s[..i].chars().next_back().is_some_and(ident);
        let after = s[i + word.len()..].chars().next().is_some_and(ident);
        if !before && !after {
            return Some(i);
        }
        from = i + word.len();
    }
    None
}

/// Expands a use tree (`a::{b, c::{d, e as f}}`) into paths.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let join = |head: &str| match (prefix.is_empty(), head.is_empty()) {
        (true, _) => head.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}::{head}"),
    };
    match (tree.find('{'), tree.rfind('}')) {
        (Some(open), Some(close)) if open < close => {
            let head = join(tree[..open].trim().trim_end_matches("::"));
            let inner = &tree[open + 1..close];
            let mut depth = 0;
            let mut start = 0;
            for (k, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&head, &inner[start..k], out);
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            expand(&head, &inner[start..], out);
        }
        _ => {
            let path = tree.split(" as ").next().unwrap_or("").trim();
            if !path.is_empty() {
                out.push(join(path.trim_end_matches("::*")));
            }
        }
    }
}

/// The file (module) a path leads to: the longest known module prefix of it.
/// A `mod.rs` is its folder's module, so `super` is one level up from any file's module.
fn resolve(from: &Module, path: &str, modules: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    let mut segments = path.split("::").map(str::trim).filter(|s| !s.is_empty());
    let mut base: Module = match segments.next()? {
        "crate" => Vec::new(),
        "self" => from.clone(),
        "super" => {
            let mut m = from.clone();
            m.pop();
            m
        }
        _ => return None,
    };
    let mut rest: Vec<&str> = Vec::new();
    for s in segments {
        match s {
            "super" if rest.is_empty() => {
                base.pop();
            }
            "self" => {}
            s => rest.push(s),
        }
    }
    let mut best = None;
    let mut m = base.clone();
    if modules.contains_key(&m) {
        best = Some(m.clone());
    }
    for s in rest {
        m.push(s.to_owned());
        if modules.contains_key(&m) {
            best = Some(m.clone());
        }
    }
    best
}

fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Cuts inline test modules (`#[cfg(test)] mod x { .. }`, at the end of a file by custom).
fn without_tests(text: &str) -> String {
    let mut from = 0;
    while let Some(at) = text[from..].find("#[cfg(test)]") {
        let i = from + at;
        let after = text[i + "#[cfg(test)]".len()..].trim_start();
        if after.starts_with("mod ")
            && after
                .find('{')
                .is_some_and(|b| after.find(';').is_none_or(|s| b < s))
        {
            return text[..i].to_owned();
        }
        from = i + 1;
    }
    text.to_owned()
}

/// Tarjan's strongly connected components.
fn strongly_connected(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        next: usize,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                group.push(w.clone());
                if w == v {
                    break;
                }
            }
            group.sort();
            s.out.push(group);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}
