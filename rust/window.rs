//! The window of one sample in an array: per dimension, the runs of indices it reads (from
//! the sample's origin) in the order they are written out. A crop is one run per dimension;
//! steps along time (`t-1, t, t+4`) or a selection of levels (`3, 7, 12`) are several.

use crate::error::{Error, Result};
use crate::zarr::Region;

/// `len` consecutive indices from `offset` past the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub offset: u64,
    pub len: u64,
}

/// Per dimension, the runs a sample reads; the output holds them one after the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    runs: Vec<Vec<Run>>,
}

/// One box a sample reads: where it is in the array, and where it goes in the sample's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowBox {
    pub in_array: Region,
    pub in_out: Vec<u64>,
}

impl Window {
    /// The window of a plain crop: one run from the origin per dimension.
    #[must_use]
    pub fn crop(crop: &[u64]) -> Self {
        Self {
            runs: crop
                .iter()
                .map(|&len| vec![Run { offset: 0, len }])
                .collect(),
        }
    }

    /// A window of `runs` per dimension; adjacent runs (one's end the next's offset) are
    /// joined, so that a chunk they share is one box.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a dimension with no runs or a run of no indices.
    pub fn new(runs: Vec<Vec<Run>>) -> Result<Self> {
        let mut joined = Vec::with_capacity(runs.len());
        for (d, dim) in runs.into_iter().enumerate() {
            if dim.is_empty() || dim.iter().any(|r| r.len == 0) {
                return Err(Error::InvalidArgument(format!(
                    "window dimension {d}: needs runs of at least one index, got {dim:?}"
                )));
            }
            let mut out: Vec<Run> = Vec::with_capacity(dim.len());
            for run in dim {
                match out.last_mut() {
                    Some(last) if last.offset.checked_add(last.len) == Some(run.offset) => {
                        last.len += run.len;
                    }
                    _ => out.push(run),
                }
            }
            joined.push(out);
        }
        Ok(Self { runs: joined })
    }

    #[must_use]
    pub fn ndim(&self) -> usize {
        self.runs.len()
    }

    /// The shape of one sample's output: the runs' lengths added up, per dimension.
    #[must_use]
    pub fn out_shape(&self) -> Vec<u64> {
        self.runs
            .iter()
            .map(|dim| dim.iter().map(|r| r.len).sum())
            .collect()
    }

    /// How far past the origin the window reaches, per dimension (one past its last index).
    #[must_use]
    pub fn span(&self) -> Vec<u64> {
        self.runs
            .iter()
            .map(|dim| dim.iter().map(|r| r.offset + r.len).max().unwrap_or(0))
            .collect()
    }

    /// The boxes a sample at `origin` reads: every combination of one run per dimension, in
    /// C order of the output.
    #[must_use]
    pub fn boxes(&self, origin: &[u64]) -> Vec<WindowBox> {
        // Each dimension's runs with where they start in the output.
        let placed: Vec<Vec<(Run, u64)>> = self
            .runs
            .iter()
            .map(|dim| {
                let mut at = 0;
                dim.iter()
                    .map(|&r| {
                        let placed = (r, at);
                        at += r.len;
                        placed
                    })
                    .collect()
            })
            .collect();
        let mut out = Vec::new();
        let mut pick = vec![0usize; placed.len()];
        loop {
            let (mut start, mut shape, mut in_out) = (Vec::new(), Vec::new(), Vec::new());
            for (d, &p) in pick.iter().enumerate() {
                let (run, at) = placed[d][p];
                start.push(origin[d] + run.offset);
                shape.push(run.len);
                in_out.push(at);
            }
            out.push(WindowBox {
                in_array: Region::new(start, shape),
                in_out,
            });
            // The next combination, last dimension fastest.
            let Some(d) = (0..pick.len())
                .rev()
                .find(|&d| pick[d] + 1 < placed[d].len())
            else {
                return out;
            };
            pick[d] += 1;
            for p in pick.iter_mut().skip(d + 1) {
                *p = 0;
            }
        }
    }

    /// Whether a sample at `origin` stays inside an array of `shape`.
    #[must_use]
    pub fn fits(&self, origin: &[u64], shape: &[u64]) -> bool {
        origin.len() == shape.len()
            && self
                .span()
                .iter()
                .zip(origin)
                .zip(shape)
                .all(|((&span, &o), &s)| span <= s && o <= s - span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(offset: u64, len: u64) -> Run {
        Run { offset, len }
    }

    #[test]
    fn a_crop_is_one_box_at_the_origin() {
        let w = Window::crop(&[2, 3]);
        assert_eq!(w.out_shape(), vec![2, 3]);
        assert_eq!(w.span(), vec![2, 3]);
        assert_eq!(
            w.boxes(&[5, 7]),
            vec![WindowBox {
                in_array: Region::new(vec![5, 7], vec![2, 3]),
                in_out: vec![0, 0]
            }]
        );
    }

    #[test]
    fn steps_and_selections_are_boxes_placed_one_after_the_other() {
        // Steps -1, 0, 4 from t (offsets 0, 1, 5 past t - 1) and levels 7, 3; 4 columns.
        let w = Window::new(vec![
            vec![run(0, 1), run(1, 1), run(5, 1)],
            vec![run(7, 1), run(3, 1)],
            vec![run(0, 4)],
        ])
        .unwrap();
        assert_eq!(w.out_shape(), vec![3, 2, 4]);
        assert_eq!(w.span(), vec![6, 8, 4]);
        let boxes = w.boxes(&[10, 0, 2]);
        // Steps 0 and 1 joined: 2 time runs × 2 levels.
        let got: Vec<(Vec<u64>, Vec<u64>, Vec<u64>)> = boxes
            .into_iter()
            .map(|b| (b.in_array.start, b.in_array.shape, b.in_out))
            .collect();
        assert_eq!(
            got,
            vec![
                (vec![10, 7, 2], vec![2, 1, 4], vec![0, 0, 0]),
                (vec![10, 3, 2], vec![2, 1, 4], vec![0, 1, 0]),
                (vec![15, 7, 2], vec![1, 1, 4], vec![2, 0, 0]),
                (vec![15, 3, 2], vec![1, 1, 4], vec![2, 1, 0]),
            ]
        );
        assert!(w.fits(&[10, 0, 2], &[16, 8, 6]));
        assert!(!w.fits(&[11, 0, 2], &[16, 8, 6]));
        assert!(!w.fits(&[10, 1, 2], &[16, 8, 6]));
    }

    #[test]
    fn empty_runs_are_refused() {
        assert!(Window::new(vec![vec![]]).is_err());
        assert!(Window::new(vec![vec![run(0, 0)]]).is_err());
    }
}
