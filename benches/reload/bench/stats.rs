//! Summaries of samples: latency percentiles (hdrhistogram), failures by
//! class, time buckets for the picture, medians.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::load::{Outcome, Sample};

#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

/// Percentiles of the successful samples among `samples`.
pub fn latency<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Latency {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
    for s in samples.into_iter().filter(|s| s.outcome == Outcome::Ok) {
        histogram.saturating_record(s.latency.as_micros().max(1) as u64);
    }
    if histogram.is_empty() {
        return Latency::default();
    }
    let at = |q: f64| Duration::from_micros(histogram.value_at_quantile(q));
    Latency {
        count: histogram.len(),
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        max: Duration::from_micros(histogram.max()),
    }
}

impl Latency {
    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50_us": self.p50.as_micros() as u64,
            "p99_us": self.p99.as_micros() as u64,
            "p999_us": self.p999.as_micros() as u64,
            "max_us": self.max.as_micros() as u64,
        })
    }
}

/// Failed requests by class.
pub fn failures<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Vec<(Outcome, u64)> {
    let mut counts: Vec<(Outcome, u64)> = Outcome::FAILURES.iter().map(|&o| (o, 0)).collect();
    for s in samples {
        if let Some(c) = counts.iter_mut().find(|(o, _)| *o == s.outcome) {
            c.1 += 1;
        }
    }
    counts
}

pub fn failures_json(counts: &[(Outcome, u64)]) -> Value {
    Value::Object(
        counts
            .iter()
            .map(|(o, n)| (o.name().to_string(), json!(n)))
            .collect(),
    )
}

/// "0" or "3 (reset 2, refused 1)".
pub fn failures_text(counts: &[(Outcome, u64)]) -> String {
    let total: u64 = counts.iter().map(|c| c.1).sum();
    let parts: Vec<String> = counts
        .iter()
        .filter(|c| c.1 > 0)
        .map(|(o, n)| format!("{} {n}", o.name()))
        .collect();
    if parts.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({})", parts.join(", "))
    }
}

/// One time bucket of a run, for the picture and the JSON.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub start: Duration,
    pub ok: u64,
    pub failed: u64,
    pub p50: Duration,
    pub max: Duration,
}

pub fn buckets(samples: &[Sample], width: Duration) -> Vec<Bucket> {
    let Some(last) = samples.iter().map(|s| s.start).max() else {
        return Vec::new();
    };
    let n = (last.as_micros() / width.as_micros()) as usize + 1;
    let mut groups: Vec<Vec<&Sample>> = vec![Vec::new(); n];
    for s in samples {
        groups[(s.start.as_micros() / width.as_micros()) as usize].push(s);
    }
    groups
        .iter()
        .enumerate()
        .map(|(i, group)| {
            let l = latency(group.iter().copied());
            Bucket {
                start: width * i as u32,
                ok: l.count,
                failed: group.len() as u64 - l.count,
                p50: l.p50,
                max: l.max,
            }
        })
        .collect()
}

pub fn buckets_json(buckets: &[Bucket]) -> Value {
    buckets
        .iter()
        .map(|b| {
            json!({
                "t_ms": b.start.as_millis() as u64,
                "ok": b.ok,
                "failed": b.failed,
                "p50_us": b.p50.as_micros() as u64,
                "max_us": b.max.as_micros() as u64,
            })
        })
        .collect()
}

/// The longest stretch without one successful response completing.
pub fn longest_gap(samples: &[Sample]) -> Duration {
    let mut ends: Vec<Duration> = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Ok)
        .map(Sample::end)
        .collect();
    ends.sort();
    ends.windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

pub fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
