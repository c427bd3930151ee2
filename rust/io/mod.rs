//! The backend-neutral read interface: a batch of byte ranges in, one buffer per range out.
//!
//! Two backends sit behind it: io_uring (default) and a pread thread pool for machines whose
//! sandbox refuses io_uring. `LSIO_IO=uring|pread` forces either.

pub mod pread;
pub mod uring;

use std::fs::File;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// One read: `len` bytes at `offset` of `file`.
#[derive(Clone, Copy, Debug)]
pub struct ReadOp<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub len: usize,
}

/// Reads batches of byte ranges. A short read is resumed; a read past the end of the file is
/// an `UnexpectedEof` error for that op alone.
pub trait Reader: Send {
    /// Reads every op; the result at `i` belongs to `ops[i]`.
    fn read(&mut self, ops: &[ReadOp<'_>]) -> Vec<std::io::Result<Vec<u8>>>;
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

/// A reader for `backend` with `threads` I/O threads (the pread pool size; io_uring uses
/// one ring).
///
/// # Errors
/// [`Error::Stopped`] when the ring or the thread pool cannot be created.
pub fn new_reader(backend: Backend, threads: usize) -> Result<Box<dyn Reader>> {
    Ok(match backend {
        Backend::IoUring => Box::new(uring::UringReader::new()?),
        Backend::Pread => Box::new(pread::PreadReader::new(threads)?),
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
    }

    #[test]
    fn unknown_backend_names_are_refused() {
        // Parsing is tested without touching the process environment of other tests.
        assert_eq!(Backend::IoUring.name(), "io_uring");
        assert_eq!(Backend::Pread.name(), "pread");
    }
}
