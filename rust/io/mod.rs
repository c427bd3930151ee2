//! The backend-neutral read interface: a batch of byte ranges in, one buffer per range out.
//!
//! Two backends sit behind it: io_uring (default) and a pread thread pool for machines whose
//! sandbox refuses io_uring. `LSIO_IO=uring|pread` forces either.

pub mod buffer;
pub mod open_files;
pub mod pread;
pub mod remote;
pub mod uring;

use std::fs::File;
use std::sync::OnceLock;

pub use buffer::ReadBuf;

use crate::error::{Error, Result};

/// One read: `len` bytes at `offset` of `file`.
#[derive(Clone, Copy, Debug)]
pub struct ReadOp<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub len: usize,
}

/// One scattered read: consecutive bytes from `offset` of `file`, laid over `iov` in order
/// (`preadv`). The engine reads an uncompressed piece of a chunk that is one contiguous run
/// of a crop this way, straight into the batch.
pub struct ScatterOp<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub iov: Vec<libc::iovec>,
}

impl ScatterOp<'_> {
    /// Bytes the op reads.
    #[must_use]
    pub fn len(&self) -> usize {
        self.iov.iter().map(|v| v.iov_len).sum()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a partly done scattered read resumes: drops the iovecs that `n` more bytes filled
/// and trims the next one, from `first` on; returns the new `first`.
pub(crate) fn advance_iov(iov: &mut [libc::iovec], mut first: usize, mut n: usize) -> usize {
    while n > 0 && first < iov.len() {
        let v = &mut iov[first];
        if n >= v.iov_len {
            n -= v.iov_len;
            first += 1;
        } else {
            // SAFETY: `n < iov_len`, so the new base stays inside the same buffer.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            n = 0;
        }
    }
    first
}

/// Reads batches of byte ranges. A short read is resumed; a read past the end of the file is
/// an `UnexpectedEof` error for that op alone.
pub trait Reader: Send {
    /// Reads every scattered op; the result at `i` belongs to `ops[i]`. The ops' iovecs are
    /// consumed (advanced) as bytes arrive.
    ///
    /// # Safety
    /// Every iovec of every op must be valid for writes of its length until this returns,
    /// and written by nothing else meanwhile (iovecs of a sink may overlap each other).
    unsafe fn read_scattered(&mut self, ops: &mut [ScatterOp<'_>]) -> Vec<std::io::Result<()>>;

    /// Reads `ops[i]` into `bufs[i][..ops[i].len]`; the result at `i` belongs to `ops[i]`.
    /// `bufs` grows to `ops.len()` buffers, each at least as long as its op; buffers from an
    /// earlier call are reused as they are (grown, never zeroed again), so a caller that keeps
    /// `bufs` allocates nothing in the steady state.
    fn read_into(
        &mut self,
        ops: &[ReadOp<'_>],
        bufs: &mut Vec<Vec<u8>>,
    ) -> Vec<std::io::Result<()>>;

    /// Reads `ops` back to back into `buf`, each at a multiple of `align` bytes (a power of
    /// two: direct I/O needs aligned memory); returns where each op's bytes start in `buf`,
    /// with its result. `buf` grows as needed, so a caller that keeps it allocates nothing in
    /// the steady state, and its size is the bytes of one call.
    fn read_packed(
        &mut self,
        ops: &[ReadOp<'_>],
        buf: &mut ReadBuf,
        align: usize,
    ) -> Vec<(usize, std::io::Result<()>)> {
        let (starts, total) = packed_layout(ops, align);
        if let Err(e) = buf.ensure(total + align) {
            let failed =
                || std::io::Error::new(e.kind(), format!("a read buffer of {total} bytes: {e}"));
            return ops.iter().map(|_| (0, Err(failed()))).collect();
        }
        let base = buf.as_ptr().align_offset(align);
        let ptr = buf.as_mut_ptr();
        let mut scattered: Vec<ScatterOp<'_>> = ops
            .iter()
            .zip(&starts)
            .map(|(op, &start)| {
                // SAFETY: `base + start + op.len <= base + total <= buf.len()` (align_offset
                // is below `align`): the pointer stays in `buf`.
                let at = unsafe { ptr.add(base + start) };
                ScatterOp {
                    file: op.file,
                    offset: op.offset,
                    iov: vec![libc::iovec {
                        iov_base: at.cast(),
                        iov_len: op.len,
                    }],
                }
            })
            .collect();
        // SAFETY: the iovecs are disjoint slices of `buf`, which nothing else touches while
        // this runs (it is borrowed mutably) and which outlives the call.
        let results = unsafe { self.read_scattered(&mut scattered) };
        starts.into_iter().map(|s| base + s).zip(results).collect()
    }

    /// Asks the kernel to start reading `ops` into the page cache (`POSIX_FADV_WILLNEED`),
    /// without waiting for the data: reads issued later find it there, or already on its way,
    /// so a cold disk sees a deep queue. Best effort: failures are ignored.
    fn advise(&mut self, ops: &[ReadOp<'_>]) {
        for op in ops {
            // SAFETY: posix_fadvise reads no memory of ours; the fd is open (`ops` borrows it).
            unsafe {
                libc::posix_fadvise(
                    std::os::unix::io::AsRawFd::as_raw_fd(op.file),
                    op.offset as libc::off_t,
                    op.len as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                );
            }
        }
    }

    /// Reads every op into a buffer of its own.
    fn read(&mut self, ops: &[ReadOp<'_>]) -> Vec<std::io::Result<Vec<u8>>> {
        let mut bufs = Vec::new();
        let results = self.read_into(ops, &mut bufs);
        results
            .into_iter()
            .zip(bufs)
            .zip(ops)
            .map(|((result, mut buf), op)| {
                result?;
                buf.truncate(op.len);
                Ok(buf)
            })
            .collect()
    }
}

/// Grows `bufs` to `ops.len()` buffers, each at least its op's length.
pub(crate) fn fit_buffers(ops: &[ReadOp<'_>], bufs: &mut Vec<Vec<u8>>) {
    if bufs.len() < ops.len() {
        bufs.resize_with(ops.len(), Vec::new);
    }
    for (buf, op) in bufs.iter_mut().zip(ops) {
        if buf.len() < op.len {
            buf.resize(op.len, 0);
        }
    }
}

/// Opens `path` for direct I/O (`O_DIRECT`, bypassing the page cache) and returns it with
/// the alignment its reads need: the larger of the memory and file-offset alignments `statx`
/// reports (`STATX_DIOALIGN`, Linux 6.1). `None` where the file system refuses `O_DIRECT` or
/// does not report the alignment: the caller then reads through the page cache.
#[must_use]
pub fn open_direct(path: &std::path::Path) -> Option<(File, usize)> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open; the empty path with AT_EMPTY_PATH names the fd itself; the
    // kernel writes only into `stx`.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &raw mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    let align = stx.stx_dio_mem_align.max(stx.stx_dio_offset_align) as usize;
    (align.is_power_of_two()).then_some((file, align))
}

/// The direct read covering `len` bytes at `offset`: its start and length rounded out to
/// `align`, and where the wanted bytes start in it. `None` when the rounded read would pass
/// the end of a file of `file_len` bytes (a direct read there comes back short): read such a
/// range through the page cache.
#[must_use]
pub fn direct_range(
    offset: u64,
    len: usize,
    align: usize,
    file_len: u64,
) -> Option<(u64, usize, usize)> {
    let align = align as u64;
    let start = offset / align * align;
    let end = (offset + len as u64).div_ceil(align) * align;
    (end <= file_len).then(|| (start, (end - start) as usize, (offset - start) as usize))
}

/// Where each op lands when `ops` are read back to back into one buffer, each starting at a
/// multiple of `align` bytes from the first: the starts, and the bytes all of them span.
#[must_use]
pub fn packed_layout(ops: &[ReadOp<'_>], align: usize) -> (Vec<usize>, usize) {
    let mut at = 0usize;
    let starts = ops
        .iter()
        .map(|op| {
            let start = at.next_multiple_of(align);
            at = start + op.len;
            start
        })
        .collect();
    (starts, at)
}

/// Which kernel interface the reads go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    IoUring,
    Pread,
}

impl Backend {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::IoUring => "io_uring",
            Self::Pread => "pread",
        }
    }
}

/// The backend this process uses, and why when it is not the default.
#[derive(Clone, Debug)]
pub struct BackendChoice {
    pub backend: Backend,
    /// Set when io_uring was wanted but could not be used.
    pub fallback_reason: Option<String>,
}

/// Decides the backend: `LSIO_IO` when set, else io_uring when this kernel and sandbox allow
/// it. Decided once per process (the probe starts no thread).
///
/// # Errors
/// [`Error::InvalidArgument`] for an `LSIO_IO` value other than `uring`/`io_uring`/`pread`, or
/// when `LSIO_IO=uring` is forced and io_uring is unavailable.
pub fn choose_backend() -> Result<BackendChoice> {
    let forced = std::env::var("LSIO_IO").unwrap_or_default();
    match forced.as_str() {
        "pread" => Ok(BackendChoice {
            backend: Backend::Pread,
            fallback_reason: None,
        }),
        "uring" | "io_uring" => match uring_probe() {
            Ok(()) => Ok(BackendChoice {
                backend: Backend::IoUring,
                fallback_reason: None,
            }),
            Err(reason) => Err(Error::InvalidArgument(format!(
                "LSIO_IO={forced} but io_uring is unavailable here: {reason}"
            ))),
        },
        "" => Ok(match uring_probe() {
            Ok(()) => BackendChoice {
                backend: Backend::IoUring,
                fallback_reason: None,
            },
            Err(reason) => BackendChoice {
                backend: Backend::Pread,
                fallback_reason: Some(reason.clone()),
            },
        }),
        other => Err(Error::InvalidArgument(format!(
            "LSIO_IO={other}: expected uring or pread"
        ))),
    }
}

fn uring_probe() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(uring::probe).clone()
}

/// A reader for `backend`, for the calling thread: one io_uring ring, or plain `pread`s.
/// The engine gives each of its threads one, so its threads are its I/O threads.
///
/// # Errors
/// [`Error::Stopped`] when the kernel refuses a ring.
pub fn new_reader(backend: Backend) -> Result<Box<dyn Reader>> {
    Ok(match backend {
        // Each ring holds a descriptor: past the budget of rings (as many as files kept
        // open), or out of descriptors even after closing the idle kept files, this thread
        // reads with pread, which needs none.
        Backend::IoUring if uring::rings_open() >= open_files::budget() => {
            Box::new(pread::PreadReader)
        }
        Backend::IoUring => match open_files::with_descriptors(uring::UringReader::new) {
            Ok(ring) => Box::new(ring),
            Err(e) if open_files::out_of_descriptors(&e) => Box::new(pread::PreadReader),
            Err(e) => return Err(Error::Stopped(format!("creating an io_uring ring: {e}"))),
        },
        Backend::Pread => Box::new(pread::PreadReader),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Reads ranges of a file with `reader` and checks each buffer against the file's bytes.
    pub(crate) fn check_reader(reader: &mut dyn Reader) {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        file.write_all(&data).unwrap();
        let ranges = [
            (0u64, 10usize),
            (99_990, 10),
            (4096, 50_000),
            (3, 0),
            (77, 1),
        ];
        let ops: Vec<ReadOp> = ranges
            .iter()
            .map(|&(offset, len)| ReadOp {
                file: &file,
                offset,
                len,
            })
            .collect();
        let results = reader.read(&ops);
        for ((offset, len), result) in ranges.iter().zip(results) {
            let start = *offset as usize;
            assert_eq!(result.unwrap(), &data[start..start + len]);
        }
        // Past the end: an error for that op only.
        let ops = [
            ReadOp {
                file: &file,
                offset: 99_995,
                len: 10,
            },
            ReadOp {
                file: &file,
                offset: 0,
                len: 4,
            },
        ];
        let results = reader.read(&ops);
        assert_eq!(
            results[0].as_ref().unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
        assert_eq!(results[1].as_ref().unwrap(), &data[..4]);
        // Many more ops than one submission holds.
        let ops: Vec<ReadOp> = (0..2000)
            .map(|i| ReadOp {
                file: &file,
                offset: i * 37,
                len: 13,
            })
            .collect();
        for (i, result) in reader.read(&ops).into_iter().enumerate() {
            let start = i * 37;
            assert_eq!(result.unwrap(), &data[start..start + 13]);
        }
        // Reused buffers, longer than the ops and holding older bytes, read the same.
        let mut bufs = vec![vec![0xEE; 40]; 3];
        for round in 0..2 {
            for (i, result) in reader.read_into(&ops, &mut bufs).into_iter().enumerate() {
                result.unwrap();
                let start = i * 37;
                assert_eq!(&bufs[i][..13], &data[start..start + 13], "round {round}");
            }
        }
        assert_eq!(bufs.len(), 2000);
        // Packed back to back into one buffer, reused and longer than needed, and aligned.
        let mut packed = ReadBuf::new();
        for (round, align) in [1, 1, 512].into_iter().enumerate() {
            let results = reader.read_packed(&ops, &mut packed, align);
            for (i, (at, result)) in results.into_iter().enumerate() {
                result.unwrap();
                let start = i * 37;
                assert_eq!(
                    &packed[at..at + 13],
                    &data[start..start + 13],
                    "round {round}"
                );
                assert_eq!(packed[at..].as_ptr() as usize % align, 0);
            }
        }

        // Scattered: ranges laid over several buffers, with a shared sink for the gaps.
        let mut a = vec![0u8; 300];
        let mut b = vec![0u8; 5000];
        let mut sink = vec![0u8; 64];
        let iov = |buf: &mut [u8]| libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let many: Vec<libc::iovec> = (0..600).map(|_| iov(&mut sink[..7])).collect();
        let mut ops = vec![
            ScatterOp {
                file: &file,
                offset: 1000,
                iov: vec![iov(&mut a[..100]), iov(&mut sink), iov(&mut a[100..])],
            },
            ScatterOp {
                file: &file,
                offset: 90_000,
                iov: vec![iov(&mut b)],
            },
            ScatterOp {
                file: &file,
                offset: 99_999,
                iov: vec![iov(&mut sink[..2])],
            },
            ScatterOp {
                file: &file,
                offset: 5,
                iov: many,
            },
        ];
        // SAFETY: every iovec points into `a`, `b` or `sink`, alive and untouched meanwhile.
        let results = unsafe { reader.read_scattered(&mut ops) };
        assert!(results[0].is_ok() && results[1].is_ok() && results[3].is_ok());
        assert_eq!(
            results[2].as_ref().unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
        assert_eq!(&a[..100], &data[1000..1100]);
        assert_eq!(&a[100..], &data[1164..1364]);
        assert_eq!(&b[..], &data[90_000..95_000]);
    }

    #[test]
    fn direct_reads_round_out_to_the_alignment_and_stop_short_of_the_end() {
        // 100 bytes at 5000, blocks of 4096: the block from 4096, the bytes 904 in.
        assert_eq!(
            direct_range(5000, 100, 4096, 1 << 20),
            Some((4096, 4096, 904))
        );
        // Across a block boundary: two blocks.
        assert_eq!(
            direct_range(4000, 200, 4096, 1 << 20),
            Some((0, 8192, 4000))
        );
        // Aligned already: unchanged.
        assert_eq!(direct_range(8192, 4096, 4096, 12288), Some((8192, 4096, 0)));
        // The rounded read would pass the end of the file: none.
        assert_eq!(direct_range(8192, 100, 4096, 8292), None);
    }

    #[test]
    fn packed_ops_start_at_multiples_of_the_alignment() {
        let file = tempfile::tempfile().unwrap();
        let op = |len| ReadOp {
            file: &file,
            offset: 0,
            len,
        };
        let ops = [op(10), op(4096), op(1)];
        assert_eq!(packed_layout(&ops, 1), (vec![0, 10, 4106], 4107));
        assert_eq!(packed_layout(&ops, 512), (vec![0, 512, 4608], 4609));
    }

    #[test]
    fn advancing_iovecs_resumes_mid_buffer() {
        let mut a = [0u8; 10];
        let mut b = [0u8; 10];
        let mut iov = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 10,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 10,
            },
        ];
        assert_eq!(advance_iov(&mut iov, 0, 4), 0);
        assert_eq!(iov[0].iov_len, 6);
        assert_eq!(advance_iov(&mut iov, 0, 6), 1);
        assert_eq!(advance_iov(&mut iov, 1, 3), 1);
        assert_eq!(iov[1].iov_base.cast::<u8>(), b[3..].as_mut_ptr());
        assert_eq!(advance_iov(&mut iov, 1, 7), 2);
    }

    #[test]
    fn unknown_backend_names_are_refused() {
        // Parsing is tested without touching the process environment of other tests.
        assert_eq!(Backend::IoUring.name(), "io_uring");
        assert_eq!(Backend::Pread.name(), "pread");
    }
}
