//! Low-priority threads for work that must not slow the data path.
//!
//! Recording a session costs about as much CPU per byte as relaying it
//! (encoding, BLAKE3, the write: docs/BENCHMARKS.md). Sessions encode
//! their own events (the bytes are in their cache then); the write and
//! the hash are left to these threads. On the same threads
//! and at the same priority as the relay, that work takes turns with the
//! session's own bytes, and the session runs slower even when the machine
//! has idle CPU. Here it runs on a few threads of their own at a lower
//! priority (`nice`): the scheduler runs them in the gaps the data path
//! leaves, and gives them the CPU anyway when they fall behind, because the
//! session then waits on its full recording queue and leaves the CPU idle.
//! Nothing is dropped: a recording slower than its session slows the
//! session (the queue is bounded), never the other way round.
//!
//! The threads are not tokio's blocking pool because a thread cannot raise
//! its priority back without privilege: they are kept for this work only.
//!
//! Writes run there too, through the page cache: they wait on memory and
//! at most for the device's queue, not for the device (the once-a-second
//! sync runs beside them), so at nice +10 they measured level with a pool
//! of their own at normal priority (docs/BENCHMARKS.md, sessions 12 and 13).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// How much lower than the rest of postern the threads run (`nice` is
/// added to the process's). At 10 the scheduler gives a busy one about a
/// tenth of a core's share against a busy relay thread.
pub const NICE: i32 = 10;

type Task = Box<dyn FnOnce() + Send>;

/// A queue of jobs and the threads that take them, made by its first job.
struct Pool {
    name: &'static str,
    queue: OnceLock<mpsc::Sender<Task>>,
    /// Jobs queued that no thread has taken yet.
    waiting: AtomicUsize,
}

/// Writing and hashing: jobs that may go on while their recording has more.
static WORK: Pool = Pool::new("postern-rec");

/// How many queued jobs wait for a thread: a job that could go on with
/// more work yields its thread when this is not 0.
pub fn waiting() -> usize {
    WORK.waiting.load(Ordering::Relaxed)
}

/// Queue `f` for a low-priority thread. Nobody waits for it: `f` says
/// itself when it is done. A job the queue cannot take, or that panics, is
/// dropped, so `f` should own a guard that reports that (as
/// [`crate::recording`]'s does).
pub fn run(f: impl FnOnce() + Send + 'static) {
    WORK.run(Box::new(f));
}

impl Pool {
    const fn new(name: &'static str) -> Pool {
        Pool {
            name,
            queue: OnceLock::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    fn run(&'static self, f: Task) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if self.queue().send(f).is_err() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn queue(&'static self) -> &'static mpsc::Sender<Task> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Task>();
            let rx = std::sync::Arc::new(Mutex::new(rx));
            let n = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
            for i in 0..n {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("{}-{i}", self.name))
                    .spawn(move || self.worker(&rx));
                if let Err(e) = spawned {
                    tracing::error!("starting background thread {}-{i}: {e}", self.name);
                }
            }
            tx
        })
    }

    fn worker(&self, rx: &Mutex<mpsc::Receiver<Task>>) {
        lower_priority();
        loop {
            // Taking the next job holds the lock only while waiting for it.
            let job = match rx.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok(job) = job else { return };
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            // A panicking job is dropped (and with it whatever guard it
            // owns), and this thread lives on for the next job.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }
    }
}

/// Lower this thread's priority by [`NICE`]. On Linux `nice` is per
/// thread; where lowering fails the work still runs, at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        let now = getpriority_process(me).unwrap_or(0);
        if let Err(e) = setpriority_process(me, (now + NICE).min(19)) {
            tracing::warn!("could not lower the recording threads' priority: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f` on a background thread, its result awaited; an error when the
    /// job was lost (it panicked).
    fn spawn<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        run(move || {
            let _ = tx.send(f());
        });
        rx
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn runs_jobs_at_lower_priority_and_survives_a_panic() {
        let prio = spawn(|| {
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(-100)
        })
        .await
        .expect("job ran");
        let ours = rustix::process::getpriority_process(None).unwrap_or(0);
        assert_eq!(prio, (ours + NICE).min(19));
        assert!(spawn(|| panic!("boom")).await.is_err());
        // Every thread still takes jobs after one panicked.
        for i in 0..32 {
            assert_eq!(spawn(move || i * 2).await.ok(), Some(i * 2));
        }
    }
}
