//! numcodecs' `fixedscaleoffset` filter (v2 `fixedscaleoffset`, v3
//! `numcodecs.fixedscaleoffset`), decoded bit for bit as numcodecs decodes it:
//!
//! ```python
//! enc = buf.view(astype)
//! dec = (enc / scale) + offset   # scale, offset: the Python numbers of the JSON
//! dec = dec.astype(dtype)
//! ```
//!
//! numpy 2 (NEP 50) computes this in `float64` when `astype` is an integer type, and in
//! `astype` itself when it is a float (`scale` and `offset` first rounded to it), then casts
//! to `dtype`. zarrs' own `fixedscaleoffset` computes in `float32` from `float32` scale and
//! offset, and refuses `astype: "|u1"`; see [`super::install`] for how ours replaces it.
//!
//! Encoding is `round((x - offset) * scale)` in `float64` (in `dtype` when that is a float),
//! cast to `astype`: numcodecs' for float dtypes.

use serde::Deserialize;
use zarrs_codec::CodecError;
use zarrs_metadata::Configuration;
use zarrs_plugin::PluginCreateError;

use super::filter::{self, Filter};
use super::numpy::{NumpyType, Scalar};

/// The configuration numcodecs writes (`get_config`, less the `id`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixedScaleOffsetConfiguration {
    offset: serde_json::Number,
    scale: serde_json::Number,
    dtype: String,
    #[serde(default)]
    astype: Option<String>,
}

/// The `fixedscaleoffset` codec.
#[derive(Clone, Debug)]
pub struct FixedScaleOffsetCodec {
    /// As read: written back unchanged.
    configuration: Configuration,
    offset: Scalar,
    scale: Scalar,
    dtype: NumpyType,
    astype: NumpyType,
}

super::filter::impl_filter!(FixedScaleOffsetCodec,
    v3: "numcodecs.fixedscaleoffset", v2: "fixedscaleoffset"
);

impl FixedScaleOffsetCodec {
    /// Creates the codec from its configuration.
    ///
    /// # Errors
    /// [`PluginCreateError`] when a field is missing or unknown, or a dtype is not numeric or
    /// not in native byte order.
    pub fn new(configuration: Configuration) -> Result<Self, PluginCreateError> {
        let parsed: FixedScaleOffsetConfiguration = configuration.to_typed()?;
        let (dtype, astype) = filter::dtypes(Self::NAME, &parsed.dtype, parsed.astype.as_deref())?;
        Ok(Self {
            configuration,
            offset: Scalar::from_json(&parsed.offset),
            scale: Scalar::from_json(&parsed.scale),
            dtype,
            astype,
        })
    }

    /// The type numpy computes the decode in.
    fn decode_type(&self) -> NumpyType {
        if self.astype.is_float() {
            self.astype
        } else {
            NumpyType::Float64
        }
    }
}

impl Filter for FixedScaleOffsetCodec {
    const NAME: &'static str = "fixedscaleoffset";

    fn dtype(&self) -> NumpyType {
        self.dtype
    }

    fn astype(&self) -> NumpyType {
        self.astype
    }

    fn decode_elements(&self, encoded: &[u8]) -> Result<Vec<u8>, CodecError> {
        let t = self.decode_type();
        let (scale, offset) = (t.cast(self.scale), t.cast(self.offset));
        filter::map_elements(Self::NAME, encoded, self.astype, self.dtype, |x| {
            t.add(t.div(x, scale), offset)
        })
    }

    fn encode_elements(&self, decoded: &[u8]) -> Result<Vec<u8>, CodecError> {
        let t = if self.dtype.is_float() {
            self.dtype
        } else {
            NumpyType::Float64
        };
        filter::map_elements(Self::NAME, decoded, self.dtype, self.astype, |x| {
            t.round(t.mul(t.sub(x, self.offset), self.scale))
        })
    }
}

#[cfg(test)]
mod tests {
    use zarrs_codec::{ArrayToArrayCodecTraits, CodecMetadataOptions, CodecTraits};
    use zarrs_plugin::ZarrVersion;

    use super::*;

    fn codec(json: &str) -> FixedScaleOffsetCodec {
        FixedScaleOffsetCodec::new(serde_json::from_str(json).unwrap()).unwrap()
    }

    fn f64s(bytes: &[u8]) -> Vec<f64> {
        bytes
            .chunks_exact(8)
            .map(|c| f64::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// An integer `astype` decodes in float64: 7 / 1000 + 0.123 as Python computes it, not
    /// through float32 as zarrs' codec does.
    #[test]
    fn integer_astype_decodes_in_float64() {
        let c = codec(r#"{"offset": 0.123, "scale": 1000, "dtype": "<f8", "astype": "|u1"}"#);
        let decoded = f64s(&c.decode_elements(&[7, 0, 255]).unwrap());
        assert_eq!(
            decoded,
            vec![7.0 / 1000.0 + 0.123, 0.123, 255.0 / 1000.0 + 0.123]
        );
        let through_f32 = f64::from(7f32 / 1000f32 + 0.123f32);
        assert_ne!(decoded[0], through_f32);
        // float32 dtype: computed in float64, then rounded once.
        let c = codec(r#"{"offset": 0.123, "scale": 1000, "dtype": "<f4", "astype": "<i2"}"#);
        let decoded = c.decode_elements(&(-7i16).to_ne_bytes()).unwrap();
        #[allow(clippy::cast_possible_truncation)]
        let want = (-7.0 / 1000.0 + 0.123f64) as f32;
        assert_eq!(decoded, want.to_ne_bytes());
    }

    /// A float `astype` decodes in that float: scale and offset rounded to float32 first.
    #[test]
    fn float_astype_decodes_in_astype() {
        let c = codec(r#"{"offset": 0.123, "scale": 1000, "dtype": "<f8", "astype": "<f4"}"#);
        let decoded = f64s(&c.decode_elements(&7f32.to_ne_bytes()).unwrap());
        assert_eq!(decoded, vec![f64::from(7f32 / 1000f32 + 0.123f32)]);
    }

    #[test]
    fn encoding_rounds_half_to_even_and_decodes_back() {
        let c = codec(r#"{"offset": 1000, "scale": 10, "dtype": "<f8", "astype": "u1"}"#);
        let x: Vec<u8> = [1000.0, 1000.05, 1000.25, 1001.0]
            .iter()
            .flat_map(|v: &f64| v.to_ne_bytes())
            .collect();
        let encoded = c.encode_elements(&x).unwrap();
        assert_eq!(encoded, vec![0, 0, 2, 10]);
        assert_eq!(
            f64s(&c.decode_elements(&encoded).unwrap()),
            vec![1000.0, 1000.0, 1000.2, 1001.0]
        );
    }

    #[test]
    fn configurations_are_checked_and_kept() {
        let text = r#"{"offset": 0, "scale": 1.5, "dtype": "<f8"}"#;
        let c = codec(text);
        assert_eq!(c.astype, NumpyType::Float64);
        let kept = c
            .configuration(ZarrVersion::V3, &CodecMetadataOptions::default())
            .unwrap();
        assert_eq!(kept, serde_json::from_str::<Configuration>(text).unwrap());
        let bad = |json: &str| {
            FixedScaleOffsetCodec::new(serde_json::from_str(json).unwrap())
                .unwrap_err()
                .to_string()
        };
        let err = bad(r#"{"offset": 0, "scale": 1, "dtype": "<c16"}"#);
        assert!(
            err.contains("fixedscaleoffset") && err.contains("c16"),
            "{err}"
        );
        assert!(bad(r#"{"offset": 0, "dtype": "<f8"}"#).contains("scale"));
        let err = c
            .encoded_data_type(&zarrs::array::data_type::float32())
            .unwrap_err()
            .to_string();
        assert!(err.contains("float64") && err.contains("float32"), "{err}");
    }
}
