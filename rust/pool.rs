//! Rayon pools whose threads can be joined: dropping a rayon pool only *asks* its threads to
//! exit, and an engine that is closed must leave no thread (nor a thread-local ring's file
//! descriptor) behind.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// The OS threads of a pool.
#[derive(Clone, Default)]
pub struct PoolThreads {
    handles: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl PoolThreads {
    /// Blocks until every thread of the pool has exited, its thread-locals dropped. Call
    /// after the pool has been dropped (from a thread that is not one of the pool's).
    pub fn wait(&self) {
        let handles =
            std::mem::take(&mut *self.handles.lock().unwrap_or_else(PoisonError::into_inner));
        for handle in handles {
            let _ = handle.join();
        }
    }
}

/// A pool of `threads` threads named `{name}-{i}`, and its threads to join.
///
/// # Errors
/// [`Error::Stopped`] when the threads cannot be started.
pub fn build_pool(name: &'static str, threads: usize) -> Result<(rayon::ThreadPool, PoolThreads)> {
    let joined = PoolThreads::default();
    let handles = Arc::clone(&joined.handles);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .spawn_handler(move |thread| {
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{}", thread.index()))
                .spawn(move || thread.run())?;
            handles
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(handle);
            Ok(())
        })
        .build()
        .map_err(|e| Error::Stopped(format!("starting {name} threads: {e}")))?;
    Ok((pool, joined))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static DROPPED: AtomicUsize = AtomicUsize::new(0);

    struct CountsDrop;
    impl Drop for CountsDrop {
        fn drop(&mut self) {
            DROPPED.fetch_add(1, Ordering::SeqCst);
        }
    }

    thread_local! {
        static LOCAL: std::cell::RefCell<Option<CountsDrop>> = const { std::cell::RefCell::new(None) };
    }

    #[test]
    fn wait_returns_once_all_threads_exited_and_dropped_their_locals() {
        let (pool, threads) = super::build_pool("lsio-test", 3).unwrap();
        assert_eq!(pool.install(rayon::current_num_threads), 3);
        pool.broadcast(|_| LOCAL.with(|l| *l.borrow_mut() = Some(CountsDrop)));
        drop(pool);
        threads.wait();
        assert_eq!(DROPPED.load(Ordering::SeqCst), 3);
    }
}
