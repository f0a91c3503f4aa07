//! Where each setting comes from: a flag, else an `RCLUSTER_*` variable,
//! else the configuration file, else the default (gunicorn's and most
//! tools' order: what is typed now beats what was written down before).
//!
//! The layers are merged as arguments, not as values: the file's keys are
//! turned into the flags they stand for, the chosen flags are parsed once
//! more by the same clap definitions, and so every value goes through one
//! parser whichever layer it came from.

use std::ffi::OsString;

use clap::ArgAction;
use clap::parser::ValueSource;

use super::file::{ConfigFile, Contents, Kind};

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// The configuration file, at this line.
    File(usize),
    /// This `RCLUSTER_*` variable.
    Variable(String),
    Flag,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(line) => write!(f, "file, line {line}"),
            Origin::Variable(name) => write!(f, "variable {name}"),
            Origin::Flag => f.write_str("flag"),
        }
    }
}

/// One setting in force: the option's long name (`command` for the
/// worker's command), its values as text, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub values: Vec<String>,
    pub origin: Origin,
}

/// The id clap gives the worker's command.
const COMMAND: &str = "command";

/// What `key` is on the command line, for the file's reader.
pub fn kind_of(command: &clap::Command, key: &str) -> Option<Kind> {
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(key))?;
    Some(match arg.get_action() {
        ArgAction::SetTrue => Kind::Flag,
        ArgAction::Append => Kind::Values,
        _ => Kind::Value,
    })
}

/// The merged arguments, and where each option's value came from.
pub type Merged = (Vec<OsString>, Vec<(String, Origin)>);

/// The arguments that stand for every layer merged: each option from the
/// command line (flag or variable) if given there, else from the file.
/// `matches`: the command line's, by `command` (which takes no binary
/// name). `Err`: `FILE:LINE: KEY = VALUE: what is wrong`.
pub fn merge(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    file: Option<(&ConfigFile, &Contents)>,
) -> Result<Merged, String> {
    if let Some((file, contents)) = file {
        check_values(command, file, contents)?;
    }
    let mut argv = Vec::new();
    let mut origins = Vec::new();
    let mut tail = None;
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(name) = arg.get_long().or((id == COMMAND).then_some(COMMAND)) else {
            continue;
        };
        let from_file = file.and_then(|(_, contents)| {
            if id == COMMAND {
                contents.command.clone()
            } else {
                contents
                    .entries
                    .iter()
                    .find(|e| e.key == name)
                    .map(|e| (e.line, e.values.clone()))
            }
        });
        let origin = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => Origin::Flag,
            Some(ValueSource::EnvVariable) => Origin::Variable(
                arg.get_env()
                    .map(|v| v.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            _ => match &from_file {
                Some((line, _)) => Origin::File(*line),
                None => {
                    origins.push((name.to_string(), Origin::Default));
                    continue;
                }
            },
        };
        let values: Vec<OsString> = match (&origin, arg.get_action()) {
            (Origin::File(_), _) => from_file.map(|(_, v)| v).unwrap_or_default(),
            (_, ArgAction::SetTrue) => Vec::new(),
            _ => matches
                .get_raw(id)
                .map(|raw| raw.map(OsString::from).collect())
                .unwrap_or_default(),
        };
        if id == COMMAND {
            tail = Some(values);
        } else if !matches!(arg.get_action(), ArgAction::SetTrue)
            || matches!(origin, Origin::File(_))
            || matches.get_flag(id)
        {
            argv.extend(flag_args(name, &values));
        }
        origins.push((name.to_string(), origin));
    }
    if let Some(words) = tail {
        argv.push("--".into());
        argv.extend(words);
    }
    Ok((argv, origins))
}

/// Every value of the file parsed as its flag would be: all at once, and
/// only if that fails one by one, to name the line at fault.
fn check_values(
    command: &clap::Command,
    file: &ConfigFile,
    contents: &Contents,
) -> Result<(), String> {
    let all: Vec<OsString> = contents
        .entries
        .iter()
        .flat_map(|e| flag_args(&e.key, &e.values))
        .collect();
    if command.clone().try_get_matches_from(&all).is_ok() {
        return Ok(());
    }
    for entry in &contents.entries {
        let args = flag_args(&entry.key, &entry.values);
        if let Err(e) = command.clone().try_get_matches_from(&args) {
            let shown: Vec<String> = entry
                .values
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            return Err(format!(
                "{}: {} = {}: {}",
                file.at(entry.line),
                entry.key,
                shown.join(", "),
                first_line_of(&e)
            ));
        }
    }
    // Each alone is good, together they are not (two that conflict).
    let e = command.clone().try_get_matches_from(&all).err();
    Err(format!(
        "{}: {}",
        file.path.display(),
        e.as_ref().map(first_line_of).unwrap_or_default()
    ))
}

/// Every setting in force, as text, from the merged arguments' matches.
pub fn settings(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    origins: Vec<(String, Origin)>,
) -> Vec<Setting> {
    origins
        .into_iter()
        .map(|(key, origin)| {
            let id = command
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .map_or(COMMAND, |a| a.get_id().as_str());
            let values = matches
                .get_raw(id)
                .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            Setting {
                key,
                values,
                origin,
            }
        })
        .collect()
}

/// `--KEY=VALUE` for each value, or `--KEY` for a flag.
fn flag_args(key: &str, values: &[OsString]) -> Vec<OsString> {
    if values.is_empty() {
        return vec![format!("--{key}").into()];
    }
    values
        .iter()
        .map(|value| {
            let mut arg = OsString::from(format!("--{key}="));
            arg.push(value);
            arg
        })
        .collect()
}

/// clap's message without its `error: ` and its tips.
fn first_line_of(e: &clap::Error) -> String {
    first_line(&e.render().to_string())
}

/// A message's first line, without clap's `error: `: a refusal is one line.
pub fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}
