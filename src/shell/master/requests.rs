//! The control plane as the master serves it: control and `/metrics`
//! clients' events, a request carried out as the signal it stands for
//! would be, a reload (the env file first), and the answers to clients
//! that wait.

use std::time::Instant;

use serde_json::{Value, json};

use crate::control::server::{self as control, Request};
use crate::control::status;
use crate::launch::Launch;
use crate::start::envfile::Changes;
use crate::supervisor::event::{Event, MasterSignal};
use crate::supervisor::record::Record;
use crate::supervisor::reload::ReloadOutcome;

use super::Master;

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
            Request::Reload { .. } | Request::Scale { .. } if !running => {
                Some(control::error("the master is stopping"))
            }
            Request::Reload { wait } => {
                if wait {
                    self.hold(id);
                    self.reload_waiters.push(id);
                }
                match self.reload(now) {
                    Err(cause) => {
                        self.reload_waiters.retain(|&w| w != id);
                        Some(
                            json!({"ok": false, "result": "aborted", "cause": cause, "error": format!("reload aborted: {cause}")}),
                        )
                    }
                    Ok(()) if wait => None,
                    Ok(()) => {
                        Some(json!({"ok": true, "generation": self.supervisor.target_generation()}))
                    }
                }
            }
            Request::Scale { workers } => {
                self.dispatch(Event::ScaleTo(workers), now);
                Some(json!({"ok": true, "workers": workers}))
            }
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

    /// A reload (HUP or `rcluster reload`): the env file is read first
    /// (without blocking: `envfile.rs`), and one that cannot be read or
    /// parsed stops the reload before it starts.
    pub(super) fn reload(&mut self, now: Instant) -> Result<(), String> {
        if let Some((source, vars)) = &mut self.env {
            match source.reread() {
                Ok(file) => {
                    let changes = Changes::between(vars, &file.vars);
                    self.log.emit(&Record::EnvFileRead {
                        path: source.path.display().to_string(),
                        added: changes.added,
                        removed: changes.removed,
                        changed: changes.changed,
                        emptied: !vars.is_empty() && file.vars.is_empty(),
                    });
                    vars.clone_from(&file.vars);
                    self.launcher.set_env_file(&file.vars);
                    self.dispatch(Event::Signal(MasterSignal::Reload), now);
                    let generation = self.supervisor.target_generation();
                    // Only the versions some worker still runs are kept.
                    let oldest = self.supervisor.workers().map(|w| w.generation).min();
                    let oldest = oldest.unwrap_or(generation);
                    self.info.env_versions.retain(|g, _| *g >= oldest);
                    self.info.env_versions.insert(generation, file.version);
                }
                Err(e) => {
                    let cause = e.message;
                    self.dispatch(
                        Event::ReloadRefused {
                            cause: cause.clone(),
                        },
                        now,
                    );
                    return Err(cause);
                }
            }
        } else {
            self.dispatch(Event::Signal(MasterSignal::Reload), now);
        }
        Ok(())
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
