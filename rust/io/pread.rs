//! The fallback backend: positional reads (`pread`) on a small pool of threads.

use std::os::unix::fs::FileExt;

use rayon::prelude::*;

use super::{ReadOp, Reader};
use crate::error::Result;
use crate::pool::{build_pool, ExitLatch};

/// Runs each op as one `read_exact_at` on a dedicated rayon pool.
pub struct PreadReader {
    pool: Option<rayon::ThreadPool>,
    exited: ExitLatch,
}

impl PreadReader {
    /// # Errors
    /// [`Error::Stopped`] when the threads cannot be started.
    pub fn new(threads: usize) -> Result<Self> {
        let (pool, exited) = build_pool("lsio-pread", threads)?;
        Ok(Self {
            pool: Some(pool),
            exited,
        })
    }
}

impl Reader for PreadReader {
    fn read(&mut self, ops: &[ReadOp<'_>]) -> Vec<std::io::Result<Vec<u8>>> {
        let Some(pool) = &self.pool else {
            return ops
                .iter()
                .map(|_| Err(std::io::Error::other("pread pool stopped")))
                .collect();
        };
        pool.install(|| {
            ops.par_iter()
                .map(|op| {
                    let mut buf = vec![0u8; op.len];
                    op.file.read_exact_at(&mut buf, op.offset)?;
                    Ok(buf)
                })
                .collect()
        })
    }
}

impl Drop for PreadReader {
    fn drop(&mut self) {
        drop(self.pool.take());
        self.exited.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_ranges() {
        let mut reader = super::PreadReader::new(2).unwrap();
        crate::io::tests::check_reader(&mut reader);
    }
}
