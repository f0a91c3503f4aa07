//! The environment every worker gets: its sockets in each protocol servers
//! already read (systemd's `LISTEN_FDS`, server_starter's, einhorn's), where
//! to say `READY=1`, its slot and generation (also as PM2's
//! `NODE_APP_INSTANCE`), and the master's own environment without any of
//! those, so a worker never sees its master's `LISTEN_FDS`.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::Duration;

use crate::sockets::listen::Named;
use crate::vocab::{Generation, SlotId};

/// Variables rcluster sets for workers; inherited values are dropped so a
/// worker never sees its master's (e.g. systemd's `LISTEN_FDS`). `EINHORN_FD_<n>`
/// is matched by prefix.
const WORKER_VARS: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "RCLUSTER_WORKER_ID",
    "RCLUSTER_GENERATION",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "SERVER_STARTER_PORT",
    "SERVER_STARTER_GENERATION",
    "EINHORN_FD_COUNT",
    "NODE_APP_INSTANCE",
];

fn is_worker_var(key: &OsStr) -> bool {
    WORKER_VARS.iter().any(|v| OsStr::new(v) == key) || key.as_bytes().starts_with(b"EINHORN_FD_")
}

/// The sockets, in every protocol servers already read: systemd's
/// `LISTEN_FDS` (the worker's own pid goes in `LISTEN_PID`), server_starter's
/// `SERVER_STARTER_PORT` (`addr=fd;path=fd`) and einhorn's `EINHORN_FD_*`.
pub fn listen_vars(listeners: &[Named]) -> Vec<(String, Value)> {
    let text = |k: &str, v: String| (k.to_string(), Value::Text(v));
    let fd = |i: usize| (3 + i).to_string();
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    let server_starter: Vec<String> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "{}={}",
                l.local.strip_prefix("unix:").unwrap_or(&l.local),
                fd(i)
            )
        })
        .collect();
    let mut vars = vec![
        text("LISTEN_FDS", listeners.len().to_string()),
        ("LISTEN_PID".to_string(), Value::OwnPid),
        text("LISTEN_FDNAMES", names.join(":")),
        text("SERVER_STARTER_PORT", server_starter.join(";")),
        text("EINHORN_FD_COUNT", listeners.len().to_string()),
    ];
    vars.extend((0..listeners.len()).map(|i| text(&format!("EINHORN_FD_{i}"), fd(i))));
    vars
}

/// Whether `key` is one of the variables that say where the listeners are:
/// they differ between generations whose listeners differ.
pub fn is_listen_var(key: &str) -> bool {
    [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "SERVER_STARTER_PORT",
        "EINHORN_FD_COUNT",
    ]
    .contains(&key)
        || key.starts_with("EINHORN_FD_")
}

/// Where to say `READY=1`, and the watchdog if one is set.
pub fn notify_vars(socket: String, watchdog: Option<Duration>) -> Vec<(String, Value)> {
    let mut vars = vec![("NOTIFY_SOCKET".to_string(), Value::Text(socket))];
    vars.extend(watchdog_vars(watchdog));
    vars
}

/// The watchdog's variables (none without one).
pub fn watchdog_vars(watchdog: Option<Duration>) -> Vec<(String, Value)> {
    let Some(watchdog) = watchdog else {
        return Vec::new();
    };
    vec![
        (
            "WATCHDOG_USEC".to_string(),
            Value::Text(watchdog.as_micros().to_string()),
        ),
        ("WATCHDOG_PID".to_string(), Value::OwnPid),
    ]
}

/// What differs between workers: the slot (also as PM2's
/// `NODE_APP_INSTANCE`) and the generation (also as server_starter's).
pub fn slot_vars(slot: SlotId, generation: Generation) -> [(&'static str, String); 4] {
    [
        ("RCLUSTER_WORKER_ID", slot.to_string()),
        ("NODE_APP_INSTANCE", slot.to_string()),
        ("RCLUSTER_GENERATION", generation.to_string()),
        ("SERVER_STARTER_GENERATION", generation.to_string()),
    ]
}

/// One variable of a worker's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    /// The worker's own pid, known only after fork (`LISTEN_PID`).
    OwnPid,
}

/// What every worker of one master gets besides its slot's own variables.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    /// The master's environment without the variables rcluster sets,
    /// as `KEY=value` entries.
    pub inherited: Vec<CString>,
    /// The variables rcluster sets for every worker.
    pub vars: Vec<(String, Value)>,
}

impl WorkerEnv {
    pub fn new(vars: Vec<(String, Value)>) -> WorkerEnv {
        WorkerEnv::with_file(vars, &[])
    }

    /// With the variables of an env file, which replace the master's own of
    /// the same name; rcluster's (`LISTEN_FDS`…) are never replaced.
    pub fn with_file(vars: Vec<(String, Value)>, file: &[(String, String)]) -> WorkerEnv {
        let from_file = |key: &OsStr| file.iter().any(|(k, _)| OsStr::new(k) == key);
        let entry = |key: Vec<u8>, value: Vec<u8>| {
            let mut entry = key;
            entry.push(b'=');
            entry.extend(value);
            CString::new(entry).ok()
        };
        let inherited = std::env::vars_os()
            .filter(|(k, _)| !is_ours(k, &vars) && !from_file(k))
            .filter_map(|(k, v)| entry(k.into_vec(), v.into_vec()))
            .chain(
                file.iter()
                    .filter(|(k, _)| !is_ours(OsStr::new(k), &vars))
                    .filter_map(|(k, v)| entry(k.clone().into_bytes(), v.clone().into_bytes())),
            )
            .collect();
        WorkerEnv { inherited, vars }
    }
}

/// A variable rcluster sets (or one of `vars`): never inherited.
pub fn is_ours(key: &OsStr, vars: &[(String, Value)]) -> bool {
    is_worker_var(key) || vars.iter().any(|(v, _)| OsStr::new(v) == key)
}
