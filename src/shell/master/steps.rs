//! Which steps of a turn of the loop took long. A slow turn's record names
//! them, innermost first ("LookServing 10.2s < Exited(Pid(81)) 10.2s"), so
//! a stall seen once explains itself: the events a turn handled say when,
//! not where.

use std::time::{Duration, Instant};

/// A step shorter than this is not worth naming.
const SLOW_STEP: Duration = Duration::from_millis(100);
/// Steps kept per turn: a stall nests a few deep at most.
const KEPT: usize = 8;

#[derive(Debug, Default)]
pub struct Steps {
    slow: Vec<(String, Duration)>,
}

impl Steps {
    /// A step that began at `began` just ended; `name` is asked for only
    /// if it was slow.
    pub fn ended(&mut self, began: Instant, name: impl FnOnce() -> String) {
        let took = began.elapsed();
        if took >= SLOW_STEP && self.slow.len() < KEPT {
            self.slow.push((name(), took));
        }
    }

    /// The slow steps of the turn that ends, innermost first; none left.
    pub fn take(&mut self) -> String {
        let slow = std::mem::take(&mut self.slow);
        let named: Vec<String> = slow
            .iter()
            .map(|(name, took)| format!("{name} {}ms", took.as_millis()))
            .collect();
        named.join(" < ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slow_steps_are_named_innermost_first() {
        let mut steps = Steps::default();
        let long_ago = Instant::now() - Duration::from_secs(2);
        steps.ended(Instant::now(), || unreachable!("a quick step is not named"));
        steps.ended(long_ago, || "LookServing".into());
        steps.ended(long_ago, || "Exited(Pid(7))".into());
        let said = steps.take();
        assert!(said.starts_with("LookServing 2"), "{said}");
        assert!(said.contains("ms < Exited(Pid(7)) 2"), "{said}");
        assert_eq!(steps.take(), "", "each turn starts afresh");
    }
}
