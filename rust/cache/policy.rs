//! Which decoded chunk leaves the cache when it is full. Three policies behind one interface,
//! so that the bench measures them on the same crops: LRU, CLOCK and S3-FIFO. Entries are
//! named by the cache's ids (one per insertion); S3-FIFO's ghost list remembers chunks by a
//! hash of their key, so that a chunk evicted and fetched again is recognised.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::error::{Error, Result};

/// The eviction policies the cache can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// Least recently used: every hit moves the entry to the front.
    Lru,
    /// CLOCK (second chance): a hit sets a bit; eviction sweeps, clearing bits, and takes the
    /// first entry without one.
    Clock,
    /// S3-FIFO (Yang et al., SOSP 2023): new chunks enter a small FIFO (a tenth of the
    /// budget); those hit while there move to the main FIFO, the others leave and are
    /// remembered in a ghost list, from which a returning chunk goes straight to the main one.
    S3Fifo,
}

impl PolicyKind {
    /// # Errors
    /// [`Error::InvalidArgument`] for a name that is not `lru`, `clock` or `s3fifo`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "lru" => Ok(Self::Lru),
            "clock" => Ok(Self::Clock),
            "s3fifo" => Ok(Self::S3Fifo),
            _ => Err(Error::InvalidArgument(format!(
                "cache_policy must be 'lru', 'clock' or 's3fifo', got {name:?}"
            ))),
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::Clock => "clock",
            Self::S3Fifo => "s3fifo",
        }
    }
}

/// A policy's bookkeeping over the cache's entries.
pub(crate) enum Policy {
    Lru(Lru),
    Clock(Clock),
    S3Fifo(S3Fifo),
}

impl Policy {
    pub(crate) fn new(kind: PolicyKind, budget: usize) -> Self {
        match kind {
            PolicyKind::Lru => Self::Lru(Lru::default()),
            PolicyKind::Clock => Self::Clock(Clock::default()),
            PolicyKind::S3Fifo => Self::S3Fifo(S3Fifo::new(budget)),
        }
    }

    /// A new entry `id` of `bytes`, whose key hashes to `key_hash`.
    pub(crate) fn admit(&mut self, id: u64, key_hash: u64, bytes: usize) {
        match self {
            Self::Lru(p) => p.admit(id),
            Self::Clock(p) => p.admit(id),
            Self::S3Fifo(p) => p.admit(id, key_hash, bytes),
        }
    }

    /// Entry `id` was read.
    pub(crate) fn hit(&mut self, id: u64) {
        match self {
            Self::Lru(p) => p.hit(id),
            Self::Clock(p) => p.hit(id),
            Self::S3Fifo(p) => p.hit(id),
        }
    }

    /// The entry to evict next, no longer tracked; `None` when there is none.
    pub(crate) fn victim(&mut self) -> Option<u64> {
        match self {
            Self::Lru(p) => p.victim(),
            Self::Clock(p) => p.victim(),
            Self::S3Fifo(p) => p.victim(),
        }
    }
}

/// LRU: entries by the tick of their last use.
#[derive(Default)]
pub(crate) struct Lru {
    tick: u64,
    by_tick: BTreeMap<u64, u64>,
    ticks: HashMap<u64, u64>,
}

impl Lru {
    fn admit(&mut self, id: u64) {
        self.hit(id);
    }

    fn hit(&mut self, id: u64) {
        self.tick += 1;
        if let Some(old) = self.ticks.insert(id, self.tick) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.tick, id);
    }

    fn victim(&mut self) -> Option<u64> {
        let (_, id) = self.by_tick.pop_first()?;
        self.ticks.remove(&id);
        Some(id)
    }
}

/// CLOCK: a ring of entries, each with its reference bit.
#[derive(Default)]
pub(crate) struct Clock {
    ring: VecDeque<u64>,
    referenced: HashMap<u64, bool>,
}

impl Clock {
    fn admit(&mut self, id: u64) {
        self.ring.push_back(id);
        self.referenced.insert(id, false);
    }

    fn hit(&mut self, id: u64) {
        if let Some(bit) = self.referenced.get_mut(&id) {
            *bit = true;
        }
    }

    fn victim(&mut self) -> Option<u64> {
        while let Some(id) = self.ring.pop_front() {
            match self.referenced.get_mut(&id) {
                Some(bit) if *bit => {
                    *bit = false;
                    self.ring.push_back(id);
                }
                _ => {
                    self.referenced.remove(&id);
                    return Some(id);
                }
            }
        }
        None
    }
}

/// The largest use count S3-FIFO keeps.
const S3FIFO_MAX_FREQ: u8 = 3;

/// S3-FIFO: a small and a main FIFO of entries (`(id, key hash, bytes)`), use counts, and a
/// ghost FIFO of the key hashes of entries evicted from the small one.
pub(crate) struct S3Fifo {
    budget: usize,
    small: VecDeque<(u64, u64, usize)>,
    small_bytes: usize,
    main: VecDeque<(u64, u64, usize)>,
    freq: HashMap<u64, u8>,
    ghost: VecDeque<u64>,
    in_ghost: HashSet<u64>,
}

impl S3Fifo {
    fn new(budget: usize) -> Self {
        Self {
            budget,
            small: VecDeque::new(),
            small_bytes: 0,
            main: VecDeque::new(),
            freq: HashMap::new(),
            ghost: VecDeque::new(),
            in_ghost: HashSet::new(),
        }
    }

    fn admit(&mut self, id: u64, key_hash: u64, bytes: usize) {
        self.freq.insert(id, 0);
        if self.in_ghost.remove(&key_hash) {
            self.ghost.retain(|&h| h != key_hash);
            self.main.push_back((id, key_hash, bytes));
        } else {
            self.small.push_back((id, key_hash, bytes));
            self.small_bytes += bytes;
        }
    }

    fn hit(&mut self, id: u64) {
        if let Some(f) = self.freq.get_mut(&id) {
            *f = (*f + 1).min(S3FIFO_MAX_FREQ);
        }
    }

    fn victim(&mut self) -> Option<u64> {
        loop {
            let from_small = self.small_bytes >= self.budget / 10 || self.main.is_empty();
            if from_small {
                let (id, hash, bytes) = self.small.pop_front()?;
                self.small_bytes -= bytes;
                if self.freq.get(&id).copied().unwrap_or(0) > 0 {
                    self.freq.insert(id, 0);
                    self.main.push_back((id, hash, bytes));
                    continue;
                }
                self.freq.remove(&id);
                self.remember(hash);
                return Some(id);
            }
            let (id, hash, bytes) = self.main.pop_front()?;
            match self.freq.get_mut(&id) {
                Some(f) if *f > 0 => {
                    *f -= 1;
                    self.main.push_back((id, hash, bytes));
                }
                _ => {
                    self.freq.remove(&id);
                    return Some(id);
                }
            }
        }
    }

    /// Puts a key hash in the ghost FIFO, which holds as many as the main FIFO has entries.
    fn remember(&mut self, hash: u64) {
        if self.in_ghost.insert(hash) {
            self.ghost.push_back(hash);
        }
        while self.ghost.len() > self.main.len().max(1) {
            if let Some(old) = self.ghost.pop_front() {
                self.in_ghost.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays `refs` (key numbers) through `kind` with room for `capacity` entries of one
    /// byte each: the number of hits.
    fn hits(kind: PolicyKind, capacity: usize, refs: &[u64]) -> usize {
        let mut policy = Policy::new(kind, capacity);
        let mut ids: HashMap<u64, u64> = HashMap::new();
        let mut keys: HashMap<u64, u64> = HashMap::new();
        let mut hits = 0;
        for (next_id, &key) in (0u64..).zip(refs) {
            if let Some(&id) = ids.get(&key) {
                policy.hit(id);
                hits += 1;
                continue;
            }
            policy.admit(next_id, key, 1);
            ids.insert(key, next_id);
            keys.insert(next_id, key);
            while ids.len() > capacity {
                let victim = policy.victim().expect("an entry to evict");
                let key = keys.remove(&victim).expect("a tracked entry");
                ids.remove(&key);
            }
        }
        hits
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        // 1 2 1 3: 2 is the least recent when 3 arrives, so 1 then hits.
        assert_eq!(hits(PolicyKind::Lru, 2, &[1, 2, 1, 3, 1]), 2);
        assert_eq!(hits(PolicyKind::Lru, 2, &[1, 2, 1, 3, 2]), 1);
    }

    #[test]
    fn clock_gives_a_hit_entry_a_second_chance() {
        // 1 is hit, so when 3 arrives the sweep clears its bit and takes 2.
        assert_eq!(hits(PolicyKind::Clock, 2, &[1, 2, 1, 3, 1]), 2);
        // Nothing hit: first in, first out.
        assert_eq!(hits(PolicyKind::Clock, 2, &[1, 2, 3, 1]), 0);
    }

    #[test]
    fn s3fifo_keeps_reused_chunks_past_a_scan() {
        // A working set of 4 used again and again, then a scan of 100 chunks used once, then
        // the working set again: S3-FIFO keeps it (the scan passes through the small FIFO),
        // LRU loses it.
        let mut refs: Vec<u64> = (0..4).cycle().take(20).collect();
        refs.extend(100..200);
        refs.extend(0..4);
        let s3 = hits(PolicyKind::S3Fifo, 10, &refs);
        let lru = hits(PolicyKind::Lru, 10, &refs);
        assert_eq!(lru, 16);
        assert_eq!(s3, 20);
    }

    #[test]
    fn every_policy_holds_what_fits() {
        let refs: Vec<u64> = (0..8).cycle().take(80).collect();
        for kind in [PolicyKind::Lru, PolicyKind::Clock, PolicyKind::S3Fifo] {
            assert_eq!(hits(kind, 8, &refs), 72, "{kind:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        for kind in [PolicyKind::Lru, PolicyKind::Clock, PolicyKind::S3Fifo] {
            assert_eq!(PolicyKind::from_name(kind.name()).unwrap(), kind);
        }
        assert!(PolicyKind::from_name("arc").is_err());
    }
}
