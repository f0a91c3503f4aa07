//! The control plane as the master serves it: control and `/metrics`
//! clients' events, a request carried out as the signal it stands for
//! would be, a reload (the env file first), and the answers to clients
//! that wait.

use std::time::Instant;

use serde_json::{Value, json};

use crate::control::server::{self as control, Request};
use crate::control::status;
use crate::launch::Launch;
use crate::shell::releases::{Kept, Next};
use crate::start::layers::Origin;
use crate::supervisor::event::{Event, MasterSignal};
use crate::supervisor::reload::ReloadOutcome;

use super::{Master, probes};

impl<L: Launch> Master<'_, L> {
    pub(super) fn on_control_listener(&mut self, now: Instant) {
        if let Some(control) = &mut self.control {
            control.endpoint().accept(self.poll.registry(), now);
        }
    }

    /// A `/metrics` client's event; a whole `GET /metrics` is answered with
    /// the figures as they are now.
    pub(super) fn on_scraper(&mut self, id: usize, now: Instant) {
        let Some(server) = &mut self.metrics_server else {
            return;
        };
        if !server.endpoint().knows(id) || !server.on_event(id, self.poll.registry()) {
            return;
        }
        let observed = self.observe(now, None);
        let exposition =
            self.metrics
                .render(&self.supervisor, &self.info, &observed, self.counts(), now);
        if let Some(server) = &mut self.metrics_server {
            server.reply(id, &exposition, self.poll.registry());
        }
    }

    pub(super) fn on_control_client(&mut self, id: usize, now: Instant) {
        let Some(control) = &mut self.control else {
            return;
        };
        if !control.endpoint().knows(id) {
            return;
        }
        if let Some(request) = control.on_event(id, self.poll.registry()) {
            self.on_request(id, request, now);
        }
    }

    /// Carries out a control request: the same events a signal makes. A
    /// client that waits is registered before the event is handled, since
    /// the event may finish what it waits for.
    pub(super) fn on_request(&mut self, id: usize, request: Request, now: Instant) {
        let running = self.supervisor.is_running();
        let response = match request {
            Request::Status { slot } => {
                self.info.upgrades = self.upgrades.json();
                let counts = self.counts();
                let observed = self.observe(now, slot);
                Some(status::to_json(
                    &self.supervisor,
                    &self.info,
                    counts,
                    &observed,
                    slot,
                    now,
                ))
            }
            Request::Reload { .. } | Request::Rollback { .. } | Request::Scale { .. }
                if !running =>
            {
                Some(control::error("the master is stopping"))
            }
            Request::Reload { wait } => self.reload_request(id, wait, None, now),
            Request::Rollback { wait, to } => self.reload_request(id, wait, Some(to), now),
            Request::Scale { to } => {
                let from = self.supervisor.slot_count();
                let workers = to.from(from);
                self.dispatch(Event::ScaleTo(workers), now);
                Some(json!({"ok": true, "workers": workers, "from": from}))
            }
            Request::Upgrade { reload } => Some(match self.upgrade(reload, now) {
                Ok(attempt) => json!({
                    "ok": true, "attempt": attempt, "done": self.upgrades.done,
                    "pid": std::process::id(),
                    "exe": self.binary.as_ref().map(|b| b.exe.display().to_string()),
                }),
                Err(cause) => control::error(cause),
            }),
            Request::Stop { wait } => {
                if wait {
                    self.hold(id);
                    self.stop_waiters.push(id);
                }
                if running {
                    self.dispatch(Event::Signal(MasterSignal::Terminate), now);
                }
                (!wait).then(|| json!({"ok": true}))
            }
        };
        if let Some(response) = response {
            self.answer(vec![id], &response);
        }
    }

    /// `rcluster reload` or `rollback` (`Some(to)`): answered now, or when
    /// it ends (`wait`).
    fn reload_request(
        &mut self,
        id: usize,
        wait: bool,
        rollback: Option<Option<u64>>,
        now: Instant,
    ) -> Option<Value> {
        if wait {
            self.hold(id);
            self.reload_waiters.push(id);
        }
        let what = if rollback.is_some() {
            "rollback"
        } else {
            "reload"
        };
        match self.reload(rollback, now) {
            Err(cause) => {
                self.reload_waiters.retain(|&w| w != id);
                Some(json!({
                    "ok": false, "result": "refused", "cause": cause,
                    "error": format!("{what} refused: {cause}; nothing changed"),
                }))
            }
            Ok(()) if wait => None,
            Ok(()) => {
                let generation = self.supervisor.target_generation();
                Some(json!({
                    "ok": true, "generation": generation, "release": self.release_json(generation),
                }))
            }
        }
    }

    /// A reload (HUP, `rcluster reload`) or a rollback (`Some(to)`): its
    /// release is made first (the env file read, `--chdir` and the command
    /// resolved: `releases.rs`), and one that cannot be made stops it
    /// before anything starts.
    pub(super) fn reload(
        &mut self,
        rollback: Option<Option<u64>>,
        now: Instant,
    ) -> Result<(), String> {
        let generation = self.supervisor.target_generation() + 1;
        if let Some(next) = self.next_release(rollback, generation) {
            let next = match next {
                Ok(next) => next,
                Err(cause) => {
                    self.dispatch(
                        Event::ReloadRefused {
                            cause: cause.clone(),
                        },
                        now,
                    );
                    return Err(cause);
                }
            };
            if let Some(config) = &next.config {
                self.supervisor.stage_policy(config.policy(), next.workers);
            }
            self.launcher.prepare(generation, &next.release);
            if let Some(releases) = &mut self.releases {
                let config = next.config.map(|config| *config);
                releases.add(generation, next.release, config, self.log);
            }
        } else if rollback.is_some() {
            return Err(
                "this master runs a closure (rcluster::Cluster): it has no releases".into(),
            );
        }
        self.dispatch(Event::Signal(MasterSignal::Reload), now);
        self.keep_releases();
        Ok(())
    }

    /// The next generation's release (none for a closure's master), its
    /// new listeners bound; `Err`: why the reload cannot start.
    fn next_release(
        &mut self,
        rollback: Option<Option<u64>>,
        generation: u64,
    ) -> Option<Result<Next, String>> {
        let releases = self.releases.as_mut()?;
        let next = match rollback {
            None => releases.next(self.supervisor.serving_generation(), self.log),
            Some(to) => releases.rollback(self.supervisor.serving_generation(), to),
        };
        Some(next.and_then(|mut next| {
            let Some(config) = &next.config else {
                return Ok(next);
            };
            if config.probe.is_some() && self.probes.is_none() {
                return Err(probes::NEEDS_TCP.to_string());
            }
            if let Some(change) = &next.listen {
                let names = self.relisten(change, generation).map_err(|e| {
                    // The file's line, when the address came from the file.
                    match (&config.file, config.origin("listen")) {
                        (Some(file), Some(Origin::File(line))) => {
                            format!("{}: listen: {e}", file.at(line))
                        }
                        _ => e,
                    }
                })?;
                next.release.listeners = Some(names);
            }
            Ok(next)
        }))
    }

    /// Forgets the releases no worker can run again, and tells `status`;
    /// closes the listeners no generation has any more.
    pub(super) fn keep_releases(&mut self) {
        self.close_unused_listeners();
        let Some(releases) = &mut self.releases else {
            return;
        };
        let live = self.supervisor.workers().map(|w| w.generation).collect();
        for gone in releases.prune(self.supervisor.serving_generation(), &live) {
            self.launcher.forget(gone);
        }
        self.info.releases = releases
            .kept()
            .map(|(generation, kept)| release_view(generation, kept))
            .collect();
        if let Some(config) = releases.config_of(self.supervisor.serving_generation()) {
            self.info.config = config.settings_json();
        }
    }

    /// What a generation runs, for the answer to `reload`.
    pub(super) fn release_json(&self, generation: u64) -> Value {
        self.info
            .releases
            .iter()
            .find(|r| r.generation == generation)
            .map_or(Value::Null, status::ReleaseView::json)
    }

    pub(super) fn hold(&mut self, id: usize) {
        if let Some(control) = &mut self.control {
            control.endpoint().hold(id);
        }
    }

    /// Answers every client in `waiters`.
    pub(super) fn answer(&mut self, waiters: Vec<usize>, response: &Value) {
        if let Some(control) = &mut self.control {
            for id in waiters {
                control.reply(id, response, self.poll.registry());
            }
        }
    }
}

/// A kept release as `status` shows it.
fn release_view(generation: u64, kept: &Kept) -> status::ReleaseView {
    let r = &kept.release;
    status::ReleaseView {
        generation,
        served: kept.served,
        dir: r.dir.display().to_string(),
        chdir: r.chdir,
        command: r.command_line(),
        executable: r.command.path().display().to_string(),
        executable_id: (r.executable.dev, r.executable.ino, r.executable.mtime_ns),
        script: r
            .script
            .as_ref()
            .map(|(path, _)| path.display().to_string()),
        env_version: r.env_version.clone(),
        rollback_of: r.rollback_of,
        config: r
            .config
            .as_ref()
            .map(|c| (c.path.display().to_string(), c.digest.clone())),
        changed: r.changed.clone(),
    }
}

/// What `reload --wait` is told when the reload ends.
pub(super) fn reload_answer(outcome: &ReloadOutcome) -> Value {
    match outcome {
        ReloadOutcome::Complete {
            generation,
            duration,
        } => json!({
            "ok": true,
            "result": "complete",
            "generation": generation,
            "duration_ms": duration.as_millis() as u64,
        }),
        ReloadOutcome::Aborted { generation, cause } => json!({
            "ok": false,
            "result": "aborted",
            "generation": generation,
            "cause": cause,
            "error": format!(
                "reload aborted: a new worker of generation {generation} {cause}; \
                 the old workers keep serving"
            ),
        }),
        ReloadOutcome::Interrupted { generation } => json!({
            "ok": false,
            "result": "interrupted",
            "generation": generation,
            "error": "the master began to stop before the reload was done",
        }),
    }
}
