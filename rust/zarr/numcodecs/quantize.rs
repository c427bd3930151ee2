//! numcodecs' `quantize` filter (v2 `quantize`, v3 `numcodecs.quantize`). The rounding is all
//! in the encoding; decoding is numcodecs' cast:
//!
//! ```python
//! dec = buf.view(astype).astype(dtype)
//! ```
//!
//! Encoding is numcodecs' `np.around(scale * x) / scale` with `scale = 2**bits` for the
//! configured decimal `digits`, computed in `dtype`, cast to `astype`.

use serde::Deserialize;
use zarrs_codec::CodecError;
use zarrs_metadata::Configuration;
use zarrs_plugin::PluginCreateError;

use super::filter::{self, Filter};
use super::numpy::{NumpyType, Scalar};

/// The configuration numcodecs writes (`get_config`, less the `id`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantizeConfiguration {
    digits: i32,
    dtype: String,
    #[serde(default)]
    astype: Option<String>,
}

/// The `quantize` codec.
#[derive(Clone, Debug)]
pub struct QuantizeCodec {
    /// As read: written back unchanged.
    configuration: Configuration,
    digits: i32,
    dtype: NumpyType,
    astype: NumpyType,
}

super::filter::impl_filter!(QuantizeCodec,
    v3: "numcodecs.quantize", v2: "quantize"
);

impl QuantizeCodec {
    /// Creates the codec from its configuration.
    ///
    /// # Errors
    /// [`PluginCreateError`] when a field is missing or unknown, or a dtype is not a float in
    /// native byte order (numcodecs takes floats only).
    pub fn new(configuration: Configuration) -> Result<Self, PluginCreateError> {
        let parsed: QuantizeConfiguration = configuration.to_typed()?;
        let (dtype, astype) = filter::dtypes(Self::NAME, &parsed.dtype, parsed.astype.as_deref())?;
        if !dtype.is_float() || !astype.is_float() {
            return Err(PluginCreateError::Other(format!(
                "{}: only floating point types are supported, got dtype {} and astype {}",
                Self::NAME,
                dtype.name(),
                astype.name()
            )));
        }
        Ok(Self {
            configuration,
            digits: parsed.digits,
            dtype,
            astype,
        })
    }

    /// numcodecs' `scale`: `2**ceil(log2(10**-exp))`, `exp` the decimal exponent of
    /// `10**-digits` rounded away from zero.
    fn scale(&self) -> f64 {
        let precision = 10f64.powf(-f64::from(self.digits));
        let exp = precision.log10();
        let exp = if exp < 0.0 { exp.floor() } else { exp.ceil() };
        let bits = 10f64.powf(-exp).log2().ceil();
        2f64.powf(bits)
    }
}

impl Filter for QuantizeCodec {
    const NAME: &'static str = "quantize";

    fn dtype(&self) -> NumpyType {
        self.dtype
    }

    fn astype(&self) -> NumpyType {
        self.astype
    }

    fn decode_elements(&self, encoded: &[u8]) -> Result<Vec<u8>, CodecError> {
        filter::map_elements(Self::NAME, encoded, self.astype, self.dtype, |x| x)
    }

    fn encode_elements(&self, decoded: &[u8]) -> Result<Vec<u8>, CodecError> {
        let (t, scale) = (self.dtype, Scalar::Float(self.scale()));
        filter::map_elements(Self::NAME, decoded, self.dtype, self.astype, |x| {
            t.div(t.round(t.mul(scale, x)), scale)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(json: serde_json::Value) -> Result<QuantizeCodec, PluginCreateError> {
        QuantizeCodec::new(serde_json::from_value(json).unwrap())
    }

    #[test]
    fn encodes_numcodecs_example_and_decodes_by_casting() {
        // numcodecs' docstring: Quantize(digits=1, dtype='f8') of linspace(0, 1, 10).
        let c = codec(serde_json::json!({"digits": 1, "dtype": "<f8"})).unwrap();
        let x: Vec<u8> = (0..10)
            .flat_map(|i| (f64::from(i) / 9.0).to_ne_bytes())
            .collect();
        let encoded = c.encode_elements(&x).unwrap();
        let want = [
            0.0, 0.125, 0.25, 0.3125, 0.4375, 0.5625, 0.6875, 0.75, 0.875, 1.0,
        ];
        assert_eq!(encoded, want.map(f64::to_ne_bytes).concat());
        assert_eq!(c.decode_elements(&encoded).unwrap(), encoded);

        let c = codec(serde_json::json!({"digits": 2, "dtype": "<f4", "astype": "<f8"})).unwrap();
        assert_eq!(
            c.decode_elements(&0.1f64.to_ne_bytes()).unwrap(),
            0.1f32.to_ne_bytes()
        );
    }

    #[test]
    fn integer_types_are_refused() {
        let err = codec(serde_json::json!({"digits": 1, "dtype": "<i4"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("floating point"), "{err}");
    }
}
