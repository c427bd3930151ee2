//! Decoded chunks kept past the batch: a byte budget of leaf chunks, shared by a dataset's
//! engines in one process and kept from batch to batch and epoch to epoch (the engines' threads
//! stop between iterations; the cache does not).
//!
//! A batch looks each of its chunks up while it is planned: a hit is copied straight from the
//! cache; a chunk another batch is decoding is waited for through a [`Promise`] (never
//! decoded twice at once); any other chunk the batch claims, decodes, and hands to the cache.
//! A claim not completed (a failed or stopped batch) is abandoned when the batch's
//! [`Claims`] are dropped, so no waiter is left waiting.
//!
//! Remote arrays have a second level, [`disk`]: the compressed bytes fetched, kept on local
//! disk across epochs, runs and processes.

pub mod disk;
mod policy;
mod promise;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use disk::{DiskCache, DiskStats};
use policy::Policy;
pub use policy::PolicyKind;
pub use promise::{Promise, Resolved};

/// A chunk in the cache: the array's number among the dataset's arrays, and the leaf chunk's
/// grid coordinates.
pub type Key = (u32, Box<[u64]>);

/// What a lookup found.
pub enum Lookup {
    /// The chunk, decoded.
    Hit(Arc<Vec<u8>>),
    /// Known never written: the fill value.
    Fill,
    /// Another batch is decoding it: its outcome.
    Wait(Arc<Promise>),
    /// Not there: the batch that looked decodes it, and completes its claim.
    Mine,
}

/// The cache's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Chunks copied from the cache.
    pub hits: u64,
    /// Chunks a batch waited for while another batch decoded them.
    pub waits: u64,
    /// Chunks looked up and not found: read and decoded.
    pub misses: u64,
    /// Chunks evicted to make room.
    pub evictions: u64,
    /// Bytes of decoded chunks held.
    pub bytes: u64,
    /// Chunks held.
    pub chunks: u64,
}

/// What a chunk known never written counts against the budget: its key and entry.
pub const FILL_MARK_BYTES: usize = 64;

/// Spare chunk buffers kept for reuse (those of evicted chunks): a miss decodes into one
/// instead of faulting in fresh memory.
const SPARE_BUFFERS: usize = 16;

/// A byte budget of decoded chunks.
pub struct ChunkCache {
    budget: usize,
    kind: PolicyKind,
    inner: Mutex<Inner>,
    next_owner: AtomicU64,
    hits: AtomicU64,
    waits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

struct Inner {
    index: HashMap<Key, u64>,
    entries: HashMap<u64, Entry>,
    next_id: u64,
    policy: Policy,
    bytes: usize,
    spare: Vec<Vec<u8>>,
}

enum Entry {
    /// Decoded (`None`: never written, the fill value), counted as `bytes`.
    Ready {
        key: Key,
        data: Option<Arc<Vec<u8>>>,
        bytes: usize,
    },
    Pending {
        owner: u64,
        waiters: Vec<Arc<Promise>>,
    },
}

fn key_hash(key: &Key) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

impl ChunkCache {
    /// A cache of at most `budget` bytes of decoded chunks, evicting by `kind`.
    #[must_use]
    pub fn new(budget: usize, kind: PolicyKind) -> Arc<Self> {
        Arc::new(Self {
            budget,
            kind,
            inner: Mutex::new(Inner {
                index: HashMap::new(),
                entries: HashMap::new(),
                next_id: 0,
                policy: Policy::new(kind, budget),
                bytes: 0,
                spare: Vec::new(),
            }),
            next_owner: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    #[must_use]
    pub fn budget(&self) -> usize {
        self.budget
    }

    #[must_use]
    pub fn policy(&self) -> PolicyKind {
        self.kind
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A batch's claims on the chunks it will decode, abandoned when dropped unless
    /// completed.
    #[must_use]
    pub fn claims(self: &Arc<Self>) -> Claims {
        Claims {
            cache: Arc::clone(self),
            owner: self.next_owner.fetch_add(1, Ordering::Relaxed),
            keys: Vec::new(),
        }
    }

    /// Looks `key` up for the batch of `claims`; a miss is claimed by it.
    pub fn lookup(&self, claims: &mut Claims, key: Key) -> Lookup {
        let mut inner = self.lock();
        if let Some(&id) = inner.index.get(&key) {
            match inner.entries.get_mut(&id) {
                Some(Entry::Ready { data, .. }) => {
                    let found = data
                        .as_ref()
                        .map_or(Lookup::Fill, |d| Lookup::Hit(Arc::clone(d)));
                    inner.policy.hit(id);
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return found;
                }
                Some(Entry::Pending { waiters, .. }) => {
                    let promise = Promise::new();
                    waiters.push(Arc::clone(&promise));
                    self.waits.fetch_add(1, Ordering::Relaxed);
                    return Lookup::Wait(promise);
                }
                None => {}
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.index.insert(key.clone(), id);
        inner.entries.insert(
            id,
            Entry::Pending {
                owner: claims.owner,
                waiters: Vec::new(),
            },
        );
        self.misses.fetch_add(1, Ordering::Relaxed);
        claims.keys.push(key);
        Lookup::Mine
    }

    /// A buffer of `len` bytes to decode a claimed chunk into: an evicted chunk's where one
    /// of that size is spare. Its contents are not defined; the decode writes every byte.
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        let spare = {
            let mut inner = self.lock();
            let at = inner.spare.iter().position(|b| b.len() == len);
            at.map(|at| inner.spare.swap_remove(at))
        };
        spare.unwrap_or_else(|| vec![0; len])
    }

    /// Ends a claim: the chunk, decoded (`Some`), or never written (`None`: the fill value,
    /// kept as a mark of [`FILL_MARK_BYTES`]). Waiters are resumed on this thread, after the
    /// cache is unlocked.
    pub fn complete(&self, claims: &Claims, key: &Key, data: Option<Vec<u8>>) {
        let waiters;
        let resolved;
        {
            let mut inner = self.lock();
            let Some(&id) = inner.index.get(key) else {
                return;
            };
            match inner.entries.get(&id) {
                Some(Entry::Pending { owner, .. }) if *owner == claims.owner => {}
                _ => return,
            }
            let Some(Entry::Pending { waiters: w, .. }) = inner.entries.remove(&id) else {
                return;
            };
            waiters = w;
            let data = data.map(Arc::new);
            resolved = data
                .as_ref()
                .map_or(Resolved::Fill, |d| Resolved::Chunk(Arc::clone(d)));
            let bytes = data.as_ref().map_or(FILL_MARK_BYTES, |d| d.len());
            if bytes <= self.budget {
                inner.bytes += bytes;
                inner.policy.admit(id, key_hash(key), bytes);
                let key = key.clone();
                inner.entries.insert(id, Entry::Ready { key, data, bytes });
                self.evict(&mut inner);
            } else {
                inner.index.remove(key);
            }
        }
        for waiter in waiters {
            waiter.resolve(resolved.clone());
        }
    }

    /// Evicts until the chunks held fit the budget.
    fn evict(&self, inner: &mut Inner) {
        while inner.bytes > self.budget {
            let Some(victim) = inner.policy.victim() else {
                break;
            };
            let Some(Entry::Ready { key, data, bytes }) = inner.entries.remove(&victim) else {
                continue;
            };
            inner.index.remove(&key);
            inner.bytes -= bytes;
            self.evictions.fetch_add(1, Ordering::Relaxed);
            if inner.spare.len() < SPARE_BUFFERS {
                if let Some(Ok(buffer)) = data.map(Arc::try_unwrap) {
                    inner.spare.push(buffer);
                }
            }
        }
    }

    /// Drops a claim of `owner` that was not completed; its waiters learn that it failed.
    fn abandon(&self, owner: u64, key: &Key) {
        let waiters = {
            let mut inner = self.lock();
            let Some(&id) = inner.index.get(key) else {
                return;
            };
            match inner.entries.get(&id) {
                Some(Entry::Pending { owner: o, .. }) if *o == owner => {}
                _ => return,
            }
            inner.index.remove(key);
            match inner.entries.remove(&id) {
                Some(Entry::Pending { waiters, .. }) => waiters,
                _ => Vec::new(),
            }
        };
        for waiter in waiters {
            waiter.resolve(Resolved::Failed);
        }
    }

    /// Frees every chunk held (chunks being decoded stay claimed).
    pub fn clear(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner
            .entries
            .retain(|_, entry| matches!(entry, Entry::Pending { .. }));
        let entries = &inner.entries;
        inner.index.retain(|_, id| entries.contains_key(id));
        inner.policy = Policy::new(self.kind, self.budget);
        inner.bytes = 0;
        inner.spare = Vec::new();
    }

    #[must_use]
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        let chunks = inner
            .entries
            .values()
            .filter(|e| matches!(e, Entry::Ready { .. }))
            .count();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes: inner.bytes as u64,
            chunks: chunks as u64,
        }
    }
}

/// What the policy alone does on a stream of batches: each batch's chunks (numbers) looked up
/// in a fresh cache of `budget` bytes of `chunk_bytes` chunks, its misses handed to it before
/// the next batch is looked up, as if batches ran one at a time. Returns the hits, the lookups
/// and the evictions.
#[must_use]
pub fn replay(
    budget: usize,
    kind: PolicyKind,
    chunk_bytes: usize,
    batches: &[Vec<u64>],
) -> CacheStats {
    let cache = ChunkCache::new(budget, kind);
    for batch in batches {
        let mut claims = cache.claims();
        let mut mine = Vec::new();
        for &chunk in batch {
            let key: Key = (0, vec![chunk].into_boxed_slice());
            if let Lookup::Mine = cache.lookup(&mut claims, key.clone()) {
                mine.push(key);
            }
        }
        for key in mine {
            cache.complete(&claims, &key, Some(vec![0; chunk_bytes]));
        }
    }
    cache.stats()
}

/// One batch's claimed chunks: those it must decode and hand to the cache.
pub struct Claims {
    cache: Arc<ChunkCache>,
    owner: u64,
    keys: Vec<Key>,
}

impl Claims {
    #[must_use]
    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        for key in &self.keys {
            self.cache.abandon(self.owner, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Key {
        (0, vec![i].into_boxed_slice())
    }

    fn hit(lookup: &Lookup) -> Option<Vec<u8>> {
        match lookup {
            Lookup::Hit(data) => Some(data.to_vec()),
            _ => None,
        }
    }

    #[test]
    fn a_completed_chunk_is_a_hit_and_the_budget_holds() {
        let cache = ChunkCache::new(20, PolicyKind::Lru);
        let mut claims = cache.claims();
        for i in 0..3 {
            assert!(matches!(cache.lookup(&mut claims, key(i)), Lookup::Mine));
            cache.complete(&claims, &key(i), Some(vec![i as u8; 10]));
        }
        let s = cache.stats();
        assert_eq!((s.misses, s.evictions, s.bytes, s.chunks), (3, 1, 20, 2));
        let mut later = cache.claims();
        assert!(matches!(cache.lookup(&mut later, key(0)), Lookup::Mine));
        assert_eq!(hit(&cache.lookup(&mut later, key(2))), Some(vec![2; 10]));
        cache.clear();
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn waiters_get_the_chunk_or_learn_it_failed() {
        let cache = ChunkCache::new(100, PolicyKind::Clock);
        let mut first = cache.claims();
        let mut second = cache.claims();
        assert!(matches!(cache.lookup(&mut first, key(1)), Lookup::Mine));
        assert!(matches!(cache.lookup(&mut first, key(2)), Lookup::Mine));
        let Lookup::Wait(one) = cache.lookup(&mut second, key(1)) else {
            panic!("chunk 1 is being decoded");
        };
        let Lookup::Wait(two) = cache.lookup(&mut second, key(2)) else {
            panic!("chunk 2 is being decoded");
        };
        let got = Arc::new(Mutex::new(Vec::new()));
        for (i, promise) in [(1, one), (2, two)] {
            let got = Arc::clone(&got);
            promise.then(move |resolved| {
                let what = match resolved {
                    Resolved::Chunk(data) => format!("{i}: {:?}", data.as_slice()),
                    Resolved::Fill => format!("{i}: fill"),
                    Resolved::Failed => format!("{i}: failed"),
                };
                got.lock().unwrap().push(what);
            });
        }
        cache.complete(&first, &key(1), Some(vec![7, 7]));
        // The first batch stops before it decodes chunk 2.
        drop(first);
        assert_eq!(*got.lock().unwrap(), ["1: [7, 7]", "2: failed"]);
        // Chunk 2 is claimed afresh by the next batch to ask; never written, it is then
        // known as the fill value.
        assert!(matches!(cache.lookup(&mut second, key(2)), Lookup::Mine));
        cache.complete(&second, &key(2), None);
        assert!(matches!(cache.lookup(&mut second, key(2)), Lookup::Fill));
        assert_eq!(cache.stats().bytes, 2 + FILL_MARK_BYTES as u64);
    }

    #[test]
    fn a_chunk_larger_than_the_budget_is_handed_on_not_kept() {
        let cache = ChunkCache::new(4, PolicyKind::S3Fifo);
        let mut claims = cache.claims();
        assert!(matches!(cache.lookup(&mut claims, key(1)), Lookup::Mine));
        cache.complete(&claims, &key(1), Some(vec![1; 8]));
        assert_eq!(cache.stats().bytes, 0);
        assert!(matches!(cache.lookup(&mut claims, key(1)), Lookup::Mine));
    }

    #[test]
    fn evicted_buffers_are_reused() {
        let cache = ChunkCache::new(10, PolicyKind::Lru);
        let mut claims = cache.claims();
        for i in 0..2 {
            assert!(matches!(cache.lookup(&mut claims, key(i)), Lookup::Mine));
            let mut buffer = cache.buffer(10);
            buffer.fill(i as u8 + 5);
            cache.complete(&claims, &key(i), Some(buffer));
        }
        assert_eq!(cache.stats().evictions, 1);
        // The evicted chunk 0's buffer comes back, as it was; then fresh ones.
        assert_eq!(cache.buffer(10), vec![5; 10]);
        assert_eq!(cache.buffer(10), vec![0; 10]);
    }
}
