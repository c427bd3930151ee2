//! A planned batch run against an object store: its chunk reads merged into requests, all of
//! them in flight together on the engine's runtime, each decoded on the pool as soon as its
//! bytes land.
//!
//! ```text
//! planner ─requests─▶ runtime: GET (≤ max_requests open, ≤ max_bytes_in_flight held) ─▶ pool: decode
//! ```

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::batch::{read_and_decode, with_local_io, BatchRun};
use super::decode::{decode_read, fill_read};
use super::files::{disk_key, missing_target, OpenFile};
use super::groups::read_groups;
use super::planned::{read_source, Planned, PlannedRead, ReadSource};
use super::shared::{guarded, unless_stopped, Job, Shared};
use crate::cache::disk::object_key;
use crate::cache::DiskCache;
use crate::error::{Error, Result};
use crate::io::remote::{self, Fetched, Link, Net, Settings, Wanted};
use crate::io::ReadOp;
use crate::zarr::limits::max_encoded_bytes;

/// Splits a batch's reads (sorted by file and offset) into requests: reads of one object
/// whose gap is at most `merge_gap` bytes share a request, up to `max_len` bytes; a whole
/// object is a request of its own.
pub(super) fn requests(reads: &[PlannedRead], merge_gap: u64, max_len: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=reads.len() {
        let joins = i < reads.len() && {
            let (first, prev, next) = (&reads[start], &reads[i - 1], &reads[i]);
            let prev_end = prev.offset + prev.len as u64;
            !first.whole
                && !next.whole
                && next.file == first.file
                && next.offset >= prev_end
                && next.offset - prev_end <= merge_gap
                && next.offset + next.len as u64 - first.offset <= max_len
        };
        if !joins {
            out.push(start..i);
            start = i;
        }
    }
    out
}

/// The requests a planned batch makes of an object store: `(path, offset, len)` each.
pub(crate) fn requested_objects(
    planned: &Planned,
    settings: &Settings,
) -> Vec<(std::path::PathBuf, u64, usize)> {
    requests(&planned.reads, settings.merge_gap, settings.part_bytes)
        .into_iter()
        .map(|request| {
            let reads = &planned.reads[request];
            let (first, last) = (&reads[0], &reads[reads.len() - 1]);
            let len = last.offset + last.len as u64 - first.offset;
            (
                planned.files[first.file].path.clone(),
                first.offset,
                len as usize,
            )
        })
        .collect()
}

/// Queues a planned batch's requests on the runtime; each lands on the pool to be decoded.
/// The chunks the disk cache holds are read on the pool instead, a group at a time, with the
/// thread's own reader: those in files this process checked already as local chunk files are,
/// the others whole, to be checked.
pub(super) fn run_remote(
    shared: &Arc<Shared>,
    net: &Net,
    planned: Planned,
    job: Job,
    pool: &Arc<rayon::ThreadPool>,
) {
    let Some((settings, _)) = shared.remote() else {
        let _ = job.done.send(Err(Error::Stopped(
            "internal error: a local array run as a remote one".into(),
        )));
        shared.counters.batch_finished();
        return;
    };
    // The planner sorted the reads by source: where each source's reads end.
    let end_of = |source| {
        planned
            .reads
            .partition_point(|read| read_source(&planned.files, read) <= source)
    };
    let local = end_of(ReadSource::LocalFile);
    let fetched_from = end_of(ReadSource::DiskCacheToCheck);
    let shift = |ranges: Vec<Range<usize>>, by: usize| -> Vec<Range<usize>> {
        ranges
            .into_iter()
            .map(|r| r.start + by..r.end + by)
            .collect()
    };
    let local_groups = read_groups(&planned.reads[..local]);
    let check_groups = shift(read_groups(&planned.reads[local..fetched_from]), local);
    let requests = shift(
        requests(
            &planned.reads[fetched_from..],
            settings.merge_gap,
            settings.part_bytes,
        ),
        fetched_from,
    );
    let parts = local_groups.len() + check_groups.len() + requests.len();
    let batch = BatchRun::start(shared, planned, job, pool, parts);
    let groups = local_groups
        .into_iter()
        .map(|g| (g, false))
        .chain(check_groups.into_iter().map(|g| (g, true)));
    for (group, to_check) in groups {
        // Only a read to check may fetch again, from the pool's thread.
        let link = to_check.then(|| net.link(&shared.clients));
        batch.spawn_part(pool, move |batch| {
            let reads = &batch.planned.reads[group];
            match &link {
                Some(link) => read_from_disk(batch, reads, link),
                None => read_and_decode(batch, reads),
            }
        });
    }
    let part_bytes = settings.part_bytes;
    for request in requests {
        let reads = &batch.planned.reads[request.clone()];
        let (first, last) = (&reads[0], &reads[reads.len() - 1]);
        let span = first.offset..last.offset + last.len as u64;
        let wanted = if first.whole {
            Wanted::Whole {
                at_most: max_encoded_bytes(shared.leaf_bytes),
            }
        } else {
            Wanted::Range(span.clone())
        };
        let Some(object) = batch.planned.files[first.file].object.clone() else {
            batch.finish_part(Err(Error::Stopped(format!(
                "internal error: no object for {first:?}"
            ))));
            continue;
        };
        // A whole object's size is not known before it lands: a leaf's worth is held for it.
        let held = if first.whole {
            shared.leaf_bytes
        } else {
            (span.end - span.start) as usize
        };
        let store = match shared.client(object.store) {
            Ok(store) => Arc::clone(store),
            Err(e) => {
                batch.finish_part(Err(e));
                continue;
            }
        };
        let bytes_permit = net.bytes_permit(held);
        let requests = Arc::clone(&net.requests);
        let (batch, pool) = (Arc::clone(&batch), Arc::clone(pool));
        net.spawn(async move {
            let permit = bytes_permit.await;
            if permit.is_none() || batch.shared.cancel.load(Ordering::Relaxed) {
                batch.finish_part(Err(Error::Stopped("the engine was closed".into())));
                return;
            }
            if batch.failed() {
                batch.finish_part(Ok(()));
                return;
            }
            let expected = object.expected();
            let fetched = remote::get(
                store.as_ref(),
                &object.key,
                wanted,
                part_bytes,
                &requests,
                &expected,
            )
            .await;
            pool.spawn_fifo(move || {
                let reads = &batch.planned.reads[request];
                let result = guarded("engine thread", &batch.shared.array.path, || {
                    decode_fetched(&batch, reads, fetched)
                });
                drop(permit);
                batch.finish_part(result);
            });
        });
    }
}

/// Reads a group of chunks from the disk cache's `.data` files that this process has not
/// checked there yet, with this thread's reader; checks each against its record's CRC-32C and
/// decodes it. A chunk unreadable or corrupt is fetched from the store again, on this thread,
/// and written over.
fn read_from_disk(batch: &BatchRun, group: &[PlannedRead], link: &Link) -> Result<()> {
    let (shared, planned, out) = (&*batch.shared, &batch.planned, &batch.job.out);
    let Some(disk) = &shared.disk_cache else {
        return Err(Error::Stopped(
            "internal error: a disk read with no disk cache".into(),
        ));
    };
    let mut ops = Vec::with_capacity(group.len());
    let mut checks = Vec::with_capacity(group.len());
    for read in group {
        let found = read.disk.and_then(|(id, crc)| {
            let open = planned.files[id].file.as_ref()?;
            let key = disk_key(shared, &planned.files[read.file])?;
            Some((open, crc, key))
        });
        let Some((open, crc, key)) = found else {
            return Err(Error::Stopped(format!(
                "internal error: no disk cache file for {read:?}"
            )));
        };
        ops.push(ReadOp {
            file: &open.file,
            offset: read.offset,
            len: read.len,
        });
        checks.push((disk.entry(&key), open.identity.inode(), crc));
    }
    let mut again: Vec<usize> = Vec::new();
    with_local_io(shared, |reader, buf| {
        let results = reader.read_packed(&ops, buf, 1);
        let counters = &shared.counters;
        counters
            .reads
            .fetch_add(ops.len() as u64, Ordering::Relaxed);
        for (i, (at, result)) in results.into_iter().enumerate() {
            let (read, (entry, inode, crc)) = (&group[i], &checks[i]);
            let bytes = &buf[at..at + read.len];
            if result.is_err() || crc32c::crc32c(bytes) != *crc {
                disk.discard(entry, read.offset);
                again.push(i);
                continue;
            }
            entry.note_checked(*inode, read.offset);
            disk.note_hit(read.len as u64);
            counters
                .bytes_read
                .fetch_add(read.len as u64, Ordering::Relaxed);
            counters.chunks_decoded.fetch_add(1, Ordering::Relaxed);
            decode_read(shared, planned, read, bytes, out)?;
        }
        Ok(())
    })?;
    for i in again {
        let read = &group[i];
        let Some(object) = &planned.files[read.file].object else {
            continue;
        };
        let range = read.offset..read.offset + read.len as u64;
        let Some(store) = link.stores.get(object.store) else {
            return Err(Error::Stopped(format!(
                "internal error: no client {}",
                object.store
            )));
        };
        let expected = object.expected();
        let fetch = remote::get(
            store.as_ref(),
            &object.key,
            Wanted::Range(range),
            link.part_bytes,
            &link.requests,
            &expected,
        );
        let fetched = link.runtime.block_on(unless_stopped(shared, fetch))?;
        decode_fetched(batch, std::slice::from_ref(read), fetched)?;
    }
    Ok(())
}

/// Decodes the chunks of one request from the bytes it fetched; a chunk whose object is
/// missing reads as the fill value.
fn decode_fetched(
    batch: &BatchRun,
    reads: &[PlannedRead],
    fetched: std::io::Result<Option<Fetched>>,
) -> Result<()> {
    let (shared, planned, out) = (&*batch.shared, &batch.planned, &batch.job.out);
    let counters = &shared.counters;
    counters.reads.fetch_add(1, Ordering::Relaxed);
    counters
        .chunks_decoded
        .fetch_add(reads.len() as u64, Ordering::Relaxed);
    let fetched = fetched.map_err(|e| planned.read_error(&reads[0], e))?;
    let Some(fetched) = fetched else {
        if shared.array.is_referenced() {
            return Err(missing_target(planned.path(&reads[0])));
        }
        return reads
            .iter()
            .try_for_each(|read| fill_read(shared, planned, read, out));
    };
    counters
        .bytes_read
        .fetch_add(fetched.bytes.len() as u64, Ordering::Relaxed);
    let start = reads[0].offset;
    for read in reads {
        let bytes = if read.whole {
            &fetched.bytes[..]
        } else {
            let at = (read.offset - start) as usize;
            fetched.bytes.get(at..at + read.len).ok_or_else(|| {
                let chunk = &planned.tasks[read.task].chunk;
                if shared.array.is_referenced() {
                    // The target is shorter than its references say: changed since.
                    let reason = format!(
                        "{} bytes at {} referenced, the object has {}",
                        read.len, read.offset, fetched.size
                    );
                    return Error::corrupt(planned.path(read), format!("chunk {chunk:?}"), reason);
                }
                Error::Stopped(format!("internal error: chunk {chunk:?} left its request"))
            })?
        };
        decode_read(shared, planned, read, bytes, out)?;
        if let Some(disk) = &shared.disk_cache {
            keep_fetched(
                shared,
                disk,
                &planned.files[read.file],
                read,
                &fetched,
                bytes,
            );
        }
    }
    Ok(())
}

/// Gives the disk cache a chunk fetched from the store: of a shard, whose index told its
/// version; or an object of its own fetched whole, whose version the answer tells (and which
/// later epochs of this process then read from the folder).
fn keep_fetched(
    shared: &Shared,
    disk: &DiskCache,
    file: &OpenFile,
    read: &PlannedRead,
    fetched: &Fetched,
    bytes: &[u8],
) {
    if let Some(key) = disk_key(shared, file).filter(|_| !read.whole) {
        disk.put(&disk.entry(&key), read.offset, bytes);
        return;
    }
    let of_its_own =
        shared.array.sharding().is_none() && read.offset == 0 && bytes.len() as u64 == fetched.size;
    let stores = shared.array.location.stores();
    let store = file.object.as_ref().and_then(|o| stores.get(o.store));
    let found = (store, &file.object, &fetched.etag);
    if let (true, Some(store), Some(object), Some(etag)) = (of_its_own, found.0, found.1, found.2) {
        let url = store.object_url(&object.key);
        disk.note_version(&url, fetched.size, etag);
        disk.put(&disk.entry(&object_key(&url, fetched.size, etag)), 0, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(file: usize, offset: u64, len: usize) -> PlannedRead {
        PlannedRead {
            task: 0,
            file,
            offset,
            len,
            chunk_start: 0,
            direct: None,
            whole: false,
            disk: None,
        }
    }

    #[test]
    fn reads_close_together_share_a_request() {
        let reads = [
            read(0, 0, 100),
            read(0, 100, 100),  // adjacent
            read(0, 250, 100),  // a gap of 50
            read(0, 1000, 100), // a gap of 650
            read(1, 1100, 100), // another object
            read(1, 1200, 901), // would pass 1000 bytes in all
        ];
        assert_eq!(requests(&reads, 64, 1000), vec![0..3, 3..4, 4..5, 5..6]);
        assert_eq!(
            requests(&reads, 0, 1000),
            vec![0..2, 2..3, 3..4, 4..5, 5..6]
        );
        let mut whole = read(2, 0, 0);
        whole.whole = true;
        let reads = [whole.clone(), whole];
        assert_eq!(requests(&reads, 64, 1000), vec![0..1, 1..2]);
        assert!(requests(&[], 64, 1000).is_empty());
    }
}
