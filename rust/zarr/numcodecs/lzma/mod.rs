//! numcodecs' `lzma` compressor (v2 `lzma`, v3 `numcodecs.lzma`), decoded as numcodecs
//! decodes it, with Python's `lzma.decompress(buf, format=format, filters=filters)`: by
//! liblzma (the library Python's `lzma` wraps), built from source here.
//!
//! - `format` 1 (`FORMAT_XZ`, numcodecs' default), 0 (`FORMAT_AUTO`: xz or lzma-alone),
//!   2 (`FORMAT_ALONE`), or 3 (`FORMAT_RAW`, which needs `filters`: LZMA1, LZMA2, delta and
//!   the branch filters, as Python's filter specifiers give them).
//! - Like Python, one stream after another is decoded until the input ends, and data after a
//!   stream that is not a stream is ignored; a stream that stops before its end marker is an
//!   error. Python refuses `filters` with any format but raw, and so does this.
//! - `check` and `preset` only matter to the encoder. Encoding writes xz only.

use liblzma::stream::{Action, Check, Status, Stream};
use serde::Deserialize;
use serde_json::{Map, Value};
use zarrs_codec::CodecError;
use zarrs_metadata::Configuration;
use zarrs_plugin::PluginCreateError;

use super::compressor::Compressor;
use crate::zarr::limits::MAX_CHUNK_BYTES;

mod filters;

use filters::PRESET_DEFAULT;

// Python's lzma constants.
const FORMAT_AUTO: i64 = 0;
const FORMAT_XZ: i64 = 1;
const FORMAT_ALONE: i64 = 2;
const FORMAT_RAW: i64 = 3;

/// The configuration numcodecs writes (`get_config`, less the `id`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LzmaConfiguration {
    #[serde(default = "default_format")]
    format: i64,
    #[serde(default = "default_check")]
    check: i64,
    #[serde(default)]
    preset: Option<u32>,
    #[serde(default)]
    filters: Option<Vec<Map<String, Value>>>,
}

fn default_format() -> i64 {
    FORMAT_XZ
}

fn default_check() -> i64 {
    -1
}

/// How the stored bytes are framed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Format {
    Auto,
    Xz,
    Alone,
    Raw(Vec<filters::Filter>),
}

/// The `lzma` codec.
#[derive(Clone, Debug)]
pub struct LzmaCodec {
    /// As read: written back unchanged.
    configuration: Configuration,
    format: Format,
    check: i64,
    preset: Option<u32>,
}

super::compressor::impl_compressor!(LzmaCodec, v3: "numcodecs.lzma", v2: "lzma");

fn refused(what: impl std::fmt::Display) -> PluginCreateError {
    PluginCreateError::Other(format!("lzma: {what}"))
}

impl LzmaCodec {
    /// Creates the codec from its configuration.
    ///
    /// # Errors
    /// [`PluginCreateError`] for an unknown field or format, `filters` with a format but raw
    /// (or none with raw), or a filter this codec does not decode.
    pub fn new(configuration: Configuration) -> Result<Self, PluginCreateError> {
        let parsed: LzmaConfiguration = configuration.to_typed()?;
        let format = match (parsed.format, &parsed.filters) {
            (FORMAT_RAW, Some(filters)) if !filters.is_empty() => Format::Raw(
                filters
                    .iter()
                    .map(filters::parse)
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            (FORMAT_RAW, _) => return Err(refused("format 3 (raw) needs filters")),
            (_, Some(_)) => {
                return Err(refused(
                    "filters are only read with format 3 (raw), as Python's lzma reads them",
                ))
            }
            (FORMAT_AUTO, None) => Format::Auto,
            (FORMAT_XZ, None) => Format::Xz,
            (FORMAT_ALONE, None) => Format::Alone,
            (other, None) => return Err(refused(format!("format {other} is not a format"))),
        };
        Ok(Self {
            configuration,
            format,
            check: parsed.check,
            preset: parsed.preset,
        })
    }

    /// A fresh decoder for one stream.
    fn decoder(&self) -> Result<Stream, String> {
        match &self.format {
            Format::Auto => Stream::new_auto_decoder(u64::MAX, 0),
            Format::Xz => Stream::new_stream_decoder(u64::MAX, 0),
            Format::Alone => Stream::new_lzma_decoder(u64::MAX),
            Format::Raw(filters) => {
                filters::chain(filters).and_then(|chain| Stream::new_raw_decoder(&chain))
            }
        }
        .map_err(|e| format!("lzma: {e}"))
    }
}

/// Runs `stream` over `input`, appending to `out` (at most `limit` bytes in all). Returns
/// whether the stream ended, and how much of `input` it took.
fn decode_stream(
    stream: &mut Stream,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: u64,
) -> Result<(bool, usize), String> {
    let start = stream.total_in();
    loop {
        if out.len() == out.capacity() {
            if out.len() as u64 >= limit {
                // One byte past the limit shows there is more.
                out.reserve(1);
            } else {
                let room = usize::try_from(limit).unwrap_or(usize::MAX) - out.len();
                out.reserve(room.min(out.len().max(1 << 16)));
            }
        }
        let (before_in, before_out) = (stream.total_in(), stream.total_out());
        let consumed = usize::try_from(before_in - start).unwrap_or(input.len());
        let status = stream
            .process_vec(&input[consumed..], out, Action::Run)
            .map_err(|e| format!("lzma: {e}"))?;
        if out.len() as u64 > limit {
            return Err(format!("lzma: decodes to more than {limit} bytes"));
        }
        let consumed = usize::try_from(stream.total_in() - start).unwrap_or(input.len());
        match status {
            Status::StreamEnd => return Ok((true, consumed)),
            _ if (stream.total_in(), stream.total_out()) == (before_in, before_out)
                && out.len() < out.capacity() =>
            {
                // No progress with room to write: the input ran out first.
                return Ok((false, consumed));
            }
            _ => {}
        }
    }
}

impl Compressor for LzmaCodec {
    fn compress(&self, decoded: &[u8]) -> Result<Vec<u8>, CodecError> {
        let unsupported = |what: &str| {
            CodecError::Other(format!(
                "lzma: encoding {what} is not supported (lsio_torch reads)"
            ))
        };
        if self.format != Format::Xz {
            return Err(unsupported("other than xz"));
        }
        let check = match self.check {
            -1 | 4 => Check::Crc64,
            0 => Check::None,
            1 => Check::Crc32,
            10 => Check::Sha256,
            _ => return Err(unsupported("with this check")),
        };
        let stream = Stream::new_easy_encoder(self.preset.unwrap_or(PRESET_DEFAULT), check)
            .map_err(|e| CodecError::Other(format!("lzma: {e}")))?;
        let mut encoder = liblzma::read::XzEncoder::new_stream(decoded, stream);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut encoder, &mut out)
            .map_err(|e| CodecError::Other(format!("lzma: {e}")))?;
        Ok(out)
    }

    /// Decodes `encoded`, which must hold `expected` bytes when that is known.
    ///
    /// # Errors
    /// liblzma's message for bad data or a failed check, or a stream that ends early or
    /// holds other than `expected` bytes.
    fn decompress(&self, encoded: &[u8], expected: Option<u64>) -> Result<Vec<u8>, String> {
        let limit = expected.unwrap_or(MAX_CHUNK_BYTES);
        let mut out = Vec::new();
        let mut rest = encoded;
        let mut first = true;
        loop {
            let mut stream = self.decoder()?;
            let (ended, consumed) = match decode_stream(&mut stream, rest, &mut out, limit) {
                Ok(done) => done,
                // As Python: what follows a stream and is not one is ignored.
                Err(_) if !first => break,
                Err(e) => return Err(e),
            };
            if !ended {
                return Err(
                    "lzma: compressed data ended before the end-of-stream marker was reached"
                        .into(),
                );
            }
            rest = &rest[consumed..];
            if rest.is_empty() {
                break;
            }
            first = false;
        }
        match expected {
            Some(n) if out.len() as u64 != n => {
                Err(format!("lzma: decoded {} bytes, expected {n}", out.len()))
            }
            _ => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use zarrs_codec::{BytesToBytesCodecTraits, CodecOptions};

    use super::*;

    fn codec(json: serde_json::Value) -> Result<LzmaCodec, PluginCreateError> {
        LzmaCodec::new(serde_json::from_value(json).unwrap())
    }

    fn xz(raw: &[u8]) -> Vec<u8> {
        let c = codec(serde_json::json!({})).unwrap();
        c.encode(Cow::Borrowed(raw), &CodecOptions::default())
            .unwrap()
            .into_owned()
    }

    #[test]
    fn decodes_xz_streams_one_after_another() {
        let raw: Vec<u8> = (0..40_000u32).map(|i| (i % 97) as u8).collect();
        let c =
            codec(serde_json::json!({"format": 1, "check": -1, "preset": null, "filters": null}))
                .unwrap();
        let one = xz(&raw);
        assert_eq!(c.decompress(&one, Some(raw.len() as u64)).unwrap(), raw);
        let mut two = one.clone();
        two.extend_from_slice(&xz(b"tail"));
        let mut want = raw.clone();
        want.extend_from_slice(b"tail");
        assert_eq!(c.decompress(&two, None).unwrap(), want);
        // After a stream, what liblzma finds is not one is ignored; what might begin one, but
        // ends first, is an error (as `lzma.decompress(..., format=1)`, both).
        let junk = |tail: &[u8]| [one.as_slice(), tail].concat();
        let long = junk(b"not an xz stream at all");
        assert_eq!(c.decompress(&long, None).unwrap(), raw);
        let err = c.decompress(&junk(b"not xz"), None).unwrap_err();
        assert!(err.contains("ended before"), "{err}");
        assert!(c.decompress(&junk(&[0; 4]), None).is_err());
        // Cut short, damaged, or of the wrong size: errors.
        let err = c.decompress(&one[..one.len() - 20], None).unwrap_err();
        assert!(err.contains("ended before"), "{err}");
        let mut damaged = one.clone();
        damaged[one.len() / 2] ^= 0x55;
        assert!(c.decompress(&damaged, None).is_err());
        let err = c.decompress(&one, Some(100)).unwrap_err();
        assert!(err.contains("more than 100"), "{err}");
        // auto reads xz too, and knows "not xz" from its first byte.
        let auto = codec(serde_json::json!({"format": 0})).unwrap();
        assert_eq!(auto.decompress(&one, None).unwrap(), raw);
        assert_eq!(auto.decompress(&junk(b"not xz"), None).unwrap(), raw);
    }

    #[test]
    fn decodes_raw_chains_of_python_filter_specifiers() {
        let raw: Vec<u8> = (0..10_000u32).flat_map(|i| (i * 3).to_le_bytes()).collect();
        let specs = serde_json::json!([{"id": 3, "dist": 4}, {"id": 33, "preset": 1}]);
        let c = codec(serde_json::json!({"format": 3, "filters": specs})).unwrap();
        let Format::Raw(filters) = &c.format else {
            panic!("{:?}", c.format)
        };
        let chain = filters::chain(filters).unwrap();
        let mut encoder = Stream::new_raw_encoder(&chain).unwrap();
        let mut encoded = Vec::with_capacity(raw.len() + 1024);
        let status = encoder
            .process_vec(&raw, &mut encoded, Action::Finish)
            .unwrap();
        assert_eq!(status, Status::StreamEnd);
        assert_eq!(c.decompress(&encoded, Some(raw.len() as u64)).unwrap(), raw);
    }

    #[test]
    fn configurations_python_refuses_are_refused() {
        let err = |json| codec(json).unwrap_err().to_string();
        assert!(err(serde_json::json!({"format": 1, "filters": [{"id": 33}]})).contains("raw"));
        assert!(err(serde_json::json!({"format": 3})).contains("needs filters"));
        assert!(err(serde_json::json!({"format": 7})).contains("format 7"));
        assert!(
            err(serde_json::json!({"format": 3, "filters": [{"id": 99}]}))
                .contains("not supported")
        );
        assert!(
            err(serde_json::json!({"format": 3, "filters": [{"id": 3, "size": 1}]}))
                .contains("size")
        );
        assert!(err(serde_json::json!({"level": 1})).contains("level"));
    }
}
