//! `rcluster status` as a person reads it: the JSON a master sends (built
//! by `status.rs`), read once into typed rows, and the table and the one-
//! slot view printed from them, so that every field is written one way.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::vocab::{count, human, megabytes};

/// One row of the workers' table: a worker, or a slot waiting to restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerRow {
    pub slot: u64,
    pub pid: Option<i64>,
    pub generation: Option<u64>,
    pub state: String,
    pub restart_in: Option<Duration>,
    pub uptime: Option<Duration>,
    pub rss: Option<u64>,
    pub cpu_percent: Option<f64>,
    pub restarts: u64,
    pub last_exit: Option<String>,
    pub last_exit_line: Option<String>,
    pub status: Option<String>,
}

fn millis(v: &Value) -> Option<Duration> {
    v.as_u64().map(Duration::from_millis)
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

impl WorkerRow {
    pub fn from_json(w: &Value) -> WorkerRow {
        WorkerRow {
            slot: w["slot"].as_u64().unwrap_or_default(),
            pid: w["pid"].as_i64(),
            generation: w["generation"].as_u64(),
            state: w["state"].as_str().unwrap_or_default().to_string(),
            restart_in: millis(&w["restart_in_ms"]),
            uptime: millis(&w["uptime_ms"]),
            rss: w["rss_bytes"].as_u64(),
            cpu_percent: w["cpu_percent"].as_f64(),
            restarts: w["restarts"].as_u64().unwrap_or_default(),
            last_exit: text(&w["last_exit"]),
            last_exit_line: text(&w["last_exit_line"]),
            status: text(&w["status"]),
        }
    }

    /// Its state, or how long until its slot restarts.
    fn state_text(&self) -> String {
        match self.restart_in {
            Some(wait) => format!("restart in {}", human(wait)),
            None => self.state.clone(),
        }
    }

    fn uptime_text(&self) -> String {
        self.uptime.map_or_else(dash, human)
    }

    fn rss_text(&self) -> String {
        self.rss.map_or_else(dash, megabytes)
    }

    fn cpu_text(&self) -> String {
        self.cpu_percent.map_or_else(dash, |p| format!("{p:.1}%"))
    }

    /// How the slot's last worker ended, and the line that said why (cut
    /// to fit a terminal: `status --slot N` shows its last lines whole).
    fn last_exit_text(&self) -> String {
        const SHOWN: usize = 48;
        let exit = self.last_exit.as_deref().unwrap_or("-");
        match self.last_exit_line.as_deref().map(str::trim) {
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
}

fn dash() -> String {
    "-".to_string()
}

fn rows(status: &Value) -> Vec<WorkerRow> {
    status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(WorkerRow::from_json)
        .collect()
}

/// The `rcluster status` table, like `pm2 ls`.
pub fn table(status: &Value) -> String {
    let mut out = master_lines(status);
    let mut rows_out = vec![
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
    for row in rows(status) {
        rows_out.push([
            row.slot.to_string(),
            row.pid.map_or_else(dash, |p| p.to_string()),
            row.generation.map_or_else(dash, |g| g.to_string()),
            row.state_text(),
            row.uptime_text(),
            row.rss_text(),
            row.cpu_text(),
            row.restarts.to_string(),
            row.last_exit_text(),
        ]);
    }
    out.push('\n');
    out.push_str(&columns(
        &rows_out,
        &[false, false, false, false, true, true, true, true, false],
    ));
    out
}

/// What the table says above the workers: the master, its listeners, its
/// env file, the reload, what went wrong at the edges.
fn master_lines(status: &Value) -> String {
    let master = &status["master"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "master   {}, pid {}, up {}{}, {}, {}, rcluster {}",
        master["name"].as_str().unwrap_or("-"),
        master["pid"],
        millis(&master["uptime_ms"]).map(human).unwrap_or_default(),
        match (master["rss_bytes"].as_u64(), master["anon_bytes"].as_u64()) {
            (Some(rss), Some(anon)) =>
                format!(", rss {} ({} anon)", megabytes(rss), megabytes(anon)),
            (Some(rss), None) => format!(", rss {}", megabytes(rss)),
            _ => String::new(),
        },
        count(
            master["workers"].as_u64().unwrap_or_default() as usize,
            "worker"
        ),
        generations(master),
        master["version"].as_str().unwrap_or_default()
    );
    for listener in master["listeners"].as_array().into_iter().flatten() {
        let name = listener["name"].as_str().unwrap_or_default();
        let addr = listener["addr"].as_str().unwrap_or_default();
        let _ = writeln!(out, "listen   {name} {addr}");
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
    out.push_str(&probe_line(master));
    out.push_str(&release_lines(master));
    out.push_str(&reload_line(status));
    out.push_str(&upgrade_line(&master["upgrades"]));
    let lost = master["log_lines_lost"].as_u64().unwrap_or_default();
    if lost > 0 {
        let lines = count(lost as usize, "line");
        let _ = writeln!(
            out,
            "log      {lines} lost (the log's destination failed or stalled)"
        );
    }
    let dropped = master["notify_dropped"].as_u64().unwrap_or_default();
    if dropped > 0 {
        let messages = count(dropped as usize, "message");
        let _ = writeln!(
            out,
            "notify   {messages} dropped (not from a worker, or not its user)"
        );
    }
    if master["stopping"] == true {
        let _ = writeln!(out, "STOPPING");
    }
    out
}

/// `--probe`: what is probed, and who fails it.
fn probe_line(master: &Value) -> String {
    let probes = &master["probes"];
    let Some(path) = probes["path"].as_str() else {
        return String::new();
    };
    let failing = probes["failing"].as_u64().unwrap_or_default();
    let period = millis(&probes["period_ms"]).map(human).unwrap_or_default();
    let paused = if probes["replacing_paused"] == true {
        "; replacing them is paused: a replacement failed its probes too (a cause they \
         share?), until a probe passes again"
    } else {
        ""
    };
    let workers = master["workers"].as_u64().unwrap_or_default();
    format!("probes   GET {path} every {period}: {failing} of {workers} workers failing{paused}\n")
}

/// "generation 3", or what serves beside what is aimed at.
fn generations(master: &Value) -> String {
    let target = master["generation"].as_u64().unwrap_or_default();
    let serving: Vec<u64> = master["serving_generations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    match serving.as_slice() {
        [one] if *one == target => format!("generation {target}"),
        [] => format!("generation {target} (none ready)"),
        some => {
            let list: Vec<String> = some.iter().map(u64::to_string).collect();
            format!("serving generation {}, target {target}", list.join(" and "))
        }
    }
}

/// Each kept generation's release, newest first: the serving one, those
/// workers run, and those a rollback may name.
fn release_lines(master: &Value) -> String {
    let mut out = String::new();
    for release in master["releases"].as_array().into_iter().flatten() {
        let mut notes = Vec::new();
        if release["serving"] == true {
            notes.push("serving".to_string());
        }
        match release["workers"].as_u64().unwrap_or_default() {
            0 => {}
            n => notes.push(count(n as usize, "worker")),
        }
        if let Some(of) = release["rollback_of"].as_u64() {
            notes.push(format!("generation {of}'s release"));
        }
        if release["served"] != true && release["serving"] != true {
            notes.push("never served".into());
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        };
        let _ = writeln!(
            out,
            "release  generation {}{notes}: {}, {}",
            release["generation"],
            release["dir"].as_str().unwrap_or_default(),
            release["command"].as_str().unwrap_or_default(),
        );
        if let Some(path) = release["config"]["path"].as_str() {
            let version = release["config"]["version"].as_str().unwrap_or_default();
            let changed = match texts(&release["changed"]).join(", ") {
                changed if changed.is_empty() => changed,
                changed => format!("; changed: {changed}"),
            };
            let _ = writeln!(out, "         config {path} (version {version}){changed}");
        }
    }
    out
}

/// The strings of a JSON array (none for anything else).
fn texts(array: &Value) -> Vec<&str> {
    let items = array.as_array().into_iter().flatten();
    items.filter_map(Value::as_str).collect()
}

/// A configuration (`Config::settings_json`): each setting, its value and
/// where it came from, one per line; the file's variables by name.
pub fn config_table(config: &Value) -> String {
    let mut rows: Vec<(String, String, String)> = config["settings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let value = match texts(&s["values"]).join(" ") {
                value if value.is_empty() => "-".to_string(),
                value => value,
            };
            let key = s["key"].as_str().unwrap_or_default().to_string();
            (
                key,
                value,
                s["origin"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    rows.extend(config["env"].as_array().into_iter().flatten().map(|name| {
        let name = name.as_str().unwrap_or_default();
        (format!("env.{name}"), "set".to_string(), "file".to_string())
    }));
    let key_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).min(40);
    let mut out = String::new();
    if let Some(path) = config["file"]["path"].as_str() {
        let version = config["file"]["version"].as_str().unwrap_or_default();
        let _ = writeln!(out, "# {path} (version {version})");
    }
    for (key, value, origin) in rows {
        let _ = writeln!(out, "{key:key_width$}  {value:value_width$}  {origin}");
    }
    out
}

/// The reload in progress, or how the last one ended.
fn reload_line(status: &Value) -> String {
    let (reload, last) = (&status["reload"], &status["last_reload"]);
    let took = |key: &str, v: &Value| millis(&v[key]).map(human).unwrap_or_default();
    if reload["in_progress"] == true {
        let (generation, elapsed) = (&reload["generation"], took("elapsed_ms", reload));
        format!("reload   in progress: to generation {generation}, for {elapsed}\n")
    } else if last["result"] == "complete" {
        let (generation, duration) = (&last["generation"], took("duration_ms", last));
        format!("reload   last: complete, generation {generation}, in {duration}\n")
    } else if last["result"] == "aborted" {
        let cause = last["cause"].as_str().unwrap_or_default();
        format!(
            "reload   last: ABORTED, generation {}: {cause}\n",
            last["generation"]
        )
    } else {
        String::new()
    }
}

/// The master's live upgrades: the last one, and the last failure.
fn upgrade_line(upgrades: &Value) -> String {
    let mut line = String::new();
    if let Some(from) = upgrades["last"]["from"].as_str() {
        let took = millis(&upgrades["last"]["duration_ms"])
            .map(human)
            .unwrap_or_default();
        line = format!(
            "upgrade  last: from rcluster {from}, in {took} ({} since start)",
            count(
                upgrades["done"].as_u64().unwrap_or_default() as usize,
                "upgrade"
            )
        );
    }
    if let Some(cause) = upgrades["failed"]["cause"].as_str() {
        let failed = format!("attempt {} FAILED: {cause}", upgrades["failed"]["attempt"]);
        line = match line.is_empty() {
            true => format!("upgrade  {failed}"),
            false => format!("{line}; {failed}"),
        };
    }
    if !line.is_empty() {
        line.push('\n');
    }
    line
}

/// `rcluster status --slot N`: the slot's workers and the last lines on
/// stderr of each, and of the worker before them.
pub fn slot_view(status: &Value) -> String {
    let detail = &status["slot"];
    let slot = detail["slot"].as_u64().unwrap_or_default();
    let mut out = String::new();
    for row in rows(status).into_iter().filter(|r| r.slot == slot) {
        let restarts = count(row.restarts as usize, "restart");
        let last_exit = row.last_exit.as_deref().unwrap_or("none");
        let Some(pid) = row.pid else {
            if row.state == "exited" {
                let generation = row.generation.map_or_else(dash, |g| g.to_string());
                let _ = writeln!(
                    out,
                    "slot {slot}: its worker of generation {generation}, newer than the one serving, exited: {last_exit}"
                );
                continue;
            }
            let wait = row.restart_in.map_or_else(dash, human);
            let _ = writeln!(
                out,
                "slot {slot}: no worker, restart in {wait}, {restarts} (last exit: {last_exit})"
            );
            continue;
        };
        let _ = writeln!(
            out,
            "slot {slot}: pid {pid}, generation {}, {}, up {}, rss {}, cpu {}, {restarts} (last exit: {last_exit})",
            row.generation.map_or_else(dash, |g| g.to_string()),
            row.state,
            row.uptime_text(),
            row.rss_text(),
            row.cpu_text(),
        );
        if let Some(said) = &row.status {
            let _ = writeln!(out, "  STATUS={said}");
        }
    }
    if let Some(previous) = detail["previous"].as_object() {
        let exit = previous["exit"].as_str().unwrap_or("exit unknown");
        let heading = format!(
            "the worker before (pid {}, {exit}), its last lines on stderr:",
            previous["pid"]
        );
        lines_block(&mut out, &heading, &previous["stderr"]);
    }
    for w in detail["workers"].as_array().into_iter().flatten() {
        let heading = format!("pid {}, its last lines on stderr so far:", w["pid"]);
        lines_block(&mut out, &heading, &w["stderr"]);
    }
    out
}

/// A heading and the lines under it, or `(none)`.
fn lines_block(out: &mut String, heading: &str, lines: &Value) {
    let lines: Vec<&str> = lines
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let _ = writeln!(out, "\n{heading}");
    if lines.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for line in lines {
        let _ = writeln!(out, "  | {line}");
    }
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
            // Writing to a String cannot fail.
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
    use serde_json::json;

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

    #[test]
    fn a_failed_newer_worker_is_a_row_of_its_own() {
        let status = json!({
            "master": {"name": "api", "pid": 7, "uptime_ms": 2000, "workers": 1, "generation": 2,
                       "serving_generations": [1], "version": "0", "listeners": []},
            "reload": {"in_progress": false},
            "workers": [
                {"slot": 0, "pid": 4121, "generation": 1, "state": "ready",
                 "uptime_ms": 9000, "restarts": 0, "last_exit": null},
                {"slot": 0, "pid": null, "generation": 2, "state": "exited",
                 "uptime_ms": null, "restarts": 0, "last_exit": "code 1",
                 "last_exit_line": "DATABASE_URL is not set"},
            ],
            "slot": {"slot": 0},
        });
        let table = table(&status);
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("0 ")).collect();
        assert!(rows[0].ends_with(" -"), "{table}");
        assert!(rows[1].contains("exited"), "{table}");
        assert!(
            rows[1].ends_with("code 1: DATABASE_URL is not set"),
            "{table}"
        );
        let view = slot_view(&status);
        assert!(
            view.contains(
                "slot 0: its worker of generation 2, newer than the one serving, exited: code 1"
            ),
            "{view}"
        );
    }
}
