//! The engine: planner and reader on one I/O thread, decoding on a rayon pool, each batch
//! written straight into the caller's output buffer and announced on its own ticket.
//!
//! ```text
//! submit ─jobs─▶ I/O thread: plan → shard indexes → read ─▶ rayon: decode, copy ─▶ ticket
//! ```
//! Batches are bounded by the caller (it holds at most `prefetch` tickets) and finish in
//! any order; tickets are waited in submission order, so batches leave in order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::sync::WaitGroup;
use rayon::prelude::*;

use crate::cast::Cast;
use crate::error::{Error, Result};
use crate::io::{direct_range, new_reader, open_direct, Backend, ReadOp, Reader, ScatterOp};
use crate::plan::{plan_batch, ChunkTask, Target};
use crate::pool::build_pool;
use crate::sampler::check_crop;
use crate::zarr::array::ChunkLocation;
use crate::zarr::codecs::{decode_index, IndexLocation};
use crate::zarr::region::CopyLayout;
use crate::zarr::shard_index::{ShardIndex, Slot};
use crate::zarr::ZarrArray;

/// Shard indexes kept per engine; the oldest is forgotten first.
const SHARD_INDEX_CACHE: usize = 4096;
/// Chunk and shard files kept open per engine between batches; the oldest is closed first.
const OPEN_FILES: usize = 64;
/// Jobs that may wait for the I/O thread.
const QUEUED_JOBS: usize = 64;

/// Threads and backend for an engine.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Threads that read and decode chunks; each has its own ring (or issues its own preads).
    pub threads: usize,
    pub backend: Backend,
    /// The output's element type and normalisation; `None` writes the array's own type.
    pub cast: Option<Cast>,
    /// Read chunks with direct I/O (`O_DIRECT`), bypassing the page cache, where the file
    /// system allows it.
    pub direct_io: bool,
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
    crop: Vec<u64>,
    /// Bytes of one crop in the output (of the output's element type).
    crop_bytes: usize,
    cast: Option<Cast>,
    /// Chunks are stored as their elements: nothing to decode, so only the bytes the crops
    /// need are read (`read_only_what_crops_need`) and laid out from the read buffer.
    as_stored: bool,
    counters: Counters,
    pub(crate) leaf_bytes: usize,
    /// A leaf chunk of fill values: missing chunks are copied from it like any other.
    fill_chunk: Vec<u8>,
    pub(crate) leaf_shape: Vec<std::num::NonZeroU64>,
    /// The backend each engine thread opens its reader with.
    backend: Backend,
    cancel: AtomicBool,
    /// The last group of reads waited for the disk: batches are then advised ahead.
    reads_wait: AtomicBool,
    /// Chunk files are opened for direct I/O too (see [`EngineConfig::direct_io`]).
    direct_io: bool,
}

impl Shared {
    /// # Errors
    /// [`Error::InvalidArgument`] for a crop that does not fit the array.
    pub(crate) fn new(
        array: Arc<ZarrArray>,
        crop: Vec<u64>,
        backend: Backend,
        cast: Option<Cast>,
    ) -> Result<Self> {
        check_crop(&array.shape, &crop)?;
        let element = array.dtype.size();
        let out_element = cast.map_or(element, |c| c.to().size());
        let crop_bytes = crop.iter().product::<u64>() as usize * out_element;
        let leaf_elements = array.leaf_shape().iter().product::<u64>() as usize;
        Ok(Self {
            fill_chunk: array.fill_value.repeat(leaf_elements),
            leaf_bytes: leaf_elements * element,
            leaf_shape: array.leaf_shape_nonzero(),
            as_stored: array.leaf_codecs().is_stored_as_is(),
            array,
            crop,
            crop_bytes,
            cast,
            counters: Counters::default(),
            backend,
            cancel: AtomicBool::new(false),
            reads_wait: AtomicBool::new(true),
            direct_io: false,
        })
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
    /// [`Error::InvalidArgument`] for a crop that does not fit the array; [`Error::Stopped`]
    /// when threads or the ring cannot be created.
    pub fn start(array: Arc<ZarrArray>, crop: Vec<u64>, config: EngineConfig) -> Result<Self> {
        let mut shared = Shared::new(array, crop, config.backend, config.cast)?;
        shared.direct_io = config.direct_io;
        let shared = Arc::new(shared);
        let reader = new_reader(config.backend)?;
        let (decode, decode_exited) = build_pool("lsio-decode", config.threads)?;
        let (jobs, job_rx) = crossbeam_channel::bounded::<Job>(QUEUED_JOBS);
        let thread_shared = Arc::clone(&shared);
        let io_thread = std::thread::Builder::new()
            .name("lsio-plan".into())
            .spawn(move || {
                plan_loop(&thread_shared, reader, &decode, &job_rx);
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
            let fits = origin.len() == shape.len()
                && origin
                    .iter()
                    .zip(&self.shared.crop)
                    .zip(shape)
                    .all(|((o, c), s)| o + c <= *s);
            if !fits {
                return Err(Error::OutOfBounds(format!(
                    "{}: crop {i} at origin {origin:?} with shape {:?} leaves the array of shape {shape:?}",
                    self.shared.array.path.display(),
                    self.shared.crop
                )));
            }
        }
        let expected = origins.len() * self.shared.crop_bytes;
        if out.len != expected {
            return Err(Error::InvalidArgument(format!(
                "output buffer holds {} bytes, the batch needs {expected}",
                out.len
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
        self.jobs = None;
        let Some(thread) = self.io_thread.take() else {
            return;
        };
        let _ = thread.join();
        if let Some(in_use) = self.in_use.take() {
            in_use.wait();
        }
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

/// The planning thread: plans each batch (files, shard indexes, byte ranges) and hands it to
/// the pool, which reads and decodes it while the next batch is planned.
fn plan_loop(
    shared: &Arc<Shared>,
    mut reader: Box<dyn Reader>,
    pool: &rayon::ThreadPool,
    jobs: &Receiver<Job>,
) {
    let mut cache = PlanCache::default();
    while let Ok(job) = jobs.recv() {
        if shared.cancel.load(Ordering::Relaxed) {
            shared.counters.batch_finished();
            let _ = job
                .done
                .send(Err(Error::Stopped("the engine was closed".into())));
            continue;
        }
        let planned = catch_unwind(AssertUnwindSafe(|| {
            let mut planned = plan_reads(shared, reader.as_mut(), &mut cache, &job.origins)?;
            read_only_what_crops_need(shared, &mut planned)?;
            Ok(planned)
        }))
        .unwrap_or_else(|panic| {
            Err(Error::Stopped(format!(
                "planning thread panicked: {}",
                panic_message(&panic)
            )))
        });
        match planned {
            Err(e) => {
                shared.counters.batch_finished();
                let _ = job.done.send(Err(e));
            }
            Ok(planned) => {
                if shared.reads_wait.load(Ordering::Relaxed) && !shared.direct_io {
                    advise(reader.as_mut(), &planned);
                }
                let shared = Arc::clone(shared);
                pool.spawn(move || {
                    let result =
                        catch_unwind(AssertUnwindSafe(|| run_batch(&shared, &planned, &job.out)))
                            .unwrap_or_else(|panic| {
                                Err(Error::Stopped(format!(
                                    "engine thread panicked: {}",
                                    panic_message(&panic)
                                )))
                            });
                    if result.is_ok() {
                        shared.counters.batches.fetch_add(1, Ordering::Relaxed);
                    }
                    shared.counters.batch_finished();
                    let _ = job.done.send(result);
                    drop(planned); // lets go of the batch's files (the planner may keep them open)
                    drop(job);
                });
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(ToString::to_string)
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Where one leaf chunk's elements come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Never written: the fill value.
    Fill,
    /// Stored bytes, read by one of the batch's `PlannedRead`s.
    Encoded,
}

/// An opened chunk or shard file with its length; `None` when it does not exist.
struct OpenFile {
    path: PathBuf,
    file: Option<(File, u64)>,
    /// The file opened for direct I/O, with the alignment its reads need, when asked for and
    /// the file system allows it.
    direct: Option<(File, usize)>,
}

impl OpenFile {
    fn open(path: PathBuf, direct_io: bool) -> std::io::Result<Self> {
        let file = match File::open(&path) {
            Ok(file) => {
                let len = file.metadata()?.len();
                Some((file, len))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let direct = if direct_io && file.is_some() {
            open_direct(&path)
        } else {
            None
        };
        Ok(Self { path, file, direct })
    }
}

/// At most `limit` values by file coordinates; the oldest entry is dropped first.
struct Bounded<V> {
    map: HashMap<Vec<u64>, V>,
    order: VecDeque<Vec<u64>>,
    limit: usize,
}

impl<V> Bounded<V> {
    fn new(limit: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            limit,
        }
    }

    fn get(&self, key: &[u64]) -> Option<&V> {
        self.map.get(key)
    }

    fn insert(&mut self, key: Vec<u64>, value: V) {
        while self.map.len() >= self.limit {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&oldest);
        }
        self.order.push_back(key.clone());
        self.map.insert(key, value);
    }

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

/// What the planner keeps between batches: shard indexes, and files open (or known to be
/// missing), so each is opened once per iteration rather than once per batch.
pub(crate) struct PlanCache {
    indexes: Bounded<Arc<ShardIndex>>,
    files: Bounded<Arc<OpenFile>>,
}

impl Default for PlanCache {
    fn default() -> Self {
        Self {
            indexes: Bounded::new(SHARD_INDEX_CACHE),
            files: Bounded::new(OPEN_FILES),
        }
    }
}

impl PlanCache {
    /// The file at `coords`, opened now if it is not open yet. Out of file descriptors, the
    /// cached files are closed and the open tried once more.
    fn file(&mut self, shared: &Shared, coords: &[u64]) -> Result<Arc<OpenFile>> {
        if let Some(file) = self.files.get(coords) {
            return Ok(Arc::clone(file));
        }
        let path = shared.array.file_path(coords);
        let opened = match OpenFile::open(path.clone(), shared.direct_io) {
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                self.files.clear();
                OpenFile::open(path.clone(), shared.direct_io)
            }
            other => other,
        };
        let file = Arc::new(opened.map_err(|e| Error::io(&path, "opening a chunk file", e))?);
        let counters = &shared.counters;
        counters.files_opened.fetch_add(1, Ordering::Relaxed);
        if file.direct.is_some() {
            counters.files_direct.fetch_add(1, Ordering::Relaxed);
        }
        self.files.insert(coords.to_vec(), Arc::clone(&file));
        Ok(file)
    }
}

/// One chunk read of a planned batch.
#[derive(Debug)]
pub(crate) struct PlannedRead {
    pub(crate) task: usize,
    /// An index into `Planned::files`.
    pub(crate) file: usize,
    pub(crate) offset: u64,
    pub(crate) len: usize,
    /// The byte of the chunk the read starts at: 0 for a whole chunk.
    chunk_start: usize,
    /// Where in the output the bytes go when they are read straight into it.
    direct: Option<usize>,
}

/// A batch whose files are open and whose shard indexes are read: what remains is reading
/// its chunks.
pub(crate) struct Planned {
    tasks: Vec<ChunkTask>,
    locations: Vec<ChunkLocation>,
    files: Vec<Arc<OpenFile>>,
    sources: Vec<Source>,
    pub(crate) reads: Vec<PlannedRead>,
}

impl Planned {
    /// The path of the file a read is from.
    pub(crate) fn path(&self, read: &PlannedRead) -> &std::path::Path {
        &self.files[read.file].path
    }

    /// Every read of the batch as a reader op, in order (`plan_reads` makes reads only of
    /// files it opened, so none is left out).
    fn ops(&self) -> Vec<ReadOp<'_>> {
        self.reads
            .iter()
            .filter_map(|r| self.op(&[r]).ok())
            .collect()
    }

    /// A failed read, naming its file and chunk.
    fn read_error(&self, read: &PlannedRead, e: std::io::Error) -> Error {
        Error::io(
            self.path(read),
            format!("reading chunk {:?}", self.tasks[read.task].chunk),
            e,
        )
    }

    /// One request for a run of reads of one file whose byte ranges meet.
    fn op(&self, run: &[&PlannedRead]) -> Result<ReadOp<'_>> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Err(Error::Stopped("internal error: an empty read".into()));
        };
        let file = self
            .file(first)
            .ok_or_else(|| Error::Stopped(format!("internal error: no open file for {first:?}")))?;
        Ok(ReadOp {
            file,
            offset: first.offset,
            len: (last.offset + last.len as u64 - first.offset) as usize,
        })
    }

    /// The request for `run` as a direct read where its file was opened for direct I/O and
    /// the read rounded out to the alignment stays inside the file: the op, the alignment its
    /// buffer needs, and where the run's bytes start in what it reads.
    fn direct_op(&self, run: &[&PlannedRead]) -> Result<(ReadOp<'_>, usize, usize)> {
        let op = self.op(run)?;
        let open = &self.files[run[0].file];
        if let (Some((file, align)), Some((_, file_len))) = (&open.direct, &open.file) {
            if let Some((offset, len, skip)) = direct_range(op.offset, op.len, *align, *file_len) {
                return Ok((ReadOp { file, offset, len }, *align, skip));
            }
        }
        Ok((op, 1, 0))
    }

    /// The error of a failed request for `run`, naming the chunk at fault: a run of several
    /// chunks is read again chunk by chunk to find it.
    fn failed_read(
        &self,
        run: &[&PlannedRead],
        e: std::io::Error,
        reader: &mut dyn Reader,
    ) -> Error {
        if run.len() > 1 {
            let ops: Result<Vec<_>> = run.iter().map(|read| self.op(&[read])).collect();
            if let Ok(ops) = ops {
                for (read, result) in run.iter().zip(reader.read(&ops)) {
                    if let Err(e) = result {
                        return self.read_error(read, e);
                    }
                }
            }
        }
        self.read_error(run[0], e)
    }

    /// The open file a read is from.
    fn file(&self, read: &PlannedRead) -> Option<&File> {
        self.files[read.file].file.as_ref().map(|(file, _)| file)
    }
}

/// Plans a batch, opens its files and reads the shard indexes it lacks.
///
/// # Errors
/// [`Error::Io`] or [`Error::Corrupt`] for a file or shard index that cannot be read.
pub(crate) fn plan_reads(
    shared: &Shared,
    reader: &mut dyn Reader,
    cache: &mut PlanCache,
    origins: &[Vec<u64>],
) -> Result<Planned> {
    let array = &shared.array;
    let tasks = plan_batch(array.leaf_shape(), &shared.crop, origins);
    let locations: Vec<ChunkLocation> = tasks.iter().map(|t| array.locate(&t.chunk)).collect();

    // Each file the batch reads, open.
    let mut file_ids: BTreeMap<&[u64], usize> = BTreeMap::new();
    let mut files: Vec<Arc<OpenFile>> = Vec::new();
    for location in &locations {
        if file_ids.contains_key(location.file.as_slice()) {
            continue;
        }
        file_ids.insert(&location.file, files.len());
        files.push(cache.file(shared, &location.file)?);
    }

    // Shard indexes not yet cached, read together.
    let mut shard_index: Vec<Option<Arc<ShardIndex>>> = vec![None; files.len()];
    if let Some(sharding) = array.sharding() {
        let per_shard_shape = array.leaves_per_file();
        let per_shard: u64 = per_shard_shape.iter().product();
        let index_len = sharding.index_len;
        let mut wanted = Vec::new();
        let mut ops = Vec::new();
        for (coords, &id) in &file_ids {
            if let Some(index) = cache.indexes.get(coords) {
                shard_index[id] = Some(Arc::clone(index));
                continue;
            }
            let Some((file, len)) = &files[id].file else {
                continue;
            };
            if *len < index_len {
                return Err(Error::corrupt(
                    &files[id].path,
                    "shard",
                    format!("{len} bytes, too short for its index of {index_len} bytes"),
                ));
            }
            let offset = match sharding.index_location {
                IndexLocation::Start => 0,
                IndexLocation::End => len - index_len,
            };
            wanted.push((coords.to_vec(), id));
            ops.push(ReadOp {
                file,
                offset,
                len: index_len as usize,
            });
        }
        for ((coords, id), result) in wanted.into_iter().zip(reader.read(&ops)) {
            let path = &files[id].path;
            let bytes = result.map_err(|e| Error::io(path, "reading the shard index", e))?;
            shared
                .counters
                .bytes_read
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            let shard_len = files[id].file.as_ref().map_or(0, |(_, len)| *len);
            let index = decode_index(sharding, &bytes, &per_shard_shape)
                .and_then(|words| ShardIndex::from_words(&words, per_shard, shard_len))
                .map_err(|reason| Error::corrupt(path, "shard index", reason))?;
            let index = Arc::new(index);
            cache.indexes.insert(coords, Arc::clone(&index));
            shard_index[id] = Some(index);
        }
    }

    // Every chunk's bytes, read together.
    let mut sources: Vec<Source> = Vec::with_capacity(tasks.len());
    let mut reads = Vec::new();
    for (t, location) in locations.iter().enumerate() {
        let id = file_ids[location.file.as_slice()];
        let Some((_, len)) = &files[id].file else {
            sources.push(Source::Fill);
            continue;
        };
        let range = match &shard_index[id] {
            None if array.sharding().is_none() => Some((0, *len)),
            None => None,
            Some(index) => match index.slot(location.inner) {
                Slot::Empty => None,
                Slot::Bytes { offset, len } => Some((offset, len)),
            },
        };
        match range {
            None => sources.push(Source::Fill),
            Some((offset, len)) => {
                sources.push(Source::Encoded);
                reads.push(PlannedRead {
                    task: t,
                    file: id,
                    offset,
                    len: len as usize,
                    chunk_start: 0,
                    direct: None,
                });
            }
        }
    }
    // In file order, so that chunks stored side by side are read together.
    reads.sort_by_key(|read| (read.file, read.offset));
    Ok(Planned {
        tasks,
        locations,
        files,
        sources,
        reads,
    })
}

/// Narrows each read of a chunk stored as its elements to the bytes its crops need, from the
/// first to the last; a chunk that is one contiguous run of one crop is read straight into
/// the output (unless its elements are cast on the way).
///
/// # Errors
/// [`Error::Corrupt`] for a stored chunk whose length is not the chunk's.
pub(crate) fn read_only_what_crops_need(shared: &Shared, planned: &mut Planned) -> Result<()> {
    if !shared.as_stored {
        return Ok(());
    }
    let element = shared.array.dtype.size();
    for read in &mut planned.reads {
        let task = &planned.tasks[read.task];
        if read.len != shared.leaf_bytes {
            return Err(Error::corrupt(
                &planned.files[read.file].path,
                format!("chunk {:?}", task.chunk),
                format!(
                    "an uncompressed chunk of {} bytes, expected {}",
                    read.len, shared.leaf_bytes
                ),
            ));
        }
        let Some((start, end)) = needed_span(shared, task) else {
            continue;
        };
        read.offset += start as u64;
        read.len = end - start;
        read.chunk_start = start;
        if let ([target], None) = (task.targets.as_slice(), shared.cast) {
            if let Some((_, dst, _)) = target_layout(shared, target, element).single_run() {
                read.direct = Some(target.crop * shared.crop_bytes + dst);
            }
        }
    }
    Ok(())
}

/// Reads every chunk a planned batch needs, together, each into a buffer of its own (in the
/// order of `planned.reads`).
///
/// # Errors
/// [`Error::Io`] naming the file and chunk of the first read that failed.
pub(crate) fn read_all(reader: &mut dyn Reader, planned: &Planned) -> Result<Vec<Vec<u8>>> {
    let ops = planned.ops();
    planned
        .reads
        .iter()
        .zip(reader.read(&ops))
        .map(|(read, result)| result.map_err(|e| planned.read_error(read, e)))
        .collect()
}

/// Asks the kernel to start reading a planned batch's chunks while earlier batches decode:
/// on a cold disk the engine threads' reads then find a deep queue already working for
/// them (each thread alone waits for one group of reads at a time).
fn advise(reader: &mut dyn Reader, planned: &Planned) {
    let ops = planned.ops();
    reader.advise(&ops);
}

/// Each engine thread reads a group of a batch's chunks at once, then decodes them: at most
/// this many chunks...
const READS_PER_GROUP: usize = 32;
/// ...and this many bytes (a single larger chunk is a group of its own). The bytes in flight
/// are thus at most this per engine thread, and its read buffer no larger.
const READ_BYTES_PER_GROUP: usize = 8 << 20;

/// Splits a batch's reads into the groups engine threads read at once, in order.
fn read_groups(reads: &[PlannedRead]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, read) in reads.iter().enumerate() {
        let full = i - start == READS_PER_GROUP || bytes + read.len > READ_BYTES_PER_GROUP;
        if i > start && full {
            groups.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += read.len;
    }
    if start < reads.len() {
        groups.push(start..reads.len());
    }
    groups
}
/// The most bytes adjacent chunks are read together in.
const MAX_COALESCED: u64 = 4 << 20;

/// The read requests for one group of a batch's reads.
struct Requests<'a> {
    /// Reads straight into the output, one request each.
    direct: Vec<&'a PlannedRead>,
    /// Reads into buffers...
    buffered: Vec<&'a PlannedRead>,
    /// ...one request per run of them: reads of one file whose byte ranges meet.
    runs: Vec<std::ops::Range<usize>>,
}

impl<'a> Requests<'a> {
    fn of(group: &'a [PlannedRead]) -> Self {
        let (direct, buffered): (Vec<_>, Vec<_>) =
            group.iter().partition(|read| read.direct.is_some());
        let runs = coalesce(&buffered);
        Self {
            direct,
            buffered,
            runs,
        }
    }

    /// The ranges requested: `(file, offset, len)`.
    fn ranges(&self) -> impl Iterator<Item = (usize, u64, usize)> + '_ {
        let direct = self.direct.iter().map(|r| (r.file, r.offset, r.len));
        let runs = self.runs.iter().map(|run| {
            let (first, last) = (self.buffered[run.start], self.buffered[run.end - 1]);
            let len = last.offset + last.len as u64 - first.offset;
            (first.file, first.offset, len as usize)
        });
        direct.chain(runs)
    }
}

/// Splits `reads` (sorted by file and offset) into runs whose byte ranges meet, each run one
/// file and at most [`MAX_COALESCED`] bytes (a longer single read stays whole).
fn coalesce(reads: &[&PlannedRead]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=reads.len() {
        let joins = i < reads.len() && {
            let (first, prev, next) = (reads[start], reads[i - 1], reads[i]);
            next.file == prev.file
                && next.offset == prev.offset + prev.len as u64
                && next.offset + next.len as u64 - first.offset <= MAX_COALESCED
        };
        if !joins {
            runs.push(start..i);
            start = i;
        }
    }
    runs
}

/// Every request a planned batch is read with, as the engine threads make them: the byte
/// ranges the disk bound reads.
pub(crate) fn requested_ranges(planned: &Planned) -> Vec<(PathBuf, u64, usize)> {
    read_groups(&planned.reads)
        .into_iter()
        .flat_map(|group| {
            Requests::of(&planned.reads[group])
                .ranges()
                .map(|(file, offset, len)| (planned.files[file].path.clone(), offset, len))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What each engine thread keeps between batches: its reader (an io_uring ring) and its read
/// buffer, which a group of reads fills back to back, reused without being zeroed again.
struct LocalIo {
    reader: Box<dyn Reader>,
    buf: Vec<u8>,
}

thread_local! {
    static LOCAL_IO: std::cell::RefCell<Option<LocalIo>> = const { std::cell::RefCell::new(None) };
}

/// Runs a planned batch on the pool: chunks never written are copied from the fill chunk;
/// the others are read by the thread that decodes them, a group at a time, and decoded into
/// the output.
fn run_batch(shared: &Shared, planned: &Planned, out: &OutBuffer) -> Result<()> {
    (0..planned.tasks.len())
        .into_par_iter()
        .try_for_each(|t| match planned.sources[t] {
            Source::Fill => {
                shared
                    .counters
                    .chunks_decoded
                    .fetch_add(1, Ordering::Relaxed);
                copy_targets(shared, &planned.tasks[t], &shared.fill_chunk, 0, out)
            }
            Source::Encoded => Ok(()),
        })?;
    read_groups(&planned.reads)
        .into_par_iter()
        .try_for_each(|group| {
            let group = &planned.reads[group];
            if shared.cancel.load(Ordering::Relaxed) {
                return Err(Error::Stopped("the engine was closed".into()));
            }
            LOCAL_IO.with(|cell| {
                let mut local = cell.borrow_mut();
                if local.is_none() {
                    *local = Some(LocalIo {
                        reader: new_reader(shared.backend)?,
                        buf: Vec::new(),
                    });
                }
                let Some(LocalIo { reader, buf }) = local.as_mut() else {
                    return Err(Error::Stopped("no reader on this thread".into()));
                };
                let Requests {
                    direct,
                    buffered,
                    runs,
                } = Requests::of(group);
                let started = Instant::now();
                read_direct(planned, &direct, reader.as_mut(), out)?;
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
                    .chunks_decoded
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                counters
                    .reads
                    .fetch_add((direct.len() + ops.len()) as u64, Ordering::Relaxed);
                for ((run, (at, result)), skip) in runs.iter().zip(results).zip(skips) {
                    let run_bytes = &buf[at + skip..];
                    let reads = &buffered[run.clone()];
                    if let Err(e) = result {
                        return Err(planned.failed_read(reads, e, reader.as_mut()));
                    }
                    for read in reads {
                        let task = &planned.tasks[read.task];
                        let at = (read.offset - reads[0].offset) as usize;
                        let bytes = &run_bytes[at..at + read.len];
                        if shared.as_stored {
                            copy_targets(shared, task, bytes, read.chunk_start, out)?;
                        } else {
                            let location = &planned.locations[read.task];
                            decode_task(shared, task, location, planned.path(read), bytes, out)?;
                        }
                    }
                }
                Ok(())
            })
        })
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

thread_local! {
    // Each engine thread's scratch chunk, reused for every chunk it decodes.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
    let corrupt = |reason: String| {
        let what = if array.sharding().is_some() {
            format!(
                "chunk {:?} (inner chunk {} of the shard)",
                task.chunk, location.inner
            )
        } else {
            format!("chunk {:?}", task.chunk)
        };
        Error::corrupt(path, what, reason)
    };
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
    SCRATCH.with(|scratch| {
        array.leaf_codecs().decode_then(
            bytes,
            &mut scratch.borrow_mut(),
            &shared.leaf_shape,
            array.codec_data_type(),
            array.codec_fill_value(),
            needed,
            |chunk| copy_targets(shared, task, chunk, 0, out),
            corrupt,
        )
    })
}

/// The bytes of a decoded chunk its crops need, from the first to the last: `(start, end)`;
/// `None` when they need none.
fn needed_span(shared: &Shared, task: &ChunkTask) -> Option<(usize, usize)> {
    let element = shared.array.dtype.size();
    task.targets
        .iter()
        .filter_map(|target| target_layout(shared, target, element).src_span())
        .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
}

/// How a target's piece of a chunk lies in the chunk and in its crop, in elements of
/// `element_size` bytes (1: runs counted in elements).
fn target_layout<'a>(
    shared: &'a Shared,
    target: &'a Target,
    element_size: usize,
) -> CopyLayout<'a> {
    CopyLayout {
        element_size,
        region: &target.in_chunk.shape,
        src_shape: shared.array.leaf_shape(),
        src_start: &target.in_chunk.start,
        dst_shape: &shared.crop,
        dst_start: &target.in_crop,
    }
}

/// Where a chunk goes in the output when it is exactly one contiguous run of one crop.
fn direct_offset(shared: &Shared, task: &ChunkTask) -> Option<usize> {
    if shared.cast.is_some() {
        return None;
    }
    let [target] = task.targets.as_slice() else {
        return None;
    };
    let layout = target_layout(shared, target, shared.array.dtype.size());
    match layout.single_run()? {
        (0, dst, len) if len == shared.leaf_bytes => Some(target.crop * shared.crop_bytes + dst),
        _ => None,
    }
}

/// Copies each target's piece of a decoded chunk into its crop's place in the output;
/// `chunk` holds the chunk's bytes from `chunk_start` on.
fn copy_targets(
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

/// Like [`copy_targets`], converting each run to the output type on the way.
fn cast_targets(
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
    use super::*;

    #[test]
    fn bounded_drops_the_oldest_entry_first() {
        let mut kept = Bounded::new(2);
        kept.insert(vec![0], "a");
        kept.insert(vec![1], "b");
        kept.insert(vec![2], "c");
        assert_eq!(kept.get(&[0]), None);
        assert_eq!((kept.get(&[1]), kept.get(&[2])), (Some(&"b"), Some(&"c")));
        kept.clear();
        assert_eq!(kept.get(&[2]), None);
        kept.insert(vec![3], "d");
        assert_eq!(kept.get(&[3]), Some(&"d"));
    }

    fn read(file: usize, offset: u64, len: usize) -> PlannedRead {
        PlannedRead {
            task: 0,
            file,
            offset,
            len,
            chunk_start: 0,
            direct: None,
        }
    }

    #[test]
    fn groups_hold_at_most_32_reads_and_8_mib() {
        let small: Vec<PlannedRead> = (0..70).map(|i| read(0, i * 10, 10)).collect();
        assert_eq!(read_groups(&small), vec![0..32, 32..64, 64..70]);
        let mib = 1 << 20;
        let big: Vec<PlannedRead> = [3, 3, 3, 20, 1, 8]
            .iter()
            .map(|&m| read(0, 0, m * mib))
            .collect();
        assert_eq!(read_groups(&big), vec![0..2, 2..3, 3..4, 4..5, 5..6]);
        assert!(read_groups(&[]).is_empty());
    }

    #[test]
    fn reads_whose_ranges_meet_in_one_file_are_coalesced() {
        let reads = [
            read(0, 0, 10),
            read(0, 10, 5),
            read(0, 20, 5), // a gap
            read(1, 25, 5), // another file
            read(1, 30, MAX_COALESCED as usize),
            read(1, 30 + MAX_COALESCED, 1), // too long together
        ];
        let refs: Vec<&PlannedRead> = reads.iter().collect();
        assert_eq!(coalesce(&refs), vec![0..2, 2..3, 3..4, 4..5, 5..6]);
        assert_eq!(coalesce(&refs[3..4]), vec![0..1]);
        assert!(coalesce(&[]).is_empty());
        let requests = Requests::of(&reads[..2]);
        assert_eq!(requests.ranges().collect::<Vec<_>>(), vec![(0, 0, 15)]);
    }
}
