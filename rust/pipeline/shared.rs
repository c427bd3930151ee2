//! What a batch carries through the engine's stages: the array it reads and how (its window,
//! output type, caches), the caller's output buffer, the engine's counters and its stop flag.
//! Every stage reads it; it imports none of them.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use crossbeam_utils::sync::WaitGroup;

use crate::cache::{ChunkCache, DiskCache, Key};
use crate::cast::Cast;
use crate::error::{Error, Result};
use crate::io::Backend;
use crate::plan::ChunkTask;
use crate::sampler::check_crop;
use crate::window::Window;
use crate::zarr::{limits, ZarrArray};

/// Memory the caller lends the engine for one batch: `[crops, *crop]` elements, C order.
#[derive(Debug)]
pub struct OutBuffer {
    pub(crate) ptr: *mut u8,
    pub(crate) len: usize,
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
pub(crate) struct Counters {
    pub(crate) batches: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) chunks_decoded: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) files_opened: AtomicU64,
    pub(crate) files_direct: AtomicU64,
    /// Batches submitted and not finished.
    pub(crate) in_flight: AtomicUsize,
    pub(crate) idle: Mutex<Idle>,
}

/// Time with no batch in flight.
pub(crate) struct Idle {
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
    pub(crate) fn batch_started(&self) {
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

    pub(crate) fn batch_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut idle = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            idle.since = Some(Instant::now());
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
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

/// One array's part of a batch (or a piece of it: see [`pieces_within_budget`]).
pub(crate) struct Job {
    /// Which of the engine's arrays.
    pub(crate) part: usize,
    pub(crate) origins: Vec<Vec<u64>>,
    pub(crate) out: OutBuffer,
    pub(crate) done: Sender<Result<()>>,
    /// Held until the batch is finished with its buffer; `Engine::drop` waits for all.
    pub(crate) _in_use: WaitGroup,
}

/// What the engine shares between its threads.
pub(crate) struct Shared {
    pub(crate) array: Arc<ZarrArray>,
    /// What one sample reads.
    pub(crate) window: Window,
    /// The shape of one sample's output.
    pub(crate) crop: Vec<u64>,
    /// Bytes of one crop in the output (of the output's element type).
    pub(crate) crop_bytes: usize,
    pub(crate) cast: Option<Cast>,
    /// Chunks are stored as their elements: nothing to decode, so only the bytes the crops
    /// need are read (`read_only_what_crops_need`) and laid out from the read buffer.
    pub(crate) as_stored: bool,
    /// The engine's counters, shared by its arrays.
    pub(crate) counters: Arc<Counters>,
    pub(crate) leaf_bytes: usize,
    /// One element of the fill value, of the output's type: what chunks never written read as.
    pub(crate) fill_out: Vec<u8>,
    pub(crate) leaf_shape: Vec<std::num::NonZeroU64>,
    /// The backend each engine thread opens its reader with.
    pub(crate) backend: Backend,
    /// Set when the engine is closed (one flag for all its arrays).
    pub(crate) cancel: Arc<AtomicBool>,
    /// Wakes what waits for a remote store when the engine is closed.
    pub(crate) stopping: Arc<tokio::sync::Notify>,
    /// The clients of a remote array's stores, numbered as `Location::stores` (a client is
    /// shared by the arrays of one store).
    pub(crate) clients: Vec<Arc<dyn object_store::ObjectStore>>,
    /// The last group of reads waited for the disk: batches are then advised ahead.
    pub(crate) reads_wait: AtomicBool,
    /// Chunk files are opened for direct I/O too (see [`EngineConfig::direct_io`]).
    pub(crate) direct_io: bool,
    /// Decoded chunks kept past the batch, and this array's number among the cache's.
    pub(crate) cache: Option<(Arc<ChunkCache>, u32)>,
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
            counters: Arc::default(),
            backend,
            cancel: Arc::default(),
            stopping: Arc::default(),
            clients: Vec::new(),
            reads_wait: AtomicBool::new(true),
            direct_io: false,
            cache: None,
            disk_cache: None,
        })
    }

    /// A remote array's store settings and client.
    pub(crate) fn remote(
        &self,
    ) -> Option<(
        &crate::io::remote::Settings,
        &Arc<dyn object_store::ObjectStore>,
    )> {
        let store = self.array.location.remote()?;
        Some((&store.settings, self.clients.first()?))
    }

    /// Store number `number` of the array's, or an internal error.
    pub(crate) fn store(&self, number: usize) -> Result<&Arc<crate::io::remote::RemoteStore>> {
        self.array
            .location
            .stores()
            .get(number)
            .ok_or_else(|| Error::Stopped(format!("internal error: no store {number}")))
    }

    /// The client of store number `number`, or an internal error.
    pub(crate) fn client(&self, number: usize) -> Result<&Arc<dyn object_store::ObjectStore>> {
        self.clients
            .get(number)
            .ok_or_else(|| Error::Stopped(format!("internal error: no client {number}")))
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
    pub(crate) fn note_read_time(&self, elapsed: Duration, reads: usize) {
        let waited = elapsed > DISK_WAIT_PER_READ * reads.max(1) as u32;
        self.reads_wait.store(waited, Ordering::Relaxed);
    }
}

/// Runs `f`, turning a panic into an error that names `who` and the array it was reading.
pub(crate) fn guarded<T>(
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

/// Runs `future` unless the engine is closed first.
///
/// # Errors
/// [`Error::Stopped`] when the engine was closed before `future` finished.
pub(crate) async fn unless_stopped<F: Future>(shared: &Shared, future: F) -> Result<F::Output> {
    let stopped = async {
        loop {
            // Created before the flag is read: a close between the two still wakes it.
            let notified = shared.stopping.notified();
            if shared.cancel.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    };
    tokio::select! {
        out = future => Ok(out),
        () = stopped => Err(Error::Stopped("the engine was closed".into())),
    }
}
