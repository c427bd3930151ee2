//! The leaf chunks of a sharded array by reference (an Icechunk repository or a reference
//! set whose array is stored with `sharding_indexed`): each chunk the set lists is a shard,
//! and its index, read from the shard's own bytes, places its inner chunks. Each inner chunk
//! becomes a reference of its own (a range of the shard's target, or bytes of an inline
//! shard), planned from then on as any chunk by reference.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::files::PlanCache;
use super::shared::{unless_stopped, Shared};
use crate::error::{Error, Result};
use crate::io::remote::{self, Net};
use crate::io::{open_files, ReadOp, Reader};
use crate::plan::files_touched;
use crate::zarr::codecs::{IndexLocation, Sharding};
use crate::zarr::references::Entry as Reference;
use crate::zarr::shard_index::{ShardIndex, Slot};

/// A shard whose index is to be read: its coordinates, what the set holds for it, and its
/// number among the batch's shards (`None` for a shard of a batch queued ahead).
type Wanted = (Vec<u64>, Reference, Option<usize>);

/// A shard index's bytes and its shard's length, or why they cannot be had.
type IndexRead = Result<(Vec<u8>, u64)>;

/// What the reference set holds for each leaf chunk of `leaves` of a sharded array by
/// reference: `None` for a chunk never written (its shard not listed, or its slot empty).
/// Shard indexes not cached are read together: local ones through `reader`, remote ones
/// over `net`, with (in the same round trip) the remote ones that the batches queued
/// `ahead` will need, as [`super::planned`] does for a sharded array in an object store.
///
/// # Errors
/// The reference set's errors; [`Error::Io`] for an index that cannot be read (its target
/// missing); [`Error::Corrupt`] for an index that is not one.
pub(super) fn leaf_references(
    shared: &Shared,
    sharding: &Sharding,
    (reader, net): (&mut dyn Reader, Option<&Net>),
    cache: &mut PlanCache,
    leaves: &[&[u64]],
    ahead: &[&[Vec<u64>]],
) -> Result<Vec<Option<Reference>>> {
    let array = &shared.array;
    let located: Vec<_> = leaves.iter().map(|leaf| array.locate(leaf)).collect();
    let mut shard_ids: BTreeMap<&[u64], usize> = BTreeMap::new();
    for location in &located {
        let next = shard_ids.len();
        shard_ids.entry(location.file.as_slice()).or_insert(next);
    }
    let mut shards: Vec<&[u64]> = vec![&[]; shard_ids.len()];
    for (&coords, &id) in &shard_ids {
        shards[id] = coords;
    }
    let entries = array.references_of(&shards)?;
    let mut indexes: Vec<Option<Arc<ShardIndex>>> = shards
        .iter()
        .map(|coords| cache.reference_indexes.get(coords).cloned())
        .collect();
    let mut wanted: Vec<Wanted> = (0..shards.len())
        .filter(|&i| indexes[i].is_none())
        .filter_map(|i| Some((shards[i].to_vec(), entries[i].clone()?, Some(i))))
        .collect();
    if wanted.iter().any(|(_, entry, _)| is_remote(shared, entry)) {
        wanted.extend(shards_ahead(shared, cache, &shard_ids, ahead));
    }
    let read = read_indexes(shared, sharding, reader, net, cache, &wanted)?;
    for ((coords, entry, i), result) in wanted.into_iter().zip(read) {
        let index = result.and_then(|(bytes, shard_len)| {
            parse(shared, sharding, &bytes, shard_len)
                .map_err(|reason| shard_error(shared, &entry, &coords, reason))
        });
        // A shard of a later batch whose index cannot be had now is that batch's to read
        // (and to fail on).
        let index = match (index, i) {
            (Ok(index), _) => Arc::new(index),
            (Err(e), Some(_)) => return Err(e),
            (Err(_), None) => continue,
        };
        cache.reference_indexes.insert(coords, Arc::clone(&index));
        if let Some(i) = i {
            indexes[i] = Some(index);
        }
    }
    Ok(located
        .iter()
        .map(|location| {
            let shard = shard_ids[location.file.as_slice()];
            let (entry, index) = (entries[shard].as_ref()?, indexes[shard].as_ref()?);
            let Slot::Bytes { offset, len } = index.slot(location.inner) else {
                return None;
            };
            Some(match entry {
                Reference::Inline(bytes) => {
                    let (start, end) = (offset as usize, (offset + len) as usize);
                    Reference::Inline(Arc::from(&bytes[start..end]))
                }
                Reference::Range {
                    target, offset: at, ..
                } => Reference::Range {
                    target: *target,
                    offset: at + offset,
                    len,
                },
                Reference::Whole { target } => Reference::Range {
                    target: *target,
                    offset,
                    len,
                },
            })
        })
        .collect())
}

/// Whether a shard lies in an object store.
fn is_remote(shared: &Shared, entry: &Reference) -> bool {
    match entry {
        Reference::Range { target, .. } | Reference::Whole { target } => {
            shared.array.store_of(&[u64::from(*target)]).is_some()
        }
        Reference::Inline(_) => false,
    }
}

/// The shards in an object store that the batches `ahead` touch, whose indexes are neither
/// cached nor among the batch's own (`this`).
fn shards_ahead(
    shared: &Shared,
    cache: &PlanCache,
    this: &BTreeMap<&[u64], usize>,
    ahead: &[&[Vec<u64>]],
) -> Vec<Wanted> {
    let array = &shared.array;
    let per_shard = array.leaves_per_file();
    let later: Vec<Vec<u64>> = files_touched(array.leaf_shape(), &per_shard, &shared.window, ahead)
        .into_iter()
        .filter(|shard| {
            !this.contains_key(shard.as_slice()) && cache.reference_indexes.get(shard).is_none()
        })
        .collect();
    let coords: Vec<&[u64]> = later.iter().map(Vec::as_slice).collect();
    // A set that cannot say now is asked again by the batch that needs the shard.
    let Ok(entries) = array.references_of(&coords) else {
        return Vec::new();
    };
    later
        .into_iter()
        .zip(entries)
        .filter_map(|(coords, entry)| {
            let entry = entry.filter(|e| is_remote(shared, e))?;
            Some((coords, entry, None))
        })
        .collect()
}

/// A shard's index from its bytes, checked against the shard's length.
fn parse(
    shared: &Shared,
    sharding: &Sharding,
    bytes: &[u8],
    shard_len: u64,
) -> std::result::Result<ShardIndex, String> {
    if shard_len < sharding.index_len {
        return Err(format!(
            "{shard_len} bytes, too short for its index of {} bytes",
            sharding.index_len
        ));
    }
    ShardIndex::decode(sharding, bytes, &shared.array.leaves_per_file(), shard_len)
}

/// Where a shard's index lies within the shard's `shard_len` bytes (all of them, for a
/// shard too short to hold it, which [`parse`] then refuses).
fn index_range(sharding: &Sharding, shard_len: u64) -> (u64, u64) {
    index_within(sharding.index_len, sharding.index_location, shard_len)
}

fn index_within(index_len: u64, location: IndexLocation, shard_len: u64) -> (u64, u64) {
    let len = index_len.min(shard_len);
    match location {
        IndexLocation::Start => (0, len),
        IndexLocation::End => (shard_len - len, shard_len),
    }
}

/// The bytes of each wanted shard's index, with its shard's length, or why they cannot be
/// had.
///
/// # Errors
/// Only what stops the whole batch: out of file descriptors, or the engine stopped.
fn read_indexes(
    shared: &Shared,
    sharding: &Sharding,
    reader: &mut dyn Reader,
    net: Option<&Net>,
    cache: &mut PlanCache,
    wanted: &[Wanted],
) -> Result<Vec<IndexRead>> {
    let not_read = || {
        Err(Error::Stopped(
            "internal error: a shard index not read".into(),
        ))
    };
    let mut read: Vec<IndexRead> = wanted.iter().map(|_| not_read()).collect();
    // Local targets read together, remote ones fetched together.
    let mut counted = 0;
    let mut local = Vec::new();
    let mut fetches = Vec::new();
    for (w, (_, entry, _)) in wanted.iter().enumerate() {
        let (target, within) = match entry {
            Reference::Inline(bytes) => {
                let (start, end) = index_range(sharding, bytes.len() as u64);
                let index = bytes[start as usize..end as usize].to_vec();
                read[w] = Ok((index, bytes.len() as u64));
                continue;
            }
            Reference::Range {
                target,
                offset,
                len,
            } => (*target, Some((*offset, *len))),
            Reference::Whole { target } => (*target, None),
        };
        let file = match cache.file(shared, &[u64::from(target)]) {
            Ok(file) => file,
            Err(Error::Io { path, what, source }) if open_files::out_of_descriptors(&source) => {
                return Err(Error::io(path, what, source));
            }
            Err(e) => {
                read[w] = Err(e);
                continue;
            }
        };
        if let Some(open) = &file.file {
            let (offset, len) = within.unwrap_or((0, open.len));
            let (start, end) = index_range(sharding, len);
            local.push((w, Arc::clone(open), offset + start, end - start, len));
        } else if let Some(object) = file.object {
            fetches.push((w, file.path, object, within));
        }
    }
    if !local.is_empty() {
        let ops: Vec<ReadOp<'_>> = local
            .iter()
            .map(|(_, open, offset, len, _)| ReadOp {
                file: &open.file,
                offset: *offset,
                len: *len as usize,
            })
            .collect();
        for ((w, open, _, _, shard_len), result) in local.iter().zip(reader.read(&ops)) {
            read[*w] = result
                .map(|bytes| {
                    counted += bytes.len() as u64;
                    (bytes.to_vec(), *shard_len)
                })
                .map_err(|e| Error::io(&open.path, "reading a shard index", e));
        }
    }
    if !fetches.is_empty() {
        let Some(net) = net else {
            return Err(Error::Stopped(
                "internal error: a remote shard index without a network runtime".into(),
            ));
        };
        let part_bytes = shared.remote().map_or(u64::MAX, |(s, _)| s.part_bytes);
        let at_start = matches!(sharding.index_location, IndexLocation::Start);
        let index_len = sharding.index_len;
        let requests = net.requests.as_ref();
        let futures = fetches.iter().map(|(_, _, object, within)| async move {
            let client = shared
                .client(object.store)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let wanted = match within {
                Some((offset, len)) => {
                    let (start, end) = index_range(sharding, *len);
                    remote::Wanted::Range(offset + start..offset + end)
                }
                None if at_start => remote::Wanted::Range(0..index_len),
                None => remote::Wanted::Suffix(index_len),
            };
            let expected = object.expected();
            remote::get(
                client.as_ref(),
                &object.key,
                wanted,
                part_bytes,
                requests,
                &expected,
            )
            .await
        });
        let results = net.block_on(unless_stopped(shared, futures::future::join_all(futures)))?;
        for ((w, path, _, within), result) in fetches.iter().zip(results) {
            let gone = || {
                let missing = "the object a reference points into is missing";
                std::io::Error::new(std::io::ErrorKind::NotFound, missing)
            };
            read[*w] = result
                .and_then(|fetched| fetched.ok_or_else(gone))
                .map(|fetched| {
                    counted += fetched.bytes.len() as u64;
                    let shard_len = within.map_or(fetched.size, |(_, len)| len);
                    (fetched.bytes.to_vec(), shard_len)
                })
                .map_err(|e| Error::io(path, "reading a shard index", e));
        }
    }
    shared
        .counters
        .bytes_read
        .fetch_add(counted, Ordering::Relaxed);
    Ok(read)
}

/// The error for a shard whose index is not one, naming the shard and where it lies.
fn shard_error(shared: &Shared, entry: &Reference, shard: &[u64], reason: String) -> Error {
    let (path, at) = match entry {
        Reference::Range {
            target,
            offset,
            len,
        } => (
            shared.array.file_path(&[u64::from(*target)]),
            format!(" (bytes {offset}..{})", offset + len),
        ),
        Reference::Whole { target } => {
            (shared.array.file_path(&[u64::from(*target)]), String::new())
        }
        Reference::Inline(_) => (
            shared.array.path.clone(),
            " (inline in the references)".into(),
        ),
    };
    Error::corrupt(path, format!("the index of shard {shard:?}{at}"), reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_lies_at_the_start_or_the_end_of_its_shard() {
        assert_eq!(index_within(132, IndexLocation::End, 1000), (868, 1000));
        assert_eq!(index_within(132, IndexLocation::Start, 1000), (0, 132));
        // A shard shorter than an index: all of it, for the parse to refuse.
        assert_eq!(index_within(132, IndexLocation::End, 100), (0, 100));
        assert_eq!(index_within(132, IndexLocation::Start, 100), (0, 100));
    }
}
