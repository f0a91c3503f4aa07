//! The words the records' sentences share (`render.rs`): how a worker, a
//! reason to stop, a reason to recycle, a way of being ready and what
//! follows an exit are said.

use crate::supervisor::record::Next;
use crate::supervisor::recycle::RecycleReason;
use crate::supervisor::slot::{ReadyBy, StopReason};
use crate::vocab::{Pid, SlotId, human, megabytes};

pub(super) fn worker(slot: SlotId, pid: Pid) -> String {
    format!("worker {slot} (pid {pid})")
}

/// Why a worker was stopped, as its records say it.
pub(super) fn stop_reason(why: &StopReason) -> String {
    match why {
        StopReason::Replaced { by } => format!("replaced by generation {by}"),
        StopReason::ScaledDown => "scaled down".into(),
        StopReason::Shutdown => "shutdown".into(),
        StopReason::ReloadAborted => "reload aborted".into(),
        StopReason::Watchdog { timeout } => format!("no watchdog ping for {}", human(*timeout)),
        StopReason::NotReady { timeout } => format!("not ready within {}", human(*timeout)),
        StopReason::NotServing => "idle and not listening".into(),
        StopReason::WorkerStopping => "it said STOPPING=1".into(),
        StopReason::ProbeFailed => "failed its probes".into(),
        StopReason::ErrorRate => "answered more errors than the serving workers".into(),
        StopReason::Recycled(reason) => format!("recycled: {}", recycle_reason(reason)),
    }
}

pub(super) fn recycle_reason(reason: &RecycleReason) -> String {
    match reason {
        RecycleReason::Memory { rss, limit } => format!(
            "{} resident, over --max-memory {}",
            megabytes(*rss),
            megabytes(*limit)
        ),
        RecycleReason::Age { limit } => {
            format!("its age limit, {} (--max-age with jitter)", human(*limit))
        }
        RecycleReason::Unhealthy { failures } => {
            format!("failed {failures} probes in a row (--probe-failures)")
        }
    }
}

/// What made a worker ready, in words.
pub(super) fn ready_by(by: &ReadyBy, pid: Pid) -> String {
    match by {
        ReadyBy::Notify { sender } if *sender == pid => "READY=1".into(),
        ReadyBy::Notify { sender } => format!("READY=1 from pid {sender}"),
        ReadyBy::Listening => "waits on its listeners".into(),
        ReadyBy::Uptime => "alive for --min-uptime".into(),
        ReadyBy::Delay => "--ready delay".into(),
        ReadyBy::Exec => "exec succeeded".into(),
    }
}

/// What follows an exit, as the end of its sentence.
pub(super) fn next_text(next: &Next) -> String {
    match next {
        Next::Restart { delay, .. } if delay.is_zero() => "restarting now".into(),
        Next::Restart { delay, attempt } => {
            format!("restarting in {} (attempt {attempt})", human(*delay))
        }
        Next::Stopped(why) => format!("stopped: {}", stop_reason(why)),
        Next::SlotServed => "not restarted: its slot still has a worker".into(),
        Next::NotRestarted => "not restarted".into(),
        Next::GiveUp => "giving up (--max-restarts)".into(),
    }
}
