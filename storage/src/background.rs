//! Storage work off the request path, at a lower CPU priority.
//!
//! Encoding a log entry and writing it to RocksDB, reading entries back for
//! replication and apply, and applying them take from a hundred microseconds
//! to a few milliseconds per entry (an audit flush of 600 records is about
//! 150 KB). Run on the async runtime, that time is taken from the workers
//! that answer `/auth/verify`: a request that lands behind it waits, and on
//! two cores the kernel may also run the storage work before a request that
//! just arrived. Under audit ingest that took verify p99 from 0.5 ms to 4 ms
//! with the machine mostly idle (docs/benchmarks.md, `audit-ingest`).
//!
//! So the storage traits hand their heavy work to this pool: a few named
//! threads whose nice value is raised ([`NICE`]), so a waking request handler
//! is run before them. Light work (the usual entry of a few dozen commands)
//! stays inline: handing a job over and waking its caller costs tens of
//! microseconds on each side, which on the write path added ~15% of the
//! nodes' CPU per commit (measured with the `writes` benchmark). Nothing here
//! decides *what* is written; the callers await each job, so the order of
//! appends and applies is what openraft asked for.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use gatehouse_proto::events::command::Payload;
use openraft::EntryPayload;
use tokio::sync::oneshot;

use crate::types::Entry;

/// Threads in the pool: openraft runs at most a log append, an apply and
/// one read per follower at once, and the machine this is sized for has two
/// cores.
pub const THREADS: usize = 2;

/// The nice value of storage threads (0 is the default, 19 the lowest
/// priority). At 10 a thread weighs about a tenth of a default one when the
/// CPU is contended, yet still gets the whole CPU when nothing else runs.
pub const NICE: i32 = 10;

/// Entries that weigh at least this much ([`weight`]) are appended and
/// applied on the pool: an audit flush of hundreds of records is; a batch of
/// writers' commands (at most one per writer) usually is not.
pub const HEAVY_WEIGHT: usize = 256;

/// Log entries read from disk that take at least this many bytes are decoded
/// on the pool.
pub const HEAVY_BYTES: usize = 64 << 10;

/// The work an entry causes in encoding, hashing and applying, in units of
/// one small command: a command counts one, and each audit record it
/// carries one more.
pub fn weight(entries: &[Entry]) -> usize {
    entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(batch) => batch
                .commands
                .iter()
                .map(|c| match &c.payload {
                    Some(Payload::AppendAudit(a)) => 1 + a.events.len(),
                    _ => 1,
                })
                .sum(),
            _ => 1,
        })
        .sum()
}

type Job = Box<dyn FnOnce() + Send>;

/// The pool. Dropping the last handle closes the queue and joins the threads.
pub struct Background {
    tx: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background").field("threads", &self.threads.len()).finish()
    }
}

impl Background {
    /// Starts `threads` threads named `name`, each at nice `nice`.
    pub fn new(name: &str, threads: usize, nice: i32) -> Arc<Background> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..threads.max(1))
            .map(|_| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || {
                        lower_priority(nice);
                        loop {
                            // The lock is held only while taking a job.
                            let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                            match job {
                                Ok(job) => job(),
                                Err(_) => return,
                            }
                        }
                    })
                    .expect("spawning a storage thread")
            })
            .collect();
        Arc::new(Background { tx: Some(tx), threads })
    }

    /// Runs `work` on the pool and waits for its result without holding an
    /// async worker. The caller's tracing span is entered around `work`; a
    /// panic in `work` is re-raised here.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = oneshot::channel();
        let span = tracing::Span::current();
        let job: Job = Box::new(move || {
            let _entered = span.enter();
            let _ = done.send(catch_unwind(AssertUnwindSafe(work)));
        });
        let tx = self.tx.as_ref().expect("the queue closes only on drop");
        tx.send(job).expect("storage threads run until the pool is dropped");
        match result.await.expect("a job always reports back: panics are caught") {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Background {
    /// Runs `work` on the pool if `heavy`, otherwise right here.
    pub async fn run_if<T: Send + 'static>(&self, heavy: bool, work: impl FnOnce() -> T + Send + 'static) -> T {
        if heavy {
            self.run(work).await
        } else {
            work()
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        drop(self.tx.take());
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // A job's closure may hold the last handle; a thread cannot join itself.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

/// Raises the calling thread's nice value. On Linux the nice value belongs
/// to a thread, not to the whole process, so request handlers keep theirs.
pub fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only reads its arguments; who = 0 is the
        // calling thread.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        if rc != 0 {
            tracing::warn!(nice, error = %std::io::Error::last_os_error(), "could not lower a storage thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        // SAFETY: as above; errno is cleared first because -1 is a valid result.
        unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, 0)
        }
    }

    #[tokio::test]
    async fn jobs_run_on_named_threads_at_the_lower_priority() {
        let pool = Background::new("gh-test-bg", 2, 7);
        let caller = nice_of_this_thread();
        let (name, nice) = pool.run(|| (std::thread::current().name().map(String::from), nice_of_this_thread())).await;
        assert_eq!(name.as_deref(), Some("gh-test-bg"));
        assert_eq!(nice, caller.max(7), "the pool's thread runs at the raised nice value");
        assert_eq!(nice_of_this_thread(), caller, "the caller's own priority is untouched");
    }

    #[tokio::test]
    async fn results_come_back_in_the_order_they_were_awaited_and_panics_reach_the_caller() {
        let pool = Background::new("gh-test-bg", 2, 0);
        let mut sum = 0;
        for i in 0..100u64 {
            sum += pool.run(move || i * 2).await;
        }
        assert_eq!(sum, 9900);
        let p = pool.clone();
        let panicked = tokio::spawn(async move { p.run(|| panic!("boom")).await }).await;
        assert!(panicked.unwrap_err().is_panic());
        // The pool survives a panicking job.
        assert_eq!(pool.run(|| 41 + 1).await, 42);
    }

    /// Threads of this process named `name` (Linux keeps 15 bytes of it).
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter(|t| {
                let comm = std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).unwrap_or_default();
                comm.trim_end() == name
            })
            .count()
    }

    #[tokio::test]
    async fn dropping_the_pool_joins_its_threads() {
        let pool = Background::new("gh-test-drop", 3, 0);
        assert_eq!(pool.run(|| 1).await, 1);
        // At least the thread that ran the job has named itself by now.
        assert!(threads_named("gh-test-drop") >= 1);
        drop(pool);
        assert_eq!(threads_named("gh-test-drop"), 0, "no thread outlives the pool");
    }
}
