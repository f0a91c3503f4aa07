//! What `rcluster status` reports, built from the supervisor's state and
//! what the shell read or kept (each worker's memory and CPU, the last
//! lines of its stderr): the JSON the control socket sends, and the table
//! the client prints from it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde_json::{Value, json};

use crate::control::usage::Usage;
use crate::supervisor::Supervisor;
use crate::supervisor::reload::ReloadOutcome;
use crate::vocab::{Exit, Pid, SlotId, count, human, megabytes};

/// What the shell knows that the supervisor does not, fixed at start.
pub struct MasterInfo {
    pub name: String,
    pub started: Instant,
    pub listeners: Vec<(String, String)>,
    pub control: String,
    /// `--env-file`, and the version of it each generation got.
    pub env_file: Option<String>,
    pub env_versions: std::collections::BTreeMap<crate::vocab::Generation, String>,
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
    let last_line = |slot: SlotId| observed.last_lines.get(&slot).cloned();
    let mut workers: Vec<Value> = Vec::new();
    let mut rows: Vec<_> = sup.workers().collect();
    rows.sort_by_key(|w| (w.slot, w.generation, w.pid));
    for w in rows {
        let slot = sup.slots().get(w.slot);
        let usage = observed.usage.get(&w.pid);
        workers.push(json!({
            "slot": w.slot,
            "pid": w.pid.as_raw(),
            "generation": w.generation,
            "state": if stopped(w.pid) { "stopped" } else { w.state.name() },
            "ready_by": w.ready_by.map(|by| by.name()),
            "status": w.status,
            "uptime_ms": ms(w.started),
            "rss_bytes": usage.map(|(u, _)| u.rss_bytes),
            "cpu_seconds": usage.map(|(u, _)| round(u.cpu_time().as_secs_f64())),
            "cpu_percent": usage.map(|&(_, percent)| round(percent)),
            "processes": usage.map(|(u, _)| u.processes),
            "restarts": slot.map_or(0, |s| s.restarts),
            "last_exit": slot.and_then(|s| s.last_exit.as_ref()).map(Exit::short),
            "last_exit_line": last_line(w.slot),
        }));
    }
    // A slot waiting out its restart backoff has no process to show.
    for (id, slot) in sup.slots().iter().enumerate() {
        if slot.is_empty() {
            workers.push(json!({
                "slot": id,
                "pid": null,
                "generation": null,
                "state": "restarting",
                "uptime_ms": null,
                "restart_in_ms": slot.restart_at.map(|at| at.saturating_duration_since(now).as_millis() as u64),
                "restarts": slot.restarts,
                "last_exit": slot.last_exit.as_ref().map(Exit::short),
                "last_exit_line": last_line(id),
            }));
        }
    }
    let ready = sup.all_ready();
    // What the ready workers run: after an aborted reload, not the target.
    let mut serving: Vec<u64> = sup
        .workers()
        .filter(|w| w.state.is_ready())
        .map(|w| w.generation)
        .collect();
    serving.sort_unstable();
    serving.dedup();
    json!({
        "ok": true,
        "master": {
            "name": info.name,
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_ms": ms(info.started),
            "workers": sup.slot_count(),
            "generation": sup.target_generation(),
            "serving_generations": serving,
            "all_ready": ready,
            "rss_bytes": observed.master_rss,
            "log_lines_lost": counts.log_lines_lost,
            "notify_dropped": counts.notify_dropped,
            "stopping": !sup.is_running(),
            "control": info.control,
            "env_file": info.env_file.as_ref().map(|path| json!({
                "path": path,
                "versions": info.env_versions.iter()
                    .filter(|(g, _)| **g == sup.target_generation() || sup.workers().any(|w| w.generation == **g))
                    .map(|(g, v)| (g.to_string(), json!(v)))
                    .collect::<serde_json::Map<String, Value>>(),
            })),
            "listeners": info.listeners.iter().map(|(name, addr)| json!({"name": name, "addr": addr})).collect::<Vec<_>>(),
        },
        "reload": match sup.reload_in_progress() {
            Some(plan) => json!({"in_progress": true, "generation": plan.target, "elapsed_ms": ms(plan.started)}),
            None => json!({"in_progress": false}),
        },
        "last_reload": match sup.last_reload() {
            Some(ReloadOutcome::Complete { generation, duration }) => json!({
                "result": "complete", "generation": generation, "duration_ms": duration.as_millis() as u64,
            }),
            Some(ReloadOutcome::Aborted { generation, cause }) => json!({
                "result": "aborted", "generation": generation, "cause": cause,
            }),
            Some(ReloadOutcome::Interrupted { generation }) => json!({
                "result": "interrupted", "generation": generation,
            }),
            None => Value::Null,
        },
        "workers": workers,
        "slot": detail.map(|slot| slot_detail(sup, observed, slot)),
    })
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

/// The `rcluster status` table, like `pm2 ls`.
pub fn table(status: &Value) -> String {
    let ms = |v: &Value| {
        v.as_u64()
            .map(|ms| human(std::time::Duration::from_millis(ms)))
    };
    let master = &status["master"];
    let target = master["generation"].as_u64().unwrap_or_default();
    let serving: Vec<u64> = master["serving_generations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let generation = match serving.as_slice() {
        [one] if *one == target => format!("generation {target}"),
        [] => format!("generation {target} (none ready)"),
        some => {
            let list: Vec<String> = some.iter().map(u64::to_string).collect();
            format!("serving generation {}, target {target}", list.join(" and "))
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "master   {}, pid {}, up {}{}, {}, {generation}, rcluster {}",
        master["name"].as_str().unwrap_or("-"),
        master["pid"],
        ms(&master["uptime_ms"]).unwrap_or_default(),
        master["rss_bytes"]
            .as_u64()
            .map_or_else(String::new, |rss| format!(", rss {}", megabytes(rss))),
        count(
            master["workers"].as_u64().unwrap_or_default() as usize,
            "worker"
        ),
        master["version"].as_str().unwrap_or_default()
    );
    for listener in master["listeners"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "listen   {} {}",
            listener["name"].as_str().unwrap_or_default(),
            listener["addr"].as_str().unwrap_or_default()
        );
    }
    let env_file = &master["env_file"];
    if let Some(path) = env_file["path"].as_str() {
        let versions = env_file["versions"].as_object().into_iter().flatten();
        let versions: Vec<String> = versions
            .map(|(generation, hash)| {
                let hash = hash.as_str().unwrap_or_default();
                format!("{} in generation {generation}", &hash[..hash.len().min(8)])
            })
            .collect();
        let _ = writeln!(out, "env      {path}: {}", versions.join(", "));
    }
    let reload = &status["reload"];
    let last = &status["last_reload"];
    if reload["in_progress"] == true {
        let _ = writeln!(
            out,
            "reload   in progress: to generation {}, for {}",
            reload["generation"],
            ms(&reload["elapsed_ms"]).unwrap_or_default()
        );
    } else if last["result"] == "complete" {
        let _ = writeln!(
            out,
            "reload   last: complete, generation {}, in {}",
            last["generation"],
            ms(&last["duration_ms"]).unwrap_or_default()
        );
    } else if last["result"] == "aborted" {
        let _ = writeln!(
            out,
            "reload   last: ABORTED, generation {}: {}",
            last["generation"],
            last["cause"].as_str().unwrap_or_default()
        );
    }
    let lost = master["log_lines_lost"].as_u64().unwrap_or_default();
    if lost > 0 {
        let _ = writeln!(
            out,
            "log      {} lost (the log's destination failed or stalled)",
            count(lost as usize, "line")
        );
    }
    let dropped = master["notify_dropped"].as_u64().unwrap_or_default();
    if dropped > 0 {
        let _ = writeln!(
            out,
            "notify   {} dropped (not from a worker, or not its user)",
            count(dropped as usize, "message")
        );
    }
    if master["stopping"] == true {
        let _ = writeln!(out, "STOPPING");
    }
    let mut rows = vec![
        [
            "slot",
            "pid",
            "gen",
            "state",
            "uptime",
            "rss",
            "cpu",
            "restarts",
            "last exit",
        ]
        .map(String::from),
    ];
    for w in status["workers"].as_array().into_iter().flatten() {
        let dash = || "-".to_string();
        let state = match w["restart_in_ms"].as_u64() {
            Some(ms) => format!("restart in {}", human(std::time::Duration::from_millis(ms))),
            None => w["state"].as_str().unwrap_or_default().to_string(),
        };
        rows.push([
            w["slot"].to_string(),
            w["pid"].as_i64().map_or_else(dash, |p| p.to_string()),
            w["generation"]
                .as_u64()
                .map_or_else(dash, |g| g.to_string()),
            state,
            ms(&w["uptime_ms"]).unwrap_or_else(dash),
            w["rss_bytes"].as_u64().map_or_else(dash, megabytes),
            w["cpu_percent"]
                .as_f64()
                .map_or_else(dash, |p| format!("{p:.1}%")),
            w["restarts"].to_string(),
            last_exit(w),
        ]);
    }
    out.push('\n');
    out.push_str(&columns(
        &rows,
        &[false, false, false, false, true, true, true, true, false],
    ));
    out
}

/// How the slot's last worker ended, and the last line it wrote (cut to
/// fit a terminal: `rcluster status --slot N` shows its last lines whole).
fn last_exit(w: &Value) -> String {
    const SHOWN: usize = 48;
    let exit = w["last_exit"].as_str().unwrap_or("-");
    match w["last_exit_line"].as_str().map(str::trim) {
        Some(line) if !line.is_empty() => {
            let mut shown: String = line.chars().take(SHOWN).collect();
            if shown.len() < line.len() {
                shown.push('…');
            }
            format!("{exit}: {shown}")
        }
        _ => exit.to_string(),
    }
}

/// `rcluster status --slot N`: the slot's workers and the last lines on
/// stderr of each, and of the worker before them.
pub fn slot_view(status: &Value) -> String {
    let detail = &status["slot"];
    let slot = detail["slot"].as_u64().unwrap_or_default();
    let mut out = String::new();
    let rows: Vec<&Value> = status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["slot"].as_u64() == Some(slot))
        .collect();
    for w in &rows {
        if w["pid"].is_null() {
            let _ = writeln!(
                out,
                "slot {slot}: no worker, restart in {}, {} (last exit: {})",
                w["restart_in_ms"]
                    .as_u64()
                    .map(|ms| human(std::time::Duration::from_millis(ms)))
                    .unwrap_or_else(|| "-".into()),
                count(
                    w["restarts"].as_u64().unwrap_or_default() as usize,
                    "restart"
                ),
                w["last_exit"].as_str().unwrap_or("none"),
            );
            continue;
        }
        let _ = writeln!(
            out,
            "slot {slot}: pid {}, generation {}, {}, up {}, rss {}, cpu {}, {} (last exit: {})",
            w["pid"],
            w["generation"],
            w["state"].as_str().unwrap_or_default(),
            w["uptime_ms"]
                .as_u64()
                .map(|ms| human(std::time::Duration::from_millis(ms)))
                .unwrap_or_else(|| "-".into()),
            w["rss_bytes"]
                .as_u64()
                .map_or_else(|| "-".into(), megabytes),
            w["cpu_percent"]
                .as_f64()
                .map_or_else(|| "-".into(), |p| format!("{p:.1}%")),
            count(
                w["restarts"].as_u64().unwrap_or_default() as usize,
                "restart"
            ),
            w["last_exit"].as_str().unwrap_or("none"),
        );
        if let Some(said) = w["status"].as_str() {
            let _ = writeln!(out, "  STATUS={said}");
        }
    }
    let lines = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(|l| format!("  | {l}")))
            .collect()
    };
    if let Some(previous) = detail["previous"].as_object() {
        let said = lines(&previous["stderr"]);
        let _ = writeln!(
            out,
            "\nthe worker before (pid {}, {}), its last lines on stderr:",
            previous["pid"],
            previous["exit"].as_str().unwrap_or("exit unknown"),
        );
        if said.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for line in said {
            let _ = writeln!(out, "{line}");
        }
    }
    for w in detail["workers"].as_array().into_iter().flatten() {
        let said = lines(&w["stderr"]);
        let _ = writeln!(out, "\npid {}, its last lines on stderr so far:", w["pid"]);
        if said.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for line in said {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// Rows as columns as wide as their widest cell, two spaces apart; the
/// columns marked `true` aligned right.
pub fn columns<const N: usize>(rows: &[[String; N]], right: &[bool; N]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let width = if i + 1 == N { 0 } else { widths[i] };
            let _ = if right[i] {
                write!(line, "{cell:>width$}")
            } else {
                write!(line, "{cell:<width$}")
            };
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_fits_its_widest_cell() {
        let status = json!({
            "master": {"name": "api", "pid": 7, "uptime_ms": 2000, "workers": 1, "generation": 3,
                       "serving_generations": [2], "version": "0", "listeners": []},
            "reload": {"in_progress": false},
            "last_reload": {"result": "aborted", "generation": 3, "cause": "exited"},
            "workers": [
                {"slot": 0, "pid": null, "generation": null, "state": "restarting",
                 "restart_in_ms": 5600, "uptime_ms": null, "restarts": 12, "last_exit": "code 1"},
                {"slot": 1, "pid": 4121, "generation": 2, "state": "ready",
                 "uptime_ms": 300, "restarts": 0, "last_exit": null},
            ],
        });
        let table = table(&status);
        assert!(
            table.starts_with(
                "master   api, pid 7, up 2.0s, 1 worker, serving generation 2, target 3"
            ),
            "{table}"
        );
        let lines: Vec<&str> = table
            .lines()
            .skip_while(|l| !l.starts_with("slot"))
            .collect();
        // Every row's last column starts where the header's does, and the
        // right-aligned "restarts" column ends where its header ends.
        let last = lines[0].find("last exit").unwrap();
        assert_eq!(lines[1].find("code 1"), Some(last), "{table}");
        assert_eq!(lines[2].rfind('-'), Some(last), "{table}");
        let end = lines[0].find("restarts").unwrap() + "restarts".len();
        assert_eq!(lines[1].find("12").map(|at| at + 2), Some(end), "{table}");
        assert!(lines[1].contains("restart in 5.6s"));
    }
}
