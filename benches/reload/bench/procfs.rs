//! What the kernel says about the master: CPU time, memory, and how often
//! it woke up.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    /// User + system CPU time.
    pub cpu: Duration,
    /// CPU time in clock ticks (what `top` counts).
    pub ticks: u64,
    pub rss_kib: u64,
    /// Times it went to sleep waiting for something: its wakeups.
    pub voluntary_switches: u64,
}

pub fn read(pid: i32) -> ProcStat {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    // After the command name: state is field 3, utime 14, stime 15.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ticks = field(14) + field(15);
    // schedstat's first field is the CPU time in nanoseconds, finer than ticks.
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| Duration::from_millis(ticks * 1000 / clock_ticks()));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let status_field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    ProcStat {
        cpu,
        ticks,
        rss_kib: status_field("VmRSS:"),
        voluntary_switches: status_field("voluntary_ctxt_switches:"),
    }
}

pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// The timeout the process sleeps with, if it sleeps in `epoll_wait` now
/// (state `S`, its fourth argument): -1 for none.
pub fn epoll_timeout(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let sleeping = stat.rsplit_once(") ")?.1.starts_with('S');
    let call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let fields: Vec<&str> = call.split_whitespace().collect();
    let number: i64 = fields.first()?.parse().ok()?;
    let timeout = u64::from_str_radix(fields.get(4)?.trim_start_matches("0x"), 16).ok()?;
    // The register holds the int as it was passed: its low 32 bits.
    (sleeping && is_epoll_wait(number)).then_some(timeout as u32 as i32)
}

#[cfg(target_arch = "x86_64")]
fn is_epoll_wait(call: i64) -> bool {
    call == libc::SYS_epoll_wait || call == libc::SYS_epoll_pwait
}

#[cfg(not(target_arch = "x86_64"))]
fn is_epoll_wait(call: i64) -> bool {
    call == libc::SYS_epoll_pwait
}

/// Waits until the master sleeps with nothing left to do and no deadline:
/// in `epoll_wait` with no timeout.
pub fn wait_asleep(pid: i32, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if epoll_timeout(pid) == Some(-1) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
