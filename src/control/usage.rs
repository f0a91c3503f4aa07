//! What a worker uses, read from `/proc` when asked (by `rcluster status`,
//! a scrape of `/metrics`, or the `--max-memory` check), never polled: the
//! resident memory and CPU time of the worker and every process it started
//! (gunicorn's app runs in a child of the process rcluster started).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::vocab::Pid;

/// A process tree's use: the sum over the worker and its descendants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Resident set, in bytes (pages shared between the processes, as
    /// after a fork, count once per process, as in `ps`).
    pub rss_bytes: u64,
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
    pub processes: u32,
}

impl Usage {
    pub fn cpu_time(&self) -> Duration {
        Duration::from_secs_f64(self.cpu_ticks as f64 / ticks_per_second() as f64)
    }
}

/// `pid` and its descendants; `None` if `pid` is gone. Processes are found
/// through `/proc/<pid>/task/<tid>/children`, one file per thread, so the
/// cost is a few reads per process, not a scan of every process.
pub fn of_tree(pid: Pid) -> Option<Usage> {
    let mut total = of_process(pid)?;
    let mut seen = BTreeSet::from([pid.as_raw()]);
    let mut queue = children(pid.as_raw());
    while let Some(child) = queue.pop() {
        if !seen.insert(child) {
            continue;
        }
        if let Some(usage) = of_process(Pid::from_raw(child)) {
            total.rss_bytes += usage.rss_bytes;
            total.cpu_ticks += usage.cpu_ticks;
            total.processes += 1;
            queue.extend(children(child));
        }
    }
    Some(total)
}

/// One process alone.
pub fn of_process(pid: Pid) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command, which may hold spaces and parentheses.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15, rss is 24 (man proc): 3 less
    // here, where the list starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Usage {
        rss_bytes: field(24)? * page_size(),
        cpu_ticks: field(14)? + field(15)?,
        processes: 1,
    })
}

/// This process's anonymous resident memory (`RssAnon` of
/// `/proc/self/status`): what it holds of its own, where its RSS also
/// counts the pages of its binary and libc, shared and given back to the
/// page cache on demand.
pub fn own_anonymous() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The children of every thread of `pid`.
pub(crate) fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_counts_its_children() {
        let me = Pid::from_raw(std::process::id() as i32);
        assert!(of_process(me).unwrap().rss_bytes > 0);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let sleeper = of_process(Pid::from_raw(child.id() as i32));
        let tree = of_tree(me).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        // Other tests' threads change this process's own figures meanwhile:
        // only what the child adds is certain.
        assert!(tree.processes >= 2, "{tree:?}");
        assert!(tree.rss_bytes > sleeper.unwrap().rss_bytes, "{tree:?}");
    }
}
