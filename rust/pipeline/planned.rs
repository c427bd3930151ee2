//! A batch planned down to its reads: each crop's chunks located, their files open and
//! shard indexes read, each chunk's byte range known.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::files::{disk_key, OpenFile, PlanCache};
use super::referenced_shards::leaf_references;
use super::shared::{unless_stopped, Shared};
use super::targets::{needed_span, target_layout};
use crate::cache::disk::{Entry, Held, Inode};
use crate::cache::{Claims, DiskCache, Lookup, Promise};
use crate::error::{Error, Result};
use crate::io::remote::{self, Expected, Net, Wanted};
use crate::io::{direct_range, open_files, ReadOp, Reader};
use crate::plan::{files_touched, plan_batch, ChunkTask};
use crate::zarr::array::ChunkLocation;
use crate::zarr::codecs::IndexLocation;
use crate::zarr::references::Entry as Reference;
use crate::zarr::shard_index::{ShardIndex, Slot};
use crate::zarr::ZarrArray;

/// Where one leaf chunk's elements come from.
#[derive(Clone)]
pub(crate) enum Source {
    /// Never written: the fill value.
    Fill,
    /// Stored bytes, read by one of the batch's `PlannedRead`s.
    Encoded,
    /// Decoded already, in the chunk cache.
    Cached(Arc<Vec<u8>>),
    /// Being decoded by an earlier batch, which hands it over when it is.
    Awaited(Arc<Promise>),
    /// Held inline by a reference set (a small chunk): decoded on the pool with the
    /// chunks the batch does not read.
    Inline(Arc<[u8]>),
}

/// One chunk read of a planned batch.
#[derive(Clone, Debug)]
pub(crate) struct PlannedRead {
    pub(crate) task: usize,
    /// An index into `Planned::files`.
    pub(crate) file: usize,
    pub(crate) offset: u64,
    pub(crate) len: usize,
    /// The byte of the chunk the read starts at: 0 for a whole chunk.
    pub(super) chunk_start: usize,
    /// Where in the output the bytes go when they are read straight into it.
    pub(super) direct: Option<usize>,
    /// The whole object, whatever its size (`len` is then 0): a chunk of a remote array that
    /// is not sharded, whose size nothing has told yet.
    pub(super) whole: bool,
    /// The chunk's bytes are in the disk cache's `.data` file of its object, not yet checked
    /// by this process there: that file's index into `Planned::files`, and the CRC-32C its
    /// bytes must have; they are read, checked, then decoded (the read's own `file` stays
    /// the object's, to fetch the chunk again if they are bad). A chunk checked already is
    /// read like a local one: `file` is then the `.data` file's (at the same offset).
    pub(super) disk: Option<(usize, u32)>,
}

/// A batch whose files are open and whose shard indexes are read: what remains is reading
/// its chunks.
pub(crate) struct Planned {
    pub(super) tasks: Vec<ChunkTask>,
    pub(super) locations: Vec<ChunkLocation>,
    pub(super) files: Vec<OpenFile>,
    pub(super) sources: Vec<Source>,
    pub(crate) reads: Vec<PlannedRead>,
    /// With a chunk cache: the chunks this batch decodes and hands to it (every chunk it
    /// reads).
    pub(super) claims: Option<Claims>,
}

impl Planned {
    /// The path of the file a read is from.
    pub(crate) fn path(&self, read: &PlannedRead) -> &std::path::Path {
        &self.files[read.file].path
    }

    /// Every read of the batch as a reader op, in order (`plan_reads` makes reads only of
    /// files it opened, so none is left out).
    pub(super) fn ops(&self) -> Vec<ReadOp<'_>> {
        self.reads
            .iter()
            .filter_map(|r| self.op(&[r]).ok())
            .collect()
    }

    /// A failed read, naming its file and chunk.
    pub(super) fn read_error(&self, read: &PlannedRead, e: std::io::Error) -> Error {
        Error::io(
            self.path(read),
            format!("reading chunk {:?}", self.tasks[read.task].chunk),
            e,
        )
    }

    /// One request for a run of reads of one file whose byte ranges meet.
    pub(super) fn op(&self, run: &[&PlannedRead]) -> Result<ReadOp<'_>> {
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
    pub(super) fn direct_op(&self, run: &[&PlannedRead]) -> Result<(ReadOp<'_>, usize, usize)> {
        let op = self.op(run)?;
        if let Some(open) = &self.files[run[0].file].file {
            if let Some((file, align)) = &open.direct {
                if let Some((offset, len, skip)) = direct_range(op.offset, op.len, *align, open.len)
                {
                    return Ok((ReadOp { file, offset, len }, *align, skip));
                }
            }
        }
        Ok((op, 1, 0))
    }

    /// The error of a failed request for `run`, naming the chunk at fault: a run of several
    /// chunks is read again chunk by chunk to find it.
    pub(super) fn failed_read(
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
    pub(super) fn file(&self, read: &PlannedRead) -> Option<&File> {
        self.files[read.file].file.as_deref().map(|open| &open.file)
    }
}

/// Plans a batch, opens its files and reads the shard indexes it lacks. Out of file
/// descriptors (other batches in flight hold them), the files it opened are let go and it is
/// planned again once batches have ended, for up to [`open_files::WAIT_FOR_DESCRIPTORS`].
///
/// # Errors
/// [`Error::Io`] or [`Error::Corrupt`] for a file or shard index that cannot be read.
pub(crate) fn plan_reads(
    shared: &Shared,
    reader: &mut dyn Reader,
    net: Option<&Net>,
    cache: &mut PlanCache,
    origins: &[Vec<u64>],
    ahead: &[&[Vec<u64>]],
) -> Result<Planned> {
    let started = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        match plan_reads_once(shared, reader, net, cache, origins, ahead) {
            Err(Error::Io { path, what, source })
                if open_files::out_of_descriptors(&source)
                    && !shared.cancel.load(Ordering::Relaxed) =>
            {
                if started.elapsed() > open_files::WAIT_FOR_DESCRIPTORS {
                    let explained =
                        std::io::Error::new(source.kind(), open_files::explain(&source));
                    return Err(Error::io(path, what, explained));
                }
                // Engines out of descriptors together back off by different amounts.
                let jitter = u64::from(started.elapsed().subsec_nanos() % 1000);
                std::thread::sleep(pause + Duration::from_micros(jitter));
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn plan_reads_once(
    shared: &Shared,
    reader: &mut dyn Reader,
    net: Option<&Net>,
    cache: &mut PlanCache,
    origins: &[Vec<u64>],
    ahead: &[&[Vec<u64>]],
) -> Result<Planned> {
    let array = &shared.array;
    let tasks = plan_batch(array.leaf_shape(), &shared.window, origins);
    // For an array by reference, what the set holds for each chunk.
    let references: Vec<Option<Reference>> = if array.is_referenced() {
        let leaves: Vec<&[u64]> = tasks.iter().map(|t| t.chunk.as_slice()).collect();
        match array.sharding() {
            Some(sharding) => {
                leaf_references(shared, sharding, (reader, net), cache, &leaves, ahead)?
            }
            None => array.references_of(&leaves)?,
        }
    } else {
        Vec::new()
    };
    let locations: Vec<ChunkLocation> = if array.is_referenced() {
        // A chunk's file is its target; in a sharded array, its place in its shard is kept
        // for messages.
        let at = |(r, t): (&Option<Reference>, &ChunkTask)| ChunkLocation {
            inner: array.sharding().map_or(0, |_| array.locate(&t.chunk).inner),
            ..ZarrArray::reference_location(r.as_ref())
        };
        references.iter().zip(&tasks).map(at).collect()
    } else {
        tasks.iter().map(|t| array.locate(&t.chunk)).collect()
    };

    // Chunks in the cache, or being decoded by an earlier batch, are not read.
    let mut claims = shared.cache.as_ref().map(|(cache, _)| cache.claims());
    let mut looked_up: Vec<Option<Source>> = vec![None; tasks.len()];
    if let (Some(claims), Some((cache, _))) = (&mut claims, &shared.cache) {
        for (task, found) in tasks.iter().zip(&mut looked_up) {
            *found = match cache.lookup(claims, shared.cache_key(task)) {
                Lookup::Hit(chunk) => Some(Source::Cached(chunk)),
                Lookup::Fill => Some(Source::Fill),
                Lookup::Wait(promise) => Some(Source::Awaited(promise)),
                Lookup::Mine => None,
            };
        }
    }

    // Chunks a reference set does not list are the fill value; those it holds inline need
    // no read.
    if array.is_referenced() {
        for (found, reference) in looked_up.iter_mut().zip(&references) {
            if found.is_some() {
                continue;
            }
            *found = match reference {
                None => Some(Source::Fill),
                Some(Reference::Inline(bytes)) => Some(Source::Inline(Arc::clone(bytes))),
                Some(_) => None,
            };
        }
    }

    // Each file the batch reads, open.
    let mut file_ids: BTreeMap<&[u64], usize> = BTreeMap::new();
    let mut files: Vec<OpenFile> = Vec::new();
    for (location, found) in locations.iter().zip(&looked_up) {
        if found.is_some() || file_ids.contains_key(location.file.as_slice()) {
            continue;
        }
        file_ids.insert(&location.file, files.len());
        files.push(cache.file(shared, &location.file)?);
    }

    // Shard indexes not yet cached, read together.
    let mut shard_index: Vec<Option<Arc<ShardIndex>>> = vec![None; files.len()];
    // (Those of an array by reference were read with its references.)
    if array.sharding().is_some() && !array.is_referenced() {
        match net {
            Some(net) => {
                let batch = (&file_ids, &mut files[..], &mut shard_index[..]);
                fetch_indexes(shared, net, cache, batch, ahead)?;
            }
            None => read_indexes(shared, reader, cache, &file_ids, &files, &mut shard_index)?,
        }
    }

    // Every chunk's bytes, read together.
    let mut sources: Vec<Source> = Vec::with_capacity(tasks.len());
    let mut reads = Vec::new();
    for (t, (location, found)) in locations.iter().zip(looked_up).enumerate() {
        if let Some(found) = found {
            sources.push(found);
            continue;
        }
        let id = file_ids[location.file.as_slice()];
        let file = &files[id];
        if file.is_missing() {
            sources.push(Source::Fill);
            continue;
        }
        // (offset, len, whole)
        let by_reference = references.get(t).and_then(Option::as_ref);
        let range = match (by_reference, &shard_index[id], &file.file) {
            (Some(Reference::Range { offset, len, .. }), ..) => Some((*offset, *len, false)),
            (Some(_), _, Some(open)) => Some((0, open.len, false)),
            (Some(_), _, None) => Some((0, 0, true)),
            (None, index, open) => match (index, open) {
                (Some(index), _) => match index.slot(location.inner) {
                    Slot::Empty => None,
                    Slot::Bytes { offset, len } => Some((offset, len, false)),
                },
                (None, _) if array.sharding().is_some() => None,
                (None, Some(open)) => Some((0, open.len, false)),
                // An object not sharded: stored as its elements it has the leaf's size, else
                // the whole object is fetched.
                (None, None) if shared.as_stored => Some((0, shared.leaf_bytes as u64, false)),
                (None, None) => Some((0, 0, true)),
            },
        };
        match range {
            None => sources.push(Source::Fill),
            Some((offset, len, whole)) => {
                sources.push(Source::Encoded);
                reads.push(PlannedRead {
                    task: t,
                    file: id,
                    offset,
                    len: len as usize,
                    chunk_start: 0,
                    direct: None,
                    whole,
                    disk: None,
                });
            }
        }
    }
    // Chunks never written are not kept: their claims end now, and batches waiting for
    // them write the fill value.
    if let Some(claims) = &claims {
        for (task, source) in tasks.iter().zip(&sources) {
            if matches!(source, Source::Fill) {
                claims
                    .cache()
                    .complete(claims, &shared.cache_key(task), None);
            }
        }
    }
    // Chunks whose bytes the disk cache holds are read from there.
    if let Some(disk) = &shared.disk_cache {
        to_disk_cache(disk, shared, &mut files, &mut reads)?;
    }
    // Local files first, then files of the disk cache to check, then the store's; each in
    // file order, so that chunks stored side by side are read together.
    reads.sort_by_key(|read| (read_source(&files, read), read.file, read.offset));
    Ok(Planned {
        tasks,
        locations,
        files,
        sources,
        reads,
        claims,
    })
}

/// Where a planned read is read from, in the order a batch reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ReadSource {
    LocalFile,
    DiskCacheToCheck,
    Store,
}

pub(super) fn read_source(files: &[OpenFile], read: &PlannedRead) -> ReadSource {
    if files[read.file].file.is_some() {
        ReadSource::LocalFile
    } else if read.disk.is_some() {
        ReadSource::DiskCacheToCheck
    } else {
        ReadSource::Store
    }
}

/// An object of a batch in the disk cache: its entry, its `.data` file's index into the
/// batch's files and inode, and whether its log may still be read in this batch (once).
type Kept = (Arc<Entry>, usize, Inode, bool);

/// Turns reads of remote chunks whose bytes the disk cache holds into reads of their object's
/// `.data` file (at the same offset): local reads where this process checked the chunk in that
/// file already, else reads to check.
///
/// # Errors
/// [`Error::Io`] out of file descriptors (the batch is planned again).
fn to_disk_cache(
    disk: &DiskCache,
    shared: &Shared,
    files: &mut Vec<OpenFile>,
    reads: &mut [PlannedRead],
) -> Result<()> {
    let mut objects: HashMap<usize, Option<Kept>> = HashMap::new();
    for read in reads.iter_mut() {
        adopt_version(disk, shared, files, read);
        if read.whole {
            continue;
        }
        let kept = match objects.entry(read.file) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(open_kept(disk, shared, files, read.file)?)
            }
        };
        let Some((entry, data, inode, refresh)) = kept else {
            continue;
        };
        match entry.held(*inode, read.offset, read.len, refresh) {
            Held::No => {}
            Held::Checked => {
                disk.note_hit(read.len as u64);
                read.file = *data;
            }
            Held::ToCheck(crc) => read.disk = Some((*data, crc)),
        }
    }
    Ok(())
}

/// A chunk that is an object of its own, fetched whole by this process before: read as that
/// version (its size known, the folder's copy used, a fetch asking for that version).
fn adopt_version(
    disk: &DiskCache,
    shared: &Shared,
    files: &mut [OpenFile],
    read: &mut PlannedRead,
) {
    let Some(object) = files[read.file].object.as_mut() else {
        return;
    };
    let Some(store) = shared.array.location.stores().get(object.store) else {
        return;
    };
    if shared.array.sharding().is_some() || object.etag.is_some() {
        return;
    }
    let Some((size, etag)) = disk.version(&store.object_url(&object.key)) else {
        return;
    };
    if read.whole || (read.offset == 0 && read.len as u64 == size) {
        object.size = Some(size);
        object.etag = Some(etag);
        read.whole = false;
        read.offset = 0;
        read.len = usize::try_from(size).unwrap_or(usize::MAX);
    }
}

/// The disk cache's entry of the object `files[file]` and its `.data` file, opened (kept
/// open between batches as local files are): `None` where the object's version is unknown or
/// the folder holds none of it.
fn open_kept(
    disk: &DiskCache,
    shared: &Shared,
    files: &mut Vec<OpenFile>,
    file: usize,
) -> Result<Option<Kept>> {
    let Some(key) = disk_key(shared, &files[file]) else {
        return Ok(None);
    };
    let entry = disk.entry(&key);
    let path = entry.data_path();
    // A kept `.data` file evicted since (by this process or another) is closed: the path
    // names the object's new files, which the log describes.
    let deleted = |open: &open_files::OpenFile| {
        open.file
            .metadata()
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::nlink(&m) == 0)
    };
    let mut opened = open_files::open(path, false);
    if let Ok((Some(open), false)) = &opened {
        if deleted(open) {
            open_files::forget(path, false);
            opened = open_files::open(path, false);
        }
    }
    let open = match opened {
        Ok((Some(open), _)) => open,
        Ok((None, _)) => return Ok(None),
        Err(e) if open_files::out_of_descriptors(&e) => {
            return Err(Error::io(path, "opening a file of the disk cache", e));
        }
        // Unreadable: fetched from the store instead.
        Err(_) => return Ok(None),
    };
    let inode = open.identity.inode();
    let id = files.len();
    files.push(OpenFile {
        path: path.to_path_buf(),
        file: Some(open),
        object: None,
    });
    Ok(Some((entry, id, inode, true)))
}

/// Reads the indexes of a batch's local shards that are not cached, together.
fn read_indexes(
    shared: &Shared,
    reader: &mut dyn Reader,
    cache: &mut PlanCache,
    file_ids: &BTreeMap<&[u64], usize>,
    files: &[OpenFile],
    shard_index: &mut [Option<Arc<ShardIndex>>],
) -> Result<()> {
    if let Some(sharding) = shared.array.sharding() {
        let per_shard_shape = shared.array.leaves_per_file();
        let index_len = sharding.index_len;
        let mut wanted = Vec::new();
        let mut ops = Vec::new();
        for (coords, &id) in file_ids {
            let Some(open) = &files[id].file else {
                continue;
            };
            if let Some(index) = cache.index(coords, open) {
                shard_index[id] = Some(index);
                continue;
            }
            let (file, len) = (&open.file, &open.len);
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
            let Some(open) = &files[id].file else {
                continue;
            };
            let shard_len = open.len;
            let index = ShardIndex::decode(sharding, &bytes, &per_shard_shape, shard_len)
                .map_err(|reason| Error::corrupt(path, "shard index", reason))?;
            let index = Arc::new(index);
            cache
                .indexes
                .insert(coords, (open.identity, Arc::clone(&index)));
            shard_index[id] = Some(index);
        }
    }
    Ok(())
}

/// A batch's files by shard coordinates, its files, and their shard indexes.
type BatchFiles<'a, 'b> = (
    &'a BTreeMap<&'b [u64], usize>,
    &'a mut [OpenFile],
    &'a mut [Option<Arc<ShardIndex>>],
);

/// The shards in an object store that the batches `ahead` touch and whose indexes are not
/// cached, but for those in `skip`: each with its object's key.
fn shards_ahead(
    shared: &Shared,
    cache: &PlanCache,
    skip: &BTreeMap<&[u64], usize>,
    ahead: &[&[Vec<u64>]],
) -> Vec<(Vec<u64>, object_store::path::Path)> {
    let Some(store) = shared.array.location.remote() else {
        return Vec::new();
    };
    let array = &shared.array;
    let per_file = array.leaves_per_file();
    let mut out = Vec::new();
    for coords in files_touched(array.leaf_shape(), &per_file, &shared.window, ahead) {
        let known = skip.contains_key(coords.as_slice())
            || cache.object_indexes.get(&coords).is_some()
            || cache.missing.get(&coords).is_some();
        if !known {
            let key = store.key(&array.file_key(&coords));
            out.push((coords, key));
        }
    }
    out
}

/// Fetches the indexes of a batch's shards in an object store that are not cached, all at
/// once: an index at the end by a suffix range (a HEAD first where the store refuses those).
/// In the same round trip, the indexes of the shards that the batches queued `ahead` of it
/// will need (so that an epoch whose chunks are all on local disk waits for the store once,
/// not once per batch that meets a new shard). A shard that is missing is remembered as
/// such: its chunks are the fill value.
fn fetch_indexes(
    shared: &Shared,
    net: &Net,
    cache: &mut PlanCache,
    (file_ids, files, shard_index): BatchFiles<'_, '_>,
    ahead: &[&[Vec<u64>]],
) -> Result<()> {
    let Some(sharding) = shared.array.sharding() else {
        return Ok(());
    };
    let per_shard_shape = shared.array.leaves_per_file();
    let index_len = sharding.index_len;
    let mut wanted = Vec::new();
    for (coords, &id) in file_ids {
        let Some(object) = &files[id].object else {
            continue;
        };
        if let Some((_, index)) = cache.object_indexes.get(coords) {
            shard_index[id] = Some(Arc::clone(index));
            continue;
        }
        wanted.push((coords.to_vec(), Some(id), object.key.clone()));
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let later = shards_ahead(shared, cache, file_ids, ahead);
    wanted.extend(later.into_iter().map(|(coords, key)| (coords, None, key)));
    let (Some(remote), Some((settings, store))) = (shared.array.location.remote(), shared.remote())
    else {
        return Err(Error::Stopped(
            "internal error: shard indexes fetched for a local array".into(),
        ));
    };
    let (store, requests) = (store.as_ref(), net.requests.as_ref());
    let part_bytes = settings.part_bytes;
    let suffix = remote.serves_suffix_ranges();
    let at_start = matches!(sharding.index_location, IndexLocation::Start);
    let fetches = wanted.iter().map(|(_, _, key)| async move {
        let range = if at_start {
            Wanted::Range(0..index_len)
        } else if suffix {
            Wanted::Suffix(index_len)
        } else {
            match remote::size(store, key, requests).await? {
                None => return Ok(None),
                Some(size) => Wanted::Range(size.saturating_sub(index_len)..size),
            }
        };
        remote::get(store, key, range, part_bytes, requests, &Expected::ANY).await
    });
    let fetched = net.block_on(unless_stopped(shared, futures::future::join_all(fetches)))?;
    for ((coords, id), result) in wanted.into_iter().map(|(c, i, _)| (c, i)).zip(fetched) {
        // A shard of a later batch whose index cannot be had now is that batch's to fetch
        // (and to fail on).
        let Some(id) = id else {
            if let Ok(fetched) = result {
                keep_index_ahead(shared, cache, coords, fetched);
            }
            continue;
        };
        let path = &files[id].path;
        let fetched = result.map_err(|e| Error::io(path, "reading the shard index", e))?;
        let Some(fetched) = fetched else {
            cache.missing.insert(coords, ());
            files[id].object = None;
            continue;
        };
        shared
            .counters
            .bytes_read
            .fetch_add(fetched.bytes.len() as u64, Ordering::Relaxed);
        if fetched.size < index_len {
            return Err(Error::corrupt(
                path,
                "shard",
                format!(
                    "{} bytes, too short for its index of {index_len} bytes",
                    fetched.size
                ),
            ));
        }
        let index = ShardIndex::decode(sharding, &fetched.bytes, &per_shard_shape, fetched.size)
            .map_err(|reason| Error::corrupt(path, "shard index", reason))?;
        let index = Arc::new(index);
        let version = (fetched.size, fetched.etag.clone());
        cache
            .object_indexes
            .insert(coords, (version, Arc::clone(&index)));
        if let Some(object) = &mut files[id].object {
            object.size = Some(fetched.size);
            object.etag = fetched.etag;
        }
        shard_index[id] = Some(index);
    }
    Ok(())
}

/// Keeps the index of a shard of a later batch, fetched ahead (missing: the shard is); one
/// that is not a good index is left for that batch to fetch and report.
fn keep_index_ahead(
    shared: &Shared,
    cache: &mut PlanCache,
    coords: Vec<u64>,
    fetched: Option<remote::Fetched>,
) {
    let Some(sharding) = shared.array.sharding() else {
        return;
    };
    let Some(fetched) = fetched else {
        cache.missing.insert(coords, ());
        return;
    };
    shared
        .counters
        .bytes_read
        .fetch_add(fetched.bytes.len() as u64, Ordering::Relaxed);
    let per_shard_shape = shared.array.leaves_per_file();
    let index = ShardIndex::decode(sharding, &fetched.bytes, &per_shard_shape, fetched.size);
    if let (Ok(index), true) = (index, fetched.size >= sharding.index_len) {
        let version = (fetched.size, fetched.etag);
        cache
            .object_indexes
            .insert(coords, (version, Arc::new(index)));
    }
}

/// Narrows each read of a chunk stored as its elements to the bytes its crops need, from the
/// first to the last; a chunk that is one contiguous run of one crop is read straight into
/// the output (unless its elements are cast on the way).
///
/// # Errors
/// [`Error::Corrupt`] for a stored chunk whose length is not the chunk's.
pub(crate) fn read_only_what_crops_need(shared: &Shared, planned: &mut Planned) -> Result<()> {
    // A chunk a cache will keep is read whole.
    if !shared.as_stored || planned.claims.is_some() {
        return Ok(());
    }
    let element = shared.array.dtype.size();
    for read in &mut planned.reads {
        let kept = shared.disk_cache.is_some()
            && read_source(&planned.files, read) != ReadSource::LocalFile;
        if kept {
            continue;
        }
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
pub(super) fn advise(reader: &mut dyn Reader, planned: &Planned) {
    let ops = planned.ops();
    reader.advise(&ops);
}

#[cfg(test)]
mod tests {
    //! The planning math on arrays zarr-python wrote (`tests/fixtures`): which chunks a batch
    //! reads, at which byte ranges, checked against the files' own bytes (each shard index
    //! parsed here, independently of `zarr::shard_index`).
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::io::pread::PreadReader;
    use crate::io::Backend;
    use crate::window::Window;
    use crate::zarr::ZarrArray;

    /// The fixtures' inner chunk grid: (6, 10, 9) in chunks of (2, 4, 3), shards of (4, 8, 6).
    const INNER: [u64; 3] = [2, 4, 3];
    const PER_SHARD: usize = 2 * 2 * 2;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn shared(path: &Path, crop: &[u64]) -> Shared {
        let array = Arc::new(ZarrArray::open(path).unwrap());
        Shared::new(array, Window::crop(crop), Backend::Pread, None).unwrap()
    }

    fn plan(shared: &Shared, origins: &[Vec<u64>]) -> Planned {
        let mut cache = PlanCache::default();
        plan_reads(shared, &mut PreadReader, None, &mut cache, origins, &[]).unwrap()
    }

    /// A shard's index as zarr-python wrote it: `(offset, length)` per inner chunk, little
    /// endian, then a CRC-32C, at the end of the file or at its start.
    fn index_of(path: &Path, at_end: bool) -> Vec<(u64, u64)> {
        let bytes = std::fs::read(path).unwrap();
        let size = 16 * PER_SHARD;
        let raw = if at_end {
            &bytes[bytes.len() - size - 4..bytes.len() - 4]
        } else {
            &bytes[..size]
        };
        raw.chunks(16)
            .map(|e| {
                let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
                (word(&e[..8]), word(&e[8..]))
            })
            .collect()
    }

    /// Every inner chunk that crops of `crop` at `origins` touch, counted element by element.
    fn touched(crop: &[u64], origins: &[Vec<u64>]) -> Vec<Vec<u64>> {
        let mut out = std::collections::BTreeSet::new();
        for o in origins {
            for i in o[0]..o[0] + crop[0] {
                for j in o[1]..o[1] + crop[1] {
                    for k in o[2]..o[2] + crop[2] {
                        out.insert(vec![i / INNER[0], j / INNER[1], k / INNER[2]]);
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// The reads of a sharded fixture's batch are exactly the written slots of the chunks
    /// its crops touch, at the offsets and lengths the shard index on disk gives; chunks in
    /// an empty slot or a shard never written read nothing and are the fill value.
    fn check_sharded(name: &str, at_end: bool) {
        let crop = [3, 5, 4];
        let origins = vec![vec![0, 0, 0], vec![1, 3, 2], vec![3, 5, 5], vec![2, 2, 0]];
        let shared = shared(&fixture(name), &crop);
        let planned = plan(&shared, &origins);
        let chunks: Vec<_> = planned.tasks.iter().map(|t| t.chunk.clone()).collect();
        assert_eq!(chunks, touched(&crop, &origins));
        let mut expected = Vec::new();
        for (t, chunk) in chunks.iter().enumerate() {
            let shard: Vec<u64> = chunk.iter().map(|c| c / 2).collect();
            let inner = ((chunk[0] % 2) * 4 + (chunk[1] % 2) * 2 + chunk[2] % 2) as usize;
            let path = fixture(name).join(format!("c/{}/{}/{}", shard[0], shard[1], shard[2]));
            let slot = path
                .exists()
                .then(|| index_of(&path, at_end)[inner])
                .filter(|&(offset, len)| (offset, len) != (u64::MAX, u64::MAX));
            match slot {
                Some((offset, len)) => {
                    assert!(matches!(planned.sources[t], Source::Encoded), "{chunk:?}");
                    expected.push((path, offset, len as usize));
                }
                None => assert!(matches!(planned.sources[t], Source::Fill), "{chunk:?}"),
            }
        }
        // The fixture's holes: the empty slot of inner chunk (0, 1, 0), and rows 4..6.
        let fills = |c: &Vec<u64>| c == &vec![0, 1, 0] || c[0] >= 2;
        let filled: Vec<bool> = planned
            .sources
            .iter()
            .map(|s| matches!(s, Source::Fill))
            .collect();
        assert_eq!(filled, chunks.iter().map(fills).collect::<Vec<_>>());
        let mut got: Vec<_> = planned
            .reads
            .iter()
            .map(|r| (planned.path(r).to_path_buf(), r.offset, r.len))
            .collect();
        // Reads go out in file order, then offset order: chunks side by side are read together.
        let in_order = got
            .windows(2)
            .all(|w| (&w[0].0, w[0].1) < (&w[1].0, w[1].1));
        assert!(in_order, "{got:?}");
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_batch_reads_each_chunk_at_its_slot_in_a_shard_indexed_at_the_end() {
        check_sharded("sharded_end_int16.zarr", true);
    }

    #[test]
    fn a_batch_reads_each_chunk_at_its_slot_in_a_shard_indexed_at_the_start() {
        check_sharded("sharded_start_float32.zarr", false);
    }

    #[test]
    fn an_unsharded_batch_reads_each_chunk_file_whole_and_missing_files_as_fill() {
        let crop = [2, 6, 5];
        let origins = vec![vec![0, 2, 1], vec![3, 4, 4]];
        let path = fixture("unsharded_uint8.zarr");
        let shared = shared(&path, &crop);
        let planned = plan(&shared, &origins);
        let chunks = touched(&crop, &origins);
        assert_eq!(planned.tasks.len(), chunks.len());
        let mut reads = Vec::new();
        for (task, source) in planned.tasks.iter().zip(&planned.sources) {
            let c = &task.chunk;
            let file = path.join(format!("c/{}/{}/{}", c[0], c[1], c[2]));
            if file.exists() {
                assert!(matches!(source, Source::Encoded), "{c:?}");
                reads.push((
                    file.clone(),
                    0,
                    std::fs::metadata(&file).unwrap().len() as usize,
                ));
            } else {
                assert!(matches!(source, Source::Fill), "{c:?}");
            }
        }
        assert!(
            reads.len() < chunks.len(),
            "the fixture's holes are touched"
        );
        let got: Vec<_> = planned
            .reads
            .iter()
            .map(|r| (planned.path(r).to_path_buf(), r.offset, r.len))
            .collect();
        assert_eq!(got, reads);
        assert!(planned.reads.iter().all(|r| r.chunk_start == 0 && !r.whole));
    }

    /// A v3 array of (4, 6) uint16 in raw chunks of (2, 3), written here as zarr-python
    /// writes it: each chunk file its 12 bytes, little endian.
    fn raw_array() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let meta = r#"{"zarr_format": 3, "node_type": "array", "shape": [4, 6],
            "data_type": "uint16", "fill_value": 0,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 3]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]}"#;
        std::fs::write(dir.path().join("zarr.json"), meta).unwrap();
        for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let chunk = dir.path().join(format!("c/{i}"));
            std::fs::create_dir_all(&chunk).unwrap();
            std::fs::write(chunk.join(format!("{j}")), [0u8; 12]).unwrap();
        }
        dir
    }

    #[test]
    fn a_raw_chunk_is_read_from_the_first_to_the_last_byte_its_crops_need() {
        let dir = raw_array();
        // Row 1, columns 1..3 of chunk (0, 0): elements 4 and 5, bytes 8..12.
        let shared = shared(dir.path(), &[1, 2]);
        let mut planned = plan(&shared, &[vec![1, 1]]);
        read_only_what_crops_need(&shared, &mut planned).unwrap();
        let [read] = planned.reads.as_slice() else {
            panic!("one read: {:?}", planned.reads)
        };
        assert_eq!((read.offset, read.len, read.chunk_start), (8, 4, 8));
        // One run of one crop: read straight into the batch, at the crop's start.
        assert_eq!(read.direct, Some(0));
        // Two crops in one chunk, rows 0 and 1 at column 0: elements 0 and 3, bytes 0..8;
        // the second crop's bytes go to the batch's second crop (4 bytes on).
        let shared = self::shared(dir.path(), &[1, 1]);
        let mut planned = plan(&shared, &[vec![0, 0], vec![1, 0]]);
        read_only_what_crops_need(&shared, &mut planned).unwrap();
        let [read] = planned.reads.as_slice() else {
            panic!("one read: {:?}", planned.reads)
        };
        assert_eq!((read.offset, read.len, read.chunk_start), (0, 8, 0));
        assert_eq!(
            read.direct, None,
            "two crops' bytes are not one run of the batch"
        );
    }

    #[test]
    fn a_raw_chunk_of_the_wrong_length_is_corrupt_naming_it() {
        let dir = raw_array();
        std::fs::write(dir.path().join("c/1/1"), [0u8; 10]).unwrap();
        let shared = shared(dir.path(), &[1, 1]);
        let mut planned = plan(&shared, &[vec![3, 5]]);
        let e = read_only_what_crops_need(&shared, &mut planned).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("c/1/1") && message.contains("chunk [1, 1]"),
            "{message}"
        );
        assert!(message.contains("10 bytes, expected 12"), "{message}");
    }
}
