//! What the planner keeps between batches: chunk and shard files open, and shard indexes.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Shared;
use crate::error::{Error, Result};
use crate::io::open_direct;
use crate::zarr::shard_index::ShardIndex;

/// Shard indexes kept per engine; the oldest is forgotten first.
const SHARD_INDEX_CACHE: usize = 4096;
/// Chunk and shard files kept open per engine between batches; the oldest is closed first.
const OPEN_FILES: usize = 64;

/// An opened chunk or shard file with its length; `None` when it does not exist.
pub(super) struct OpenFile {
    pub(super) path: PathBuf,
    pub(super) file: Option<(File, u64)>,
    /// The file opened for direct I/O, with the alignment its reads need, when asked for and
    /// the file system allows it.
    pub(super) direct: Option<(File, usize)>,
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

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

/// What the planner keeps between batches: shard indexes, and files open (or known to be
/// missing), so each is opened once per iteration rather than once per batch.
pub(crate) struct PlanCache {
    pub(super) indexes: Bounded<Arc<ShardIndex>>,
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
    pub(super) fn file(&mut self, shared: &Shared, coords: &[u64]) -> Result<Arc<OpenFile>> {
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
