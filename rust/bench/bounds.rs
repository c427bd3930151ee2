//! The ceilings `python -m lsio_torch.bench` compares the engine with, measured on the same
//! crops: the decode bound (every chunk the crops touch, already in memory, decoded on all
//! threads with nothing else to do) and the disk bound (the same byte ranges read through the
//! reader, nothing decoded).

use std::cell::RefCell;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::remote::Settings;
use crate::io::{new_reader, Backend, ReadOp};
use crate::pipeline::{
    plan_reads, read_all, read_only_what_crops_need, requested_objects, requested_ranges,
    PlanCache, Shared,
};
use crate::pool::build_pool;
use crate::window::Window;
use crate::zarr::ZarrArray;

/// What a ceiling measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measured {
    /// Time spent on the measured work only.
    pub seconds: f64,
    /// Chunks decoded (decode bound) or read (disk bound).
    pub chunks: u64,
    /// Compressed bytes read or decoded.
    pub encoded_bytes: u64,
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Compressed bytes held in memory at once by the decode bound.
const DECODE_BOUND_BYTES: u64 = 512 << 20;

/// Reads the batches' chunks (untimed) until [`DECODE_BOUND_BYTES`] are in memory, then times
/// decoding all of them in one parallel pass on `threads` threads, and so on to the last
/// batch. Each chunk is decoded once per batch that touches it, as the engine decodes it.
///
/// # Errors
/// The first read or decode error.
pub fn decode_bound(
    array: Arc<ZarrArray>,
    crop: Vec<u64>,
    batches: &[Vec<Vec<u64>>],
    threads: usize,
    backend: Backend,
) -> Result<Measured> {
    let shared = Shared::new(array, Window::crop(&crop), backend, None)?;
    let mut reader = new_reader(backend)?;
    let mut cache = PlanCache::default();
    let (pool, exited) = build_pool("lsio-bound", threads)?;
    let mut measured = Measured::default();
    let mut elapsed = Duration::ZERO;
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut held_bytes = 0u64;
    let array = &shared.array;
    let mut decode_held = |held: &mut Vec<Vec<u8>>| -> Result<()> {
        let start = Instant::now();
        pool.install(|| {
            held.par_iter().try_for_each(|bytes| {
                SCRATCH.with(|scratch| {
                    let mut scratch = scratch.borrow_mut();
                    scratch.resize(shared.leaf_bytes, 0);
                    array
                        .leaf_codecs()
                        .decode_into(
                            bytes,
                            &mut scratch,
                            &shared.leaf_shape,
                            array.codec_data_type(),
                            array.codec_fill_value(),
                        )
                        .map_err(|reason| Error::corrupt(&array.path, "chunk", reason))
                })
            })
        })?;
        elapsed += start.elapsed();
        held.clear();
        Ok(())
    };
    for origins in batches {
        let planned = plan_reads(&shared, reader.as_mut(), None, &mut cache, origins, &[])?;
        let encoded = read_all(reader.as_mut(), &planned)?;
        measured.chunks += encoded.len() as u64;
        let bytes: u64 = encoded.iter().map(|b| b.len() as u64).sum();
        measured.encoded_bytes += bytes;
        held_bytes += bytes;
        held.extend(encoded);
        if held_bytes >= DECODE_BOUND_BYTES {
            decode_held(&mut held)?;
            held_bytes = 0;
        }
    }
    decode_held(&mut held)?;
    drop(pool);
    exited.wait();
    measured.seconds = elapsed.as_secs_f64();
    Ok(measured)
}

/// One read request: file, offset, length.
pub type Range = (PathBuf, u64, usize);

/// The byte ranges each batch's chunks are read from, as the engine reads them from files, or,
/// with `remote` settings, as it requests them from an object store (shard indexes are read
/// here, not later).
///
/// # Errors
/// A file or shard index that cannot be read.
pub fn read_ranges(
    array: Arc<ZarrArray>,
    crop: Vec<u64>,
    batches: &[Vec<Vec<u64>>],
    backend: Backend,
    remote: Option<&Settings>,
) -> Result<Vec<Vec<Range>>> {
    let shared = Shared::new(array, Window::crop(&crop), backend, None)?;
    let mut reader = new_reader(backend)?;
    let mut cache = PlanCache::default();
    batches
        .iter()
        .map(|origins| {
            let mut planned = plan_reads(&shared, reader.as_mut(), None, &mut cache, origins, &[])?;
            read_only_what_crops_need(&shared, &mut planned)?;
            Ok(match remote {
                None => requested_ranges(&planned),
                Some(settings) => requested_objects(&planned, settings),
            })
        })
        .collect()
}

/// Reads in flight per thread in the disk bound: a deep queue, as fio would keep.
const DISK_QUEUE_DEPTH: usize = 256;

/// Times reading `ranges` as fast as `threads` threads can: the batches dealt out to the
/// threads in turn, each thread keeping [`DISK_QUEUE_DEPTH`] reads in flight on its own ring,
/// into buffers it reuses. Opening the files is not timed.
///
/// # Errors
/// The first open or read that fails.
pub fn disk_bound(ranges: &[Vec<Range>], threads: usize, backend: Backend) -> Result<Measured> {
    let mut paths: Vec<&PathBuf> = ranges.iter().flatten().map(|(p, _, _)| p).collect();
    paths.sort();
    paths.dedup();
    let files = paths
        .iter()
        .map(|p| File::open(p).map_err(|e| Error::io(*p, "opening a chunk file", e)))
        .collect::<Result<Vec<File>>>()?;
    let threads = threads.max(1);
    let shares: Vec<Vec<ReadOp>> = (0..threads)
        .map(|t| {
            ranges
                .iter()
                .skip(t)
                .step_by(threads)
                .flatten()
                .map(|(path, offset, len)| ReadOp {
                    file: &files[paths.binary_search(&path).unwrap_or(0)],
                    offset: *offset,
                    len: *len,
                })
                .collect()
        })
        .collect();
    let readers = (0..threads)
        .map(|_| new_reader(backend))
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let outcomes: Vec<Result<(u64, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .zip(readers)
            .map(|(ops, mut reader)| {
                scope.spawn(move || {
                    let mut bufs = Vec::new();
                    let (mut chunks, mut bytes) = (0u64, 0u64);
                    for group in ops.chunks(DISK_QUEUE_DEPTH) {
                        for (op, result) in group.iter().zip(reader.read_into(group, &mut bufs)) {
                            result.map_err(|e| Error::Stopped(format!("disk bound: {e}")))?;
                            chunks += 1;
                            bytes += op.len as u64;
                        }
                    }
                    Ok((chunks, bytes))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Stopped("disk bound thread panicked".into())))
            })
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut measured = Measured {
        seconds,
        ..Measured::default()
    };
    for outcome in outcomes {
        let (chunks, bytes) = outcome?;
        measured.chunks += chunks;
        measured.encoded_bytes += bytes;
    }
    Ok(measured)
}
