//! Element types: the fixed-size numeric Zarr data types and their fill values.

use zarrs_metadata::FillValueMetadata;

/// A fixed-size Zarr data type. The engine only moves bytes; the type decides the element
/// size, the byte-swap unit and how a fill value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Bool,
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
    Complex64,
    Complex128,
}

impl DataType {
    /// The Zarr v3 name, which is also the numpy name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
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
            Self::Complex64 => "complex64",
            Self::Complex128 => "complex128",
        }
    }

    /// Parses a Zarr v3 data type name; `None` for names this engine does not read.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "bool" => Self::Bool,
            "int8" => Self::Int8,
            "int16" => Self::Int16,
            "int32" => Self::Int32,
            "int64" => Self::Int64,
            "uint8" => Self::UInt8,
            "uint16" => Self::UInt16,
            "uint32" => Self::UInt32,
            "uint64" => Self::UInt64,
            "float16" => Self::Float16,
            "float32" => Self::Float32,
            "float64" => Self::Float64,
            "complex64" => Self::Complex64,
            "complex128" => Self::Complex128,
            _ => return None,
        })
    }

    /// Bytes per element.
    #[must_use]
    pub fn size(self) -> usize {
        match self {
            Self::Bool | Self::Int8 | Self::UInt8 => 1,
            Self::Int16 | Self::UInt16 | Self::Float16 => 2,
            Self::Int32 | Self::UInt32 | Self::Float32 => 4,
            Self::Int64 | Self::UInt64 | Self::Float64 | Self::Complex64 => 8,
            Self::Complex128 => 16,
        }
    }

    /// The unit a byte swap reverses: the element, or each half of a complex number.
    #[must_use]
    pub fn swap_unit(self) -> usize {
        match self {
            Self::Complex64 => 4,
            Self::Complex128 => 8,
            other => other.size(),
        }
    }

    /// The fill value as one element in native byte order, or `None` when `fill` is not a
    /// valid fill value for this type.
    #[must_use]
    pub fn fill_bytes(self, fill: &FillValueMetadata) -> Option<Vec<u8>> {
        // Raw byte arrays of the element's size are allowed for every type.
        if let Some(bytes) = fill.as_bytes() {
            if self != Self::Complex64 && self != Self::Complex128 {
                return (bytes.len() == self.size()).then_some(bytes);
            }
        }
        Some(match self {
            Self::Bool => vec![u8::from(fill.as_bool()?)],
            Self::Int8 => i8::try_from(fill.as_i64()?).ok()?.to_ne_bytes().to_vec(),
            Self::Int16 => i16::try_from(fill.as_i64()?).ok()?.to_ne_bytes().to_vec(),
            Self::Int32 => i32::try_from(fill.as_i64()?).ok()?.to_ne_bytes().to_vec(),
            Self::Int64 => fill.as_i64()?.to_ne_bytes().to_vec(),
            Self::UInt8 => u8::try_from(fill.as_u64()?).ok()?.to_ne_bytes().to_vec(),
            Self::UInt16 => u16::try_from(fill.as_u64()?).ok()?.to_ne_bytes().to_vec(),
            Self::UInt32 => u32::try_from(fill.as_u64()?).ok()?.to_ne_bytes().to_vec(),
            Self::UInt64 => fill.as_u64()?.to_ne_bytes().to_vec(),
            Self::Float16 => fill.as_f16()?.to_ne_bytes().to_vec(),
            Self::Float32 => fill.as_f32()?.to_ne_bytes().to_vec(),
            Self::Float64 => fill.as_f64()?.to_ne_bytes().to_vec(),
            Self::Complex64 => {
                let [re, im] = fill.as_array()? else {
                    return None;
                };
                [re.as_f32()?.to_ne_bytes(), im.as_f32()?.to_ne_bytes()].concat()
            }
            Self::Complex128 => {
                let [re, im] = fill.as_array()? else {
                    return None;
                };
                [re.as_f64()?.to_ne_bytes(), im.as_f64()?.to_ne_bytes()].concat()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(json: &str) -> FillValueMetadata {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn names_round_trip() {
        for name in ["bool", "int8", "uint16", "float32", "complex128"] {
            assert_eq!(DataType::from_name(name).unwrap().name(), name);
        }
        assert_eq!(DataType::from_name("string"), None);
    }

    #[test]
    fn fill_values_become_native_bytes() {
        assert_eq!(
            DataType::Int16.fill_bytes(&fill("-2")),
            Some((-2i16).to_ne_bytes().to_vec())
        );
        assert_eq!(DataType::UInt8.fill_bytes(&fill("300")), None);
        assert_eq!(
            DataType::Float32
                .fill_bytes(&fill("\"NaN\""))
                .map(|b| f32::from_ne_bytes(b.try_into().unwrap()).is_nan()),
            Some(true)
        );
        assert_eq!(
            DataType::Float64.fill_bytes(&fill("\"0x3ff0000000000000\"")),
            Some(1.0f64.to_ne_bytes().to_vec())
        );
        assert_eq!(DataType::Bool.fill_bytes(&fill("true")), Some(vec![1]));
        assert_eq!(
            DataType::Complex64
                .fill_bytes(&fill("[1.0, -1.0]"))
                .map(|b| b.len()),
            Some(8)
        );
    }
}
