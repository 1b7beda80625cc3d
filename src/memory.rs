//! Giving memory back to the system after connections close.
//!
//! glibc's allocator keeps what the process freed in its arenas for reuse
//! and hands back only the top of each heap, so after a burst of sessions
//! closes, RSS stays near its peak: 125.8 MB after 1,000 idle sessions
//! closed, against 9.9 MB before they opened (docs/BENCHMARKS.md).
//! `malloc_trim(0)` returns the free pages of every arena (38.5 MB). It
//! locks each arena while it walks it, so it runs on a blocking thread, only
//! after many connections have closed, once the closing has paused, and at
//! most once a second.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Connections that must have closed since the last trim before another.
const MIN_CLOSED: usize = 32;
/// How long the closing must pause before a trim, and the least time
/// between two trims.
const SETTLE: Duration = Duration::from_secs(1);

/// Counts open connections and trims the allocator when many have closed.
#[derive(Default)]
pub struct Trimmer {
    /// Connections open now.
    open: AtomicUsize,
    /// The most open at once since the last trim.
    peak: AtomicUsize,
    /// Trims done (read by the test).
    trims: AtomicUsize,
    /// Woken when a connection closes.
    closed: Notify,
}

/// Held by a connection for its life; dropping it counts the close.
pub struct Open(Arc<Trimmer>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.closed.notify_one();
    }
}

impl Trimmer {
    /// Count a new connection until the returned guard drops.
    pub fn opened(self: &Arc<Self>) -> Open {
        let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Open(self.clone())
    }

    /// Whether enough has closed since the last trim to be worth one.
    fn worth_trimming(&self) -> bool {
        let (open, peak) = (
            self.open.load(Ordering::SeqCst),
            self.peak.load(Ordering::SeqCst),
        );
        peak.saturating_sub(open) >= MIN_CLOSED || (open == 0 && peak > 0)
    }

    /// Trim whenever [`Trimmer::worth_trimming`], forever.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.closed.notified().await;
            if !self.worth_trimming() {
                continue;
            }
            // Let the burst of closes finish: trim once, after the last.
            while tokio::time::timeout(SETTLE, self.closed.notified())
                .await
                .is_ok()
            {}
            self.peak
                .store(self.open.load(Ordering::SeqCst), Ordering::SeqCst);
            let began = Instant::now();
            let released = tokio::task::spawn_blocking(release).await.unwrap_or(false);
            self.trims.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(
                released,
                ms = began.elapsed().as_millis() as u64,
                open = self.open.load(Ordering::SeqCst),
                "returned freed memory to the system"
            );
        }
    }
}

/// Ask the allocator to return its free pages; whether it returned any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release() -> bool {
    // SAFETY: malloc_trim takes no pointers and has no preconditions; glibc
    // locks each arena while it walks it, like any other allocator call.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl, macOS) return large blocks by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trim count once it reaches `want` or a second has passed: the
    /// trim itself runs on a real blocking thread, outside the paused clock.
    async fn trims_after_blocking_work(t: &Trimmer, want: usize) -> usize {
        for _ in 0..100 {
            if t.trims.load(Ordering::SeqCst) >= want {
                break;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(10));
        }
        t.trims.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn trims_once_after_a_burst_of_closes_and_not_for_a_few() {
        let t = Arc::new(Trimmer::default());
        tokio::spawn(t.clone().run());
        let mut open: Vec<Open> = (0..100).map(|_| t.opened()).collect();
        // A few closes: not worth a trim.
        open.truncate(90);
        tokio::time::sleep(SETTLE * 3).await;
        assert_eq!(t.trims.load(Ordering::SeqCst), 0);
        // Many, spread over less than SETTLE each: one trim, after the last.
        for _ in 0..60 {
            open.pop();
            tokio::time::sleep(SETTLE / 4).await;
        }
        assert_eq!(t.trims.load(Ordering::SeqCst), 0, "trimmed mid-burst");
        tokio::time::sleep(SETTLE * 2).await;
        assert_eq!(trims_after_blocking_work(&t, 1).await, 1);
        // The last 30 closing, fewer than MIN_CLOSED but down to none: trimmed.
        assert_eq!(open.len(), 30);
        open.clear();
        tokio::time::sleep(SETTLE * 2).await;
        assert_eq!(trims_after_blocking_work(&t, 2).await, 2);
    }
}
