//! The crop planner: which leaf chunks a batch of crops touches, and for each chunk the
//! pieces it contributes to each crop. Each chunk appears once however many crops share it.

use std::collections::{BTreeMap, BTreeSet};

use crate::window::Window;
use crate::zarr::Region;

/// Where part of a chunk lands in the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The crop's position in the batch.
    pub crop: usize,
    /// The part of the chunk, in chunk coordinates.
    pub in_chunk: Region,
    /// Where that part starts in the crop's output (its window's boxes one after the other).
    pub in_crop: Vec<u64>,
}

/// One leaf chunk and everything the batch needs from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkTask {
    /// Grid coordinates of the leaf chunk.
    pub chunk: Vec<u64>,
    pub targets: Vec<Target>,
}

/// Plans a batch: the leaf chunks touched by samples of `window` at `origins`, in C order of
/// their coordinates (so chunks of one shard sit together).
#[must_use]
pub fn plan_batch(leaf_shape: &[u64], window: &Window, origins: &[Vec<u64>]) -> Vec<ChunkTask> {
    let mut tasks: BTreeMap<Vec<u64>, Vec<Target>> = BTreeMap::new();
    for (i, origin) in origins.iter().enumerate() {
        for b in window.boxes(origin) {
            for chunk in b.in_array.chunks_touched(leaf_shape) {
                let chunk_start: Vec<u64> =
                    chunk.iter().zip(leaf_shape).map(|(c, n)| c * n).collect();
                let chunk_region = Region::new(chunk_start.clone(), leaf_shape.to_vec());
                let Some(overlap) = b.in_array.overlap(&chunk_region) else {
                    continue;
                };
                let in_box = overlap.relative_to(&b.in_array.start).start;
                tasks.entry(chunk).or_default().push(Target {
                    crop: i,
                    in_crop: in_box.iter().zip(&b.in_out).map(|(a, o)| a + o).collect(),
                    in_chunk: overlap.relative_to(&chunk_start),
                });
            }
        }
    }
    tasks
        .into_iter()
        .map(|(chunk, targets)| ChunkTask { chunk, targets })
        .collect()
}

/// The grid coordinates of the files (shards of `per_file` leaf chunks along each dimension)
/// that samples of `window` at the origins of `batches` touch, each once.
#[must_use]
pub fn files_touched(
    leaf_shape: &[u64],
    per_file: &[u64],
    window: &Window,
    batches: &[&[Vec<u64>]],
) -> BTreeSet<Vec<u64>> {
    let mut touched = BTreeSet::new();
    let origins = batches.iter().flat_map(|batch| batch.iter());
    for b in origins.flat_map(|origin| window.boxes(origin)) {
        // The files the box overlaps, dimension by dimension.
        let ranges: Vec<(u64, u64)> = (0..leaf_shape.len())
            .map(|d| {
                let file = leaf_shape[d] * per_file[d];
                let end = b.in_array.start[d] + b.in_array.shape[d].max(1) - 1;
                (b.in_array.start[d] / file, end / file)
            })
            .collect();
        let mut file: Vec<u64> = ranges.iter().map(|r| r.0).collect();
        loop {
            touched.insert(file.clone());
            // The next file of the box, last dimension fastest.
            let Some(d) = (0..file.len()).rev().find(|&d| file[d] < ranges[d].1) else {
                break;
            };
            file[d] += 1;
            for (f, r) in file.iter_mut().zip(&ranges).skip(d + 1) {
                *f = r.0;
            }
        }
    }
    touched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_touched_are_those_of_the_chunks_planned() {
        let (leaf, per_file) = ([3u64, 5, 2], [2u64, 1, 3]);
        let window = Window::crop(&[4, 7, 3]);
        let batches = [
            vec![vec![0, 0, 0], vec![5, 9, 1]],
            vec![vec![2, 3, 4], vec![11, 0, 5]],
        ];
        let mut want = BTreeSet::new();
        for batch in &batches {
            for task in plan_batch(&leaf, &window, batch) {
                want.insert(
                    task.chunk
                        .iter()
                        .zip(&per_file)
                        .map(|(c, p)| c / p)
                        .collect(),
                );
            }
        }
        let batches: Vec<&[Vec<u64>]> = batches.iter().map(Vec::as_slice).collect();
        assert_eq!(files_touched(&leaf, &per_file, &window, &batches), want);
        assert!(want.len() > 4, "the crops span several files");
    }

    #[test]
    fn shared_chunks_are_planned_once() {
        let tasks = plan_batch(&[4, 4], &Window::crop(&[2, 3]), &[vec![3, 3], vec![2, 2]]);
        let chunks: Vec<_> = tasks.iter().map(|t| t.chunk.clone()).collect();
        assert_eq!(chunks, vec![vec![0, 0], vec![0, 1], vec![1, 0], vec![1, 1]]);
        // Chunk (0,0) gives crop 0 its corner element and crop 1 a 2x2 block.
        assert_eq!(
            tasks[0].targets,
            vec![
                Target {
                    crop: 0,
                    in_chunk: Region::new(vec![3, 3], vec![1, 1]),
                    in_crop: vec![0, 0]
                },
                Target {
                    crop: 1,
                    in_chunk: Region::new(vec![2, 2], vec![2, 2]),
                    in_crop: vec![0, 0]
                },
            ]
        );
    }

    #[test]
    fn every_crop_element_is_covered_exactly_once() {
        let leaf = [3u64, 5, 2];
        let crop = [4u64, 7, 3];
        let origins = vec![vec![0, 0, 0], vec![5, 9, 1], vec![2, 3, 4]];
        let tasks = plan_batch(&leaf, &Window::crop(&crop), &origins);
        let mut covered = vec![0u32; origins.len() * 4 * 7 * 3];
        for task in &tasks {
            for t in &task.targets {
                let chunk_start: Vec<u64> =
                    task.chunk.iter().zip(&leaf).map(|(c, n)| c * n).collect();
                for i in 0..t.in_chunk.shape[0] {
                    for j in 0..t.in_chunk.shape[1] {
                        for k in 0..t.in_chunk.shape[2] {
                            let d = [t.in_crop[0] + i, t.in_crop[1] + j, t.in_crop[2] + k];
                            // The element's array coordinate, reached both ways, agrees.
                            for (dim, off) in [i, j, k].iter().enumerate() {
                                assert_eq!(
                                    chunk_start[dim] + t.in_chunk.start[dim] + off,
                                    origins[t.crop][dim] + d[dim]
                                );
                            }
                            covered[t.crop * 84 + (d[0] * 21 + d[1] * 3 + d[2]) as usize] += 1;
                        }
                    }
                }
            }
        }
        assert!(covered.iter().all(|&c| c == 1));
    }

    #[test]
    fn a_window_of_steps_and_selections_covers_its_output_once() {
        use crate::window::Run;
        // Steps 0, 1, 5 past the origin along dimension 0; indices 4, 1 of dimension 1.
        let window = Window::new(vec![
            vec![
                Run { offset: 0, len: 1 },
                Run { offset: 1, len: 1 },
                Run { offset: 5, len: 1 },
            ],
            vec![Run { offset: 4, len: 1 }, Run { offset: 1, len: 1 }],
        ])
        .unwrap();
        let leaf = [2u64, 3];
        let origins = vec![vec![0, 0], vec![3, 0]];
        let tasks = plan_batch(&leaf, &window, &origins);
        let steps = [0u64, 1, 5];
        let levels = [4u64, 1];
        let mut covered = vec![0u32; origins.len() * 6];
        for task in &tasks {
            for t in &task.targets {
                for i in 0..t.in_chunk.shape[0] {
                    for j in 0..t.in_chunk.shape[1] {
                        let out = [t.in_crop[0] + i, t.in_crop[1] + j];
                        let at = [
                            task.chunk[0] * leaf[0] + t.in_chunk.start[0] + i,
                            task.chunk[1] * leaf[1] + t.in_chunk.start[1] + j,
                        ];
                        assert_eq!(at[0], origins[t.crop][0] + steps[out[0] as usize]);
                        assert_eq!(at[1], levels[out[1] as usize]);
                        covered[t.crop * 6 + (out[0] * 2 + out[1]) as usize] += 1;
                    }
                }
            }
        }
        assert!(covered.iter().all(|&c| c == 1), "{covered:?}");
        // Only the chunks of the steps are planned: rows 0..2 and 5 (sample 0), 3..5 and 8.
        let rows: std::collections::BTreeSet<u64> = tasks.iter().map(|t| t.chunk[0]).collect();
        assert_eq!(rows, [0, 1, 2, 4].into_iter().collect());
    }
}
