//! What the planner keeps between batches: shard indexes and missing files; the files a batch
//! reads, opened through the process's shared [`open_files`].

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::shared::Shared;
use crate::cache::disk::object_key;
use crate::error::{Error, Result};
use crate::io::open_files::{self, Identity};
use crate::io::remote::Expected;
use crate::zarr::references::Check;
use crate::zarr::shard_index::ShardIndex;

/// Shard indexes kept per engine; the oldest is forgotten first.
const SHARD_INDEX_CACHE: usize = 4096;
/// Missing chunk files remembered per engine (an iteration), so each is looked for once.
const MISSING_FILES: usize = 1 << 16;

/// A chunk or shard file a batch reads: open (shared with every engine of the process), an
/// object of a store, or neither when it does not exist.
pub(super) struct OpenFile {
    pub(super) path: PathBuf,
    pub(super) file: Option<Arc<open_files::OpenFile>>,
    pub(super) object: Option<Object>,
}

/// A shard object's size and ETag.
pub(super) type ObjectVersion = (u64, Option<String>);

/// A chunk or shard in an object store.
#[derive(Clone, Debug)]
pub(super) struct Object {
    pub(super) key: object_store::path::Path,
    /// The object's size, once a request has told it (a shard's, from its index read).
    pub(super) size: Option<u64>,
    /// The version of the object its index was read from: chunk reads ask for that one.
    pub(super) etag: Option<String>,
    /// Its store's number among the array's (`Location::stores`, `Shared::clients`).
    pub(super) store: usize,
    /// A target referenced as of this time (seconds since the epoch) is read only while it
    /// is unmodified since.
    pub(super) unmodified_since: Option<u64>,
}

impl Object {
    /// The version a read of the object must find.
    pub(super) fn expected(&self) -> Expected {
        Expected {
            etag: self.etag.clone(),
            unmodified_since: self.unmodified_since,
        }
    }
}

impl OpenFile {
    /// Whether the file or object is known not to exist (its chunks are the fill value).
    pub(super) fn is_missing(&self) -> bool {
        self.file.is_none() && self.object.is_none()
    }
}

/// At most `limit` values by file coordinates; the oldest entry is dropped first.
pub(super) struct Bounded<V> {
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

    pub(super) fn get(&self, key: &[u64]) -> Option<&V> {
        self.map.get(key)
    }

    pub(super) fn insert(&mut self, key: Vec<u64>, value: V) {
        while self.map.len() >= self.limit {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&oldest);
        }
        self.order.push_back(key.clone());
        self.map.insert(key, value);
    }

    #[cfg(test)]
    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

/// What the planner keeps between batches: shard indexes, with the identity of the file each
/// was read from (for an object, its size), and the files known to be missing. Open files are
/// kept by [`open_files`], for every engine of the process within one budget of descriptors.
pub(crate) struct PlanCache {
    pub(super) indexes: Bounded<(Identity, Arc<ShardIndex>)>,
    /// Indexes of shards in an object store: an engine reads each once (a later iteration
    /// reads them anew, and sees shards replaced since).
    pub(super) object_indexes: Bounded<(ObjectVersion, Arc<ShardIndex>)>,
    /// Indexes of the shards of a sharded array by reference, by shard coordinates: the set
    /// is read once per engine, and says where each shard lies.
    pub(super) reference_indexes: Bounded<Arc<ShardIndex>>,
    pub(super) missing: Bounded<()>,
}

impl Default for PlanCache {
    fn default() -> Self {
        Self {
            indexes: Bounded::new(SHARD_INDEX_CACHE),
            object_indexes: Bounded::new(SHARD_INDEX_CACHE),
            reference_indexes: Bounded::new(SHARD_INDEX_CACHE),
            missing: Bounded::new(MISSING_FILES),
        }
    }
}

impl PlanCache {
    /// The file at `coords`: kept open from an earlier batch, or opened now.
    pub(super) fn file(&mut self, shared: &Shared, coords: &[u64]) -> Result<OpenFile> {
        let path = shared.array.file_path(coords);
        if self.missing.get(coords).is_some() {
            return Ok(OpenFile {
                path,
                file: None,
                object: None,
            });
        }
        if let Some(number) = shared.array.store_of(coords) {
            let store = shared.store(number)?;
            let key = store.key(&shared.array.file_key(coords));
            let version = self.object_indexes.get(coords).map(|(v, _)| v.clone());
            let (size, mut etag) = version.map_or((None, None), |(size, etag)| (Some(size), etag));
            // A target referenced at a version is read only at that version (`If-Match`,
            // `If-Unmodified-Since`).
            let mut unmodified_since = None;
            match shared.array.target_check(coords) {
                Some(Check::ETag(tag)) => etag = Some(tag),
                Some(Check::UnmodifiedSince(at)) => unmodified_since = Some(at),
                None => {}
            }
            return Ok(OpenFile {
                path,
                file: None,
                object: Some(Object {
                    key,
                    size,
                    etag,
                    store: number,
                    unmodified_since,
                }),
            });
        }
        let (file, opened) = open_files::open(&path, shared.direct_io)
            .map_err(|e| Error::io(&path, "opening a chunk file", e))?;
        let counters = &shared.counters;
        if let (Some(open), Some(Check::UnmodifiedSince(at))) =
            (&file, shared.array.target_check(coords))
        {
            unchanged_since(open, at)?;
        }
        match &file {
            None if shared.array.is_referenced() => return Err(missing_target(&path)),
            None => self.missing.insert(coords.to_vec(), ()),
            Some(file) if opened => {
                counters.files_opened.fetch_add(1, Ordering::Relaxed);
                if file.direct.is_some() {
                    counters.files_direct.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(_) => {}
        }
        Ok(OpenFile {
            path,
            file,
            object: None,
        })
    }

    /// The cached index of the shard at `coords`, if it was read from the file `file` is now
    /// (a shard replaced since has its index read again).
    pub(super) fn index(
        &self,
        coords: &[u64],
        file: &open_files::OpenFile,
    ) -> Option<Arc<ShardIndex>> {
        self.indexes
            .get(coords)
            .filter(|(identity, _)| *identity == file.identity)
            .map(|(_, index)| Arc::clone(index))
    }
}

/// The error for a file a reference set points into that is not there: never the fill value,
/// since the set says the chunk was written.
pub(super) fn missing_target(path: &std::path::Path) -> Error {
    let gone = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the file a reference points into is missing (moved or deleted since the references \
         were made?)",
    );
    Error::io(path, "reading a chunk by reference", gone)
}

/// An error unless the file a reference points into was last modified at or before `at`
/// (seconds since the epoch): one modified since holds other bytes than were referenced.
fn unchanged_since(open: &open_files::OpenFile, at: u64) -> Result<()> {
    let reading = "reading a chunk by reference";
    let modified = open
        .file
        .metadata()
        .and_then(|m| m.modified())
        .map_err(|e| Error::io(&open.path, reading, e))?;
    let seconds = modified
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if seconds > at {
        let changed = std::io::Error::other(format!(
            "the file changed since it was referenced: modified at {seconds} s since the \
             epoch, referenced as of {at}"
        ));
        return Err(Error::io(&open.path, reading, changed));
    }
    Ok(())
}

/// The disk cache's key for a remote object of a batch: `None` where its version is not known
/// before it is fetched (a chunk that is an object of its own, or a store that gives no ETags).
pub(super) fn disk_key(shared: &Shared, file: &OpenFile) -> Option<String> {
    let object = file.object.as_ref()?;
    let store = shared.array.location.stores().get(object.store)?;
    let (size, etag) = (object.size?, object.etag.as_deref()?);
    Some(object_key(&store.object_url(&object.key), size, etag))
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
}
