//! The Python binding, and the only file that knows about Python.
//!
//! Python allocates pinned output tensors (`torch.empty(..., pin_memory=True)`); others are
//! made of the engine's batch memory, handed to `torch.from_dlpack`. This module checks each
//! output's dtype, device, contiguity and size, keeps a reference to it while the engine
//! writes into it, and waits for batches with the GIL released.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::batch_memory::BatchMemory;
use crate::bench::bounds;
use crate::cache;
use crate::cast::{Cast, OutType};
use crate::dlpack;
use crate::error::Error;
use crate::io::choose_backend;
use crate::io::remote::{self, RemoteStore};
use crate::pipeline::{self, EngineConfig, OutBuffer, Ticket};
use crate::sampler;
use crate::window::{Run, Window};
use crate::zarr::icechunk::Version;
use crate::zarr::icechunk_session;
use crate::zarr::location::Location;
use crate::zarr::references::{Authorized, ReferenceSet};
use crate::zarr::ZarrArray;

// Named by the package users import it from, so that it pickles (an error raised in a
// DataLoader worker travels to the main process as this type).
create_exception!(
    lsio_torch,
    LsioError,
    PyException,
    "A read or decode failed: a corrupt chunk, an I/O error, a stopped engine."
);

/// The one mapping from engine errors to Python exceptions.
fn to_py(e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::NotFound { .. } => PyFileNotFoundError::new_err(message),
        Error::InvalidArgument(_) | Error::InvalidMetadata { .. } | Error::Unsupported { .. } => {
            PyValueError::new_err(message)
        }
        Error::OutOfBounds(_) => PyIndexError::new_err(message),
        Error::Io { .. } | Error::Corrupt { .. } | Error::Stopped(_) => LsioError::new_err(message),
    }
}

/// Runs the body of a Python entry point, turning a panic (a defect, whatever input caused
/// it) into an `LsioError` that says what was being done: no `PanicException` reaches Python.
fn boundary<T>(what: &str, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        Err(LsioError::new_err(format!(
            "internal error while {what}: {}",
            pipeline::panic_message(&panic)
        )))
    })
}

/// ``text`` with the values of URL queries and passwords in URLs replaced by ``***``: what
/// messages and reprs show of a URL that carries a token.
#[pyfunction]
fn redact(text: &str) -> String {
    remote::redact(text)
}

/// Where the repository of an ``icechunk.Session`` lies, from the session's bytes
/// (``Session._session.as_bytes()``): its URL and the ``storage_options`` to read it with.
#[pyfunction]
fn icechunk_session_repository(bytes: &[u8]) -> PyResult<(String, Vec<(String, String)>)> {
    let found = icechunk_session::session_repository(bytes).map_err(to_py)?;
    Ok((found.url, found.options))
}

/// Most crops :meth:`Sampler.origins` draws at once.
const MAX_ORIGINS: u64 = 1 << 28;

/// A Zarr array (v2 or v3) opened for reading: its metadata only (opening starts no thread).
/// An authorized place: a folder or URL prefix, and its own storage options (or `None`).
type Place = (String, Option<Vec<(String, String)>>);

fn authorized(places: Vec<Place>) -> Vec<Authorized> {
    places
        .into_iter()
        .map(|(place, options)| Authorized { place, options })
        .collect()
}

/// A reference set (kerchunk JSON), opened once for every array read from it.
#[pyclass(module = "lsio_torch._lsio_torch", frozen)]
struct References {
    inner: Arc<ReferenceSet>,
}

#[pymethods]
impl References {
    /// ``url``: the reference file (a path or an object-store URL); ``authorize``: places
    /// besides its folder that its targets may be in, each with its own storage options or
    /// ``None`` for ``storage_options`` (as for an array).
    #[new]
    #[pyo3(signature = (url, authorize=Vec::new(), storage_options=None))]
    fn new(
        py: Python<'_>,
        url: &str,
        authorize: Vec<Place>,
        storage_options: Option<Vec<(String, String)>>,
    ) -> PyResult<Self> {
        boundary("opening references", || {
            let options = storage_options.unwrap_or_default();
            let authorize = authorized(authorize);
            let inner = py
                .detach(|| ReferenceSet::open(url, &options, &authorize))
                .map_err(to_py)?;
            Ok(Self { inner })
        })
    }

    /// The Icechunk repository at ``url`` at one version: ``kind`` ``"branch"``, ``"tag"`` or
    /// ``"snapshot"``, and its name or id.
    #[staticmethod]
    #[pyo3(signature = (url, kind, version, authorize=Vec::new(), storage_options=None))]
    fn icechunk(
        py: Python<'_>,
        url: &str,
        kind: &str,
        version: String,
        authorize: Vec<Place>,
        storage_options: Option<Vec<(String, String)>>,
    ) -> PyResult<Self> {
        boundary("opening an Icechunk repository", || {
            let authorize = authorized(authorize);
            let version = match kind {
                "branch" => Version::Branch(version),
                "tag" => Version::Tag(version),
                "snapshot" => Version::Snapshot(version),
                other => {
                    let message =
                        format!("an Icechunk version is a branch, tag or snapshot, not {other:?}");
                    return Err(PyValueError::new_err(message));
                }
            };
            let options = storage_options.unwrap_or_default();
            let inner = py
                .detach(|| ReferenceSet::icechunk(url, &options, version, &authorize))
                .map_err(to_py)?;
            Ok(Self { inner })
        })
    }
}

#[pyclass(module = "lsio_torch._lsio_torch", frozen)]
struct Array {
    inner: Arc<ZarrArray>,
}

#[pymethods]
impl Array {
    /// ``path``: a directory, or an ``s3://``, ``gs://``, ``az://`` or ``http(s)://`` URL;
    /// ``storage_options``: the object store's options (strings), for a URL.
    #[new]
    #[pyo3(signature = (path, storage_options=None))]
    fn new(
        py: Python<'_>,
        path: &str,
        storage_options: Option<Vec<(String, String)>>,
    ) -> PyResult<Self> {
        boundary("opening an array", || {
            let options = storage_options.unwrap_or_default();
            let location = Location::parse(path, &options).map_err(to_py)?;
            let array = py.detach(|| ZarrArray::open_at(location)).map_err(to_py)?;
            Ok(Self {
                inner: Arc::new(array),
            })
        })
    }

    /// Opens array ``name`` of the group at ``group`` (its consolidated metadata when it has
    /// some).
    #[staticmethod]
    #[pyo3(signature = (group, name, storage_options=None))]
    fn in_group(
        py: Python<'_>,
        group: &str,
        name: &str,
        storage_options: Option<Vec<(String, String)>>,
    ) -> PyResult<Self> {
        boundary("opening an array of a group", || {
            let options = storage_options.unwrap_or_default();
            let location = Location::parse(group, &options).map_err(to_py)?;
            let array = py
                .detach(|| ZarrArray::open_in_group(&location, name))
                .map_err(to_py)?;
            Ok(Self {
                inner: Arc::new(array),
            })
        })
    }

    /// Opens the array at ``name`` of a reference set (``None``: the set's root is one).
    #[staticmethod]
    #[pyo3(signature = (references, name=None))]
    fn in_references(
        py: Python<'_>,
        references: &References,
        name: Option<&str>,
    ) -> PyResult<Self> {
        boundary("opening an array by reference", || {
            let root = Location::References(Arc::clone(&references.inner), String::new());
            let array = py
                .detach(|| match name {
                    Some(name) => ZarrArray::open_in_group(&root, name),
                    None => ZarrArray::open_at(root),
                })
                .map_err(to_py)?;
            Ok(Self {
                inner: Arc::new(array),
            })
        })
    }

    /// Whether the array's chunks are read from an object store.
    #[getter]
    fn is_remote(&self) -> bool {
        self.inner.location.remote().is_some()
    }

    /// 2 or 3.
    #[getter]
    fn zarr_format(&self) -> u8 {
        self.inner.zarr_format
    }

    /// The array's directory or URL.
    #[getter]
    fn path(&self) -> String {
        self.inner.path.to_string_lossy().into_owned()
    }

    #[getter]
    fn shape(&self) -> Vec<u64> {
        self.inner.shape.clone()
    }

    /// The element type's name, as numpy and Zarr spell it (``"int16"``).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype.name()
    }

    /// The shape of the unit that is decoded: the inner chunk when sharded.
    #[getter]
    fn chunk_shape(&self) -> Vec<u64> {
        self.inner.leaf_shape().to_vec()
    }

    /// The shape of a shard, or ``None`` when the array is not sharded.
    #[getter]
    fn shard_shape(&self) -> Option<Vec<u64>> {
        self.inner
            .sharding()
            .map(|_| self.inner.chunk_shape.clone())
    }

    /// ``dimension_names`` from the metadata, or ``None``.
    #[getter]
    fn dimension_names(&self) -> Option<Vec<Option<String>>> {
        self.inner.dimension_names.clone()
    }
}

/// Draws crop origins: a pure function of ``(seed, epoch, sample index)``.
#[pyclass(module = "lsio_torch._lsio_torch", frozen)]
struct Sampler {
    inner: sampler::Sampler,
}

#[pymethods]
impl Sampler {
    /// Origins are multiples of ``step`` (default 1 per dimension); with ``valid``, a list
    /// of starts of the leading dimensions, only those starts are drawn.
    #[new]
    #[pyo3(signature = (shape, crop, seed, step=None, valid=None))]
    fn new(
        shape: Vec<u64>,
        crop: Vec<u64>,
        seed: u64,
        step: Option<Vec<u64>>,
        valid: Option<Vec<Vec<u64>>>,
    ) -> PyResult<Self> {
        boundary("making a sampler", || {
            let step = step.unwrap_or_else(|| vec![1; shape.len()]);
            Ok(Self {
                inner: sampler::Sampler::restricted(&shape, &crop, seed, &step, valid.as_deref())
                    .map_err(to_py)?,
            })
        })
    }

    /// The origins of samples ``first .. first + count`` of ``epoch``.
    fn origins(&self, epoch: u64, first: u64, count: u64) -> PyResult<Vec<Vec<u64>>> {
        boundary("drawing origins", || {
            let end = first.checked_add(count).filter(|_| count <= MAX_ORIGINS);
            let Some(end) = end else {
                return Err(PyValueError::new_err(format!(
                    "{count} origins from sample {first} on: at most {MAX_ORIGINS} at once, \
                     and sample indices below 2**64"
                )));
            };
            Ok((first..end).map(|i| self.inner.origin(epoch, i)).collect())
        })
    }
}

/// Memory for a dataset's batches that are not pinned, kept from one iteration to the next
/// (one per dataset and process): a later epoch's batches reuse the pages of an earlier
/// one's instead of faulting in new ones. :meth:`close` unmaps what it keeps.
#[pyclass(module = "lsio_torch._lsio_torch", frozen)]
struct BatchPool {
    inner: Arc<BatchMemory>,
}

#[pymethods]
impl BatchPool {
    /// For the batches of a dataset of ``arrays`` arrays (a batch takes one mapping each),
    /// keeping the memory of ``batches`` batches (those in flight at once).
    #[new]
    #[pyo3(signature = (arrays, batches=crate::batch_memory::KEPT))]
    fn new(arrays: usize, batches: usize) -> Self {
        Self {
            inner: BatchMemory::for_arrays(arrays, batches),
        }
    }

    /// Mappings kept for reuse.
    #[getter]
    fn idle(&self) -> usize {
        self.inner.idle()
    }

    /// Unmaps the kept mappings, and every mapping given back from now on.
    fn close(&self) {
        self.inner.close();
    }
}

/// Decoded chunks kept across batches and epochs, under a byte budget: one per dataset and
/// process, handed to each of its engines with the array's number in the dataset.
#[pyclass(module = "lsio_torch._lsio_torch", frozen)]
struct ChunkCache {
    inner: Arc<cache::ChunkCache>,
}

#[pymethods]
impl ChunkCache {
    /// ``policy``: ``"lru"``, ``"clock"`` or ``"s3fifo"``.
    #[new]
    #[pyo3(signature = (budget, policy))]
    fn new(budget: usize, policy: &str) -> PyResult<Self> {
        let kind = cache::PolicyKind::from_name(policy).map_err(to_py)?;
        Ok(Self {
            inner: cache::ChunkCache::new(budget, kind),
        })
    }

    /// ``{"cache_hits", "cache_waits", "cache_misses", "cache_evictions", "cache_bytes",
    /// "cache_chunks"}``.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let out = PyDict::new(py);
        out.set_item("cache_hits", s.hits)?;
        out.set_item("cache_waits", s.waits)?;
        out.set_item("cache_misses", s.misses)?;
        out.set_item("cache_evictions", s.evictions)?;
        out.set_item("cache_bytes", s.bytes)?;
        out.set_item("cache_chunks", s.chunks)?;
        Ok(out)
    }

    #[getter]
    fn budget(&self) -> usize {
        self.inner.budget()
    }

    #[getter]
    fn policy(&self) -> &'static str {
        self.inner.policy().name()
    }

    /// Frees every chunk held.
    fn clear(&self, py: Python<'_>) {
        py.detach(|| self.inner.clear());
    }
}

/// A folder of compressed chunk bytes fetched from object stores, bounded to ``max_bytes``:
/// one per dataset and process, shared by its remote arrays (and, through the folder, by every
/// process that names it).
#[pyclass(module = "lsio_torch._lsio_torch", frozen)]
struct DiskCache {
    inner: Arc<cache::DiskCache>,
}

#[pymethods]
impl DiskCache {
    /// Opens (or makes) the folder ``path``; files past ``max_bytes`` are deleted, those
    /// written longest ago first.
    #[new]
    #[pyo3(signature = (path, max_bytes))]
    fn new(py: Python<'_>, path: std::path::PathBuf, max_bytes: u64) -> PyResult<Self> {
        let opened = py.detach(|| cache::DiskCache::open(&path, max_bytes));
        let inner = opened.map_err(|e| {
            to_py(match e.kind() {
                // A folder it may not take: the argument is wrong, not the disk.
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::PermissionDenied => {
                    Error::InvalidArgument(format!("cache_dir {}: {e}", path.display()))
                }
                _ => Error::io(&path, "opening the disk cache folder", e),
            })
        })?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// ``{"disk_cache_hits", "disk_cache_misses", "disk_cache_bytes_read",
    /// "disk_cache_bytes_written", "disk_cache_evictions", "disk_cache_corrupt",
    /// "disk_cache_write_errors", "disk_cache_foreign", "disk_cache_bytes"}``.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let out = PyDict::new(py);
        out.set_item("disk_cache_hits", s.hits)?;
        out.set_item("disk_cache_misses", s.misses)?;
        out.set_item("disk_cache_bytes_read", s.bytes_read)?;
        out.set_item("disk_cache_bytes_written", s.bytes_written)?;
        out.set_item("disk_cache_evictions", s.evictions)?;
        out.set_item("disk_cache_corrupt", s.corrupt)?;
        out.set_item("disk_cache_write_errors", s.write_errors)?;
        out.set_item("disk_cache_foreign", s.foreign)?;
        out.set_item("disk_cache_bytes", s.bytes)?;
        Ok(out)
    }

    #[getter]
    fn path(&self) -> std::path::PathBuf {
        self.inner.dir().to_path_buf()
    }

    #[getter]
    fn max_bytes(&self) -> u64 {
        self.inner.max_bytes()
    }
}

/// A running engine for the arrays of a dataset: its threads start when it is created.
#[pyclass(module = "lsio_torch._lsio_torch", weakref)]
struct Engine {
    /// Closed before `pending` is dropped, so no thread still writes into a tensor whose
    /// reference is released.
    engine: Option<pipeline::Engine>,
    /// Submitted batches in order: their tickets and the tensors being written (one per
    /// array).
    pending: VecDeque<(Ticket, Vec<Py<PyAny>>)>,
    /// Time spent in :meth:`next` waiting for a batch.
    consumer_wait: Duration,
    /// Memory for batches that are not pinned, reused as their tensors are freed.
    memory: Arc<BatchMemory>,
    /// Whether `memory` is the engine's own, unmapped when it closes (else a `BatchPool`'s).
    owns_memory: bool,
}

/// How often a wait for a batch looks for a signal (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(20);

/// Checks that `tensor` is a contiguous CPU tensor of `dtype` and `nbytes`; returns its data.
fn tensor_memory(tensor: &Bound<'_, PyAny>, dtype: &str, nbytes: usize) -> PyResult<OutBuffer> {
    let device: String = tensor.getattr("device")?.getattr("type")?.extract()?;
    let actual_dtype: String = tensor.getattr("dtype")?.str()?.extract()?;
    let contiguous: bool = tensor.call_method0("is_contiguous")?.extract()?;
    let actual_nbytes: usize = tensor.getattr("nbytes")?.extract()?;
    if device != "cpu"
        || !contiguous
        || actual_dtype != format!("torch.{dtype}")
        || actual_nbytes != nbytes
    {
        return Err(PyValueError::new_err(format!(
            "output tensor must be a contiguous CPU tensor of torch.{dtype} with {nbytes} bytes; \
             got {actual_dtype} on {device}, contiguous={contiguous}, {actual_nbytes} bytes"
        )));
    }
    let ptr: usize = tensor.call_method0("data_ptr")?.extract()?;
    // SAFETY: `ptr` is the start of the tensor's `nbytes` bytes of CPU memory (checked above).
    // `Engine` keeps a reference to the tensor in `pending` until the batch's ticket has
    // resolved or the engine is closed, so the memory outlives every write.
    Ok(unsafe { OutBuffer::new(ptr as *mut u8, nbytes) })
}

/// One array of an engine as Python gives it: the array, the ``(offset, length)`` runs its
/// samples read per dimension, and its output type and normalisation.
type PartSpec<'a> = (
    PyRef<'a, Array>,
    Vec<Vec<(u64, u64)>>,
    Option<String>,
    f64,
    f64,
);

/// The engine's part for one array: its window, and the cast to its output type.
fn part(spec: PartSpec<'_>) -> PyResult<pipeline::Part> {
    let (array, runs, dtype, mean, std) = spec;
    let window = Window::new(
        runs.into_iter()
            .map(|dim| {
                dim.into_iter()
                    .map(|(offset, len)| Run { offset, len })
                    .collect()
            })
            .collect(),
    )
    .map_err(to_py)?;
    let cast = match dtype {
        None if mean == 0.0 && std == 1.0 => None,
        None => {
            return Err(PyValueError::new_err(
                "mean and std need a floating dtype to write the normalised values in",
            ))
        }
        Some(name) => {
            let to = OutType::from_name(&name).map_err(to_py)?;
            let cast = Cast::new(array.inner.dtype, to, mean, std).map_err(|e| {
                PyValueError::new_err(format!("{}: {e}", array.inner.path.display()))
            })?;
            Some(cast)
        }
    };
    Ok(pipeline::Part {
        array: Arc::clone(&array.inner),
        window,
        cast,
    })
}

#[pymethods]
impl Engine {
    /// One engine for ``parts``, a list of ``(array, window, dtype, mean, std)``: ``window``
    /// per dimension the ``(offset, length)`` runs past the origin that one sample reads,
    /// written out one after the other (a crop is one run per dimension; steps and selected
    /// indices several); ``dtype`` (``"float16"``, ``"bfloat16"``, ``"float32"``,
    /// ``"float64"``) casts the output, computing ``(x - mean) / std`` on the way, ``None``
    /// keeps the array's type. ``threads`` engine threads serve every part.
    /// ``direct_io`` reads chunks with ``O_DIRECT`` where the file system allows it.
    /// ``io_threads`` > 0 starts that many threads that only read, handing the chunks to the
    /// ``threads`` that decode; 0 has the decode threads read their own chunks. ``cache``
    /// keeps decoded chunks past the batch (each part's as its number); ``disk_cache`` keeps
    /// remote arrays' fetched chunk bytes on local disk; ``memory`` lends the batches that are
    /// not pinned, kept past the engine (without it, the engine's own, unmapped when it closes).
    #[new]
    #[pyo3(signature = (parts, threads, direct_io=false, io_threads=0, cache=None, disk_cache=None, memory=None))]
    // The Python constructor's keyword arguments, one for one.
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        parts: Vec<PartSpec<'_>>,
        threads: usize,
        direct_io: bool,
        io_threads: usize,
        cache: Option<&ChunkCache>,
        disk_cache: Option<&DiskCache>,
        memory: Option<&BatchPool>,
    ) -> PyResult<Self> {
        boundary("starting an engine", || {
            let choice = choose_backend().map_err(to_py)?;
            let parts = parts.into_iter().map(part).collect::<PyResult<Vec<_>>>()?;
            let config = EngineConfig {
                threads,
                io_threads,
                backend: choice.backend,
                direct_io,
                cache: cache.map(|c| Arc::clone(&c.inner)),
                disk_cache: disk_cache.map(|d| Arc::clone(&d.inner)),
            };
            let arrays = parts.len();
            let engine = py
                .detach(|| pipeline::Engine::start(parts, config))
                .map_err(to_py)?;
            Ok(Self {
                engine: Some(engine),
                pending: VecDeque::new(),
                consumer_wait: Duration::ZERO,
                memory: memory.map_or_else(
                    || BatchMemory::for_arrays(arrays, crate::batch_memory::KEPT),
                    |pool| Arc::clone(&pool.inner),
                ),
                owns_memory: memory.is_none(),
            })
        })
    }

    /// The output's element type name of each part (``"float32"``...): its cast's or its
    /// array's.
    #[getter]
    fn dtypes(&self) -> PyResult<Vec<&'static str>> {
        let engine = self.running()?;
        Ok((0..engine.arrays().count())
            .filter_map(|p| engine.out_dtype(p))
            .collect())
    }

    /// ``{"batches", "bytes_read", "chunks_decoded", "reads", "files_opened", "files_direct",
    /// "engine_wait_s", "consumer_wait_s"}``.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        boundary("reading the engine's counters", || {
            let s = self.running()?.stats();
            let out = PyDict::new(py);
            out.set_item("batches", s.batches)?;
            out.set_item("bytes_read", s.bytes_read)?;
            out.set_item("chunks_decoded", s.chunks_decoded)?;
            out.set_item("reads", s.reads)?;
            out.set_item("files_opened", s.files_opened)?;
            out.set_item("files_direct", s.files_direct)?;
            out.set_item("engine_wait_s", s.engine_wait_s)?;
            out.set_item("consumer_wait_s", self.consumer_wait.as_secs_f64())?;
            Ok(out)
        })
    }

    /// ``"io_uring"`` or ``"pread"``.
    #[getter]
    fn backend(&self) -> PyResult<&'static str> {
        Ok(self.running()?.backend().name())
    }

    /// Batches submitted and not yet returned by :meth:`next`.
    #[getter]
    fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queues a batch: for each part, crops at ``origins[part]`` (a list of int sequences)
    /// written into ``outs[part]``, a contiguous CPU tensor ``[len(origins), *crop]`` of the
    /// part's output type.
    fn submit(&mut self, outs: Vec<Bound<'_, PyAny>>, origins: Vec<Vec<Vec<i64>>>) -> PyResult<()> {
        boundary("submitting a batch", || {
            let engine = self.running()?;
            if outs.len() != origins.len() {
                return Err(PyValueError::new_err(format!(
                    "{} outputs for {} lists of origins",
                    outs.len(),
                    origins.len()
                )));
            }
            let mut batch = Vec::with_capacity(outs.len());
            for (p, (out, origins)) in outs.iter().zip(origins).enumerate() {
                let origins = origins
                    .into_iter()
                    .map(|o| {
                        o.iter()
                            .map(|&v| u64::try_from(v))
                            .collect::<Result<Vec<u64>, _>>()
                            .map_err(|_| {
                                PyIndexError::new_err(format!("crop origin {o:?} is negative"))
                            })
                    })
                    .collect::<PyResult<Vec<_>>>()?;
                let nbytes = origins.len() * engine.crop_bytes(p);
                let dtype = engine.out_dtype(p).unwrap_or("uint8");
                batch.push((origins, tensor_memory(out, dtype, nbytes)?));
            }
            let ticket = engine.submit(batch).map_err(to_py)?;
            let outs = outs.into_iter().map(Bound::unbind).collect();
            self.pending.push_back((ticket, outs));
            Ok(())
        })
    }

    /// Waits (without the GIL) for the oldest batch and returns its tensors, one per part. A
    /// signal (Ctrl-C) raises its exception while waiting; the batch stays pending.
    fn next(&mut self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        boundary("waiting for a batch", || {
            let Some((ticket, _)) = self.pending.front_mut() else {
                return Err(PyValueError::new_err("no batch was submitted"));
            };
            let started = Instant::now();
            let result = loop {
                if let Some(result) = py.detach(|| ticket.wait_timeout(SIGNAL_CHECK)) {
                    break result;
                }
                if let Err(signal) = py.check_signals() {
                    self.consumer_wait += started.elapsed();
                    return Err(signal);
                }
            };
            self.consumer_wait += started.elapsed();
            let (_, tensors) = self.pending.pop_front().expect("checked above");
            result.map_err(to_py)?;
            Ok(tensors)
        })
    }

    /// Memory for a batch of ``shape`` of part ``part``'s output type, as a DLPack capsule for
    /// ``torch.from_dlpack``: a mapping that goes back to the engine, to be reused by a
    /// later batch, when the tensor made of it is freed.
    fn batch_memory<'py>(
        &self,
        py: Python<'py>,
        part: usize,
        shape: Vec<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        boundary("making memory for a batch", || {
            let name = self
                .running()?
                .out_dtype(part)
                .ok_or_else(|| PyValueError::new_err(format!("the engine has no part {part}")))?;
            let dtype = dlpack::data_type(name).map_err(to_py)?;
            let len = shape.iter().product::<usize>() * usize::from(dtype.bits / 8);
            let memory = self.memory.take(len).map_err(|e| {
                LsioError::new_err(format!("memory for a batch of {len} bytes: {e}"))
            })?;
            let tensor = dlpack::managed_tensor(memory, &shape, dtype).map_err(to_py)?;
            // SAFETY: `tensor` is a live DLManagedTensor; the capsule owns it from here: its
            // consumer renames it and calls the deleter, or, never consumed, its destructor does.
            let capsule = unsafe {
                pyo3::ffi::PyCapsule_New(
                    tensor.cast(),
                    DLTENSOR.as_ptr(),
                    Some(drop_unused_capsule),
                )
            };
            if capsule.is_null() {
                // SAFETY: the capsule was not made, so `tensor` is still ours alone.
                unsafe { dlpack::delete(tensor) };
            }
            // SAFETY: `capsule` is a new reference, or null with a Python error set.
            unsafe { Bound::from_owned_ptr_or_err(py, capsule) }
        })
    }

    /// Stops the engine's threads; batches still pending are discarded.
    fn close(&mut self, py: Python<'_>) {
        if let Some(mut engine) = self.engine.take() {
            py.detach(|| engine.close());
        }
        self.pending.clear();
        if self.owns_memory {
            self.memory.close();
        }
    }
}

/// The name DLPack's consumers look for, and rename once they own the tensor.
const DLTENSOR: &std::ffi::CStr = c"dltensor";

/// Deletes the tensor of a DLPack capsule no consumer took.
unsafe extern "C" fn drop_unused_capsule(capsule: *mut pyo3::ffi::PyObject) {
    // SAFETY: called by Python with the capsule being destroyed; a capsule still named
    // "dltensor" was never consumed, so its tensor is deleted here, once.
    unsafe {
        if pyo3::ffi::PyCapsule_IsValid(capsule, DLTENSOR.as_ptr()) == 1 {
            let tensor = pyo3::ffi::PyCapsule_GetPointer(capsule, DLTENSOR.as_ptr());
            dlpack::delete(tensor.cast());
        }
    }
}

impl Engine {
    fn running(&self) -> PyResult<&pipeline::Engine> {
        self.engine
            .as_ref()
            .ok_or_else(|| LsioError::new_err("engine stopped: the engine is closed"))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut engine) = self.engine.take() {
            engine.close();
        }
    }
}

fn measured(py: Python<'_>, m: bounds::Measured) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("seconds", m.seconds)?;
    out.set_item("chunks", m.chunks)?;
    out.set_item("encoded_bytes", m.encoded_bytes)?;
    Ok(out)
}

/// The decode bound: each batch's chunks read first (untimed), then decoded on ``threads``
/// threads with nothing else to do. Returns ``{"seconds", "chunks", "encoded_bytes"}``.
#[pyfunction]
fn decode_bound<'py>(
    py: Python<'py>,
    array: &Array,
    crop: Vec<u64>,
    batches: Vec<Vec<Vec<u64>>>,
    threads: usize,
) -> PyResult<Bound<'py, PyDict>> {
    boundary("measuring the decode bound", || {
        let backend = choose_backend().map_err(to_py)?.backend;
        let inner = Arc::clone(&array.inner);
        let m = py
            .detach(|| bounds::decode_bound(inner, crop, &batches, threads, backend))
            .map_err(to_py)?;
        measured(py, m)
    })
}

/// The byte ranges ``(path, offset, length)`` the engine requests for each batch of crops
/// (adjacent chunks of a file read together); with ``storage_options``, the requests it makes
/// of an object store holding the same array, merged by those options' ``merge_gap`` and
/// ``part_bytes``.
#[pyfunction]
#[pyo3(signature = (array, crop, batches, storage_options=None))]
fn read_ranges(
    py: Python<'_>,
    array: &Array,
    crop: Vec<u64>,
    batches: Vec<Vec<Vec<u64>>>,
    storage_options: Option<Vec<(String, String)>>,
) -> PyResult<Vec<Vec<bounds::Range>>> {
    boundary("listing read ranges", || {
        let backend = choose_backend().map_err(to_py)?.backend;
        let inner = Arc::clone(&array.inner);
        let remote = match storage_options {
            None => None,
            Some(options) => Some(
                RemoteStore::parse("http://localhost/", &options)
                    .map_err(to_py)?
                    .settings,
            ),
        };
        py.detach(|| bounds::read_ranges(inner, crop, &batches, backend, remote.as_ref()))
            .map_err(to_py)
    })
}

/// The disk bound: times reading ``ranges`` (from :func:`read_ranges`) on ``threads``
/// threads, each keeping a deep queue of reads in flight.
#[pyfunction]
fn disk_bound(
    py: Python<'_>,
    ranges: Vec<Vec<bounds::Range>>,
    threads: usize,
) -> PyResult<Bound<'_, PyDict>> {
    boundary("measuring the disk bound", || {
        let backend = choose_backend().map_err(to_py)?.backend;
        let m = py
            .detach(|| bounds::disk_bound(&ranges, threads, backend))
            .map_err(to_py)?;
        measured(py, m)
    })
}

/// The chunk cache's policy alone on a stream of batches of chunk numbers (see
/// ``rust/cache``): ``{"hits", "lookups", "evictions"}``.
#[pyfunction]
#[pyo3(signature = (budget, policy, chunk_bytes, batches))]
fn cache_replay<'py>(
    py: Python<'py>,
    budget: usize,
    policy: &str,
    chunk_bytes: usize,
    batches: Vec<Vec<u64>>,
) -> PyResult<Bound<'py, PyDict>> {
    boundary("replaying the cache policy", || {
        let kind = cache::PolicyKind::from_name(policy).map_err(to_py)?;
        let s = py.detach(|| cache::replay(budget, kind, chunk_bytes, &batches));
        let out = PyDict::new(py);
        out.set_item("hits", s.hits)?;
        out.set_item("lookups", s.hits + s.misses)?;
        out.set_item("evictions", s.evictions)?;
        Ok(out)
    })
}

/// Panics inside the boundary that every entry point has: the test that a panic reaches
/// Python as an ``LsioError``, never as a ``PanicException``.
#[pyfunction]
fn _panic_at_the_boundary(message: &str) -> PyResult<()> {
    boundary("testing the panic boundary", || panic!("{message}"))
}

/// The I/O backend engines use in this process: ``"io_uring"`` or ``"pread"``.
#[pyfunction]
fn io_backend() -> PyResult<&'static str> {
    Ok(choose_backend().map_err(to_py)?.backend.name())
}

/// Why io_uring is not used here, or ``None`` when it is (or ``LSIO_IO`` chose pread).
#[pyfunction]
fn io_fallback_reason() -> PyResult<Option<String>> {
    Ok(choose_backend().map_err(to_py)?.fallback_reason)
}

#[pymodule]
fn _lsio_torch(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Array>()?;
    m.add_class::<References>()?;
    m.add_class::<Sampler>()?;
    m.add_class::<Engine>()?;
    m.add_class::<ChunkCache>()?;
    m.add_class::<BatchPool>()?;
    m.add_class::<DiskCache>()?;
    m.add_function(wrap_pyfunction!(io_backend, m)?)?;
    m.add_function(wrap_pyfunction!(redact, m)?)?;
    m.add_function(wrap_pyfunction!(icechunk_session_repository, m)?)?;
    m.add_function(wrap_pyfunction!(io_fallback_reason, m)?)?;
    m.add_function(wrap_pyfunction!(decode_bound, m)?)?;
    m.add_function(wrap_pyfunction!(read_ranges, m)?)?;
    m.add_function(wrap_pyfunction!(disk_bound, m)?)?;
    m.add_function(wrap_pyfunction!(cache_replay, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_at_the_boundary, m)?)?;
    m.add("LsioError", m.py().get_type::<LsioError>())?;
    Ok(())
}
