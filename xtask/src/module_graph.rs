//! The profiler crate's top-level modules must not import each other in a cycle, each may only
//! import modules of a lower layer ([`LAYERS`]), and only `main.rs` and `commands` may import
//! `cli` (see profiler/src/lib.rs for the layout and why).
//!
//! Every .rs file under profiler/src is parsed with `syn`, and every path in it (use trees,
//! expressions, types, patterns, and `crate::`/`super::` paths inside macro invocations, which
//! syn leaves as tokens) is resolved to the top-level module it names: `crate::X`, a `super::`
//! chain walked up from the file's (and inline `mod` blocks') module path, `self::` at the crate
//! root, `profiler::X` in main.rs, and bare `X::` in lib.rs. That gives a graph of top-level
//! modules, whose strongly connected components (Tarjan) are its cycles.
//!
//! A regular expression over the text would misread `use crate::{a, b::c}` groups, `super`
//! chains and comments; a real parser is the difference between a check people trust and one
//! they learn to ignore.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use proc_macro2::{TokenStream, TokenTree};
use syn::{spanned::Spanned as _, visit::Visit};

/// Modules besides `main` that may import `cli`.
const CLI_IMPORTERS: [&str; 1] = ["commands"];
/// The layers of profiler/src/lib.rs, top first: a module may import only modules of a lower
/// layer, so dependencies point one way (`main → cli, commands → engine, output → model`,
/// `engine → bpf, python, offcpu, native, host`), not merely without cycles.
const LAYERS: [&[&str]; 7] = [
    &["main"],
    &["commands"],
    &["cli"],
    &["engine", "output"],
    &["bpf", "python", "offcpu", "native"],
    &["host", "model"],
    &["error"],
];

/// The layer of a top-level module (None for one not listed: a new module must be placed).
fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}
/// The binary's node in the graph.
const MAIN: &str = "main";
/// The library crate's name, as main.rs names it.
const CRATE_NAME: &str = "profiler";

/// Where one top-level module uses another: `from` → `to` at `file:line`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub at: String,
}

/// Checks the crate whose sources are in `src` (its lib.rs declares the top-level modules).
pub fn check(src: &Path) -> anyhow::Result<()> {
    let edges = edges(src)?;
    let mut problems = String::new();
    for cycle in cycles(&edges) {
        let _ = writeln!(problems, "module cycle: {}", cycle.join(" → "));
        for pair in cycle.windows(2) {
            let at: Vec<&str> =
                edges.iter().filter(|e| e.from == pair[0] && e.to == pair[1]).map(|e| e.at.as_str()).collect();
            let more = if at.len() > 3 { format!(" (and {} more)", at.len() - 3) } else { String::new() };
            let _ = writeln!(problems, "  {} → {}: {}{more}", pair[0], pair[1], at[..at.len().min(3)].join(", "));
        }
    }
    for e in edges.iter().filter(|e| e.to == "cli" && e.from != MAIN && !CLI_IMPORTERS.contains(&e.from.as_str())) {
        let _ = writeln!(
            problems,
            "{} imports crate::cli at {}: only main.rs and commands/ may (cli holds the clap types; \
             pass what the rest needs as plain values)",
            e.from, e.at
        );
    }
    for e in &edges {
        match (layer(&e.from), layer(&e.to)) {
            (Some(from), Some(to)) if to > from => {}
            (Some(_), Some(_)) => {
                let _ = writeln!(
                    problems,
                    "{} imports {} at {}: a module may only import modules below it (LAYERS in xtask/src/module_graph.rs)",
                    e.from, e.to, e.at
                );
            }
            _ => {
                let _ = writeln!(
                    problems,
                    "{} → {} at {}: a top-level module not placed in LAYERS (xtask/src/module_graph.rs)",
                    e.from, e.to, e.at
                );
            }
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.trim_end());
    }
    let modules: BTreeSet<&str> = edges.iter().flat_map(|e| [e.from.as_str(), e.to.as_str()]).collect();
    let pairs: BTreeSet<(&str, &str)> = edges.iter().map(|e| (e.from.as_str(), e.to.as_str())).collect();
    eprintln!("xtask: module graph: {} modules, {} dependencies, no cycles", modules.len(), pairs.len());
    Ok(())
}

/// Every use of one top-level module by another in the crate at `src`, sorted.
pub fn edges(src: &Path) -> anyhow::Result<Vec<Edge>> {
    let lib = parse(&src.join("lib.rs"))?;
    let top: BTreeSet<String> = lib
        .items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Mod(m) => Some(m.ident.to_string()),
            _ => None,
        })
        .collect();
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    let mut edges = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let module = module_path(relative);
        let node = match module.first() {
            Some(first) => first.clone(),
            None if relative == Path::new("main.rs") => MAIN.to_owned(),
            // lib.rs only declares the modules; other crate roots (src/bin) are not ours.
            None => continue,
        };
        let ast = parse(&file)?;
        let mut visitor = Visitor {
            top: &top,
            node: &node,
            module,
            is_main: node == MAIN,
            file: relative.display().to_string(),
            found: Vec::new(),
        };
        visitor.visit_file(&ast);
        edges.extend(visitor.found);
    }
    edges.sort();
    edges.dedup();
    Ok(edges)
}

fn parse(file: &Path) -> anyhow::Result<syn::File> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    syn::parse_file(&text).with_context(|| format!("parse {}", file.display()))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The module a file is, from its path under src: `a/b.rs` and `a/b/mod.rs` are `a::b`;
/// lib.rs and main.rs are crate roots (empty).
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.strip_suffix(".rs").unwrap_or(&last);
    if !(parts.is_empty() && (stem == "lib" || stem == "main")) && stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

struct Visitor<'a> {
    top: &'a BTreeSet<String>,
    /// The top-level module this file belongs to, or `main`.
    node: &'a str,
    /// The module being visited: the file's, plus inline `mod` blocks.
    module: Vec<String>,
    is_main: bool,
    file: String,
    found: Vec<Edge>,
}

impl Visitor<'_> {
    /// Notes the top-level module that `segments` (a path as written) names, if another one.
    fn note(&mut self, segments: &[String], line: usize) {
        let Some(to) = self.resolve(segments) else { return };
        if to != self.node {
            self.found.push(Edge { from: self.node.to_owned(), to, at: format!("{}:{line}", self.file) });
        }
    }

    fn resolve(&self, segments: &[String]) -> Option<String> {
        let (first, rest) = segments.split_first()?;
        // The segment after which the crate root's items are named, and the module it is in.
        let (module, rest): (&[String], &[String]) = match first.as_str() {
            "crate" if self.is_main => return None, // the binary's own root has no modules
            "crate" => (&[], rest),
            CRATE_NAME if self.is_main => (&[], rest),
            "self" => (&self.module, rest),
            "super" => {
                let ups = 1 + rest.iter().take_while(|s| *s == "super").count();
                let module = &self.module[..self.module.len().checked_sub(ups)?];
                (module, &rest[ups - 1..])
            }
            // A bare path names a top-level module only at the crate root (lib.rs, main.rs
            // through `profiler::`); elsewhere it is a local item or another crate.
            _ if self.module.is_empty() && !self.is_main => (&[], segments),
            _ => return None,
        };
        let name = match module.first() {
            Some(top) => top,
            None => rest.first()?,
        };
        self.top.contains(name).then(|| name.clone())
    }

    /// Paths of the form `crate::a::b`, `super::x`, `profiler::x` among a macro's tokens.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            if let TokenTree::Group(group) = &tokens[i] {
                self.scan_tokens(group.stream());
                i += 1;
                continue;
            }
            let TokenTree::Ident(ident) = &tokens[i] else {
                i += 1;
                continue;
            };
            let starts = ["crate", "super", "self", CRATE_NAME];
            // Not the tail of a longer path (`a::crate` cannot happen; `x::super` neither).
            let after_path_sep = i >= 1 && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == ':');
            if !starts.contains(&ident.to_string().as_str()) || after_path_sep {
                i += 1;
                continue;
            }
            let line = ident.span().start().line;
            let mut segments = vec![ident.to_string()];
            let mut j = i + 1;
            while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)), Some(TokenTree::Ident(next))) =
                (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
            {
                if a.as_char() != ':' || b.as_char() != ':' {
                    break;
                }
                segments.push(next.to_string());
                j += 3;
            }
            if segments.len() > 1 {
                self.note(&segments, line);
            }
            i = j;
        }
    }
}

/// Every path a use tree brings in, as segments (`self` in a group stands for its prefix).
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) if n.ident == "self" => out.push(prefix.clone()),
        syn::UseTree::Name(n) => out.push([prefix.as_slice(), &[n.ident.to_string()]].concat()),
        syn::UseTree::Rename(r) => out.push([prefix.as_slice(), &[r.ident.to_string()]].concat()),
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for item in &g.items {
                use_paths(item, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Visitor<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let line = item.use_token.span().start().line;
        let mut paths = Vec::new();
        use_paths(&item.tree, &mut Vec::new(), &mut paths);
        // `use crate::{a, b}` at the root of a group: each branch is its own path.
        for path in paths {
            self.note(&path, line);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.note(&segments, path.span().start().line);
        syn::visit::visit_path(self, path);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        // `mod x;` is a file of its own, visited as such; `mod x { ... }` nests here.
        if item.content.is_some() {
            self.module.push(item.ident.to_string());
            syn::visit::visit_item_mod(self, item);
            self.module.pop();
        }
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        self.scan_tokens(mac.tokens.clone());
    }

    // `pub(in crate::x)` restricts visibility; it imports nothing.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}
}

/// The cycles of the graph: one per strongly connected component of more than one module,
/// as a closed walk through it (first module repeated at the end).
pub fn cycles(edges: &[Edge]) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        graph.entry(&e.from).or_default().insert(&e.to);
        graph.entry(&e.to).or_default();
    }
    let mut out = Vec::new();
    for component in tarjan(&graph).into_iter().filter(|c| c.len() > 1) {
        let start = *component.iter().min().expect("not empty");
        out.push(walk_back(&graph, &component, start));
    }
    out
}

/// A shortest path from `start` back to itself inside `component` (breadth first).
fn walk_back(graph: &BTreeMap<&str, BTreeSet<&str>>, component: &BTreeSet<&str>, start: &str) -> Vec<String> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &next in &graph[node] {
            if !component.contains(next) {
                continue;
            }
            if next == start {
                let mut path = vec![start.to_owned(), node.to_owned()];
                let mut at = node;
                while at != start {
                    at = came_from[at];
                    path.push(at.to_owned());
                }
                path.reverse();
                return path;
            }
            if !came_from.contains_key(next) {
                came_from.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    unreachable!("a strongly connected component has a cycle through each of its nodes")
}

/// Tarjan's strongly connected components.
fn tarjan<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<BTreeSet<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<BTreeSet<&'a str>>,
    }
    fn connect<'a>(node: &'a str, graph: &BTreeMap<&'a str, BTreeSet<&'a str>>, s: &mut State<'a>) {
        let index = s.index.len();
        s.index.insert(node, index);
        s.low.insert(node, index);
        s.stack.push(node);
        s.on_stack.insert(node);
        for &next in &graph[node] {
            if !s.index.contains_key(next) {
                connect(next, graph, s);
                let low = s.low[node].min(s.low[next]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(next) {
                let low = s.low[node].min(s.index[next]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = BTreeSet::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.insert(top);
                if top == node {
                    break;
                }
            }
            s.components.push(component);
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for &node in graph.keys() {
        if !s.index.contains_key(node) {
            connect(node, graph, &mut s);
        }
    }
    s.components
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate in a temporary directory: (path under src, text).
    fn crate_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn pairs(edges: &[Edge]) -> Vec<(String, String)> {
        let set: BTreeSet<(String, String)> = edges.iter().map(|e| (e.from.clone(), e.to.clone())).collect();
        set.into_iter().collect()
    }

    const LIB: &str = "pub mod a; pub mod b; pub mod c; pub mod cli; pub mod commands;";

    #[test]
    fn paths_resolve_to_the_top_level_module_they_name() {
        let dir = crate_with(&[
            ("lib.rs", LIB),
            // A group, a nested path, and a super chain up to the root from a/x/y.rs.
            ("a/mod.rs", "pub mod x; use crate::{b::Thing, c};"),
            ("a/x/mod.rs", "pub mod y;"),
            ("a/x/y.rs", "fn f() { super::super::super::commands::run(); super::helper(); }"),
            // Paths in expressions and types, and in a macro's tokens; a bare path is local.
            ("b.rs", "fn f(_: crate::c::T) { log::info!(\"{}\", crate::commands::x()); cli::local(); }"),
            ("c.rs", "mod inner { use super::super::a; } pub(in crate::b) fn g() {}"),
            ("commands/mod.rs", "use crate::cli::Cli;"),
            ("main.rs", "use profiler::{cli::Cli, commands};"),
        ]);
        let edges = edges(dir.path()).unwrap();
        let expected = [
            ("a", "b"),
            ("a", "c"),
            ("a", "commands"),
            ("b", "c"),
            ("b", "commands"),
            ("c", "a"),
            ("commands", "cli"),
            ("main", "cli"),
            ("main", "commands"),
        ];
        let expected: Vec<(String, String)> = expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(pairs(&edges), expected);
        let at: Vec<&str> =
            edges.iter().filter(|e| e.from == "a" && e.to == "commands").map(|e| e.at.as_str()).collect();
        assert_eq!(at, ["a/x/y.rs:1"]);
    }

    #[test]
    fn cycles_are_named_and_cli_imports_checked() {
        let dir = crate_with(&[
            ("lib.rs", LIB),
            ("a.rs", "use crate::b::X;"),
            ("b.rs", "use crate::c::Y;"),
            ("c.rs", "fn f() { crate::a::z(); }\nuse crate::cli::Cli;"),
            ("cli.rs", ""),
            ("commands.rs", "use crate::{a, cli};"),
        ]);
        let edges = edges(dir.path()).unwrap();
        assert_eq!(cycles(&edges), [["a", "b", "c", "a"]]);
        let message = check(dir.path()).unwrap_err().to_string();
        assert!(message.contains("module cycle: a → b → c → a"), "{message}");
        assert!(message.contains("c → a: c.rs:1"), "{message}");
        assert!(message.contains("c imports crate::cli at c.rs:2"), "{message}");
        assert!(!message.contains("commands imports"), "{message}");
    }

    #[test]
    fn a_layered_crate_passes_and_an_upward_import_does_not() {
        let lib = "pub mod bpf; pub mod cli; pub mod commands; pub mod engine; pub mod host; pub mod model;";
        let dir = crate_with(&[
            ("lib.rs", lib),
            ("engine.rs", "use crate::bpf::X; use super::model;"),
            ("bpf.rs", "use crate::host::Y;"),
            ("host.rs", "#[cfg(test)] mod tests { use super::*; use crate::host::Z; }"),
            ("model.rs", ""),
            ("cli.rs", "use crate::model::Mode;"),
            ("commands.rs", "use crate::cli::Cli; use crate::engine::Session;"),
        ]);
        assert!(cycles(&edges(dir.path()).unwrap()).is_empty());
        check(dir.path()).unwrap();
        // No cycle, but the model reaching up into the engine breaks the layering.
        std::fs::write(dir.path().join("model.rs"), "use crate::engine::Session;").unwrap();
        let message = check(dir.path()).unwrap_err().to_string();
        assert!(message.contains("model imports engine at model.rs:1"), "{message}");
    }

    #[test]
    fn module_paths_of_files() {
        assert_eq!(module_path(Path::new("lib.rs")), Vec::<String>::new());
        assert_eq!(module_path(Path::new("main.rs")), Vec::<String>::new());
        assert_eq!(module_path(Path::new("a.rs")), ["a"]);
        assert_eq!(module_path(Path::new("a/mod.rs")), ["a"]);
        assert_eq!(module_path(Path::new("a/b.rs")), ["a", "b"]);
        assert_eq!(module_path(Path::new("a/b/mod.rs")), ["a", "b"]);
        assert_eq!(module_path(Path::new("a/main.rs")), ["a", "main"]);
    }
}
