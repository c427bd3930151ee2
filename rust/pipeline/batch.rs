//! A planned batch run on the engine threads: each thread reads a group of chunks into its
//! own buffer with its own reader, then decodes them into the output.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::decode::{copy_targets, decode_inline, decode_read, fill_targets};
use super::groups::{read_groups, Requests};
use super::planned::{Planned, PlannedRead, Source};
use super::shared::{guarded, Job, OutBuffer, Shared};
use crate::cache::Resolved;
use crate::error::{Error, Result};
use crate::io::{new_reader, ReadBuf, Reader, ScatterOp};

/// Chunks of a batch written without a read (the fill value, from the chunk cache, or inline
/// in a reference set) that one pool job writes: a batch found whole in the cache is copied
/// by every thread, not one.
const UNREAD_PER_GROUP: usize = 32;

/// What each engine thread keeps between batches: its reader (an io_uring ring) and its read
/// buffer, which a group of reads fills back to back, reused without being zeroed again.
struct LocalIo {
    reader: Box<dyn Reader>,
    buf: ReadBuf,
}

thread_local! {
    static LOCAL_IO: std::cell::RefCell<Option<LocalIo>> = const { std::cell::RefCell::new(None) };
}

/// A planned batch shared by the stages while its parts run.
pub(super) struct BatchRun {
    pub(super) shared: Arc<Shared>,
    pub(super) planned: Planned,
    pub(super) job: Job,
    /// Parts not finished yet.
    remaining: AtomicUsize,
    /// The first part's error; later parts of a failed batch are skipped.
    error: Mutex<Option<Error>>,
}

impl BatchRun {
    /// Starts a planned batch of `parts` parts besides the chunks it writes without reading
    /// them (never written: the fill value; found in the chunk cache; or held inline by a
    /// reference set), which are queued on the pool now in groups that the pool's threads
    /// write side by side; the caller queues the parts, each ending with
    /// [`BatchRun::finish_part`].
    pub(super) fn start(
        shared: &Arc<Shared>,
        planned: Planned,
        job: Job,
        pool: &rayon::ThreadPool,
        parts: usize,
    ) -> Arc<Self> {
        let awaited: Vec<usize> = (0..planned.sources.len())
            .filter(|&t| matches!(planned.sources[t], Source::Awaited(_)))
            .collect();
        let unread: Vec<usize> = (0..planned.sources.len())
            .filter(|&t| {
                matches!(
                    planned.sources[t],
                    Source::Fill | Source::Cached(_) | Source::Inline(_)
                )
            })
            .collect();
        // At least one group, empty or not: a batch with nothing to read ends with it.
        let groups: Vec<Vec<usize>> = if unread.is_empty() {
            vec![Vec::new()]
        } else {
            unread
                .chunks(UNREAD_PER_GROUP)
                .map(<[usize]>::to_vec)
                .collect()
        };
        let batch = Arc::new(Self {
            shared: Arc::clone(shared),
            planned,
            job,
            remaining: AtomicUsize::new(parts + groups.len() + awaited.len()),
            error: Mutex::new(None),
        });
        // Each chunk an earlier batch is decoding is a part that ends when that batch hands
        // it over (on that batch's thread).
        for t in awaited {
            let Source::Awaited(promise) = &batch.planned.sources[t] else {
                continue;
            };
            let waiting = Arc::clone(&batch);
            promise.then(move |resolved| {
                let result = guarded("engine thread", &waiting.shared.array.path, || {
                    write_awaited(&waiting, t, resolved)
                });
                waiting.finish_part(result);
            });
        }
        for group in groups {
            batch.spawn_part(pool, move |batch| {
                write_unread(&batch.shared, &batch.planned, &group, &batch.job.out)
            });
        }
        batch
    }

    /// Queues one part of the batch on the pool: `part` runs unless the engine was closed or
    /// an earlier part failed, a panic in it is an error, and its end is recorded.
    pub(super) fn spawn_part(
        self: &Arc<Self>,
        pool: &rayon::ThreadPool,
        part: impl FnOnce(&BatchRun) -> Result<()> + Send + 'static,
    ) {
        let batch = Arc::clone(self);
        pool.spawn_fifo(move || {
            let result = if batch.shared.cancel.load(Ordering::Relaxed) {
                Err(Error::Stopped("the engine was closed".into()))
            } else if batch.failed() {
                Ok(())
            } else {
                guarded("engine thread", &batch.shared.array.path, || part(&batch))
            };
            batch.finish_part(result);
        });
    }

    pub(super) fn failed(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Records one part's end; the last part resolves the batch's ticket.
    pub(super) fn finish_part(&self, result: Result<()>) {
        if let Err(e) = result {
            self.error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(e);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let error = self
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let counters = &self.shared.counters;
        if error.is_none() {
            counters.batches.fetch_add(1, Ordering::Relaxed);
        }
        counters.batch_finished();
        let _ = self.job.done.send(error.map_or(Ok(()), Err));
    }
}

/// Runs a planned batch on the pool: chunks never written are filled with the fill value;
/// the others are read by the thread that decodes them, a group at a time, and decoded into
/// the output. Each group is a job of its own, queued first in first out: the pool's threads
/// finish one batch's groups before they start the next batch's, and no thread waits inside
/// one batch while it runs another (as a parallel iterator's join would), so a batch takes
/// as long as its own work.
pub(super) fn run_batch(
    shared: &Arc<Shared>,
    planned: Planned,
    job: Job,
    pool: &rayon::ThreadPool,
) {
    let groups = read_groups(&planned.reads);
    let batch = BatchRun::start(shared, planned, job, pool, groups.len());
    for group in groups {
        batch.spawn_part(pool, move |batch| {
            read_and_decode(batch, &batch.planned.reads[group])
        });
    }
}

/// Reads a group with this thread's reader into its buffer, and decodes it.
pub(super) fn read_and_decode(batch: &BatchRun, group: &[PlannedRead]) -> Result<()> {
    let (shared, planned, out) = (&*batch.shared, &batch.planned, &batch.job.out);
    with_local_io(shared, |reader, buf| {
        let starts = read_group(shared, planned, group, reader, buf, out)?;
        decode_group(shared, planned, group, buf, &starts, out)
    })
}

/// Runs `f` with this thread's reader and read buffer.
///
/// They are taken out of the thread's slot while they are used: a codec that decodes in
/// parallel (zarrs, on nested shards) makes this thread run other pool jobs while it waits,
/// and such a job, finding the slot empty, reads with a reader of its own.
pub(super) fn with_local_io<T>(
    shared: &Shared,
    f: impl FnOnce(&mut dyn Reader, &mut ReadBuf) -> Result<T>,
) -> Result<T> {
    let mut local = match LOCAL_IO.with(std::cell::RefCell::take) {
        Some(local) => local,
        None => LocalIo {
            reader: new_reader(shared.backend)?,
            buf: ReadBuf::new(),
        },
    };
    let result = f(local.reader.as_mut(), &mut local.buf);
    LOCAL_IO.with(|cell| cell.replace(Some(local)));
    result
}

/// Copies the fill value into the places of the chunks `tasks` of a batch that were never
/// written, the chunks found in the cache into theirs, and decodes those a reference set
/// holds inline into theirs.
pub(super) fn write_unread(
    shared: &Shared,
    planned: &Planned,
    tasks: &[usize],
    out: &OutBuffer,
) -> Result<()> {
    tasks.iter().try_for_each(|&t| match &planned.sources[t] {
        Source::Fill => {
            shared
                .counters
                .chunks_decoded
                .fetch_add(1, Ordering::Relaxed);
            fill_targets(shared, &planned.tasks[t], out)
        }
        Source::Cached(chunk) => copy_targets(shared, &planned.tasks[t], chunk, 0, out),
        Source::Inline(bytes) => decode_inline(shared, planned, t, bytes, out),
        Source::Encoded | Source::Awaited(_) => Ok(()),
    })
}

/// Writes chunk `t` of a batch, which an earlier batch decoded for it.
fn write_awaited(batch: &BatchRun, t: usize, resolved: Resolved) -> Result<()> {
    let (shared, task, out) = (&*batch.shared, &batch.planned.tasks[t], &batch.job.out);
    if batch.shared.cancel.load(Ordering::Relaxed) {
        return Err(Error::Stopped("the engine was closed".into()));
    }
    match resolved {
        Resolved::Chunk(chunk) => copy_targets(shared, task, &chunk, 0, out),
        Resolved::Fill => fill_targets(shared, task, out),
        Resolved::Failed => Err(Error::Stopped(format!(
            "{}: chunk {:?} was not decoded: the earlier batch decoding it failed or stopped",
            shared.array.path.display(),
            task.chunk
        ))),
    }
}

/// Reads one group of a batch's chunks: those that are each one contiguous run of one crop
/// straight into the output, the others back to back into `buf`, one request per run of
/// adjacent chunks. Returns where each of the others' bytes start in `buf`, in group order.
///
/// # Errors
/// [`Error::Io`] naming the file and chunk of a read that failed.
pub(super) fn read_group(
    shared: &Shared,
    planned: &Planned,
    group: &[PlannedRead],
    reader: &mut dyn Reader,
    buf: &mut ReadBuf,
    out: &OutBuffer,
) -> Result<Vec<usize>> {
    let Requests {
        direct,
        buffered,
        runs,
    } = Requests::of(group);
    let started = Instant::now();
    read_direct(planned, &direct, reader, out)?;
    let mut align = 1;
    let mut ops = Vec::with_capacity(runs.len());
    let mut skips = Vec::with_capacity(runs.len());
    for run in &runs {
        let (op, op_align, skip) = planned.direct_op(&buffered[run.clone()])?;
        align = align.max(op_align);
        ops.push(op);
        skips.push(skip);
    }
    let results = reader.read_packed(&ops, buf, align);
    shared.note_read_time(started.elapsed(), group.len());
    let counters = &shared.counters;
    let read_bytes: usize = group.iter().map(|read| read.len).sum();
    counters
        .bytes_read
        .fetch_add(read_bytes as u64, Ordering::Relaxed);
    counters
        .reads
        .fetch_add((direct.len() + ops.len()) as u64, Ordering::Relaxed);
    let mut starts = Vec::with_capacity(buffered.len());
    for ((run, (at, result)), skip) in runs.iter().zip(results).zip(skips) {
        let reads = &buffered[run.clone()];
        if let Err(e) = result {
            return Err(planned.failed_read(reads, e, reader));
        }
        let first = reads[0].offset;
        starts.extend(
            reads
                .iter()
                .map(|read| at + skip + (read.offset - first) as usize),
        );
    }
    Ok(starts)
}

/// Decodes a group that [`read_group`] read into `buf` into the output: `starts` says where
/// each of its reads not made straight into the output starts, in group order.
///
/// # Errors
/// [`Error::Corrupt`] naming the file and chunk of a chunk that does not decode.
pub(super) fn decode_group(
    shared: &Shared,
    planned: &Planned,
    group: &[PlannedRead],
    buf: &[u8],
    starts: &[usize],
    out: &OutBuffer,
) -> Result<()> {
    shared
        .counters
        .chunks_decoded
        .fetch_add(group.len() as u64, Ordering::Relaxed);
    let buffered = group.iter().filter(|read| read.direct.is_none());
    for (read, &at) in buffered.zip(starts) {
        let Some(bytes) = buf.get(at..at + read.len) else {
            return Err(Error::Stopped(format!(
                "internal error: chunk {:?} left its read buffer",
                planned.tasks[read.task].chunk
            )));
        };
        decode_read(shared, planned, read, bytes, out)?;
    }
    Ok(())
}

/// Reads the chunks that are each one contiguous run of one crop straight into the output.
fn read_direct(
    planned: &Planned,
    reads: &[&PlannedRead],
    reader: &mut dyn Reader,
    out: &OutBuffer,
) -> Result<()> {
    if reads.is_empty() {
        return Ok(());
    }
    let mut ops = Vec::with_capacity(reads.len());
    for read in reads {
        let (Some(file), Some(dst)) = (planned.file(read), read.direct) else {
            return Err(Error::Stopped(format!(
                "internal error: no open file or place for {read:?}"
            )));
        };
        if dst + read.len > out.len {
            return Err(Error::Stopped(format!(
                "internal error: a read for chunk {:?} left the batch",
                planned.tasks[read.task].chunk
            )));
        }
        // SAFETY: `dst..dst + len` lies in the output (checked above); only the pointer is
        // formed here, the kernel writes through it in `read_scattered`.
        let base = unsafe { out.ptr.add(dst) };
        ops.push(ScatterOp {
            file,
            offset: read.offset,
            iov: vec![libc::iovec {
                iov_base: base.cast(),
                iov_len: read.len,
            }],
        });
    }
    // SAFETY: each iovec is one run of the output that belongs to this read's chunk alone
    // (plan_batch: each output element is covered by exactly one target of one chunk, and a
    // direct read's chunk has one target), valid for writes while the batch runs
    // (`OutBuffer::new`).
    let results = unsafe { reader.read_scattered(&mut ops) };
    for (read, result) in reads.iter().zip(results) {
        result.map_err(|e| planned.read_error(read, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! How a batch's parts end it: its ticket resolves once, after its last part, with its
    //! first error; parts after a failure are skipped; chunks never written are the fill value.
    use std::path::Path;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    use crossbeam_channel::{bounded, Receiver, TryRecvError};
    use crossbeam_utils::sync::WaitGroup;

    use super::*;
    use crate::io::pread::PreadReader;
    use crate::io::Backend;
    use crate::pipeline::files::PlanCache;
    use crate::pipeline::planned::plan_reads;
    use crate::window::Window;
    use crate::zarr::ZarrArray;

    /// The fixture's (6, 10, 9) int16 array in shards of inner chunks (2, 4, 3); rows 4..6
    /// were never written and read as its fill value, -1.
    const CROP: [u64; 3] = [2, 4, 3];

    fn shared() -> Arc<Shared> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sharded_end_int16.zarr");
        let array = Arc::new(ZarrArray::open(path).unwrap());
        Arc::new(Shared::new(array, Window::crop(&CROP), Backend::Pread, None).unwrap())
    }

    fn planned(shared: &Shared, origins: &[Vec<u64>]) -> Planned {
        let mut cache = PlanCache::default();
        plan_reads(shared, &mut PreadReader, None, &mut cache, origins, &[]).unwrap()
    }

    fn job(out: &mut [u8], origins: &[Vec<u64>]) -> (Job, Receiver<Result<()>>) {
        let (done, done_rx) = bounded(1);
        // SAFETY: each test waits for the batch's ticket before it reads or drops `out`.
        let out = unsafe { OutBuffer::new(out.as_mut_ptr(), out.len()) };
        let job = Job {
            part: 0,
            origins: origins.to_vec(),
            out,
            done,
            _in_use: WaitGroup::new(),
        };
        (job, done_rx)
    }

    fn wait_for(condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(Instant::now() < deadline, "not reached in 30 s");
            std::thread::yield_now();
        }
    }

    #[test]
    fn chunks_never_written_are_the_fill_value_in_every_place_of_the_batch() {
        let shared = shared();
        // Crop 0 lies in rows 4..6 (never written); crop 1 straddles row 3 (written) and 4.
        let origins = vec![vec![4, 0, 0], vec![3, 4, 3]];
        let planned = planned(&shared, &origins);
        let crop_bytes = shared.crop_bytes;
        let mut out = vec![0u8; 2 * crop_bytes];
        let (job, done) = job(&mut out, &origins);
        let (pool, _threads) = crate::pool::build_pool("lsio-test", 2).unwrap();
        run_batch(&shared, planned, job, &pool);
        done.recv().unwrap().unwrap();
        let values: Vec<i16> = out
            .chunks(2)
            .map(|b| i16::from_ne_bytes([b[0], b[1]]))
            .collect();
        let per_crop = crop_bytes / 2;
        assert!(values[..per_crop].iter().all(|&v| v == -1));
        // Crop 1: its first row (array row 3) was written, its second (row 4) is the fill.
        let row = per_crop / 2;
        assert!(values[per_crop + row..].iter().all(|&v| v == -1));
        assert!(values[per_crop..per_crop + row].iter().any(|&v| v != -1));
        assert_eq!(shared.counters.snapshot().batches, 1);
    }

    #[test]
    fn a_batch_ends_after_its_last_part_with_its_first_error_and_skips_the_rest() {
        let shared = shared();
        let origins = vec![vec![4, 0, 0]];
        let planned = planned(&shared, &origins);
        let mut out = vec![0u8; shared.crop_bytes];
        let (job, done) = job(&mut out, &origins);
        let (pool, _threads) = crate::pool::build_pool("lsio-test", 2).unwrap();
        let batch = BatchRun::start(&shared, planned, job, &pool, 3);
        let (release, held) = bounded::<()>(0);
        batch.spawn_part(&pool, move |_| {
            held.recv().unwrap();
            Err(Error::Stopped("the second error".into()))
        });
        batch.spawn_part(&pool, |_| Err(Error::Stopped("the first error".into())));
        // Its fill part and the failing part end; the held one has not.
        wait_for(|| batch.failed() && batch.remaining.load(Ordering::Acquire) == 2);
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        batch.spawn_part(&pool, move |_| {
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        wait_for(|| batch.remaining.load(Ordering::Acquire) == 1);
        assert_eq!(done.try_recv().unwrap_err(), TryRecvError::Empty);
        release.send(()).unwrap();
        let error = done.recv().unwrap().unwrap_err();
        assert!(error.to_string().contains("the first error"), "{error}");
        assert!(!ran.load(Ordering::SeqCst), "a part after the failure ran");
        assert_eq!(shared.counters.snapshot().batches, 0);
        // Resolved once: when the last holder of the batch lets go, no second answer came.
        drop(batch);
        wait_for(|| match done.try_recv() {
            Ok(again) => panic!("a second answer: {again:?}"),
            Err(e) => e == TryRecvError::Disconnected,
        });
    }
}
