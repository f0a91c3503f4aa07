//! The binary's releases: how each new generation's release is made (the
//! env file read again, `--chdir` and the command resolved now), which
//! generation ran which release and which of them served, and where a
//! rollback goes. The newest few generations are kept, and any that a
//! worker still runs or that serves.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::launch::release::Release;
use crate::shell::log::Log;
use crate::sockets::listen::{ListenSpec, Named};
use crate::start::changes;
use crate::start::cli::configure;
use crate::start::config::Config;
use crate::start::envfile::{Changes, EnvFile, EnvSource};
use crate::supervisor::record::Record;
use crate::vocab::Generation;

/// Generations kept besides those that serve or run: what `rollback
/// --to` may name.
pub const KEEP: usize = 5;

/// One kept generation.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    pub release: Release,
    /// A reload to it completed (or it was the first).
    pub served: bool,
}

pub struct Releases {
    /// `--chdir`, absolute; its symlinks are resolved for each generation.
    chdir: Option<PathBuf>,
    command: Vec<OsString>,
    /// `--env-file`: how to read it again, and its variables as last read.
    pub env: Option<(EnvSource, Vec<(String, String)>)>,
    /// Without `--chdir`: the path the master's working directory was
    /// reached by (`$PWD`), when that is not the directory's own path.
    reached_as: Option<PathBuf>,
    kept: BTreeMap<Generation, Kept>,
    /// With `--config`: the run's arguments as typed, merged with the file
    /// again at each reload.
    given: Option<Vec<OsString>>,
    /// Each kept generation's configuration as merged when it was made,
    /// so a reload merges only the new file (after a live upgrade, the
    /// older ones are merged again when asked for).
    configs: BTreeMap<Generation, Config>,
}

impl Releases {
    /// With `--config`: generation 1 runs `config`, and each reload reads
    /// the file again.
    /// `listeners`: every listener the master has (its workers' fd 3, 4, …).
    pub fn configured(&mut self, config: &Config, listeners: Vec<Named>) {
        if config.file.is_none() {
            return;
        }
        self.given = Some(config.given.clone());
        self.configs.insert(1, config.clone());
        if let Some(kept) = self.kept.get_mut(&1) {
            kept.release.env = worker_env(&config.file_env, &kept.release.env);
            kept.release.config.clone_from(&config.file);
            kept.release.listeners = Some(listeners);
            kept.release.watchdog = config.watchdog;
        }
    }

    /// Generation 1's release, resolved at start: a `--chdir` that leads
    /// nowhere, or a command that cannot run there, stops rcluster now.
    pub fn start(
        chdir: Option<&Path>,
        command: &[OsString],
        env: Option<(EnvSource, EnvFile)>,
    ) -> Result<Releases, Error> {
        let cwd =
            std::env::current_dir().map_err(|e| Error::os("reading the working directory", e))?;
        // Relative to where rcluster was started, once: `--chdir current`.
        let chdir = chdir.map(|dir| cwd.join(dir));
        let reached_as = match &chdir {
            Some(_) => None,
            None => std::env::var_os("PWD")
                .map(PathBuf::from)
                .filter(|pwd| pwd.is_absolute() && *pwd != cwd)
                .filter(|pwd| std::fs::canonicalize(pwd).is_ok_and(|real| real == cwd)),
        };
        let mut release = Release::resolve(chdir.as_deref(), command)?;
        let env = env.map(|(source, file)| {
            release.env = file.vars.clone();
            release.env_version = Some(file.version);
            (source, file.vars)
        });
        let mut kept = BTreeMap::new();
        kept.insert(
            1,
            Kept {
                release,
                served: true,
            },
        );
        Ok(Releases {
            chdir,
            command: command.to_vec(),
            env,
            reached_as,
            kept,
            given: None,
            configs: BTreeMap::new(),
        })
    }

    pub fn get(&self, generation: Generation) -> Option<&Release> {
        self.kept.get(&generation).map(|k| &k.release)
    }

    /// Every kept generation, oldest first.
    pub fn kept(&self) -> impl Iterator<Item = (Generation, &Kept)> {
        self.kept.iter().map(|(&g, k)| (g, k))
    }

    /// A reload's release: with `--config`, the file read again and
    /// merged with the flags once more (a setting only a restart applies
    /// refuses the reload); the env file read again (its changes logged),
    /// `--chdir` and the command resolved now. `Err`: why the reload
    /// cannot start (nothing has changed).
    /// `serving`: the generation that serves (the worker count changes
    /// when the file's differs from the one it ran with).
    pub fn next(&mut self, serving: Generation, log: &Log) -> Result<Next, String> {
        let reconfigured = match &self.given {
            Some(given) => {
                let (old, new) = (self.newest_config()?, configure(given, None, true));
                let new = new.map_err(|e| one_line(&e))?;
                if let Some(line) = changes::refused(&old, &new) {
                    return Err(line);
                }
                let cwd = std::env::current_dir()
                    .map_err(|e| format!("reading the working directory: {e}"))?;
                self.chdir = new.chdir.as_ref().map(|dir| cwd.join(dir));
                self.command.clone_from(&new.command);
                // A path read once (a pipe) stays as it was read at start.
                if self.env.as_ref().map(|(source, _)| &source.path) != new.env_file.as_ref() {
                    self.env = new.env_file.clone().map(|path| {
                        let source = EnvSource { path, once: None };
                        (source, Vec::new())
                    });
                }
                let workers = self.workers_change(serving, &new);
                let listen = self.listen_change(&old, &new)?;
                Some((changes::describe(&old, &new), workers, listen, new))
            }
            None => None,
        };
        let mut env = None;
        if let Some((source, vars)) = &mut self.env {
            let file = source.reread().map_err(|e| e.message)?;
            let changes = Changes::between(vars, &file.vars);
            log.emit(&Record::EnvFileRead {
                path: source.path.display().to_string(),
                added: changes.added,
                removed: changes.removed,
                changed: changes.changed,
                emptied: !vars.is_empty() && file.vars.is_empty(),
            });
            vars.clone_from(&file.vars);
            env = Some((file.vars, file.version));
        }
        if let Some(reached_as) = &self.reached_as
            && let Ok(now) = std::fs::canonicalize(reached_as)
            && let Ok(cwd) = std::env::current_dir()
            && now != cwd
        {
            log.emit(&Record::WorkdirMoved {
                cwd: cwd.display().to_string(),
                reached_as: reached_as.display().to_string(),
                now: now.display().to_string(),
            });
        }
        let mut release =
            Release::resolve(self.chdir.as_deref(), &self.command).map_err(|e| e.to_string())?;
        if let Some((vars, version)) = env {
            release.env = vars;
            release.env_version = Some(version);
        }
        let Some((changed, workers, listen, config)) = reconfigured else {
            return Ok(Next {
                release,
                config: None,
                workers: None,
                listen: None,
            });
        };
        release.env = worker_env(&config.file_env, &release.env);
        release.config.clone_from(&config.file);
        release.changed = changed;
        release.listeners = self.newest_listeners();
        release.watchdog = config.watchdog;
        Ok(Next {
            release,
            config: Some(Box::new(config)),
            workers,
            listen,
        })
    }

    /// The listeners of the newest generation.
    fn newest_listeners(&self) -> Option<Vec<Named>> {
        self.kept.values().next_back()?.release.listeners.clone()
    }

    /// The worker count `new` brings: its own if it differs from the one
    /// the serving generation ran with (a count changed at run time, by
    /// `rcluster scale`, stays until the file's changes).
    fn workers_change(&self, serving: Generation, new: &Config) -> Option<usize> {
        let before = self.config_of(serving).map(|c| c.workers);
        (before != Some(new.workers)).then_some(new.workers)
    }

    /// The listeners a new configuration gives its generation, to be found
    /// among those open or bound (`shell/master/listeners.rs`); none under
    /// `--balance reuseport`, whose sockets are made at start: `Err` if it
    /// changes them there.
    fn listen_change(&self, old: &Config, new: &Config) -> Result<Option<ListenChange>, String> {
        if new.reuseport {
            if old.listen == new.listen {
                return Ok(None);
            }
            return Err(
                "listen changed, which a reload cannot apply with --balance reuseport \
                        (each slot's sockets are made at start): restart rcluster to apply it, \
                        or put it back"
                    .into(),
            );
        }
        let before = self.newest_listeners().unwrap_or_default();
        let given = before.len().saturating_sub(old.listen.len());
        Ok(Some(ListenChange {
            before,
            given,
            old: old.listen.clone(),
            new: new.listen.clone(),
            backlog: new.backlog,
        }))
    }

    /// The configuration `generation` runs, with `--config`.
    pub fn config_of(&self, generation: Generation) -> Option<Config> {
        if let Some(config) = self.configs.get(&generation) {
            return Some(config.clone());
        }
        let given = self.given.as_deref()?;
        let file = self.get(generation)?.config.clone()?;
        configure(given, Some(file), true).ok()
    }

    /// The configuration the newest generation runs (`--config` only).
    fn newest_config(&self) -> Result<Config, String> {
        let newest = self.kept.keys().next_back().copied().unwrap_or(1);
        if let Some(config) = self.configs.get(&newest) {
            return Ok(config.clone());
        }
        let given = self.given.as_deref().unwrap_or_default();
        let file = self.get(newest).and_then(|r| r.config.clone());
        configure(given, file, true).map_err(|e| one_line(&e))
    }

    /// A rollback's release: generation `to`'s, or else the one that
    /// served before the serving one (before the one it repeats, if it is
    /// itself a rollback), as it was, environment included.
    pub fn rollback(&self, serving: Generation, to: Option<Generation>) -> Result<Next, String> {
        let source = match to {
            Some(to) => to,
            None => {
                let from = self
                    .get(serving)
                    .and_then(|r| r.rollback_of)
                    .unwrap_or(serving);
                let current = self.get(serving);
                self.kept
                    .range(..from)
                    .rev()
                    .find(|(_, k)| k.served && current.is_none_or(|c| !k.release.same_as(c)))
                    .map(|(&g, _)| g)
                    .ok_or_else(|| {
                        format!(
                            "no release served before generation {from}: nothing to roll back to"
                        )
                    })?
            }
        };
        let kept = self.get(source).ok_or_else(|| {
            let list: Vec<String> = self.kept.keys().map(u64::to_string).collect();
            format!(
                "generation {source} is not kept (kept: {}; see rcluster status)",
                list.join(", ")
            )
        })?;
        kept.still_there()
            .map_err(|gone| format!("generation {source}'s release cannot run: {gone}"))?;
        let mut release = kept.clone();
        release.rollback_of = Some(kept.rollback_of.unwrap_or(source));
        // Its whole configuration: the file as it was then.
        let (mut workers, mut listen) = (None, None);
        let config = match (&self.given, &release.config) {
            (Some(given), Some(file)) => {
                let old = self.newest_config()?;
                let config = configure(given, Some(file.clone()), true).map_err(|e| {
                    format!("generation {source}'s configuration: {}", one_line(&e))
                })?;
                if let Some(line) = changes::refused(&old, &config) {
                    return Err(line);
                }
                release.changed = changes::describe(&old, &config);
                workers = self.workers_change(serving, &config);
                listen = self.listen_change(&old, &config)?;
                if listen.is_none() {
                    release.listeners = self.newest_listeners();
                }
                Some(Box::new(config))
            }
            _ => None,
        };
        Ok(Next {
            release,
            config,
            workers,
            listen,
        })
    }

    /// Keeps `release` as `generation`'s (with its configuration, from
    /// `--config`), and logs what it runs.
    pub fn add(
        &mut self,
        generation: Generation,
        release: Release,
        config: Option<Config>,
        log: &Log,
    ) {
        if let Some(config) = config {
            self.configs.insert(generation, config);
        }
        let same_as = self
            .kept
            .iter()
            .rev()
            .find(|(_, k)| k.release.same_files(&release))
            .map(|(&g, _)| g);
        log.emit(&Record::Release {
            generation,
            dir: release.dir.display().to_string(),
            command: release.command_line(),
            executable: release.command.path().display().to_string(),
            same_as: same_as.filter(|_| release.rollback_of.is_none()),
            rollback_of: release.rollback_of,
            config: release
                .config
                .as_ref()
                .map(|c| (c.path.display().to_string(), c.digest.clone())),
            changed: release.changed.clone(),
        });
        self.kept.insert(
            generation,
            Kept {
                release,
                served: false,
            },
        );
    }

    /// A reload to `generation` completed.
    pub fn served(&mut self, generation: Generation) {
        if let Some(kept) = self.kept.get_mut(&generation) {
            kept.served = true;
        }
    }

    /// Forgets what no worker can run again: all but the newest [`KEEP`]
    /// generations, the serving one and those in `live`. Returns the
    /// generations forgotten.
    pub fn prune(&mut self, serving: Generation, live: &BTreeSet<Generation>) -> Vec<Generation> {
        let newest: BTreeSet<Generation> = self.kept.keys().rev().take(KEEP).copied().collect();
        let gone: Vec<Generation> = self
            .kept
            .keys()
            .filter(|g| !newest.contains(g) && **g != serving && !live.contains(g))
            .copied()
            .collect();
        for g in &gone {
            self.kept.remove(g);
            self.configs.remove(g);
        }
        gone
    }
}

/// A new generation: its release, and with `--config` its configuration.
pub struct Next {
    pub release: Release,
    pub config: Option<Box<Config>>,
    /// The worker count, if the configuration changes it.
    pub workers: Option<usize>,
    /// The listeners, if the configuration changes them.
    pub listen: Option<ListenChange>,
}

/// A new generation's addresses: the newest generation's listeners and the
/// specs they were bound from, the specs now.
#[derive(Debug)]
pub struct ListenChange {
    pub before: Vec<Named>,
    /// How many of `before` the master was given (systemd's sockets),
    /// ahead of the configured ones: every generation keeps them.
    pub given: usize,
    pub old: Vec<ListenSpec>,
    pub new: Vec<ListenSpec>,
    pub backlog: u32,
}

/// The workers' variables: the file's `[env]`, then the env file's, which
/// win (the env file is the one kept out of the repository: secrets).
fn worker_env(table: &[(String, String)], env_file: &[(String, String)]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = table
        .iter()
        .filter(|(name, _)| !env_file.iter().any(|(n, _)| n == name))
        .cloned()
        .collect();
    vars.extend(env_file.iter().cloned());
    vars
}

/// An error's first line: a reload's refusal is one line.
fn one_line(e: &Error) -> String {
    crate::start::layers::first_line(&e.to_string())
}

/// `--env-file` written down: its path; what it held at start, if it is
/// read once (and what kind of file it is); its variables as last read.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct EnvSnapshot(PathBuf, Option<(String, EnvFile)>, Vec<(String, String)>);

/// [`Releases`] written down for a live upgrade.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReleasesSnapshot {
    chdir: Option<PathBuf>,
    command: Vec<OsString>,
    env: Option<EnvSnapshot>,
    reached_as: Option<PathBuf>,
    kept: BTreeMap<Generation, Kept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    given: Option<Vec<OsString>>,
}

impl ReleasesSnapshot {
    /// The configuration file the newest generation runs: what the new
    /// image of a live upgrade runs too, not the file as it is now.
    pub fn config_in_force(&self) -> Option<&crate::start::file::ConfigFile> {
        self.kept.values().next_back()?.release.config.as_ref()
    }
}

impl Releases {
    pub fn snapshot(&self) -> ReleasesSnapshot {
        ReleasesSnapshot {
            chdir: self.chdir.clone(),
            command: self.command.clone(),
            env: self.env.as_ref().map(|(source, vars)| {
                let once = source
                    .once
                    .as_ref()
                    .map(|(kind, file)| (kind.to_string(), file.clone()));
                EnvSnapshot(source.path.clone(), once, vars.clone())
            }),
            reached_as: self.reached_as.clone(),
            given: self.given.clone(),
            kept: self
                .kept
                .iter()
                .map(|(&g, k)| {
                    let kept = Kept {
                        release: k.release.clone(),
                        served: k.served,
                    };
                    (g, kept)
                })
                .collect(),
        }
    }

    pub fn restore(snapshot: ReleasesSnapshot) -> Releases {
        let env = snapshot.env.map(|EnvSnapshot(path, once, vars)| {
            let once = once.map(|(kind, file)| (crate::start::envfile::kind_named(&kind), file));
            (EnvSource { path, once }, vars)
        });
        Releases {
            chdir: snapshot.chdir,
            command: snapshot.command,
            env,
            reached_as: snapshot.reached_as,
            kept: snapshot.kept,
            given: snapshot.given,
            configs: BTreeMap::new(),
        }
    }
}
