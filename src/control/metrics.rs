//! Prometheus metrics (`--metrics ADDR`): `GET /metrics` in the text
//! exposition format, served from the master's own loop (`endpoint.rs`).
//! Counters and histograms are kept from what the master reports (the
//! same records as the log, so the two always agree); gauges (workers by
//! state, memory, CPU) are read when a scrape asks, never polled.
//!
//! The format is a few lines of text; written here rather than with a
//! client crate, which would bring a registry and locks to a master that
//! has one thread. The tests check it with `promtool check metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use mio::Registry;
use serde_json::{Value, json};

use crate::control::endpoint::{self, Endpoint, Framing, http_response};
use crate::control::status::{MasterInfo, Observed};
use crate::error::Error;
use crate::sockets::listen::{self, ListenSpec, SocketFile};
use crate::supervisor::Supervisor;
use crate::supervisor::record::{Next, Record};
use crate::supervisor::reload::ReloadOutcome;
use crate::supervisor::slot::Worker;
use crate::vocab::{Exit, SlotId};

/// The `--metrics` socket and its clients.
pub struct MetricsServer {
    endpoint: Endpoint,
    /// Where it listens, as bound (port 0 resolved).
    pub addr: String,
    _file: Option<SocketFile>,
}

impl MetricsServer {
    /// Binds `spec` (TCP, or `unix:PATH`), with the same checks and
    /// messages as `--listen`.
    pub fn bind(spec: &ListenSpec) -> Result<MetricsServer, Error> {
        let listener = listen::bind_all(std::slice::from_ref(spec), 64, Vec::new(), false)?
            .pop()
            .expect("one listener for one spec");
        let addr = listener.local.clone();
        let (socket, file) = listener.into_parts();
        let listener = endpoint::Listener::from_socket(socket)
            .map_err(|e| Error::os("serving --metrics", e))?;
        Ok(MetricsServer {
            endpoint: Endpoint::new(listener, Framing::HttpHead, None),
            addr,
            _file: file,
        })
    }

    /// The socket another image of the master bound (a live upgrade).
    pub fn resume(
        fd: std::os::fd::OwnedFd,
        addr: String,
        file: Option<&std::path::Path>,
    ) -> std::io::Result<MetricsServer> {
        let socket = socket2::Socket::from(fd);
        socket.set_cloexec(true)?;
        Ok(MetricsServer {
            endpoint: Endpoint::new(
                endpoint::Listener::from_socket(socket)?,
                Framing::HttpHead,
                None,
            ),
            addr,
            _file: file.map(SocketFile::resume).transpose()?,
        })
    }

    /// The listening socket, and the socket file this master made.
    pub fn handover(&self) -> (std::os::fd::RawFd, Option<&std::path::Path>) {
        (
            self.endpoint.listener_fd(),
            self._file.as_ref().map(SocketFile::path),
        )
    }

    pub fn endpoint(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    /// Reads a client's request: true when it is a `GET /metrics` to
    /// answer; anything else is answered here.
    pub fn on_event(&mut self, id: usize, registry: &Registry) -> bool {
        let Some(head) = self.endpoint.on_event(id, registry) else {
            return false;
        };
        let line = String::from_utf8_lossy(&head);
        let mut words = line.split_whitespace();
        let (method, path) = (words.next(), words.next().unwrap_or("/"));
        let path = path.split('?').next().unwrap_or(path);
        let refusal = match (method, path) {
            (Some("GET"), "/metrics") => return true,
            (Some("GET"), _) => http_response(404, "text/plain", "not found: try /metrics\n"),
            _ => http_response(405, "text/plain", "only GET /metrics\n"),
        };
        self.endpoint.reply(id, &refusal, registry);
        false
    }

    /// Sends the exposition and closes.
    pub fn reply(&mut self, id: usize, exposition: &str, registry: &Registry) {
        let response = http_response(200, "text/plain; version=0.0.4; charset=utf-8", exposition);
        self.endpoint.reply(id, &response, registry);
    }
}

/// Upper bounds, in seconds, of the duration histograms' buckets: from a
/// worker that starts in milliseconds to a reload of many slow ones.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (count, &bound) in self.counts.iter_mut().zip(&BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// What the master counted since it started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Worker exits by slot and cause.
    exits: BTreeMap<(SlotId, &'static str), u64>,
    /// Restarts (after an exit nobody asked for) by slot.
    restarts: BTreeMap<SlotId, u64>,
    reloads: BTreeMap<&'static str, u64>,
    /// Workers replaced for their memory, age or probes, by reason.
    recycles: BTreeMap<&'static str, u64>,
    /// Failed probes by slot.
    probe_failures: BTreeMap<SlotId, u64>,
    reload_seconds: Histogram,
    startup_seconds: Histogram,
}

impl Metrics {
    /// Counts what `record` reports.
    pub fn observe(&mut self, record: &Record) {
        match record {
            Record::WorkerExited {
                slot,
                exit,
                exec_error,
                next,
                ..
            } => {
                let cause = match (next, exit, exec_error) {
                    (Next::Stopped(_), _, _) => "stopped",
                    (_, _, Some(_)) => "exec_failed",
                    (_, Exit::Code(0), _) => "exit_0",
                    (_, Exit::Code(_), _) => "exit_code",
                    (_, Exit::Signaled { .. }, _) => "signal",
                };
                *self.exits.entry((*slot, cause)).or_default() += 1;
                if matches!(next, Next::Restart { .. }) {
                    *self.restarts.entry(*slot).or_default() += 1;
                }
            }
            Record::WorkerReady { startup, .. } => self.startup_seconds.observe(*startup),
            Record::ReloadComplete { duration, .. } => self.reload_seconds.observe(*duration),
            Record::ReloadRefused { .. } => *self.reloads.entry("refused").or_default() += 1,
            Record::ProbeFailed { slot, .. } => {
                *self.probe_failures.entry(*slot).or_default() += 1;
            }
            Record::WorkerRecycled { reason, .. } => {
                *self.recycles.entry(reason.name()).or_default() += 1;
            }
            // Reload outcomes are counted by `reload_finished`; the
            // rest are not counted.
            Record::Started { .. }
            | Record::Listening { .. }
            | Record::ListenerClosed { .. }
            | Record::MetricsEndpoint { .. }
            | Record::WorkerSpawned { .. }
            | Record::WorkerStarted { .. }
            | Record::WorkersReady { .. }
            | Record::ReadinessLearned { .. }
            | Record::ReadyByTimerOnly { .. }
            | Record::EnvFileOnce { .. }
            | Record::EnvFileRead { .. }
            | Record::CanaryProven { .. }
            | Record::NotServing { .. }
            | Record::WorkerStatus { .. }
            | Record::WorkerStopping { .. }
            | Record::WorkerDraining { .. }
            | Record::SpawnFailed { .. }
            | Record::NotReady { .. }
            | Record::ProbePassing { .. }
            | Record::ProbeUnattributed { .. }
            | Record::ProbeReplacingPaused { .. }
            | Record::WatchdogTimeout { .. }
            | Record::StopTimeout { .. }
            | Record::ReloadStarted { .. }
            | Record::BackoffCut { .. }
            | Record::ReloadRetargeted { .. }
            | Record::ReloadAborted { .. }
            | Record::Scaled { .. }
            | Record::StopRequested { .. }
            | Record::GivingUp { .. }
            | Record::Stopped { .. }
            | Record::SignalIgnored { .. }
            | Record::OrphanReaped { .. }
            | Record::StraysStopping { .. }
            | Record::StrayKilled { .. }
            | Record::NotifyIgnored { .. }
            | Record::OsError { .. }
            | Record::WorkerOutput { .. }
            | Record::LogReopened { .. }
            | Record::SlowTurn { .. }
            | Record::LogLost { .. }
            | Record::Control { .. }
            | Record::OwnPorts { .. }
            | Record::ControlMoved { .. }
            | Record::Release { .. }
            | Record::ReleaseRewritten { .. }
            | Record::WorkdirMoved { .. }
            | Record::LosesRequests { .. }
            | Record::UpgradeWaiting { .. }
            | Record::UpgradeChecking { .. }
            | Record::UpgradeFailed { .. }
            | Record::Upgrading { .. }
            | Record::Upgraded { .. } => {}
        }
    }

    /// The counts, written down for a live upgrade.
    pub fn snapshot(&self) -> Value {
        let pairs = |m: &BTreeMap<&'static str, u64>| -> Vec<(String, u64)> {
            m.iter().map(|(k, &v)| (k.to_string(), v)).collect()
        };
        json!({
            "exits": self.exits.iter().map(|(&(slot, cause), &n)| (slot, cause, n)).collect::<Vec<_>>(),
            "restarts": self.restarts.iter().collect::<Vec<_>>(),
            "reloads": pairs(&self.reloads),
            "recycles": pairs(&self.recycles),
            "probe_failures": self.probe_failures.iter().collect::<Vec<_>>(),
            "reload_seconds": self.reload_seconds,
            "startup_seconds": self.startup_seconds,
        })
    }

    /// The counts another image of the master wrote down; names it does
    /// not count are left out.
    pub fn resume(snapshot: &Value) -> Metrics {
        const NAMES: [&str; 12] = [
            "stopped",
            "exec_failed",
            "exit_0",
            "exit_code",
            "signal",
            "refused",
            "complete",
            "aborted",
            "interrupted",
            "memory",
            "age",
            "probe",
        ];
        let name = |v: &Value| NAMES.into_iter().find(|n| v.as_str() == Some(n));
        let pairs = |key: &str| -> BTreeMap<&'static str, u64> {
            let items = snapshot[key].as_array().cloned().unwrap_or_default();
            items
                .iter()
                .filter_map(|p| Some((name(&p[0])?, p[1].as_u64()?)))
                .collect()
        };
        let histogram =
            |key: &str| serde_json::from_value(snapshot[key].clone()).unwrap_or_default();
        let list = |key: &str| snapshot[key].as_array().cloned().unwrap_or_default();
        let per_slot = |key: &str| -> BTreeMap<SlotId, u64> {
            list(key)
                .iter()
                .filter_map(|e| Some((e[0].as_u64()? as SlotId, e[1].as_u64()?)))
                .collect()
        };
        Metrics {
            exits: list("exits")
                .iter()
                .filter_map(|e| Some(((e[0].as_u64()? as SlotId, name(&e[1])?), e[2].as_u64()?)))
                .collect(),
            restarts: per_slot("restarts"),
            probe_failures: per_slot("probe_failures"),
            reloads: pairs("reloads"),
            recycles: pairs("recycles"),
            reload_seconds: histogram("reload_seconds"),
            startup_seconds: histogram("startup_seconds"),
        }
    }

    /// Counts a reload that ended.
    pub fn reload_finished(&mut self, outcome: &ReloadOutcome) {
        let result = match outcome {
            ReloadOutcome::Complete { .. } => "complete",
            ReloadOutcome::Aborted { .. } => "aborted",
            ReloadOutcome::Interrupted { .. } => "interrupted",
        };
        *self.reloads.entry(result).or_default() += 1;
    }

    /// The exposition, with the gauges as they are `now`.
    pub fn render(
        &self,
        sup: &Supervisor,
        info: &MasterInfo,
        observed: &Observed,
        counts: crate::control::status::Counts,
        now: Instant,
    ) -> String {
        let mut out = Out(String::new());
        out.family("rcluster_up", "gauge", "1 while the master runs.");
        out.sample("rcluster_up", &[], 1.0);
        out.family(
            "rcluster_uptime_seconds",
            "gauge",
            "Seconds since the master started.",
        );
        out.sample(
            "rcluster_uptime_seconds",
            &[],
            now.saturating_duration_since(info.started).as_millis() as f64 / 1e3,
        );
        out.family(
            "rcluster_generation",
            "gauge",
            "The newest generation (raised by each reload): a reload's new workers get it.",
        );
        out.sample("rcluster_generation", &[], sup.target_generation() as f64);
        if !info.releases.is_empty() {
            out.family(
                "rcluster_release_info",
                "gauge",
                "1 for each kept generation's release: its directory and command; serving=\"true\" for the one restarts run.",
            );
            for release in &info.releases {
                let generation = release.generation.to_string();
                let serving = release.generation == sup.serving_generation();
                out.sample(
                    "rcluster_release_info",
                    &[
                        ("generation", generation.as_str()),
                        ("directory", release.dir.as_str()),
                        ("command", release.command.as_str()),
                        ("serving", if serving { "true" } else { "false" }),
                    ],
                    1.0,
                );
            }
        }
        out.family("rcluster_slots", "gauge", "Worker slots (--workers).");
        out.sample("rcluster_slots", &[], sup.slot_count() as f64);

        let mut states: BTreeMap<&'static str, u64> =
            ["starting", "ready", "draining", "killed", "restarting"]
                .into_iter()
                .map(|s| (s, 0))
                .collect();
        for worker in sup.workers() {
            *states.entry(worker.state.name()).or_default() += 1;
        }
        let waiting = sup.slots().iter().filter(|s| s.is_empty()).count();
        *states.entry("restarting").or_default() += waiting as u64;
        out.family(
            "rcluster_workers",
            "gauge",
            "Workers by state (restarting: slots waiting out a backoff).",
        );
        for (state, n) in &states {
            out.sample("rcluster_workers", &[("state", state)], *n as f64);
        }

        // One series per slot: its newest worker.
        let mut newest = BTreeMap::new();
        for worker in sup.workers() {
            let entry = newest.entry(worker.slot).or_insert(worker);
            if (worker.generation, worker.started) > (entry.generation, entry.started) {
                *entry = worker;
            }
        }
        let usage = |w: &Worker| observed.usage.get(&w.pid).map(|(usage, _)| usage);
        out.per_slot(
            "rcluster_worker_resident_memory_bytes",
            "gauge",
            "Resident memory of each slot's newest worker and the processes it started.",
            &newest,
            |w| usage(w).map(|u| u.rss_bytes as f64),
        );
        out.per_slot(
            "rcluster_worker_cpu_seconds_total",
            "counter",
            "CPU time of each slot's newest worker and the processes it started.",
            &newest,
            |w| usage(w).map(|u| u.cpu_time().as_secs_f64()),
        );
        out.per_slot(
            "rcluster_worker_uptime_seconds",
            "gauge",
            "Seconds since each slot's newest worker started.",
            &newest,
            |w| Some(now.saturating_duration_since(w.started).as_millis() as f64 / 1e3),
        );

        out.family(
            "rcluster_worker_responses_total",
            "counter",
            "Responses of each slot's newest worker by status class, as the shim counts them \
             (--http-drain, --adopt-bind).",
        );
        for (slot, worker) in &newest {
            let Some(counts) = sup.responses(worker.pid) else {
                continue;
            };
            let slot = slot.to_string();
            for (class, n) in crate::vocab::CLASSES.iter().zip(counts) {
                out.sample(
                    "rcluster_worker_responses_total",
                    &[("slot", &slot), ("class", class)],
                    *n as f64,
                );
            }
        }
        out.family(
            "rcluster_worker_exits_total",
            "counter",
            "Worker exits by slot and cause (stopped: rcluster asked).",
        );
        for ((slot, cause), n) in &self.exits {
            let slot = slot.to_string();
            out.sample(
                "rcluster_worker_exits_total",
                &[("slot", &slot), ("cause", cause)],
                *n as f64,
            );
        }
        out.family(
            "rcluster_worker_restarts_total",
            "counter",
            "Workers restarted after an exit nobody asked for, by slot.",
        );
        for (slot, n) in &self.restarts {
            let slot = slot.to_string();
            out.sample(
                "rcluster_worker_restarts_total",
                &[("slot", &slot)],
                *n as f64,
            );
        }
        out.family(
            "rcluster_worker_probe_failures_total",
            "counter",
            "Probes (--probe) its workers failed, by slot.",
        );
        for (slot, n) in &self.probe_failures {
            let slot = slot.to_string();
            out.sample(
                "rcluster_worker_probe_failures_total",
                &[("slot", &slot)],
                *n as f64,
            );
        }
        out.family(
            "rcluster_worker_recycles_total",
            "counter",
            "Workers replaced for their memory, age or probes, by reason.",
        );
        for (reason, n) in &self.recycles {
            out.sample(
                "rcluster_worker_recycles_total",
                &[("reason", reason)],
                *n as f64,
            );
        }
        out.family("rcluster_reloads_total", "counter", "Reloads by outcome.");
        for (result, n) in &self.reloads {
            out.sample("rcluster_reloads_total", &[("result", result)], *n as f64);
        }
        out.histogram(
            "rcluster_reload_duration_seconds",
            "From the reload's start to every slot serving the new generation.",
            &self.reload_seconds,
        );
        out.histogram(
            "rcluster_worker_startup_seconds",
            "From a worker's start to it being ready.",
            &self.startup_seconds,
        );

        out.family(
            "rcluster_master_resident_memory_bytes",
            "gauge",
            "Resident memory of the master itself.",
        );
        if let Some(rss) = observed.master_rss {
            out.sample("rcluster_master_resident_memory_bytes", &[], rss as f64);
        }
        out.family(
            "rcluster_master_anonymous_memory_bytes",
            "gauge",
            "Anonymous resident memory of the master itself: its own, where the resident \
             memory also counts the shared pages of its binary and libc.",
        );
        if let Some(anon) = observed.master_anon {
            out.sample("rcluster_master_anonymous_memory_bytes", &[], anon as f64);
        }
        out.family(
            "rcluster_log_lines_lost_total",
            "counter",
            "Log lines the log's destination could not take.",
        );
        out.sample(
            "rcluster_log_lines_lost_total",
            &[],
            counts.log_lines_lost as f64,
        );
        out.family(
            "rcluster_notify_dropped_total",
            "counter",
            "Notify messages dropped: not from a worker, or not its user.",
        );
        out.sample(
            "rcluster_notify_dropped_total",
            &[],
            counts.notify_dropped as f64,
        );
        out.0
    }
}

/// The exposition being written.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one sample per slot, of its newest worker.
    fn per_slot(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        newest: &BTreeMap<SlotId, &Worker>,
        value: impl Fn(&Worker) -> Option<f64>,
    ) {
        self.family(name, kind, help);
        for (slot, worker) in newest {
            if let Some(value) = value(worker) {
                self.sample(name, &[("slot", &slot.to_string())], value);
            }
        }
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (bound, count) in BUCKETS.iter().zip(&h.counts) {
            self.sample(&bucket, &[("le", &bound.to_string())], *count as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }
}

/// A label value as the format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_value_in_every_bucket_above_it() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(2));
        assert_eq!(h.counts[2], 0); // le 0.025
        assert_eq!(h.counts[3], 1); // le 0.05
        assert_eq!(h.counts[8], 2); // le 2.5
        assert_eq!(h.count, 2);
        assert!((h.sum - 2.03).abs() < 1e-9);
        let mut out = Out(String::new());
        out.histogram("t_seconds", "A test.", &h);
        assert!(
            out.0.contains("t_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{}",
            out.0
        );
        assert!(
            out.0.contains("t_seconds_bucket{le=\"0.05\"} 1\n"),
            "{}",
            out.0
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
