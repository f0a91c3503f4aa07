//! What a reload may change in the configuration, and what one did.
//!
//! Every setting a new generation can take is changed by a reload: the
//! command and its arguments, the workers' variables, the readiness and
//! probe rules, the timeouts and limits, the worker count. The ones below
//! are the master's own, set up once for its life; a reload that would
//! change one is refused, nothing changes, and the line says to restart.

use super::config::Config;
use super::layers::Setting;

/// The settings a reload cannot change, and why.
pub const NEEDS_RESTART: &[(&str, &str)] = &[
    (
        "name",
        "it names the master's control socket and every log record",
    ),
    ("control", "clients reach the master there"),
    ("pid-file", "it is written once, at start"),
    ("metrics", "the master serves it on a socket bound at start"),
    (
        "balance",
        "the listening sockets a reload keeps were made for it",
    ),
    (
        "backlog",
        "the listening sockets a reload keeps were made with it",
    ),
    (
        "socket-mode",
        "the unix sockets' files a reload keeps were made with it",
    ),
    (
        "socket-user",
        "the unix sockets' files a reload keeps were made with it",
    ),
    (
        "socket-group",
        "the unix sockets' files a reload keeps were made with it",
    ),
    (
        "stop-signal",
        "the shim and the workers' parent-death signal are set up with it at start",
    ),
    (
        "adopt-bind",
        "the shim every worker loads is set up at start",
    ),
    (
        "http-drain",
        "the shim every worker loads is set up at start",
    ),
    ("user", "the workers' credentials are resolved at start"),
    ("group", "the workers' credentials are resolved at start"),
    (
        "worker-stderr",
        "the workers' output goes where it was set up at start",
    ),
    (
        "log-prefix",
        "the workers' output goes where it was set up at start",
    ),
    ("log-file", "the master's log is opened at start"),
    ("log-format", "the master's log is opened at start"),
    ("log-level", "the master's log is opened at start"),
    ("config", "it names the file itself"),
];

fn values<'a>(config: &'a Config, key: &str) -> Option<&'a Setting> {
    config.settings.iter().find(|s| s.key == key)
}

fn shown(setting: Option<&Setting>) -> String {
    match setting {
        Some(s) if !s.values.is_empty() => s.values.join(","),
        _ => "none".into(),
    }
}

/// The first setting `new` changes that needs a restart: one line.
pub fn refused(old: &Config, new: &Config) -> Option<String> {
    NEEDS_RESTART.iter().find_map(|&(key, why)| {
        let (before, after) = (values(old, key), values(new, key));
        (before.map(|s| &s.values) != after.map(|s| &s.values)).then(|| {
            format!(
                "{key} changed ({} → {}), which a reload cannot apply ({why}): restart \
                 rcluster to apply it, or put it back",
                shown(before),
                shown(after)
            )
        })
    })
}

/// What `new` changes from `old`, in the settings' order: `workers 4 → 8`,
/// `command arguments changed`, `env API_URL changed`. Values of the
/// command and of variables are not shown: they may hold secrets.
pub fn describe(old: &Config, new: &Config) -> Vec<String> {
    let mut changes: Vec<String> = new
        .settings
        .iter()
        .filter_map(|after| {
            let before = values(old, &after.key);
            if before.map(|s| &s.values) == Some(&after.values) {
                return None;
            }
            Some(match after.key.as_str() {
                "command" if old.command.first() == new.command.first() => {
                    "command arguments changed".to_string()
                }
                "command" => "command changed".to_string(),
                key => format!("{key} {} → {}", shown(before), shown(Some(after))),
            })
        })
        .collect();
    let env = crate::start::envfile::Changes::between(&old.file_env, &new.file_env);
    for (what, names) in [
        ("added", env.added),
        ("changed", env.changed),
        ("removed", env.removed),
    ] {
        if !names.is_empty() {
            changes.push(format!("env {} {what}", names.join(", ")));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::start::cli::configure;
    use crate::start::file::ConfigFile;

    fn config(text: &str, flags: &[&str]) -> Config {
        let file = ConfigFile::of("/etc/app.toml".into(), text.into());
        let mut given: Vec<std::ffi::OsString> = vec!["--config".into(), "/etc/app.toml".into()];
        given.extend(flags.iter().map(Into::into));
        configure(&given, Some(file), true).expect("configures")
    }

    const BASE: &str =
        "workers = 4\ncommand = [\"./server\", \"--port\", \"1\"]\n[env]\nA = \"1\"\n";

    #[test]
    fn a_reload_says_what_it_changed() {
        let old = config(BASE, &[]);
        let new = config(
            "workers = 8\nstop-timeout = \"5s\"\ncommand = [\"./server\", \"--port\", \"2\"]\n[env]\nA = \"2\"\nB = \"x\"\n",
            &[],
        );
        assert_eq!(refused(&old, &new), None);
        assert_eq!(
            describe(&old, &new),
            [
                "workers 4 → 8",
                "stop-timeout 30s → 5s",
                "command arguments changed",
                "env B added",
                "env A changed"
            ]
        );
        assert!(describe(&old, &config(BASE, &[])).is_empty());
    }

    #[test]
    fn a_setting_of_the_master_is_refused_with_its_reason() {
        let old = config(BASE, &[]);
        let new = config(&format!("log-level = \"debug\"\n{BASE}"), &[]);
        let line = refused(&old, &new).expect("refused");
        assert!(
            line.starts_with("log-level changed (info → debug), which a reload cannot apply"),
            "{line}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let c = config(BASE, &["--workers", "2"]);
        assert_eq!(c.workers, 2);
        assert_eq!(c.file_env, [("A".to_string(), "1".to_string())]);
        let c = config(BASE, &["--", "./other"]);
        assert_eq!(c.command, [std::ffi::OsString::from("./other")]);
    }
}
