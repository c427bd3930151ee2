//! The fallback backend: positional reads (`pread`) in the calling thread. The engine's
//! threads each read their own chunks, so together they are a pread thread pool.

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use super::{advance_iov, fit_buffers, ReadOp, Reader, ScatterOp};

/// Runs each op as one `read_exact_at`.
pub struct PreadReader;

impl Reader for PreadReader {
    fn read_into(
        &mut self,
        ops: &[ReadOp<'_>],
        bufs: &mut Vec<Vec<u8>>,
    ) -> Vec<std::io::Result<()>> {
        fit_buffers(ops, bufs);
        ops.iter()
            .zip(bufs.iter_mut())
            .map(|(op, buf)| op.file.read_exact_at(&mut buf[..op.len], op.offset))
            .collect()
    }

    unsafe fn read_scattered(&mut self, ops: &mut [ScatterOp<'_>]) -> Vec<std::io::Result<()>> {
        ops.iter_mut()
            .map(|op| {
                let (mut first, mut offset) = (0, op.offset);
                while first < op.iov.len() {
                    let count = (op.iov.len() - first).min(1024) as libc::c_int;
                    // SAFETY: the iovecs are valid for writes (the caller's promise); `count`
                    // of them from `first` lie inside `op.iov`.
                    let n = unsafe {
                        libc::preadv(
                            op.file.as_raw_fd(),
                            op.iov[first..].as_ptr(),
                            count,
                            offset as libc::off_t,
                        )
                    };
                    if n < 0 {
                        let err = std::io::Error::last_os_error();
                        if err.kind() == std::io::ErrorKind::Interrupted {
                            continue;
                        }
                        return Err(err);
                    }
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("end of file at byte {offset}"),
                        ));
                    }
                    offset += n as u64;
                    first = advance_iov(&mut op.iov, first, n as usize);
                }
                Ok(())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_ranges() {
        crate::io::tests::check_reader(&mut super::PreadReader);
    }
}
