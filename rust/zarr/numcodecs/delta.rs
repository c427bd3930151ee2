//! numcodecs' `delta` filter (v2 `delta`, v3 `numcodecs.delta`), decoded as numcodecs decodes
//! it:
//!
//! ```python
//! enc = buf.view(astype)
//! dec = np.empty_like(enc, dtype=dtype)
//! np.cumsum(enc, out=dec)
//! ```
//!
//! numpy accumulates in `np.result_type(astype, dtype)` (integers wrapping), casting each
//! running sum to `dtype` as it stores it. Encoding is `np.diff` in `dtype`, cast to
//! `astype`, after the first element as it is.

use serde::Deserialize;
use zarrs_codec::CodecError;
use zarrs_metadata::Configuration;
use zarrs_plugin::PluginCreateError;

use super::filter::{self, Filter};
use super::numpy::{NumpyType, Scalar};

/// The configuration numcodecs writes (`get_config`, less the `id`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeltaConfiguration {
    dtype: String,
    #[serde(default)]
    astype: Option<String>,
}

/// The `delta` codec.
#[derive(Clone, Debug)]
pub struct DeltaCodec {
    /// As read: written back unchanged.
    configuration: Configuration,
    dtype: NumpyType,
    astype: NumpyType,
}

// Each element is the sum of all before it: only whole chunks decode.
super::filter::impl_filter!(DeltaCodec,
    v3: "numcodecs.delta", v2: "delta", whole_chunks
);

impl DeltaCodec {
    /// Creates the codec from its configuration.
    ///
    /// # Errors
    /// [`PluginCreateError`] when a field is missing or unknown, or a dtype is not numeric or
    /// not in native byte order.
    pub fn new(configuration: Configuration) -> Result<Self, PluginCreateError> {
        let parsed: DeltaConfiguration = configuration.to_typed()?;
        let (dtype, astype) = filter::dtypes(Self::NAME, &parsed.dtype, parsed.astype.as_deref())?;
        Ok(Self {
            configuration,
            dtype,
            astype,
        })
    }
}

impl Filter for DeltaCodec {
    const NAME: &'static str = "delta";

    fn dtype(&self) -> NumpyType {
        self.dtype
    }

    fn astype(&self) -> NumpyType {
        self.astype
    }

    fn decode_elements(&self, encoded: &[u8]) -> Result<Vec<u8>, CodecError> {
        let sum_type = NumpyType::promote(self.astype, self.dtype);
        let mut sum: Option<Scalar> = None;
        filter::map_elements(Self::NAME, encoded, self.astype, self.dtype, |x| {
            let next = match sum {
                None => sum_type.cast(x),
                Some(sum) => sum_type.add(sum, x),
            };
            sum = Some(next);
            next
        })
    }

    fn encode_elements(&self, decoded: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut previous: Option<Scalar> = None;
        filter::map_elements(Self::NAME, decoded, self.dtype, self.astype, |x| {
            let difference = previous.map_or(x, |p| self.dtype.sub(x, p));
            previous = Some(x);
            difference
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(dtype: &str, astype: &str) -> DeltaCodec {
        DeltaCodec::new(
            serde_json::from_value(serde_json::json!({"dtype": dtype, "astype": astype})).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn decodes_numcodecs_example() {
        // numcodecs' docstring: Delta(dtype='i2', astype='i1') of arange(100, 120, 2).
        let c = codec("<i2", "i1");
        let encoded: Vec<u8> = [100i8, 2, 2, 2, 2, 2, 2, 2, 2, 2]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let want: Vec<u8> = (100i16..120)
            .step_by(2)
            .flat_map(i16::to_ne_bytes)
            .collect();
        assert_eq!(c.decode_elements(&encoded).unwrap(), want);
        assert_eq!(c.encode_elements(&want).unwrap(), encoded);
    }

    /// The running sum is kept in `np.result_type(astype, dtype)`, not in `dtype`: int32 sums
    /// stored as float32 round each sum, never the sum carried on.
    #[test]
    fn sums_in_the_promoted_type() {
        let c = codec("<f4", "<i4");
        let encoded: Vec<u8> = [16_777_216i32, 1, 1, 1]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let want: Vec<u8> = [16_777_216f32, 16_777_216.0, 16_777_218.0, 16_777_220.0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        assert_eq!(c.decode_elements(&encoded).unwrap(), want);
        // uint8 into int8: summed in int16, wrapped as stored.
        let c = codec("|i1", "|u1");
        assert_eq!(
            c.decode_elements(&[200, 200, 200]).unwrap(),
            [-56i8, -112, 88].map(i8::to_ne_bytes).concat()
        );
    }
}
