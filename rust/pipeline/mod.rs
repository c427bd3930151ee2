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
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::sync::WaitGroup;

mod batch;
mod decode;
mod files;
mod groups;
mod io_stage;
mod planned;
mod remote;

pub(crate) use files::PlanCache;
pub(crate) use groups::requested_ranges;
pub(crate) use planned::{plan_reads, read_all, read_only_what_crops_need};
pub(crate) use remote::requested_objects;

use batch::run_batch;
use io_stage::IoStage;
use planned::advise;

use crate::cache::{ChunkCache, DiskCache, Key};
use crate::cast::Cast;
use crate::error::{Error, Result};
use crate::io::remote::Net;
use crate::io::{new_reader, Backend, Reader};
use crate::plan::ChunkTask;
use crate::pool::build_pool;
use crate::sampler::check_crop;
use crate::window::Window;
use crate::zarr::{limits, ZarrArray};

/// Jobs that may wait for the I/O thread.
const QUEUED_JOBS: usize = 64;

/// Threads and backend for an engine.
#[derive(Clone)]
pub struct EngineConfig {
    /// Threads that decode chunks. With no I/O threads they read the chunks they decode
    /// too, each with its own ring (or its own preads).
    pub threads: usize,
    /// Threads that only read, each with its own ring, handing what they read to the decode
    /// threads; 0 leaves the reading to the decode threads.
    pub io_threads: usize,
    pub backend: Backend,
    /// The output's element type and normalisation; `None` writes the array's own type.
    pub cast: Option<Cast>,
    /// Read chunks with direct I/O (`O_DIRECT`), bypassing the page cache, where the file
    /// system allows it.
    pub direct_io: bool,
    /// A chunk cache that outlives the engine, and this array's number in it.
    pub cache: Option<(Arc<ChunkCache>, u32)>,
    /// Where the compressed bytes of a remote array's chunks are kept on local disk (unused
    /// for a local array).
    pub disk_cache: Option<Arc<DiskCache>>,
}

/// Memory the caller lends the engine for one batch: `[crops, *crop]` elements, C order.
#[derive(Debug)]
pub struct OutBuffer {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is only written by the decode tasks of its own batch, in disjoint runs
// (each output element belongs to exactly one target of one chunk), and the caller of
// `Engine::submit` promises it stays valid until the ticket resolves or the engine is dropped.
unsafe impl Send for OutBuffer {}
// SAFETY: as above; shared references only ever write disjoint runs.
unsafe impl Sync for OutBuffer {}

impl OutBuffer {
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes for as long as the engine may write it:
    /// until the batch's ticket resolves, or until the engine has been dropped.
    #[must_use]
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        Self { ptr, len }
    }
}

/// The completion of one batch.
pub struct Ticket {
    done: Receiver<Result<()>>,
}

impl Ticket {
    /// Blocks until the batch is written, or says why it was not.
    ///
    /// # Errors
    /// The batch's error: a corrupt chunk, a failed read, or [`Error::Stopped`].
    pub fn wait(&self) -> Result<()> {
        self.done
            .recv()
            .unwrap_or_else(|_| Err(Error::Stopped("the batch was dropped unfinished".into())))
    }

    /// Like [`Ticket::wait`], but gives up after `timeout`: `None` when the batch is not
    /// finished yet (the caller may wait again).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<()>> {
        match self.done.recv_timeout(timeout) {
            Ok(result) => Some(result),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Some(Err(Error::Stopped(
                "the batch was dropped unfinished".into(),
            ))),
        }
    }
}

/// What an engine has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Batches written.
    pub batches: u64,
    /// Chunk bytes read from files (shard indexes included).
    pub bytes_read: u64,
    /// Chunks decoded (or copied from the fill value, for chunks never written).
    pub chunks_decoded: u64,
    /// Read requests issued for chunks (fewer than the chunks read where adjacent ones are
    /// read together).
    pub reads: u64,
    /// Chunk and shard files opened (each kept open from batch to batch).
    pub files_opened: u64,
    /// Of those, the ones also opened for direct I/O.
    pub files_direct: u64,
    /// Seconds the engine had no batch to work on: waiting for the consumer.
    pub engine_wait_s: f64,
}

/// The engine's counters, updated by its threads.
#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    bytes_read: AtomicU64,
    chunks_decoded: AtomicU64,
    reads: AtomicU64,
    files_opened: AtomicU64,
    files_direct: AtomicU64,
    /// Batches submitted and not finished.
    in_flight: AtomicUsize,
    idle: Mutex<Idle>,
}

/// Time with no batch in flight.
struct Idle {
    since: Option<Instant>,
    total: Duration,
}

impl Default for Idle {
    fn default() -> Self {
        Self {
            since: Some(Instant::now()),
            total: Duration::ZERO,
        }
    }
}

impl Counters {
    fn batch_started(&self) {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut idle = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(since) = idle.since.take() {
                idle.total += since.elapsed();
            }
        }
    }

    fn batch_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut idle = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            idle.since = Some(Instant::now());
        }
    }

    fn snapshot(&self) -> Stats {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let waited = idle.total + idle.since.map_or(Duration::ZERO, |s| s.elapsed());
        Stats {
            batches: self.batches.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            chunks_decoded: self.chunks_decoded.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            files_opened: self.files_opened.load(Ordering::Relaxed),
            files_direct: self.files_direct.load(Ordering::Relaxed),
            engine_wait_s: waited.as_secs_f64(),
        }
    }
}

struct Job {
    origins: Vec<Vec<u64>>,
    out: OutBuffer,
    done: Sender<Result<()>>,
    /// Held until the batch is finished with its buffer; `Engine::drop` waits for all.
    _in_use: WaitGroup,
}

/// What the engine shares between its threads.
pub(crate) struct Shared {
    pub(crate) array: Arc<ZarrArray>,
    /// What one sample reads.
    pub(crate) window: Window,
    /// The shape of one sample's output.
    pub(crate) crop: Vec<u64>,
    /// Bytes of one crop in the output (of the output's element type).
    crop_bytes: usize,
    cast: Option<Cast>,
    /// Chunks are stored as their elements: nothing to decode, so only the bytes the crops
    /// need are read (`read_only_what_crops_need`) and laid out from the read buffer.
    as_stored: bool,
    counters: Counters,
    pub(crate) leaf_bytes: usize,
    /// One element of the fill value, of the output's type: what chunks never written read as.
    fill_out: Vec<u8>,
    pub(crate) leaf_shape: Vec<std::num::NonZeroU64>,
    /// The backend each engine thread opens its reader with.
    backend: Backend,
    cancel: AtomicBool,
    /// Wakes what waits for a remote store when the engine is closed.
    stopping: tokio::sync::Notify,
    /// The last group of reads waited for the disk: batches are then advised ahead.
    reads_wait: AtomicBool,
    /// Chunk files are opened for direct I/O too (see [`EngineConfig::direct_io`]).
    direct_io: bool,
    /// Decoded chunks kept past the batch, and this array's number among the cache's.
    cache: Option<(Arc<ChunkCache>, u32)>,
    /// A remote array's chunk bytes kept on local disk.
    pub(crate) disk_cache: Option<Arc<DiskCache>>,
}

impl Shared {
    /// # Errors
    /// [`Error::InvalidArgument`] for a window that does not fit the array.
    pub(crate) fn new(
        array: Arc<ZarrArray>,
        window: Window,
        backend: Backend,
        cast: Option<Cast>,
    ) -> Result<Self> {
        check_crop(&array.shape, &window.span())?;
        let crop = window.out_shape();
        let element = array.dtype.size();
        let out_element = cast.map_or(element, |c| c.to().size());
        // The array's size was checked when it was opened; a crop is no larger, but a cast may
        // widen its elements.
        let crop_bytes = limits::box_bytes(&array.path, "crop", &crop, out_element)? as usize;
        let leaf_bytes = array.leaf_bytes();
        let mut fill_out = array.fill_value.clone();
        if let Some(cast) = &cast {
            fill_out = vec![0; out_element];
            cast.convert(&array.fill_value, &mut fill_out, 1);
        }
        Ok(Self {
            fill_out,
            leaf_bytes,
            leaf_shape: array.leaf_shape_nonzero(),
            as_stored: array.leaf_codecs().is_stored_as_is(),
            array,
            window,
            crop,
            crop_bytes,
            cast,
            counters: Counters::default(),
            backend,
            cancel: AtomicBool::new(false),
            stopping: tokio::sync::Notify::new(),
            reads_wait: AtomicBool::new(true),
            direct_io: false,
            cache: None,
            disk_cache: None,
        })
    }

    /// A chunk's key in the chunk cache.
    pub(crate) fn cache_key(&self, task: &ChunkTask) -> Key {
        let array = self.cache.as_ref().map_or(0, |(_, id)| *id);
        (array, task.chunk.clone().into_boxed_slice())
    }
}

/// Reads slower than this per chunk, on average over a group, waited for the disk: from the
/// page cache a chunk of a few hundred kB takes tens of microseconds.
const DISK_WAIT_PER_READ: Duration = Duration::from_micros(150);

impl Shared {
    /// Records how long a group of `reads` chunk reads took: whether they waited for the disk.
    fn note_read_time(&self, elapsed: Duration, reads: usize) {
        let waited = elapsed > DISK_WAIT_PER_READ * reads.max(1) as u32;
        self.reads_wait.store(waited, Ordering::Relaxed);
    }
}

/// A running engine for one array and one crop shape.
pub struct Engine {
    shared: Arc<Shared>,
    jobs: Option<Sender<Job>>,
    io_thread: Option<JoinHandle<()>>,
    in_use: Option<WaitGroup>,
    backend: Backend,
}

impl Engine {
    /// Starts the I/O thread and the decode pool.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a window that does not fit the array;
    /// [`Error::Stopped`] when threads or the ring cannot be created.
    pub fn start(array: Arc<ZarrArray>, window: Window, config: EngineConfig) -> Result<Self> {
        let mut shared = Shared::new(array, window, config.backend, config.cast)?;
        shared.direct_io = config.direct_io;
        // A local chunk stored as its elements is a copy out of the page cache already: a
        // cache would add a copy and save no decode (measured on raw: 0.5x with a quarter of
        // it cached), so only such chunks in object stores are kept.
        if !shared.as_stored || shared.array.location.remote().is_some() {
            shared.cache = config.cache;
        }
        if shared.array.location.remote().is_some() {
            shared.disk_cache = config.disk_cache;
        }
        let shared = Arc::new(shared);
        let reader = new_reader(config.backend)?;
        // A remote array's runtime; it reads with it, and with no I/O threads.
        let net = match shared.array.location.remote() {
            Some(store) => Some(Net::start(store)?),
            None => None,
        };
        let (decode, decode_exited) = build_pool("lsio-decode", config.threads)?;
        let decode = Arc::new(decode);
        let stage = match config.io_threads {
            _ if net.is_some() => None,
            0 => None,
            n => Some(IoStage::start(&shared, n, config.threads, &decode)?),
        };
        let (jobs, job_rx) = crossbeam_channel::bounded::<Job>(QUEUED_JOBS);
        let thread_shared = Arc::clone(&shared);
        let io_thread = std::thread::Builder::new()
            .name("lsio-plan".into())
            .spawn(move || {
                let stages = Stages {
                    pool: &decode,
                    io: stage.as_ref(),
                    net: net.as_ref(),
                };
                plan_loop(&thread_shared, reader, &stages, &job_rx);
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
            shared,
            jobs: Some(jobs),
            io_thread: Some(io_thread),
            in_use: Some(WaitGroup::new()),
            backend: config.backend,
        })
    }

    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The array this engine reads.
    #[must_use]
    pub fn array(&self) -> &ZarrArray {
        &self.shared.array
    }

    /// Bytes of one crop in the output.
    #[must_use]
    pub fn crop_bytes(&self) -> usize {
        self.shared.crop_bytes
    }

    /// The output's element type: the cast's, or the array's own.
    #[must_use]
    pub fn out_dtype(&self) -> &'static str {
        self.shared
            .cast
            .map_or(self.shared.array.dtype.name(), |c| c.to().name())
    }

    /// Counters since the engine started.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Queues a batch of crops at `origins`, to be written into `out`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] for an origin whose crop leaves the array,
    /// [`Error::InvalidArgument`] when `out` is not exactly the batch's size,
    /// [`Error::Stopped`] after [`Engine::close`].
    pub fn submit(&self, origins: Vec<Vec<u64>>, out: OutBuffer) -> Result<Ticket> {
        let shape = &self.shared.array.shape;
        for (i, origin) in origins.iter().enumerate() {
            if !self.shared.window.fits(origin, shape) {
                return Err(Error::OutOfBounds(format!(
                    "{}: crop {i} at origin {origin:?} reaching {:?} leaves the array of shape {shape:?}",
                    self.shared.array.path.display(),
                    self.shared.window.span()
                )));
            }
        }
        let expected = origins.len().checked_mul(self.shared.crop_bytes);
        if expected != Some(out.len) {
            return Err(Error::InvalidArgument(format!(
                "output buffer holds {} bytes, a batch of {} crops of {} bytes needs {}",
                out.len,
                origins.len(),
                self.shared.crop_bytes,
                expected.map_or_else(|| "more than 2**64".to_string(), |n| n.to_string()),
            )));
        }
        let (Some(jobs), Some(in_use)) = (&self.jobs, &self.in_use) else {
            return Err(Error::Stopped("the engine is closed".into()));
        };
        let (done, done_rx) = crossbeam_channel::bounded(1);
        self.shared.counters.batch_started();
        let job = Job {
            origins,
            out,
            done,
            _in_use: in_use.clone(),
        };
        jobs.send(job).map_err(|_| {
            self.shared.counters.batch_finished();
            Error::Stopped("the I/O thread has exited".into())
        })?;
        Ok(Ticket { done: done_rx })
    }

    /// Stops the threads. Batches not yet finished resolve with [`Error::Stopped`]; when this
    /// returns, every engine thread has exited and none writes to any output buffer.
    pub fn close(&mut self) {
        self.shared.cancel.store(true, Ordering::SeqCst);
        self.shared.stopping.notify_waiters();
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

/// The planning thread: plans each batch (files, shard indexes, byte ranges) and hands it to
/// the pool (through the I/O threads or the runtime), which reads and decodes it while the
/// next batch is planned.
fn plan_loop(
    shared: &Arc<Shared>,
    mut reader: Box<dyn Reader>,
    stages: &Stages<'_>,
    jobs: &Receiver<Job>,
) {
    let mut cache = PlanCache::default();
    // Batches submitted behind the one being planned: an object store's shard indexes are
    // fetched for them too, in the same round trip.
    let mut queued: VecDeque<Job> = VecDeque::new();
    loop {
        let Some(job) = queued.pop_front().or_else(|| jobs.recv().ok()) else {
            break;
        };
        if stages.net.is_some() {
            queued.extend(jobs.try_iter());
        }
        if shared.cancel.load(Ordering::Relaxed) {
            shared.counters.batch_finished();
            let _ = job
                .done
                .send(Err(Error::Stopped("the engine was closed".into())));
            continue;
        }
        let planned = guarded("planning thread", &shared.array.path, || {
            let ahead: Vec<&[Vec<u64>]> = queued.iter().map(|j| j.origins.as_slice()).collect();
            let mut planned = plan_reads(
                shared,
                reader.as_mut(),
                stages.net,
                &mut cache,
                &job.origins,
                &ahead,
            )?;
            read_only_what_crops_need(shared, &mut planned)?;
            Ok(planned)
        });
        let planned = match planned {
            Err(e) => {
                shared.counters.batch_finished();
                let _ = job.done.send(Err(e));
                continue;
            }
            Ok(planned) => planned,
        };
        if let Some(net) = stages.net {
            remote::run_remote(shared, net, planned, job, stages.pool);
            continue;
        }
        if shared.reads_wait.load(Ordering::Relaxed) && !shared.direct_io {
            advise(reader.as_mut(), &planned);
        }
        if let Some(stage) = stages.io {
            stage.run(shared, planned, job, stages.pool);
            continue;
        }
        run_batch(shared, planned, job, stages.pool);
    }
}

/// Runs `f`, turning a panic into an error that names `who` and the array it was reading.
pub(super) fn guarded<T>(
    who: &str,
    array: &std::path::Path,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(Error::Stopped(format!(
            "{who} panicked reading {}: {}",
            array.display(),
            panic_message(&panic)
        )))
    })
}

/// The message a panic was raised with.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(ToString::to_string)
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn engine() -> Engine {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sharded_end_int16.zarr");
        let array = Arc::new(ZarrArray::open(path).unwrap());
        let config = EngineConfig {
            threads: 2,
            io_threads: 0,
            backend: Backend::Pread,
            cast: None,
            direct_io: false,
            cache: None,
            disk_cache: None,
        };
        Engine::start(array, Window::crop(&[2, 4, 3]), config).unwrap()
    }

    fn submit(engine: &Engine, origins: Vec<Vec<u64>>, out: &mut [u8]) -> Result<Ticket> {
        // SAFETY: every ticket is waited for (or refused) before `out` is dropped, and the
        // engine is closed before the test ends.
        let buffer = unsafe { OutBuffer::new(out.as_mut_ptr(), out.len()) };
        engine.submit(origins, buffer)
    }

    #[test]
    fn crops_leaving_the_array_and_buffers_of_the_wrong_size_are_refused_before_reading() {
        let mut engine = engine();
        assert_eq!(engine.crop_bytes(), 2 * 4 * 3 * 2);
        let mut out = vec![0u8; 2 * engine.crop_bytes()];
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
        let ticket = submit(&engine, vec![vec![4, 6, 6], vec![0, 0, 0]], &mut out).unwrap();
        ticket.wait().unwrap();
        assert_eq!(engine.stats().batches, 1);
        engine.close();
    }

    #[test]
    fn a_closed_engine_refuses_batches_and_its_threads_are_gone() {
        let mut engine = engine();
        let mut out = vec![0u8; engine.crop_bytes()];
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
}
