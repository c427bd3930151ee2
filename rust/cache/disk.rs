//! Compressed chunk bytes fetched from object stores, kept on local disk (`cache_dir=`): the
//! first epoch reads the bucket, later ones (and later runs) read these files with the engine's
//! own readers.
//!
//! One file per chunk, named by a hash of its [`entry key`](entry_key): the object's URL, its
//! size and ETag, and the chunk's byte range. A changed object has another ETag, so another
//! key: it is never served from an older file. Each file holds a header, the key itself (a
//! hash collision reads as a miss) and the chunk's bytes, with their CRC-32C:
//!
//! ```text
//! "LSIODC2\n" · key length u32 · crc32c(bytes) u32 · bytes length u64 · key · zeros · bytes
//! ```
//! Files are written under a temporary name and linked into place, so several processes
//! (DataLoader workers, ranks) share one folder: a reader sees a whole file or none. A file
//! is checked whole (key and CRC) the first time a process reads it; once checked, it is read
//! as a local chunk file is (only the bytes the crops need, kept open between batches): the
//! bytes under a key never change, and a file replaced is another inode, checked again. The
//! folder is bounded: past `max_bytes`, the files written longest ago are deleted first.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

const MAGIC: &[u8; 8] = b"LSIODC2\n";
/// Bytes before the key: magic, key length, CRC-32C, bytes length.
const HEADER: usize = 8 + 4 + 4 + 8;
/// The chunk's bytes start at a multiple of this in the file, as a chunk's bytes do in a
/// shard that a writer aligned: reads of its elements stay aligned to them.
const PAYLOAD_ALIGN: usize = 64;
/// The extension of a finished entry; anything else in the folder is not ours or not done.
const EXTENSION: &str = "chunk";
/// Eviction deletes down to this share of the bound, so it does not run on every write.
const EVICT_TO: f64 = 0.9;
/// The folder is scanned again after this share of the bound was written by this process (other
/// processes write to it too).
const RESCAN_EVERY: f64 = 1.0 / 16.0;
/// A temporary file this old was left by a writer that died: a write takes milliseconds.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// A file as this process found it: device, inode, length and mtime.
pub type FileIdentity = crate::io::open_files::Identity;

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
    /// Files this process deleted to stay within the bound.
    pub evictions: u64,
    /// Files found corrupt or unreadable: deleted, and their chunks fetched again.
    pub corrupt: u64,
    /// Files that could not be written (a full or read-only disk): the chunk was used, not kept.
    pub write_errors: u64,
    /// Bytes the folder held at the last scan, plus what this process wrote since.
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
}

/// The folder's size as this process knows it.
struct Usage {
    bytes: u64,
    written_since_scan: u64,
}

/// A folder of chunk files, bounded to `max_bytes`.
pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
    usage: Mutex<Usage>,
    /// Held while the folder is scanned and trimmed: one scan at a time per process.
    scanning: Mutex<()>,
    /// Files this process read whole and found good.
    checked: Mutex<HashSet<FileIdentity>>,
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

/// The key of one chunk's bytes: the object's URL, size and ETag, and the byte range.
#[must_use]
pub fn entry_key(object_url: &str, size: u64, etag: &str, offset: u64, len: usize) -> String {
    format!("{object_url}\nsize {size}\netag {etag}\nbytes {offset}+{len}")
}

/// The length of the file that holds `len` bytes under `key`.
#[must_use]
pub fn entry_len(key: &str, len: usize) -> u64 {
    payload_offset(key) + len as u64
}

/// Where the chunk's bytes start in the file of `key`.
#[must_use]
pub fn payload_offset(key: &str) -> u64 {
    (HEADER + key.len()).next_multiple_of(PAYLOAD_ALIGN) as u64
}

/// FNV-1a, 64 bits: a name for a key that does not change between Rust releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl DiskCache {
    /// The cache in `dir` (made if missing), bounded to `max_bytes`.
    ///
    /// # Errors
    /// The `io::Error` of a folder that cannot be made or listed.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let cache = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            usage: Mutex::new(Usage {
                bytes: 0,
                written_since_scan: 0,
            }),
            scanning: Mutex::new(()),
            checked: Mutex::new(HashSet::new()),
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

    /// Where the file for `key` lives: a subfolder per first byte of its hash, so that no
    /// folder holds too many files.
    #[must_use]
    pub fn path(&self, key: &str) -> PathBuf {
        let name = format!(
            "{:016x}{:08x}",
            fnv1a(key.as_bytes()),
            crc32c::crc32c(key.as_bytes())
        );
        self.dir
            .join(&name[..2])
            .join(format!("{}.{EXTENSION}", &name[2..]))
    }

    /// Whether a file of the right length is there for `len` bytes under `key` (its contents
    /// are checked when read, by [`DiskCache::payload`]).
    #[must_use]
    pub fn holds(&self, key: &str, len: usize) -> bool {
        std::fs::metadata(self.path(key)).is_ok_and(|m| m.len() == entry_len(key, len))
    }

    /// The chunk's bytes in `file`, the whole file as read, after checking that it is the
    /// file of `key`, whole and unchanged.
    ///
    /// # Errors
    /// Why the file is not a good entry for `key`.
    pub fn payload<'a>(key: &str, file: &'a [u8]) -> Result<&'a [u8], String> {
        let word = |at: usize, n: usize| -> u64 {
            file[at..at + n]
                .iter()
                .rev()
                .fold(0, |acc, &b| (acc << 8) | u64::from(b))
        };
        if file.len() < HEADER || &file[..8] != MAGIC {
            return Err(format!(
                "not a chunk file of this cache ({} bytes)",
                file.len()
            ));
        }
        let (key_len, crc, len) = (word(8, 4) as usize, word(12, 4) as u32, word(16, 8));
        if key_len != key.len() || file.get(HEADER..HEADER + key_len) != Some(key.as_bytes()) {
            return Err("it holds another chunk (its key differs)".into());
        }
        let bytes = file.get(payload_offset(key) as usize..).unwrap_or_default();
        if bytes.len() as u64 != len {
            return Err(format!(
                "{} bytes of chunk data, its header says {len}",
                bytes.len()
            ));
        }
        let found = crc32c::crc32c(bytes);
        if found != crc {
            return Err(format!(
                "its CRC-32C is {found:#010x}, its header says {crc:#010x}"
            ));
        }
        Ok(bytes)
    }

    /// Keeps `bytes` under `key` (fetched from the store: a miss), unless a good file for it
    /// is there already (another batch or process fetched it too). Failures are counted, not
    /// returned: a disk that cannot take a chunk costs its reuse only.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        if self.holds(key, bytes.len()) {
            return;
        }
        match write_entry(&self.path(key), key, bytes) {
            Ok(0) => {}
            Ok(written) => {
                self.counters
                    .bytes_written
                    .fetch_add(written, Ordering::Relaxed);
                let trim = {
                    let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
                    usage.bytes += written;
                    usage.written_since_scan += written;
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

    /// Whether this process read `file` whole and found it good.
    #[must_use]
    pub fn checked(&self, file: &FileIdentity) -> bool {
        self.checked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(file)
    }

    /// Records that `file` was read whole and found good.
    pub fn note_checked(&self, file: FileIdentity) {
        self.checked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(file);
    }

    /// Counts a chunk read from the folder: `len` bytes of file.
    pub fn note_hit(&self, len: u64) {
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_read.fetch_add(len, Ordering::Relaxed);
    }

    /// Deletes the file of `key`, `len` bytes long, found corrupt or unreadable; its chunk is
    /// fetched again.
    pub fn discard(&self, key: &str, len: u64) {
        self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        if std::fs::remove_file(self.path(key)).is_ok() {
            let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
            usage.bytes = usage.bytes.saturating_sub(len);
        }
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
            bytes: self
                .usage
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .bytes,
        }
    }

    /// Lists the folder's chunk files and, past the bound, deletes those written longest ago
    /// until the folder holds at most [`EVICT_TO`] of it. Another thread of this process
    /// scanning already is enough: this one returns at once.
    ///
    /// # Errors
    /// The `io::Error` of a folder that cannot be listed.
    pub fn scan_and_trim(&self) -> std::io::Result<()> {
        let Ok(_scanning) = self.scanning.try_lock() else {
            return Ok(());
        };
        let mut entries = list_entries(&self.dir)?;
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        if total > self.max_bytes {
            let target = (self.max_bytes as f64 * EVICT_TO) as u64;
            entries.sort_by_key(|(written, _, _)| *written);
            for (_, len, path) in entries {
                if total <= target {
                    break;
                }
                // Another process may have deleted it first: it is gone either way.
                if std::fs::remove_file(&path).is_ok() {
                    self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                }
                total -= len;
            }
        }
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        *usage = Usage {
            bytes: total,
            written_since_scan: 0,
        };
        Ok(())
    }
}

/// Writes one entry under a name no other writer uses, then links it in at `path`: the
/// bytes written, or 0 when another writer's file of the right length got there first. A
/// file of the wrong length there (cut short) is replaced.
fn write_entry(path: &Path, key: &str, bytes: &[u8]) -> std::io::Result<u64> {
    static UNIQUE: AtomicU64 = AtomicU64::new(0);
    let folder = path.parent().unwrap_or(path);
    std::fs::create_dir_all(folder)?;
    let unique = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{unique}", std::process::id()));
    let mut header = Vec::with_capacity(payload_offset(key) as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(key.len() as u32).to_le_bytes());
    header.extend_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
    header.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    header.extend_from_slice(key.as_bytes());
    header.resize(payload_offset(key) as usize, 0);
    let len = (header.len() + bytes.len()) as u64;
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&header)?;
        file.write_all(bytes)?;
        drop(file);
        // A link fails where a file is there already, where a rename would replace it
        // unseen: the bytes the folder holds are then counted once.
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(len),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if std::fs::metadata(path).is_ok_and(|m| m.len() == len) {
                    Ok(0)
                } else {
                    std::fs::rename(&tmp, path).map(|()| len)
                }
            }
            // A file system without hard links.
            Err(_) => std::fs::rename(&tmp, path).map(|()| len),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    written
}

/// A temporary file of [`write_entry`] older than any write takes: its writer died.
fn is_abandoned(path: &Path, written: SystemTime) -> bool {
    let temporary = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains(".tmp."));
    temporary && written.elapsed().is_ok_and(|age| age > ABANDONED_AFTER)
}

/// Every finished chunk file under `dir`: when it was written, its length, its path. Temporary
/// files abandoned by writers that died are deleted on the way.
fn list_entries(dir: &Path) -> std::io::Result<Vec<(SystemTime, u64, PathBuf)>> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir)? {
        let Ok(sub) = sub else { continue };
        if !sub.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            // A file deleted since it was listed is skipped.
            let Ok(meta) = file.metadata() else { continue };
            let written = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if path.extension().and_then(|e| e.to_str()) == Some(EXTENSION) {
                out.push((written, meta.len(), path));
            } else if is_abandoned(&path, written) {
                // Left by a process that died while writing it.
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lsio-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn an_entry_reads_back_as_written_and_only_under_its_key() {
        let dir = folder("roundtrip");
        let cache = DiskCache::open(&dir, 1 << 20).unwrap();
        let key = entry_key("s3://b/a.zarr/c/0/0", 1000, "\"e1\"", 24, 5);
        assert!(!cache.holds(&key, 5));
        cache.put(&key, b"hello");
        assert!(cache.holds(&key, 5));
        assert!(!cache.holds(&key, 6));
        let file = std::fs::read(cache.path(&key)).unwrap();
        assert_eq!(file.len() as u64, entry_len(&key, 5));
        assert_eq!(DiskCache::payload(&key, &file).unwrap(), b"hello");
        // Another version of the object is another key, and another file.
        let changed = entry_key("s3://b/a.zarr/c/0/0", 1000, "\"e2\"", 24, 5);
        assert_ne!(cache.path(&changed), cache.path(&key));
        assert!(!cache.holds(&changed, 5));
        // Read under another key (a hash collision), the file is refused.
        let err = DiskCache::payload(&changed, &file).unwrap_err();
        assert!(err.contains("another chunk"), "{err}");
        // Fetched again (by a batch planned before it was kept): counted, not written twice.
        cache.put(&key, b"hello");
        let s = cache.stats();
        let len = file.len() as u64;
        assert_eq!((s.misses, s.bytes_written, s.bytes), (2, len, len));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_entry_is_refused_with_the_reason() {
        let key = entry_key("http://h/x", 10, "e", 0, 4);
        let dir = folder("corrupt");
        let cache = DiskCache::open(&dir, 1 << 20).unwrap();
        cache.put(&key, b"abcd");
        let good = std::fs::read(cache.path(&key)).unwrap();
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(DiskCache::payload(&key, &flipped)
            .unwrap_err()
            .contains("CRC-32C"));
        assert!(DiskCache::payload(&key, &good[..good.len() - 1])
            .unwrap_err()
            .contains("header says 4"));
        assert!(DiskCache::payload(&key, b"junk")
            .unwrap_err()
            .contains("not a chunk file"));
        cache.discard(&key, good.len() as u64);
        assert!(!cache.holds(&key, 4));
        assert_eq!(cache.stats().bytes, 0);
        assert_eq!(cache.stats().corrupt, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn past_its_bound_the_folder_loses_its_oldest_files_first() {
        let dir = folder("bound");
        let chunk = vec![7u8; 1000];
        let key = |i: usize| entry_key("http://h/x", 1 << 30, "e", (1_000 + i as u64) * 1000, 1000);
        let per_file = entry_len(&key(0), 1000);
        // Room for ten files.
        let cache = DiskCache::open(&dir, per_file * 10 + per_file / 2).unwrap();
        for i in 0..10 {
            cache.put(&key(i), &chunk);
            // File times must differ for "oldest" to mean something.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!((0..10).all(|i| cache.holds(&key(i), 1000)));
        cache.put(&key(10), &chunk);
        let s = cache.stats();
        assert!(s.bytes <= cache.max_bytes(), "{s:?}");
        assert_eq!(s.evictions, 2, "{s:?}"); // down to 90%: nine files
        assert!(!cache.holds(&key(0), 1000) && !cache.holds(&key(1), 1000));
        assert!((2..=10).all(|i| cache.holds(&key(i), 1000)));
        // A second process's view: opening the folder counts what is there.
        let again = DiskCache::open(&dir, cache.max_bytes()).unwrap();
        assert_eq!(again.stats().bytes, per_file * 9);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_temporary_file_of_a_writer_that_died_is_deleted_when_the_folder_is_scanned() {
        let dir = folder("abandoned");
        let cache = DiskCache::open(&dir, 1 << 20).unwrap();
        let key = entry_key("http://h/x", 10, "e", 0, 4);
        let sub = cache.path(&key).parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&sub).unwrap();
        let (old, young) = (sub.join("a.tmp.1.0"), sub.join("b.tmp.1.1"));
        std::fs::write(&old, b"half a chunk").unwrap();
        std::fs::write(&young, b"being written").unwrap();
        let two_hours_ago = SystemTime::now() - std::time::Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        cache.scan_and_trim().unwrap();
        assert!(!old.exists() && young.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_that_cannot_be_written_costs_the_chunk_only() {
        let dir = folder("readonly");
        let cache = DiskCache::open(&dir, 1 << 20).unwrap();
        let key = entry_key("http://h/x", 10, "e", 0, 4);
        // A file where the entry's subfolder should be: the write fails.
        let sub = cache.path(&key).parent().unwrap().to_path_buf();
        std::fs::write(&sub, b"in the way").unwrap();
        cache.put(&key, b"abcd");
        assert_eq!(cache.stats().write_errors, 1);
        assert!(!cache.holds(&key, 4));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
