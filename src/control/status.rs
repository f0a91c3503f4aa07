//! What `rcluster status` reports, built from the supervisor's state and
//! what the shell read or kept (each worker's memory and CPU, the last
//! lines of its stderr): the JSON the control socket sends. How a person
//! reads it is `view.rs`.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{Value, json};

use crate::control::usage::Usage;
use crate::supervisor::Supervisor;
use crate::supervisor::reload::ReloadOutcome;
use crate::supervisor::slot::{Slot, Worker};
use crate::vocab::{Exit, Generation, Pid, SlotId};

/// What the shell knows that the supervisor does not, fixed at start.
pub struct MasterInfo {
    pub name: String,
    pub started: Instant,
    pub listeners: Vec<(String, String)>,
    pub control: String,
    /// `--env-file`.
    pub env_file: Option<String>,
    /// The kept generations' releases, oldest first (the binary's; none
    /// for a library's master).
    pub releases: Vec<ReleaseView>,
    /// Live upgrades of the master: done, attempted, the last failure.
    pub upgrades: Value,
    /// The configuration the serving generation runs (`Config::settings_json`).
    pub config: Value,
}

/// One generation's release, as the shell kept it.
#[derive(Debug, Clone)]
pub struct ReleaseView {
    pub generation: Generation,
    /// A reload to it completed (or it was the first).
    pub served: bool,
    pub dir: String,
    /// Its workers change to `dir` (`--chdir`).
    pub chdir: bool,
    pub command: String,
    pub executable: String,
    /// The executable's device, inode and modification time (ns).
    pub executable_id: (u64, u64, i128),
    pub script: Option<String>,
    /// The env file's version it got.
    pub env_version: Option<String>,
    pub rollback_of: Option<Generation>,
    /// `--config`: the file's path and version.
    pub config: Option<(String, String)>,
    pub changed: Vec<String>,
}

impl ReleaseView {
    pub fn json(&self) -> Value {
        let (dev, ino, mtime_ns) = self.executable_id;
        json!({
            "generation": self.generation,
            "served": self.served,
            "dir": self.dir,
            "chdir": self.chdir,
            "command": self.command,
            "executable": {"path": self.executable, "dev": dev, "inode": ino, "mtime_ns": mtime_ns.to_string()},
            "script": self.script,
            "env_version": self.env_version,
            "rollback_of": self.rollback_of,
            "config": self.config.as_ref().map(|(path, version)| json!({"path": path, "version": version})),
            "changed": self.changed,
        })
    }
}

/// What the shell read or kept about the workers, when asked.
#[derive(Debug, Default)]
pub struct Observed {
    /// Each live worker's process tree, and its CPU use in percent of one
    /// CPU: since the previous look, or over its life.
    pub usage: HashMap<Pid, (Usage, f64)>,
    /// Each slot's last exited worker's last line on stderr.
    pub last_lines: HashMap<SlotId, String>,
    /// For `status --slot N`: the slot's live workers' last lines on
    /// stderr so far...
    pub tails: HashMap<Pid, Vec<String>>,
    /// ...and the slot's last exited worker, with its last lines.
    pub previous: Option<(Pid, Vec<String>)>,
    pub master_rss: Option<u64>,
    /// Of which anonymous (`usage::own_anonymous`).
    pub master_anon: Option<u64>,
}

/// What the shell has counted: things that went wrong at the edges.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Log lines that could not be written (`log/sink.rs`).
    pub log_lines_lost: u64,
    /// Notify datagrams dropped: not from a worker or not its user.
    pub notify_dropped: u64,
}

pub fn to_json(
    sup: &Supervisor,
    info: &MasterInfo,
    counts: Counts,
    observed: &Observed,
    detail: Option<SlotId>,
    now: Instant,
) -> Value {
    let ms = |since: Instant| now.saturating_duration_since(since).as_millis() as u64;
    let mut rows: Vec<&Worker> = sup.workers().collect();
    rows.sort_by_key(|w| (w.slot, w.generation, w.pid));
    // Sorted: the last row of a slot holds its newest generation.
    let newest: HashMap<SlotId, Generation> = rows.iter().map(|w| (w.slot, w.generation)).collect();
    let mut workers: Vec<Value> = rows
        .into_iter()
        .map(|w| {
            let mut row = worker_json(w, sup.slots().get(w.slot), observed, now);
            if let Some(health) = sup.health(w.pid) {
                row["probe"] = json!({
                    "failing": health.streak,
                    "last_failure": health.last_failure,
                    "passed": health.passed,
                });
            }
            if let Some(counts) = sup.responses(w.pid) {
                row["responses"] = responses_json(counts);
            }
            row
        })
        .collect();
    for (id, slot) in sup.slots().iter().enumerate() {
        // A slot waiting out its restart backoff has no process to show.
        if slot.is_empty() {
            workers.push(restarting_json(id, slot, observed, now));
            continue;
        }
        // A worker newer than every one the slot has (a new release's,
        // failed) gets a row of its own, not the row of the older worker
        // still serving.
        let newest = newest.get(&id).copied();
        if let Some(gone) = slot.last_exit_generation.filter(|&g| Some(g) > newest) {
            workers.push(exited_json(id, gone, slot, observed));
        }
    }
    json!({
        "ok": true,
        "master": master_json(sup, info, counts, observed, now),
        "reload": match sup.reload_in_progress() {
            Some(plan) => json!({"in_progress": true, "generation": plan.target, "elapsed_ms": ms(plan.started)}),
            None => json!({"in_progress": false}),
        },
        "last_reload": sup.last_reload().map_or(Value::Null, reload_json),
        "workers": workers,
        "slot": detail.map(|slot| slot_detail(sup, observed, slot)),
    })
}

fn worker_json(w: &Worker, slot: Option<&Slot>, observed: &Observed, now: Instant) -> Value {
    let usage = observed.usage.get(&w.pid);
    // Only the exit of a worker this one could have replaced is its
    // slot's history (see `exited_json`).
    let exit = slot.filter(|s| s.last_exit_generation.is_none_or(|g| g <= w.generation));
    json!({
        "slot": w.slot,
        "pid": w.pid.as_raw(),
        "generation": w.generation,
        "state": if stopped(w.pid) { "stopped" } else { w.state.name() },
        "ready_by": w.ready_by.map(|by| by.name()),
        "status": w.status,
        "uptime_ms": now.saturating_duration_since(w.started).as_millis() as u64,
        "rss_bytes": usage.map(|(u, _)| u.rss_bytes),
        "cpu_seconds": usage.map(|(u, _)| round(u.cpu_time().as_secs_f64())),
        "cpu_percent": usage.map(|&(_, percent)| round(percent)),
        "processes": usage.map(|(u, _)| u.processes),
        "restarts": slot.map_or(0, |s| s.restarts),
        "last_exit": exit.and_then(|s| s.last_exit.as_ref()).map(Exit::short),
        "last_exit_line": exit.and(observed.last_lines.get(&w.slot)),
    })
}

/// The row of a slot's last worker when it was newer than every worker
/// the slot still has: a reload's new worker that exited.
fn exited_json(id: SlotId, generation: Generation, slot: &Slot, observed: &Observed) -> Value {
    json!({
        "slot": id,
        "pid": null,
        "generation": generation,
        "state": "exited",
        "uptime_ms": null,
        "restarts": slot.restarts,
        "last_exit": slot.last_exit.as_ref().map(Exit::short),
        "last_exit_line": observed.last_lines.get(&id),
    })
}

fn restarting_json(id: SlotId, slot: &Slot, observed: &Observed, now: Instant) -> Value {
    let wait = slot.restart_at.map(|at| at.saturating_duration_since(now));
    json!({
        "slot": id,
        "pid": null,
        "generation": null,
        "state": "restarting",
        "uptime_ms": null,
        "restart_in_ms": wait.map(|wait| wait.as_millis() as u64),
        "restarts": slot.restarts,
        "last_exit": slot.last_exit.as_ref().map(Exit::short),
        "last_exit_line": observed.last_lines.get(&id),
    })
}

/// A worker's responses by status class, as its shim counted them.
fn responses_json(counts: &crate::vocab::Responses) -> Value {
    crate::vocab::CLASSES
        .iter()
        .zip(counts)
        .map(|(class, n)| (class.to_string(), json!(n)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `--probe`: what is probed, how many workers fail it, and whether
/// replacing them is paused (a shared outage).
fn probes_json(sup: &Supervisor) -> Value {
    let Some(probe) = sup.probe_policy() else {
        return Value::Null;
    };
    let failing = sup
        .workers()
        .filter(|w| w.state.is_attached())
        .filter(|w| sup.health(w.pid).is_some_and(|h| h.streak > 0))
        .count();
    json!({
        "path": probe.path,
        "period_ms": probe.period.as_millis() as u64,
        "failures": probe.failures,
        "failing": failing,
        "replacing_paused": sup.replacing_paused(),
    })
}

fn master_json(
    sup: &Supervisor,
    info: &MasterInfo,
    counts: Counts,
    observed: &Observed,
    now: Instant,
) -> Value {
    // What the ready workers run: after an aborted reload, not the target.
    let mut serving: Vec<u64> = sup
        .workers()
        .filter(|w| w.state.is_ready())
        .map(|w| w.generation)
        .collect();
    serving.sort_unstable();
    serving.dedup();
    let env_versions = |path: &String| {
        let running =
            |g: &u64| *g == sup.target_generation() || sup.workers().any(|w| w.generation == *g);
        let versions: serde_json::Map<String, Value> = info
            .releases
            .iter()
            .filter(|r| running(&r.generation))
            .filter_map(|r| Some((r.generation.to_string(), json!(r.env_version.as_ref()?))))
            .collect();
        json!({"path": path, "versions": versions})
    };
    let releases: Vec<Value> = info
        .releases
        .iter()
        .rev()
        .map(|r| {
            let mut release = r.json();
            release["serving"] = json!(r.generation == sup.serving_generation());
            release["workers"] = json!(
                sup.workers()
                    .filter(|w| w.generation == r.generation)
                    .count()
            );
            release
        })
        .collect();
    let listeners: Vec<Value> = info
        .listeners
        .iter()
        .map(|(name, addr)| json!({"name": name, "addr": addr}))
        .collect();
    json!({
        "name": info.name,
        "pid": std::process::id(),
        "version": crate::vocab::version(),
        "upgrades": info.upgrades,
        "uptime_ms": now.saturating_duration_since(info.started).as_millis() as u64,
        "workers": sup.slot_count(),
        "generation": sup.target_generation(),
        "serving_generations": serving,
        "serving_release": sup.serving_generation(),
        "releases": releases,
        "all_ready": sup.all_ready(),
        "rss_bytes": observed.master_rss,
        "anon_bytes": observed.master_anon,
        "log_lines_lost": counts.log_lines_lost,
        "notify_dropped": counts.notify_dropped,
        "stopping": !sup.is_running(),
        "control": info.control,
        "env_file": info.env_file.as_ref().map(env_versions),
        "probes": probes_json(sup),
        "listeners": listeners,
        "config": info.config,
    })
}

fn reload_json(outcome: &ReloadOutcome) -> Value {
    match outcome {
        ReloadOutcome::Complete {
            generation,
            duration,
        } => json!({
            "result": "complete", "generation": generation, "duration_ms": duration.as_millis() as u64,
        }),
        ReloadOutcome::Aborted { generation, cause } => json!({
            "result": "aborted", "generation": generation, "cause": cause,
        }),
        ReloadOutcome::Interrupted { generation } => json!({
            "result": "interrupted", "generation": generation,
        }),
    }
}

/// One slot in detail: its workers' last lines on stderr, and those of the
/// worker before them.
fn slot_detail(sup: &Supervisor, observed: &Observed, slot: SlotId) -> Value {
    let current: Vec<Value> = sup
        .workers()
        .filter(|w| w.slot == slot)
        .map(|w| {
            json!({
                "pid": w.pid.as_raw(),
                "generation": w.generation,
                "stderr": observed.tails.get(&w.pid).cloned().unwrap_or_default(),
            })
        })
        .collect();
    let previous = observed.previous.as_ref().map(|(pid, lines)| {
        json!({
            "pid": pid.as_raw(),
            "exit": sup.slots().get(slot).and_then(|s| s.last_exit.as_ref()).map(Exit::short),
            "stderr": lines,
        })
    });
    json!({"slot": slot, "workers": current, "previous": previous})
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Whether `pid` is stopped (`SIGSTOP`, a debugger): it serves nothing,
/// whatever state the master has it in.
fn stopped(pid: crate::vocab::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
    })
}
