//! What `rcluster status` and `/metrics` show beside the supervisor's
//! state, read when asked (never polled): memory and CPU of each worker's
//! process tree from `/proc`, the last lines on stderr, what the shell
//! counted.

use std::time::{Duration, Instant};

use crate::control::status::{Counts, Observed};
use crate::control::usage;
use crate::launch::Launch;
use crate::vocab::{Pid, SlotId};

use super::Master;

/// A worker's CPU share is measured over at least this long.
const CPU_SAMPLE: Duration = Duration::from_secs(1);

/// A worker's CPU time when last looked at, and the share of a CPU it
/// used up to then.
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuSample {
    at: Instant,
    ticks: u64,
    percent: f64,
}

impl<L: Launch> Master<'_, L> {
    /// What the workers use and said, read now (never polled): memory and
    /// CPU from `/proc`, CPU as a share of one CPU since the last look at
    /// least a second ago, else over the worker's life; and, for `slot`
    /// (`status --slot N`), the last lines on stderr its workers kept.
    pub(super) fn observe(&mut self, now: Instant, slot: Option<SlotId>) -> Observed {
        let ticks_per_second = usage::ticks_per_second() as f64;
        let mut observed = Observed {
            master_rss: usage::of_process(Pid::from_raw(std::process::id() as i32))
                .map(|u| u.rss_bytes),
            master_anon: usage::own_anonymous(),
            ..Observed::default()
        };
        for worker in self.supervisor.workers() {
            let Some(used) = usage::of_tree(worker.pid) else {
                continue;
            };
            let percent = match self.cpu_samples.get(&worker.pid) {
                // Under a second since the last look: too short to measure.
                Some(last) if now.saturating_duration_since(last.at) < CPU_SAMPLE => last.percent,
                last => {
                    let (since, ticks) = last.map_or((worker.started, 0), |l| (l.at, l.ticks));
                    let seconds = now.saturating_duration_since(since).as_secs_f64();
                    let used_seconds =
                        used.cpu_ticks.saturating_sub(ticks) as f64 / ticks_per_second;
                    let percent = if seconds > 0.0 {
                        100.0 * used_seconds / seconds
                    } else {
                        0.0
                    };
                    let sample = CpuSample {
                        at: now,
                        ticks: used.cpu_ticks,
                        percent,
                    };
                    self.cpu_samples.insert(worker.pid, sample);
                    percent
                }
            };
            observed.usage.insert(worker.pid, (used, percent));
        }
        for (&id, (_, tail)) in &self.last_words {
            if let Some(line) = tail.cause() {
                observed.last_lines.insert(id, line);
            }
        }
        let Some(slot) = slot else {
            return observed;
        };
        for (pid, tail) in self.output.tails() {
            if self.supervisor.slot_of(pid) == Some(slot) {
                observed
                    .tails
                    .insert(pid, tail.lines().map(str::to_string).collect());
            }
        }
        observed.previous = self
            .last_words
            .get(&slot)
            .map(|(pid, tail)| (*pid, tail.lines().map(str::to_string).collect()));
        observed
    }

    pub(super) fn counts(&self) -> Counts {
        Counts {
            log_lines_lost: self.log.lines_lost() + self.log_lost_before,
            notify_dropped: self.notify_dropped,
        }
    }
}
