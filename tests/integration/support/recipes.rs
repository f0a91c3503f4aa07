//! The command lines the docs show, as the tests run them. A code block
//! after `<!-- recipe: NAME -->` in `docs/servers.md` holds one `rcluster …
//! -- COMMAND` line (continued with `\`); a test takes its flags and its
//! worker's command from there, so the recipe a reader copies is the one
//! that went through the reloads. Only the address (a test picks its own)
//! and the worker count are the test's.

use std::path::Path;

/// A recipe's rcluster flags (without `--listen`) and the worker's command.
#[derive(Debug)]
pub struct Recipe {
    pub flags: Vec<String>,
    pub command: Vec<String>,
}

impl Recipe {
    pub fn flags(&self) -> Vec<&str> {
        self.flags.iter().map(String::as_str).collect()
    }

    pub fn command(&self) -> Vec<&str> {
        self.command.iter().map(String::as_str).collect()
    }
}

/// The document the recipes are in.
pub const RECIPES: &str = "docs/servers.md";

/// The recipe marked `<!-- recipe: NAME -->` in [`RECIPES`].
pub fn recipe(name: &str) -> Recipe {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join(RECIPES);
    let text = std::fs::read_to_string(&doc).expect("docs/servers.md");
    let block = marked_block(&text, name)
        .unwrap_or_else(|| panic!("{RECIPES} has no code block marked recipe: {name}"));
    parse(&block).unwrap_or_else(|| panic!("recipe {name}: no `rcluster … -- COMMAND` line"))
}

/// The names of every recipe marked in `text`.
pub fn marked_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("<!-- recipe: "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The code block after `<!-- recipe: NAME -->`, its `\`-continued lines
/// joined.
fn marked_block(text: &str, name: &str) -> Option<String> {
    let mut lines = text.lines();
    lines.find(|l| {
        l.strip_prefix("<!-- recipe: ")
            .and_then(|rest| rest.split_whitespace().next())
            == Some(name)
    })?;
    if !lines.next()?.starts_with("```") {
        return None;
    }
    let body: Vec<&str> = lines.take_while(|l| l.trim() != "```").collect();
    Some(body.join("\n").replace("\\\n", " "))
}

fn parse(block: &str) -> Option<Recipe> {
    let line = block.lines().find(|l| l.starts_with("rcluster "))?;
    let words: Vec<&str> = line.split_whitespace().skip(1).collect();
    let split = words.iter().position(|w| *w == "--")?;
    let mut flags = Vec::new();
    let mut rest = words[..split].iter();
    while let Some(&word) = rest.next() {
        if word == "--listen" || word == "-l" {
            rest.next();
        } else if !word.starts_with("--listen=") {
            flags.push(word.to_string());
        }
    }
    let command: Vec<String> = words[split + 1..].iter().map(|w| w.to_string()).collect();
    (!command.is_empty()).then_some(Recipe { flags, command })
}

#[test]
fn a_recipe_is_its_flags_and_command_without_the_address() {
    let doc = "<!-- recipe: x -->\n```\nrcluster --listen 127.0.0.1:8080 --ready notify -- \\\n    gunicorn --workers 1 app:app\n```\n";
    let r = parse(&marked_block(doc, "x").unwrap()).unwrap();
    assert_eq!(r.flags, ["--ready", "notify"]);
    assert_eq!(r.command, ["gunicorn", "--workers", "1", "app:app"]);
    assert_eq!(marked_names(doc), ["x"]);
    assert!(marked_block(doc, "y").is_none());
}
