//! The engine: a planning thread, and a pool of engine threads that read and decode; each
//! batch written straight into the caller's output buffer and announced on its own ticket.
//!
//! ```text
//! submit ─jobs─▶ planner: crops → chunks, files, shard indexes ─▶ pool: read a group, decode ─▶ ticket
//!                                                    (io_threads > 0: I/O threads read, the pool decodes)
//! ```
//! Batches are bounded by the caller (it holds at most `prefetch` tickets) and finish in
//! any order; tickets are waited in submission order, so batches leave in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::sync::WaitGroup;

use super::batch::run_batch;
use super::files::PlanCache;
use super::io_stage::IoStage;
use super::planned::{advise, plan_reads, read_only_what_crops_need};
use super::remote;
use super::shared::{guarded, Counters, Job, OutBuffer, Shared, Stats};
use crate::cache::{ChunkCache, DiskCache};
use crate::cast::Cast;
use crate::error::{Error, Result};
use crate::io::remote::Net;
use crate::io::{new_reader, open_files, Backend, Reader};
use crate::pool::build_pool;
use crate::window::Window;
use crate::zarr::ZarrArray;

/// Jobs that may wait for the I/O thread.
const QUEUED_JOBS: usize = 64;

/// Threads and backend for an engine, whatever the number of its arrays.
#[derive(Clone)]
pub struct EngineConfig {
    /// Threads that decode chunks. With no I/O threads they read the chunks they decode
    /// too, each with its own ring (or its own preads).
    pub threads: usize,
    /// Threads that only read, each with its own ring, handing what they read to the decode
    /// threads; 0 leaves the reading to the decode threads.
    pub io_threads: usize,
    pub backend: Backend,
    /// Read chunks with direct I/O (`O_DIRECT`), bypassing the page cache, where the file
    /// system allows it.
    pub direct_io: bool,
    /// A chunk cache that outlives the engine; each array's chunks are keyed by its number
    /// among the engine's parts.
    pub cache: Option<Arc<ChunkCache>>,
    /// Where the compressed bytes of remote arrays' chunks are kept on local disk (unused
    /// for local arrays).
    pub disk_cache: Option<Arc<DiskCache>>,
}

/// One array an engine reads, and what each sample reads of it.
#[derive(Clone)]
pub struct Part {
    pub array: Arc<ZarrArray>,
    pub window: Window,
    /// The output's element type and normalisation; `None` writes the array's own type.
    pub cast: Option<Cast>,
}

impl Part {
    /// An array read in crops of `crop`, in its own type.
    #[must_use]
    pub fn crop(array: Arc<ZarrArray>, crop: &[u64]) -> Self {
        Self {
            array,
            window: Window::crop(crop),
            cast: None,
        }
    }
}

/// The completion of one batch: one answer per array of the engine.
pub struct Ticket {
    done: Vec<Receiver<Result<()>>>,
    /// The answers already in, and the first error among them.
    answered: usize,
    error: Option<Error>,
}

impl Ticket {
    /// Blocks until the batch is written (every array's part of it), or says why it was not.
    ///
    /// # Errors
    /// The batch's first error: a corrupt chunk, a failed read, or [`Error::Stopped`].
    pub fn wait(&mut self) -> Result<()> {
        loop {
            if let Some(result) = self.wait_timeout(Duration::from_secs(3600)) {
                return result;
            }
        }
    }

    /// Like [`Ticket::wait`], but gives up after `timeout`: `None` when the batch is not
    /// finished yet (the caller may wait again). The batch is finished only when every
    /// array's part is, failed or not: nothing writes its outputs after this returns `Some`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<()>> {
        let deadline = Instant::now() + timeout;
        while let Some(done) = self.done.get(self.answered) {
            let left = deadline.saturating_duration_since(Instant::now());
            let result = match done.recv_timeout(left) {
                Ok(result) => result,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    Err(Error::Stopped("the batch was dropped unfinished".into()))
                }
            };
            self.answered += 1;
            if let Err(e) = result {
                self.error.get_or_insert(e);
            }
        }
        Some(self.error.take().map_or(Ok(()), Err))
    }
}

/// A running engine for the arrays of a dataset: one planning thread, one pool of engine
/// threads (each with its own ring), at most one network runtime and one budget of requests
/// in flight, whatever the number of arrays.
pub struct Engine {
    parts: Vec<Arc<Shared>>,
    jobs: Option<Sender<Vec<Job>>>,
    io_thread: Option<JoinHandle<()>>,
    in_use: Option<WaitGroup>,
    backend: Backend,
    cancel: Arc<AtomicBool>,
    stopping: Arc<tokio::sync::Notify>,
    counters: Arc<Counters>,
}

impl Engine {
    /// Starts the planning thread, the decode pool, and the I/O threads or the network
    /// runtime where they are needed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for no parts, a window that does not fit its array, or a
    /// store that refuses its configuration; [`Error::Stopped`] when threads or the ring
    /// cannot be created.
    pub fn start(parts: Vec<Part>, config: EngineConfig) -> Result<Self> {
        if parts.is_empty() {
            return Err(Error::InvalidArgument("an engine needs an array".into()));
        }
        let (counters, cancel, stopping) = (
            Arc::<Counters>::default(),
            Arc::<AtomicBool>::default(),
            Arc::<tokio::sync::Notify>::default(),
        );
        // One runtime, with the bounds of the first remote array's settings (the arrays of a
        // dataset are given the same options).
        let net = match parts.iter().find_map(|p| p.array.location.remote()) {
            Some(store) => Some(Net::start(&store.settings)?),
            None => None,
        };
        let mut clients = Vec::new();
        let mut shared_parts = Vec::with_capacity(parts.len());
        for (id, part) in parts.into_iter().enumerate() {
            let mut shared = Shared::new(part.array, part.window, config.backend, part.cast)?;
            shared.direct_io = config.direct_io;
            shared.counters = Arc::clone(&counters);
            shared.cancel = Arc::clone(&cancel);
            shared.stopping = Arc::clone(&stopping);
            let stores = shared.array.location.stores().to_vec();
            let remote = stores.first().cloned();
            // A local chunk stored as its elements is a copy out of the page cache already: a
            // cache would add a copy and save no decode (measured on raw: 0.5x with a quarter
            // of it cached), so only such chunks in object stores are kept.
            if !shared.as_stored || remote.is_some() {
                let id = u32::try_from(id).unwrap_or(u32::MAX);
                shared.cache = config.cache.as_ref().map(|c| (Arc::clone(c), id));
            }
            if remote.is_some() {
                shared.disk_cache.clone_from(&config.disk_cache);
                for store in &stores {
                    shared.clients.push(Net::client(store, &mut clients)?);
                }
            }
            shared_parts.push(Arc::new(shared));
        }
        // The planner reads shard indexes with preads: rings are the engine threads' alone.
        let reader = new_reader(Backend::Pread)?;
        let (decode, decode_exited) = build_pool("lsio-decode", config.threads)?;
        let decode = Arc::new(decode);
        let stage = match config.io_threads {
            _ if net.is_some() => None,
            0 => None,
            n => Some(IoStage::start(
                &shared_parts[0],
                n,
                config.threads,
                &decode,
            )?),
        };
        let (jobs, job_rx) = crossbeam_channel::bounded::<Vec<Job>>(QUEUED_JOBS);
        let thread_parts = shared_parts.clone();
        let io_thread = std::thread::Builder::new()
            .name("lsio-plan".into())
            .spawn(move || {
                let stages = Stages {
                    pool: &decode,
                    io: stage.as_ref(),
                    net: net.as_ref(),
                };
                plan_loop(&thread_parts, reader, &stages, &job_rx);
                // Requests still open are cancelled and the runtime's threads joined; then
                // the I/O threads exit once the groups queued are read, and the pool once
                // the chunks queued are decoded.
                drop(net);
                drop(stage);
                drop(decode);
                decode_exited.wait();
            })
            .map_err(|e| Error::Stopped(format!("starting the I/O thread: {e}")))?;
        Ok(Self {
            parts: shared_parts,
            jobs: Some(jobs),
            io_thread: Some(io_thread),
            in_use: Some(WaitGroup::new()),
            backend: config.backend,
            cancel,
            stopping,
            counters,
        })
    }

    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The arrays this engine reads, in the order of its parts.
    pub fn arrays(&self) -> impl Iterator<Item = &ZarrArray> {
        self.parts.iter().map(|p| p.array.as_ref())
    }

    /// Bytes of one crop of part `part` in the output (0 for a part it does not have).
    #[must_use]
    pub fn crop_bytes(&self, part: usize) -> usize {
        self.parts.get(part).map_or(0, |p| p.crop_bytes)
    }

    /// Part `part`'s output element type: its cast's, or its array's own.
    #[must_use]
    pub fn out_dtype(&self, part: usize) -> Option<&'static str> {
        let p = self.parts.get(part)?;
        Some(p.cast.map_or(p.array.dtype.name(), |c| c.to().name()))
    }

    /// Counters since the engine started, over all its arrays.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Queues a batch: for each part in order, the origins of its crops and the buffer they
    /// are written into.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] for an origin whose crop leaves its array,
    /// [`Error::InvalidArgument`] for another number of parts than the engine's, or a buffer
    /// that is not exactly its part's batch, [`Error::Stopped`] after [`Engine::close`].
    pub fn submit(&self, batch: Vec<(Vec<Vec<u64>>, OutBuffer)>) -> Result<Ticket> {
        if batch.len() != self.parts.len() {
            return Err(Error::InvalidArgument(format!(
                "a batch of {} arrays for an engine of {}",
                batch.len(),
                self.parts.len()
            )));
        }
        for (shared, (origins, out)) in self.parts.iter().zip(&batch) {
            check_batch(shared, origins, out)?;
        }
        let (Some(jobs), Some(in_use)) = (&self.jobs, &self.in_use) else {
            return Err(Error::Stopped("the engine is closed".into()));
        };
        let mut done = Vec::with_capacity(batch.len());
        let mut parts = Vec::with_capacity(batch.len());
        let files_at_once = (open_files::budget() / 2).max(1);
        for (part, (shared, (origins, out))) in self.parts.iter().zip(batch).enumerate() {
            let pieces = if shared.array.location.remote().is_none() {
                pieces_within_budget(shared, &origins, files_at_once)
            } else {
                std::iter::once(0..origins.len()).collect()
            };
            for piece in pieces {
                let (sender, receiver) = crossbeam_channel::bounded(1);
                done.push(receiver);
                self.counters.batch_started();
                let at = piece.start * shared.crop_bytes;
                let len = piece.len() * shared.crop_bytes;
                // SAFETY: `at..at + len` lies inside `out` (the pieces split its crops, and
                // `check_batch` checked it holds them all), which the caller promised valid
                // until the ticket resolves; the pieces are disjoint.
                let out = unsafe { OutBuffer::new(out.ptr.add(at), len) };
                parts.push(Job {
                    part,
                    origins: origins[piece].to_vec(),
                    out,
                    done: sender,
                    _in_use: in_use.clone(),
                });
            }
        }
        let count = parts.len();
        jobs.send(parts).map_err(|_| {
            for _ in 0..count {
                self.counters.batch_finished();
            }
            Error::Stopped("the I/O thread has exited".into())
        })?;
        Ok(Ticket {
            done,
            answered: 0,
            error: None,
        })
    }

    /// Stops the threads. Batches not yet finished resolve with [`Error::Stopped`]; when this
    /// returns, every engine thread has exited and none writes to any output buffer.
    pub fn close(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.stopping.notify_waiters();
        self.jobs = None;
        let Some(thread) = self.io_thread.take() else {
            return;
        };
        let _ = thread.join();
        if let Some(in_use) = self.in_use.take() {
            in_use.wait();
        }
        // The files this iteration kept open are let go, as its threads are: a later one
        // opens what it reads anew (and sees files replaced since).
        crate::io::open_files::close_idle();
        release_freed_memory();
    }
}

/// Splits a local array's part of a batch into runs of crops that each open at most
/// `files_at_once` chunk or shard files: a batch holds the files it reads until it ends, and
/// the process's descriptor budget counts them (a single crop is never split).
fn pieces_within_budget(
    shared: &Shared,
    origins: &[Vec<u64>],
    files_at_once: usize,
) -> Vec<std::ops::Range<usize>> {
    let array = &shared.array;
    // Most batches need far fewer files than the budget: counted only when they might not.
    if origins.len().saturating_mul(files_per_crop_at_most(shared)) <= files_at_once {
        return std::iter::once(0..origins.len()).collect();
    }
    let mut pieces = Vec::new();
    let (mut start, mut files) = (0, std::collections::HashSet::new());
    for (i, origin) in origins.iter().enumerate() {
        let mine: std::collections::HashSet<Vec<u64>> = shared
            .window
            .boxes(origin)
            .iter()
            .flat_map(|b| b.in_array.chunks_touched(array.leaf_shape()))
            .map(|chunk| array.locate(&chunk).file)
            .collect();
        if i > start && files.union(&mine).count() > files_at_once {
            pieces.push(start..i);
            start = i;
            files.clear();
        }
        files.extend(mine);
    }
    pieces.push(start..origins.len());
    pieces
}

/// The most chunk or shard files one crop can touch, wherever it lies: per box of its window,
/// the files a run of its length can straddle along each dimension, multiplied.
fn files_per_crop_at_most(shared: &Shared) -> usize {
    let array = &shared.array;
    let per_file: Vec<u64> = array
        .leaf_shape()
        .iter()
        .zip(array.leaves_per_file())
        .map(|(leaf, n)| leaf * n)
        .collect();
    let origin = vec![0; per_file.len()];
    shared
        .window
        .boxes(&origin)
        .iter()
        .map(|b| {
            b.in_array
                .shape
                .iter()
                .zip(&per_file)
                .map(|(&len, &f)| usize::try_from(len.saturating_sub(1).div_ceil(f.max(1)) + 1))
                .try_fold(1usize, |acc, n| acc.checked_mul(n.ok()?))
                .unwrap_or(usize::MAX)
        })
        .fold(0usize, usize::saturating_add)
}

/// Checks one part of a batch before it is queued: every crop inside its array, and a buffer
/// of exactly the batch's bytes.
fn check_batch(shared: &Shared, origins: &[Vec<u64>], out: &OutBuffer) -> Result<()> {
    let shape = &shared.array.shape;
    for (i, origin) in origins.iter().enumerate() {
        if !shared.window.fits(origin, shape) {
            return Err(Error::OutOfBounds(format!(
                "{}: crop {i} at origin {origin:?} reaching {:?} leaves the array of shape {shape:?}",
                shared.array.path.display(),
                shared.window.span()
            )));
        }
    }
    let expected = origins.len().checked_mul(shared.crop_bytes);
    if expected != Some(out.len) {
        return Err(Error::InvalidArgument(format!(
            "{}: output buffer holds {} bytes, a batch of {} crops of {} bytes needs {}",
            shared.array.path.display(),
            out.len,
            origins.len(),
            shared.crop_bytes,
            expected.map_or_else(|| "more than 2**64".to_string(), |n| n.to_string()),
        )));
    }
    Ok(())
}

/// Hands memory the engine's threads freed back to the system: glibc keeps the arenas of
/// exited threads, and without this each epoch's engine leaves a little more resident.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

/// What runs a planned batch: the pool, and the I/O threads or the runtime when there are.
struct Stages<'a> {
    pool: &'a Arc<rayon::ThreadPool>,
    io: Option<&'a IoStage>,
    net: Option<&'a Net>,
}

/// The planning thread: plans each batch, array by array (files, shard indexes, byte
/// ranges), and hands each array's part to the pool (through the I/O threads or the runtime),
/// which reads and decodes it while the next is planned.
fn plan_loop(
    parts: &[Arc<Shared>],
    mut reader: Box<dyn Reader>,
    stages: &Stages<'_>,
    jobs: &Receiver<Vec<Job>>,
) {
    let mut caches: Vec<PlanCache> = parts.iter().map(|_| PlanCache::default()).collect();
    // Batches submitted behind the one being planned: an object store's shard indexes are
    // fetched for them too, in the same round trip.
    let mut queued: VecDeque<Vec<Job>> = VecDeque::new();
    loop {
        let Some(batch) = queued.pop_front().or_else(|| jobs.recv().ok()) else {
            break;
        };
        if stages.net.is_some() {
            queued.extend(jobs.try_iter());
        }
        for job in batch {
            let a = job.part;
            let (shared, cache) = (&parts[a], &mut caches[a]);
            let ahead: Vec<&[Vec<u64>]> = queued
                .iter()
                .flatten()
                .filter(|j| j.part == a)
                .map(|j| j.origins.as_slice())
                .collect();
            plan_part(shared, reader.as_mut(), stages, cache, job, &ahead);
        }
    }
}

/// Plans one array's part of a batch and sets it running.
fn plan_part(
    shared: &Arc<Shared>,
    reader: &mut dyn Reader,
    stages: &Stages<'_>,
    cache: &mut PlanCache,
    job: Job,
    ahead: &[&[Vec<u64>]],
) {
    if shared.cancel.load(Ordering::Relaxed) {
        shared.counters.batch_finished();
        let _ = job
            .done
            .send(Err(Error::Stopped("the engine was closed".into())));
        return;
    }
    // The runtime is for the arrays in object stores.
    let net = stages
        .net
        .filter(|_| shared.array.location.remote().is_some());
    let planned = guarded("planning thread", &shared.array.path, || {
        let mut planned = plan_reads(shared, reader, net, cache, &job.origins, ahead)?;
        read_only_what_crops_need(shared, &mut planned)?;
        Ok(planned)
    });
    let planned = match planned {
        Err(e) => {
            shared.counters.batch_finished();
            let _ = job.done.send(Err(e));
            return;
        }
        Ok(planned) => planned,
    };
    if let Some(net) = net {
        remote::run_remote(shared, net, planned, job, stages.pool);
        return;
    }
    if shared.reads_wait.load(Ordering::Relaxed) && !shared.direct_io {
        advise(reader, &planned);
    }
    if let Some(stage) = stages.io {
        stage.run(shared, planned, job, stages.pool);
        return;
    }
    run_batch(shared, planned, job, stages.pool);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::window::Run;

    fn fixture() -> Arc<ZarrArray> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sharded_end_int16.zarr");
        Arc::new(ZarrArray::open(path).unwrap())
    }

    fn config() -> EngineConfig {
        EngineConfig {
            threads: 2,
            io_threads: 0,
            backend: Backend::Pread,
            direct_io: false,
            cache: None,
            disk_cache: None,
        }
    }

    fn engine() -> Engine {
        Engine::start(vec![Part::crop(fixture(), &[2, 4, 3])], config()).unwrap()
    }

    fn buffer(out: &mut [u8]) -> OutBuffer {
        // SAFETY: every ticket is waited for (or refused) before `out` is dropped, and the
        // engine is closed before the test ends.
        unsafe { OutBuffer::new(out.as_mut_ptr(), out.len()) }
    }

    fn submit(engine: &Engine, origins: Vec<Vec<u64>>, out: &mut [u8]) -> Result<Ticket> {
        engine.submit(vec![(origins, buffer(out))])
    }

    #[test]
    fn crops_leaving_the_array_and_buffers_of_the_wrong_size_are_refused_before_reading() {
        let mut engine = engine();
        assert_eq!(engine.crop_bytes(0), 2 * 4 * 3 * 2);
        let mut out = vec![0u8; 2 * engine.crop_bytes(0)];
        // The array is (6, 10, 9): a crop of 2 rows starts at row 4 at most.
        let e = submit(&engine, vec![vec![0, 0, 0], vec![5, 0, 0]], &mut out)
            .err()
            .expect("refused");
        assert!(matches!(e, Error::OutOfBounds(_)), "{e:?}");
        assert!(e.to_string().contains("crop 1 at origin [5, 0, 0]"), "{e}");
        let e = submit(&engine, vec![vec![0, 0]; 2], &mut out)
            .err()
            .expect("refused");
        assert!(matches!(e, Error::OutOfBounds(_)), "{e:?}");
        let e = submit(&engine, vec![vec![4, 6, 6]], &mut out)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("holds 96 bytes") && e.to_string().contains("needs 48"));
        assert_eq!(engine.stats().bytes_read, 0);
        assert_eq!(engine.stats().batches, 0);
        // The largest origins fit.
        let mut ticket = submit(&engine, vec![vec![4, 6, 6], vec![0, 0, 0]], &mut out).unwrap();
        ticket.wait().unwrap();
        assert_eq!(engine.stats().batches, 1);
        engine.close();
    }

    #[test]
    fn a_closed_engine_refuses_batches_and_its_threads_are_gone() {
        let mut engine = engine();
        let mut out = vec![0u8; engine.crop_bytes(0)];
        submit(&engine, vec![vec![0, 0, 0]], &mut out)
            .unwrap()
            .wait()
            .unwrap();
        engine.close();
        assert!(engine.io_thread.is_none());
        let e = submit(&engine, vec![vec![0, 0, 0]], &mut out)
            .err()
            .expect("refused");
        assert!(matches!(e, Error::Stopped(_)), "{e:?}");
        engine.close(); // a second close does nothing
    }

    #[test]
    fn one_engine_reads_several_arrays_and_a_batch_ends_when_all_have() {
        // The same array twice, read in two windows: a crop, and rows 0 and 3 of two columns.
        let rows = Window::new(vec![
            vec![Run { offset: 0, len: 1 }, Run { offset: 3, len: 1 }],
            vec![Run { offset: 0, len: 10 }],
            vec![Run { offset: 0, len: 2 }],
        ])
        .unwrap();
        let parts = vec![
            Part::crop(fixture(), &[2, 4, 3]),
            Part {
                array: fixture(),
                window: rows,
                cast: None,
            },
        ];
        let mut engine = Engine::start(parts, config()).unwrap();
        assert_eq!(engine.crop_bytes(1), 2 * 10 * 2 * 2);
        let (mut a, mut b) = (
            vec![0u8; engine.crop_bytes(0)],
            vec![0u8; engine.crop_bytes(1)],
        );
        let e = engine
            .submit(vec![(vec![vec![0, 0, 0]], buffer(&mut a))])
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .contains("a batch of 1 arrays for an engine of 2"),
            "{e}"
        );
        let batch = vec![
            (vec![vec![1, 2, 3]], buffer(&mut a)),
            (vec![vec![2, 0, 7]], buffer(&mut b)),
        ];
        engine.submit(batch).unwrap().wait().unwrap();
        engine.close();
        // Both equal a read of the whole array.
        let mut whole = vec![0u8; 6 * 10 * 9 * 2];
        let mut one = Engine::start(vec![Part::crop(fixture(), &[6, 10, 9])], config()).unwrap();
        submit(&one, vec![vec![0, 0, 0]], &mut whole)
            .unwrap()
            .wait()
            .unwrap();
        one.close();
        let at = |i: usize, j: usize, k: usize| {
            let e = (i * 90 + j * 9 + k) * 2;
            [whole[e], whole[e + 1]]
        };
        for (n, (i, j, k)) in (0..2)
            .flat_map(|i| (0..4).flat_map(move |j| (0..3).map(move |k| (i, j, k))))
            .enumerate()
        {
            assert_eq!(a[n * 2..n * 2 + 2], at(1 + i, 2 + j, 3 + k));
        }
        for (n, (i, j, k)) in [2usize, 5]
            .into_iter()
            .flat_map(|i| (0..10).flat_map(move |j| (0..2).map(move |k| (i, j, k))))
            .enumerate()
        {
            assert_eq!(b[n * 2..n * 2 + 2], at(i, j, 7 + k));
        }
    }

    #[test]
    fn a_crop_touches_at_most_the_files_its_runs_can_straddle() {
        // Shards of (4, 8, 6) elements; the array is (6, 10, 9).
        let shared = |window: Window| Shared::new(fixture(), window, Backend::Pread, None).unwrap();
        // 2 rows straddle at most 2 shards, 4 columns 2, 3 of the last dimension 2: 8 files.
        let crop = shared(Window::crop(&[2, 4, 3]));
        assert_eq!(files_per_crop_at_most(&crop), 8);
        let origins: Vec<Vec<u64>> = vec![vec![3, 4, 2]];
        assert_eq!(pieces_within_budget(&crop, &origins, 8), vec![0..1]);
        // Two runs of one row each along the first dimension: 2 boxes of 1 × 2 × 2 files.
        let rows = Window::new(vec![
            vec![Run { offset: 0, len: 1 }, Run { offset: 3, len: 1 }],
            vec![Run { offset: 0, len: 4 }],
            vec![Run { offset: 0, len: 3 }],
        ])
        .unwrap();
        assert_eq!(files_per_crop_at_most(&shared(rows)), 8);
        // Past the bound, the crops are counted: three crops in distinct shards, 2 at once.
        let spread: Vec<Vec<u64>> = vec![vec![0, 0, 0], vec![4, 5, 6], vec![0, 8, 0]];
        let tiny = shared(Window::crop(&[1, 1, 1]));
        assert_eq!(pieces_within_budget(&tiny, &spread, 2), vec![0..2, 2..3]);
    }
}
