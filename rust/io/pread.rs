//! The fallback backend: positional reads (`pread`) in the calling thread. The engine's
//! threads each read their own chunks, so together they are a pread thread pool.

use std::os::unix::fs::FileExt;

use super::{fit_buffers, ReadOp, Reader};

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
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_ranges() {
        crate::io::tests::check_reader(&mut super::PreadReader);
    }
}
