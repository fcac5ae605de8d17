//! Memory and CPU of processes, from /proc (Linux): peak and current RSS
//! (`VmHWM`, `VmRSS` in /proc/PID/status) and user + system CPU time
//! (/proc/PID/stat), to print per-event costs of the servers under load.

use std::time::Instant;

/// One process at one moment.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// The process id.
    pub pid: u32,
    /// Peak resident set size, KiB.
    pub peak_rss_kib: u64,
    /// Current resident set size, KiB.
    pub rss_kib: u64,
    /// User + system CPU time, microseconds.
    pub cpu_us: u64,
    /// When it was read.
    pub at: Instant,
}

/// Linux's USER_HZ: the unit of /proc/PID/stat times, everywhere that matters.
const TICKS_PER_SEC: u64 = 100;

impl ProcSample {
    /// Reads process `pid`; an error names the pid and the file.
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let status_path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&status_path).map_err(|e| {
            anyhow::anyhow!("cannot read {status_path} (is process {pid} running?): {e}")
        })?;
        let stat_path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&stat_path)
            .map_err(|e| anyhow::anyhow!("cannot read {stat_path}: {e}"))?;
        Ok(Self {
            pid,
            peak_rss_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
            rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
            cpu_us: cpu_ticks(&stat)
                .ok_or_else(|| anyhow::anyhow!("{stat_path}: unexpected format"))?
                * (1_000_000 / TICKS_PER_SEC),
            at: Instant::now(),
        })
    }

    /// "pid 123: peak RSS 40.1 MiB, RSS 38.0 MiB".
    pub fn memory_line(&self) -> String {
        format!(
            "pid {}: peak RSS {:.1} MiB, RSS {:.1} MiB",
            self.pid,
            self.peak_rss_kib as f64 / 1024.0,
            self.rss_kib as f64 / 1024.0
        )
    }

    /// CPU microseconds used since `earlier` (same pid).
    pub fn cpu_us_since(&self, earlier: &Self) -> u64 {
        self.cpu_us.saturating_sub(earlier.cpu_us)
    }
}

/// A `Key:   1234 kB` line of /proc/PID/status, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line, in ticks.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name is parenthesised and may hold spaces: count after ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Samples of several processes.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    pids: Vec<u32>,
}

impl Watch {
    /// Watches `pids` (this process is always watched too, as "bench").
    pub fn new(pids: Vec<u32>) -> anyhow::Result<Self> {
        for &pid in &pids {
            ProcSample::read(pid)?;
        }
        Ok(Self { pids })
    }

    /// One sample of each watched process, and of this one last.
    pub fn sample(&self) -> Vec<ProcSample> {
        self.pids
            .iter()
            .chain(std::iter::once(&std::process::id()))
            .filter_map(|&pid| ProcSample::read(pid).ok())
            .collect()
    }

    /// Prints memory of each process, labelled with `when`.
    pub fn print_memory(&self, when: &str, samples: &[ProcSample]) {
        for sample in samples {
            let who = if sample.pid == std::process::id() {
                " (bench)"
            } else {
                ""
            };
            println!("  memory at {when:<6} {}{who}", sample.memory_line());
        }
    }

    /// Prints CPU µs per event of each process between two sample sets.
    pub fn print_cpu(before: &[ProcSample], after: &[ProcSample], events: usize) {
        for (b, a) in before.iter().zip(after) {
            let who = if a.pid == std::process::id() {
                " (bench)"
            } else {
                ""
            };
            let used = a.cpu_us_since(b);
            let seconds = a.at.duration_since(b.at).as_secs_f64().max(1e-9);
            println!(
                "  cpu pid {}{who}: {:.1} µs per event, {:.0}% of one core",
                a.pid,
                used as f64 / events.max(1) as f64,
                100.0 * used as f64 / 1e6 / seconds
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_formats() {
        let status = "Name:\tx\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(40960));
        assert_eq!(status_kib(status, "VmRSS:"), Some(20480));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn reads_this_process() {
        let sample = ProcSample::read(std::process::id()).unwrap();
        assert!(sample.peak_rss_kib >= sample.rss_kib && sample.rss_kib > 0);
        assert!(ProcSample::read(u32::MAX).is_err());
    }
}
