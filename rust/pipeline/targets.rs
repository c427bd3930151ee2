//! Where each piece of a chunk lands in the batch: the copy layout of a target, the bytes of
//! a chunk its crops need, and whether a chunk is one run of the output.

use super::shared::Shared;
use crate::plan::{ChunkTask, Target};
use crate::zarr::region::CopyLayout;

/// The bytes of a decoded chunk its crops need, from the first to the last: `(start, end)`;
/// `None` when they need none.
pub(super) fn needed_span(shared: &Shared, task: &ChunkTask) -> Option<(usize, usize)> {
    let element = shared.array.dtype.size();
    task.targets
        .iter()
        .filter_map(|target| target_layout(shared, target, element).src_span())
        .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
}

/// How a target's piece of a chunk lies in the chunk and in its crop, in elements of
/// `element_size` bytes (1: runs counted in elements).
pub(super) fn target_layout<'a>(
    shared: &'a Shared,
    target: &'a Target,
    element_size: usize,
) -> CopyLayout<'a> {
    CopyLayout {
        element_size,
        region: &target.in_chunk.shape,
        src_shape: shared.array.leaf_shape(),
        src_start: &target.in_chunk.start,
        dst_shape: &shared.crop,
        dst_start: &target.in_crop,
    }
}

/// Where a chunk goes in the output when it is exactly one contiguous run of one crop.
pub(super) fn direct_offset(shared: &Shared, task: &ChunkTask) -> Option<usize> {
    if shared.cast.is_some() {
        return None;
    }
    let [target] = task.targets.as_slice() else {
        return None;
    };
    let layout = target_layout(shared, target, shared.array.dtype.size());
    match layout.single_run()? {
        (0, dst, len) if len == shared.leaf_bytes => Some(target.crop * shared.crop_bytes + dst),
        _ => None,
    }
}
