//! The binary's launcher: fork, then exec the command of the worker's
//! generation (its [`Release`]), with the listeners at fd 3.. and the
//! environment of `spawn::env`. Everything the child needs is built before
//! the fork ([`ChildPlan`]); what runs between fork and exec is
//! `spawn/child.rs`.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use libc::c_char;
use nix::fcntl::OFlag;

use crate::launch::release::Release;
use crate::launch::shim::Shim;
use crate::launch::spawn::CallFailed;
use crate::launch::spawn::child::{self, ChildPlan, PID_DIGITS};
use crate::launch::spawn::command::{Command, Identity};
use crate::launch::spawn::env::{
    Value, WorkerEnv, is_listen_var, listen_vars, slot_vars, watchdog_vars,
};
use crate::launch::spawn::fds;
use crate::sockets::listen::Named;
use crate::vocab::{Generation, SlotId};

use super::{Capture, Launch, Launched, OutputPipe, Reaping};
use crate::vocab::Stream;

/// What every worker of this master gets; [`Launch::launch`] adds the slot
/// and generation, and its generation's release.
#[derive(Debug)]
pub struct ExecLauncher {
    /// What each generation that may still start runs.
    releases: BTreeMap<Generation, Prepared>,
    /// The variables rcluster sets for every worker, but for those that
    /// say where its listeners are (they may differ by generation).
    vars: Vec<(String, Value)>,
    /// The listeners the master started with: what a worker of a release
    /// that names none gets at fd 3, 4, …
    listeners: Vec<Named>,
    /// Loaded by every worker (`--adopt-bind`, `--http-drain`), its fd
    /// after the listeners; owned here so its fd lives as long as the
    /// launcher. With the stop signal it passes on.
    shim: Option<(Shim, i32)>,
    identity: Option<Identity>,
    /// Which of each worker's output streams go through the master.
    capture: Capture,
    parent: libc::pid_t,
    /// The workers' parent-death signal: `SIGKILL` unless told the stop
    /// signal (`dying_with`).
    death_signal: i32,
}

/// One generation's release, made ready to exec.
#[derive(Debug)]
struct Prepared {
    /// How many listeners its workers get.
    listeners: usize,
    command: Command,
    /// The master's environment without ours, the release's env file, ours.
    env: WorkerEnv,
    /// The directory its workers change to (`--chdir`).
    dir: Option<(PathBuf, CString)>,
    /// The release, to prepare again (a shim's variables came later).
    release: Release,
}

impl Prepared {
    /// `release` with the variables of `launcher`, the listeners' own and
    /// the shim's (which follows the listeners).
    fn new(release: &Release, launcher: &ExecLauncher) -> Prepared {
        let listeners = release.listeners.as_ref().unwrap_or(&launcher.listeners);
        let mut vars = launcher.vars.clone();
        vars.extend(listen_vars(listeners));
        // A generation of a configuration file has its own watchdog.
        if release.config.is_some() {
            vars.retain(|(key, _)| key != "WATCHDOG_USEC" && key != "WATCHDOG_PID");
            vars.extend(watchdog_vars(release.watchdog));
        }
        if let Some((shim, stop_signal)) = &launcher.shim {
            let fd = (3 + listeners.len()) as RawFd;
            let shim_vars = shim.vars(fd, *stop_signal);
            vars.retain(|(key, _)| !shim_vars.iter().any(|(k, _)| k == key));
            vars.extend(shim_vars);
        }
        let dir = release.chdir.then(|| {
            let path = release.dir.clone();
            // A path from the file system holds no NUL.
            let c = CString::new(path.as_os_str().as_bytes()).unwrap_or_default();
            (path, c)
        });
        Prepared {
            listeners: listeners.len(),
            command: release.command.clone(),
            env: WorkerEnv::with_file(vars, &release.env),
            dir,
            release: release.clone(),
        }
    }
}

impl ExecLauncher {
    /// A launcher with nothing to run yet: [`Launch::prepare`] tells it
    /// each generation's release.
    pub fn new(
        listeners: Vec<Named>,
        mut vars: Vec<(String, Value)>,
        identity: Option<Identity>,
        capture: Capture,
    ) -> ExecLauncher {
        if let Some(identity) = &identity {
            vars.extend(identity.vars().iter().cloned());
        }
        vars.retain(|(key, _)| !is_listen_var(key));
        ExecLauncher {
            releases: BTreeMap::new(),
            vars,
            listeners,
            shim: None,
            identity,
            capture,
            parent: std::process::id() as libc::pid_t,
            death_signal: libc::SIGKILL,
        }
    }

    /// When the master dies its workers get `signal` (the stop signal: they
    /// drain), not `SIGKILL`; for a master that runs the undertaker, which
    /// bounds the drain.
    pub fn dying_with(mut self, signal: i32) -> ExecLauncher {
        self.death_signal = signal;
        self
    }

    /// Every worker loads `shim`, inherited after the listeners. Its
    /// variables replace any of the master's of the same name.
    pub fn with_shim(mut self, shim: Shim, stop_signal: i32) -> ExecLauncher {
        self.shim = Some((shim, stop_signal));
        let releases: Vec<(Generation, Release)> = self
            .releases
            .iter()
            .map(|(&g, p)| (g, p.release.clone()))
            .collect();
        for (generation, release) in releases {
            self.prepare(generation, &release);
        }
        self
    }

    fn plan(
        &self,
        release: &Prepared,
        slot: SlotId,
        generation: Generation,
        listeners: &[RawFd],
    ) -> ChildPlan {
        debug_assert_eq!(listeners.len(), release.listeners, "one fd per listener");
        let shim_fd = self.shim.as_ref().map(|(shim, _)| shim.fd());
        let fds: Vec<RawFd> = listeners.iter().copied().chain(shim_fd).collect();
        let mut env: Vec<Vec<u8>> = release
            .env
            .inherited
            .iter()
            .map(|c| c.as_bytes_with_nul().to_vec())
            .collect();
        let mut pid_entries = Vec::new();
        let slot_vars = slot_vars(slot, generation).map(|(k, v)| (k.to_string(), Value::Text(v)));
        for (key, value) in release.env.vars.iter().chain(slot_vars.iter()) {
            let mut entry = format!("{key}=").into_bytes();
            match value {
                Value::Text(text) => entry.extend(text.bytes().filter(|&b| b != 0)),
                Value::OwnPid => {
                    pid_entries.push((env.len(), entry.len()));
                    entry.extend([0u8; PID_DIGITS]);
                }
            }
            entry.push(0);
            env.push(entry);
        }
        let mut argv: Vec<*const c_char> =
            release.command.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*mut c_char> = env.iter_mut().map(|e| e.as_mut_ptr().cast()).collect();
        envp.push(std::ptr::null_mut());
        ChildPlan {
            program: release.command.program.as_ptr(),
            dir: release
                .dir
                .as_ref()
                .map_or(std::ptr::null(), |(_, c)| c.as_ptr()),
            argv,
            envp,
            pid_entries,
            env,
            scratch: vec![-1; fds.len()],
            fds,
            stdio: [None, None],
            credentials: self.identity.as_ref().map(|i| i.credentials.clone()),
            parent: self.parent,
            death_signal: self.death_signal,
            max_signal: libc::SIGRTMAX(),
        }
    }
}

impl Launch for ExecLauncher {
    fn launch(
        &mut self,
        slot: SlotId,
        generation: Generation,
        listeners: &[RawFd],
    ) -> Result<Launched, CallFailed> {
        let release = self.releases.get(&generation).ok_or_else(|| {
            CallFailed::during("finding the generation's release")(std::io::Error::other(format!(
                "generation {generation} was never prepared"
            )))
        })?;
        // A release directory removed since: the worker could not start
        // in it, and saying so beats exec's ENOENT.
        if let Some((path, _)) = &release.dir
            && !path.is_dir()
        {
            return Err(CallFailed::during("entering the release directory")(
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        // Other code at the generation's paths is not run under its name.
        release.release.unchanged().map_err(|why| {
            CallFailed::during("checking the release's files")(std::io::Error::other(format!(
                "generation {generation}'s {why}"
            )))
        })?;
        let mut plan = self.plan(release, slot, generation, listeners);
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| CallFailed::during("pipe2 (the exec pipe)")(e.into()))?;
        // Output pipes: the master's ends never block it; the worker's are
        // ordinary (a worker that outwrites the master waits, not the master).
        let mut output = Vec::new();
        let mut worker_ends = Vec::new();
        let streams = [
            (Stream::Stdout, self.capture.stdout),
            (Stream::Stderr, self.capture.stderr),
        ];
        for (i, (stream, captured)) in streams.into_iter().enumerate() {
            if !captured {
                continue;
            }
            let during = match stream {
                Stream::Stdout => "pipe2 (the worker's stdout)",
                Stream::Stderr => "pipe2 (the worker's stderr)",
            };
            let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
                .map_err(|e| CallFailed::during(during)(e.into()))?;
            nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                .map_err(|e| CallFailed::during("fcntl (O_NONBLOCK)")(e.into()))?;
            plan.stdio[i] = Some(write.as_raw_fd());
            worker_ends.push(write);
            output.push(OutputPipe {
                stream,
                prefixed: self.capture.prefixed,
                fd: fds::above_floor(read),
            });
        }
        // SAFETY: the master is single-threaded, and the plan is this
        // child's.
        let pid = unsafe { child::spawn(&mut plan, write.as_raw_fd()) }?;
        // The worker's ends close here: the worker holds its own copies.
        drop(write);
        drop(worker_ends);
        // `spawn` returns once the child has exec'd or exited, and a child
        // whose exec failed wrote its errno before exiting. So an empty
        // pipe means it exec'd, known now rather than at its EOF a loop
        // turn later (or it died without a word, which its pidfd tells).
        let exec_pipe = child::exec_failed(read.as_fd()).then(|| fds::above_floor(read));
        Ok(Launched {
            pid,
            exec_pipe,
            output,
        })
    }

    fn reaping(&self) -> Reaping {
        Reaping::All
    }

    fn uid(&self) -> u32 {
        match &self.identity {
            Some(identity) => identity.credentials.uid,
            // SAFETY: geteuid has no preconditions.
            None => unsafe { libc::geteuid() },
        }
    }

    fn describe(&self) -> String {
        self.releases
            .values()
            .next_back()
            .map(|r| r.command.display())
            .unwrap_or_default()
    }

    fn prepare(&mut self, generation: Generation, release: &Release) {
        let prepared = Prepared::new(release, self);
        self.releases.insert(generation, prepared);
    }

    fn forget(&mut self, generation: Generation) {
        self.releases.remove(&generation);
    }
}
