//! The fallback backend: positional reads (`pread`) on a small pool of threads.

use std::os::unix::fs::FileExt;

use rayon::prelude::*;

use super::{ReadOp, Reader};
use crate::error::{Error, Result};

/// Runs each op as one `read_exact_at` on a dedicated rayon pool.
pub struct PreadReader {
    pool: rayon::ThreadPool,
}

impl PreadReader {
    /// # Errors
    /// [`Error::Stopped`] when the threads cannot be started.
    pub fn new(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("lsio-pread-{i}"))
            .build()
            .map_err(|e| Error::Stopped(format!("starting pread threads: {e}")))?;
        Ok(Self { pool })
    }
}

impl Reader for PreadReader {
    fn read(&mut self, ops: &[ReadOp<'_>]) -> Vec<std::io::Result<Vec<u8>>> {
        self.pool.install(|| {
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

#[cfg(test)]
mod tests {
    #[test]
    fn reads_ranges() {
        let mut reader = super::PreadReader::new(2).unwrap();
        crate::io::tests::check_reader(&mut reader);
    }
}
