//! The io_uring backend: every read of a batch is submitted together on one ring, and each
//! completion finds its op through the SQE's `user_data` (the op's index).

use std::collections::VecDeque;
use std::os::unix::io::AsRawFd;

use io_uring::{opcode, types, IoUring};

use super::{fit_buffers, ReadOp, Reader};
use crate::error::{Error, Result};

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
    ring: IoUring,
}

impl UringReader {
    /// # Errors
    /// [`Error::Stopped`] when the kernel refuses a ring.
    pub fn new() -> Result<Self> {
        let ring = IoUring::new(RING_ENTRIES)
            .map_err(|e| Error::Stopped(format!("creating an io_uring ring: {e}")))?;
        Ok(Self { ring })
    }
}

/// Progress of one op.
struct OpState {
    filled: usize,
    result: Option<std::io::Result<()>>,
}

impl Reader for UringReader {
    fn read_into(
        &mut self,
        ops: &[ReadOp<'_>],
        bufs: &mut Vec<Vec<u8>>,
    ) -> Vec<std::io::Result<()>> {
        fit_buffers(ops, bufs);
        let mut states: Vec<OpState> = ops
            .iter()
            .map(|op| OpState {
                filled: 0,
                result: if op.len == 0 { Some(Ok(())) } else { None },
            })
            .collect();
        let mut waiting: VecDeque<usize> = (0..ops.len())
            .filter(|&i| states[i].result.is_none())
            .collect();
        let mut in_flight = 0usize;

        while !waiting.is_empty() || in_flight > 0 {
            while in_flight < RING_ENTRIES as usize {
                let Some(i) = waiting.pop_front() else { break };
                let op = &ops[i];
                let state = &mut states[i];
                let remaining = (op.len - state.filled).min(u32::MAX as usize);
                // SAFETY: `bufs[i]` holds at least `op.len` bytes (`fit_buffers`), so the
                // pointer stays inside it; its heap allocation is neither freed nor moved until
                // this op's completion has been reaped below (if the ring fails, the buffers
                // are leaked rather than freed).
                let ptr = unsafe { bufs[i].as_mut_ptr().add(state.filled) };
                let sqe = opcode::Read::new(types::Fd(op.file.as_raw_fd()), ptr, remaining as u32)
                    .offset(op.offset + state.filled as u64)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the buffer outlives the operation (above); the fd stays open because
                // `ops` borrows the files for the whole call.
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
                    // The kernel may still write into buffers in flight: leak them rather than
                    // free memory that a late completion could touch.
                    let message = format!("io_uring_enter: {e}");
                    std::mem::forget(std::mem::take(bufs));
                    return ops
                        .iter()
                        .map(|_| Err(std::io::Error::other(message.clone())))
                        .collect();
                }
            }
            for cqe in self.ring.completion() {
                in_flight -= 1;
                let i = cqe.user_data() as usize;
                let Some(state) = states.get_mut(i) else {
                    continue;
                };
                let res = cqe.result();
                if res < 0 {
                    let err = std::io::Error::from_raw_os_error(-res);
                    if err.kind() == std::io::ErrorKind::Interrupted {
                        waiting.push_back(i);
                    } else {
                        state.result = Some(Err(err));
                    }
                } else if res == 0 {
                    state.result = Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "end of file at byte {}",
                            ops[i].offset + state.filled as u64
                        ),
                    )));
                } else {
                    state.filled += res as usize;
                    if state.filled < ops[i].len {
                        waiting.push_back(i); // a short read: resume where it stopped
                    } else {
                        state.result = Some(Ok(()));
                    }
                }
            }
        }
        states
            .into_iter()
            .map(|s| {
                s.result
                    .unwrap_or_else(|| Err(std::io::Error::other("io_uring: read never completed")))
            })
            .collect()
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
