//! Random crop origins: a pure function of (seed, epoch, sample index), so any split of an
//! epoch's samples over workers and ranks sees the same crops as one process would.
//!
//! Origins may be restricted to a lattice (multiples of `step` per dimension, so a window
//! maps exactly onto arrays on coarser grids) and, along the leading dimensions, to a list of
//! valid starts (e.g. the time steps that have data).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// Draws uniform crop origins for an array shape and a crop shape.
#[derive(Clone, Debug)]
pub struct Sampler {
    /// The largest origin per dimension, in steps.
    max_steps: Vec<u64>,
    step: Vec<u64>,
    /// Allowed starts of the leading `valid[0].len()` dimensions; `None` allows every one.
    valid: Option<Vec<Vec<u64>>>,
    seed: u64,
}

impl Sampler {
    /// # Errors
    /// [`Error::InvalidArgument`] when the crop has another rank than the array, a zero extent,
    /// or does not fit in the array.
    pub fn new(shape: &[u64], crop: &[u64], seed: u64) -> Result<Self> {
        Self::restricted(shape, crop, seed, &vec![1; shape.len()], None)
    }

    /// A sampler whose origins are multiples of `step` and, when `valid` is given, whose
    /// leading dimensions start only at one of its entries (entries whose crop would leave
    /// the array, or off the lattice, are dropped).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a crop that does not fit, a zero step, `valid` entries
    /// of mixed or too many dimensions, or no valid start left.
    pub fn restricted(
        shape: &[u64],
        crop: &[u64],
        seed: u64,
        step: &[u64],
        valid: Option<&[Vec<u64>]>,
    ) -> Result<Self> {
        check_crop(shape, crop)?;
        if step.len() != shape.len() || step.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "origin steps {step:?} must be one positive integer per dimension of {shape:?}"
            )));
        }
        let max_origin: Vec<u64> = shape.iter().zip(crop).map(|(s, c)| s - c).collect();
        let valid = valid
            .map(|starts| {
                let dims = starts.first().map_or(0, Vec::len);
                if dims == 0 || dims > shape.len() || starts.iter().any(|s| s.len() != dims) {
                    return Err(Error::InvalidArgument(format!(
                        "valid starts must all have the same number (1..={}) of leading dimensions",
                        shape.len()
                    )));
                }
                let mut kept: Vec<Vec<u64>> = starts
                    .iter()
                    .filter(|s| {
                        s.iter()
                            .zip(&max_origin)
                            .zip(step)
                            .all(|((&o, &m), &k)| o <= m && o % k == 0)
                    })
                    .cloned()
                    .collect();
                kept.sort_unstable();
                kept.dedup();
                if kept.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "none of the {} valid starts leaves room for the crop {crop:?} in {shape:?}",
                        starts.len()
                    )));
                }
                Ok(kept)
            })
            .transpose()?;
        Ok(Self {
            max_steps: max_origin.iter().zip(step).map(|(m, k)| m / k).collect(),
            step: step.to_vec(),
            valid,
            seed,
        })
    }

    /// The origin of sample `sample` in epoch `epoch`.
    #[must_use]
    pub fn origin(&self, epoch: u64, sample: u64) -> Vec<u64> {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&self.seed.to_le_bytes());
        key[8..16].copy_from_slice(&epoch.to_le_bytes());
        key[16..24].copy_from_slice(&sample.to_le_bytes());
        let mut rng = ChaCha8Rng::from_seed(key);
        let lead: &[u64] = match &self.valid {
            Some(valid) => &valid[rng.random_range(0..valid.len())],
            None => &[],
        };
        let rest = self.max_steps[lead.len()..]
            .iter()
            .zip(&self.step[lead.len()..])
            .map(|(&m, &k)| rng.random_range(0..=m) * k);
        lead.iter().copied().chain(rest).collect()
    }
}

/// Checks that `crop` fits in an array of `shape`.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the dimension that does not fit.
pub fn check_crop(shape: &[u64], crop: &[u64]) -> Result<()> {
    if crop.len() != shape.len() {
        return Err(Error::InvalidArgument(format!(
            "crop {crop:?} has {} dimensions, the array {shape:?} has {}",
            crop.len(),
            shape.len()
        )));
    }
    for (d, (&c, &s)) in crop.iter().zip(shape).enumerate() {
        if c == 0 || c > s {
            return Err(Error::InvalidArgument(format!(
                "crop {crop:?} does not fit the array {shape:?}: dimension {d} is {c}, must be 1..={s}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_deterministic_and_in_range() {
        let s = Sampler::new(&[10, 100, 7], &[3, 100, 1], 42).unwrap();
        for i in 0..500 {
            let o = s.origin(1, i);
            assert!(o[0] <= 7 && o[1] == 0 && o[2] <= 6, "{o:?}");
            assert_eq!(o, s.origin(1, i));
        }
        assert_ne!(
            (0..20).map(|i| s.origin(0, i)).collect::<Vec<_>>(),
            (0..20).map(|i| s.origin(1, i)).collect::<Vec<_>>()
        );
        let hits_both_ends = (0..500)
            .map(|i| s.origin(0, i)[0])
            .fold((false, false), |(lo, hi), v| (lo || v == 0, hi || v == 7));
        assert_eq!(hits_both_ends, (true, true));
    }

    #[test]
    fn origins_stay_on_the_lattice_and_at_valid_starts() {
        let valid = vec![vec![2], vec![5], vec![8], vec![9], vec![3]];
        let s =
            Sampler::restricted(&[10, 64, 64], &[2, 16, 16], 7, &[1, 4, 4], Some(&valid)).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..400 {
            let o = s.origin(0, i);
            // 9 is dropped: a crop of 2 from 9 leaves the array.
            assert!([2, 3, 5, 8].contains(&o[0]), "{o:?}");
            assert!(
                o[1] % 4 == 0 && o[2] % 4 == 0 && o[1] <= 48 && o[2] <= 48,
                "{o:?}"
            );
            seen.insert(o[0]);
            seen.insert(100 + o[1]);
        }
        assert!(seen.contains(&2) && seen.contains(&8) && seen.contains(&148));
        assert!(Sampler::restricted(&[10, 4], &[2, 4], 0, &[1, 1], Some(&[vec![9]])).is_err());
        assert!(Sampler::restricted(&[10, 4], &[2, 4], 0, &[0, 1], None).is_err());
    }

    #[test]
    fn crops_that_do_not_fit_are_refused() {
        let err = Sampler::new(&[10, 10], &[11, 1], 0).unwrap_err();
        assert!(err.to_string().contains("dimension 0 is 11"), "{err}");
        assert!(Sampler::new(&[10, 10], &[1], 0).is_err());
        assert!(Sampler::new(&[10, 10], &[0, 1], 0).is_err());
    }
}
