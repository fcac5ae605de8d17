//! Gives freed memory back to the operating system after watchers leave.
//!
//! A watcher that does not read holds its buffer and HTTP/2's send buffer,
//! about half a MiB; when hundreds of them leave, all of it is freed, but
//! glibc's allocator keeps the freed pages in its arenas and the process
//! stays at its peak (473 MiB after 1,000 such watchers left, against 43 MiB
//! with the trim: `BENCHMARKS.md`, which also says why not another
//! allocator). glibc gives them back when asked (`malloc_trim`), so a
//! watcher that leaves asks ([`Trim::request`]) and one task trims once the
//! leaving has paused for [`SETTLE`] (HTTP/2 frees a stream's send buffer
//! just after the stream ends), at most once per [`MIN_INTERVAL`]. Where the
//! C library is not glibc, trimming does nothing.

use std::{sync::Arc, time::Duration};

use tokio::{sync::Notify, time::Instant};

/// How long the leaving must pause before a trim: a burst of watchers
/// leaving is trimmed once, after the last one's buffers are freed.
const SETTLE: Duration = Duration::from_secs(1);
/// Least time between two trims, and the longest a trim waits for a burst
/// to end: a trim locks each arena while it walks it, so watchers coming
/// and going must not make it frequent.
const MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Where watchers that leave ask for memory to be given back.
#[derive(Clone, Debug, Default)]
pub(crate) struct Trim {
    /// Rings once per request; a request while none waits is kept.
    wanted: Arc<Notify>,
}

impl Trim {
    /// Asks for a trim soon. Cheap and never blocks: called from `Drop`.
    pub(crate) fn request(&self) {
        self.wanted.notify_one();
    }

    /// Trims after each burst of requests; runs until aborted.
    pub(crate) async fn run(self) {
        loop {
            self.wanted.notified().await;
            let latest = Instant::now() + MIN_INTERVAL;
            // Each request during the settling restarts it, up to `latest`.
            loop {
                let settled = (Instant::now() + SETTLE).min(latest);
                tokio::select! {
                    () = self.wanted.notified() => {}
                    () = tokio::time::sleep_until(settled) => break,
                }
            }
            let _ = tokio::task::spawn_blocking(give_back).await;
            tokio::time::sleep(MIN_INTERVAL).await;
        }
    }
}

/// Returns the free pages of every malloc arena to the operating system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back() {
    // SAFETY: malloc_trim only walks the allocator's own free lists, under
    // each arena's lock; it takes no pointer from us.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released != 0, "malloc_trim after watchers left");
}

/// Other C libraries return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back() {}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// This process's resident set, in MiB (nextest runs each test in a
    /// process of its own, so no other test's memory is counted).
    fn rss_mib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("a VmRSS line");
        kib / 1024
    }

    /// What a burst of watchers leaves behind: many 64 KiB blocks (a
    /// watcher's buffer size, under glibc's mmap threshold, so they live in
    /// the arenas), all freed but one allocated after them, which keeps
    /// glibc from shrinking the heap from its top on its own. Without the
    /// trim the freed 256 MiB stay resident.
    #[test]
    fn freed_watcher_sized_blocks_are_given_back() {
        let before = rss_mib();
        let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8 | 1; 64 * 1024]).collect();
        let pin = vec![1u8; 1024];
        let held = rss_mib();
        assert!(
            held >= before + 200,
            "the blocks are resident: {before} → {held} MiB"
        );
        drop(blocks);
        give_back();
        let after = rss_mib();
        assert!(
            after < before + 64,
            "freed memory is given back: {before} → {held} → {after} MiB"
        );
        drop(pin);
    }
}
