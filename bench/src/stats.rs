//! What a load phase measured: latencies, outcomes, rate and percentiles.

use std::{collections::BTreeMap, time::Duration};

/// What one load lane measured.
#[derive(Debug, Default)]
pub struct Lane {
    /// Latency of each request, microseconds.
    pub latencies: Vec<u64>,
    /// Count per outcome ("200", "503", "OK", "NotFound", "connection error"…).
    pub outcomes: BTreeMap<String, u64>,
    /// First unsuccessful answer, for the report.
    pub first_failure: Option<String>,
}

impl Lane {
    /// Records one request's latency and outcome.
    pub fn record(
        &mut self,
        latency: Duration,
        outcome: &str,
        success: bool,
        detail: impl FnOnce() -> String,
    ) {
        self.latencies.push(latency.as_micros() as u64);
        *self.outcomes.entry(outcome.to_owned()).or_default() += 1;
        if !success && self.first_failure.is_none() {
            self.first_failure = Some(detail());
        }
    }
}

/// Every lane of a phase merged.
#[derive(Debug)]
pub struct Report {
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// All latencies, microseconds, sorted.
    pub latencies: Vec<u64>,
    /// Count per outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Requests that did not succeed.
    pub failures: u64,
    /// First unsuccessful answer.
    pub first_failure: Option<String>,
}

impl Report {
    /// Merges lanes; `success` names the outcome that counts as success.
    pub fn merge(elapsed: Duration, lanes: Vec<Lane>, success: &str) -> Self {
        let mut report = Self {
            elapsed,
            latencies: Vec::new(),
            outcomes: BTreeMap::new(),
            failures: 0,
            first_failure: None,
        };
        for lane in lanes {
            report.latencies.extend(lane.latencies);
            for (outcome, n) in lane.outcomes {
                *report.outcomes.entry(outcome).or_default() += n;
            }
            if report.first_failure.is_none() {
                report.first_failure = lane.first_failure;
            }
        }
        report.latencies.sort_unstable();
        report.failures = report
            .outcomes
            .iter()
            .filter(|(outcome, _)| outcome.as_str() != success)
            .map(|(_, n)| n)
            .sum();
        report
    }

    /// Requests made.
    pub fn count(&self) -> usize {
        self.latencies.len()
    }

    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.count() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at percentile `p` (0–100, nearest rank), in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).map_or(f64::NAN, |us| us as f64 / 1000.0)
    }

    /// "200: 19990, 503: 10".
    pub fn outcomes_line(&self) -> String {
        self.outcomes
            .iter()
            .map(|(outcome, n)| format!("{outcome}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The two summary lines every phase prints.
    pub fn summary(&self, what: &str, unit: &str) -> String {
        format!(
            "{what:<22} {:>9.0} {unit}/s  ({} in {:.2} s)\n{:<22} latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}   [{}]",
            self.rate(),
            self.count(),
            self.elapsed.as_secs_f64(),
            "",
            self.percentile_ms(50.0),
            self.percentile_ms(90.0),
            self.percentile_ms(99.0),
            self.percentile_ms(100.0),
            self.outcomes_line(),
        )
    }
}

/// Nearest-rank percentile `p` (0–100) of sorted `values`; None when empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 90.0), Some(90));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 99.5), Some(100));
        assert_eq!(percentile(&values, 100.0), Some(100));
        assert_eq!(percentile(&values, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1, 2, 3, 1000], 75.0), Some(3));
        assert_eq!(percentile(&[1, 2, 3, 1000], 76.0), Some(1000));
    }

    #[test]
    fn merge_counts_every_outcome_that_is_not_success_as_a_failure() {
        let mut a = Lane::default();
        a.record(Duration::from_micros(3000), "200", true, String::new);
        a.record(Duration::from_micros(1000), "503", false, || {
            "503 busy".into()
        });
        let mut b = Lane::default();
        b.record(Duration::from_micros(2000), "200", true, String::new);
        b.record(
            Duration::from_micros(4000),
            "connection error",
            false,
            || "reset".into(),
        );
        let report = Report::merge(Duration::from_secs(2), vec![a, b], "200");
        assert_eq!(report.latencies, vec![1000, 2000, 3000, 4000]);
        assert_eq!(report.failures, 2);
        assert_eq!(report.first_failure.as_deref(), Some("503 busy"));
        assert_eq!(report.rate(), 2.0);
        assert_eq!(report.percentile_ms(50.0), 2.0);
        assert_eq!(
            report.outcomes_line(),
            "200: 2, 503: 1, connection error: 1"
        );
    }
}
