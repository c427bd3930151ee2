//! Random crop origins: a pure function of (seed, epoch, sample index), so any split of an
//! epoch's samples over workers and ranks sees the same crops as one process would.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// Draws uniform crop origins for an array shape and a crop shape.
#[derive(Clone, Debug)]
pub struct Sampler {
    /// The largest valid origin per dimension.
    max_origin: Vec<u64>,
    seed: u64,
}

impl Sampler {
    /// # Errors
    /// [`Error::InvalidArgument`] when the crop has another rank than the array, a zero extent,
    /// or does not fit in the array.
    pub fn new(shape: &[u64], crop: &[u64], seed: u64) -> Result<Self> {
        check_crop(shape, crop)?;
        Ok(Self {
            max_origin: shape.iter().zip(crop).map(|(s, c)| s - c).collect(),
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
        self.max_origin
            .iter()
            .map(|&m| rng.random_range(0..=m))
            .collect()
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
    fn crops_that_do_not_fit_are_refused() {
        let err = Sampler::new(&[10, 10], &[11, 1], 0).unwrap_err();
        assert!(err.to_string().contains("dimension 0 is 11"), "{err}");
        assert!(Sampler::new(&[10, 10], &[1], 0).is_err());
        assert!(Sampler::new(&[10, 10], &[0, 1], 0).is_err());
    }
}
