//! `--env-file PATH`: variables for the workers in the dotenv format that
//! Node and Python tools read (`KEY=value`, `# comments`, quotes,
//! `export`, `${VAR}`), read at start and again at every reload, so that a
//! reload rolls out new configuration. Parsing is dotenvy's.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;

/// One reading of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile {
    /// In file order; a key given twice keeps its last value.
    pub vars: Vec<(String, String)>,
    /// Which version of the file this is: a hash of its bytes, as 16 hex
    /// digits (shown per generation in `rcluster status --json`).
    pub version: String,
}

/// Why the file cannot be used: one line naming it, and the line of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    pub message: String,
    /// The file could not be read at all (rather than parsed).
    pub unreadable: bool,
}

pub fn read(path: &Path) -> Result<EnvFile, EnvFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| EnvFileError {
        message: format!("cannot read the env file {}: {e}", path.display()),
        unreadable: true,
    })?;
    let mut vars: Vec<(String, String)> = Vec::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        let (key, value) = item.map_err(|e| EnvFileError {
            message: describe(path, &text, &e),
            unreadable: false,
        })?;
        vars.retain(|(k, _)| *k != key);
        vars.push((key, value));
    }
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    Ok(EnvFile {
        vars,
        version: format!("{:016x}", hasher.finish()),
    })
}

/// `PATH line N: what is wrong`, as far as the error can tell. dotenvy
/// reports the statement (several lines for a quoted value that goes on)
/// and the character where parsing stopped.
fn describe(path: &Path, text: &str, e: &dotenvy::Error) -> String {
    let dotenvy::Error::LineParse(statement, at) = e else {
        return format!("the env file {} cannot be parsed: {e}", path.display());
    };
    let first = statement.lines().next().unwrap_or_default().trim_end();
    let start = text.lines().position(|l| l.trim_end() == first);
    let at = (*at).min(statement.len());
    let within = statement[..at].matches('\n').count();
    let line = |n: usize| start.map_or(String::new(), |s| format!(" line {}", s + n + 1));
    if statement.trim_end().contains('\n') && at >= statement.trim_end().len() {
        return format!(
            "the env file {}{} cannot be parsed: a quote opened there is never closed: {first}",
            path.display(),
            line(0)
        );
    }
    let bad = statement.lines().nth(within).unwrap_or(first).trim_end();
    format!(
        "the env file {}{} cannot be parsed: {bad}",
        path.display(),
        line(within)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "rcluster-envfile-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_what_dotenv_tools_read() {
        let path = file("# a comment\nA=1\nexport B=\"two words\"\nC='x=y'\nA=3\n\n");
        let env = read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            env.vars,
            [
                ("B".to_string(), "two words".to_string()),
                ("C".to_string(), "x=y".to_string()),
                ("A".to_string(), "3".to_string()),
            ]
        );
        assert_eq!(env.version.len(), 16);
    }

    #[test]
    fn a_broken_line_is_named() {
        let path = file("GOOD=1\nBAD LINE HERE\n");
        let e = read(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(!e.unreadable);
        assert!(e.message.contains(" line 2 "), "{}", e.message);
        assert!(e.message.contains("BAD LINE HERE"), "{}", e.message);
        let path = file("GOOD=1\nLEVEL=\"info\nPORT=1\n");
        let e = read(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(
            e.message.ends_with(
                " line 2 cannot be parsed: a quote opened there is never closed: LEVEL=\"info"
            ),
            "{}",
            e.message
        );
        let e = read(Path::new("/nonexistent/.env")).unwrap_err();
        assert!(e.unreadable && e.message.contains("/nonexistent/.env"));
    }
}
