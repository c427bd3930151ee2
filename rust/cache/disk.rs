//! Compressed chunk bytes fetched from object stores, kept on local disk (`cache_dir=`): the
//! first epoch reads the bucket, later ones (and later runs) read these files with the engine's
//! own readers.
//!
//! One pair of files per version of an object (a shard), named by a hash of its
//! [`object key`](object_key): the object's URL, its size and ETag. A changed object has
//! another ETag, so other files: it is never served from an older one.
//!
//! - `.data` is the object as far as it was fetched: each chunk's bytes at the offset they have
//!   in the object, the rest a hole. So it is read as a local shard is: one file kept open for
//!   all its chunks, neighbours read together, the kernel's readahead and page cache working
//!   on one file rather than one per chunk.
//! - `.log` says which ranges `.data` holds: a record appended per chunk written,
//!
//! ```text
//! offset u64 · len u64 · crc32c(chunk) u32 · crc32c(object key) u32 · crc32c(the 24 bytes before) u32 · 0 u32
//! ```
//!
//! Several processes (DataLoader workers, ranks) share one folder: a chunk's bytes are written
//! (`pwrite`) before its record is appended (`O_APPEND`, one write of 32 bytes), every writer
//! of a version writes the same bytes at the same offset, and a record that is cut short or
//! damaged, or that names another object (a hash collision), is skipped. A chunk is checked
//! against its record's CRC-32C the first time a process reads it from a given `.data` file;
//! once checked, it is read as a local chunk is (only the bytes the crops need). A chunk that
//! fails its check is fetched again and written over. The folder is bounded: past
//! `max_bytes`, the pairs written to longest ago are deleted first.
//!
//! The folder is this user's alone, and lsio_torch's alone: it is made `0700` with a marker
//! file ([`MARKER`]) in it, an existing one is taken only when it holds the marker or is empty,
//! and one owned by another user or writable by others is refused, as ssh refuses such a
//! `~/.ssh`. Only files of the cache's own naming in its own subfolders are ever listed or
//! deleted. Files are opened with `O_NOFOLLOW` (a symlink planted at a cache file's path is
//! not written through) and made `0600`; a file owned by another user or writable by others
//! is ignored and counted ([`DiskStats::foreign`]), never read or written.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::fs::{DirBuilder, Metadata, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// The bytes of one record of a `.log`.
pub const RECORD: usize = 32;
/// The extension of an object's bytes.
const DATA: &str = "data";
/// The extension of its records.
const LOG: &str = "log";
/// Eviction deletes down to this share of the bound, so it does not run on every write.
const EVICT_TO: f64 = 0.9;
/// The folder is scanned again after this share of the bound was written by this process
/// (other processes write to it too).
const RESCAN_EVERY: f64 = 1.0 / 16.0;
/// A scan lists the folder at most this many times, while other threads of this process
/// write past the bound as it lists.
const SCANS: usize = 4;
/// Objects whose records and checks this process keeps; past this many, it forgets them all
/// (and checks their chunks again when it next reads them).
const ENTRIES: usize = 1 << 16;
/// Versions of objects this process fetched whole (chunks that are objects of their own)
/// that it remembers; past this many, it forgets them all and fetches such chunks again.
const VERSIONS: usize = 1 << 18;
/// The file that marks a folder as an lsio_torch cache: files are deleted only in a folder
/// that holds it.
pub const MARKER: &str = "lsio_torch-cache";
/// What the marker says to whoever finds the folder.
const MARKER_TEXT: &[u8] =
    b"lsio_torch disk cache (cache_dir=): chunks fetched from object stores. lsio_torch deletes \
      the files here to stay within its bound.\n";

use crate::io::open_files::inode_of;
pub use crate::io::open_files::Inode;

/// What the disk cache has done, since it was opened in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Chunks read from the folder instead of the store.
    pub hits: u64,
    /// Chunks fetched from the store that the folder did not hold (and that it was given).
    pub misses: u64,
    /// Bytes of chunks served from the folder.
    pub bytes_read: u64,
    /// Bytes written to the folder.
    pub bytes_written: u64,
    /// Objects' files this process deleted to stay within the bound.
    pub evictions: u64,
    /// Chunks found corrupt or unreadable in the folder: fetched again and written over.
    pub corrupt: u64,
    /// Chunks that could not be written (a full or read-only disk): used, not kept.
    pub write_errors: u64,
    /// Cache files found owned by another user or writable by others: ignored (neither read
    /// nor written), their chunks fetched from the store.
    pub foreign: u64,
    /// Bytes the folder held at the last scan (on disk: holes are free), plus what this
    /// process wrote since.
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    evictions: AtomicU64,
    corrupt: AtomicU64,
    write_errors: AtomicU64,
    /// Shared with every [`Entry`]: they find the foreign files.
    foreign: Arc<AtomicU64>,
}

/// The folder's size as this process knows it.
struct Usage {
    bytes: u64,
    written_since_scan: u64,
    /// Every byte this process grew the folder by, ever: a scan adds what grew while it
    /// listed (counted twice where its listing saw it already: the bound errs on the safe side).
    grown: u64,
}

/// A folder of objects' files, bounded to `max_bytes`.
pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
    usage: Mutex<Usage>,
    /// Held while the folder is scanned and trimmed: one scan at a time per process.
    scanning: Mutex<()>,
    /// The objects this process has looked up, by key.
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// The size and ETag of the objects of their own this process fetched, by URL.
    versions: Mutex<HashMap<String, (u64, String)>>,
    counters: Counters,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// The key of one version of an object: its URL, size and ETag.
#[must_use]
pub fn object_key(object_url: &str, size: u64, etag: &str) -> String {
    format!("{object_url}\nsize {size}\netag {etag}")
}

/// FNV-1a, 64 bits: a name for a key that does not change between Rust releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A chunk the log of an object records: its length and CRC-32C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    len: usize,
    crc: u32,
}

/// One record's bytes.
fn encode_record(offset: u64, len: usize, crc: u32, key_crc: u32) -> [u8; RECORD] {
    let mut out = [0u8; RECORD];
    out[..8].copy_from_slice(&offset.to_le_bytes());
    out[8..16].copy_from_slice(&(len as u64).to_le_bytes());
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out[20..24].copy_from_slice(&key_crc.to_le_bytes());
    let own = crc32c::crc32c(&out[..24]);
    out[24..28].copy_from_slice(&own.to_le_bytes());
    out
}

/// A record's offset and chunk, when it is whole and of the object whose key has `key_crc`.
fn decode_record(bytes: &[u8], key_crc: u32) -> Option<(u64, Record)> {
    let word = |at: usize, n: usize| -> u64 {
        bytes[at..at + n]
            .iter()
            .rev()
            .fold(0, |acc, &b| (acc << 8) | u64::from(b))
    };
    if bytes.len() != RECORD || word(24, 4) as u32 != crc32c::crc32c(&bytes[..24]) {
        return None;
    }
    if word(20, 4) as u32 != key_crc {
        return None;
    }
    let len = usize::try_from(word(8, 8)).ok()?;
    Some((
        word(0, 8),
        Record {
            len,
            crc: word(16, 4) as u32,
        },
    ))
}

/// What the folder holds of one chunk, as a process sees it through one `.data` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Not recorded: fetch it.
    No,
    /// Recorded, not yet checked by this process in this file: read it, check this CRC-32C.
    ToCheck(u32),
    /// Checked by this process in this file: read it as a local chunk.
    Checked,
}

/// One version of an object: its two files, and what this process knows of them.
#[derive(Debug)]
pub struct Entry {
    data: PathBuf,
    log: PathBuf,
    key_crc: u32,
    state: Mutex<EntryState>,
    foreign: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct EntryState {
    /// The `.log` read so far: its inode, and how many bytes of it.
    log: Option<Inode>,
    log_read: u64,
    records: HashMap<u64, Record>,
    /// The `.data` file the checks below were made in, and the offsets checked.
    data: Option<Inode>,
    checked: HashSet<u64>,
}

impl EntryState {
    /// Forgets the checks made in another `.data` file than `data`: whether checks were made
    /// in another one (the object's files were replaced since).
    fn checks_in(&mut self, data: Inode) -> bool {
        if self.data == Some(data) {
            return false;
        }
        let replaced = self.data.is_some();
        self.data = Some(data);
        self.checked.clear();
        replaced
    }
}

impl Entry {
    /// The object's bytes, as far as they were fetched.
    #[must_use]
    pub fn data_path(&self) -> &Path {
        &self.data
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the folder holds of the chunk of `len` bytes at `offset`, read through the
    /// `.data` file whose inode is `data`. With `refresh` set, where the chunk is not
    /// recorded yet, the records appended to the log since it was last read are read first,
    /// and `refresh` is cleared (a batch reads each log once at most).
    pub fn held(&self, data: Inode, offset: u64, len: usize, refresh: &mut bool) -> Held {
        let mut state = self.state();
        // Another `.data` file (the object's files evicted and written again since): the
        // records read were of the old pair's log; the new log says what the new file holds.
        if state.checks_in(data) {
            self.read_log(&mut state);
        }
        if *refresh && !state.records.contains_key(&offset) {
            self.read_log(&mut state);
            *refresh = false;
        }
        match state.records.get(&offset) {
            Some(r) if r.len == len && state.checked.contains(&offset) => Held::Checked,
            Some(r) if r.len == len => Held::ToCheck(r.crc),
            _ => Held::No,
        }
    }

    /// Records that the chunk at `offset` was read from the `.data` file `data` and was good.
    pub fn note_checked(&self, data: Inode, offset: u64) {
        let mut state = self.state();
        state.checks_in(data);
        state.checked.insert(offset);
    }

    /// Forgets the chunk at `offset`, found corrupt: it is fetched again.
    pub fn forget(&self, offset: u64) {
        let mut state = self.state();
        state.records.remove(&offset);
        state.checked.remove(&offset);
    }

    /// Reads the records appended to the log since the last read (all of them, from a new
    /// log). A log that cannot be read holds nothing.
    fn read_log(&self, state: &mut EntryState) {
        let opened = open_private(&self.log, OpenOptions::new().read(true));
        let Ok(Some(mut file)) = opened else {
            if matches!(opened, Ok(None)) {
                self.foreign.fetch_add(1, Ordering::Relaxed);
            }
            state.log = None;
            state.records.clear();
            state.log_read = 0;
            return;
        };
        let Ok(meta) = file.metadata() else { return };
        let inode = inode_of(&meta);
        if state.log != Some(inode) || meta.len() < state.log_read {
            state.log = Some(inode);
            state.records.clear();
            state.log_read = 0;
        }
        if meta.len() < state.log_read + RECORD as u64 {
            return;
        }
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(state.log_read)).is_err()
            || file.read_to_end(&mut bytes).is_err()
        {
            return;
        }
        let whole = bytes.len() / RECORD * RECORD;
        for record in bytes[..whole].chunks_exact(RECORD) {
            if let Some((offset, r)) = decode_record(record, self.key_crc) {
                state.records.insert(offset, r);
            }
        }
        state.log_read += whole as u64;
    }

    /// Writes `bytes` at `offset` of `.data`, then appends their record: the growth of the
    /// folder in bytes and the `.data` file's inode, or `None` where the files were evicted
    /// while it wrote (the bytes went to a deleted file: no record names them).
    fn write(&self, offset: u64, bytes: &[u8]) -> std::io::Result<Option<(u64, Inode)>> {
        if let Some(folder) = self.data.parent() {
            private_folder(folder)?;
        }
        let foreign = || {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        };
        let opened = open_private(
            &self.data,
            OpenOptions::new().read(true).write(true).create(true),
        )?;
        let Some(data) = opened else {
            return foreign();
        };
        let before = data.metadata()?.blocks();
        data.write_all_at(bytes, offset)?;
        let meta = data.metadata()?;
        if meta.nlink() == 0 {
            return Ok(None);
        }
        let record = encode_record(offset, bytes.len(), crc32c::crc32c(bytes), self.key_crc);
        let Some(mut log) = open_private(&self.log, OpenOptions::new().append(true).create(true))?
        else {
            return foreign();
        };
        let log_before = log.metadata()?.blocks();
        log.write_all(&record)?;
        let log_grown = log.metadata()?.blocks().saturating_sub(log_before);
        // Two writers of one file at once may each count the other's blocks: the next scan
        // counts them right.
        let grown = (meta.blocks().saturating_sub(before) + log_grown) * 512;
        Ok(Some((grown, inode_of(&meta))))
    }
}

impl DiskCache {
    /// The cache in `dir` (made if missing), bounded to `max_bytes`.
    ///
    /// # Errors
    /// The `io::Error` of a folder that cannot be made or listed.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        claim_folder(dir)?;
        let cache = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            usage: Mutex::new(Usage {
                bytes: 0,
                written_since_scan: 0,
                grown: 0,
            }),
            scanning: Mutex::new(()),
            entries: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        };
        cache.scan_and_trim()?;
        Ok(cache)
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    #[must_use]
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The object of `key` (an [`object_key`]): where its files live (a subfolder per first
    /// byte of its hash, so that no folder holds too many files) and what this process knows
    /// of them.
    pub fn entry(&self, key: &str) -> Arc<Entry> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get(key) {
            return Arc::clone(entry);
        }
        if entries.len() >= ENTRIES {
            entries.clear();
        }
        let key_crc = crc32c::crc32c(key.as_bytes());
        let name = format!("{:016x}{key_crc:08x}", fnv1a(key.as_bytes()));
        let stem = self.dir.join(&name[..2]).join(&name[2..]);
        let entry = Arc::new(Entry {
            data: stem.with_extension(DATA),
            log: stem.with_extension(LOG),
            key_crc,
            state: Mutex::new(EntryState::default()),
            foreign: Arc::clone(&self.counters.foreign),
        });
        entries.insert(key.to_owned(), Arc::clone(&entry));
        entry
    }

    /// Keeps `bytes`, the chunk at `offset` of the object of `entry` (fetched from the
    /// store: a miss), unless the folder records it already (another batch or process
    /// fetched it too). Failures are counted, not returned: a disk that cannot take a chunk
    /// costs its reuse only.
    pub fn put(&self, entry: &Entry, offset: u64, bytes: &[u8]) {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = entry.state();
            entry.read_log(&mut state);
            let recorded = Record {
                len: bytes.len(),
                crc: crc32c::crc32c(bytes),
            };
            if state.records.get(&offset) == Some(&recorded) && state.checked.contains(&offset) {
                return;
            }
        }
        match entry.write(offset, bytes) {
            Ok(None) => {}
            Ok(Some((grown, data))) => {
                {
                    let mut state = entry.state();
                    state.checks_in(data);
                    let crc = crc32c::crc32c(bytes);
                    state.records.insert(
                        offset,
                        Record {
                            len: bytes.len(),
                            crc,
                        },
                    );
                    state.checked.insert(offset);
                }
                self.counters
                    .bytes_written
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                let trim = {
                    let mut usage = self.usage();
                    usage.bytes += grown;
                    usage.written_since_scan += grown;
                    usage.grown += grown;
                    usage.bytes > self.max_bytes
                        || usage.written_since_scan as f64 > self.max_bytes as f64 * RESCAN_EVERY
                };
                if trim {
                    // A failed scan leaves the folder as it is until the next write.
                    let _ = self.scan_and_trim();
                }
            }
            Err(_) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Remembers the version of an object fetched whole (a chunk that is an object of its
    /// own: no index tells its version before it is fetched), so that later epochs of this
    /// process read it from the folder. Objects are taken not to change while a process
    /// reads them (a chunk read again names this version: one changed since is an error).
    pub fn note_version(&self, url: &str, size: u64, etag: &str) {
        let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        if versions.len() >= VERSIONS && !versions.contains_key(url) {
            versions.clear();
        }
        versions.insert(url.to_owned(), (size, etag.to_owned()));
    }

    /// The version of the object at `url` this process fetched, if it remembers one.
    #[must_use]
    pub fn version(&self, url: &str) -> Option<(u64, String)> {
        self.versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(url)
            .cloned()
    }

    /// Counts a chunk read from the folder: `len` bytes.
    pub fn note_hit(&self, len: u64) {
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_read.fetch_add(len, Ordering::Relaxed);
    }

    /// Counts a chunk found corrupt or unreadable in the folder, and forgets it: it is
    /// fetched again and written over.
    pub fn discard(&self, entry: &Entry, offset: u64) {
        self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        entry.forget(offset);
    }

    #[must_use]
    pub fn stats(&self) -> DiskStats {
        let c = &self.counters;
        DiskStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            bytes_read: c.bytes_read.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            foreign: c.foreign.load(Ordering::Relaxed),
            bytes: self.usage().bytes,
        }
    }

    /// Lists the folder's objects and, past the bound, deletes those written to longest ago
    /// (the log first: a chunk with no record is not read) until the folder holds at most
    /// [`EVICT_TO`] of it. Another thread of this process scanning already is enough: this
    /// one returns at once, and the scan lists the folder again where what was written while
    /// it listed puts the folder past the bound.
    ///
    /// # Errors
    /// The `io::Error` of a folder that cannot be listed.
    pub fn scan_and_trim(&self) -> std::io::Result<()> {
        let Ok(_scanning) = self.scanning.try_lock() else {
            return Ok(());
        };
        for _ in 0..SCANS {
            let grown_before = self.usage().grown;
            let held = self.trim(list_objects(&self.dir)?);
            let mut usage = self.usage();
            let grown_since = usage.grown - grown_before;
            usage.bytes = held + grown_since;
            usage.written_since_scan = 0;
            if usage.bytes <= self.max_bytes || grown_since == 0 {
                break;
            }
        }
        Ok(())
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes the `objects` written to longest ago while they take more than the bound, down
    /// to [`EVICT_TO`] of it: the bytes the rest take.
    fn trim(&self, mut objects: Vec<Listed>) -> u64 {
        let mut total: u64 = objects.iter().map(|o| o.bytes).sum();
        if total <= self.max_bytes {
            return total;
        }
        let target = (self.max_bytes as f64 * EVICT_TO) as u64;
        objects.sort_by_key(|o| o.written);
        let mut evicted = HashSet::new();
        for object in objects {
            if total <= target {
                break;
            }
            // Another process may have deleted them first: they are gone either way.
            let log = std::fs::remove_file(object.stem.with_extension(LOG)).is_ok();
            let data = std::fs::remove_file(object.stem.with_extension(DATA)).is_ok();
            if log || data {
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
            total -= object.bytes;
            evicted.insert(object.stem.with_extension(DATA));
        }
        // What this process knew of them is forgotten with them.
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, entry| !evicted.contains(&entry.data));
        total
    }
}

/// An object's files in the folder: their path less the extension, when they were last
/// written, the bytes they take on disk.
struct Listed {
    stem: PathBuf,
    written: SystemTime,
    bytes: u64,
}

/// Every object under `dir`: files of the cache's own naming (`<22 hex digits>.data|.log`),
/// of this user and private, in its own subfolders (two hex digits). Nothing else is listed,
/// so nothing else is ever deleted.
fn list_objects(dir: &Path) -> std::io::Result<Vec<Listed>> {
    let mut out: HashMap<PathBuf, Listed> = HashMap::new();
    for sub in std::fs::read_dir(dir)? {
        let Ok(sub) = sub else { continue };
        // `file_type` does not follow symlinks: a symlinked subfolder is not the cache's.
        let is_ours = sub.file_type().is_ok_and(|t| t.is_dir())
            && hex_name(&sub.file_name(), 2)
            && sub.metadata().is_ok_and(|m| private(&m));
        if !is_ours {
            continue;
        }
        let Ok(files) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            if !own_file_name(&path) || !file.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            // A file deleted since it was listed is skipped; so is one not this user's.
            let Ok(meta) = file.metadata() else { continue };
            if !private(&meta) {
                continue;
            }
            let written = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let listed = out.entry(path.with_extension("")).or_insert(Listed {
                stem: path.with_extension(""),
                written,
                bytes: 0,
            });
            listed.written = listed.written.max(written);
            listed.bytes += meta.blocks() * 512;
        }
    }
    Ok(out.into_values().collect())
}

/// Whether `path` is named as the cache names its files: `<22 hex digits>.data` or `.log`.
fn own_file_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e == DATA || e == LOG)
        && path.file_stem().is_some_and(|stem| hex_name(stem, 22))
}

/// Whether `name` is `digits` lowercase hex digits.
fn hex_name(name: &std::ffi::OsStr, digits: usize) -> bool {
    name.to_str().is_some_and(|n| {
        n.len() == digits
            && n.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether `dir` holds nothing but the cache's own subfolders (two hex digits, not
/// symlinks) holding nothing but files of its own naming: an empty folder, or one an earlier
/// version of this cache made before it was marked.
fn only_cache_files(dir: &Path) -> std::io::Result<bool> {
    for sub in std::fs::read_dir(dir)? {
        let sub = sub?;
        if !(sub.file_type()?.is_dir() && hex_name(&sub.file_name(), 2)) {
            return Ok(false);
        }
        for file in std::fs::read_dir(sub.path())? {
            let file = file?;
            if !(own_file_name(&file.path()) && file.file_type()?.is_file()) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// This process's effective user id.
fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a file or folder is this user's and no one else may write it.
fn private(meta: &Metadata) -> bool {
    meta.uid() == euid() && meta.mode() & 0o022 == 0
}

/// Opens a cache file with `options`, never through a symlink, made `0600` where created:
/// `None` for a symlink or a file of another user or writable by others (not to be trusted).
fn open_private(path: &Path, options: &mut OpenOptions) -> std::io::Result<Option<File>> {
    let opened = options
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    Ok((meta.is_file() && private(&meta)).then_some(file))
}

/// Makes `folder` (`0700`, whatever the umask): whether it was made (false: it existed).
fn make_folder(folder: &Path) -> std::io::Result<bool> {
    match DirBuilder::new().mode(0o700).create(folder) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes a subfolder of the cache (`0700`), or checks an existing one is a folder of this
/// user's that no one else may write.
fn private_folder(folder: &Path) -> std::io::Result<()> {
    if make_folder(folder)? {
        return Ok(());
    }
    let meta = std::fs::symlink_metadata(folder)?;
    if meta.is_dir() && private(&meta) {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{}: not a private folder of this user", folder.display()),
        ))
    }
}

/// Makes `dir` the cache's folder, or checks an existing one may be: a folder of this user's
/// that no one else may write, holding the [`MARKER`] (this cache's own), or nothing but the
/// cache's own files (then marked: an empty folder, or one made before the marker). A folder of ours made by an older version with the umask's mode is made `0700`.
///
/// # Errors
/// `PermissionDenied` for a folder of another user or writable by others; `InvalidInput`
/// for one that holds files and no marker (lsio_torch deletes files in its folder: it takes
/// no folder that holds a user's own).
fn claim_folder(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    make_folder(dir)?;
    let refuse = |kind, why: String| Err(std::io::Error::new(kind, why));
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return refuse(std::io::ErrorKind::InvalidInput, "not a folder".into());
    }
    if meta.uid() != euid() {
        return refuse(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "owned by uid {}, not by this user (uid {}): a cache folder must be the \
                 user's own",
                meta.uid(),
                euid()
            ),
        );
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "writable by other users (mode {:o}): a cache folder must be private \
                 (chmod 700)",
                meta.mode() & 0o777
            ),
        );
    }
    let marker = dir.join(MARKER);
    match std::fs::symlink_metadata(&marker) {
        Ok(m) if m.is_file() && private(&m) => {}
        Ok(_) => {
            return refuse(
                std::io::ErrorKind::PermissionDenied,
                format!("its {MARKER} is not a private file of this user"),
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A folder an earlier version of this cache made (before the marker) holds
            // nothing but the cache's own files: it is taken, and marked.
            if !only_cache_files(dir)? {
                return refuse(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "not empty and not an lsio_torch cache folder (no {MARKER} file in \
                         it, and files that are not the cache's): lsio_torch deletes the \
                         files of its cache folder, so it takes a new or empty one, or its own"
                    ),
                );
            }
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&marker)?;
            file.write_all(MARKER_TEXT)?;
        }
        Err(e) => return Err(e),
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lsio-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn inode(path: &Path) -> Inode {
        inode_of(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn files_replaced_since_are_read_anew() {
        let dir = folder("replaced");
        let cache = DiskCache::open(&dir, 1 << 20).unwrap();
        let key = object_key("s3://b/a.zarr/c/0/0", 1000, "\"e1\"");
        let entry = cache.entry(&key);
        cache.put(&entry, 0, b"first");
        let old = inode(entry.data_path());
        assert_eq!(entry.held(old, 0, 5, &mut false), Held::Checked);
        // Another process evicts the pair and keeps another chunk of the object.
        std::fs::remove_file(&entry.log).unwrap();
        std::fs::remove_file(entry.data_path()).unwrap();
        let other = DiskCache::open(&dir, 1 << 20).unwrap();
        other.put(&other.entry(&key), 100, b"second");
        let new = inode(entry.data_path());
        assert_ne!(old, new);
        // Through the new file, the new log tells what it holds: not the first chunk.
        assert_eq!(entry.held(new, 0, 5, &mut false), Held::No);
        assert_eq!(
            entry.held(new, 100, 6, &mut false),
            Held::ToCheck(crc32c::crc32c(b"second"))
        );
    }

    #[test]
    fn a_chunk_reads_back_at_its_offset_and_only_for_its_object() {
        let dir = folder("roundtrip");
        let cache = DiskCache::open(&dir, 1 << 20).unwrap();
        let key = object_key("s3://b/a.zarr/c/0/0", 1000, "\"e1\"");
        let entry = cache.entry(&key);
        assert!(Arc::ptr_eq(&entry, &cache.entry(&key)));
        cache.put(&entry, 24, b"hello");
        let data = std::fs::read(entry.data_path()).unwrap();
        assert_eq!(&data[24..], b"hello");
        assert_eq!(&data[..24], &[0u8; 24]); // a hole
        let ino = inode(entry.data_path());
        // Written by this process: checked; another length is not the chunk.
        assert_eq!(entry.held(ino, 24, 5, &mut false), Held::Checked);
        assert_eq!(entry.held(ino, 24, 6, &mut false), Held::No);
        assert_eq!(entry.held(ino, 0, 5, &mut true), Held::No);
        // Another process sees the record, to check.
        let other = DiskCache::open(&dir, 1 << 20).unwrap();
        let seen = other.entry(&key);
        assert_eq!(seen.held(ino, 24, 5, &mut false), Held::No); // the log not read yet
        assert_eq!(
            seen.held(ino, 24, 5, &mut true),
            Held::ToCheck(crc32c::crc32c(b"hello"))
        );
        seen.note_checked(ino, 24);
        assert_eq!(seen.held(ino, 24, 5, &mut false), Held::Checked);
        // Through another file (the object's files replaced), checked again.
        assert_eq!(
            seen.held((ino.0, ino.1 + 1, ino.2), 24, 5, &mut false),
            Held::ToCheck(crc32c::crc32c(b"hello"))
        );
        // Another version of the object has files of its own.
        let changed = cache.entry(&object_key("s3://b/a.zarr/c/0/0", 1000, "\"e2\""));
        assert_ne!(changed.data_path(), entry.data_path());
        assert_eq!(changed.held(ino, 24, 5, &mut true), Held::No);
        // Fetched again (by a batch planned before it was kept): counted, not written twice.
        cache.put(&entry, 24, b"hello");
        let s = cache.stats();
        assert_eq!((s.misses, s.bytes_written), (2, 5));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_chunk_checked_in_a_deleted_file_is_not_held_by_the_file_after_it() {
        let dir = folder("successor");
        let cache = DiskCache::open(&dir, 1 << 20).unwrap();
        let entry = cache.entry(&object_key("http://h/x", 1 << 20, "e"));
        cache.put(&entry, 0, b"first");
        // Evicted by another process, then written again from scratch (the new file may
        // even have the old one's inode number).
        std::fs::remove_file(&entry.log).unwrap();
        std::fs::remove_file(entry.data_path()).unwrap();
        cache.put(&entry, 4096, b"second");
        let ino = inode(entry.data_path());
        assert_eq!(entry.held(ino, 0, 5, &mut true), Held::No);
        assert_eq!(entry.held(ino, 4096, 6, &mut true), Held::Checked);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_or_foreign_records_are_skipped() {
        let key_crc = 7;
        let good = encode_record(4096, 100, 0xabcd, key_crc);
        assert_eq!(
            decode_record(&good, key_crc),
            Some((
                4096,
                Record {
                    len: 100,
                    crc: 0xabcd
                }
            ))
        );
        assert_eq!(decode_record(&good, key_crc + 1), None); // another object's
        let mut flipped = good;
        flipped[3] ^= 1;
        assert_eq!(decode_record(&flipped, key_crc), None);
        assert_eq!(decode_record(&good[..31], key_crc), None);
    }

    #[test]
    fn a_log_cut_short_keeps_its_whole_records_and_reads_on_later() {
        let dir = folder("partial");
        let cache = DiskCache::open(&dir, 1 << 20).unwrap();
        let key = object_key("http://h/x", 1 << 20, "e");
        let entry = cache.entry(&key);
        cache.put(&entry, 0, b"abcd");
        let ino = inode(entry.data_path());
        // A writer that is halfway through its record.
        let record = encode_record(100, 4, crc32c::crc32c(b"wxyz"), entry.key_crc);
        let mut log = File::options().append(true).open(&entry.log).unwrap();
        log.write_all(&record[..10]).unwrap();
        let reader = DiskCache::open(&dir, 1 << 20).unwrap().entry(&key);
        assert!(matches!(
            reader.held(ino, 0, 4, &mut true),
            Held::ToCheck(_)
        ));
        assert_eq!(reader.held(ino, 100, 4, &mut true), Held::No);
        log.write_all(&record[10..]).unwrap();
        assert!(matches!(
            reader.held(ino, 100, 4, &mut true),
            Held::ToCheck(_)
        ));
        // A corrupt chunk is forgotten, then fetched and recorded again.
        cache.discard(&entry, 0);
        assert_eq!(entry.held(ino, 0, 4, &mut false), Held::No);
        assert_eq!(cache.stats().corrupt, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn past_its_bound_the_folder_loses_its_oldest_objects_first() {
        let dir = folder("bound");
        let chunk = vec![7u8; 4096];
        let key = |i: usize| object_key(&format!("http://h/{i}"), 1 << 30, "e");
        // What one object takes on this file system: its data and its log of one record.
        let probe = DiskCache::open(&folder("bound-probe"), 1 << 20).unwrap();
        probe.put(&probe.entry(&key(0)), 0, &chunk);
        let per_object = probe.stats().bytes;
        assert!(per_object >= 4096 + RECORD as u64);
        std::fs::remove_dir_all(probe.dir()).unwrap();
        let cache = DiskCache::open(&dir, per_object * 10 + per_object / 2).unwrap();
        // Object i written i seconds after the first, an hour ago: "oldest" is set, not slept.
        let an_hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        for i in 0..10 {
            let entry = cache.entry(&key(i));
            cache.put(&entry, 0, &chunk);
            let written = an_hour_ago + std::time::Duration::from_secs(i as u64);
            for path in [
                entry.data_path().to_path_buf(),
                entry.data_path().with_extension(LOG),
            ] {
                let file = File::options().write(true).open(&path).unwrap();
                file.set_modified(written).unwrap();
            }
        }
        let there = |i: usize| cache.entry(&key(i)).data_path().exists();
        assert!((0..10).all(there));
        cache.put(&cache.entry(&key(10)), 0, &chunk);
        let s = cache.stats();
        assert!(s.bytes <= cache.max_bytes(), "{s:?}");
        assert_eq!(s.evictions, 2, "{s:?}"); // down to 90%: nine objects
        assert!(!there(0) && !there(1));
        assert!((2..=10).all(there));
        // A second process's view: opening the folder counts what is there.
        let again = DiskCache::open(&dir, cache.max_bytes()).unwrap();
        assert_eq!(again.stats().bytes, per_object * 9);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_not_of_the_caches_naming_are_never_deleted() {
        let dir = folder("others");
        let cache = DiskCache::open(&dir, 1).unwrap();
        let entry = cache.entry(&object_key("http://h/x", 10, "e"));
        cache.put(&entry, 0, b"abcd");
        let sub = entry.data_path().parent().unwrap().to_path_buf();
        let (kept, notes) = (sub.join("a.chunk"), dir.join("notes"));
        std::fs::write(&kept, b"not the cache's").unwrap();
        std::fs::create_dir_all(&notes).unwrap();
        std::fs::write(notes.join("old.txt"), b"a user's").unwrap();
        let two_hours_ago = SystemTime::now() - std::time::Duration::from_secs(7200);
        for file in [&kept, &notes.join("old.txt")] {
            File::options()
                .write(true)
                .open(file)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
        // The bound of 1 byte evicts every object of the cache, and nothing else.
        cache.scan_and_trim().unwrap();
        assert!(!entry.data_path().exists());
        assert!(kept.exists() && notes.join("old.txt").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_is_taken_only_new_empty_or_marked_and_private() {
        let dir = folder("claim");
        DiskCache::open(&dir, 1 << 20).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        let marker = std::fs::metadata(dir.join(MARKER)).unwrap();
        assert_eq!(marker.mode() & 0o777, 0o600);
        // Marked: taken again.
        DiskCache::open(&dir, 1 << 20).unwrap();
        // Writable by others: refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = DiskCache::open(&dir, 1 << 20).err().unwrap();
        assert!(err.to_string().contains("writable by other users"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        DiskCache::open(&dir, 1 << 20).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(
            meta.mode() & 0o777,
            0o700,
            "an older folder of ours is made private"
        );
        // Holding a user's files and no marker: refused, and the files are left as they were.
        let notes = folder("claim-notes");
        std::fs::create_dir_all(notes.join("notes")).unwrap();
        refused_and_left_alone(&notes, "notes/app.log");
        for d in [dir, notes] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    /// Writes a user's file at `name` in `dir`, and checks the folder is refused with it and
    /// the file left where it was.
    fn refused_and_left_alone(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), b"a user's").unwrap();
        let err = DiskCache::open(dir, 1 << 20).err().unwrap();
        assert!(
            err.to_string().contains("not an lsio_torch cache folder"),
            "{err}"
        );
        assert!(dir.join(name).exists() && !dir.join(MARKER).exists());
    }

    #[test]
    fn a_folder_made_before_the_marker_is_taken_only_when_it_holds_nothing_else() {
        let dir = folder("unmarked");
        let sub = dir.join("4b");
        std::fs::create_dir_all(&sub).unwrap();
        for ext in ["data", "log"] {
            std::fs::write(sub.join(format!("5aab9483a9cf660578b461.{ext}")), b"").unwrap();
        }
        DiskCache::open(&dir, 1 << 20).unwrap();
        assert!(dir.join(MARKER).exists());
        let mixed = folder("unmarked-mixed");
        std::fs::create_dir_all(mixed.join("4b")).unwrap();
        std::fs::write(mixed.join("4b/5aab9483a9cf660578b461.data"), b"").unwrap();
        refused_and_left_alone(&mixed, "4b/notes.txt");
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(mixed).unwrap();
    }

    #[test]
    fn a_symlink_at_a_cache_files_path_is_not_written_through() {
        let dir = folder("symlink");
        let cache = DiskCache::open(&dir, 1 << 20).unwrap();
        let entry = cache.entry(&object_key("http://h/x", 10, "e"));
        let victim = folder("symlink-victim");
        std::fs::write(&victim, b"the victim's").unwrap();
        private_folder(entry.data_path().parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, entry.data_path()).unwrap();
        cache.put(&entry, 0, b"abcd");
        assert_eq!(std::fs::read(&victim).unwrap(), b"the victim's");
        assert_eq!(cache.stats().foreign, 1);
        assert_eq!(cache.stats().bytes_written, 0);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(&victim).unwrap();
    }

    #[test]
    fn a_folder_that_cannot_be_written_costs_the_chunk_only() {
        let dir = folder("readonly");
        let cache = DiskCache::open(&dir, 1 << 20).unwrap();
        let entry = cache.entry(&object_key("http://h/x", 10, "e"));
        // A file where the object's subfolder should be: the write fails.
        let sub = entry.data_path().parent().unwrap().to_path_buf();
        std::fs::write(&sub, b"in the way").unwrap();
        cache.put(&entry, 0, b"abcd");
        assert_eq!(cache.stats().write_errors, 1);
        assert_eq!(entry.held((0, 0, 0), 0, 4, &mut true), Held::No);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
