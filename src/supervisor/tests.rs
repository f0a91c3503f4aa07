//! Every policy decision, with fake instants and no processes.

use std::time::{Duration, Instant};

use super::event::*;
use super::lifecycle::WATCHDOG_KILL_GRACE;
use super::policy::ReadyRule;
use super::reload::ReloadOutcome;
use super::slot::{Lane, ReadyBy, Serving};
use super::*;
use crate::shell::log::render::sentence;
use crate::supervisor::record::{Next, Record};
use crate::vocab::Exit;

const TERM: i32 = libc::SIGTERM;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn policy(workers: usize) -> Policy {
    Policy {
        workers,
        stop_signal: TERM,
        stop_timeout: ms(30_000),
        min_uptime: ms(1000),
        max_restarts: None,
        restart_delay: Default::default(),
        ready: ReadyRule::Exec,
        ready_timeout: ms(60_000),
        min_ready: Duration::ZERO,
        reload_batch: Some(1),
        watchdog: None,
        recycle: Default::default(),
        balance: None,
        probe: None,
    }
}

impl Supervisor {
    /// The indexes and counts, recomputed the slow way: for tests.
    pub fn check_index(&self) {
        for (id, slot) in self.slots.iter().enumerate() {
            let mut indexed = slot.attached.clone();
            indexed.sort();
            let scanned: Vec<Pid> = self
                .workers
                .values()
                .filter(|w| w.slot == id && w.state.is_attached())
                .map(|w| w.pid)
                .collect();
            assert_eq!(indexed, scanned, "slot {id}'s index");
        }
        let timers = self
            .workers
            .values()
            .filter(|w| w.state.deadline().is_some())
            .count()
            + self.slots.iter().filter(|s| s.restart_at.is_some()).count()
            + self.groups.len()
            + self.strays.values().filter(|at| at.is_some()).count()
            + self.age_limits.len()
            + self.retiring.len()
            + usize::from(self.memory_check_at.is_some())
            + self.health.values().filter(|h| h.next_at.is_some()).count()
            + usize::from(!self.stray_search.is_empty());
        assert_eq!(self.timers.len(), timers, "one timer per deadline");
        let ready = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(id, _)| self.attached(id).any(|w| w.state.is_ready()))
            .count();
        assert_eq!(self.ready_slots, ready, "ready slots");
    }
}

/// A supervisor driven the way the shell drives it: `Spawn` actions are
/// answered at once with `Spawned` and a fresh pid.
struct Sim {
    sup: Supervisor,
    t0: Instant,
    now: Instant,
    next_pid: i32,
    /// Pids reported exited: no action may name one again.
    exited: std::collections::BTreeSet<Pid>,
    /// What the next look for strays finds (the shell would list the
    /// master's children).
    strays: Vec<Pid>,
}

impl Sim {
    fn new(policy: Policy) -> Sim {
        let t0 = Instant::now();
        Sim {
            sup: Supervisor::new(policy),
            t0,
            now: t0,
            next_pid: 100,
            exited: Default::default(),
            strays: Vec::new(),
        }
    }

    /// Starts and confirms exec of every initial worker; returns their pids.
    fn started(policy: Policy) -> (Sim, Vec<Pid>) {
        let mut sim = Sim::new(policy);
        let acts = sim.feed(Event::Start);
        let pids = spawned(&acts);
        for &pid in &pids {
            sim.exec_ok(pid);
        }
        (sim, pids)
    }

    fn at(&mut self, millis: u64) -> &mut Sim {
        self.now = self.t0 + ms(millis);
        self
    }

    /// Handles `event` as the shell does: each `Spawn` is answered with
    /// `Spawned` before the next action.
    fn feed(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if let Event::Exited { pid, .. } = &event {
            self.exited.insert(*pid);
        }
        let actions = self.sup.handle(event, self.now);
        self.sup.check_index();
        for action in actions {
            if let Action::Signal { pid, .. } | Action::KillGroup { pid } = &action {
                assert!(
                    !self.exited.contains(pid),
                    "{action:?} names a pid that was already reaped"
                );
            }
            let spawn = match action {
                Action::Spawn {
                    slot, generation, ..
                } => Some((slot, generation)),
                _ => None,
            };
            let look = match action {
                Action::FindStrays { ref of } => Some(of.clone()),
                _ => None,
            };
            out.push(action);
            if let Some(of) = look {
                // Planted strays are found by the look at shutdown.
                let pids = match of {
                    None => std::mem::take(&mut self.strays),
                    Some(_) => Vec::new(),
                };
                out.extend(self.feed(Event::Strays { of, pids }));
            }
            if let Some((slot, generation)) = spawn {
                let pid = Pid::from_raw(self.next_pid);
                self.next_pid += 1;
                out.extend(self.feed(Event::Spawned {
                    slot,
                    generation,
                    pid,
                    confirmed: false,
                }));
            }
        }
        out
    }

    fn exec_ok(&mut self, pid: Pid) -> Vec<Action> {
        self.feed(Event::Exec {
            pid,
            result: Ok(()),
        })
    }

    fn exit(&mut self, pid: Pid, code: i32) -> Vec<Action> {
        self.feed(Event::Exited {
            pid,
            exit: Exit::Code(code),
            last_line: None,
        })
    }

    fn signal(&mut self, signal: MasterSignal) -> Vec<Action> {
        self.feed(Event::Signal(signal))
    }

    fn notify(&mut self, pid: Pid, msg: NotifyMsg) -> Vec<Action> {
        self.feed(Event::Notify {
            pid,
            msg,
            sender: pid,
        })
    }

    fn timeout(&mut self) -> Vec<Action> {
        self.feed(Event::Timeout)
    }

    fn deadline_ms(&self) -> Option<u64> {
        self.sup
            .next_deadline()
            .map(|d| d.duration_since(self.t0).as_millis() as u64)
    }

    /// Pid of the attached worker of `slot` with the highest generation.
    fn pid_of(&self, slot: SlotId) -> Pid {
        self.sup
            .workers()
            .filter(|w| w.slot == slot && w.state.is_attached())
            .max_by_key(|w| w.generation)
            .map(|w| w.pid)
            .expect("slot has a worker")
    }

    /// Workers starting or ready: never more than N + batch in a reload.
    fn live(&self) -> usize {
        self.sup.workers().filter(|w| w.state.is_attached()).count()
    }
}

fn spawned(actions: &[Action]) -> Vec<Pid> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log(Record::WorkerSpawned { pid, .. }) => Some(*pid),
            _ => None,
        })
        .collect()
}

fn spawns(actions: &[Action]) -> Vec<(SlotId, Generation)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn {
                slot, generation, ..
            } => Some((*slot, *generation)),
            _ => None,
        })
        .collect()
}

fn signalled(actions: &[Action]) -> Vec<(Pid, i32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { pid, signal } => Some((*pid, *signal)),
            _ => None,
        })
        .collect()
}

fn killed(actions: &[Action]) -> Vec<Pid> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::KillGroup { pid } => Some(*pid),
            _ => None,
        })
        .collect()
}

fn records(actions: &[Action], name: &str) -> Vec<Record> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log(r) if r.name() == name => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn exit_next(actions: &[Action]) -> Next {
    match records(actions, "worker exited").as_slice() {
        [Record::WorkerExited { next, .. }] => *next,
        other => panic!("expected one exit record, got {other:?}"),
    }
}

fn exit_code(actions: &[Action]) -> Option<u8> {
    actions.iter().find_map(|a| match a {
        Action::Exit(Outcome::Stopped) => Some(0),
        Action::Exit(Outcome::GaveUp { .. }) => Some(1),
        _ => None,
    })
}

// ---- start-up ----------------------------------------------------------------

#[test]
fn start_spawns_one_worker_per_slot_and_announces_ready_once() {
    let mut sim = Sim::new(policy(3));
    let acts = sim.feed(Event::Start);
    assert_eq!(spawns(&acts), [(0, 1), (1, 1), (2, 1)]);
    let pids = spawned(&acts);
    sim.at(5);
    assert!(records(&sim.exec_ok(pids[0]), "workers ready").is_empty());
    sim.exec_ok(pids[1]);
    let acts = sim.exec_ok(pids[2]);
    assert_eq!(
        records(&acts, "workers ready"),
        [Record::WorkersReady {
            workers: 3,
            startup: ms(5)
        }]
    );
    assert!(acts.contains(&Action::NotifyManager(ManagerState::Ready)));
    assert_eq!(
        sim.deadline_ms(),
        None,
        "an idle master has nothing to wake up for"
    );
}

#[test]
fn workers_are_at_least_one() {
    let mut sim = Sim::new(policy(0));
    assert_eq!(spawns(&sim.feed(Event::Start)), [(0, 1)]);
}

// ---- restarts ----------------------------------------------------------------

#[test]
fn a_worker_that_stayed_up_is_restarted_at_once_in_its_slot() {
    let (mut sim, pids) = Sim::started(policy(2));
    sim.at(5_000);
    let acts = sim.feed(Event::Exited {
        pid: pids[1],
        exit: Exit::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        },
        last_line: None,
    });
    assert_eq!(spawns(&acts), [(1, 1)]);
    assert_eq!(
        exit_next(&acts),
        Next::Restart {
            delay: Duration::ZERO,
            attempt: 0
        }
    );
    let text = sentence(&records(&acts, "worker exited")[0]);
    assert!(text.contains("killed by SIGKILL after 5.0s"), "{text}");
    assert!(text.contains("not sent by rcluster"), "{text}");
    assert!(text.ends_with("restarting now"), "{text}");
}

#[test]
fn quick_crashes_back_off_doubling_and_capped() {
    let (mut sim, pids) = Sim::started(policy(1));
    let mut pid = pids[0];
    let mut t = 0;
    let mut delays = Vec::new();
    for _ in 0..10 {
        t += 10;
        let acts = sim.at(t).exit(pid, 1);
        assert!(spawns(&acts).is_empty(), "no restart before the delay");
        let Next::Restart { delay, .. } = exit_next(&acts) else {
            panic!("expected a restart");
        };
        delays.push(delay.as_millis() as u64);
        let restart_at = sim.sup.slots[0].restart_at.expect("a restart is due");
        assert_eq!(
            restart_at.duration_since(sim.t0).as_millis() as u64,
            t + delay.as_millis() as u64
        );
        t += delay.as_millis() as u64;
        let acts = sim.at(t).timeout();
        assert_eq!(spawns(&acts), [(0, 1)]);
        pid = spawned(&acts)[0];
        sim.exec_ok(pid);
    }
    assert_eq!(
        delays,
        [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
    );
}

#[test]
fn a_deadline_wakeup_before_the_delay_does_not_restart() {
    let (mut sim, pids) = Sim::started(policy(1));
    sim.at(10).exit(pids[0], 1);
    assert!(spawns(&sim.at(50).timeout()).is_empty());
    assert_eq!(spawns(&sim.at(110).timeout()), [(0, 1)]);
}

#[test]
fn max_restarts_gives_up_with_a_non_zero_exit_after_stopping_the_rest() {
    let mut p = policy(2);
    p.max_restarts = Some(2);
    let (mut sim, pids) = Sim::started(p);
    let mut pid = pids[0];
    let mut t = 0;
    for _ in 0..2 {
        t += 10;
        sim.at(t).exit(pid, 3);
        t += 10_000;
        pid = spawned(&sim.at(t).timeout())[0];
    }
    t += 10;
    let acts = sim.at(t).exit(pid, 3);
    assert_eq!(exit_next(&acts), Next::GiveUp);
    assert_eq!(records(&acts, "giving up").len(), 1);
    assert_eq!(
        signalled(&acts),
        [(pids[1], TERM)],
        "the healthy worker drains"
    );
    assert_eq!(exit_code(&acts), None, "not before the others are gone");
    let acts = sim.exit(pids[1], 0);
    assert_eq!(exit_code(&acts), Some(1));
    assert_eq!(
        acts.iter().find(|a| matches!(a, Action::Exit(_))),
        Some(&Action::Exit(Outcome::GaveUp {
            slot: 0,
            crashes: 3,
            max_restarts: 2
        }))
    );
}

#[test]
fn a_command_that_can_never_exec_stops_the_master_with_126_or_127() {
    for (errno, code) in [
        (libc::ENOEXEC, 126),
        (libc::EACCES, 126),
        (libc::ENOENT, 127),
    ] {
        let mut sim = Sim::new(policy(2));
        let pids = spawned(&sim.feed(Event::Start));
        sim.feed(Event::Exec {
            pid: pids[0],
            result: Err(errno),
        });
        let acts = sim.exit(pids[0], 127);
        assert_eq!(exit_next(&acts), Next::NotRestarted);
        assert!(spawns(&acts).is_empty(), "no restart loop");
        assert_eq!(signalled(&acts), [(pids[1], TERM)], "the other one stops");
        sim.feed(Event::Exec {
            pid: pids[1],
            result: Err(errno),
        });
        let acts = sim.exit(pids[1], 127);
        assert_eq!(
            acts.last(),
            Some(&Action::Exit(Outcome::CannotExec { errno }))
        );
        assert_eq!(Outcome::CannotExec { errno }.exit_code(), code);
    }
}

#[test]
fn an_exec_failure_after_the_command_once_ran_is_retried_with_backoff() {
    // Once a worker ran, the file was fine: a deploy may be half-copied.
    let (mut sim, pids) = Sim::started(policy(1));
    sim.at(5_000).exit(pids[0], 1);
    let pid = sim.pid_of(0);
    sim.feed(Event::Exec {
        pid,
        result: Err(libc::ENOENT),
    });
    let acts = sim.exit(pid, 127);
    let text = sentence(&records(&acts, "worker exited")[0]);
    assert!(
        text.contains("could not exec the command (ENOENT)"),
        "{text}"
    );
    assert!(matches!(exit_next(&acts), Next::Restart { attempt: 1, .. }));
}

#[test]
fn a_passing_exec_error_is_retried_even_at_start() {
    let mut sim = Sim::new(policy(1));
    let pid = spawned(&sim.feed(Event::Start))[0];
    sim.feed(Event::Exec {
        pid,
        result: Err(libc::ETXTBSY),
    });
    assert!(matches!(
        exit_next(&sim.exit(pid, 127)),
        Next::Restart { attempt: 1, .. }
    ));
}

#[test]
fn fork_failure_backs_off_like_a_crash() {
    let mut sim = Sim::new(policy(1));
    sim.feed(Event::Start);
    let pid = sim.pid_of(0);
    sim.exec_ok(pid);
    sim.at(10).exit(pid, 1);
    let acts = sim.feed(Event::SpawnFailed {
        slot: 0,
        generation: 1,
        error: "fork failed: EAGAIN".into(),
    });
    assert_eq!(records(&acts, "spawn failed").len(), 1);
    assert!(spawns(&acts).is_empty());
    assert!(sim.deadline_ms().is_some());
}

// ---- stopping ----------------------------------------------------------------

#[test]
fn term_drains_every_worker_then_exits_zero() {
    let (mut sim, pids) = Sim::started(policy(2));
    let acts = sim.signal(MasterSignal::Terminate);
    assert_eq!(signalled(&acts), [(pids[0], TERM), (pids[1], TERM)]);
    assert!(acts.contains(&Action::NotifyManager(ManagerState::Stopping)));
    assert_eq!(sim.deadline_ms(), Some(30_000));
    let acts = sim.at(100).exit(pids[0], 0);
    assert!(
        spawns(&acts).is_empty(),
        "a stopping master restarts nothing"
    );
    assert_eq!(exit_next(&acts), Next::Stopped(StopReason::Shutdown));
    let acts = sim.exit(pids[1], 0);
    assert_eq!(exit_code(&acts), Some(0));
    assert!(sim.feed(Event::Timeout).is_empty(), "done means done");
}

#[test]
fn a_worker_that_ignores_its_stop_signal_is_killed_after_the_stop_timeout() {
    let (mut sim, pids) = Sim::started(policy(1));
    sim.signal(MasterSignal::Terminate);
    assert!(killed(&sim.at(29_999).timeout()).is_empty());
    let acts = sim.at(30_000).timeout();
    assert_eq!(killed(&acts), [pids[0]]);
    assert_eq!(records(&acts, "stop timeout").len(), 1);
    assert_eq!(sim.deadline_ms(), None, "SIGKILL is sent once");
    let acts = sim.feed(Event::Exited {
        pid: pids[0],
        exit: Exit::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        },
        last_line: None,
    });
    assert_eq!(exit_code(&acts), Some(0));
    assert!(!sentence(&records(&acts, "worker exited")[0]).contains("not sent by rcluster"));
}

#[test]
fn a_second_term_changes_nothing_but_a_second_int_or_quit_kills_at_once() {
    // timeout(1), systemd and the kubelet may send TERM twice within a
    // millisecond: the stop stays graceful.
    let (mut sim, pids) = Sim::started(policy(2));
    sim.signal(MasterSignal::Terminate);
    let acts = sim.signal(MasterSignal::Terminate);
    assert!(killed(&acts).is_empty() && signalled(&acts).is_empty());
    assert_eq!(records(&acts, "signal ignored").len(), 1);
    // A person pressing Ctrl-C again means it.
    let acts = sim.signal(MasterSignal::Interrupt);
    assert_eq!(killed(&acts), pids);
    assert!(killed(&sim.signal(MasterSignal::Interrupt)).is_empty());
    let (mut sim, pids) = Sim::started(policy(2));
    sim.signal(MasterSignal::Interrupt);
    assert_eq!(killed(&sim.signal(MasterSignal::Quit)), pids);
}

#[test]
fn quit_kills_at_once() {
    let (mut sim, pids) = Sim::started(policy(2));
    let acts = sim.signal(MasterSignal::Quit);
    assert_eq!(killed(&acts), pids);
    assert!(signalled(&acts).is_empty());
}

#[test]
fn a_crash_while_stopping_is_not_restarted() {
    let (mut sim, pids) = Sim::started(policy(2));
    sim.signal(MasterSignal::Terminate);
    let acts = sim.feed(Event::Exited {
        pid: pids[0],
        exit: Exit::Signaled {
            signal: libc::SIGSEGV,
            core_dumped: true,
        },
        last_line: None,
    });
    assert!(spawns(&acts).is_empty());
}

// ---- scaling -----------------------------------------------------------------

#[test]
fn scale_to_n_adds_or_drains_slots_and_counts_restarts() {
    let (mut sim, pids) = Sim::started(policy(2));
    let acts = sim.feed(Event::ScaleTo(4));
    assert_eq!(spawns(&acts), [(2, 1), (3, 1)]);
    let acts = sim.feed(Event::ScaleTo(1));
    assert_eq!(signalled(&acts).len(), 3, "slots 1, 2 and 3 drain");
    assert_eq!(records(&acts, "scaled"), [Record::Scaled { workers: 1 }]);
    sim.at(5_000).exit(pids[0], 1);
    assert_eq!(sim.sup.slots()[0].restarts, 1);
    assert_eq!(sim.sup.slots()[0].last_exit, Some(Exit::Code(1)));
}

#[test]
fn ttin_adds_a_slot_and_ttou_drains_the_last_but_never_the_only_one() {
    let (mut sim, pids) = Sim::started(policy(1));
    let acts = sim.signal(MasterSignal::ScaleUp);
    assert_eq!(spawns(&acts), [(1, 1)]);
    let added = sim.pid_of(1);
    sim.exec_ok(added);
    let acts = sim.signal(MasterSignal::ScaleDown);
    assert_eq!(signalled(&acts), [(added, TERM)]);
    assert_eq!(
        exit_next(&sim.exit(added, 0)),
        Next::Stopped(StopReason::ScaledDown)
    );
    let acts = sim.signal(MasterSignal::ScaleDown);
    assert!(signalled(&acts).is_empty());
    assert_eq!(records(&acts, "signal ignored").len(), 1);
    assert_eq!(sim.sup.slot_count(), 1);
    assert!(sim.sup.is_worker(pids[0]));
}

// ---- reload ------------------------------------------------------------------

#[test]
fn reload_replaces_one_slot_at_a_time_and_only_after_the_new_one_is_ready() {
    let mut p = policy(3);
    p.ready = ReadyRule::Notify;
    let mut sim = Sim::new(p);
    let pids = spawned(&sim.feed(Event::Start));
    for &pid in &pids {
        sim.exec_ok(pid);
        sim.notify(pid, NotifyMsg::Ready);
    }
    let acts = sim.at(1000).signal(MasterSignal::Reload);
    assert_eq!(records(&acts, "reload started").len(), 1);
    assert!(acts.contains(&Action::NotifyManager(ManagerState::Reloading)));
    assert_eq!(spawns(&acts), [(0, 2)]);
    let new0 = spawned(&acts)[0];
    let acts = sim.exec_ok(new0);
    assert!(
        signalled(&acts).is_empty(),
        "exec alone is not ready in notify mode"
    );
    let acts = sim.at(1500).notify(new0, NotifyMsg::Ready);
    assert_eq!(signalled(&acts), [(pids[0], TERM)]);
    assert_eq!(
        spawns(&acts),
        [(1, 2)],
        "the next slot starts without waiting for the drain"
    );
    let new1 = spawned(&acts)[0];
    sim.exec_ok(new1);
    let acts = sim.notify(new1, NotifyMsg::Ready);
    let new2 = spawned(&acts)[0];
    sim.exec_ok(new2);
    let acts = sim.at(2000).notify(new2, NotifyMsg::Ready);
    assert_eq!(
        records(&acts, "reload complete"),
        [Record::ReloadComplete {
            generation: 2,
            duration: ms(1000)
        }]
    );
    assert!(acts.contains(&Action::NotifyManager(ManagerState::Ready)));
    assert!(sim.sup.reload_in_progress().is_none());
    let exit = sim.exit(pids[0], 0);
    assert_eq!(
        exit_next(&exit),
        Next::Stopped(StopReason::Replaced { by: 2 })
    );
    assert!(spawns(&exit).is_empty());
}

#[test]
fn reload_batch_two_replaces_two_slots_at_once() {
    let mut p = policy(4);
    p.reload_batch = Some(2);
    let (mut sim, _) = Sim::started(p);
    let acts = sim.signal(MasterSignal::Reload);
    assert_eq!(spawns(&acts), [(0, 2), (1, 2)]);
    assert_eq!(sim.live(), 6);
}

#[test]
fn a_hup_storm_is_one_plan_that_ends_at_the_last_generation() {
    let mut p = policy(3);
    p.reload_batch = Some(1);
    let (mut sim, _) = Sim::started(p);
    let mut started = 0;
    let mut retargeted = 0;
    for _ in 0..20 {
        let acts = sim.signal(MasterSignal::Reload);
        started += records(&acts, "reload started").len();
        retargeted += records(&acts, "reload retargeted").len();
        assert!(sim.live() <= 4);
    }
    assert_eq!((started, retargeted), (1, 19));
    // Confirm every exec as it comes; the plan must settle.
    let mut complete = 0;
    for _ in 0..100 {
        let starting: Vec<Pid> = sim
            .sup
            .workers()
            .filter(|w| matches!(w.state, WorkerState::Spawned { .. }))
            .map(|w| w.pid)
            .collect();
        if starting.is_empty() {
            break;
        }
        for pid in starting {
            complete += records(&sim.exec_ok(pid), "reload complete").len();
            assert!(sim.live() <= 4, "never more than N + batch workers");
        }
    }
    assert_eq!(complete, 1);
    let gens: Vec<Generation> = sim
        .sup
        .workers()
        .filter(|w| w.state.is_attached())
        .map(|w| w.generation)
        .collect();
    assert_eq!(gens, [21, 21, 21]);
}

#[test]
fn a_new_worker_that_cannot_exec_aborts_the_reload_and_keeps_the_old_ones() {
    let (mut sim, pids) = Sim::started(policy(2));
    let acts = sim.signal(MasterSignal::Reload);
    let new = spawned(&acts)[0];
    sim.feed(Event::Exec {
        pid: new,
        result: Err(libc::ENOENT),
    });
    let acts = sim.exit(new, 127);
    let aborted = records(&acts, "reload aborted");
    assert_eq!(aborted.len(), 1);
    let text = sentence(&aborted[0]);
    assert!(
        text.contains("could not exec the command (ENOENT)"),
        "{text}"
    );
    assert!(
        text.contains("2 workers of older generations keep serving"),
        "{text}"
    );
    assert_eq!(exit_next(&acts), Next::SlotServed);
    assert!(signalled(&acts).is_empty() && spawns(&acts).is_empty());
    assert!(pids.iter().all(|&p| sim.sup.is_worker(p)));
    assert!(matches!(
        sim.sup.last_reload(),
        Some(ReloadOutcome::Aborted { generation: 2, .. })
    ));
    // The next HUP tries again.
    let acts = sim.signal(MasterSignal::Reload);
    assert_eq!(spawns(&acts), [(0, 3)]);
}

#[test]
fn a_new_worker_that_exits_early_aborts_the_reload() {
    let mut p = policy(2);
    p.ready = ReadyRule::Notify;
    let mut sim = Sim::new(p);
    let pids = spawned(&sim.feed(Event::Start));
    for &pid in &pids {
        sim.notify(pid, NotifyMsg::Ready);
    }
    let new = spawned(&sim.signal(MasterSignal::Reload))[0];
    sim.exec_ok(new);
    let acts = sim.at(20).exit(new, 1);
    assert_eq!(records(&acts, "reload aborted").len(), 1);
    assert!(signalled(&acts).is_empty());
    // Crash restarts keep going while the reload is aborted, with the
    // release that serves, not the one that just failed.
    let acts = sim.at(5000).exit(pids[1], 1);
    assert_eq!(spawns(&acts), [(1, 1)]);
}

/// Which release a start runs: during a reload, the reload's (its
/// replacements, and an emptied slot, which it was to replace anyway);
/// otherwise the release of the last completed reload. During a reload,
/// after an abort, and after a completed reload.
#[test]
fn a_restart_runs_the_release_that_serves() {
    let (mut sim, pids) = Sim::started(policy(2));
    let acts = sim.at(2000).signal(MasterSignal::Reload);
    assert_eq!(spawns(&acts), [(0, 2)]);
    let canary = spawned(&acts)[0];
    // During the reload: an old worker's crash starts the new release in
    // its slot at once.
    let acts = sim.at(3000).exit(pids[1], 1);
    assert_eq!(spawns(&acts), [(1, 2)]);
    sim.exec_ok(spawned(&acts)[0]);
    let acts = sim.exec_ok(canary);
    assert_eq!(records(&acts, "reload complete").len(), 1);
    assert_eq!(sim.sup.serving_generation(), 2);
    // After a completed reload: the new release.
    let acts = sim.at(9000).exit(canary, 1);
    assert_eq!(spawns(&acts), [(0, 2)]);
    sim.exec_ok(spawned(&acts)[0]);
    // After an aborted reload: the release that served before it.
    let acts = sim.at(12_000).signal(MasterSignal::Reload);
    let bad = spawned(&acts)[0];
    sim.feed(Event::Exec {
        pid: bad,
        result: Err(libc::ENOENT),
    });
    assert_eq!(records(&sim.exit(bad, 127), "reload aborted").len(), 1);
    let old = sim.pid_of(1);
    let acts = sim.at(20_000).exit(old, 1);
    assert_eq!(spawns(&acts), [(1, 2)]);
    // A scale-up too.
    let acts = sim.feed(Event::ScaleTo(3));
    assert_eq!(spawns(&acts), [(2, 2)]);
    assert_eq!(sim.sup.target_generation(), 3);
    assert_eq!(sim.sup.serving_generation(), 2);
}

#[test]
fn a_new_worker_that_is_never_ready_is_killed_and_the_reload_aborted() {
    let mut p = policy(2);
    p.ready = ReadyRule::Notify;
    p.ready_timeout = ms(3000);
    let mut sim = Sim::new(p);
    let pids = spawned(&sim.feed(Event::Start));
    for &pid in &pids {
        sim.notify(pid, NotifyMsg::Ready);
    }
    sim.at(1000);
    let new = spawned(&sim.signal(MasterSignal::Reload))[0];
    sim.exec_ok(new);
    assert_eq!(sim.deadline_ms(), Some(4000));
    let acts = sim.at(4000).timeout();
    assert_eq!(killed(&acts), [new]);
    assert_eq!(records(&acts, "worker not ready").len(), 1);
    assert_eq!(records(&acts, "reload aborted").len(), 1);
    assert!(signalled(&acts).is_empty() && spawns(&acts).is_empty());
    let acts = sim.feed(Event::Exited {
        pid: new,
        exit: Exit::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        },
        last_line: None,
    });
    assert!(matches!(
        exit_next(&acts),
        Next::Stopped(StopReason::NotReady { .. })
    ));
    assert!(spawns(&acts).is_empty());
}

#[test]
fn aborting_with_batch_two_stops_the_other_unfinished_replacement() {
    let mut p = policy(2);
    p.reload_batch = Some(2);
    p.ready = ReadyRule::Notify;
    let mut sim = Sim::new(p);
    let pids = spawned(&sim.feed(Event::Start));
    for &pid in &pids {
        sim.notify(pid, NotifyMsg::Ready);
    }
    let new = spawned(&sim.signal(MasterSignal::Reload));
    let acts = sim.exit(new[0], 1);
    assert_eq!(signalled(&acts), [(new[1], TERM)]);
    assert!(pids.iter().all(|&p| sim.sup.is_worker(p)));
}

#[test]
fn delay_rule_is_ready_after_the_delay() {
    let mut p = policy(1);
    p.ready = ReadyRule::Delay(ms(500));
    let mut sim = Sim::new(p);
    let pid = spawned(&sim.feed(Event::Start))[0];
    sim.exec_ok(pid);
    assert_eq!(sim.deadline_ms(), Some(500));
    assert!(records(&sim.at(499).timeout(), "worker ready").is_empty());
    assert_eq!(records(&sim.at(500).timeout(), "worker ready").len(), 1);
}

#[test]
fn ready_may_arrive_before_the_exec_pipe_closes() {
    let mut p = policy(1);
    p.ready = ReadyRule::Notify;
    let mut sim = Sim::new(p);
    let pid = spawned(&sim.feed(Event::Start))[0];
    assert_eq!(
        records(&sim.notify(pid, NotifyMsg::Ready), "worker ready").len(),
        1
    );
    sim.exec_ok(pid);
    assert!(sim.sup.workers().all(|w| w.state.is_ready()));
}

#[test]
fn a_worker_that_misses_its_watchdog_is_aborted_and_replaced() {
    let mut p = policy(1);
    p.watchdog = Some(ms(2000));
    let (mut sim, pids) = Sim::started(p);
    sim.at(1500).notify(pids[0], NotifyMsg::Watchdog);
    assert_eq!(sim.deadline_ms(), Some(3500));
    let acts = sim.at(3500).timeout();
    assert_eq!(signalled(&acts), [(pids[0], libc::SIGABRT)]);
    assert_eq!(records(&acts, "watchdog timeout").len(), 1);
    assert_eq!(spawns(&acts), [(0, 1)], "replaced at once");
    let acts = sim
        .at(3500 + WATCHDOG_KILL_GRACE.as_millis() as u64)
        .timeout();
    assert_eq!(killed(&acts), [pids[0]]);
}

#[test]
fn a_worker_that_says_stopping_is_replaced_before_it_exits() {
    let (mut sim, pids) = Sim::started(policy(1));
    let acts = sim.notify(pids[0], NotifyMsg::Stopping);
    assert_eq!(spawns(&acts), [(0, 1)]);
    assert_eq!(
        exit_next(&sim.exit(pids[0], 0)),
        Next::Stopped(StopReason::WorkerStopping)
    );
}

/// A server the shim drained dies of the stop signal it hands over, with
/// nothing in flight: that end is not a warning. Without the shim's word it
/// is (requests were probably lost), and the word counts only while the
/// worker drains.
#[test]
fn a_death_by_the_stop_signal_after_the_shims_drain_is_clean() {
    let end = |sim: &mut Sim, pid| {
        let acts = sim.feed(Event::Exited {
            pid,
            exit: Exit::Signaled {
                signal: libc::SIGTERM,
                core_dumped: false,
            },
            last_line: None,
        });
        let exited = records(&acts, "worker exited").remove(0);
        (exited.meta().1, sentence(&exited))
    };
    let (mut sim, pids) = Sim::started(policy(3));
    // Said before the drain: not yet true, so not kept.
    sim.notify(pids[0], NotifyMsg::Drained);
    sim.signal(MasterSignal::Terminate);
    sim.notify(pids[1], NotifyMsg::Drained);
    let (level, text) = end(&mut sim, pids[1]);
    assert_eq!(level, slog::Level::Info, "{text}");
    assert!(
        text.contains("killed by SIGTERM after 0ms, once the drain had closed all its connections"),
        "{text}"
    );
    for pid in [pids[0], pids[2]] {
        let (level, text) = end(&mut sim, pid);
        assert_eq!(level, slog::Level::Warning, "{text}");
        assert!(
            text.contains("requests in flight were probably lost"),
            "{text}"
        );
    }
}

#[test]
fn status_messages_are_logged_and_unknown_senders_ignored() {
    let (mut sim, pids) = Sim::started(policy(1));
    let acts = sim.notify(pids[0], NotifyMsg::Status("warming up".into()));
    assert_eq!(records(&acts, "worker status").len(), 1);
    assert!(sim.notify(Pid::from_raw(1), NotifyMsg::Ready).is_empty());
    let acts = sim.exit(Pid::from_raw(1), 0);
    assert_eq!(records(&acts, "orphan reaped").len(), 1, "{acts:?}");
    assert_eq!(acts.len(), 1);
}

// ---- two exits in one wake-up -------------------------------------------------

#[test]
fn two_new_workers_that_die_together_are_handled_one_reap_at_a_time() {
    // --reload-batch 2 and a release that crashes at once: both new workers
    // exit before the master wakes up. The shell reaps one, reports it,
    // then reaps the next: the abort decided for the first may signal the
    // second (still a zombie then, so its pid is not reused), and nothing
    // decided afterwards names either. `Sim::feed` checks the second half
    // for every test.
    let mut p = policy(2);
    p.reload_batch = Some(2);
    p.ready = ReadyRule::Notify;
    let mut sim = Sim::new(p);
    let old = spawned(&sim.feed(Event::Start));
    for &pid in &old {
        sim.notify(pid, NotifyMsg::Ready);
    }
    let new = spawned(&sim.signal(MasterSignal::Reload));
    assert_eq!(new.len(), 2);
    let first = sim.at(5).exit(new[0], 1);
    assert_eq!(records(&first, "reload aborted").len(), 1);
    assert_eq!(
        signalled(&first),
        [(new[1], TERM)],
        "the other new one stops"
    );
    let second = sim.exit(new[1], 1);
    assert!(signalled(&second).is_empty() && killed(&second).is_empty());
    assert_eq!(exit_next(&second), Next::Stopped(StopReason::ReloadAborted));
    assert!(old.iter().all(|&p| sim.sup.is_worker(p)));
    assert_eq!(sim.sup.workers().count(), 2);
}

// ---- the life-cycle table, cell by cell ----------------------------------------

/// The states of the table, as `set_up` makes them for slot 1's worker.
#[derive(Debug, Clone, Copy)]
enum From {
    Spawned,
    Booting,
    Ready,
    Leaving,
    Draining,
    Killed,
}

/// The table's columns.
#[derive(Debug, Clone, Copy)]
enum Ev {
    ExecOk,
    ExecFailed,
    Ready,
    Stopping,
    Watchdog,
    Exited,
    Deadline,
    Stop,
    Shutdown,
    Force,
}

/// What a cell says: the next state (`None`: gone), the signal sent to the
/// worker, whether its group is killed, and how its exit counts.
#[derive(Debug, PartialEq, Eq)]
struct Cell {
    next: Option<&'static str>,
    signal: Option<i32>,
    kill: bool,
    exit: Option<&'static str>,
}

fn kind(state: &WorkerState) -> &'static str {
    match state {
        WorkerState::Spawned { .. } => "spawned",
        WorkerState::Booting { .. } => "booting",
        WorkerState::Ready { .. } => "ready",
        WorkerState::Leaving { .. } => "leaving",
        WorkerState::Draining { .. } => "draining",
        WorkerState::Killed { .. } => "killed",
    }
}

/// Two slots; slot 0 serves; slot 1's worker is brought to `from`.
fn set_up(from: From) -> (Sim, Pid) {
    let mut p = policy(2);
    p.ready = ReadyRule::Notify;
    p.ready_timeout = ms(3000);
    p.watchdog = Some(ms(2000));
    let mut sim = Sim::new(p);
    let pids = spawned(&sim.feed(Event::Start));
    sim.exec_ok(pids[0]);
    sim.notify(pids[0], NotifyMsg::Ready);
    let pid = pids[1];
    match from {
        From::Spawned => {}
        From::Booting => {
            sim.exec_ok(pid);
        }
        From::Ready => {
            sim.exec_ok(pid);
            sim.notify(pid, NotifyMsg::Ready);
        }
        From::Leaving => {
            sim.exec_ok(pid);
            sim.notify(pid, NotifyMsg::Ready);
            sim.notify(pid, NotifyMsg::Stopping);
        }
        From::Draining => {
            sim.exec_ok(pid);
            sim.notify(pid, NotifyMsg::Ready);
            sim.feed(Event::ScaleTo(1));
        }
        From::Killed => {
            sim.at(3000).timeout();
        }
    }
    (sim, pid)
}

fn apply(sim: &mut Sim, pid: Pid, ev: Ev) -> Vec<Action> {
    match ev {
        Ev::ExecOk => sim.exec_ok(pid),
        Ev::ExecFailed => sim.feed(Event::Exec {
            pid,
            result: Err(libc::ENOENT),
        }),
        Ev::Ready => sim.notify(pid, NotifyMsg::Ready),
        Ev::Stopping => sim.notify(pid, NotifyMsg::Stopping),
        Ev::Watchdog => sim.notify(pid, NotifyMsg::Watchdog),
        Ev::Exited => sim.at(10_000).exit(pid, 1),
        Ev::Deadline => {
            let deadline = sim.sup.workers[&pid].state.deadline();
            match deadline {
                Some(at) => {
                    sim.now = at;
                    sim.timeout()
                }
                None => Vec::new(),
            }
        }
        Ev::Stop => sim.feed(Event::ScaleTo(1)),
        Ev::Shutdown => sim.signal(MasterSignal::Terminate),
        Ev::Force => sim.signal(MasterSignal::Quit),
    }
}

fn cell(from: From, ev: Ev) -> Cell {
    let (mut sim, pid) = set_up(from);
    let acts = apply(&mut sim, pid, ev);
    let exit = records(&acts, "worker exited")
        .iter()
        .find_map(|r| match r {
            Record::WorkerExited { pid: p, next, .. } if *p == pid => Some(match next {
                Next::Stopped(_) => "stopped",
                Next::Restart { .. } | Next::SlotServed | Next::GiveUp | Next::NotRestarted => {
                    "failure"
                }
            }),
            _ => None,
        });
    Cell {
        next: sim.sup.workers.get(&pid).map(|w| kind(&w.state)),
        signal: signalled(&acts)
            .into_iter()
            .find(|&(p, _)| p == pid)
            .map(|(_, s)| s),
        kill: killed(&acts).contains(&pid),
        exit,
    }
}

fn stays(state: &'static str) -> Cell {
    Cell {
        next: Some(state),
        signal: None,
        kill: false,
        exit: None,
    }
}

fn to(state: &'static str, signal: Option<i32>, kill: bool) -> Cell {
    Cell {
        next: Some(state),
        signal,
        kill,
        exit: None,
    }
}

fn gone(exit: &'static str) -> Cell {
    Cell {
        next: None,
        signal: None,
        kill: false,
        exit: Some(exit),
    }
}

#[test]
fn every_cell_of_the_life_cycle_table() {
    use Ev::*;
    let abrt = Some(libc::SIGABRT);
    let term = Some(TERM);
    let table = [
        (From::Spawned, ExecOk, to("booting", None, false)),
        (From::Spawned, ExecFailed, stays("spawned")),
        (From::Spawned, Ready, to("ready", None, false)),
        (From::Spawned, Stopping, stays("spawned")),
        (From::Spawned, Watchdog, stays("spawned")),
        (From::Spawned, Exited, gone("failure")),
        (From::Spawned, Deadline, to("killed", None, true)),
        (From::Spawned, Stop, to("draining", term, false)),
        (From::Spawned, Shutdown, to("draining", term, false)),
        (From::Spawned, Force, to("killed", None, true)),
        (From::Booting, ExecOk, stays("booting")),
        (From::Booting, ExecFailed, stays("booting")),
        (From::Booting, Ready, to("ready", None, false)),
        (From::Booting, Stopping, stays("booting")),
        (From::Booting, Watchdog, stays("booting")),
        (From::Booting, Exited, gone("failure")),
        (From::Booting, Deadline, to("killed", None, true)),
        (From::Booting, Stop, to("draining", term, false)),
        (From::Booting, Shutdown, to("draining", term, false)),
        (From::Booting, Force, to("killed", None, true)),
        (From::Ready, ExecOk, stays("ready")),
        (From::Ready, ExecFailed, stays("ready")),
        (From::Ready, Ready, stays("ready")),
        (From::Ready, Stopping, to("leaving", None, false)),
        (From::Ready, Watchdog, stays("ready")),
        (From::Ready, Exited, gone("failure")),
        (From::Ready, Deadline, to("draining", abrt, false)),
        (From::Ready, Stop, to("draining", term, false)),
        (From::Ready, Shutdown, to("draining", term, false)),
        (From::Ready, Force, to("killed", None, true)),
        (From::Leaving, ExecOk, stays("leaving")),
        (From::Leaving, ExecFailed, stays("leaving")),
        (From::Leaving, Ready, stays("leaving")),
        (From::Leaving, Stopping, stays("leaving")),
        (From::Leaving, Watchdog, stays("leaving")),
        (From::Leaving, Exited, gone("stopped")),
        (From::Leaving, Deadline, to("killed", None, true)),
        (From::Leaving, Stop, stays("leaving")),
        (From::Leaving, Shutdown, to("draining", term, false)),
        (From::Leaving, Force, to("killed", None, true)),
        (From::Draining, ExecOk, stays("draining")),
        (From::Draining, ExecFailed, stays("draining")),
        (From::Draining, Ready, stays("draining")),
        (From::Draining, Stopping, stays("draining")),
        (From::Draining, Watchdog, stays("draining")),
        (From::Draining, Exited, gone("stopped")),
        (From::Draining, Deadline, to("killed", None, true)),
        (From::Draining, Stop, stays("draining")),
        (From::Draining, Shutdown, stays("draining")),
        (From::Draining, Force, to("killed", None, true)),
        (From::Killed, ExecOk, stays("killed")),
        (From::Killed, ExecFailed, stays("killed")),
        (From::Killed, Ready, stays("killed")),
        (From::Killed, Stopping, stays("killed")),
        (From::Killed, Watchdog, stays("killed")),
        (From::Killed, Exited, gone("stopped")),
        (From::Killed, Deadline, stays("killed")),
        (From::Killed, Stop, stays("killed")),
        (From::Killed, Shutdown, stays("killed")),
        (From::Killed, Force, stays("killed")),
    ];
    let mut wrong = Vec::new();
    for (from, ev, want) in table {
        let got = cell(from, ev);
        if got != want {
            wrong.push(format!("{from:?} x {ev:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "cells that differ:\n{}", wrong.join("\n"));
}

#[test]
fn cells_with_more_to_say() {
    // Booting under a delay rule: its deadline is the delay, then Ready.
    let mut p = policy(1);
    p.ready = ReadyRule::Delay(ms(500));
    let mut sim = Sim::new(p);
    let pid = spawned(&sim.feed(Event::Start))[0];
    sim.exec_ok(pid);
    let acts = sim.at(500).timeout();
    assert_eq!(records(&acts, "worker ready").len(), 1);
    // A watchdog ping moves the deadline: none is missed at the old one.
    let (mut sim, pid) = set_up(From::Ready);
    let before = sim.sup.workers[&pid].state.deadline().unwrap();
    sim.at(1000).notify(pid, NotifyMsg::Watchdog);
    assert_eq!(
        sim.sup.workers[&pid].state.deadline(),
        Some(before + ms(1000))
    );
    // Killed has no deadline: SIGKILL is sent once.
    let (sim, pid) = set_up(From::Killed);
    assert_eq!(sim.sup.workers[&pid].state.deadline(), None);
    // An exec error is kept for the exit's record.
    let (mut sim, pid) = set_up(From::Spawned);
    apply(&mut sim, pid, Ev::ExecFailed);
    let text = sentence(&records(&sim.exit(pid, 127), "worker exited")[0]);
    assert!(
        text.contains("could not exec the command (ENOENT)"),
        "{text}"
    );
    // Ready x STOPPING: the replacement starts at once.
    let (mut sim, pid) = set_up(From::Ready);
    assert_eq!(spawns(&apply(&mut sim, pid, Ev::Stopping)), [(1, 1)]);
}

// ---- safe defaults (#10) ---------------------------------------------------------

fn looks(actions: &[Action]) -> Vec<Pid> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::LookServing { pid } => Some(*pid),
            _ => None,
        })
        .collect()
}

fn ready_by(actions: &[Action]) -> Vec<ReadyBy> {
    records(actions, "worker ready")
        .into_iter()
        .map(|r| match r {
            Record::WorkerReady { by, .. } => by,
            _ => unreachable!(),
        })
        .collect()
}

fn serving(sim: &mut Sim, pid: Pid, serving: Serving) -> Vec<Action> {
    sim.feed(Event::Serving { pid, serving })
}

#[test]
fn auto_is_ready_at_ready_1_or_when_a_look_after_min_uptime_finds_it_listening() {
    let mut p = policy(3);
    p.ready = ReadyRule::Auto;
    let mut sim = Sim::new(p);
    let pids = spawned(&sim.feed(Event::Start));
    for &pid in &pids {
        sim.exec_ok(pid);
    }
    assert_eq!(sim.deadline_ms(), Some(1000), "min-uptime after exec");
    assert!(looks(&sim.at(999).timeout()).is_empty());
    let acts = sim.at(1000).timeout();
    assert_eq!(looks(&acts), pids, "each silent worker is looked at");
    assert!(records(&acts, "worker ready").is_empty());
    // Waiting on its listeners; not to be seen; not listening (yet).
    assert_eq!(
        ready_by(&serving(&mut sim, pids[0], Serving::Yes)),
        [ReadyBy::Listening]
    );
    assert_eq!(
        ready_by(&serving(&mut sim, pids[1], Serving::Unknown)),
        [ReadyBy::Uptime]
    );
    let acts = serving(&mut sim, pids[2], Serving::No { idle: true });
    assert!(records(&acts, "worker ready").is_empty());
    assert!(records(&acts, "worker not serving").is_empty(), "no reload");
    // Looked at again, later and later, until it listens.
    assert_eq!(sim.deadline_ms(), Some(1100));
    assert_eq!(looks(&sim.at(1100).timeout()), [pids[2]]);
    serving(&mut sim, pids[2], Serving::No { idle: false });
    assert_eq!(sim.deadline_ms(), Some(1300));
    assert_eq!(looks(&sim.at(1300).timeout()), [pids[2]]);
    let acts = serving(&mut sim, pids[2], Serving::Yes);
    assert_eq!(ready_by(&acts), [ReadyBy::Listening]);
    assert_eq!(records(&acts, "workers ready").len(), 1);
    assert_eq!(sim.deadline_ms(), None, "no more looks once ready");
}

/// Under `--ready DELAY`, a worker ready by the timer after earlier ones
/// said READY=1 (a notify helper that fails silently) is warned of, once.
#[test]
fn a_worker_ready_by_the_timer_after_others_said_ready_1_is_warned_of_once() {
    let mut p = policy(3);
    p.ready = ReadyRule::Delay(ms(500));
    let mut sim = Sim::new(p);
    let pids = spawned(&sim.feed(Event::Start));
    for &pid in &pids {
        sim.exec_ok(pid);
    }
    let acts = sim.at(100).notify(pids[0], NotifyMsg::Ready);
    assert!(records(&acts, "ready by timer only").is_empty());
    // Two workers ready by the timer after the first said READY=1: one
    // warning.
    let acts = sim.at(500).timeout();
    assert_eq!(ready_by(&acts), [ReadyBy::Delay, ReadyBy::Delay]);
    let warned = records(&acts, "ready by timer only");
    assert_eq!(warned.len(), 1);
    assert!(
        sentence(&warned[0]).contains("$RCLUSTER_BIN"),
        "{:?}",
        warned[0]
    );
    // Nothing said at all: ready by the timer is what the rule asks for.
    let mut p = policy(1);
    p.ready = ReadyRule::Delay(ms(500));
    let mut sim = Sim::new(p);
    let pid = spawned(&sim.feed(Event::Start))[0];
    sim.exec_ok(pid);
    let acts = sim.at(500).timeout();
    assert_eq!(ready_by(&acts), [ReadyBy::Delay]);
    assert!(records(&acts, "ready by timer only").is_empty());
}

#[test]
fn auto_learns_that_the_app_says_ready_1_and_then_waits_for_it() {
    let mut p = policy(2);
    p.ready = ReadyRule::Auto;
    let mut sim = Sim::new(p);
    let pids = spawned(&sim.feed(Event::Start));
    sim.exec_ok(pids[0]);
    sim.exec_ok(pids[1]);
    let acts = sim.at(50).notify(pids[0], NotifyMsg::Ready);
    assert_eq!(records(&acts, "readiness learned").len(), 1);
    assert_eq!(ready_by(&acts), [ReadyBy::Notify { sender: pids[0] }]);
    // The other is listening, but the app speaks the protocol: not ready
    // until it says so, and no more looks.
    assert_eq!(looks(&sim.at(1000).timeout()), [pids[1]]);
    let acts = serving(&mut sim, pids[1], Serving::Yes);
    assert!(ready_by(&acts).is_empty());
    assert_eq!(sim.deadline_ms(), Some(60_000), "only --ready-timeout");
    // Said once: the later READY=1 counts, and is not learned again.
    let acts = sim.at(2000).notify(pids[1], NotifyMsg::Ready);
    assert!(records(&acts, "readiness learned").is_empty());
    assert_eq!(records(&acts, "workers ready").len(), 1);
    // A new worker that never says it is killed at --ready-timeout, and
    // the record says why it is suspicious.
    sim.at(5000).exit(pids[1], 1);
    let pid = sim.pid_of(1);
    sim.exec_ok(pid);
    sim.at(6000).timeout();
    serving(&mut sim, pid, Serving::Yes);
    let acts = sim.at(65_000).timeout();
    match records(&acts, "worker not ready").as_slice() {
        [Record::NotReady { listening, .. }] => assert_eq!(*listening, Some(true)),
        other => panic!("{other:?}"),
    }
    assert!(sentence(&records(&acts, "worker not ready")[0]).contains("never said READY=1"));
}

#[test]
fn under_auto_a_release_that_dies_soon_after_start_aborts_the_reload() {
    // The seed story: a new release that exits 200 ms after start (a missing
    // variable). Under `exec` it would have replaced every good worker.
    let (mut sim, old) = speaking_with(policy(2));
    let new = spawned(&sim.at(10_000).signal(MasterSignal::Reload))[0];
    sim.exec_ok(new);
    let acts = sim.at(10_200).exit(new, 1);
    assert_eq!(records(&acts, "reload aborted").len(), 1);
    assert!(signalled(&acts).is_empty(), "no old worker is stopped");
    assert!(old.iter().all(|&p| sim.sup.is_worker(p)));
    assert!(matches!(
        acts.iter().find(|a| matches!(a, Action::ReloadFinished(_))),
        Some(Action::ReloadFinished(ReloadOutcome::Aborted { .. }))
    ));
}

#[test]
fn a_slow_boot_then_a_crash_is_a_quick_crash() {
    // Ready after 1.2 s, dead 200 ms later: uptime 1.4 s is more than
    // --min-uptime, but it was ready for only 200 ms.
    let mut p = policy(1);
    p.ready = ReadyRule::Notify;
    p.max_restarts = Some(3);
    let mut sim = Sim::new(p);
    let mut pid = spawned(&sim.feed(Event::Start))[0];
    let mut t = 0;
    let mut delays = Vec::new();
    for round in 0..4 {
        sim.exec_ok(pid);
        sim.at(t + 1200).notify(pid, NotifyMsg::Ready);
        let acts = sim.at(t + 1400).exit(pid, 1);
        if round == 3 {
            assert_eq!(exit_next(&acts), Next::GiveUp);
            break;
        }
        let Next::Restart { delay, .. } = exit_next(&acts) else {
            panic!("expected a backoff, got {:?}", exit_next(&acts));
        };
        delays.push(delay.as_millis() as u64);
        t += 1400 + delay.as_millis() as u64;
        pid = spawned(&sim.at(t).timeout())[0];
    }
    assert_eq!(delays, [100, 200, 400]);
}

#[test]
fn a_crash_after_min_uptime_of_being_ready_restarts_at_once() {
    let mut p = policy(1);
    p.ready = ReadyRule::Notify;
    let mut sim = Sim::new(p);
    let pid = spawned(&sim.feed(Event::Start))[0];
    sim.exec_ok(pid);
    sim.at(5000).notify(pid, NotifyMsg::Ready);
    let acts = sim.at(6000).exit(pid, 1);
    assert_eq!(
        exit_next(&acts),
        Next::Restart {
            delay: Duration::ZERO,
            attempt: 0
        }
    );
}

#[test]
fn a_reload_during_a_crash_loop_backoff_starts_the_new_generation_now() {
    let (mut sim, pids) = Sim::started(policy(2));
    // Slot 1 crash-loops until its backoff is long.
    let mut pid = pids[1];
    let mut t = 0;
    for _ in 0..8 {
        t += 10;
        let acts = sim.at(t).exit(pid, 1);
        let Next::Restart { delay, .. } = exit_next(&acts) else {
            panic!("expected a backoff");
        };
        t += delay.as_millis() as u64;
        pid = spawned(&sim.at(t).timeout())[0];
        sim.exec_ok(pid);
    }
    let acts = sim.at(t + 10).exit(pid, 1);
    assert_eq!(
        exit_next(&acts),
        Next::Restart {
            delay: ms(10_000),
            attempt: 9
        }
    );
    let acts = sim.at(t + 1000).signal(MasterSignal::Reload);
    assert_eq!(records(&acts, "backoff cut").len(), 1);
    assert!(
        spawns(&acts).contains(&(1, 2)),
        "slot 1 starts the new generation at once: {acts:?}"
    );
    // And its backoff starts again from 100 ms.
    let new = sim.pid_of(1);
    let acts = sim.at(t + 1010).exit(new, 1);
    assert!(matches!(
        exit_next(&acts),
        Next::Restart { attempt: 1, delay } if delay == ms(100)
    ));
}

// ---- nothing a worker started outlives it (#11) -----------------------------------

#[test]
fn an_exited_workers_group_is_stopped_and_killed_if_it_lingers() {
    let (mut sim, pids) = Sim::started(policy(1));
    let acts = sim.at(5_000).exit(pids[0], 1);
    assert!(acts.contains(&Action::StopGroup {
        pgid: pids[0],
        signal: TERM
    }));
    // Something was still in the group: killed after --stop-timeout.
    sim.feed(Event::GroupLingers { pgid: pids[0] });
    assert!(sim.at(5_100).timeout().contains(&Action::FindStrays {
        of: Some(vec![pids[0]])
    }));
    assert_eq!(sim.deadline_ms(), Some(35_000));
    assert!(
        sim.at(35_000)
            .timeout()
            .contains(&Action::KillRemnants { pgid: pids[0] })
    );
}

/// The master's children are listed once for the exits of 100 ms, not for
/// each: a listing costs as much as there are workers (at 1024, a listing
/// per exit was half the master's CPU in a reload).
#[test]
fn what_exited_workers_left_is_searched_for_once_for_exits_close_together() {
    let (mut sim, pids) = Sim::started(policy(2));
    let find = |acts: &[Action]| {
        acts.iter()
            .filter(|a| matches!(a, Action::FindStrays { .. }))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(find(&sim.at(5_000).exit(pids[0], 1)).is_empty());
    assert!(find(&sim.at(5_050).exit(pids[1], 1)).is_empty());
    assert_eq!(
        find(&sim.at(5_100).timeout()),
        [Action::FindStrays {
            of: Some(vec![pids[0], pids[1]])
        }]
    );
}

#[test]
fn a_lingering_group_whose_number_is_a_new_workers_is_left_alone() {
    let (mut sim, pids) = Sim::started(policy(1));
    sim.at(5_000).exit(pids[0], 1);
    sim.feed(Event::GroupLingers { pgid: pids[0] });
    // The pid came round again: the old group is gone, this one is ours.
    let reused = pids[0];
    sim.feed(Event::Spawned {
        slot: 0,
        generation: 1,
        pid: reused,
        confirmed: true,
    });
    let acts = sim.at(35_000).timeout();
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::KillRemnants { .. }))
    );
}

#[test]
fn a_worker_that_said_stopping_gets_the_stop_signal_at_shutdown() {
    let (mut sim, pids) = Sim::started(policy(1));
    let acts = sim.notify(pids[0], NotifyMsg::Stopping);
    assert!(signalled(&acts).is_empty(), "it stops on its own");
    let acts = sim.at(100).signal(MasterSignal::Terminate);
    assert!(signalled(&acts).contains(&(pids[0], TERM)), "{acts:?}");
    // Its deadline stays the one it had.
    assert!(killed(&sim.at(29_999).timeout()).is_empty());
    assert_eq!(killed(&sim.at(30_000).timeout()), [pids[0]]);
}

#[test]
fn the_master_exits_only_once_nothing_the_workers_left_behind_runs() {
    let (mut sim, pids) = Sim::started(policy(1));
    sim.signal(MasterSignal::Terminate);
    let stray = Pid::from_raw(900);
    sim.strays = vec![stray];
    let acts = sim.at(100).exit(pids[0], 0);
    assert_eq!(exit_code(&acts), None, "a stray still runs");
    assert!(signalled(&acts).contains(&(stray, TERM)));
    assert_eq!(records(&acts, "strays stopping").len(), 1);
    // It ignores TERM: SIGKILL after --stop-timeout.
    assert_eq!(killed(&sim.at(30_100).timeout()), [stray]);
    // Reaped: a last look finds nothing more; the master exits.
    let acts = sim.exit(stray, 137);
    assert_eq!(exit_code(&acts), Some(0));
}

#[test]
fn the_first_ready_worker_of_each_generation_is_looked_at_for_a_port_of_its_own() {
    let checks = |acts: &[Action]| -> Vec<Pid> {
        acts.iter()
            .filter_map(|a| match a {
                Action::CheckListeners { pid } => Some(*pid),
                _ => None,
            })
            .collect()
    };
    let mut p = policy(2);
    p.ready = ReadyRule::Notify;
    let mut sim = Sim::new(p);
    let pids = spawned(&sim.feed(Event::Start));
    assert_eq!(checks(&sim.notify(pids[0], NotifyMsg::Ready)), [pids[0]]);
    assert!(checks(&sim.notify(pids[1], NotifyMsg::Ready)).is_empty());
    // A restart in the same generation: not again.
    let restarted = spawned(&sim.at(5000).exit(pids[1], 1))[0];
    assert!(checks(&sim.notify(restarted, NotifyMsg::Ready)).is_empty());
    // A reload's first ready worker: once more.
    let new = spawned(&sim.signal(MasterSignal::Reload))[0];
    assert_eq!(checks(&sim.notify(new, NotifyMsg::Ready)), [new]);
}

fn recycling(max_memory: Option<u64>, max_age: Option<Duration>) -> Policy {
    let mut p = policy(2);
    p.ready = ReadyRule::Notify;
    p.recycle = recycle::RecyclePolicy {
        max_memory,
        max_age,
        memory_check: ms(5000),
        seed: 7,
    };
    p
}

fn recycled(acts: &[Action]) -> Vec<Pid> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Log(Record::WorkerRecycled { pid, .. }) => Some(*pid),
            _ => None,
        })
        .collect()
}

#[test]
fn without_recycling_options_an_idle_master_has_no_deadline() {
    let (mut sim, pids) = Sim::started(policy(2));
    for &pid in &pids {
        sim.notify(pid, NotifyMsg::Ready);
    }
    assert_eq!(sim.deadline_ms(), None);
    // With --max-memory, the memory check is the one deadline.
    let mut sim = Sim::new(recycling(Some(50 << 20), None));
    let pids = spawned(&sim.feed(Event::Start));
    for &pid in &pids {
        sim.exec_ok(pid);
        sim.notify(pid, NotifyMsg::Ready);
    }
    assert_eq!(sim.deadline_ms(), Some(5000));
}

#[test]
fn a_worker_over_max_memory_is_replaced_successor_first_one_slot_at_a_time() {
    let mut sim = Sim::new(recycling(Some(50 << 20), None));
    let pids = spawned(&sim.feed(Event::Start));
    for &pid in &pids {
        sim.exec_ok(pid);
        sim.notify(pid, NotifyMsg::Ready);
    }
    let acts = sim.at(5000).timeout();
    let asked = acts.iter().find_map(|a| match a {
        Action::MeasureMemory { pids } => Some(pids.clone()),
        _ => None,
    });
    assert_eq!(asked, Some(pids.clone()));
    // Both over the limit: only the first is recycled now, and nothing is
    // signalled before its successor is ready.
    let acts = sim.feed(Event::Memory(vec![
        (pids[0], 60 << 20),
        (pids[1], 70 << 20),
    ]));
    assert_eq!(recycled(&acts), [pids[0]]);
    assert_eq!(spawns(&acts), [(0, 1)]);
    assert!(signalled(&acts).is_empty());
    let successor = sim.pid_of(0);
    sim.exec_ok(successor);
    let acts = sim.notify(successor, NotifyMsg::Ready);
    assert_eq!(signalled(&acts), [(pids[0], TERM)]);
    // Then the second slot's turn.
    assert_eq!(recycled(&acts), [pids[1]]);
    assert_eq!(spawns(&acts), [(1, 1)]);
    // The memory check goes on.
    assert_eq!(sim.deadline_ms(), Some(10_000));
}

#[test]
fn a_recycle_whose_successor_fails_keeps_the_old_worker_and_tries_again_later() {
    let mut sim = Sim::new(recycling(Some(50 << 20), None));
    let pids = spawned(&sim.feed(Event::Start));
    for &pid in &pids {
        sim.exec_ok(pid);
        sim.notify(pid, NotifyMsg::Ready);
    }
    sim.at(5000).timeout();
    sim.feed(Event::Memory(vec![(pids[0], 60 << 20)]));
    let successor = sim.pid_of(0);
    sim.exec_ok(successor);
    let acts = sim.at(5010).exit(successor, 1);
    assert!(signalled(&acts).is_empty(), "the old worker keeps serving");
    assert!(spawns(&acts).is_empty(), "not again at once");
    // After the restart delay (100 ms for the first failure), again.
    let acts = sim.at(5110).timeout();
    assert_eq!(recycled(&acts), [pids[0]]);
    assert_eq!(spawns(&acts), [(0, 1)]);
}

#[test]
fn max_age_recycles_slot_by_slot_within_the_limit() {
    let mut sim = Sim::new(recycling(None, Some(ms(4000))));
    let pids = spawned(&sim.feed(Event::Start));
    for &pid in &pids {
        sim.exec_ok(pid);
        sim.notify(pid, NotifyMsg::Ready);
    }
    // Slot 0 lives between 3 and 4 s, slot 1 between 2 and 3 s.
    let mut when = Vec::new();
    for t in (0..=4000).step_by(10) {
        let acts = sim.at(t).timeout();
        for pid in recycled(&acts) {
            when.push((pid, t));
            let successor = sim.pid_of(if pid == pids[0] { 0 } else { 1 });
            sim.exec_ok(successor);
            sim.notify(successor, NotifyMsg::Ready);
        }
    }
    assert_eq!(when.len(), 2, "{when:?}");
    assert_eq!(when[0].0, pids[1]);
    assert!((2000..3000).contains(&when[0].1), "{when:?}");
    assert_eq!(when[1].0, pids[0]);
    assert!((3000..=4000).contains(&when[1].1), "{when:?}");
}

/// The queues the last `Steer` in `acts` names.
fn queues(acts: &[Action]) -> Option<Vec<(SlotId, Lane)>> {
    acts.iter().rev().find_map(|a| match a {
        Action::Steer { queues } => Some(queues.clone()),
        _ => None,
    })
}

/// The slots the last `Steer` in `acts` names.
fn steered(acts: &[Action]) -> Option<Vec<SlotId>> {
    queues(acts).map(|q| q.into_iter().map(|(slot, _)| slot).collect())
}

/// The lane each `Spawn` in `acts` asks for.
fn lanes(acts: &[Action]) -> Vec<Lane> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Spawn { lane, .. } => Some(*lane),
            _ => None,
        })
        .collect()
}

#[test]
fn with_a_queue_per_slot_new_connections_follow_the_ready_workers() {
    let mut p = policy(3);
    p.balance = Some(policy::Balance {
        retire_grace: ms(250),
    });
    let mut sim = Sim::new(p);
    let acts = sim.feed(Event::Start);
    assert_eq!(steered(&acts), None, "nobody is ready yet");
    let pids = spawned(&acts);
    let steers: Vec<_> = pids
        .iter()
        .filter_map(|&pid| steered(&sim.exec_ok(pid)))
        .collect();
    assert_eq!(steers, [vec![0], vec![0, 1], vec![0, 1, 2]]);

    // A worker that exits is steered away from at once, and back to when
    // its replacement is ready.
    let acts = sim.at(5000).exit(pids[1], 1);
    assert_eq!(steered(&acts), Some(vec![0, 2]));
    let replacement = spawned(&acts)[0];
    assert_eq!(steered(&sim.exec_ok(replacement)), Some(vec![0, 1, 2]));
    // Nothing changed, nothing to steer.
    assert_eq!(steered(&sim.at(5100).timeout()), None);

    // Scaling down steers away first; the worker stops after the grace.
    let acts = sim.feed(Event::ScaleTo(2));
    assert_eq!(steered(&acts), Some(vec![0, 1]));
    assert!(signalled(&acts).is_empty(), "still emptying its queue");
    assert_eq!(sim.deadline_ms(), Some(5350));
    assert_eq!(signalled(&sim.at(5350).timeout()), [(pids[2], TERM)]);

    // With no ready worker at all, every slot's queue takes connections
    // (they wait for the workers).
    sim.at(9000).exit(pids[0], 1);
    let acts = sim.exit(replacement, 1);
    assert_eq!(steered(&acts), Some(vec![0, 1]));
}

#[test]
fn with_one_shared_queue_nothing_is_steered() {
    let (mut sim, pids) = Sim::started(policy(2));
    let acts = sim.at(5000).exit(pids[0], 1);
    assert_eq!(steered(&acts), None);
}

// ---- ready is not healthy (#18) ------------------------------------------------

/// `workers` started and ready (by READY=1) under `auto`, a 1 s hold and
/// the automatic batch.
fn speaking(workers: usize) -> (Sim, Vec<Pid>) {
    let mut p = policy(workers);
    p.min_ready = ms(1000);
    p.reload_batch = None;
    speaking_with(p)
}

/// The workers of `p` started and ready by READY=1, under `auto`.
fn speaking_with(mut p: Policy) -> (Sim, Vec<Pid>) {
    p.ready = ReadyRule::Auto;
    let mut sim = Sim::new(p);
    let pids = spawned(&sim.feed(Event::Start));
    for &pid in &pids {
        sim.exec_ok(pid);
        sim.notify(pid, NotifyMsg::Ready);
    }
    (sim, pids)
}

fn hold_of(actions: &[Action]) -> Option<Duration> {
    records(actions, "worker ready")
        .into_iter()
        .find_map(|r| match r {
            Record::WorkerReady { hold, .. } => hold,
            _ => None,
        })
}

#[test]
fn the_canary_stays_ready_for_min_ready_before_any_old_worker_stops() {
    let (mut sim, old) = speaking(8);
    let acts = sim.at(10_000).signal(MasterSignal::Reload);
    assert_eq!(spawns(&acts), [(0, 2)], "the canary alone");
    let canary = spawned(&acts)[0];
    sim.exec_ok(canary);
    let acts = sim.at(10_050).notify(canary, NotifyMsg::Ready);
    assert_eq!(hold_of(&acts), Some(ms(1000)));
    assert!(signalled(&acts).is_empty(), "held: the old one serves on");
    assert!(spawns(&acts).is_empty(), "and nothing else starts");
    assert_eq!(sim.deadline_ms(), Some(11_050));
    let acts = sim.at(11_050).timeout();
    assert_eq!(records(&acts, "canary proven").len(), 1);
    assert_eq!(
        signalled(&acts),
        [(old[0], TERM)],
        "proven: its old worker drains"
    );
    assert_eq!(
        spawns(&acts),
        [(1, 2), (2, 2)],
        "then a quarter of 8 at a time"
    );
    // The rest are trusted at their ready: no hold.
    let next = spawned(&acts);
    sim.exec_ok(next[0]);
    let acts = sim.notify(next[0], NotifyMsg::Ready);
    assert_eq!(hold_of(&acts), None);
    assert_eq!(signalled(&acts), [(old[1], TERM)]);
    assert_eq!(spawns(&acts), [(3, 2)]);
}

#[test]
fn a_release_that_dies_after_ready_1_within_the_hold_aborts_and_stops_nothing() {
    for after in [200, 900] {
        let (mut sim, old) = speaking(4);
        let canary = spawned(&sim.at(10_000).signal(MasterSignal::Reload))[0];
        sim.exec_ok(canary);
        sim.at(10_010).notify(canary, NotifyMsg::Ready);
        let acts = sim.at(10_010 + after).exit(canary, 1);
        assert_eq!(records(&acts, "reload aborted").len(), 1, "{after}");
        assert!(signalled(&acts).is_empty());
        assert!(matches!(
            acts.iter().find(|a| matches!(a, Action::ReloadFinished(_))),
            Some(Action::ReloadFinished(ReloadOutcome::Aborted { .. }))
        ));
        assert_eq!(exit_next(&acts), Next::SlotServed);
        assert!(old.iter().all(|&p| sim.sup.is_worker(p)));
        assert!(sim.sup.all_ready());
        assert!(sim.sup.reload_in_progress().is_none(), "nothing hangs");
    }
}

#[test]
fn any_exit_of_a_new_worker_after_its_ready_aborts_the_reload_in_progress() {
    // With no hold, the 4-worker hang of #18: new workers ready, then dying.
    let (mut sim, old) = speaking_with(policy(4));
    let first = spawned(&sim.at(10_000).signal(MasterSignal::Reload))[0];
    sim.exec_ok(first);
    let acts = sim.at(10_010).notify(first, NotifyMsg::Ready);
    assert_eq!(signalled(&acts), [(old[0], TERM)]);
    let second = spawned(&acts)[0];
    sim.exec_ok(second);
    let acts = sim.at(10_200).exit(first, 1);
    assert_eq!(records(&acts, "reload aborted").len(), 1);
    assert_eq!(
        signalled(&acts),
        [(second, TERM)],
        "the unfinished replacement stops; old workers 1..3 serve on"
    );
    assert!(old[1..].iter().all(|&p| sim.sup.is_worker(p)));
    assert!(sim.sup.reload_in_progress().is_none());
}

#[test]
fn a_new_worker_idle_and_not_listening_aborts_the_reload_and_an_old_one_never_does() {
    let mut p = policy(2);
    p.ready = ReadyRule::Auto;
    p.min_ready = ms(1000);
    let mut sim = Sim::new(p);
    let old = spawned(&sim.feed(Event::Start));
    for &pid in &old {
        sim.exec_ok(pid);
    }
    let acts = sim.at(1000).timeout();
    // Idle and not listening at start (a database that is late): it waits.
    let acts = serving(&mut sim, looks(&acts)[0], Serving::No { idle: true });
    assert!(records(&acts, "worker not serving").is_empty());
    serving(&mut sim, old[1], Serving::Yes);
    serving(&mut sim, old[0], Serving::Yes);
    let new = spawned(&sim.at(5000).signal(MasterSignal::Reload))[0];
    sim.exec_ok(new);
    assert_eq!(looks(&sim.at(6000).timeout()), [new]);
    // Busy booting: looked at again.
    let acts = serving(&mut sim, new, Serving::No { idle: false });
    assert!(records(&acts, "reload aborted").is_empty());
    assert_eq!(looks(&sim.at(6100).timeout()), [new]);
    let acts = serving(&mut sim, new, Serving::No { idle: true });
    assert_eq!(records(&acts, "worker not serving").len(), 1);
    assert_eq!(records(&acts, "reload aborted").len(), 1);
    assert_eq!(signalled(&acts), [(new, TERM)]);
    assert!(old.iter().all(|&p| sim.sup.is_worker(p)));
    let cause = match records(&acts, "reload aborted").as_slice() {
        [Record::ReloadAborted { cause, .. }] => cause.clone(),
        other => panic!("{other:?}"),
    };
    assert!(cause.contains("idle and not listening"), "{cause}");
}

#[test]
fn a_stop_closes_the_masters_listeners_and_tells_systemd_what_serves() {
    let (mut sim, _) = speaking(2);
    let new = spawned(&sim.at(10_000).signal(MasterSignal::Reload))[0];
    let acts = sim.at(10_005).exit(new, 1);
    let status = acts.iter().find_map(|a| match a {
        Action::NotifyManager(ManagerState::Status(s)) => Some(s.clone()),
        _ => None,
    });
    let status = status.expect("a STATUS= line");
    assert!(
        status.starts_with("serving generation 1; reload to generation 2 aborted"),
        "{status}"
    );
    let acts = sim.signal(MasterSignal::Terminate);
    assert!(acts.contains(&Action::CloseListeners));
}

#[test]
fn with_a_queue_per_slot_a_canary_gets_no_connection_until_it_is_proven() {
    let mut p = policy(2);
    p.ready = ReadyRule::Notify;
    p.min_ready = ms(1000);
    p.balance = Some(policy::Balance {
        retire_grace: ms(250),
    });
    let mut sim = Sim::new(p);
    let acts = sim.feed(Event::Start);
    assert_eq!(lanes(&acts), [0, 0]);
    let old = spawned(&acts);
    for &pid in &old {
        sim.exec_ok(pid);
        sim.notify(pid, NotifyMsg::Ready);
    }
    let acts = sim.at(10_000).signal(MasterSignal::Reload);
    assert_eq!(lanes(&acts), [1], "the canary takes the other queue");
    let canary = spawned(&acts)[0];
    sim.exec_ok(canary);
    let acts = sim.at(10_010).notify(canary, NotifyMsg::Ready);
    assert_eq!(queues(&acts), None, "ready, but not proven: no connection");
    // A canary that dies now loses nothing: its queue got nothing.
    let acts = sim.at(11_010).timeout();
    assert_eq!(
        queues(&acts),
        Some(vec![(0, 1), (1, 0)]),
        "proven: steered on"
    );
    assert!(
        signalled(&acts).is_empty(),
        "the old one empties its queue first"
    );
    let next = spawned(&acts);
    assert_eq!(lanes(&acts), [1]);
    let acts = sim.at(11_260).timeout();
    assert_eq!(signalled(&acts), [(old[0], TERM)], "then it stops");
    sim.exec_ok(next[0]);
    let acts = sim.notify(next[0], NotifyMsg::Ready);
    assert_eq!(queues(&acts), Some(vec![(0, 1), (1, 1)]));
    // A crash restart takes the queue its slot was steered to.
    let acts = sim.at(20_000).exit(canary, 1);
    assert_eq!(queues(&acts), Some(vec![(1, 1)]));
    assert_eq!(lanes(&acts), [1], "restarted at once, on its queue");
}

#[test]
fn a_hup_after_the_canary_was_proven_starts_a_canary_of_the_newer_release() {
    let (mut sim, _) = speaking(8);
    let canary = spawned(&sim.at(10_000).signal(MasterSignal::Reload))[0];
    sim.exec_ok(canary);
    sim.at(10_010).notify(canary, NotifyMsg::Ready);
    let acts = sim.at(11_010).timeout();
    assert_eq!(spawns(&acts), [(1, 2), (2, 2)]);
    let under_way = spawned(&acts);
    // A newer release while the roll goes on: what is under way finishes,
    // then one canary of generation 3, alone and held.
    assert!(spawns(&sim.signal(MasterSignal::Reload)).is_empty());
    sim.exec_ok(under_way[0]);
    assert!(spawns(&sim.notify(under_way[0], NotifyMsg::Ready)).is_empty());
    sim.exec_ok(under_way[1]);
    let acts = sim.notify(under_way[1], NotifyMsg::Ready);
    assert_eq!(spawns(&acts), [(0, 3)], "the newer release's canary");
    let canary = spawned(&acts)[0];
    sim.exec_ok(canary);
    let acts = sim.at(11_100).notify(canary, NotifyMsg::Ready);
    assert_eq!(hold_of(&acts), Some(ms(1000)));
    assert!(spawns(&acts).is_empty());
}

#[test]
fn status_is_kept_and_logged_at_most_once_a_second_per_worker() {
    let (mut sim, pids) = Sim::started(policy(1));
    let status = |n: u32| NotifyMsg::Status(format!("batch {n}"));
    let mut logged = 0;
    for n in 0..1000 {
        sim.at(u64::from(n));
        logged += records(&sim.notify(pids[0], status(n)), "worker status").len();
    }
    assert_eq!(logged, 1, "one second of changes, one line");
    assert_eq!(
        sim.sup.workers().next().unwrap().status.as_deref(),
        Some("batch 999"),
        "the last one is kept"
    );
    // The same again is no change; the next change after a second is
    // logged, with how many were not.
    assert!(records(&sim.at(1500).notify(pids[0], status(999)), "worker status").is_empty());
    match records(&sim.at(1500).notify(pids[0], status(1000)), "worker status").as_slice() {
        [Record::WorkerStatus { unlogged, .. }] => assert_eq!(*unlogged, 999),
        other => panic!("{other:?}"),
    }
}

// ---- probes ------------------------------------------------------------------

fn probing(workers: usize) -> Policy {
    let mut p = policy(workers);
    p.ready = ReadyRule::Notify;
    p.probe = Some(probe::ProbePolicy {
        path: "/healthz".into(),
        period: ms(10_000),
        timeout: ms(1000),
        failures: 3,
    });
    p
}

fn probes_sent(actions: &[Action]) -> Vec<Pid> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Probe { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect()
}

impl Sim {
    /// The probe sent for `target` comes back answered by `by`.
    fn probed(&mut self, target: Pid, by: Pid, status: u16) -> Vec<Action> {
        let outcome = if (200..400).contains(&status) {
            ProbeOutcome::Passed { status }
        } else {
            ProbeOutcome::Failed {
                cause: format!("answered {status} to GET /healthz"),
            }
        };
        self.feed(Event::Probed {
            target,
            by: Some(by),
            outcome,
        })
    }

    /// Starts every worker and has it pass its first probe.
    fn probed_ready(policy: Policy) -> (Sim, Vec<Pid>) {
        let (mut sim, pids) = Sim::started(policy);
        for &pid in &pids {
            let acts = sim.notify(pid, NotifyMsg::Ready);
            assert_eq!(probes_sent(&acts), [pid], "probed at once");
            sim.probed(pid, pid, 200);
        }
        (sim, pids)
    }
}

#[test]
fn with_probes_a_worker_is_ready_only_once_a_probe_it_answered_passed() {
    let (mut sim, pids) = Sim::started(probing(1));
    let pid = pids[0];
    let acts = sim.notify(pid, NotifyMsg::Ready);
    assert!(records(&acts, "worker ready").is_empty());
    assert_eq!(probes_sent(&acts), [pid]);
    // A failure: still starting, probed again 250 ms later.
    let acts = sim.probed(pid, pid, 500);
    assert_eq!(records(&acts, "probe failed").len(), 1);
    assert!(!sim.sup.workers().any(|w| w.state.is_ready()));
    assert_eq!(sim.deadline_ms(), Some(250));
    let acts = sim.at(250).timeout();
    assert_eq!(probes_sent(&acts), [pid]);
    let acts = sim.probed(pid, pid, 200);
    assert_eq!(records(&acts, "worker ready").len(), 1);
    assert_eq!(records(&acts, "probe passing").len(), 1);
    // Proven, it is probed every period.
    assert_eq!(sim.deadline_ms(), Some(10_250));
}

#[test]
fn a_reload_whose_new_worker_fails_its_probes_is_aborted_and_the_old_one_serves() {
    let (mut sim, pids) = Sim::probed_ready(probing(2));
    let acts = sim.at(1000).signal(MasterSignal::Reload);
    let new = spawned(&acts)[0];
    sim.exec_ok(new);
    sim.notify(new, NotifyMsg::Ready);
    let mut acts = Vec::new();
    for n in 0..3u64 {
        sim.at(1000 + 250 * n).timeout();
        acts = sim.probed(new, new, 500);
    }
    let aborted = records(&acts, "reload aborted");
    let [Record::ReloadAborted { cause, .. }] = aborted.as_slice() else {
        panic!("{acts:?}");
    };
    assert_eq!(cause, "answered 500 to GET /healthz, 3 times in a row");
    assert_eq!(signalled(&acts), [(new, TERM)]);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::ReloadFinished(ReloadOutcome::Aborted { .. })))
    );
    // The old workers were never asked to stop.
    for pid in pids {
        assert!(
            sim.sup
                .workers()
                .any(|w| w.pid == pid && w.state.is_ready())
        );
    }
}

#[test]
fn a_probe_is_judged_against_the_worker_that_answered_it() {
    let (mut sim, pids) = Sim::probed_ready(probing(2));
    let (a, b) = (pids[0], pids[1]);
    // Meant for a, answered by b: three failures are b's, not a's.
    let mut acts = Vec::new();
    for n in 1..=3u64 {
        sim.at(10_000 * n);
        sim.timeout();
        acts.extend(sim.probed(a, b, 503));
    }
    let health = |pid| sim.sup.health(pid).unwrap().streak;
    assert_eq!((health(a), health(b)), (0, 3));
    assert_eq!(recycled(&acts), [b]);
}

#[test]
fn a_serving_worker_failing_its_probes_is_replaced_successor_first_and_a_shared_outage_pauses() {
    let (mut sim, pids) = Sim::probed_ready(probing(3));
    // Every worker fails three probes in a row: only one is replaced.
    let mut acts = Vec::new();
    for n in 0..3u64 {
        sim.at(10_000 + 1000 * n);
        for &pid in &pids {
            acts.extend(sim.probed(pid, pid, 500));
        }
    }
    assert_eq!(recycled(&acts), [pids[0]]);
    assert_eq!(spawns(&acts), [(0, 1)]);
    assert!(
        signalled(&acts).is_empty(),
        "nothing stops before its successor"
    );
    // Its successor fails its probes too: the cause is shared.
    let successor = sim.pid_of(0);
    sim.exec_ok(successor);
    sim.notify(successor, NotifyMsg::Ready);
    let mut acts = Vec::new();
    for n in 0..3u64 {
        sim.at(13_000 + 250 * n);
        acts.extend(sim.probed(successor, successor, 500));
    }
    assert_eq!(records(&acts, "probe replacing paused").len(), 1);
    assert_eq!(signalled(&acts), [(successor, TERM)]);
    assert!(sim.sup.replacing_paused());
    assert!(sim.sup.due.is_empty(), "nothing waits to be replaced");
    sim.exit(successor, 0);
    assert_eq!(
        sim.sup.busy(),
        None,
        "an upgrade need not wait for the outage"
    );
    // More failures, and the backoff passed: nothing more is replaced.
    let mut acts = Vec::new();
    for n in 0..5u64 {
        sim.at(20_000 + 10_000 * n);
        acts.extend(sim.timeout());
        for &pid in &pids {
            acts.extend(sim.probed(pid, pid, 500));
        }
    }
    assert!(spawns(&acts).is_empty(), "{acts:?}");
    assert!(signalled(&acts).is_empty());
    // A probe passes again: the pause ends, the worker that passed is no
    // longer due.
    sim.at(80_000);
    sim.probed(pids[1], pids[1], 200);
    assert!(!sim.sup.replacing_paused());
    assert!(!sim.sup.due.contains_key(&pids[1]));
}

// ---- the canary's error rate (the shim's counts) ------------------------------

/// Two ready workers that report `counts` each, then a reload at 1 s
/// whose canary (held 2 s) is ready: the serving pids and the canary's.
fn canary_holding(counts: Option<[u64; 5]>) -> (Sim, Vec<Pid>, Pid) {
    let mut p = policy(2);
    p.ready = ReadyRule::Notify;
    p.min_ready = ms(2000);
    let (mut sim, pids) = Sim::started(p);
    for &pid in &pids {
        sim.notify(pid, NotifyMsg::Ready);
        if let Some(counts) = counts {
            sim.notify(pid, NotifyMsg::Responses(counts));
        }
    }
    let acts = sim.at(1000).signal(MasterSignal::Reload);
    let canary = spawned(&acts)[0];
    sim.exec_ok(canary);
    sim.notify(canary, NotifyMsg::Ready);
    (sim, pids, canary)
}

#[test]
fn a_canary_answering_clearly_more_errors_than_the_serving_workers_fails_its_hold() {
    let (mut sim, pids, canary) = canary_holding(Some([0, 5000, 0, 0, 10]));
    let counts = |sim: &mut Sim, pid, ok: u64, errors: u64| {
        sim.notify(pid, NotifyMsg::Responses([0, ok, 0, 0, errors]))
    };
    // Its first report starts the comparison; the serving workers go on
    // at 0.2% errors; the canary, four errors in: not yet enough to tell.
    counts(&mut sim, canary, 0, 1);
    counts(&mut sim, pids[0], 5400, 11);
    counts(&mut sim, pids[1], 5400, 11);
    let acts = counts(&mut sim, canary, 0, 4);
    assert!(records(&acts, "reload aborted").is_empty());
    let acts = sim
        .at(1200)
        .notify(canary, NotifyMsg::Responses([0, 3, 0, 0, 40]));
    let aborted = records(&acts, "reload aborted");
    let [Record::ReloadAborted { cause, .. }] = aborted.as_slice() else {
        panic!("{acts:?}");
    };
    assert_eq!(
        cause,
        "answered 5xx to 40 of 43 (93%) of its requests, against 2 of 802 (0%) for the \
         serving workers"
    );
    assert_eq!(signalled(&acts), [(canary, TERM)]);
}

#[test]
fn a_canary_no_worse_than_the_serving_workers_is_proven() {
    let (mut sim, pids, canary) = canary_holding(None);
    // An endpoint that fails in every release: 30% everywhere.
    sim.notify(canary, NotifyMsg::Responses([0, 0, 0, 0, 0]));
    sim.notify(pids[0], NotifyMsg::Responses([0, 700, 0, 0, 300]));
    let acts = sim.notify(canary, NotifyMsg::Responses([0, 70, 0, 0, 30]));
    assert!(records(&acts, "reload aborted").is_empty());
    let acts = sim.at(3000).timeout();
    assert_eq!(records(&acts, "canary proven").len(), 1);
}

#[test]
fn a_staged_policy_governs_the_reload_and_its_count_applies_once_complete() {
    let (mut sim, pids) = Sim::started(policy(2));
    let mut next = policy(2);
    next.stop_timeout = ms(5_000);
    sim.sup.stage_policy(next, Some(3));
    let acts = sim.at(1000).signal(MasterSignal::Reload);
    assert_eq!(spawns(&acts), [(0, 2)], "one canary, no third slot yet");
    assert_eq!(sim.sup.slot_count(), 2);
    let acts = sim.exec_ok(spawned(&acts)[0]);
    assert_eq!(signalled(&acts), [(pids[0], TERM)]);
    assert_eq!(
        sim.sup.policy.stop_timeout,
        ms(5_000),
        "from the reload's start"
    );
    let acts = sim.exec_ok(spawned(&acts)[0]);
    assert_eq!(records(&acts, "reload complete").len(), 1);
    assert_eq!(
        spawns(&acts),
        [(2, 2)],
        "the new count, at the new generation, once the reload is complete"
    );
    assert_eq!(sim.sup.slot_count(), 3);
    sim.sup.check_index();
}

#[test]
fn an_aborted_reload_puts_the_policy_back_and_keeps_the_count() {
    let mut p = policy(2);
    p.ready = ReadyRule::Notify;
    let (mut sim, pids) = Sim::started(p.clone());
    for &pid in &pids {
        sim.notify(pid, NotifyMsg::Ready);
    }
    let mut next = p;
    next.stop_timeout = ms(5_000);
    sim.sup.stage_policy(next, Some(4));
    let acts = sim.at(1000).signal(MasterSignal::Reload);
    let canary = spawned(&acts)[0];
    sim.exec_ok(canary);
    let acts = sim.exit(canary, 1);
    assert_eq!(records(&acts, "reload aborted").len(), 1, "{acts:?}");
    assert_eq!(sim.sup.policy.stop_timeout, ms(30_000), "the policy before");
    assert_eq!(sim.sup.slot_count(), 2, "the count before");
}

#[test]
fn a_reload_to_fewer_workers_replaces_only_the_slots_that_stay() {
    let (mut sim, pids) = Sim::started(policy(3));
    sim.sup.stage_policy(policy(1), Some(1));
    let acts = sim.at(1000).signal(MasterSignal::Reload);
    assert_eq!(spawns(&acts), [(0, 2)]);
    let acts = sim.exec_ok(spawned(&acts)[0]);
    assert_eq!(records(&acts, "reload complete").len(), 1, "{acts:?}");
    assert!(spawns(&acts).is_empty(), "no new worker only to drain it");
    let mut stopped: Vec<Pid> = signalled(&acts).into_iter().map(|(pid, _)| pid).collect();
    stopped.sort();
    assert_eq!(
        stopped, pids,
        "the replaced one, and the two old ones scaled away"
    );
    assert_eq!(sim.sup.slot_count(), 1);
    sim.sup.check_index();
}
