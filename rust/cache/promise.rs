//! A chunk that one batch is decoding and others wait for: a one-shot promise whose
//! continuation runs on whichever thread resolves it (or at once, if it is resolved already).
//! Nothing blocks while it waits, so a waiting batch never holds an engine thread.

use std::sync::{Arc, Mutex, PoisonError};

/// What the batch that decodes a chunk ends with.
#[derive(Clone)]
pub enum Resolved {
    /// The chunk, decoded.
    Chunk(Arc<Vec<u8>>),
    /// The chunk was never written: its elements are the fill value.
    Fill,
    /// The decoding batch failed or was stopped before it decoded the chunk.
    Failed,
}

type Continuation = Box<dyn FnOnce(Resolved) + Send>;

enum State {
    Waiting,
    Then(Continuation),
    Done(Resolved),
    Taken,
}

/// A chunk being decoded by another batch.
pub struct Promise {
    state: Mutex<State>,
}

impl Promise {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::Waiting),
        })
    }

    /// Runs `then` with the outcome: now if it is known, else on the thread that resolves
    /// the promise. Called once per promise.
    pub fn then(&self, then: impl FnOnce(Resolved) + Send + 'static) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match std::mem::replace(&mut *state, State::Taken) {
            State::Done(resolved) => {
                drop(state);
                then(resolved);
            }
            State::Waiting => *state = State::Then(Box::new(then)),
            other => *state = other,
        }
    }

    /// Records the outcome and runs the continuation if one is waiting; a promise resolved
    /// twice keeps the first outcome.
    pub(crate) fn resolve(&self, resolved: Resolved) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match std::mem::replace(&mut *state, State::Taken) {
            State::Then(then) => {
                drop(state);
                then(resolved);
            }
            State::Waiting => *state = State::Done(resolved),
            other => *state = other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn is_fill(resolved: &Resolved) -> bool {
        matches!(resolved, Resolved::Fill)
    }

    #[test]
    fn the_continuation_runs_once_whichever_comes_first() {
        let runs = Arc::new(AtomicUsize::new(0));
        // Resolved first, then awaited.
        let promise = Promise::new();
        promise.resolve(Resolved::Fill);
        promise.resolve(Resolved::Failed);
        let counter = Arc::clone(&runs);
        promise.then(move |r| {
            assert!(is_fill(&r));
            counter.fetch_add(1, Ordering::SeqCst);
        });
        // Awaited first, then resolved.
        let promise = Promise::new();
        let counter = Arc::clone(&runs);
        promise.then(move |r| {
            assert!(is_fill(&r));
            counter.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        promise.resolve(Resolved::Fill);
        promise.resolve(Resolved::Failed);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
