//! The rcluster under check: this very binary, started as a child with the
//! user's options and command (and a few of the check's own: a JSON log on
//! stderr, a control socket in a directory of its own, a free port unless
//! `--listen` was given), its log read line by line, asked through its
//! control socket, and killed with everything it started when dropped.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::{Value, json};

use crate::control::server as control;

/// The user's options that the check sets itself, with a value: its log
/// must be JSON on stderr, its control socket and name its own, and it
/// writes no pid file and binds no metrics port.
const SET_BY_CHECK: &[&str] = &[
    "--log-format",
    "--log-file",
    "--log-level",
    "--control",
    "--pid-file",
    "--metrics",
    "--name",
];

/// A running master under check.
pub struct Checked {
    child: Child,
    pub pid: i32,
    records: Receiver<Value>,
    /// Every record so far, for questions asked after the fact.
    seen: Arc<Mutex<Vec<Value>>>,
    /// Workers the log said were spawned and not yet exited.
    live: Arc<Mutex<BTreeSet<i32>>>,
    /// The last lines on its stderr that were no log record (its own
    /// refusal at start, workers' lines).
    said: Arc<Mutex<Vec<String>>>,
    pub addr: Option<SocketAddr>,
    control: PathBuf,
    dir: PathBuf,
}

impl Checked {
    /// Starts `rcluster ARGS` (`args` as given after `check`, `extra`
    /// before them: a cure's flag), on a free port of 127.0.0.1 unless
    /// `listen_given`.
    pub fn start(args: &[OsString], extra: &[&str], listen_given: bool) -> Result<Checked, String> {
        let dir = std::env::temp_dir().join(format!(
            "rcluster-check-{}-{}",
            std::process::id(),
            extra.join("")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let control = dir.join("control.sock");
        let exe = std::env::current_exe().map_err(|e| format!("finding rcluster itself: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args(["--log-format", "json", "--log-level", "info", "--control"])
            .arg(&control)
            .args(["--name", &format!("check-{}", std::process::id())])
            .args(extra);
        if !listen_given {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(super::strip(args, SET_BY_CHECK, &[]))
            .env_remove("RCLUSTER_CONTROL")
            .env_remove("RCLUSTER_PID_FILE")
            .env_remove("RCLUSTER_METRICS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Out of the check's process group (a ^C reaches the check
                // alone), the master still goes with the check, by QUIT,
                // however the check ends.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the check is gone"));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("starting rcluster: {e}"))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, records) = crossbeam_channel::unbounded();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let live = Arc::new(Mutex::new(BTreeSet::new()));
        let said = Arc::new(Mutex::new(Vec::new()));
        let (seen2, live2, said2) = (Arc::clone(&seen), Arc::clone(&live), Arc::clone(&said));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Workers' own lines come through the master's stderr too.
                let Ok(record) = serde_json::from_str::<Value>(&line) else {
                    let mut said = said2.lock().unwrap_or_else(|e| e.into_inner());
                    if said.len() == 20 {
                        said.remove(0);
                    }
                    said.push(line);
                    continue;
                };
                let pid = record["pid"].as_i64().unwrap_or_default() as i32;
                match record["msg"].as_str() {
                    Some("worker spawned") => {
                        live2.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
                    }
                    Some("worker exited") => {
                        live2.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
                    }
                    _ => {}
                }
                seen2
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(record.clone());
                if tx.send(record).is_err() {
                    break;
                }
            }
        });
        let pid = child.id() as i32;
        Ok(Checked {
            child,
            pid,
            records,
            seen,
            live,
            said,
            addr: None,
            control,
            dir,
        })
    }

    /// The next record that matches `pred`, before `deadline`; `None` if
    /// none came (or the master's log ended).
    pub fn expect(&self, deadline: Instant, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        loop {
            match self.records.recv_deadline(deadline) {
                Ok(record) if pred(&record) => return Some(record),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Forgets the records not yet read: what follows is about what is
    /// asked next.
    pub fn skip_unread(&self) {
        while self.records.try_recv().is_ok() {}
    }

    /// Whether its log has ended: it is exiting, or has.
    pub fn log_ended(&self) -> bool {
        matches!(
            self.records.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Every record so far that matches `pred`.
    pub fn seen(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().filter(|r| pred(r)).cloned().collect()
    }

    /// The last line on its stderr that was no log record.
    pub fn last_said(&self) -> Option<String> {
        let said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        said.last().cloned()
    }

    /// The pids of the workers alive now, as the log tells.
    pub fn live(&self) -> Vec<i32> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.iter().copied().collect()
    }

    /// The live workers as the log keeps them, for a load's threads.
    pub fn live_set(&self) -> Arc<Mutex<BTreeSet<i32>>> {
        Arc::clone(&self.live)
    }

    /// After a reload to `generation` answered: the exit records of the
    /// workers of `before` it told to drain, once each has exited (or
    /// `deadline` passed). A reload's window ends with the last of them:
    /// what a drain does at its end (a kill at `--stop-timeout`, clients
    /// held till then) is part of the reload.
    pub fn drained_exits(&self, generation: u64, before: &[i32], deadline: Instant) -> Vec<Value> {
        let pid_in = |r: &Value, pids: &[i32]| {
            r["pid"]
                .as_i64()
                .is_some_and(|pid| pids.contains(&(pid as i32)))
        };
        // Every drain it started is logged before its end, which the log
        // may bring a moment after the answer.
        let ended = |r: &Value| {
            (r["msg"] == "reload complete" || r["msg"] == "reload aborted")
                && r["generation"].as_u64() >= Some(generation)
        };
        loop {
            let told: Vec<i32> = self
                .seen(|r| r["msg"] == "worker draining" && pid_in(r, before))
                .iter()
                .filter_map(|r| Some(r["pid"].as_i64()? as i32))
                .collect();
            let exits = self.seen(|r| r["msg"] == "worker exited" && pid_in(r, &told));
            let settled = !self.seen(ended).is_empty() && exits.len() >= told.len();
            if settled || Instant::now() >= deadline {
                return exits;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pids of the workers the master calls ready, asked of it: the
    /// log may lag, and a worker told to drain a moment ago is no place for
    /// a request meant to be cut by the next stop. The log's live workers
    /// if the master does not answer.
    pub fn ready(&self) -> Vec<i32> {
        let Ok(status) = self.ask(json!({"cmd": "status"}), Duration::from_secs(5)) else {
            return self.live();
        };
        let workers = status["workers"].as_array().into_iter().flatten();
        workers
            .filter(|w| w["state"] == "ready")
            .filter_map(|w| w["pid"].as_i64())
            .map(|pid| pid as i32)
            .collect()
    }

    /// Whether the master has exited, and how.
    pub fn exited(&mut self) -> Option<i32> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.code().unwrap_or(-1)),
            _ => None,
        }
    }

    /// Asks the master over its control socket.
    pub fn ask(&self, request: Value, timeout: Duration) -> Result<Value, String> {
        control::ask(&self.control, &request, timeout).map_err(|e| format!("{e:?}"))
    }

    /// `rcluster reload --wait`: how it ended.
    pub fn reload(&self, timeout: Duration) -> Result<Value, String> {
        self.ask(json!({"cmd": "reload", "wait": true}), timeout)
    }

    /// Waits (until `deadline`) for the master to exit; true if it did.
    pub fn wait_exit(&mut self, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Checked {
    /// Everything the check started goes: the master by QUIT (an immediate
    /// stop that still removes its files), or by SIGKILL to its group and
    /// each worker's (they lead groups of their own) if it does not go;
    /// then the check's directory.
    fn drop(&mut self) {
        if self.exited().is_none() {
            // SAFETY: a signal to the master this check started, by pid.
            unsafe { libc::kill(self.pid, libc::SIGQUIT) };
            if !self.wait_exit(Instant::now() + Duration::from_secs(5)) {
                // SAFETY: signals to the processes this check started.
                unsafe {
                    libc::kill(-self.pid, libc::SIGKILL);
                    for &pid in self.live.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                        libc::kill(-pid, libc::SIGKILL);
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                // A killed master leaves its notify directory behind.
                let _ = self.child.wait();
                if let Ok(rundir) = crate::control::rundir::dir() {
                    crate::sockets::notify::remove_stale(&rundir);
                }
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
