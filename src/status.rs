//! What `rcluster status` reports, built from the supervisor's state: the
//! JSON the control socket sends, and the table the client prints from it.

use std::fmt::Write as _;
use std::time::Instant;

use serde_json::{Value, json};

use crate::supervisor::Supervisor;
use crate::supervisor::reload::ReloadOutcome;
use crate::vocab::{Exit, human};

/// What the shell knows that the supervisor does not.
pub struct MasterInfo {
    pub started: Instant,
    pub listeners: Vec<(String, String)>,
    pub control: String,
}

pub fn to_json(sup: &Supervisor, info: &MasterInfo, now: Instant) -> Value {
    let ms = |since: Instant| now.saturating_duration_since(since).as_millis() as u64;
    let mut workers: Vec<Value> = Vec::new();
    let mut rows: Vec<_> = sup.workers().collect();
    rows.sort_by_key(|w| (w.slot, w.generation, w.pid));
    for w in rows {
        let slot = sup.slots().get(w.slot);
        workers.push(json!({
            "slot": w.slot,
            "pid": w.pid.as_raw(),
            "generation": w.generation,
            "state": w.state.name(),
            "uptime_ms": ms(w.started),
            "restarts": slot.map_or(0, |s| s.restarts),
            "last_exit": slot.and_then(|s| s.last_exit.as_ref()).map(Exit::short),
        }));
    }
    // A slot waiting out its restart backoff has no process to show.
    for (id, slot) in sup.slots().iter().enumerate() {
        if slot.attached.is_empty() && !slot.spawning {
            workers.push(json!({
                "slot": id,
                "pid": null,
                "generation": null,
                "state": "restarting",
                "uptime_ms": null,
                "restart_in_ms": slot.restart_at.map(|at| at.saturating_duration_since(now).as_millis() as u64),
                "restarts": slot.restarts,
                "last_exit": slot.last_exit.as_ref().map(Exit::short),
            }));
        }
    }
    let ready = sup.all_ready();
    json!({
        "ok": true,
        "master": {
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_ms": ms(info.started),
            "workers": sup.slot_count(),
            "generation": sup.target_generation(),
            "all_ready": ready,
            "stopping": !sup.is_running(),
            "control": info.control,
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
    })
}

/// The `rcluster status` table, like `pm2 ls`.
pub fn table(status: &Value) -> String {
    let ms = |v: &Value| {
        v.as_u64()
            .map(|ms| human(std::time::Duration::from_millis(ms)))
    };
    let master = &status["master"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "master   pid {}, up {}, {} workers, generation {}, rcluster {}",
        master["pid"],
        ms(&master["uptime_ms"]).unwrap_or_default(),
        master["workers"],
        master["generation"],
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
    if master["stopping"] == true {
        let _ = writeln!(out, "STOPPING");
    }
    let _ = writeln!(
        out,
        "\n{:<5} {:<8} {:<4} {:<11} {:>8} {:>8}  last exit",
        "slot", "pid", "gen", "state", "uptime", "restarts"
    );
    for w in status["workers"].as_array().into_iter().flatten() {
        let dash = || "-".to_string();
        let state = match w["restart_in_ms"].as_u64() {
            Some(ms) => format!("restart in {}", human(std::time::Duration::from_millis(ms))),
            None => w["state"].as_str().unwrap_or_default().to_string(),
        };
        let _ = writeln!(
            out,
            "{:<5} {:<8} {:<4} {:<11} {:>8} {:>8}  {}",
            w["slot"].to_string(),
            w["pid"].as_i64().map_or_else(dash, |p| p.to_string()),
            w["generation"]
                .as_u64()
                .map_or_else(dash, |g| g.to_string()),
            state,
            ms(&w["uptime_ms"]).unwrap_or_else(dash),
            w["restarts"].to_string(),
            w["last_exit"].as_str().unwrap_or("-")
        );
    }
    out
}
