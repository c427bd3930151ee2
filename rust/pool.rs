//! Rayon pools whose threads can be waited for: dropping a rayon pool only *asks* its threads
//! to exit, and an engine that is closed must leave no thread behind.

use std::sync::{Arc, Condvar, Mutex};

use crate::error::{Error, Result};

/// Counts a pool's threads that have not exited yet.
#[derive(Clone, Default)]
pub struct ExitLatch {
    live: Arc<(Mutex<usize>, Condvar)>,
}

impl ExitLatch {
    /// Blocks until every thread of the pool has run its exit handler. Call after the pool
    /// has been dropped.
    pub fn wait(&self) {
        let (count, changed) = &*self.live;
        let mut live = count
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *live > 0 {
            live = changed
                .wait(live)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// A pool of `threads` threads named `{name}-{i}`, and the latch that says when all exited.
///
/// # Errors
/// [`Error::Stopped`] when the threads cannot be started.
pub fn build_pool(name: &'static str, threads: usize) -> Result<(rayon::ThreadPool, ExitLatch)> {
    let threads = threads.max(1);
    let latch = ExitLatch::default();
    *latch
        .live
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = threads;
    let on_exit = latch.clone();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{name}-{i}"))
        .exit_handler(move |_| {
            let (count, changed) = &*on_exit.live;
            let mut live = count
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *live = live.saturating_sub(1);
            changed.notify_all();
        })
        .build()
        .map_err(|e| Error::Stopped(format!("starting {name} threads: {e}")))?;
    Ok((pool, latch))
}

#[cfg(test)]
mod tests {
    #[test]
    fn wait_returns_once_all_threads_exited() {
        let (pool, latch) = super::build_pool("lsio-test", 3).unwrap();
        assert_eq!(pool.install(rayon::current_num_threads), 3);
        drop(pool);
        latch.wait();
        assert_eq!(*latch.live.0.lock().unwrap(), 0);
    }
}
