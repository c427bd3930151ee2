//! numpy's numeric element types as numcodecs' filters compute with them: the dtype strings
//! of their configurations, numpy's type promotion (`np.result_type`), and casts and
//! arithmetic rounded exactly as numpy 2 rounds them.
//!
//! An element is held as a [`Scalar`], exactly: an integer of any width as an `i128`, a float
//! as the `f64` it widens to without rounding. Each operation names the numpy type it is
//! computed in and rounds (floats) or wraps (integers) its result to that type, as numpy's
//! loops do. `float16` arithmetic is numpy's: in `float32`, rounded to `float16` after each
//! operation.
//!
//! A float cast to an integer truncates toward zero, as numpy does for values in range. Out of
//! range (and NaN) numpy's result is undefined (it differs between its SIMD and scalar loops,
//! so with the array's length); here it saturates.

use half::f16;
use zarrs::array::{data_type, DataType};

/// A numeric numpy element type (`bool`, complex and the rest are not numcodecs filters').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumpyType {
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float16,
    Float32,
    Float64,
}

/// One element, held exactly (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    Int(i128),
    Float(f64),
}

impl Scalar {
    /// A JSON number as Python reads it: an `int` when written without a fraction or exponent,
    /// else a `float`.
    #[must_use]
    pub fn from_json(number: &serde_json::Number) -> Self {
        if let Some(i) = number.as_i64() {
            Self::Int(i128::from(i))
        } else if let Some(u) = number.as_u64() {
            Self::Int(i128::from(u))
        } else {
            Self::Float(number.as_f64().unwrap_or(f64::NAN))
        }
    }
}

const ALL: [NumpyType; 11] = [
    NumpyType::Int8,
    NumpyType::Int16,
    NumpyType::Int32,
    NumpyType::Int64,
    NumpyType::UInt8,
    NumpyType::UInt16,
    NumpyType::UInt32,
    NumpyType::UInt64,
    NumpyType::Float16,
    NumpyType::Float32,
    NumpyType::Float64,
];

impl NumpyType {
    /// Parses a numpy dtype string as numcodecs configurations hold it: `"<f8"`, `"|u1"`,
    /// `"i2"`, `"float32"` or a one-letter code such as `"d"`.
    ///
    /// # Errors
    /// A message naming `text` when it is not a numeric type, or when its byte order is not
    /// this machine's: the filters compute on elements in memory, in native order.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (order, code) = match text.chars().next() {
            Some(c @ ('<' | '>' | '|' | '=')) => (Some(c), &text[1..]),
            _ => (None, text),
        };
        let parsed = match code {
            "i1" | "int8" | "b" => Self::Int8,
            "i2" | "int16" | "h" => Self::Int16,
            "i4" | "int32" | "i" => Self::Int32,
            "i8" | "int64" | "l" | "q" => Self::Int64,
            "u1" | "uint8" | "B" => Self::UInt8,
            "u2" | "uint16" | "H" => Self::UInt16,
            "u4" | "uint32" | "I" => Self::UInt32,
            "u8" | "uint64" | "L" | "Q" => Self::UInt64,
            "f2" | "float16" | "e" => Self::Float16,
            "f4" | "float32" | "f" => Self::Float32,
            "f8" | "float64" | "d" => Self::Float64,
            _ => return Err(format!("dtype {text:?} is not a numeric type")),
        };
        let foreign = if cfg!(target_endian = "little") {
            '>'
        } else {
            '<'
        };
        if parsed.size() > 1 && order == Some(foreign) {
            return Err(format!(
                "dtype {text:?} is not in this machine's byte order"
            ));
        }
        Ok(parsed)
    }

    /// The numpy name (`"float32"`), also the Zarr v3 name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::Int16 => "int16",
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::UInt8 => "uint8",
            Self::UInt16 => "uint16",
            Self::UInt32 => "uint32",
            Self::UInt64 => "uint64",
            Self::Float16 => "float16",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
        }
    }

    /// Bytes per element.
    #[must_use]
    pub fn size(self) -> usize {
        match self {
            Self::Int8 | Self::UInt8 => 1,
            Self::Int16 | Self::UInt16 | Self::Float16 => 2,
            Self::Int32 | Self::UInt32 | Self::Float32 => 4,
            Self::Int64 | Self::UInt64 | Self::Float64 => 8,
        }
    }

    #[must_use]
    pub fn is_float(self) -> bool {
        matches!(self, Self::Float16 | Self::Float32 | Self::Float64)
    }

    fn is_signed(self) -> bool {
        matches!(self, Self::Int8 | Self::Int16 | Self::Int32 | Self::Int64)
    }

    /// The type as zarrs' codecs take it.
    #[must_use]
    pub fn data_type(self) -> DataType {
        match self {
            Self::Int8 => data_type::int8(),
            Self::Int16 => data_type::int16(),
            Self::Int32 => data_type::int32(),
            Self::Int64 => data_type::int64(),
            Self::UInt8 => data_type::uint8(),
            Self::UInt16 => data_type::uint16(),
            Self::UInt32 => data_type::uint32(),
            Self::UInt64 => data_type::uint64(),
            Self::Float16 => data_type::float16(),
            Self::Float32 => data_type::float32(),
            Self::Float64 => data_type::float64(),
        }
    }

    /// The numpy type of a zarrs data type, if it is one of these.
    #[must_use]
    pub fn of(data_type: &DataType) -> Option<Self> {
        ALL.into_iter().find(|t| t.data_type() == *data_type)
    }

    /// `np.result_type(a, b)`: the type numpy computes `a op b` in.
    #[must_use]
    pub fn promote(a: Self, b: Self) -> Self {
        let larger = |x: Self, y: Self| if x.size() >= y.size() { x } else { y };
        match (a.is_float(), b.is_float()) {
            (true, true) => larger(a, b),
            (true, false) | (false, true) => {
                let (float, int) = if a.is_float() { (a, b) } else { (b, a) };
                // The smallest float that holds every value of the integer type.
                let holds = match int.size() {
                    1 => Self::Float16,
                    2 => Self::Float32,
                    _ => Self::Float64,
                };
                larger(float, holds)
            }
            (false, false) if a.is_signed() == b.is_signed() => larger(a, b),
            (false, false) => {
                let (signed, unsigned) = if a.is_signed() { (a, b) } else { (b, a) };
                if signed.size() > unsigned.size() {
                    signed
                } else {
                    match unsigned.size() {
                        1 => Self::Int16,
                        2 => Self::Int32,
                        4 => Self::Int64,
                        _ => Self::Float64,
                    }
                }
            }
        }
    }

    /// Reads one native-endian element from `bytes` (exactly [`NumpyType::size`] long).
    #[must_use]
    pub fn load(self, bytes: &[u8]) -> Scalar {
        fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
            let mut out = [0; N];
            out.copy_from_slice(&bytes[..N]);
            out
        }
        match self {
            Self::Int8 => Scalar::Int(i8::from_ne_bytes(array(bytes)).into()),
            Self::Int16 => Scalar::Int(i16::from_ne_bytes(array(bytes)).into()),
            Self::Int32 => Scalar::Int(i32::from_ne_bytes(array(bytes)).into()),
            Self::Int64 => Scalar::Int(i64::from_ne_bytes(array(bytes)).into()),
            Self::UInt8 => Scalar::Int(u8::from_ne_bytes(array(bytes)).into()),
            Self::UInt16 => Scalar::Int(u16::from_ne_bytes(array(bytes)).into()),
            Self::UInt32 => Scalar::Int(u32::from_ne_bytes(array(bytes)).into()),
            Self::UInt64 => Scalar::Int(u64::from_ne_bytes(array(bytes)).into()),
            Self::Float16 => Scalar::Float(f16::from_ne_bytes(array(bytes)).to_f64()),
            Self::Float32 => Scalar::Float(f32::from_ne_bytes(array(bytes)).into()),
            Self::Float64 => Scalar::Float(f64::from_ne_bytes(array(bytes))),
        }
    }

    /// Writes `value`, cast to this type ([`NumpyType::cast`]), into `out` (exactly
    /// [`NumpyType::size`] long), native-endian.
    // Each arm writes a value `cast` has already brought into this type's range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn store(self, value: Scalar, out: &mut [u8]) {
        match (self, self.cast(value)) {
            (Self::Int8, Scalar::Int(i)) => out.copy_from_slice(&(i as i8).to_ne_bytes()),
            (Self::Int16, Scalar::Int(i)) => out.copy_from_slice(&(i as i16).to_ne_bytes()),
            (Self::Int32, Scalar::Int(i)) => out.copy_from_slice(&(i as i32).to_ne_bytes()),
            (Self::Int64, Scalar::Int(i)) => out.copy_from_slice(&(i as i64).to_ne_bytes()),
            (Self::UInt8, Scalar::Int(i)) => out.copy_from_slice(&(i as u8).to_ne_bytes()),
            (Self::UInt16, Scalar::Int(i)) => out.copy_from_slice(&(i as u16).to_ne_bytes()),
            (Self::UInt32, Scalar::Int(i)) => out.copy_from_slice(&(i as u32).to_ne_bytes()),
            (Self::UInt64, Scalar::Int(i)) => out.copy_from_slice(&(i as u64).to_ne_bytes()),
            (Self::Float16, Scalar::Float(f)) => {
                out.copy_from_slice(&f16::from_f64(f).to_ne_bytes());
            }
            (Self::Float32, Scalar::Float(f)) => out.copy_from_slice(&(f as f32).to_ne_bytes()),
            (Self::Float64, Scalar::Float(f)) => out.copy_from_slice(&f.to_ne_bytes()),
            // `cast` returns an integer for integer types and a float for float types.
            _ => {}
        }
    }

    /// `value` as numpy casts it to this type: integers wrap, floats round to nearest (ties to
    /// even), floats truncate toward zero into integers.
    // The truncations are the wrapping this function exists to perform.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_precision_loss,
        clippy::cast_sign_loss
    )]
    #[must_use]
    pub fn cast(self, value: Scalar) -> Scalar {
        let int = |i: i128| {
            Scalar::Int(match self {
                Self::Int8 => (i as i8).into(),
                Self::Int16 => (i as i16).into(),
                Self::Int32 => (i as i32).into(),
                Self::Int64 => (i as i64).into(),
                Self::UInt8 => (i as u8).into(),
                Self::UInt16 => (i as u16).into(),
                Self::UInt32 => (i as u32).into(),
                _ => (i as u64).into(),
            })
        };
        match (self, value) {
            (Self::Float64, Scalar::Int(i)) => Scalar::Float(i as f64),
            // Straight from the integer: one rounding, not two through f64.
            (Self::Float32, Scalar::Int(i)) => Scalar::Float(f64::from(i as f32)),
            // Integers past f32's 2**24 are past f16's range too: still one rounding.
            (Self::Float16, Scalar::Int(i)) => Scalar::Float(f16::from_f32(i as f32).to_f64()),
            (Self::Float64, Scalar::Float(f)) => Scalar::Float(f),
            (Self::Float32, Scalar::Float(f)) => Scalar::Float(f64::from(f as f32)),
            (Self::Float16, Scalar::Float(f)) => Scalar::Float(f16::from_f64(f).to_f64()),
            (_, Scalar::Int(i)) => int(i),
            (_, Scalar::Float(f)) => int(f.trunc() as i128),
        }
    }

    /// Applies `op` to `a` and `b` cast to this type, in this type's arithmetic.
    fn arithmetic(
        self,
        a: Scalar,
        b: Scalar,
        int: fn(i128, i128) -> i128,
        float: fn(f64, f64) -> f64,
        single: fn(f32, f32) -> f32,
    ) -> Scalar {
        match (self.cast(a), self.cast(b)) {
            // Both operands fit in 64 bits: an i128 holds the exact result, then wrapped.
            (Scalar::Int(a), Scalar::Int(b)) => self.cast(Scalar::Int(int(a, b))),
            #[allow(clippy::cast_possible_truncation)] // exact: both hold f32 or f16 values
            (Scalar::Float(a), Scalar::Float(b)) => match self {
                Self::Float64 => Scalar::Float(float(a, b)),
                Self::Float32 => Scalar::Float(single(a as f32, b as f32).into()),
                _ => Scalar::Float(f16::from_f32(single(a as f32, b as f32)).to_f64()),
            },
            // `cast` gives both the same kind.
            (a, _) => a,
        }
    }

    /// `a + b` in this type.
    #[must_use]
    pub fn add(self, a: Scalar, b: Scalar) -> Scalar {
        self.arithmetic(a, b, i128::wrapping_add, |a, b| a + b, |a, b| a + b)
    }

    /// `a - b` in this type.
    #[must_use]
    pub fn sub(self, a: Scalar, b: Scalar) -> Scalar {
        self.arithmetic(a, b, i128::wrapping_sub, |a, b| a - b, |a, b| a - b)
    }

    /// `a * b` in this type.
    #[must_use]
    pub fn mul(self, a: Scalar, b: Scalar) -> Scalar {
        self.arithmetic(a, b, i128::wrapping_mul, |a, b| a * b, |a, b| a * b)
    }

    /// `a / b` in this (float) type; for an integer type, in `float64`, as numpy's true
    /// division.
    #[must_use]
    pub fn div(self, a: Scalar, b: Scalar) -> Scalar {
        let float = if self.is_float() { self } else { Self::Float64 };
        float.arithmetic(a, b, |a, _| a, |a, b| a / b, |a, b| a / b)
    }

    /// `np.around(value)` in this (float) type: to the nearest integer, ties to even.
    #[must_use]
    pub fn round(self, value: Scalar) -> Scalar {
        match self.cast(value) {
            Scalar::Float(f) => Scalar::Float(f.round_ties_even()),
            int => int,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::NumpyType::*;
    use super::*;

    #[test]
    fn dtype_strings_parse_as_numpy_reads_them() {
        assert_eq!(NumpyType::parse("<f8"), Ok(Float64));
        assert_eq!(NumpyType::parse("|u1"), Ok(UInt8));
        assert_eq!(NumpyType::parse("u1"), Ok(UInt8));
        assert_eq!(NumpyType::parse("float32"), Ok(Float32));
        assert_eq!(NumpyType::parse("=i2"), Ok(Int16));
        assert_eq!(NumpyType::parse("d"), Ok(Float64));
        assert_eq!(NumpyType::parse(">u1"), Ok(UInt8));
        let foreign = if cfg!(target_endian = "little") {
            ">i4"
        } else {
            "<i4"
        };
        let err = NumpyType::parse(foreign).unwrap_err();
        assert!(err.contains("byte order"), "{err}");
        assert!(NumpyType::parse("<c8")
            .unwrap_err()
            .contains("not a numeric"));
        assert!(NumpyType::parse("|b1").is_err());
        for t in ALL {
            assert_eq!(NumpyType::parse(t.name()), Ok(t));
            assert_eq!(NumpyType::of(&t.data_type()), Some(t));
        }
    }

    /// `np.result_type` for every pair, as numpy 2.4 prints it.
    #[test]
    fn promotion_is_numpys() {
        let order = [
            Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64, Float16, Float32, Float64,
        ];
        let table = "\
            i1 i2 i4 i8 i2 i4 i8 f8 f2 f4 f8
            i2 i2 i4 i8 i2 i4 i8 f8 f4 f4 f8
            i4 i4 i4 i8 i4 i4 i8 f8 f8 f8 f8
            i8 i8 i8 i8 i8 i8 i8 f8 f8 f8 f8
            i2 i2 i4 i8 u1 u2 u4 u8 f2 f4 f8
            i4 i4 i4 i8 u2 u2 u4 u8 f4 f4 f8
            i8 i8 i8 i8 u4 u4 u4 u8 f8 f8 f8
            f8 f8 f8 f8 u8 u8 u8 u8 f8 f8 f8
            f2 f4 f8 f8 f2 f4 f8 f8 f2 f4 f8
            f4 f4 f8 f8 f4 f4 f8 f8 f4 f4 f8
            f8 f8 f8 f8 f8 f8 f8 f8 f8 f8 f8";
        for (a, row) in order.iter().zip(table.lines()) {
            for (b, want) in order.iter().zip(row.split_whitespace()) {
                assert_eq!(
                    NumpyType::promote(*a, *b),
                    NumpyType::parse(want).unwrap(),
                    "{a:?} {b:?}"
                );
            }
        }
    }

    #[test]
    fn casts_round_and_wrap_as_numpy() {
        assert_eq!(Int8.cast(Scalar::Int(300)), Scalar::Int(44));
        assert_eq!(UInt16.cast(Scalar::Int(-1)), Scalar::Int(65535));
        assert_eq!(Int16.cast(Scalar::Float(-129.7)), Scalar::Int(-129));
        assert_eq!(UInt8.cast(Scalar::Float(255.99)), Scalar::Int(255));
        // 2**24 + 1 rounds to even in float32, from an integer as from a float.
        assert_eq!(
            Float32.cast(Scalar::Int(16_777_217)),
            Scalar::Float(16_777_216.0)
        );
        // i64 -> f32 rounds once: 2**60 + 2**36 + 1 is above the midpoint between two f32s,
        // but through f64 it first rounds down onto the midpoint, then to even.
        let i = (1i128 << 60) + (1 << 36) + 1;
        assert_eq!(
            Float32.cast(Scalar::Int(i)),
            Scalar::Float(2f64.powi(60) + 2f64.powi(37))
        );
        assert_eq!(
            Float16.cast(Scalar::Float(0.1)),
            Scalar::Float(0.099_975_585_937_5)
        );
        assert_eq!(
            Float16.cast(Scalar::Int(70_000)),
            Scalar::Float(f64::INFINITY)
        );
    }

    #[test]
    fn arithmetic_rounds_in_its_type() {
        let (a, b) = (Scalar::Int(7), Scalar::Float(1000.0));
        let single = Float32.div(a, b);
        assert_eq!(single, Scalar::Float(f64::from(7f32 / 1000f32)));
        assert_ne!(single, Scalar::Float(7.0 / 1000.0));
        assert_eq!(Int16.div(a, Scalar::Int(2)), Scalar::Float(3.5));
        assert_eq!(
            Int8.add(Scalar::Int(100), Scalar::Int(100)),
            Scalar::Int(-56)
        );
        assert_eq!(
            UInt64.sub(Scalar::Int(0), Scalar::Int(1)),
            Scalar::Int(i128::from(u64::MAX))
        );
        // float16: computed in float32, rounded to float16 (2048 + 1 is a tie: stays 2048).
        assert_eq!(
            Float16.add(Scalar::Float(2048.0), Scalar::Float(1.0)),
            Scalar::Float(2048.0)
        );
        assert_eq!(Float64.round(Scalar::Float(2.5)), Scalar::Float(2.0));
        assert_eq!(Float64.round(Scalar::Float(-3.5)), Scalar::Float(-4.0));
    }

    #[test]
    fn elements_round_trip_through_bytes() {
        let mut out = [0u8; 8];
        for (t, v) in [
            (Int16, Scalar::Int(-300)),
            (UInt64, Scalar::Int(i128::from(u64::MAX))),
            (Float16, Scalar::Float(0.5)),
            (Float32, Scalar::Float(-1.25)),
            (Float64, Scalar::Float(1e300)),
        ] {
            let bytes = &mut out[..t.size()];
            t.store(v, bytes);
            assert_eq!(t.load(bytes), v, "{t:?}");
        }
    }
}
