//! Chunk and shard files kept open between batches, shared by every engine of the process
//! within one budget of file descriptors.
//!
//! The budget is a quarter of the soft `RLIMIT_NOFILE` (the rest is Python's, torch's, the
//! rings' and the user's), at most 4,096, and it counts every file open: those kept between
//! batches and those batches in flight are reading. At the budget the file used longest ago
//! that no batch is reading is closed; where every one is being read, the open waits (it
//! fails as out of descriptors, and the batch lets go of the files it has and is planned
//! again once batches have ended). Out of descriptors all the same (other code of the
//! process holds them), every kept file no batch is reading is closed and the open tried
//! again. A batch fails only when no descriptor came free for [`WAIT_FOR_DESCRIPTORS`].

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use super::open_direct;

/// What identifies the contents of a file: a shard written to a temporary file and renamed
/// over the old one is a new inode, and rewritten in place it has a new size or mtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    inode: Inode,
    len: u64,
    mtime_ns: i128,
}

/// Which file a path named, whatever was written to it since: its device, its inode, and
/// when it was made (an inode number is reused soon after its file is deleted).
pub type Inode = (u64, u64, i128);

/// The [`Inode`] of a file.
#[must_use]
pub fn inode_of(metadata: &std::fs::Metadata) -> Inode {
    use std::os::unix::fs::MetadataExt;
    let born = metadata
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    (metadata.dev(), metadata.ino(), born)
}

impl Identity {
    /// Which file it is, whatever was written to it since.
    #[must_use]
    pub fn inode(&self) -> Inode {
        self.inode
    }

    fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            inode: inode_of(metadata),
            len: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
        }
    }
}

/// An opened chunk or shard file.
#[derive(Debug)]
pub struct OpenFile {
    pub path: PathBuf,
    pub file: File,
    /// The file's length when it was opened.
    pub len: u64,
    /// The file opened for direct I/O, with the alignment its reads need, when asked for and
    /// the file system allows it.
    pub direct: Option<(File, usize)>,
    pub identity: Identity,
}

impl OpenFile {
    /// Opens `path`; `None` when it does not exist.
    fn open(path: &Path, direct_io: bool) -> std::io::Result<Option<Self>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let metadata = file.metadata()?;
        Ok(Some(Self {
            path: path.to_path_buf(),
            file,
            len: metadata.len(),
            direct: if direct_io { open_direct(path) } else { None },
            identity: Identity::of(&metadata),
        }))
    }
}

/// The files kept open: each with when it was last asked for.
struct Kept {
    files: HashMap<(PathBuf, bool), (Arc<OpenFile>, u64)>,
    clock: u64,
}

static KEPT: LazyLock<Mutex<Kept>> = LazyLock::new(|| {
    Mutex::new(Kept {
        files: HashMap::new(),
        clock: 0,
    })
});

fn kept() -> std::sync::MutexGuard<'static, Kept> {
    KEPT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The soft limit on open file descriptors of this process.
#[must_use]
pub fn descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// Files kept open at most, for every engine of the process together.
#[must_use]
pub fn budget() -> usize {
    usize::try_from(descriptor_limit() / 4)
        .unwrap_or(usize::MAX)
        .clamp(4, 4096)
}

/// How long a batch out of descriptors waits for batches in flight to close their files.
pub const WAIT_FOR_DESCRIPTORS: Duration = Duration::from_secs(30);

/// The open file at `path` (opened for direct I/O too with `direct_io`), kept from an earlier
/// open or opened now, and whether it was opened now; `None` when the file does not exist.
///
/// # Errors
/// The open's error; out of file descriptors, only after every kept file that could be
/// closed was closed.
pub fn open(path: &Path, direct_io: bool) -> std::io::Result<(Option<Arc<OpenFile>>, bool)> {
    let key = (path.to_path_buf(), direct_io);
    {
        let mut kept = kept();
        kept.clock += 1;
        let now = kept.clock;
        if let Some((file, used)) = kept.files.get_mut(&key) {
            *used = now;
            return Ok((Some(Arc::clone(file)), false));
        }
    }
    make_room()?;
    let Some(file) = with_descriptors(|| OpenFile::open(path, direct_io))? else {
        return Ok((None, true));
    };
    let file = Arc::new(file);
    let mut kept = kept();
    let budget = budget();
    while kept.files.len() >= budget && close_oldest_idle(&mut kept) {}
    if kept.files.len() >= budget {
        // Another thread took the room meanwhile.
        return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
    }
    let now = kept.clock;
    kept.files.insert(key, (Arc::clone(&file), now));
    Ok((Some(file), true))
}

/// Closes idle kept files until one more fits in the budget.
///
/// # Errors
/// `EMFILE` when every file open is being read by a batch: the budget is spent until one
/// ends.
fn make_room() -> std::io::Result<()> {
    let mut kept = kept();
    let budget = budget();
    while kept.files.len() >= budget && close_oldest_idle(&mut kept) {}
    if kept.files.len() >= budget {
        return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
    }
    Ok(())
}

/// Stops keeping the file at `path` open (batches reading it keep it until they end): the
/// next [`open`] opens whatever the path names then.
pub fn forget(path: &Path, direct_io: bool) {
    kept().files.remove(&(path.to_path_buf(), direct_io));
}

/// Closes the kept file used longest ago that no batch holds; whether there was one.
fn close_oldest_idle(kept: &mut Kept) -> bool {
    let oldest = kept
        .files
        .iter()
        .filter(|(_, (file, _))| Arc::strong_count(file) == 1)
        .min_by_key(|(_, (_, used))| *used)
        .map(|(key, _)| key.clone());
    oldest.is_some_and(|key| kept.files.remove(&key).is_some())
}

/// Closes every kept file that no batch holds; returns how many.
pub fn close_idle() -> usize {
    let mut kept = kept();
    let before = kept.files.len();
    kept.files
        .retain(|_, (file, _)| Arc::strong_count(file) > 1);
    before - kept.files.len()
}

/// Whether `e` says the process (or the system) is out of file descriptors.
#[must_use]
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Runs `f`, which opens a descriptor; out of descriptors, closes the kept files no batch
/// holds and runs it once more if any was closed.
///
/// # Errors
/// `f`'s last error.
pub fn with_descriptors<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    match f() {
        Err(e) if out_of_descriptors(&e) && close_idle() > 0 => f(),
        other => other,
    }
}

/// What an open out of descriptors says, with the limit and the budget.
#[must_use]
pub fn explain(e: &std::io::Error) -> String {
    format!(
        "{e}; the process may open {} files (RLIMIT_NOFILE) and lsio_torch holds at most {} \
         of them open at once (kept between batches or read by batches in flight), which \
         batches in flight held for {} s",
        descriptor_limit(),
        budget(),
        WAIT_FOR_DESCRIPTORS.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_shared_and_closed_once_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.0");
        std::fs::write(&path, b"12345").unwrap();
        let (a, opened) = open(&path, false).unwrap();
        assert!(opened);
        let a = a.unwrap();
        assert_eq!(a.len, 5);
        let (b, opened) = open(&path, false).unwrap();
        assert!(!opened);
        assert!(Arc::ptr_eq(&a, &b.unwrap()));
        // Held by a batch: not closed.
        close_idle();
        let (c, opened) = open(&path, false).unwrap();
        assert!(!opened && Arc::ptr_eq(&a, c.as_ref().unwrap()));
        drop(c);
        drop(a);
        assert!(close_idle() >= 1);
        let (missing, _) = open(&dir.path().join("nothing"), false).unwrap();
        assert!(missing.is_none());
    }

    #[test]
    fn a_replaced_file_has_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.0");
        std::fs::write(&path, b"old").unwrap();
        let old = Identity::of(&std::fs::metadata(&path).unwrap());
        let tmp = dir.path().join("c.0.tmp");
        std::fs::write(&tmp, b"new").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let new = Identity::of(&std::fs::metadata(&path).unwrap());
        assert_ne!(old, new);
        assert_eq!(new, Identity::of(&std::fs::metadata(&path).unwrap()));
    }

    #[test]
    fn the_budget_follows_the_descriptor_limit() {
        let budget = budget();
        assert!((4..=4096).contains(&budget));
        let limit = descriptor_limit();
        assert!(budget as u64 <= limit.max(16));
    }
}
