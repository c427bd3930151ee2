//! Buffers of anonymous memory mapped for them alone: the engine's read buffers, and the
//! memory of batches that are not pinned (`batch_memory`).
//!
//! A read buffer is megabytes, kept by a thread and grown now and then. From the heap, glibc
//! serves blocks that size from the per-thread arenas once its adaptive mmap threshold has
//! risen past them, and freed ones stay with the arena: an engine per epoch, its threads each
//! on some arena, and peak memory crept up epoch by epoch (raw: 110 → 190 MB above baseline
//! over 30 epochs). A mapping of its own goes back to the system the moment it is dropped.

use std::ptr::NonNull;

/// Bytes a buffer grows by at least, so that slowly growing reads do not remap every time.
const GROWTH: usize = 1 << 20;

/// A buffer of bytes in a private anonymous mapping; its contents are not kept when it grows.
pub struct ReadBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer owns its mapping outright; moving it to another thread moves that.
unsafe impl Send for ReadBuf {}
// SAFETY: shared references only read the mapping.
unsafe impl Sync for ReadBuf {}

impl Default for ReadBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadBuf {
    /// An empty buffer: nothing is mapped until it first grows.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }

    /// Makes the buffer at least `len` bytes long (page-aligned, zeroed where it is new);
    /// the bytes it held are not kept.
    ///
    /// # Errors
    /// The `mmap` error when the memory cannot be had.
    pub fn ensure(&mut self, len: usize) -> std::io::Result<()> {
        if len <= self.len {
            return Ok(());
        }
        let new_len = len.max(self.len * 2).next_multiple_of(GROWTH);
        self.release();
        // SAFETY: an anonymous private mapping at an address the kernel picks touches no
        // memory of ours; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                new_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        self.ptr = NonNull::new(ptr.cast()).ok_or_else(std::io::Error::last_os_error)?;
        self.len = new_len;
        Ok(())
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[must_use]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn release(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr..ptr + len` is the mapping this buffer made and owns; no slice of
            // it outlives `&mut self`.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.len);
            }
        }
        self.ptr = NonNull::dangling();
        self.len = 0;
    }
}

impl std::ops::Deref for ReadBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for reads of `len` bytes (a live mapping, or dangling with
        // `len == 0`), and mapped memory is always initialised (zero or written).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_in_whole_megabytes_page_aligned_and_zeroed() {
        let mut buf = ReadBuf::new();
        assert!(buf.is_empty());
        assert!(buf.iter().all(|&b| b == 0));
        buf.ensure(10).unwrap();
        assert_eq!(buf.len(), GROWTH);
        assert_eq!(buf.as_ptr() as usize % 4096, 0);
        // SAFETY: the first byte lies in the mapping just made.
        unsafe { *buf.as_mut_ptr() = 7 };
        assert_eq!(buf[0], 7);
        buf.ensure(GROWTH).unwrap(); // long enough: kept as it is
        assert_eq!(buf[0], 7);
        buf.ensure(GROWTH + 1).unwrap();
        assert_eq!(buf.len(), 2 * GROWTH);
        assert!(buf.iter().all(|&b| b == 0));
    }
}
