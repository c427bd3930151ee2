//! Casting to a floating output type, with optional normalisation `(x - mean) / std`, done
//! while each run of a chunk is copied into the batch (one pass, no second buffer).
//!
//! Arithmetic is in `f64` for a `float64` output and in `f32` otherwise, so a result equals
//! numpy's `((x.astype(f32) - f32(mean)) / f32(std)).astype(out)` bit for bit.

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::zarr::DataType;

/// A floating output element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    Float16,
    BFloat16,
    Float32,
    Float64,
}

impl OutType {
    /// Parses `"float16"`, `"bfloat16"`, `"float32"` or `"float64"`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for any other name.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "float16" => Self::Float16,
            "bfloat16" => Self::BFloat16,
            "float32" => Self::Float32,
            "float64" => Self::Float64,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "dtype {name} is not an output type: use float16, bfloat16, float32 or float64"
                )))
            }
        })
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Float16 => "float16",
            Self::BFloat16 => "bfloat16",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
        }
    }

    #[must_use]
    pub fn size(self) -> usize {
        match self {
            Self::Float16 | Self::BFloat16 => 2,
            Self::Float32 => 4,
            Self::Float64 => 8,
        }
    }
}

/// How a chunk's elements become output elements.
#[derive(Clone, Copy, Debug)]
pub struct Cast {
    from: DataType,
    to: OutType,
    mean: f64,
    std: f64,
}

impl Cast {
    /// # Errors
    /// [`Error::InvalidArgument`] for a complex source, or a `std` that is zero, negative or
    /// not finite, or a `mean` that is not finite.
    pub fn new(from: DataType, to: OutType, mean: f64, std: f64) -> Result<Self> {
        if matches!(from, DataType::Complex64 | DataType::Complex128) {
            return Err(Error::InvalidArgument(format!(
                "a {} array cannot be cast to {}",
                from.name(),
                to.name()
            )));
        }
        if !mean.is_finite() || !std.is_finite() || std <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "normalisation needs a finite mean and a positive finite std, got mean={mean}, std={std}"
            )));
        }
        Ok(Self {
            from,
            to,
            mean,
            std,
        })
    }

    #[must_use]
    pub fn to(&self) -> OutType {
        self.to
    }

    /// Converts `count` elements from `src` (native-endian `from` elements) into `dst`
    /// (native-endian `to` elements).
    ///
    /// # Panics
    /// When `src` or `dst` is shorter than `count` elements.
    pub fn convert(&self, src: &[u8], dst: &mut [u8], count: usize) {
        let src = &src[..count * self.from.size()];
        let dst = &mut dst[..count * self.to.size()];
        macro_rules! from {
            ($t:ty, $to_f64:expr, $to_f32:expr) => {{
                let n = std::mem::size_of::<$t>();
                let read =
                    |i: usize| <$t>::from_ne_bytes(src[i * n..(i + 1) * n].try_into().unwrap());
                self.write(dst, count, |i| $to_f64(read(i)), |i| $to_f32(read(i)))
            }};
        }
        match self.from {
            DataType::Bool => self.write(
                dst,
                count,
                |i| f64::from(u8::from(src[i] != 0)),
                |i| f32::from(u8::from(src[i] != 0)),
            ),
            DataType::Int8 => from!(i8, f64::from, f32::from),
            DataType::Int16 => from!(i16, f64::from, f32::from),
            DataType::Int32 => from!(i32, f64::from, |x| x as f32),
            DataType::Int64 => from!(i64, |x| x as f64, |x| x as f32),
            DataType::UInt8 => from!(u8, f64::from, f32::from),
            DataType::UInt16 => from!(u16, f64::from, f32::from),
            DataType::UInt32 => from!(u32, f64::from, |x| x as f32),
            DataType::UInt64 => from!(u64, |x| x as f64, |x| x as f32),
            DataType::Float16 => {
                let read = |i: usize| f16::from_ne_bytes([src[2 * i], src[2 * i + 1]]);
                self.write(dst, count, |i| read(i).to_f64(), |i| read(i).to_f32());
            }
            DataType::Float32 => from!(f32, f64::from, |x| x),
            DataType::Float64 => from!(f64, |x| x, |x| x as f32),
            DataType::Complex64 | DataType::Complex128 => {
                unreachable!("refused by Cast::new")
            }
        }
    }

    /// Writes `count` output elements, element `i` computed from `wide(i)` for a `float64`
    /// output and from `narrow(i)` otherwise.
    #[inline]
    fn write(
        &self,
        dst: &mut [u8],
        count: usize,
        wide: impl Fn(usize) -> f64,
        narrow: impl Fn(usize) -> f32,
    ) {
        let identity = self.mean == 0.0 && self.std == 1.0;
        let (mean, std) = (self.mean as f32, self.std as f32);
        let norm = |x: f32| if identity { x } else { (x - mean) / std };
        match self.to {
            OutType::Float64 => {
                for (i, out) in dst.chunks_exact_mut(8).enumerate().take(count) {
                    let x = wide(i);
                    let y = if identity {
                        x
                    } else {
                        (x - self.mean) / self.std
                    };
                    out.copy_from_slice(&y.to_ne_bytes());
                }
            }
            OutType::Float32 => {
                for (i, out) in dst.chunks_exact_mut(4).enumerate().take(count) {
                    out.copy_from_slice(&norm(narrow(i)).to_ne_bytes());
                }
            }
            OutType::Float16 => {
                for (i, out) in dst.chunks_exact_mut(2).enumerate().take(count) {
                    out.copy_from_slice(&f16::from_f32(norm(narrow(i))).to_ne_bytes());
                }
            }
            OutType::BFloat16 => {
                for (i, out) in dst.chunks_exact_mut(2).enumerate().take(count) {
                    out.copy_from_slice(&bf16::from_f32(norm(narrow(i))).to_ne_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(cast: &Cast, src: &[u8], count: usize) -> Vec<u8> {
        let mut dst = vec![0u8; count * cast.to().size()];
        cast.convert(src, &mut dst, count);
        dst
    }

    #[test]
    fn int16_to_float32_normalised() {
        let src: Vec<u8> = [-3i16, 0, 7, i16::MAX]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let cast = Cast::new(DataType::Int16, OutType::Float32, 1.0, 2.0).unwrap();
        let out: Vec<f32> = convert(&cast, &src, 4)
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(out, vec![-2.0, -0.5, 3.0, 16383.0]);
    }

    #[test]
    fn half_outputs_round_to_nearest_even() {
        // 1 + 2^-11 lies halfway between two float16 values: ties go to the even one (1.0).
        let src: Vec<u8> = [
            1.0f32 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            f32::NAN,
        ]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
        let cast = Cast::new(DataType::Float32, OutType::Float16, 0.0, 1.0).unwrap();
        let out: Vec<f16> = convert(&cast, &src, 3)
            .chunks_exact(2)
            .map(|b| f16::from_ne_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(out[0], f16::from_f32(1.0));
        assert_eq!(out[1], f16::from_f32(1.0 + 2.0 * 2f32.powi(-10)));
        assert!(out[2].is_nan());
        let cast = Cast::new(DataType::UInt8, OutType::BFloat16, 0.0, 1.0).unwrap();
        let out = convert(&cast, &[0, 1, 255], 3);
        assert_eq!(&out[4..], bf16::from_f32(255.0).to_ne_bytes().as_slice());
    }

    #[test]
    fn float64_output_computes_in_float64() {
        let src = (1u64 << 60).wrapping_add(1).to_ne_bytes();
        let cast = Cast::new(DataType::UInt64, OutType::Float64, 0.5, 4.0).unwrap();
        let out = f64::from_ne_bytes(convert(&cast, &src, 1).try_into().unwrap());
        assert_eq!(out, ((1u64 << 60) as f64 - 0.5) / 4.0);
    }

    #[test]
    fn bad_casts_are_refused() {
        assert!(Cast::new(DataType::Complex64, OutType::Float32, 0.0, 1.0).is_err());
        assert!(Cast::new(DataType::Int8, OutType::Float32, 0.0, 0.0).is_err());
        assert!(Cast::new(DataType::Int8, OutType::Float32, f64::NAN, 1.0).is_err());
        assert!(OutType::from_name("int32").is_err());
    }
}
