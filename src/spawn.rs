//! Starting a worker: the command resolved once ([`Command`]), the
//! environment every worker shares ([`Template`]), and fork + exec with an
//! async-signal-safe child path.
//!
//! Everything the child needs is built before `fork` ([`ChildPlan`]); between
//! fork and exec the child only makes async-signal-safe syscalls and writes
//! into memory prepared for it. It never allocates (rust-lang/rust#13080).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use libc::c_char;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::unistd::{AccessFlags, access};

use crate::error::Error;
use crate::listen::Listener;
use crate::supervisor::event::{Generation, Pid, SlotId};

/// Variables rcluster sets for workers; inherited values are dropped so a
/// worker never sees its master's (e.g. systemd's `LISTEN_FDS`). `EINHORN_FD_<n>`
/// is matched by prefix.
pub const WORKER_VARS: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "RCLUSTER_WORKER_ID",
    "RCLUSTER_GENERATION",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "SERVER_STARTER_PORT",
    "SERVER_STARTER_GENERATION",
    "EINHORN_FD_COUNT",
    "NODE_APP_INSTANCE",
];

fn is_worker_var(key: &OsStr) -> bool {
    WORKER_VARS.iter().any(|v| OsStr::new(v) == key) || key.as_bytes().starts_with(b"EINHORN_FD_")
}

/// The sockets, in every protocol servers already read: systemd's
/// `LISTEN_FDS` (the worker's own pid goes in `LISTEN_PID`), server_starter's
/// `SERVER_STARTER_PORT` (`addr=fd;path=fd`) and einhorn's `EINHORN_FD_*`.
pub fn listen_vars(listeners: &[Listener]) -> Vec<(String, Value)> {
    let text = |k: &str, v: String| (k.to_string(), Value::Text(v));
    let fd = |i: usize| (3 + i).to_string();
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    let server_starter: Vec<String> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "{}={}",
                l.local.strip_prefix("unix:").unwrap_or(&l.local),
                fd(i)
            )
        })
        .collect();
    let mut vars = vec![
        text("LISTEN_FDS", listeners.len().to_string()),
        ("LISTEN_PID".to_string(), Value::OwnPid),
        text("LISTEN_FDNAMES", names.join(":")),
        text("SERVER_STARTER_PORT", server_starter.join(";")),
        text("EINHORN_FD_COUNT", listeners.len().to_string()),
    ];
    vars.extend((0..listeners.len()).map(|i| text(&format!("EINHORN_FD_{i}"), fd(i))));
    vars
}

/// Where to say `READY=1`, and the watchdog if one is set.
pub fn notify_vars(socket: String, watchdog: Option<Duration>) -> Vec<(String, Value)> {
    let mut vars = vec![("NOTIFY_SOCKET".to_string(), Value::Text(socket))];
    if let Some(watchdog) = watchdog {
        vars.push((
            "WATCHDOG_USEC".to_string(),
            Value::Text(watchdog.as_micros().to_string()),
        ));
        vars.push(("WATCHDOG_PID".to_string(), Value::OwnPid));
    }
    vars
}

/// What differs between workers: the slot (also as PM2's
/// `NODE_APP_INSTANCE`) and the generation (also as server_starter's).
pub fn slot_vars(slot: SlotId, generation: Generation) -> [(&'static str, String); 4] {
    [
        ("RCLUSTER_WORKER_ID", slot.to_string()),
        ("NODE_APP_INSTANCE", slot.to_string()),
        ("RCLUSTER_GENERATION", generation.to_string()),
        ("SERVER_STARTER_GENERATION", generation.to_string()),
    ]
}

/// The program to run, resolved against `PATH` before anything is forked,
/// so a typo fails at once with 127 instead of a restart loop.
#[derive(Debug, Clone)]
pub struct Command {
    program: CString,
    argv: Vec<CString>,
}

pub fn resolve(command: &[OsString]) -> Result<Command, Error> {
    let name = command
        .first()
        .ok_or_else(|| Error::Usage("no command given".into()))?;
    let display = name.to_string_lossy().into_owned();
    let program = if name.as_bytes().contains(&b'/') {
        check_executable(Path::new(name), &display)?;
        PathBuf::from(name)
    } else {
        search_path(name, &display)?
    };
    let cstring = |s: &OsStr| {
        CString::new(s.as_bytes())
            .map_err(|_| Error::Usage(format!("the command contains a NUL byte: {display}")))
    };
    Ok(Command {
        program: cstring(program.as_os_str())?,
        argv: command
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<_, _>>()?,
    })
}

fn check_executable(path: &Path, display: &str) -> Result<(), Error> {
    let not_executable = |cause: String| Error::NotExecutable {
        command: display.to_string(),
        cause,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::CommandNotFound {
            command: display.to_string(),
        }),
        Err(e) => Err(not_executable(e.to_string())),
        Ok(meta) if meta.is_dir() => Err(not_executable("it is a directory".into())),
        Ok(_) => access(path, AccessFlags::X_OK).map_err(|_| {
            not_executable(format!(
                "permission denied (make it executable: chmod +x {display})"
            ))
        }),
    }
}

fn search_path(name: &OsStr, display: &str) -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut refused = None;
    for dir in std::env::split_paths(&path) {
        let candidate = if dir.as_os_str().is_empty() {
            PathBuf::from(name)
        } else {
            dir.join(name)
        };
        if !candidate.is_file() {
            continue;
        }
        match check_executable(&candidate, display) {
            Ok(()) => return Ok(candidate),
            Err(e) => refused = refused.or(Some(e)),
        }
    }
    Err(refused.unwrap_or_else(|| Error::CommandNotFound {
        command: display.to_string(),
    }))
}

/// One variable of a worker's environment.
#[derive(Debug, Clone)]
pub enum Value {
    Text(String),
    /// The worker's own pid, known only after fork (`LISTEN_PID`).
    OwnPid,
}

/// The user and groups workers run as (`--user`, `--group`), resolved
/// before anything is forked.
#[derive(Debug, Clone)]
pub struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    /// `USER`, `LOGNAME` and `HOME` for the worker, when a user is named.
    vars: Vec<(String, Value)>,
}

impl Identity {
    /// `None` when neither is given. A name that does not exist, or a
    /// master that may not switch users, is an error now, not a restart
    /// loop later.
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, Error> {
        use nix::unistd::{Gid, Group, Uid, User};
        if user.is_none() && group.is_none() {
            return Ok(None);
        }
        let no_such = |kind: &'static str, name: &str| Error::NoSuchUser {
            kind,
            name: name.to_string(),
        };
        let user = match user {
            None => None,
            Some(name) => {
                let found = match name.parse::<u32>() {
                    Ok(uid) => User::from_uid(Uid::from_raw(uid)),
                    Err(_) => User::from_name(name),
                };
                Some(found.ok().flatten().ok_or_else(|| no_such("user", name))?)
            }
        };
        let group = match group {
            None => None,
            Some(name) => {
                let found = match name.parse::<u32>() {
                    Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
                    Err(_) => Group::from_name(name),
                };
                Some(found.ok().flatten().ok_or_else(|| no_such("group", name))?)
            }
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Usage(
                "--user and --group need rcluster to run as root (it binds, then drops privileges)"
                    .into(),
            ));
        }
        let gid = group
            .as_ref()
            .map(|g| g.gid)
            .or(user.as_ref().map(|u| u.gid))
            .expect("a user or a group");
        let groups = match &user {
            Some(u) => {
                let name = CString::new(u.name.as_bytes()).map_err(|_| no_such("user", &u.name))?;
                nix::unistd::getgrouplist(&name, gid)
                    .map_err(|e| Error::os(format!("listing the groups of {}", u.name), e.into()))?
            }
            None => vec![gid],
        };
        let vars = user
            .as_ref()
            .map(|u| {
                let text = |k: &str, v: String| (k.to_string(), Value::Text(v));
                vec![
                    text("USER", u.name.clone()),
                    text("LOGNAME", u.name.clone()),
                    text("HOME", u.dir.to_string_lossy().into_owned()),
                ]
            })
            .unwrap_or_default();
        // SAFETY: getuid has no preconditions.
        let uid = user.map_or(unsafe { libc::getuid() }, |u| u.uid.as_raw());
        Ok(Some(Identity {
            uid,
            gid: gid.as_raw(),
            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
            vars,
        }))
    }

    pub fn vars(&self) -> &[(String, Value)] {
        &self.vars
    }
}

/// A started worker: its pid, the read end of its exec pipe (EOF: exec
/// succeeded; 4 bytes: the errno it failed with), and, with `--log-prefix`,
/// the read ends of its stdout and stderr.
pub struct Spawned {
    pub pid: Pid,
    pub exec_pipe: OwnedFd,
    pub output: Option<(OwnedFd, OwnedFd)>,
}

/// What every worker of this master gets; [`Template::spawn`] adds the
/// slot and generation.
#[derive(Debug)]
pub struct Template {
    command: Command,
    /// The master's environment without the variables rcluster sets.
    inherited: Vec<CString>,
    /// Listener fds, in order: they become fds 3, 4, … in the worker.
    fds: Vec<RawFd>,
    /// Variables set for every worker besides slot and generation.
    vars: Vec<(String, Value)>,
    identity: Option<Identity>,
    /// Give each worker pipes for stdout and stderr (`--log-prefix`).
    capture_output: bool,
    parent: libc::pid_t,
}

impl Template {
    pub fn new(
        command: Command,
        fds: Vec<RawFd>,
        mut vars: Vec<(String, Value)>,
        identity: Option<Identity>,
        capture_output: bool,
    ) -> Template {
        if let Some(identity) = &identity {
            vars.extend(identity.vars().iter().cloned());
        }
        let ours = |k: &OsStr| is_worker_var(k) || vars.iter().any(|(v, _)| OsStr::new(v) == k);
        let inherited = std::env::vars_os()
            .filter(|(k, _)| !ours(k))
            .filter_map(|(k, v)| {
                let mut entry = k.into_vec();
                entry.push(b'=');
                entry.extend(v.into_vec());
                CString::new(entry).ok()
            })
            .collect();
        Template {
            command,
            inherited,
            fds,
            vars,
            identity,
            capture_output,
            parent: std::process::id() as libc::pid_t,
        }
    }

    /// Forks and execs a worker.
    pub fn spawn(&self, slot: SlotId, generation: Generation) -> io::Result<Spawned> {
        let mut plan = self.plan(slot, generation);
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // Output pipes: the master's ends never block it; the worker's are
        // ordinary (a worker that outwrites the master waits, not the master).
        let output = if self.capture_output {
            let (out_read, out_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            let (err_read, err_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            for fd in [&out_read, &err_read] {
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
            }
            plan.stdio = Some((out_write.as_raw_fd(), err_write.as_raw_fd()));
            Some(((out_read, err_read), (out_write, err_write)))
        } else {
            None
        };
        // SAFETY: the master is single-threaded, and the child runs only
        // async-signal-safe code before exec or _exit.
        let pid = match unsafe { fork_blocked() }? {
            // SAFETY: in the child, with the plan built before fork.
            None => unsafe { exec_child(&mut plan, write.as_raw_fd()) },
            Some(pid) => pid,
        };
        drop(write);
        let output = output.map(|(reads, _writes_closed_here)| reads);
        Ok(Spawned {
            pid,
            exec_pipe: read,
            output,
        })
    }

    fn plan(&self, slot: SlotId, generation: Generation) -> ChildPlan {
        let mut env: Vec<Vec<u8>> = self
            .inherited
            .iter()
            .map(|c| c.as_bytes_with_nul().to_vec())
            .collect();
        let mut pid_entries = Vec::new();
        let slot_vars = slot_vars(slot, generation).map(|(k, v)| (k.to_string(), Value::Text(v)));
        for (key, value) in self.vars.iter().chain(slot_vars.iter()) {
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
            _env: env,
            fds: self.fds.clone(),
            scratch: vec![-1; self.fds.len()],
            stdio: None,
            identity: self.identity.clone(),
            parent: self.parent,
            max_signal: libc::SIGRTMAX(),
        }
    }
}

/// Forks with every signal blocked. The child (`None`) goes on with them
/// still blocked, so none of the master's handlers can run in it before it
/// resets or drops them (they would write into the master's signal pipe,
/// gunicorn#1910). The parent gets the pid, its mask back, and a child that
/// already leads its own process group (the child sets it too; whichever
/// runs first wins, so a `KillGroup` right after fork finds the group).
///
/// # Safety
///
/// The child may only do what is safe after `fork` in this process:
/// async-signal-safe calls, unless the process has a single thread.
pub(crate) unsafe fn fork_blocked() -> io::Result<Option<Pid>> {
    let mut old = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )?;
    // SAFETY: the caller vouches for the child's path.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        return Ok(None);
    }
    let fork_error = io::Error::last_os_error();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    if pid < 0 {
        return Err(fork_error);
    }
    // SAFETY: plain syscall on our own child.
    unsafe { libc::setpgid(pid, pid) };
    Ok(Some(Pid::from_raw(pid)))
}

/// Enough for any pid (`pid_max` is at most 2^22).
const PID_DIGITS: usize = 20;

/// Everything the child touches between fork and exec, allocated before
/// fork. The pointers point into `_env` and the [`Template`]'s strings,
/// which outlive the plan.
struct ChildPlan {
    program: *const c_char,
    argv: Vec<*const c_char>,
    envp: Vec<*mut c_char>,
    /// (index into envp, offset of the value) for variables holding the
    /// child's own pid.
    pid_entries: Vec<(usize, usize)>,
    _env: Vec<Vec<u8>>,
    fds: Vec<RawFd>,
    scratch: Vec<RawFd>,
    /// Pipe write ends for the worker's stdout and stderr.
    stdio: Option<(RawFd, RawFd)>,
    identity: Option<Identity>,
    parent: libc::pid_t,
    max_signal: i32,
}

/// The child between fork and exec. Async-signal-safe calls only; no
/// allocation, no locks, no Rust std I/O.
unsafe fn exec_child(plan: &mut ChildPlan, err_fd: RawFd) -> ! {
    // SAFETY: every call below is an async-signal-safe syscall on memory
    // prepared before fork.
    unsafe {
        // Signals are still blocked (the parent blocked them around fork):
        // reset every disposition first, so none of the master's handlers
        // can run here, including SIGPIPE, which Rust set to ignore. The
        // raw syscall, because glibc refuses its reserved signals 32 and 33,
        // which our own parent may have left ignored. An all-zero kernel
        // sigaction is SIG_DFL with no flags, whatever the field order.
        let default_action = [0u64; 4];
        for sig in 1..=plan.max_signal {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    default_action.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
        // Its own process group: Ctrl-C reaches only the master, and a
        // forced stop can kill the worker's children with it.
        libc::setpgid(0, 0);
        // stdout and stderr first: their targets (1, 2) are below every
        // listener, and the pipes' own fds may be clobbered after this.
        if let Some((stdout, stderr)) = plan.stdio
            && (libc::dup2(stdout, 1) < 0 || libc::dup2(stderr, 2) < 0)
        {
            libc::_exit(127);
        }
        // Listener i goes to fd 3 + i. Copy every listener above the target
        // range first, so moving one never clobbers another (or the exec
        // pipe), then dup2 down; dup2 clears FD_CLOEXEC on the copy.
        let n = plan.fds.len() as i32;
        let mut err = err_fd;
        if err < 3 + n {
            err = libc::fcntl(err, libc::F_DUPFD_CLOEXEC, 3 + n);
            if err < 0 {
                libc::_exit(127);
            }
        }
        for i in 0..plan.fds.len() {
            plan.scratch[i] = libc::fcntl(plan.fds[i], libc::F_DUPFD_CLOEXEC, 3 + n);
            if plan.scratch[i] < 0 {
                report_and_exit(err);
            }
        }
        for i in 0..plan.fds.len() {
            if libc::dup2(plan.scratch[i], 3 + i as i32) < 0 {
                report_and_exit(err);
            }
        }
        // Drop privileges last but one: setuid clears the parent-death
        // signal, which is why that comes after it.
        if let Some(id) = &plan.identity
            && (libc::setgroups(id.groups.len(), id.groups.as_ptr()) < 0
                || libc::setgid(id.gid) < 0
                || libc::setuid(id.uid) < 0)
        {
            report_and_exit(err);
        }
        // Die with the master. The master may already have died before the
        // prctl, so check that our parent is still it (bubblewrap#730).
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != plan.parent {
            libc::_exit(1);
        }
        // Whatever else is open (an fd our own parent leaked to us) closes
        // at exec. Older kernels lack close_range; our fds are CLOEXEC anyway.
        libc::syscall(
            libc::SYS_close_range,
            (3 + n) as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        );
        let pid = libc::getpid();
        for &(entry, offset) in &plan.pid_entries {
            write_decimal(plan.envp[entry].add(offset).cast(), pid);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(
            plan.program,
            plan.argv.as_ptr(),
            plan.envp.as_ptr() as *const *const c_char,
        );
        report_and_exit(err)
    }
}

/// Writes errno to the exec pipe for the master and exits 127.
unsafe fn report_and_exit(err_fd: RawFd) -> ! {
    // SAFETY: async-signal-safe calls on a local buffer.
    unsafe {
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(err_fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// Formats `n` (non-negative) at `out`, NUL-terminated, without allocating.
unsafe fn write_decimal(out: *mut u8, n: libc::pid_t) {
    let mut digits = [0u8; PID_DIGITS];
    let mut len = 0;
    let mut n = n.max(0) as u64;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: the caller reserved PID_DIGITS bytes plus a NUL.
        unsafe { *out.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: as above.
    unsafe { *out.add(len) = 0 };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_decimal_formats_pids() {
        let mut buf = [0xffu8; PID_DIGITS + 1];
        for (n, text) in [(0, "0"), (7, "7"), (4194304, "4194304")] {
            unsafe { write_decimal(buf.as_mut_ptr(), n) };
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(&buf[..end], text.as_bytes());
        }
    }

    #[test]
    fn resolve_finds_commands_on_path_and_refuses_what_cannot_run() {
        let sh = resolve(&["sh".into()]).unwrap();
        assert!(sh.program.to_bytes().ends_with(b"/sh"));
        assert!(matches!(
            resolve(&["./does-not-exist".into()]),
            Err(Error::CommandNotFound { .. })
        ));
        assert!(matches!(
            resolve(&["no-such-command-xyz".into()]),
            Err(Error::CommandNotFound { .. })
        ));
        assert!(matches!(
            resolve(&["/".into()]),
            Err(Error::NotExecutable { .. })
        ));
    }
}
