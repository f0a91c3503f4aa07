//! Whether a booting worker serves: the master's look for `--ready auto`,
//! when a worker says nothing. Being alive proves little (a Node app that
//! waits forever for its database is alive); waiting on the listening
//! socket it was given is what a server does once it can serve. So the
//! master looks, in `/proc`, at the worker and every process it started:
//!
//! - an epoll set that watches one of the listeners for input (Node, Go,
//!   tokio, asyncio, nginx: `/proc/PID/fdinfo/N` of the epoll fd lists each
//!   watched file's inode);
//! - a thread blocked in `accept` on one (a thread-per-connection server);
//! - a thread blocked in `poll` or `select` with one in its set (Python's
//!   `socketserver`, gunicorn's sync workers), read from the thread's
//!   registers in `/proc/PID/task/TID/syscall` and its memory
//!   (`process_vm_readv`, allowed to the master: it is their ancestor);
//! - a connection it accepted from one of them (its local address is the
//!   listener's), asked of a copy of the fd (`pidfd_getfd`): a server busy
//!   serving is seldom caught waiting, but holds what it accepted.
//!
//! When none does, the look also says whether the tree is idle: every
//! thread asleep and no CPU used since the previous look. A booting app
//! is busy; one that will never listen waits for something else.
//!
//! Every read is of a small file, bounded in count; nothing here blocks on
//! the worker.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use socket2::{SockAddr, SockRef};

use crate::control::usage;
use crate::supervisor::slot::Serving;
use crate::vocab::Pid;

/// At most this many processes of a worker's tree, fds of a process,
/// threads of a process and entries of a `poll` set are looked at.
const MAX_PROCESSES: usize = 64;
const MAX_FDS: usize = 4096;
const MAX_THREADS: usize = 256;
const MAX_POLL_FDS: usize = 1024;
/// Sockets of a process asked whether they are accepted connections.
const MAX_CONNECTIONS: usize = 32;

/// The sockets workers are given: their inodes (to find them in a
/// worker's fds) and addresses (to recognize what was accepted from them).
#[derive(Debug, Default)]
pub struct Listeners {
    pub inodes: BTreeSet<u64>,
    addrs: Vec<SockAddr>,
}

impl Listeners {
    pub fn add(&mut self, fd: RawFd) {
        if let Ok(meta) = std::fs::metadata(format!("/proc/self/fd/{fd}")) {
            self.inodes.insert(meta.ino());
        }
        // SAFETY: the fd is a listener the master holds open for the call.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Ok(addr) = SockRef::from(&socket).local_addr() {
            self.addrs.push(addr);
        }
    }

    /// Whether `fd` is one of these (by its inode).
    pub fn knows(&self, fd: RawFd) -> bool {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|meta| self.inodes.contains(&meta.ino()))
    }

    /// Whether a socket whose local address is `local` was accepted from
    /// one of these (the same port, or the same Unix path).
    fn accepted(&self, local: &SockAddr) -> bool {
        self.addrs
            .iter()
            .any(|ours| match (ours.as_socket(), local.as_socket()) {
                (Some(ours), Some(local)) => {
                    ours.port() == local.port() && ours.is_ipv4() == local.is_ipv4()
                }
                (None, None) => {
                    ours.as_pathname().is_some() && ours.as_pathname() == local.as_pathname()
                }
                _ => false,
            })
    }
}

/// What a look remembers for the next one: the tree's CPU time.
pub type Samples = HashMap<Pid, u64>;

/// Looks at `pid`'s tree. `samples` keeps each worker's CPU time for its
/// next look.
pub fn look(pid: Pid, listeners: &Listeners, samples: &mut Samples) -> Serving {
    if listeners.inodes.is_empty() {
        return Serving::Unknown;
    }
    let mut seen = Seen::default();
    for process in tree(pid) {
        if let Err(Blind) = seen.process(process, listeners) {
            return Serving::Unknown;
        }
        if seen.serving {
            samples.remove(&pid);
            return Serving::Yes;
        }
    }
    if seen.blind {
        return Serving::Unknown;
    }
    let before = samples.insert(pid, seen.cpu_ticks);
    // One clock tick (10 ms) of slack: a timer firing now and then is not
    // a boot in progress.
    let quiet = before.is_some_and(|ticks| seen.cpu_ticks <= ticks + 1);
    Serving::No {
        idle: quiet && !seen.busy,
    }
}

/// The master may not look (another user, `hidepid`).
struct Blind;

#[derive(Default)]
struct Seen {
    serving: bool,
    /// A thread runs or waits on the disk.
    busy: bool,
    /// A thread waits in a way the look cannot see into.
    blind: bool,
    cpu_ticks: u64,
}

impl Seen {
    fn process(&mut self, pid: Pid, listeners: &Listeners) -> Result<(), Blind> {
        let dir = Path::new("/proc").join(pid.to_string());
        let fds = std::fs::read_dir(dir.join("fd")).map_err(|_| Blind)?;
        // The process's fds that are listeners, its epoll sets, and its
        // other sockets.
        let mut ours = BTreeSet::new();
        let mut epolls = Vec::new();
        let mut sockets = Vec::new();
        for entry in fds.flatten().take(MAX_FDS) {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            match socket_inode(&target) {
                Some(ino) if listeners.inodes.contains(&ino) => {
                    ours.insert(fd);
                }
                Some(_) => sockets.push(fd),
                None if target == "anon_inode:[eventpoll]" => epolls.push(fd),
                None => {}
            }
        }
        for fd in epolls {
            let info =
                std::fs::read_to_string(dir.join(format!("fdinfo/{fd}"))).unwrap_or_default();
            if watches_for_input(&info, &listeners.inodes) {
                self.serving = true;
                return Ok(());
            }
        }
        if holds_accepted(pid, &sockets, listeners) {
            self.serving = true;
            return Ok(());
        }
        self.cpu_ticks += usage::of_process(pid).map_or(0, |u| u.cpu_ticks);
        let tasks = std::fs::read_dir(dir.join("task")).map_err(|_| Blind)?;
        for task in tasks.flatten().take(MAX_THREADS) {
            let state = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            if matches!(thread_state(&state), Some('R' | 'D')) {
                self.busy = true;
            }
            let Ok(call) = std::fs::read_to_string(task.path().join("syscall")) else {
                continue;
            };
            match Call::parse(&call) {
                Some(call) => match call.waits_on(pid, &ours) {
                    Waits::Listener => {
                        self.serving = true;
                        return Ok(());
                    }
                    Waits::Unseen => self.blind = true,
                    Waits::Other => {}
                },
                None => self.busy |= call.starts_with("running"),
            }
        }
        Ok(())
    }
}

/// `pid` and its descendants, nearest first.
fn tree(pid: Pid) -> Vec<Pid> {
    let mut found = vec![pid];
    let mut next = 0;
    while next < found.len() && found.len() < MAX_PROCESSES {
        for child in usage::children(found[next].as_raw()) {
            let child = Pid::from_raw(child);
            if !found.contains(&child) && found.len() < MAX_PROCESSES {
                found.push(child);
            }
        }
        next += 1;
    }
    found
}

/// Whether one of `pid`'s `sockets` (fd numbers) is a connection accepted
/// from one of the listeners.
fn holds_accepted(pid: Pid, sockets: &[RawFd], listeners: &Listeners) -> bool {
    if sockets.is_empty() {
        return false;
    }
    // SAFETY: pidfd_open only reads its arguments; a new fd is ours alone.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if pidfd < 0 {
        return false;
    }
    // SAFETY: a fresh fd, owned from here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    sockets.iter().take(MAX_CONNECTIONS).any(|&fd| {
        // SAFETY: pidfd_getfd only reads its arguments; a new fd is ours
        // alone (close-on-exec, as pidfd_getfd makes it).
        let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if copy < 0 {
            return false;
        }
        // SAFETY: a fresh fd, owned from here.
        let copy = unsafe { OwnedFd::from_raw_fd(copy as RawFd) };
        let socket = SockRef::from(&copy);
        !socket.is_listener().unwrap_or(true)
            && socket
                .local_addr()
                .is_ok_and(|local| listeners.accepted(&local))
    })
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Whether an epoll set (its fdinfo) watches one of `listeners` for input.
/// Its lines read `tfd: 3 events: 19 data: 3 pos:0 ino:5e222 sdev:9`, the
/// events and inode in hex.
fn watches_for_input(fdinfo: &str, listeners: &BTreeSet<u64>) -> bool {
    fdinfo
        .lines()
        .filter(|line| line.starts_with("tfd:"))
        .any(|line| {
            let field = |key: &str| {
                let rest = line.split(key).nth(1)?;
                let value = rest.split_whitespace().next()?;
                u64::from_str_radix(value, 16).ok()
            };
            let input = field("events:").is_some_and(|e| e & libc::EPOLLIN as u64 != 0);
            input && field("ino:").is_some_and(|ino| listeners.contains(&ino))
        })
}

/// The state letter of a `/proc/.../stat` line.
fn thread_state(stat: &str) -> Option<char> {
    stat.rsplit_once(") ")?.1.chars().next()
}

/// A thread's system call, from `/proc/PID/task/TID/syscall`: its number
/// and first arguments (`running` or `-1 …` when it is in none).
struct Call {
    number: i64,
    args: [u64; 3],
}

enum Waits {
    Listener,
    /// In a call whose waiting the look cannot see (io_uring).
    Unseen,
    Other,
}

impl Call {
    fn parse(line: &str) -> Option<Call> {
        let mut fields = line.split_whitespace();
        let number = fields.next()?.parse().ok()?;
        let mut args = [0; 3];
        for arg in &mut args {
            *arg = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
        }
        Some(Call { number, args })
    }

    fn waits_on(&self, pid: Pid, ours: &BTreeSet<i32>) -> Waits {
        let [a0, a1, _] = self.args;
        let found = match self.number {
            libc::SYS_accept | libc::SYS_accept4 => ours.contains(&(a0 as i32)),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_poll => polls_for_input(pid, a0, a1, ours),
            libc::SYS_ppoll => polls_for_input(pid, a0, a1, ours),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_select => selects(pid, a0, a1, ours),
            libc::SYS_pselect6 => selects(pid, a0, a1, ours),
            libc::SYS_io_uring_enter => return Waits::Unseen,
            _ => false,
        };
        if found { Waits::Listener } else { Waits::Other }
    }
}

/// Whether the `poll` set at `addr` (`nfds` entries) in `pid`'s memory
/// asks for input on one of `ours`.
fn polls_for_input(pid: Pid, addr: u64, nfds: u64, ours: &BTreeSet<i32>) -> bool {
    if ours.is_empty() {
        return false;
    }
    let n = (nfds as usize).min(MAX_POLL_FDS);
    let mut set = vec![
        libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0
        };
        n
    ];
    let bytes = n * std::mem::size_of::<libc::pollfd>();
    read_memory(pid, addr, set.as_mut_ptr().cast(), bytes)
        && set
            .iter()
            .any(|p| p.events & libc::POLLIN != 0 && ours.contains(&p.fd))
}

/// Whether the `select` read set at `addr` (fds below `nfds`) in `pid`'s
/// memory holds one of `ours`.
fn selects(pid: Pid, nfds: u64, addr: u64, ours: &BTreeSet<i32>) -> bool {
    let highest = ours.last().copied().unwrap_or(-1);
    if addr == 0 || highest < 0 || highest as u64 >= nfds {
        return false;
    }
    let mut set = [0u8; 128];
    let bytes = (nfds as usize).div_ceil(8).min(set.len());
    read_memory(pid, addr, set.as_mut_ptr(), bytes)
        && ours
            .iter()
            .filter(|&&fd| fd >= 0 && (fd as usize) < bytes * 8)
            .any(|&fd| set[fd as usize / 8] & (1 << (fd % 8)) != 0)
}

/// Copies `len` bytes at `addr` in `pid` to `into`.
fn read_memory(pid: Pid, addr: u64, into: *mut u8, len: usize) -> bool {
    let local = libc::iovec {
        iov_base: into.cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: the kernel writes at most `len` bytes to `into`, which the
    // caller owns; the remote address is only read, and checked by the
    // kernel (EFAULT, EPERM).
    let read = unsafe { libc::process_vm_readv(pid.as_raw(), &local, 1, &remote, 1, 0) };
    read == len as isize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(fd: i32) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino()
    }

    fn of(fd: i32) -> Listeners {
        let mut listeners = Listeners::default();
        listeners.add(fd);
        listeners
    }

    #[test]
    fn an_epoll_set_watching_a_listener_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = inode(listener.as_raw_fd());
        // SAFETY: plain syscalls on fds this test owns.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: as above.
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, listener.as_raw_fd(), &mut event) };
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{epoll}")).unwrap();
        assert!(watches_for_input(&info, &BTreeSet::from([ino])), "{info}");
        assert!(!watches_for_input(&info, &BTreeSet::from([ino + 1])));
        // SAFETY: closing the fd made above.
        unsafe { libc::close(epoll) };
    }

    #[test]
    fn a_thread_blocked_in_accept_or_poll_on_a_listener_is_seen() {
        let me = Pid::from_raw(std::process::id() as i32);
        for how in ["accept", "poll"] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let fd = listener.as_raw_fd();
            let ours = of(fd);
            let waiter = std::thread::spawn(move || {
                if how == "poll" {
                    let mut set = [libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    }];
                    // SAFETY: a poll on a set this thread owns.
                    unsafe { libc::poll(set.as_mut_ptr(), 1, 10_000) };
                }
                let _ = listener.accept();
            });
            let mut samples = Samples::new();
            let seen = (0..200).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                look(me, &ours, &mut samples) == Serving::Yes
            });
            let _ = std::net::TcpStream::connect(addr);
            waiter.join().unwrap();
            assert!(seen, "a thread in {how} was not seen");
        }
    }

    #[test]
    fn a_process_holding_a_listener_without_waiting_on_it_does_not_serve() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = of(listener.as_raw_fd());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let asleep = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            thread_state(&stat) == Some('S') && exe.ends_with("sleep")
        });
        assert!(asleep, "sleep never slept");
        let mut samples = Samples::new();
        let first = look(pid, &ours, &mut samples);
        let second = look(pid, &ours, &mut samples);
        let _ = child.kill();
        let _ = child.wait();
        // The child holds no listener of ours, and sleeps.
        assert_eq!(first, Serving::No { idle: false }, "no baseline yet");
        assert_eq!(second, Serving::No { idle: true });
        assert_eq!(
            look(pid, &Listeners::default(), &mut samples),
            Serving::Unknown,
            "without listeners nothing can be told"
        );
    }

    #[test]
    fn a_connection_accepted_from_a_listener_is_seen() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ours = Listeners::default();
        ours.add(listener.as_raw_fd());
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _elsewhere = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (theirs, _) = other.accept().unwrap();
        let me = Pid::from_raw(std::process::id() as i32);
        assert!(!holds_accepted(me, &[theirs.as_raw_fd()], &ours));
        let (accepted, _) = listener.accept().unwrap();
        assert!(holds_accepted(
            me,
            &[theirs.as_raw_fd(), accepted.as_raw_fd()],
            &ours
        ));
    }
}
