//! The decode stage: each chunk decoded once per batch, and its pieces copied (or cast) into
//! their crops' places in the output.

use std::sync::atomic::Ordering;

use crate::cast::Cast;
use crate::error::{Error, Result};
use crate::plan::ChunkTask;
use crate::zarr::array::ChunkLocation;

use super::planned::{Planned, PlannedRead};
use super::shared::{OutBuffer, Shared};
use super::targets::{direct_offset, needed_span, target_layout};

thread_local! {
    // Each engine thread's scratch chunk, reused for every chunk it decodes.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes one chunk a batch read into its crops' places in the output: decoded (or, stored
/// as its elements, copied) and, with a chunk cache, decoded whole and handed to the cache.
///
/// # Errors
/// [`Error::Corrupt`] naming the file and chunk when it does not decode.
pub(super) fn decode_read(
    shared: &Shared,
    planned: &Planned,
    read: &PlannedRead,
    bytes: &[u8],
    out: &OutBuffer,
) -> Result<()> {
    let task = &planned.tasks[read.task];
    let location = &planned.locations[read.task];
    let path = planned.path(read);
    let Some(claims) = &planned.claims else {
        if shared.as_stored {
            return copy_targets(shared, task, bytes, read.chunk_start, out);
        }
        return decode_task(shared, task, location, path, bytes, out);
    };
    let cache = claims.cache();
    let mut chunk = cache.buffer(shared.leaf_bytes);
    decode_whole(shared, bytes, &mut chunk)
        .map_err(|reason| corrupt_chunk(shared, task, location, path, reason))?;
    copy_targets(shared, task, &chunk, 0, out)?;
    cache.complete(claims, &shared.cache_key(task), Some(chunk));
    Ok(())
}

/// Writes chunk `t` of a batch, which its reference set holds inline (a small chunk), into
/// its crops' places: decoded whole and, with a chunk cache, handed to the cache.
///
/// # Errors
/// [`Error::Corrupt`] naming the reference set and chunk when it does not decode.
pub(super) fn decode_inline(
    shared: &Shared,
    planned: &Planned,
    t: usize,
    bytes: &[u8],
    out: &OutBuffer,
) -> Result<()> {
    let task = &planned.tasks[t];
    shared
        .counters
        .chunks_decoded
        .fetch_add(1, Ordering::Relaxed);
    let mut chunk = match &planned.claims {
        Some(claims) => claims.cache().buffer(shared.leaf_bytes),
        None => vec![0; shared.leaf_bytes],
    };
    decode_whole(shared, bytes, &mut chunk).map_err(|reason| {
        let what = format!("chunk {:?} (inline in the references)", task.chunk);
        Error::corrupt(&shared.array.path, what, reason)
    })?;
    copy_targets(shared, task, &chunk, 0, out)?;
    if let Some(claims) = &planned.claims {
        claims
            .cache()
            .complete(claims, &shared.cache_key(task), Some(chunk));
    }
    Ok(())
}

/// Decodes a whole chunk's `bytes` into `chunk` (a chunk stored as its elements is copied);
/// the reason when they do not decode.
fn decode_whole(
    shared: &Shared,
    bytes: &[u8],
    chunk: &mut [u8],
) -> std::result::Result<(), String> {
    if shared.as_stored {
        if bytes.len() != chunk.len() {
            let (n, expected) = (bytes.len(), chunk.len());
            return Err(format!(
                "an uncompressed chunk of {n} bytes, expected {expected}"
            ));
        }
        chunk.copy_from_slice(bytes);
        return Ok(());
    }
    let array = &shared.array;
    array.leaf_codecs().decode_into(
        bytes,
        chunk,
        &shared.leaf_shape,
        array.codec_data_type(),
        array.codec_fill_value(),
    )
}

/// Writes the fill value into a read chunk's places: its object turned out to be missing.
/// With a chunk cache, batches waiting for the chunk write the fill value too.
pub(super) fn fill_read(
    shared: &Shared,
    planned: &Planned,
    read: &PlannedRead,
    out: &OutBuffer,
) -> Result<()> {
    let task = &planned.tasks[read.task];
    fill_targets(shared, task, out)?;
    if let Some(claims) = &planned.claims {
        claims
            .cache()
            .complete(claims, &shared.cache_key(task), None);
    }
    Ok(())
}

/// The error for a chunk that does not decode, naming its file, chunk and place in its shard.
fn corrupt_chunk(
    shared: &Shared,
    task: &ChunkTask,
    location: &ChunkLocation,
    path: &std::path::Path,
    reason: String,
) -> Error {
    let what = if shared.array.sharding().is_some() {
        format!(
            "chunk {:?} (inner chunk {} of the shard)",
            task.chunk, location.inner
        )
    } else {
        format!("chunk {:?}", task.chunk)
    };
    Error::corrupt(path, what, reason)
}

/// Decodes one chunk (only as far as its crops need, where the codec can stop early) and
/// copies its pieces into the output; a chunk that fills one contiguous run of one crop is
/// decoded straight into it.
fn decode_task(
    shared: &Shared,
    task: &ChunkTask,
    location: &ChunkLocation,
    path: &std::path::Path,
    bytes: &[u8],
    out: &OutBuffer,
) -> Result<()> {
    let array = &shared.array;
    let corrupt = |reason: String| corrupt_chunk(shared, task, location, path, reason);
    let decode = |into: &mut [u8]| {
        array
            .leaf_codecs()
            .decode_into(
                bytes,
                into,
                &shared.leaf_shape,
                array.codec_data_type(),
                array.codec_fill_value(),
            )
            .map_err(corrupt)
    };
    if let Some(offset) = direct_offset(shared, task) {
        if offset + shared.leaf_bytes <= out.len {
            // SAFETY: `offset..offset + leaf_bytes` lies in the output (checked above), which
            // is valid for writes while the batch runs (`OutBuffer::new`); no other task
            // touches it, since each output element belongs to exactly one target of one chunk
            // (plan_batch) and this chunk has just this one target.
            let slot =
                unsafe { std::slice::from_raw_parts_mut(out.ptr.add(offset), shared.leaf_bytes) };
            return decode(slot);
        }
    }
    // The crops need the chunk's bytes up to the end of the last piece: codecs that can stop
    // there do.
    let needed = needed_span(shared, task).map_or(shared.leaf_bytes, |(_, end)| end);
    // Taken out while in use: a codec that decodes in parallel has this thread run other
    // chunks' decodes while it waits (see `read_and_decode`), and they get a scratch of their
    // own.
    let mut scratch = SCRATCH.take();
    let result = array.leaf_codecs().decode_then(
        bytes,
        &mut scratch,
        &shared.leaf_shape,
        array.codec_data_type(),
        array.codec_fill_value(),
        needed,
        |chunk| copy_targets(shared, task, chunk, 0, out),
        corrupt,
    );
    SCRATCH.set(scratch);
    result
}

/// Copies each target's piece of a decoded chunk into its crop's place in the output;
/// `chunk` holds the chunk's bytes from `chunk_start` on.
pub(super) fn copy_targets(
    shared: &Shared,
    task: &ChunkTask,
    chunk: &[u8],
    chunk_start: usize,
    out: &OutBuffer,
) -> Result<()> {
    let element = shared.array.dtype.size();
    if let Some(cast) = &shared.cast {
        return cast_targets(shared, cast, task, chunk, chunk_start, out);
    }
    for target in &task.targets {
        let crop_base = target.crop * shared.crop_bytes;
        let layout = target_layout(shared, target, element);
        let mut in_bounds = true;
        layout.for_each_run(|src, dst, len| {
            let dst = crop_base + dst;
            let Some(src) = src.checked_sub(chunk_start) else {
                in_bounds = false;
                return;
            };
            if src + len > chunk.len() || dst + len > out.len {
                in_bounds = false;
                return;
            }
            // SAFETY: `src..src+len` lies in `chunk` and `dst..dst+len` in the output buffer
            // (both checked just above); the output is valid for writes while the batch runs
            // (`OutBuffer::new`), and no other task writes this run: each output element is
            // covered by exactly one target of one chunk (plan_batch).
            unsafe {
                std::ptr::copy_nonoverlapping(chunk.as_ptr().add(src), out.ptr.add(dst), len);
            }
        });
        if !in_bounds {
            return Err(Error::Stopped(format!(
                "internal error: a copy for chunk {:?} left its buffers",
                task.chunk
            )));
        }
    }
    Ok(())
}

/// Writes the fill value into each target's places in the output: the pieces of a chunk
/// never written. Nothing the size of the chunk is made: each run of the crop is filled in
/// place, so memory follows the crop, not the chunk.
pub(super) fn fill_targets(shared: &Shared, task: &ChunkTask, out: &OutBuffer) -> Result<()> {
    let fill = &shared.fill_out;
    for target in &task.targets {
        let crop_base = target.crop * shared.crop_bytes;
        let layout = target_layout(shared, target, fill.len());
        let mut in_bounds = true;
        layout.for_each_run(|_, dst, len| {
            let dst = crop_base + dst;
            if dst + len > out.len {
                in_bounds = false;
                return;
            }
            // SAFETY: `dst..dst+len` lies in the output buffer (checked just above), valid for
            // writes while the batch runs (`OutBuffer::new`); no other task writes this run:
            // each output element is covered by exactly one target of one chunk (plan_batch).
            let run = unsafe { std::slice::from_raw_parts_mut(out.ptr.add(dst), len) };
            fill_run(run, fill);
        });
        if !in_bounds {
            return Err(Error::Stopped(format!(
                "internal error: the fill of chunk {:?} left the batch",
                task.chunk
            )));
        }
    }
    Ok(())
}

/// Repeats the element `fill` over `run`, a whole number of elements.
fn fill_run(run: &mut [u8], fill: &[u8]) {
    if let Some(&byte) = fill.first().filter(|&&b| fill.iter().all(|&x| x == b)) {
        run.fill(byte);
        return;
    }
    let Some(first) = run.get_mut(..fill.len()) else {
        return;
    };
    first.copy_from_slice(fill);
    // Doubling copies: each pass copies what is already written.
    let mut done = fill.len();
    while done < run.len() {
        let n = done.min(run.len() - done);
        run.copy_within(..n, done);
        done += n;
    }
}

/// Like [`copy_targets`], converting each run to the output type on the way.
pub(super) fn cast_targets(
    shared: &Shared,
    cast: &Cast,
    task: &ChunkTask,
    chunk: &[u8],
    chunk_start: usize,
    out: &OutBuffer,
) -> Result<()> {
    let in_size = shared.array.dtype.size();
    let out_size = cast.to().size();
    for target in &task.targets {
        let crop_base = target.crop * shared.crop_bytes;
        // Runs in elements: each side scales them by its own element size.
        let layout = target_layout(shared, target, 1);
        let mut in_bounds = true;
        layout.for_each_run(|src, dst, count| {
            let (src, dst) = (src * in_size, crop_base + dst * out_size);
            let Some(src) = src.checked_sub(chunk_start) else {
                in_bounds = false;
                return;
            };
            if src + count * in_size > chunk.len() || dst + count * out_size > out.len {
                in_bounds = false;
                return;
            }
            // SAFETY: `dst..dst + count * out_size` lies in the output buffer (checked just
            // above), which is valid for writes while the batch runs (`OutBuffer::new`); no
            // other task writes this run: each output element is covered by exactly one
            // target of one chunk (plan_batch).
            let dst = unsafe { std::slice::from_raw_parts_mut(out.ptr.add(dst), count * out_size) };
            cast.convert(&chunk[src..], dst, count);
        });
        if !in_bounds {
            return Err(Error::Stopped(format!(
                "internal error: a copy for chunk {:?} left its buffers",
                task.chunk
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fill_run;

    #[test]
    fn fill_runs_repeat_the_element() {
        for len in [0usize, 1, 2, 3, 7, 8, 100] {
            let fill = 0x0102_0304_0506_0708u64.to_ne_bytes();
            let mut run = vec![0u8; len * 8];
            fill_run(&mut run, &fill);
            assert!(run.chunks_exact(8).all(|e| e == fill), "{len}");
            let mut run = vec![1u8; len * 2];
            fill_run(&mut run, &[0, 0]);
            assert!(run.iter().all(|&b| b == 0), "{len}");
        }
    }
}
