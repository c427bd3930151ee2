//! Memory for batches that are not pinned: mappings lent out for one batch each and taken
//! back when the tensor made of them is freed, so that the next batch reuses their pages.
//!
//! A fresh `torch.empty` per batch is a heap block of megabytes: glibc serves it from an
//! arena once its adaptive mmap threshold has risen past that size, and its arenas then
//! fragment and grow epoch by epoch (sat-blosc's 16 MB batches: 166 → 296 MB of peak RSS
//! above baseline over 20 epochs, past the memory budget), or, below the threshold, maps
//! fresh pages that the kernel zeroes and faults in for every batch. A few mappings kept
//! and reused do neither.

use std::sync::{Arc, Mutex, PoisonError};

use crate::io::ReadBuf;

/// Idle mappings kept for the next batches, per array of the engine, unless told otherwise;
/// more are unmapped when freed.
pub const KEPT: usize = 4;

/// The mappings of one engine's batches.
#[derive(Default)]
pub struct BatchMemory {
    idle: Mutex<Idle>,
    /// Idle mappings kept at most: as many batches' as are in flight at once, per array (each
    /// batch takes one per array).
    kept: usize,
}

#[derive(Default)]
struct Idle {
    bufs: Vec<ReadBuf>,
    /// Once closed, mappings coming back are unmapped rather than kept.
    closed: bool,
}

impl BatchMemory {
    /// The memory of an engine of one array.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Self::for_arrays(1, KEPT)
    }

    /// The memory of an engine of `arrays` arrays, whose batches take one mapping each, with
    /// up to `batches` batches in flight at once (prefetched, in the consumer's hands): the
    /// mappings of that many are kept, so that a batch in the steady state never maps and
    /// faults in fresh pages.
    #[must_use]
    pub fn for_arrays(arrays: usize, batches: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::default(),
            kept: batches.max(1).saturating_mul(arrays.max(1)),
        })
    }

    /// Memory for one batch of `len` bytes: the smallest kept mapping long enough, if any.
    ///
    /// # Errors
    /// The `mmap` error when the memory cannot be had.
    pub fn take(self: &Arc<Self>, len: usize) -> std::io::Result<BatchBuf> {
        let kept = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let fits = (0..idle.bufs.len())
                .filter(|&i| idle.bufs[i].len() >= len)
                .min_by_key(|&i| idle.bufs[i].len());
            fits.map(|i| idle.bufs.swap_remove(i))
        };
        let mut buf = kept.unwrap_or_default();
        buf.ensure(len)?;
        Ok(BatchBuf {
            buf: Some(buf),
            len,
            owner: Arc::clone(self),
        })
    }

    /// Unmaps the idle mappings, and from now on every mapping that comes back.
    pub fn close(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.closed = true;
        idle.bufs.clear();
    }

    /// Mappings kept for reuse.
    #[must_use]
    pub fn idle(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bufs
            .len()
    }

    fn give_back(&self, buf: ReadBuf) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if !idle.closed && idle.bufs.len() < self.kept {
            idle.bufs.push(buf);
        }
    }
}

/// One batch's memory, lent until dropped.
pub struct BatchBuf {
    buf: Option<ReadBuf>,
    len: usize,
    owner: Arc<BatchMemory>,
}

impl BatchBuf {
    /// The batch's bytes: `len` bytes, page-aligned.
    #[must_use]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.buf
            .as_mut()
            .map_or(std::ptr::null_mut(), ReadBuf::as_mut_ptr)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for BatchBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.owner.give_back(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_batches_are_reused_up_to_the_kept_number_and_unmapped_once_closed() {
        let memory = BatchMemory::new();
        let mut first = memory.take(100).unwrap();
        let at = first.as_mut_ptr();
        assert_eq!((first.len(), at as usize % 4096), (100, 0));
        drop(first);
        assert_eq!(memory.idle(), 1);
        let mut again = memory.take(50).unwrap();
        assert_eq!(again.as_mut_ptr(), at, "the freed mapping is reused");
        assert_eq!(memory.idle(), 0);
        let many: Vec<BatchBuf> = (0..KEPT + 3).map(|_| memory.take(10).unwrap()).collect();
        drop(many);
        assert_eq!(memory.idle(), KEPT);
        memory.close();
        assert_eq!(memory.idle(), 0);
        drop(again);
        // An engine of 3 arrays keeps 3 times as many, and lends the smallest that fits.
        let three = BatchMemory::for_arrays(3, KEPT);
        let many: Vec<BatchBuf> = (0..3 * KEPT + 1).map(|_| three.take(10).unwrap()).collect();
        drop(many);
        assert_eq!(three.idle(), 3 * KEPT);
        let taken = three.take(10).unwrap();
        let big = three.take(64 << 20).unwrap();
        drop(big);
        assert_eq!(
            three.idle(),
            3 * KEPT,
            "the big mapping is kept beside the small ones"
        );
        let small = three.take(10).unwrap();
        assert!(small.buf.as_ref().is_some_and(|b| b.len() < 64 << 20));
        drop((taken, small));
        assert_eq!(
            memory.idle(),
            0,
            "closed: mappings coming back are unmapped"
        );
    }
}
