//! `--config FILE`: the master's options in TOML, one key per long option
//! with the same name and units (`workers = 4`, `stop-timeout = "30s"`,
//! `listen = ["127.0.0.1:8080"]`), the worker's command as an array under
//! `command`, and variables for the workers under `[env]`.
//!
//! This module reads the file into the arguments each key stands for, with
//! the line it is on; whether a value is good is the command line's
//! business (`cli.rs` gives each key's arguments to the same parser as the
//! flags), so a file and a flag can never disagree about what a value means.

use std::ffi::OsString;
use std::path::Path;

use toml::de::{DeTable, DeValue};

/// What a key stands for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A flag without a value (`http-drain = true`).
    Flag,
    /// An option with one value.
    Value,
    /// An option that may be given more than once (`listen`).
    Values,
}

pub use crate::vocab::ConfigFile;

impl ConfigFile {
    /// Reads `path`; `Err` is one line naming the file.
    pub fn read(path: &Path) -> Result<ConfigFile, String> {
        let path = std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_path_buf());
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read the configuration file {}: {e}", path.display()))?;
        Ok(ConfigFile::of(path, text))
    }
}

/// One key of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The option's long name: `stop-timeout`.
    pub key: String,
    pub line: usize,
    /// The values, as they would follow `--KEY` (none for a flag set).
    pub values: Vec<OsString>,
}

/// The file's keys, its command and its variables.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Contents {
    pub entries: Vec<Entry>,
    /// `command = [...]`, and its line.
    pub command: Option<(usize, Vec<OsString>)>,
    /// `[env]`, in the file's order.
    pub env: Vec<(String, String)>,
}

/// The keys a file may not hold: they say where the file is, or what
/// rcluster does instead of running a master.
const NOT_IN_A_FILE: &[&str] = &["config"];

impl ConfigFile {
    /// The file's keys as arguments. `kind_of` says what each option is
    /// (`None`: there is no such option). `Err`: `FILE:LINE: what is wrong`.
    pub fn contents(&self, kind_of: impl Fn(&str) -> Option<Kind>) -> Result<Contents, String> {
        let line_of = |offset: usize| {
            self.text[..offset.min(self.text.len())]
                .matches('\n')
                .count()
                + 1
        };
        let table = DeTable::parse(&self.text).map_err(|e| {
            let line = e.span().map_or(1, |span| line_of(span.start));
            format!("{}: {}", self.at(line), e.message().trim_end())
        })?;
        let mut contents = Contents::default();
        for (key, value) in table.get_ref() {
            let line = line_of(key.span().start);
            let name: &str = key.get_ref();
            let at = || format!("{}: {name}", self.at(line));
            match name {
                "command" => {
                    let words = strings(value.get_ref()).ok_or_else(|| {
                        format!("{}: expected a list of strings: command = [\"./server\", \"--port\", \"8080\"]", at())
                    })?;
                    if words.is_empty() {
                        return Err(format!("{}: the command is empty", at()));
                    }
                    contents.command =
                        Some((line, words.into_iter().map(OsString::from).collect()));
                }
                "env" => {
                    let DeValue::Table(vars) = value.get_ref() else {
                        return Err(format!(
                            "{}: expected a table: [env] with NAME = \"value\" lines",
                            at()
                        ));
                    };
                    let mut lines = Vec::new();
                    for (var, val) in vars {
                        let text = scalar(val.get_ref()).ok_or_else(|| {
                            format!(
                                "{}: env.{}: expected a string, a number or a boolean",
                                self.at(line_of(var.span().start)),
                                var.get_ref()
                            )
                        })?;
                        lines.push((line_of(var.span().start), var.get_ref().to_string(), text));
                    }
                    lines.sort();
                    contents.env = lines
                        .into_iter()
                        .map(|(_, name, text)| (name, text))
                        .collect();
                }
                _ if NOT_IN_A_FILE.contains(&name) => {
                    return Err(format!(
                        "{}: not in a configuration file (give it on the command line)",
                        at()
                    ));
                }
                _ => {
                    let Some(kind) = kind_of(name) else {
                        return Err(format!(
                            "{}: unknown key (the keys are the long options without --, e.g. \
                             stop-timeout; see rcluster --help)",
                            at()
                        ));
                    };
                    let values = match (kind, value.get_ref()) {
                        (Kind::Flag, DeValue::Boolean(true)) => Some(Vec::new()),
                        (Kind::Flag, DeValue::Boolean(false)) => continue,
                        (Kind::Flag, _) => None,
                        (Kind::Values, DeValue::Array(_)) => strings(value.get_ref()),
                        (_, other) => scalar(other).map(|v| vec![v]),
                    };
                    let values = values.ok_or_else(|| match kind {
                        Kind::Flag => format!("{}: expected true or false", at()),
                        Kind::Values => format!("{}: expected a string or a list of strings", at()),
                        Kind::Value => format!("{}: expected a string or a number", at()),
                    })?;
                    contents.entries.push(Entry {
                        key: name.to_string(),
                        line,
                        values: values.into_iter().map(OsString::from).collect(),
                    });
                }
            }
        }
        // In the file's order (the parser's map is sorted by name).
        contents.entries.sort_by_key(|e| e.line);
        Ok(contents)
    }
}

/// A string, a number or a boolean, as text.
fn scalar(value: &DeValue) -> Option<String> {
    match value {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(i) => Some(i.as_str().replace('_', "")),
        DeValue::Float(f) => Some(f.as_str().replace('_', "")),
        DeValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list of strings (numbers too: `listen = [8080]` is not an address,
/// and the parser says so).
fn strings(value: &DeValue) -> Option<Vec<String>> {
    let DeValue::Array(items) = value else {
        return None;
    };
    items
        .iter()
        .map(|item| match item.get_ref() {
            DeValue::Array(_) | DeValue::Table(_) | DeValue::Boolean(_) => None,
            other => scalar(other),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(key: &str) -> Option<Kind> {
        match key {
            "workers" | "stop-timeout" => Some(Kind::Value),
            "listen" => Some(Kind::Values),
            "http-drain" => Some(Kind::Flag),
            _ => None,
        }
    }

    fn read(text: &str) -> Result<Contents, String> {
        ConfigFile::of("/etc/app.toml".into(), text.into()).contents(kinds)
    }

    #[test]
    fn keys_become_the_arguments_they_stand_for() {
        let c = read(
            "# the app\nworkers = 4\nlisten = [\"127.0.0.1:8080\", \"unix:/run/a.sock\"]\n\
             http-drain = true\ncommand = [\"./server\", \"--port\", \"1\"]\n\n[env]\nA = \"x\"\nB = 2\n",
        )
        .unwrap();
        let keys: Vec<_> = c
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.line, e.values.len()))
            .collect();
        assert_eq!(
            keys,
            [("workers", 2, 1), ("listen", 3, 2), ("http-drain", 4, 0)]
        );
        assert_eq!(c.command.unwrap().1.len(), 3);
        assert_eq!(c.env, [("A".into(), "x".into()), ("B".into(), "2".into())]);
        assert!(read("http-drain = false\n").unwrap().entries.is_empty());
        assert_eq!(
            read("listen = \":8080\"\n").unwrap().entries[0].values,
            [OsString::from(":8080")]
        );
    }

    #[test]
    fn mistakes_name_the_line_and_the_key() {
        let e = read("workers = 4\nstop-timout = \"1s\"\n").unwrap_err();
        assert!(
            e.starts_with("/etc/app.toml:2: stop-timout: unknown key"),
            "{e}"
        );
        let e = read("workers = 4\n\nworkers = [\n").unwrap_err();
        assert!(e.starts_with("/etc/app.toml:3: "), "{e}");
        let e = read("http-drain = \"yes\"\n").unwrap_err();
        assert_eq!(e, "/etc/app.toml:1: http-drain: expected true or false");
        let e = read("\ncommand = \"./server\"\n").unwrap_err();
        assert!(
            e.starts_with("/etc/app.toml:2: command: expected a list"),
            "{e}"
        );
        let e = read("config = \"x\"\n").unwrap_err();
        assert!(e.contains("not in a configuration file"), "{e}");
    }
}
