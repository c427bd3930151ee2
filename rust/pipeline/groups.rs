//! How a planned batch's reads are issued: in groups an engine thread reads at once, and
//! within a group, one request per run of adjacent chunks.

use std::path::PathBuf;

use super::planned::{Planned, PlannedRead};

/// Each engine thread reads a group of a batch's chunks at once, then decodes them: at most
/// this many chunks...
const READS_PER_GROUP: usize = 32;
/// ...and this many bytes (a single larger chunk is a group of its own). The bytes in flight
/// are thus at most this per engine thread, and its read buffer no larger.
const READ_BYTES_PER_GROUP: usize = 8 << 20;

/// Splits a batch's reads into the groups engine threads read at once, in order.
pub(super) fn read_groups(reads: &[PlannedRead]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, read) in reads.iter().enumerate() {
        let full = i - start == READS_PER_GROUP || bytes + read.len > READ_BYTES_PER_GROUP;
        if i > start && full {
            groups.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += read.len;
    }
    if start < reads.len() {
        groups.push(start..reads.len());
    }
    groups
}
/// The most bytes adjacent chunks are read together in.
const MAX_COALESCED: u64 = 4 << 20;

/// The read requests for one group of a batch's reads.
pub(super) struct Requests<'a> {
    /// Reads straight into the output, one request each.
    pub(super) direct: Vec<&'a PlannedRead>,
    /// Reads into buffers, in group order...
    pub(super) buffered: Vec<&'a PlannedRead>,
    /// ...one request per run of them: reads of one file whose byte ranges meet.
    pub(super) runs: Vec<std::ops::Range<usize>>,
}

impl<'a> Requests<'a> {
    pub(super) fn of(group: &'a [PlannedRead]) -> Self {
        let (direct, buffered): (Vec<_>, Vec<_>) =
            group.iter().partition(|read| read.direct.is_some());
        let runs = coalesce(&buffered);
        Self {
            direct,
            buffered,
            runs,
        }
    }

    /// The ranges requested: `(file, offset, len)`.
    fn ranges(&self) -> impl Iterator<Item = (usize, u64, usize)> + '_ {
        let direct = self.direct.iter().map(|r| (r.file, r.offset, r.len));
        let runs = self.runs.iter().map(|run| {
            let (first, last) = (self.buffered[run.start], self.buffered[run.end - 1]);
            let len = last.offset + last.len as u64 - first.offset;
            (first.file, first.offset, len as usize)
        });
        direct.chain(runs)
    }
}

/// Splits `reads` (sorted by file and offset) into runs whose byte ranges meet, each run one
/// file and at most [`MAX_COALESCED`] bytes (a longer single read stays whole).
fn coalesce(reads: &[&PlannedRead]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=reads.len() {
        let joins = i < reads.len() && {
            let (first, prev, next) = (reads[start], reads[i - 1], reads[i]);
            next.file == prev.file
                && next.offset == prev.offset + prev.len as u64
                && next.offset + next.len as u64 - first.offset <= MAX_COALESCED
        };
        if !joins {
            runs.push(start..i);
            start = i;
        }
    }
    runs
}

/// Every request a planned batch is read with, as the engine threads make them: the byte
/// ranges the disk bound reads.
pub(crate) fn requested_ranges(planned: &Planned) -> Vec<(PathBuf, u64, usize)> {
    read_groups(&planned.reads)
        .into_iter()
        .flat_map(|group| {
            Requests::of(&planned.reads[group])
                .ranges()
                .map(|(file, offset, len)| (planned.files[file].path.clone(), offset, len))
                .collect::<Vec<_>>()
        })
        .collect()
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
    fn groups_hold_at_most_32_reads_and_8_mib() {
        let small: Vec<PlannedRead> = (0..70).map(|i| read(0, i * 10, 10)).collect();
        assert_eq!(read_groups(&small), vec![0..32, 32..64, 64..70]);
        let mib = 1 << 20;
        let big: Vec<PlannedRead> = [3, 3, 3, 20, 1, 8]
            .iter()
            .map(|&m| read(0, 0, m * mib))
            .collect();
        assert_eq!(read_groups(&big), vec![0..2, 2..3, 3..4, 4..5, 5..6]);
        assert!(read_groups(&[]).is_empty());
    }

    #[test]
    fn reads_whose_ranges_meet_in_one_file_are_coalesced() {
        let reads = [
            read(0, 0, 10),
            read(0, 10, 5),
            read(0, 20, 5), // a gap
            read(1, 25, 5), // another file
            read(1, 30, MAX_COALESCED as usize),
            read(1, 30 + MAX_COALESCED, 1), // too long together
        ];
        let refs: Vec<&PlannedRead> = reads.iter().collect();
        assert_eq!(coalesce(&refs), vec![0..2, 2..3, 3..4, 4..5, 5..6]);
        assert_eq!(coalesce(&refs[3..4]), vec![0..1]);
        assert!(coalesce(&[]).is_empty());
        let requests = Requests::of(&reads[..2]);
        assert_eq!(requests.ranges().collect::<Vec<_>>(), vec![(0, 0, 15)]);
    }

    #[test]
    fn a_gap_of_one_byte_or_another_file_ends_a_run() {
        let reads = [
            read(0, 0, 10),
            read(0, 11, 5),
            read(0, 16, 4),
            read(1, 20, 4),
        ];
        let refs: Vec<&PlannedRead> = reads.iter().collect();
        assert_eq!(coalesce(&refs), vec![0..1, 1..3, 3..4]);
        let requests = Requests::of(&reads);
        let ranges: Vec<_> = requests.ranges().collect();
        assert_eq!(ranges, vec![(0, 0, 10), (0, 11, 9), (1, 20, 4)]);
    }

    #[test]
    fn reads_straight_into_the_batch_are_requests_of_their_own() {
        let mut reads = [read(0, 0, 10), read(0, 10, 10), read(0, 20, 10)];
        reads[1].direct = Some(0);
        let requests = Requests::of(&reads);
        assert_eq!(requests.direct.len(), 1);
        // The buffered reads around it no longer meet: two requests, and the direct one.
        let ranges: Vec<_> = requests.ranges().collect();
        assert_eq!(ranges, vec![(0, 10, 10), (0, 0, 10), (0, 20, 10)]);
    }
}
