//! The binary's launcher: fork, then exec the command, with the listeners
//! at fd 3.. and the environment of `spawn::env`. Everything the child
//! needs is built before the fork ([`ChildPlan`]); what runs between fork
//! and exec is `spawn/child.rs`.

use std::os::fd::{AsRawFd, RawFd};

use libc::c_char;
use nix::fcntl::OFlag;

use crate::launch::shim::Shim;
use crate::launch::spawn::CallFailed;
use crate::launch::spawn::child::{self, ChildPlan, PID_DIGITS};
use crate::launch::spawn::command::{Command, Identity};
use crate::launch::spawn::env::{Value, WorkerEnv, slot_vars};
use crate::vocab::{Generation, SlotId};

use super::{Capture, Launch, Launched, OutputPipe, Reaping};
use crate::vocab::Stream;

/// What every worker of this master gets; [`Launch::launch`] adds the slot
/// and generation.
#[derive(Debug)]
pub struct ExecLauncher {
    command: Command,
    /// The master's environment without ours, and ours.
    env: WorkerEnv,
    /// The variables of `--env-file`, as last read.
    file_vars: Vec<(String, String)>,
    /// How many listeners every worker gets at fd 3, 4, …
    listeners: usize,
    /// What follows them: the shim's fd, if any.
    after: Vec<RawFd>,
    /// Loaded by every worker (`--adopt-bind`, `--http-drain`); owned here
    /// so its fd lives as long as the launcher.
    shim: Option<Shim>,
    identity: Option<Identity>,
    /// Which of each worker's output streams go through the master.
    capture: Capture,
    parent: libc::pid_t,
}

impl ExecLauncher {
    pub fn new(
        command: Command,
        listeners: &[RawFd],
        mut vars: Vec<(String, Value)>,
        identity: Option<Identity>,
        capture: Capture,
    ) -> ExecLauncher {
        if let Some(identity) = &identity {
            vars.extend(identity.vars().iter().cloned());
        }
        ExecLauncher {
            command,
            env: WorkerEnv::new(vars),
            file_vars: Vec::new(),
            listeners: listeners.len(),
            after: Vec::new(),
            shim: None,
            identity,
            capture,
            parent: std::process::id() as libc::pid_t,
        }
    }

    /// Every worker loads `shim`, inherited after the listeners. Its
    /// variables replace any of the master's of the same name.
    pub fn with_shim(mut self, shim: Shim, stop_signal: i32) -> ExecLauncher {
        let vars = shim.vars(
            (3 + self.listeners + self.after.len()) as RawFd,
            stop_signal,
        );
        self.after.push(shim.fd());
        self.shim = Some(shim);
        let mut all = std::mem::take(&mut self.env.vars);
        all.extend(vars);
        self.env = WorkerEnv::with_file(all, &self.file_vars);
        self
    }

    fn plan(&self, slot: SlotId, generation: Generation, listeners: &[RawFd]) -> ChildPlan {
        debug_assert_eq!(listeners.len(), self.listeners, "one fd per listener");
        let fds: Vec<RawFd> = listeners.iter().chain(&self.after).copied().collect();
        let mut env: Vec<Vec<u8>> = self
            .env
            .inherited
            .iter()
            .map(|c| c.as_bytes_with_nul().to_vec())
            .collect();
        let mut pid_entries = Vec::new();
        let slot_vars = slot_vars(slot, generation).map(|(k, v)| (k.to_string(), Value::Text(v)));
        for (key, value) in self.env.vars.iter().chain(slot_vars.iter()) {
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
        let mut argv: Vec<*const c_char> = self.command.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*mut c_char> = env.iter_mut().map(|e| e.as_mut_ptr().cast()).collect();
        envp.push(std::ptr::null_mut());
        ChildPlan {
            program: self.command.program.as_ptr(),
            argv,
            envp,
            pid_entries,
            env,
            scratch: vec![-1; fds.len()],
            fds,
            stdio: [None, None],
            credentials: self.identity.as_ref().map(|i| i.credentials.clone()),
            parent: self.parent,
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
        let mut plan = self.plan(slot, generation, listeners);
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
                fd: read,
            });
        }
        // SAFETY: the master is single-threaded, and the plan is this
        // child's.
        let pid = unsafe { child::spawn(&mut plan, write.as_raw_fd()) }?;
        // The worker's ends close here: the worker holds its own copies.
        drop(write);
        drop(worker_ends);
        Ok(Launched {
            pid,
            exec_pipe: Some(read),
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
        self.command.display()
    }

    fn set_env_file(&mut self, vars: &[(String, String)]) {
        self.file_vars = vars.to_vec();
        let ours = std::mem::take(&mut self.env.vars);
        self.env = WorkerEnv::with_file(ours, &self.file_vars);
    }
}
