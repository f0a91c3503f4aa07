//! The docs cannot drift from the tested files: a code block marked
//! `<!-- snippet: examples/FILE … -->` in the README or `docs/` must be,
//! line for line, the part of that file between its `snippet:start` and
//! `snippet:end` lines (the file the tests run); and every marked part is
//! shown somewhere. The README's Go snippet once exited 1 at `ln.Close()`
//! and lost 220 requests over 8 reloads while `examples/go/server.go` was
//! right: that cannot happen again without this test failing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::support::recipes::{RECIPES, marked_names};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The README and every Markdown file under `docs/`.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md")];
    if let Ok(entries) = std::fs::read_dir(root().join("docs")) {
        docs.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "md")),
        );
    }
    docs
}

/// The lines of `file` between its `snippet:start` and `snippet:end`.
fn region(file: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(file).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let marker = |l: &&str, what: &str| {
        let l = l.trim();
        (l.starts_with("//") || l.starts_with('#')) && l.ends_with(what)
    };
    let start = lines.iter().position(|l| marker(l, "snippet:start"))?;
    let end = lines.iter().position(|l| marker(l, "snippet:end"))?;
    Some(
        lines[start + 1..end]
            .iter()
            .map(|l| l.to_string())
            .collect(),
    )
}

/// Each marked block of `doc`: the file it names, and its lines.
fn marked_blocks(doc: &Path) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(doc).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("<!-- snippet: ") else {
            continue;
        };
        let file = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            lines.get(i + 1).is_some_and(|l| l.starts_with("```")),
            "{}:{}: a snippet marker must be followed by a code block",
            doc.display(),
            i + 1
        );
        let body: Vec<String> = lines[i + 2..]
            .iter()
            .take_while(|l| l.trim() != "```")
            .map(|l| l.to_string())
            .collect();
        blocks.push((file, body));
    }
    blocks
}

#[test]
fn every_marked_snippet_is_the_tested_file() {
    let mut shown = BTreeSet::new();
    for doc in documents() {
        for (file, body) in marked_blocks(&doc) {
            let expected = region(&root().join(&file))
                .unwrap_or_else(|| panic!("{file} has no snippet:start/snippet:end lines"));
            assert_eq!(
                body,
                expected,
                "{}: the block for {file} differs from the file: copy the lines between its \
                 snippet:start and snippet:end",
                doc.display()
            );
            shown.insert(file);
        }
    }
    for example in [
        "hello.rs",
        "node/server.js",
        "express/app.js",
        "python/server.py",
        "go/server.go",
    ] {
        let file = format!("examples/{example}");
        assert!(
            region(&root().join(&file)).is_some(),
            "{file} marks no snippet"
        );
        assert!(shown.contains(&file), "no document shows {file}'s snippet");
    }
}

#[test]
fn the_snippet_check_finds_a_difference() {
    let dir = crate::support::TempDir::new("snippet");
    let file = dir.path("server.js");
    std::fs::write(&file, "x\n// snippet:start\na();\nb();\n// snippet:end\n").unwrap();
    assert_eq!(region(&file).unwrap(), ["a();", "b();"]);
    let doc = dir.path("doc.md");
    std::fs::write(
        &doc,
        "<!-- snippet: server.js -->\n```js\na();\nc();\n```\n",
    )
    .unwrap();
    let blocks = marked_blocks(&doc);
    assert_eq!(blocks.len(), 1);
    assert_ne!(blocks[0].1, region(&file).unwrap());
}

/// A heading's anchor as GitHub makes it.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every relative link in the README, ARCHITECTURE.md and `docs/` leads to
/// a file that exists, and to a heading of it when it names one: moving a
/// section breaks no link silently.
#[test]
fn every_link_between_the_docs_leads_somewhere() {
    let mut docs = documents();
    docs.push(root().join("ARCHITECTURE.md"));
    let mut broken = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let file = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(path)
            };
            if !file.exists() {
                broken.push(format!("{}: {target}: no such file", doc.display()));
                continue;
            }
            if !anchor.is_empty() {
                let headings = std::fs::read_to_string(&file).unwrap_or_default();
                let found = headings
                    .lines()
                    .filter_map(|l| l.strip_prefix('#'))
                    .map(|l| slug(l.trim_start_matches('#')))
                    .any(|s| s == anchor);
                if !found {
                    broken.push(format!("{}: {target}: no such heading", doc.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every command line marked `<!-- recipe: NAME -->` is one a test runs
/// (`recipe("NAME")` in the integration tests), so none can drift from
/// what passed the reloads.
#[test]
fn every_marked_recipe_is_run_by_a_test() {
    let doc = std::fs::read_to_string(root().join(RECIPES)).unwrap();
    let names = marked_names(&doc);
    assert!(!names.is_empty(), "{RECIPES} marks no recipe");
    let mut tests = String::new();
    for entry in std::fs::read_dir(root().join("tests/integration")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            tests += &std::fs::read_to_string(path).unwrap();
        }
    }
    for name in names {
        assert!(
            tests.contains(&format!("recipe(\"{name}\")")),
            "{RECIPES} marks recipe {name}, but no test runs recipe(\"{name}\")"
        );
    }
}

/// docs/performance.md shows every figure the bench has a goal for, with
/// that goal (its table is the bench's `--markdown` output, pasted).
#[test]
fn the_performance_page_shows_every_goal_the_bench_measures() {
    let page = std::fs::read_to_string(root().join("docs/performance.md")).unwrap();
    for (figure, goal) in crate::bench::goals::FIGURES {
        assert!(
            page.contains(&format!("| {figure} | {goal} |")),
            "docs/performance.md has no row for '{figure}' (goal {goal}): paste \
             `cargo bench --bench reload -- --markdown` there"
        );
    }
}

/// Every name in `./test.sh --quick`'s list is a test of this suite (or a
/// whole module): a name that matches nothing would be a part of the
/// architecture the quick tier silently stopped testing.
#[test]
fn every_quick_test_names_a_test() {
    let script = std::fs::read_to_string(root().join("test.sh")).unwrap();
    let list = script
        .split_once("QUICK=(")
        .and_then(|(_, rest)| rest.split_once("\n)"))
        .expect("test.sh has a QUICK=( ... ) list")
        .0;
    let names: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let (module, test) = name.split_once("::").expect("module::test");
        let file = root().join(format!("tests/integration/{module}.rs"));
        let source = std::fs::read_to_string(&file)
            .unwrap_or_else(|_| panic!("{name}: no tests/integration/{module}.rs"));
        assert!(
            test.is_empty() || source.contains(&format!("#[test]\nfn {test}()")),
            "test.sh --quick names {name}, which is no test"
        );
    }
}

/// docs/options.md lists every setting a reload cannot change, with the
/// reason the refusal gives, and no other.
#[test]
fn every_setting_a_reload_cannot_change_is_listed_with_its_reason() {
    let options = std::fs::read_to_string(root().join("docs/options.md")).unwrap();
    for (key, why) in rcluster::start::changes::NEEDS_RESTART {
        let row = format!("| `{key}` | {why} |");
        assert!(options.contains(&row), "docs/options.md lacks: {row}");
    }
    let table = options
        .split("| setting | why |")
        .nth(1)
        .expect("the table of settings that need a restart");
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let key = row.split('`').nth(1).unwrap_or_default();
        let known = rcluster::start::changes::NEEDS_RESTART
            .iter()
            .any(|(k, _)| *k == key);
        assert!(
            known || key == "listen",
            "docs/options.md lists {key}, which a reload changes"
        );
    }
    // Every option of the table at the top: how a reload applies it, or
    // why it cannot.
    let applied = options
        .split("How each kind of setting takes effect:")
        .nth(1)
        .and_then(|rest| rest.split("These need a restart").next())
        .expect("how each kind of setting takes effect");
    let top = options.split("\n\n").find(|p| p.starts_with("| option |"));
    let top = top.expect("the table of options");
    let mut seen = 0;
    for row in top.lines().skip(2) {
        let cell = row.split(" | ").next().unwrap_or_default();
        for option in cell.split("--").skip(1) {
            let name: String = option
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            let restart = table.contains(&format!("| `{name}` |"));
            assert!(
                restart || applied.contains(&format!("`--{name}`")),
                "docs/options.md says neither how a reload applies --{name} nor why it cannot"
            );
            seen += 1;
        }
    }
    assert!(seen > 30, "only {seen} options in the table");
}
