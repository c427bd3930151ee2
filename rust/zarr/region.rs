//! Region math: boxes in an N-dimensional grid, their overlaps, the chunks they touch, and
//! copies of a box between two C-order buffers.

/// A box of elements: `start` and `shape` per dimension.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    pub start: Vec<u64>,
    pub shape: Vec<u64>,
}

impl Region {
    #[must_use]
    pub fn new(start: Vec<u64>, shape: Vec<u64>) -> Self {
        debug_assert_eq!(start.len(), shape.len());
        Self { start, shape }
    }

    /// One past the last element, per dimension.
    #[must_use]
    pub fn end(&self) -> Vec<u64> {
        self.start
            .iter()
            .zip(&self.shape)
            .map(|(s, n)| s + n)
            .collect()
    }

    #[must_use]
    pub fn num_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// The elements both boxes contain, or `None` when they are disjoint.
    #[must_use]
    pub fn overlap(&self, other: &Self) -> Option<Self> {
        let mut start = Vec::with_capacity(self.start.len());
        let mut shape = Vec::with_capacity(self.start.len());
        for d in 0..self.start.len() {
            let lo = self.start[d].max(other.start[d]);
            let hi = (self.start[d] + self.shape[d]).min(other.start[d] + other.shape[d]);
            if hi <= lo {
                return None;
            }
            start.push(lo);
            shape.push(hi - lo);
        }
        Some(Self { start, shape })
    }

    /// The same box, with coordinates measured from `origin`.
    ///
    /// # Panics
    /// If the box starts before `origin` in some dimension.
    #[must_use]
    pub fn relative_to(&self, origin: &[u64]) -> Self {
        Self {
            start: self.start.iter().zip(origin).map(|(s, o)| s - o).collect(),
            shape: self.shape.clone(),
        }
    }

    /// The coordinates of every chunk of a regular grid that the box touches, in C order.
    #[must_use]
    pub fn chunks_touched(&self, chunk_shape: &[u64]) -> Vec<Vec<u64>> {
        let first: Vec<u64> = self
            .start
            .iter()
            .zip(chunk_shape)
            .map(|(s, c)| s / c)
            .collect();
        let last: Vec<u64> = self
            .start
            .iter()
            .zip(&self.shape)
            .zip(chunk_shape)
            .map(|((s, n), c)| (s + n - 1) / c)
            .collect();
        let mut out = Vec::new();
        if self.shape.contains(&0) {
            return out;
        }
        let mut current = first.clone();
        loop {
            out.push(current.clone());
            // Odometer over [first, last], last dimension fastest.
            let mut d = current.len();
            loop {
                if d == 0 {
                    return out;
                }
                d -= 1;
                if current[d] < last[d] {
                    current[d] += 1;
                    break;
                }
                current[d] = first[d];
            }
        }
    }
}

/// The C-order (row-major) linear index of `coords` in a grid of `shape`.
#[must_use]
pub fn c_order_index(coords: &[u64], shape: &[u64]) -> u64 {
    coords.iter().zip(shape).fold(0, |acc, (c, n)| acc * n + c)
}

/// The layout of one box copy: `region` elements from a buffer of `src_shape` at `src_start`
/// into a buffer of `dst_shape` at `dst_start`, all C-order with `element_size`-byte elements.
#[derive(Clone, Copy, Debug)]
pub struct CopyLayout<'a> {
    pub element_size: usize,
    pub region: &'a [u64],
    pub src_shape: &'a [u64],
    pub src_start: &'a [u64],
    pub dst_shape: &'a [u64],
    pub dst_start: &'a [u64],
}

impl CopyLayout<'_> {
    /// `(inner, run_bytes)`: dimensions `[inner, n)` form one contiguous run of `run_bytes`
    /// bytes; the dimensions before `inner` are iterated. For a non-empty region of n ≥ 1
    /// dimensions.
    fn merged_run(&self) -> (usize, usize) {
        let mut inner = self.region.len();
        let mut run_bytes = self.element_size;
        loop {
            inner -= 1;
            run_bytes *= self.region[inner] as usize;
            let whole = self.region[inner] == self.src_shape[inner]
                && self.region[inner] == self.dst_shape[inner];
            if inner == 0 || !whole {
                return (inner, run_bytes);
            }
        }
    }

    /// The bytes of the source the copy reads from, first to last: `(start, end)`; `None` for
    /// an empty region.
    #[must_use]
    pub fn src_span(&self) -> Option<(usize, usize)> {
        if self.region.contains(&0) {
            return None;
        }
        let strides = strides(self.src_shape, self.element_size);
        let (first, last) = self.src_start.iter().zip(self.region).zip(&strides).fold(
            (0, 0),
            |(first, last), ((&start, &n), &stride)| {
                (
                    first + start as usize * stride,
                    last + (start + n - 1) as usize * stride,
                )
            },
        );
        Some((first, last + self.element_size))
    }

    /// The copy's `(src_offset, dst_offset, run_bytes)` when it is one contiguous run, without
    /// walking it; `None` when it has several runs (or none).
    #[must_use]
    pub fn single_run(&self) -> Option<(usize, usize, usize)> {
        if self.region.is_empty() || self.region.contains(&0) {
            return None;
        }
        let (inner, _) = self.merged_run();
        if self.region[..inner].iter().any(|&n| n != 1) {
            return None;
        }
        let mut first = None;
        self.for_each_run(|src, dst, len| first = Some((src, dst, len)));
        first
    }

    /// Calls `run(src_offset, dst_offset, run_bytes)` for each contiguous run of the copy, with
    /// byte offsets into the two buffers. Trailing dimensions that are whole in all three
    /// shapes merge into one run.
    pub fn for_each_run(&self, mut run: impl FnMut(usize, usize, usize)) {
        let n = self.region.len();
        if n == 0 {
            run(0, 0, self.element_size);
            return;
        }
        if self.region.contains(&0) {
            return;
        }
        let src_strides = strides(self.src_shape, self.element_size);
        let dst_strides = strides(self.dst_shape, self.element_size);
        let (inner, run_bytes) = self.merged_run();
        let base = |strides: &[usize], start: &[u64]| -> usize {
            start
                .iter()
                .zip(strides)
                .map(|(s, st)| *s as usize * st)
                .sum()
        };
        // The offsets move by one stride per step of the index, and back by the dimension's
        // span when it wraps round: no multiplication per run.
        let (mut src, mut dst) = (
            base(&src_strides, self.src_start),
            base(&dst_strides, self.dst_start),
        );
        let mut index = vec![0u64; inner];
        loop {
            run(src, dst, run_bytes);
            let mut d = inner;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                index[d] += 1;
                src += src_strides[d];
                dst += dst_strides[d];
                if index[d] < self.region[d] {
                    break;
                }
                let span = self.region[d] as usize;
                src -= span * src_strides[d];
                dst -= span * dst_strides[d];
                index[d] = 0;
            }
        }
    }
}

/// Byte strides of a C-order buffer.
fn strides(shape: &[u64], element_size: usize) -> Vec<usize> {
    let mut out = vec![0usize; shape.len()];
    let mut stride = element_size;
    for d in (0..shape.len()).rev() {
        out[d] = stride;
        stride *= shape[d] as usize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_and_relative() {
        let a = Region::new(vec![0, 5], vec![10, 10]);
        let b = Region::new(vec![8, 0], vec![4, 7]);
        let o = a.overlap(&b).unwrap();
        assert_eq!(o, Region::new(vec![8, 5], vec![2, 2]));
        assert_eq!(o.relative_to(&[8, 0]), Region::new(vec![0, 5], vec![2, 2]));
        assert_eq!(a.overlap(&Region::new(vec![10, 0], vec![1, 100])), None);
    }

    #[test]
    fn chunks_touched_in_c_order() {
        let r = Region::new(vec![3, 7], vec![2, 4]);
        assert_eq!(
            r.chunks_touched(&[4, 8]),
            vec![vec![0, 0], vec![0, 1], vec![1, 0], vec![1, 1]]
        );
        assert_eq!(
            Region::new(vec![0], vec![8]).chunks_touched(&[8]),
            vec![vec![0]]
        );
        assert_eq!(
            Region::new(vec![], vec![]).chunks_touched(&[]),
            vec![Vec::<u64>::new()]
        );
    }

    #[test]
    fn c_order() {
        assert_eq!(c_order_index(&[1, 2, 3], &[4, 5, 6]), 30 + 2 * 6 + 3);
        assert_eq!(c_order_index(&[], &[]), 0);
    }

    fn copy(layout: &CopyLayout, src: &[u8], dst: &mut [u8]) {
        layout.for_each_run(|s, d, n| dst[d..d + n].copy_from_slice(&src[s..s + n]));
    }

    #[test]
    fn copy_matches_elementwise_reference() {
        let src_shape = [5u64, 6, 7];
        let src: Vec<u8> = (0..210u32).map(|i| i as u8).collect();
        let dst_shape = [4u64, 6, 9];
        for (region, src_start, dst_start) in [
            ([2u64, 3, 4], [1u64, 2, 3], [2u64, 1, 5]),
            ([4, 6, 7], [1, 0, 0], [0, 0, 1]),
            ([1, 6, 7], [4, 0, 0], [3, 0, 0]),
        ] {
            let mut dst = vec![0u8; 216];
            let layout = CopyLayout {
                element_size: 1,
                region: &region,
                src_shape: &src_shape,
                src_start: &src_start,
                dst_shape: &dst_shape,
                dst_start: &dst_start,
            };
            copy(&layout, &src, &mut dst);
            let mut expected = vec![0u8; 216];
            for i in 0..region[0] {
                for j in 0..region[1] {
                    for k in 0..region[2] {
                        let s = c_order_index(
                            &[src_start[0] + i, src_start[1] + j, src_start[2] + k],
                            &src_shape,
                        );
                        let d = c_order_index(
                            &[dst_start[0] + i, dst_start[1] + j, dst_start[2] + k],
                            &dst_shape,
                        );
                        expected[d as usize] = src[s as usize];
                    }
                }
            }
            assert_eq!(dst, expected, "region {region:?}");
        }
    }

    #[test]
    fn src_span_runs_from_the_first_run_to_the_end_of_the_last() {
        let shape = [3u64, 4, 5];
        let mut layout = CopyLayout {
            element_size: 2,
            region: &[2, 2, 3],
            src_shape: &shape,
            src_start: &[1, 1, 2],
            dst_shape: &[6, 4, 5],
            dst_start: &[0, 0, 0],
        };
        let mut runs = Vec::new();
        layout.for_each_run(|src, _, len| runs.push((src, len)));
        let (first, last) = (runs[0], runs[runs.len() - 1]);
        assert_eq!(layout.src_span(), Some((first.0, last.0 + last.1)));
        assert_eq!(layout.src_span(), Some((54, 110)));
        // A whole chunk spans all of it; an empty region nothing.
        layout.region = &shape;
        layout.src_start = &[0, 0, 0];
        assert_eq!(layout.src_span(), Some((0, 120)));
        layout.region = &[0, 2, 3];
        assert_eq!(layout.src_span(), None);
    }

    #[test]
    fn single_run_is_told_without_walking_the_copy() {
        let shape = [3u64, 4, 5];
        let mut layout = CopyLayout {
            element_size: 2,
            region: &[1, 4, 5],
            src_shape: &shape,
            src_start: &[2, 0, 0],
            dst_shape: &[6, 4, 5],
            dst_start: &[3, 0, 0],
        };
        assert_eq!(layout.single_run(), Some((80, 120, 40)));
        layout.region = &[2, 4, 5];
        layout.src_start = &[1, 0, 0];
        assert_eq!(layout.single_run(), Some((40, 120, 80)));
        // Three whole rows of one plane are contiguous too.
        layout.region = &[1, 3, 5];
        assert_eq!(layout.single_run(), Some((40, 120, 30)));
        layout.region = &[1, 3, 4];
        assert_eq!(layout.single_run(), None);
        layout.region = &[2, 4, 4];
        assert_eq!(layout.single_run(), None);
    }

    #[test]
    fn whole_trailing_dimensions_merge_into_one_run() {
        let shape = [3u64, 4, 5];
        let layout = CopyLayout {
            element_size: 2,
            region: &[2, 4, 5],
            src_shape: &shape,
            src_start: &[1, 0, 0],
            dst_shape: &shape,
            dst_start: &[0, 0, 0],
        };
        let mut runs = Vec::new();
        layout.for_each_run(|s, d, n| runs.push((s, d, n)));
        assert_eq!(runs, vec![(40, 0, 80)]);
    }
}
