//! The source tree's shape (ARCHITECTURE.md): every file under `src/`
//! starts with a module doc saying what it holds; no file reaches itself
//! through imports (`use crate::…`, `use super::…`, or a `crate::…` path in
//! code), however long the circle, except a module and its own children (a
//! child extending its parent's type is part of it); the parts import one
//! another only in the directions the architecture allows; and no file or
//! function is too long to hold in one's head.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading src/") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("reading a source file");
                found.insert(path, text);
            }
        }
    }
    found
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `lib.rs` and
/// `main.rs` are the root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("under src/")
        .with_extension("");
    let mut segs: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if matches!(
        segs.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        segs.pop();
    }
    segs
}

/// The text without comments and without a trailing `mod tests` (a test
/// module may import anything of its parent).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a `use` tree names: `a::{b, c::{d, e}}` is `a::b`, `a::c::d`
/// and `a::c::e`.
fn expand(prefix: &[String], tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or_default();
        let mut segs = prefix.to_vec();
        segs.extend(
            path.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
        return vec![segs];
    };
    let mut base = prefix.to_vec();
    base.extend(
        tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from),
    );
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut depth, mut part, mut out) = (0, String::new(), Vec::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.extend(expand(&base, &part));
                part.clear();
                continue;
            }
            _ => {}
        }
        part.push(c);
    }
    if !part.trim().is_empty() {
        out.extend(expand(&base, &part));
    }
    out
}

/// Every path a file names: its `use` trees, and `crate::`/`super::` paths.
fn named_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        rest = &rest[at + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        paths.extend(expand(&[], &rest[..end]));
    }
    for start in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(start) {
            let before = rest[..at].chars().last();
            let path: String = rest[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            rest = &rest[at + start.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            paths.push(
                path.split("::")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            );
        }
    }
    paths
}

/// Which file each file imports from.
fn import_graph(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let files = sources(src);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .keys()
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let mut graph = BTreeMap::new();
    for (file, text) in &files {
        let mut edges = BTreeSet::new();
        let me = module_of(src, file);
        let is_dir_module = ["mod.rs", "lib.rs", "main.rs"]
            .iter()
            .any(|n| file.ends_with(n));
        let here: Vec<String> = if is_dir_module {
            me.clone()
        } else {
            me[..me.len().saturating_sub(1)].to_vec()
        };
        let in_tests = file.ends_with("tests.rs");
        for path in named_paths(&code(text)) {
            let segs: Vec<String> = match path.first().map(String::as_str) {
                Some("crate") => path[1..].to_vec(),
                Some("super") => {
                    let ups = path.iter().take_while(|s| *s == "super").count();
                    let mut segs = here[..here.len().saturating_sub(ups - 1)].to_vec();
                    segs.extend(path[ups..].iter().cloned());
                    segs
                }
                Some("self") => [here.clone(), path[1..].to_vec()].concat(),
                Some(first) => {
                    let mut child = here.clone();
                    child.push(first.to_string());
                    if !modules.contains_key(&child) {
                        continue;
                    }
                    [here.clone(), path].concat()
                }
                None => continue,
            };
            // The longest prefix that is a module is the file imported.
            let target = (0..=segs.len()).rev().find_map(|n| modules.get(&segs[..n]));
            if let Some(target) = target
                && target != file
                && !in_tests
            {
                edges.insert(target.clone());
            }
        }
        graph.insert(file.clone(), edges);
    }
    graph
}

/// A circle of files, if there is one.
fn find_cycle(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Option<Vec<PathBuf>> {
    fn visit(
        node: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        done: &mut BTreeSet<PathBuf>,
        path: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Whether module `a` is `b`'s ancestor or descendant (a child module
/// extending its parent's type is one module, not a circle).
fn related(src: &Path, a: &Path, b: &Path) -> bool {
    let (a, b) = (module_of(src, a), module_of(src, b));
    a.starts_with(&b) || b.starts_with(&a)
}

/// The graph without the edges between a module and its own children.
fn between_modules(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut graph = import_graph(src);
    for (file, edges) in &mut graph {
        edges.retain(|target| !related(src, file, target));
    }
    graph
}

#[test]
fn no_source_file_reaches_itself_through_imports() {
    let graph = between_modules(&src());
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    assert!(edges > 50, "the import graph looks empty: {edges} edges");
    if let Some(cycle) = find_cycle(&graph) {
        let names: Vec<String> = cycle.iter().map(|p| p.display().to_string()).collect();
        panic!("a circle of imports: {}", names.join(" -> "));
    }
}

#[test]
fn the_cycle_finder_finds_a_circle() {
    let dir = crate::support::TempDir::new("layout");
    let src = dir.0.join("src");
    std::fs::create_dir_all(src.join("sup")).unwrap();
    std::fs::write(src.join("lib.rs"), "//! root\nmod a;\nmod sup;\n").unwrap();
    std::fs::write(src.join("a.rs"), "//! a\nuse crate::sup::{x::X, Y};\n").unwrap();
    std::fs::write(
        src.join("sup/mod.rs"),
        "//! sup\npub mod x;\npub struct Y;\n",
    )
    .unwrap();
    std::fs::write(src.join("sup/x.rs"), "//! x\nfn f() { crate::a::g(); }\n").unwrap();
    let cycle = find_cycle(&between_modules(&src)).expect("a -> sup/x -> a");
    assert_eq!(cycle.len(), 2, "{cycle:?}");
    // A child that extends its parent's type is not a circle; two
    // siblings that import each other are.
    std::fs::write(src.join("a.rs"), "//! a\n").unwrap();
    std::fs::write(src.join("sup/x.rs"), "//! x\nuse super::Y;\nimpl Y {}\n").unwrap();
    std::fs::write(
        src.join("sup/mod.rs"),
        "//! sup\npub mod x;\npub mod z;\npub struct Y;\nfn f() { x::g(); }\n",
    )
    .unwrap();
    std::fs::write(src.join("sup/z.rs"), "//! z\n").unwrap();
    assert_eq!(find_cycle(&between_modules(&src)), None);
    std::fs::write(src.join("sup/x.rs"), "//! x\nuse super::z::Z;\n").unwrap();
    std::fs::write(src.join("sup/z.rs"), "//! z\nuse super::x::X;\n").unwrap();
    assert!(find_cycle(&between_modules(&src)).is_some());
}

#[test]
fn every_source_file_says_what_it_holds() {
    let undocumented: Vec<String> = sources(&src())
        .iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(undocumented.is_empty(), "no module doc: {undocumented:?}");
}

/// The part of the architecture a file belongs to: its top folder, or the
/// few files that stand alone.
fn part_of(src: &Path, file: &Path) -> &'static str {
    let rel = file.strip_prefix(src).expect("under src/");
    let top = rel
        .iter()
        .next()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    match top {
        "vocab.rs" | "error.rs" => "words",
        "supervisor" => "policy",
        "sockets" => "sockets",
        "launch" => "launch",
        "start" => "start",
        "control" => "control",
        "shell" => "shell",
        "worker" | "cluster.rs" => "library",
        "check" => "check",
        "lib.rs" | "main.rs" => "root",
        other => {
            panic!("{other}: a file outside every part (add it to one, and to ARCHITECTURE.md)")
        }
    }
}

/// What each part may import, and why not the others.
const DIRECTIONS: &[(&str, &[&str], &str)] = &[
    (
        "words",
        &["words"],
        "the words every part shares import nothing",
    ),
    (
        "policy",
        &["words"],
        "the policy imports none of the other parts: it decides and does nothing",
    ),
    (
        "sockets",
        &["words"],
        "sockets know nothing of the supervisor, the loop, the start-up or the control plane: what crosses is words (vocab.rs)",
    ),
    (
        "launch",
        &["words", "sockets"],
        "starting a worker knows no policy and no loop",
    ),
    (
        "control",
        &["words", "policy", "sockets"],
        "the control plane reads the supervisor's state, and starts nothing: no launch, no loop, no start-up",
    ),
    (
        "check",
        &["words", "sockets", "control"],
        "`rcluster check` runs a master as a child process and talks to it as any client does: no policy, no loop, no start-up",
    ),
    (
        "start",
        &["words", "policy", "sockets", "launch", "control", "check"],
        "the start-up knows nothing of the loop it prepares",
    ),
    (
        "shell",
        &["words", "policy", "sockets", "launch", "start", "control"],
        "the loop does not use the library built on it",
    ),
    (
        "library",
        &[
            "words", "policy", "sockets", "launch", "start", "control", "shell", "library",
        ],
        "",
    ),
    (
        "root",
        &[
            "words", "policy", "sockets", "launch", "start", "control", "shell", "library", "check",
        ],
        "",
    ),
];

#[test]
fn the_parts_import_one_another_only_as_the_architecture_allows() {
    let src = src();
    let mut broken = Vec::new();
    for (file, targets) in import_graph(&src) {
        let from = part_of(&src, &file);
        let (_, allowed, why) = DIRECTIONS
            .iter()
            .find(|(part, _, _)| *part == from)
            .expect("every part has its directions");
        for target in targets {
            let to = part_of(&src, &target);
            if to != from && !allowed.contains(&to) {
                broken.push(format!(
                    "{} ({from}) imports {} ({to}): {why}",
                    file.strip_prefix(&src).unwrap().display(),
                    target.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The text before a trailing `#[cfg(test)] mod tests`.
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    }
}

#[test]
fn no_source_file_is_too_long_to_hold_in_ones_head() {
    const MAX_LINES: usize = 800;
    let long: Vec<String> = sources(&src())
        .iter()
        .filter(|(path, _)| !path.ends_with("tests.rs"))
        .map(|(path, text)| (path, without_tests(text).lines().count()))
        .filter(|(_, lines)| *lines > MAX_LINES)
        .map(|(path, lines)| format!("{} ({lines} lines)", path.display()))
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines, tests aside: {long:?}"
    );
}

/// Functions that are tables: one short arm per variant of a match, read
/// row by row, however many rows.
const TABLES: &[&str] = &["render", "meta"];

#[test]
fn no_function_mixes_more_steps_than_fit_on_a_screen() {
    const MAX_LINES: usize = 100;
    let mut long = Vec::new();
    for (path, text) in sources(&src()) {
        if path.ends_with("tests.rs") {
            continue;
        }
        let lines: Vec<&str> = without_tests(&text).lines().collect();
        for (at, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let Some(rest) = [
                "pub fn ",
                "pub(crate) fn ",
                "fn ",
                "pub unsafe fn ",
                "unsafe fn ",
                "pub(crate) unsafe fn ",
            ]
            .iter()
            .find_map(|p| trimmed.strip_prefix(p)) else {
                continue;
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // The body ends at the first line back at this indentation
            // that closes it.
            let indent = line.len() - trimmed.len();
            let end = lines[at..]
                .iter()
                .position(|l| {
                    l.len() > indent
                        && l[..indent].trim().is_empty()
                        && l[indent..].starts_with('}')
                })
                .map_or(0, |n| n + 1);
            if end > MAX_LINES && !TABLES.contains(&name.as_str()) {
                long.push(format!("{}: fn {name} ({end} lines)", path.display()));
            }
        }
    }
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

/// The worker life-cycle table has one text: the supervisor's module doc.
/// ARCHITECTURE.md shows the same rows, and drifts from them only by
/// failing here.
#[test]
fn the_life_cycle_table_in_architecture_md_is_the_supervisors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let code = std::fs::read_to_string(root.join("src/supervisor/mod.rs")).unwrap();
    let rows: Vec<&str> = code
        .lines()
        .filter_map(|l| l.strip_prefix("//! |"))
        .collect();
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let shown: Vec<&str> = doc
        .lines()
        .skip_while(|l| !l.starts_with("| state \\ event"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| &l[1..])
        .collect();
    assert!(rows.len() > 5, "the supervisor's doc has its table");
    assert_eq!(
        shown, rows,
        "ARCHITECTURE.md's life-cycle table differs from src/supervisor/mod.rs"
    );
}
