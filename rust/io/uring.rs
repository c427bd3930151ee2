//! The io_uring backend: every read of a batch is submitted together on one ring, and each
//! completion finds its op through the SQE's `user_data` (the op's index).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use io_uring::{opcode, types, IoUring};

use super::{advance_iov, fit_buffers, ReadOp, Reader, ScatterOp};
use crate::error::Result;

/// Submission queue size; also the most reads in flight at once.
const RING_ENTRIES: u32 = 256;

/// Checks that io_uring can be set up and completes an operation here.
pub(crate) fn probe() -> Result<(), String> {
    let mut ring = IoUring::new(2).map_err(|e| format!("io_uring_setup: {e}"))?;
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a NOP references no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|e| format!("io_uring push: {e}"))?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    let cqe = ring
        .completion()
        .next()
        .ok_or("io_uring: no completion for a NOP")?;
    if cqe.user_data() != 7 || cqe.result() < 0 {
        return Err(format!("io_uring: NOP failed ({})", cqe.result()));
    }
    Ok(())
}

/// One ring, owned by the thread that reads.
pub struct UringReader {
    ring: ManuallyDrop<IoUring>,
    /// Set when the ring failed with reads in flight into memory that is not ours: the ring
    /// is then never closed, and the reader refuses further work.
    broken: bool,
}

/// Rings open in the process: each holds a file descriptor.
static RINGS: AtomicUsize = AtomicUsize::new(0);

/// How many io_uring rings are open in the process.
#[must_use]
pub fn rings_open() -> usize {
    RINGS.load(Ordering::Relaxed)
}

impl Drop for UringReader {
    fn drop(&mut self) {
        RINGS.fetch_sub(1, Ordering::Relaxed);
        if !self.broken {
            // SAFETY: dropped once, here; nothing is in flight (every call reaps all it
            // submitted, or marks the reader broken).
            unsafe { ManuallyDrop::drop(&mut self.ring) };
        }
    }
}

impl UringReader {
    /// # Errors
    /// The kernel's error when it refuses a ring.
    pub fn new() -> std::io::Result<Self> {
        let ring = IoUring::new(RING_ENTRIES)?;
        RINGS.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            ring: ManuallyDrop::new(ring),
            broken: false,
        })
    }
}

impl Reader for UringReader {
    fn read_into(
        &mut self,
        ops: &[ReadOp<'_>],
        bufs: &mut Vec<Vec<u8>>,
    ) -> Vec<std::io::Result<()>> {
        fit_buffers(ops, bufs);
        let done: Vec<Cell<usize>> = ops.iter().map(|_| Cell::new(0)).collect();
        let mut results: Vec<Option<std::io::Result<()>>> = ops
            .iter()
            .map(|op| if op.len == 0 { Some(Ok(())) } else { None })
            .collect();
        let waiting = (0..ops.len()).filter(|&i| results[i].is_none()).collect();
        let ptrs: Vec<*mut u8> = bufs.iter_mut().map(Vec::as_mut_ptr).collect();
        let driven = self.drive(
            waiting,
            &mut results,
            |i| {
                let op = &ops[i];
                let done = done[i].get();
                let remaining = (op.len - done).min(u32::MAX as usize);
                // SAFETY: `bufs[i]` holds at least `op.len` bytes (`fit_buffers`), so the
                // pointer stays inside it; its heap allocation is neither freed nor moved until
                // this op's completion has been reaped (if the ring fails, the buffers are
                // leaked rather than freed). The fd stays open: `ops` borrows the files.
                let ptr = unsafe { ptrs[i].add(done) };
                opcode::Read::new(types::Fd(op.file.as_raw_fd()), ptr, remaining as u32)
                    .offset(op.offset + done as u64)
                    .build()
            },
            |i, n| {
                done[i].set(done[i].get() + n);
                (done[i].get() >= ops[i].len).then_some(Ok(()))
            },
        );
        if let Err(message) = driven {
            // The kernel may still write into buffers in flight: leak them rather than free
            // memory that a late completion could touch.
            std::mem::forget(std::mem::take(bufs));
            return ops
                .iter()
                .map(|_| Err(std::io::Error::other(message.clone())))
                .collect();
        }
        finish(results)
    }

    fn advise(&mut self, ops: &[ReadOp<'_>]) {
        let mut results: Vec<Option<std::io::Result<()>>> = ops.iter().map(|_| None).collect();
        // Completions say the readahead was started (the kernel's workers run it); failures
        // are ignored, as the reads that follow report their own.
        let _ = self.drive(
            (0..ops.len()).collect(),
            &mut results,
            |i| {
                let op = &ops[i];
                opcode::Fadvise::new(
                    types::Fd(op.file.as_raw_fd()),
                    op.len as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                )
                .offset(op.offset)
                .build()
            },
            |_, _| Some(Ok(())),
        );
    }

    unsafe fn read_scattered(&mut self, ops: &mut [ScatterOp<'_>]) -> Vec<std::io::Result<()>> {
        let first: Vec<Cell<usize>> = ops.iter().map(|_| Cell::new(0)).collect();
        let done: Vec<Cell<u64>> = ops.iter().map(|_| Cell::new(0)).collect();
        let mut results: Vec<Option<std::io::Result<()>>> = ops
            .iter()
            .map(|op| if op.is_empty() { Some(Ok(())) } else { None })
            .collect();
        let waiting = (0..ops.len()).filter(|&i| results[i].is_none()).collect();
        let fds: Vec<i32> = ops.iter().map(|op| op.file.as_raw_fd()).collect();
        let offsets: Vec<u64> = ops.iter().map(|op| op.offset).collect();
        let iovs: Vec<&mut Vec<libc::iovec>> = ops.iter_mut().map(|op| &mut op.iov).collect();
        let iovs = RefCell::new(iovs);
        let driven = self.drive(
            waiting,
            &mut results,
            |i| {
                let iovs = iovs.borrow();
                let rest = &iovs[i][first[i].get()..];
                let count = rest.len().min(1024) as u32;
                // The iovec array is neither moved nor changed while its SQE is in flight (it
                // is only advanced after the completion); its buffers are the caller's promise.
                opcode::Readv::new(types::Fd(fds[i]), rest.as_ptr(), count)
                    .offset(offsets[i] + done[i].get())
                    .build()
            },
            |i, n| {
                let mut iovs = iovs.borrow_mut();
                done[i].set(done[i].get() + n as u64);
                first[i].set(advance_iov(&mut iovs[i][..], first[i].get(), n));
                (first[i].get() >= iovs[i].len()).then_some(Ok(()))
            },
        );
        if let Err(message) = driven {
            // Reads may still be in flight into the caller's memory; `drive` marked the
            // reader broken, so the ring (and its requests) is never torn down under them.
            return ops
                .iter()
                .map(|_| Err(std::io::Error::other(message.clone())))
                .collect();
        }
        finish(results)
    }
}

/// Each op's result; an op left without one never completed.
fn finish(results: Vec<Option<std::io::Result<()>>>) -> Vec<std::io::Result<()>> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(std::io::Error::other("io_uring: read never completed"))))
        .collect()
}

impl UringReader {
    /// Submits `pending` ops (each an SQE from `sqe_for`, `user_data` = the op's index) and
    /// hands each completion's byte count to `filled`, which says whether the op needs another
    /// SQE (a short read). Returns one result per op; `Err` when the ring itself failed with
    /// reads in flight.
    fn drive(
        &mut self,
        mut waiting: VecDeque<usize>,
        results: &mut [Option<std::io::Result<()>>],
        mut sqe_for: impl FnMut(usize) -> io_uring::squeue::Entry,
        mut filled: impl FnMut(usize, usize) -> Option<std::io::Result<()>>,
    ) -> std::result::Result<(), String> {
        if self.broken {
            return Err("io_uring: this thread's ring failed earlier".into());
        }
        let mut in_flight = 0usize;
        while !waiting.is_empty() || in_flight > 0 {
            while in_flight < RING_ENTRIES as usize {
                let Some(i) = waiting.pop_front() else { break };
                let sqe = sqe_for(i).user_data(i as u64);
                // SAFETY: `sqe_for` builds SQEs whose buffers and files outlive the operation
                // (each caller says why).
                if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                    waiting.push_front(i);
                    break;
                }
                in_flight += 1;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.broken = in_flight > 0;
                    return Err(format!("io_uring_enter: {e}"));
                }
            }
            for cqe in self.ring.completion() {
                in_flight -= 1;
                let i = cqe.user_data() as usize;
                if i >= results.len() {
                    continue;
                }
                let res = cqe.result();
                if res < 0 {
                    let err = std::io::Error::from_raw_os_error(-res);
                    if err.kind() == std::io::ErrorKind::Interrupted {
                        waiting.push_back(i);
                    } else {
                        results[i] = Some(Err(err));
                    }
                } else if res == 0 {
                    results[i] = Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "end of file inside a read",
                    )));
                } else {
                    match filled(i, res as usize) {
                        None => waiting.push_back(i), // a short read: resume where it stopped
                        Some(result) => results[i] = Some(result),
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_ranges() {
        // A sandbox without io_uring skips this test; the pread test covers the interface.
        if let Err(reason) = super::probe() {
            eprintln!("io_uring unavailable, not tested: {reason}");
            return;
        }
        let mut reader = super::UringReader::new().unwrap();
        crate::io::tests::check_reader(&mut reader);
    }
}
