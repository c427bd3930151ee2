//! Decoding one leaf chunk into a buffer the caller owns: a slot of the output batch, or the
//! decode thread's scratch.
//!
//! The common chains, native-endian `bytes` optionally followed by `zstd` or `blosc` and/or
//! `crc32c`, decode straight into that buffer: zstd with its bulk decompressor (one context
//! per thread), blosc with `blosc_decompress_ctx` on the calling thread. Every other chain
//! goes through zarrs, whose decoded chunk is then copied in. The fast path exists because
//! zarrs allocates per chunk: on 128x128 int16 chunks it is 30% slower (`benches/decode.rs`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::num::NonZeroU64;
use std::sync::Arc;

use zarrs::array::{ArrayToBytesCodecTraits, CodecChain, CodecOptions, DataType, FillValue};
use zarrs_metadata::v3::MetadataV3;
use zarrs_metadata::Endianness;
use zarrs_metadata_ext::codec::bytes::BytesCodecConfiguration;

/// The chains decoded without zarrs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FastPath {
    /// `bytes`, then optionally a compressor, then optionally `crc32c`.
    Plain {
        compressor: Compressor,
        crc32c: bool,
    },
}

/// The compressors the fast path decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compressor {
    None,
    Zstd,
    Blosc,
}

/// The codecs of a leaf chunk.
#[derive(Debug)]
pub struct LeafCodecs {
    chain: Arc<CodecChain>,
    fast: Option<FastPath>,
}

thread_local! {
    // One zstd context per decode thread, reused for every chunk it decodes.
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

impl LeafCodecs {
    /// Wraps `chain`, built from `codecs`, for elements of `element_size` bytes.
    #[must_use]
    pub fn new(chain: CodecChain, codecs: &[MetadataV3], element_size: usize) -> Self {
        Self {
            chain: Arc::new(chain),
            fast: fast_path(codecs, element_size),
        }
    }

    /// The zarrs chain (also what the shard index and nested shards decode with).
    #[must_use]
    pub fn chain(&self) -> &CodecChain {
        &self.chain
    }

    /// Whether this chain decodes without zarrs.
    #[must_use]
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// Whether a chunk is stored as its elements themselves (native `bytes`, nothing else), so
    /// its bytes can be read straight to where they belong.
    #[must_use]
    pub fn is_stored_as_is(&self) -> bool {
        self.fast
            == Some(FastPath::Plain {
                compressor: Compressor::None,
                crc32c: false,
            })
    }

    /// Decodes `encoded` into `out`, exactly one chunk of `shape` in native-endian C order.
    ///
    /// # Errors
    /// The codec's message: a bad frame or checksum, or a decoded size other than `out.len()`.
    pub fn decode_into(
        &self,
        encoded: &[u8],
        out: &mut [u8],
        shape: &[NonZeroU64],
        data_type: &DataType,
        fill_value: &FillValue,
    ) -> Result<(), String> {
        let Some(FastPath::Plain { compressor, crc32c }) = self.fast else {
            return copy_exact(
                &self.zarrs_decode(encoded, shape, data_type, fill_value)?,
                out,
            );
        };
        let payload = if crc32c {
            verify_crc32c(encoded)?
        } else {
            encoded
        };
        match compressor {
            Compressor::None => copy_exact(payload, out),
            Compressor::Zstd => zstd_into(payload, out),
            Compressor::Blosc => blosc_into(payload, out),
        }
    }
}

/// Decompresses a zstd frame of exactly `out.len()` bytes into `out`.
fn zstd_into(payload: &[u8], out: &mut [u8]) -> Result<(), String> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
        }
        let decompressor = slot.as_mut().ok_or("zstd: no context")?;
        let n = decompressor
            .decompress_to_buffer(payload, out)
            .map_err(|e| format!("zstd: {e}"))?;
        if n == out.len() {
            Ok(())
        } else {
            Err(format!("zstd: decoded {n} bytes, expected {}", out.len()))
        }
    })
}

/// The most bytes one zstd block decodes to.
const ZSTD_BLOCK: usize = 128 << 10;

thread_local! {
    // One streaming zstd context per decode thread, for frames decoded part way.
    static ZSTD_STREAM: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { RefCell::new(None) };
}

/// Decodes the first `out.len()` bytes of a zstd frame into `out` and stops: the blocks after
/// are not decompressed. The frame's block structure is walked whole first, so a cut or
/// misframed payload is an error even where its first bytes would decode.
fn zstd_prefix_into(payload: &[u8], out: &mut [u8]) -> Result<(), String> {
    use zstd::zstd_safe::{find_frame_compressed_size, get_error_name, InBuffer, OutBuffer};
    match find_frame_compressed_size(payload) {
        Ok(n) if n == payload.len() => {}
        Ok(n) => return Err(format!("zstd: a frame of {n} bytes in {}", payload.len())),
        Err(code) => return Err(format!("zstd: {}", get_error_name(code))),
    }
    let needed = out.len();
    ZSTD_STREAM.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dctx = slot.get_or_insert_with(zstd::zstd_safe::DCtx::create);
        dctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(|code| format!("zstd: {}", get_error_name(code)))?;
        let mut input = InBuffer::around(payload);
        let mut output = OutBuffer::around(out);
        while output.pos() < needed {
            let before = (input.pos, output.pos());
            let hint = dctx
                .decompress_stream(&mut output, &mut input)
                .map_err(|code| format!("zstd: {}", get_error_name(code)))?;
            if output.pos() < needed && (hint == 0 || (input.pos, output.pos()) == before) {
                return Err(format!(
                    "zstd: the frame ended after {} bytes, expected at least {needed}",
                    output.pos()
                ));
            }
        }
        Ok(())
    })
}

/// Decompresses a blosc frame of exactly `out.len()` bytes into `out`, on this thread.
fn blosc_into(payload: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut nbytes = 0usize;
    // SAFETY: blosc reads the header within `payload.len()` bytes and writes `nbytes` only.
    let valid = unsafe {
        blosc_src::blosc_cbuffer_validate(payload.as_ptr().cast(), payload.len(), &raw mut nbytes)
    };
    if valid != 0 {
        return Err("blosc: not a valid blosc frame".into());
    }
    if nbytes != out.len() {
        return Err(format!(
            "blosc: holds {nbytes} bytes, expected {}",
            out.len()
        ));
    }
    // SAFETY: the frame was validated above (its compressed size is `payload.len()`, so blosc
    // reads within `payload`); blosc writes at most `out.len()` bytes into `out`.
    let n = unsafe {
        blosc_src::blosc_decompress_ctx(
            payload.as_ptr().cast(),
            out.as_mut_ptr().cast(),
            out.len(),
            1,
        )
    };
    if usize::try_from(n).ok() == Some(out.len()) {
        Ok(())
    } else {
        Err(format!("blosc: decompression failed ({n})"))
    }
}

impl LeafCodecs {
    /// Decodes `encoded` and hands the chunk's elements to `then`: the stored bytes themselves
    /// when they are not compressed, from `scratch` on the other fast paths, straight from
    /// zarrs' decoded buffer otherwise (no copy into scratch). The caller needs the chunk's
    /// first `needed` bytes only: a zstd frame whose blocks past them can be left undecoded
    /// is decoded that far, and `then` gets just those bytes.
    ///
    /// # Errors
    /// The codec's message, or `then`'s error.
    // The chunk's shape, type and fill are the codecs' own arguments, passed through as is.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_then<E>(
        &self,
        encoded: &[u8],
        scratch: &mut Vec<u8>,
        shape: &[NonZeroU64],
        data_type: &DataType,
        fill_value: &FillValue,
        needed: usize,
        then: impl FnOnce(&[u8]) -> Result<(), E>,
        on_error: impl FnOnce(String) -> E,
    ) -> Result<(), E> {
        let len = shape.iter().map(|n| n.get() as usize).product::<usize>()
            * data_type.fixed_size().unwrap_or(1);
        if let Some(FastPath::Plain {
            compressor: Compressor::None,
            crc32c,
        }) = self.fast
        {
            // Stored as they are: the elements are the payload itself, no copy.
            let checked = if crc32c {
                verify_crc32c(encoded)
            } else {
                Ok(encoded)
            };
            let payload = match checked {
                Ok(payload) => payload,
                Err(reason) => return Err(on_error(reason)),
            };
            if payload.len() != len {
                return Err(on_error(format!(
                    "chunk holds {} bytes, expected {len}",
                    payload.len()
                )));
            }
            return then(payload);
        }
        if let Some(FastPath::Plain {
            compressor: Compressor::Zstd,
            crc32c,
        }) = self.fast
        {
            // A zstd block holds at most 128 KiB: stop where at least one is left undecoded.
            if needed + ZSTD_BLOCK <= len {
                scratch.resize(len, 0);
                let prefix = &mut scratch[..needed];
                let decoded = if crc32c {
                    verify_crc32c(encoded)
                } else {
                    Ok(encoded)
                }
                .and_then(|payload| zstd_prefix_into(payload, prefix));
                decoded.map_err(on_error)?;
                return then(prefix);
            }
        }
        if self.fast.is_some() {
            scratch.resize(len, 0);
            self.decode_into(encoded, scratch, shape, data_type, fill_value)
                .map_err(on_error)?;
            return then(scratch);
        }
        let decoded = match self.zarrs_decode(encoded, shape, data_type, fill_value) {
            Ok(decoded) if decoded.len() == len => decoded,
            Ok(decoded) => {
                return Err(on_error(format!(
                    "decoded {} bytes, expected {len}",
                    decoded.len()
                )))
            }
            Err(e) => return Err(on_error(e)),
        };
        then(&decoded)
    }
}

impl LeafCodecs {
    /// Decodes through the zarrs chain, into a buffer zarrs allocates.
    fn zarrs_decode<'a>(
        &self,
        encoded: &'a [u8],
        shape: &[NonZeroU64],
        data_type: &DataType,
        fill_value: &FillValue,
    ) -> Result<Cow<'a, [u8]>, String> {
        self.chain
            .decode(
                Cow::Borrowed(encoded),
                shape,
                data_type,
                fill_value,
                &CodecOptions::default(),
            )
            .map_err(|e| e.to_string())?
            .into_fixed()
            .map_err(|e| e.to_string())
    }
}

fn copy_exact(decoded: &[u8], out: &mut [u8]) -> Result<(), String> {
    if decoded.len() != out.len() {
        return Err(format!(
            "decoded {} bytes, expected {}",
            decoded.len(),
            out.len()
        ));
    }
    out.copy_from_slice(decoded);
    Ok(())
}

/// Checks the trailing crc32c of `encoded` and returns what it covers.
fn verify_crc32c(encoded: &[u8]) -> Result<&[u8], String> {
    let Some(split) = encoded.len().checked_sub(4) else {
        return Err(format!(
            "crc32c: {} bytes, shorter than a checksum",
            encoded.len()
        ));
    };
    let (payload, stored) = encoded.split_at(split);
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    let actual = crc32c::crc32c(payload);
    if stored == actual {
        Ok(payload)
    } else {
        Err(format!(
            "crc32c mismatch: stored {stored:#010x}, computed {actual:#010x}"
        ))
    }
}

/// Recognises `bytes` (native order) [+ `zstd` | `blosc`] [+ `crc32c`].
fn fast_path(codecs: &[MetadataV3], element_size: usize) -> Option<FastPath> {
    let (first, mut rest) = codecs.split_first()?;
    if first.name() != "bytes" {
        return None;
    }
    let endian = if first.configuration_is_none_or_empty() {
        None
    } else {
        match first
            .to_typed_configuration::<BytesCodecConfiguration>()
            .ok()?
        {
            BytesCodecConfiguration::V1(config) => config.endian,
            #[allow(unreachable_patterns)]
            _ => return None,
        }
    };
    if element_size > 1 && endian != Some(Endianness::native()) {
        return None;
    }
    let compressor = match rest.first().map(MetadataV3::name) {
        Some("zstd") => Compressor::Zstd,
        Some("blosc") => Compressor::Blosc,
        _ => Compressor::None,
    };
    if compressor != Compressor::None {
        rest = &rest[1..];
    }
    let crc32c = rest.first().is_some_and(|c| c.name() == "crc32c");
    if crc32c {
        rest = &rest[1..];
    }
    rest.is_empty()
        .then_some(FastPath::Plain { compressor, crc32c })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(json: &str, element_size: usize) -> LeafCodecs {
        let codecs: Vec<MetadataV3> = serde_json::from_str(json).unwrap();
        LeafCodecs::new(
            CodecChain::from_metadata(&codecs).unwrap(),
            &codecs,
            element_size,
        )
    }

    const BYTES_LE: &str = r#"{"name":"bytes","configuration":{"endian":"little"}}"#;

    #[test]
    fn recognises_the_fast_chains_only() {
        assert!(leaf(&format!("[{BYTES_LE}]"), 2).is_fast());
        assert!(leaf(&format!(r#"[{BYTES_LE},{{"name":"zstd","configuration":{{"level":3,"checksum":true}}}},{{"name":"crc32c"}}]"#), 4).is_fast());
        assert!(leaf(r#"[{"name":"bytes"}]"#, 1).is_fast());
        assert!(!leaf(r#"[{"name":"bytes","configuration":{"endian":"big"}}]"#, 2).is_fast());
        assert!(!leaf(
            &format!(r#"[{BYTES_LE},{{"name":"gzip","configuration":{{"level":1}}}}]"#),
            2
        )
        .is_fast());
        assert!(!leaf(
            &format!(r#"[{{"name":"transpose","configuration":{{"order":[1,0]}}}},{BYTES_LE}]"#),
            2
        )
        .is_fast());
    }

    /// The fast path and zarrs decode the same bytes to the same elements, and fail alike.
    #[test]
    fn fast_path_agrees_with_zarrs() {
        let json = format!(
            r#"[{BYTES_LE},{{"name":"zstd","configuration":{{"level":3,"checksum":false}}}},{{"name":"crc32c"}}]"#
        );
        let codecs: Vec<MetadataV3> = serde_json::from_str(&json).unwrap();
        let fast = leaf(&json, 2);
        let raw: Vec<u8> = (0..64 * 32u32)
            .flat_map(|i| ((i * 37 % 1000) as u16).to_le_bytes())
            .collect();
        let mut encoded = zstd::bulk::compress(&raw, 3).unwrap();
        encoded.extend_from_slice(&crc32c::crc32c(&encoded).to_le_bytes());
        let shape = [NonZeroU64::new(64).unwrap(), NonZeroU64::new(32).unwrap()];
        let (dt, fill) = (
            zarrs::array::data_type::uint16(),
            FillValue::new(vec![0, 0]),
        );
        let mut out = vec![0u8; raw.len()];
        fast.decode_into(&encoded, &mut out, &shape, &dt, &fill)
            .unwrap();
        assert_eq!(out, raw);
        let slow = LeafCodecs {
            chain: Arc::new(CodecChain::from_metadata(&codecs).unwrap()),
            fast: None,
        };
        let mut out2 = vec![0u8; raw.len()];
        slow.decode_into(&encoded, &mut out2, &shape, &dt, &fill)
            .unwrap();
        assert_eq!(out2, raw);

        let last = encoded.len() - 1;
        encoded[last] ^= 1;
        let err = fast
            .decode_into(&encoded, &mut out, &shape, &dt, &fill)
            .unwrap_err();
        assert!(err.contains("crc32c mismatch"), "{err}");
        assert!(slow
            .decode_into(&encoded, &mut out2, &shape, &dt, &fill)
            .is_err());
        let mut short = vec![0u8; raw.len() - 2];
        encoded[last] ^= 1;
        assert!(fast
            .decode_into(&encoded, &mut short, &shape, &dt, &fill)
            .is_err());
    }

    /// Blosc frames written by zarrs (lz4 with byte shuffle) decode on the fast path to the
    /// same elements; a damaged frame is an error, not a crash.
    #[test]
    fn blosc_fast_path_agrees_with_zarrs() {
        let json = format!(
            r#"[{BYTES_LE},{{"name":"blosc","configuration":{{"cname":"lz4","clevel":5,"shuffle":"shuffle","typesize":4,"blocksize":0}}}}]"#
        );
        let fast = leaf(&json, 4);
        assert!(fast.is_fast());
        let raw: Vec<u8> = (0..64 * 32u32)
            .flat_map(|i| ((i as f32).sin() * 100.0).to_le_bytes())
            .collect();
        let shape = [NonZeroU64::new(64).unwrap(), NonZeroU64::new(32).unwrap()];
        let (dt, fill) = (
            zarrs::array::data_type::float32(),
            FillValue::new(vec![0; 4]),
        );
        let mut encoded = fast
            .chain()
            .encode(
                zarrs::array::ArrayBytes::new_flen(raw.clone()),
                &shape,
                &dt,
                &fill,
                &CodecOptions::default(),
            )
            .unwrap()
            .to_vec();
        assert!(encoded.len() < raw.len());
        let mut out = vec![0u8; raw.len()];
        fast.decode_into(&encoded, &mut out, &shape, &dt, &fill)
            .unwrap();
        assert_eq!(out, raw);

        let mut short = vec![0u8; raw.len() - 4];
        let err = fast
            .decode_into(&encoded, &mut short, &shape, &dt, &fill)
            .unwrap_err();
        assert!(err.contains("expected"), "{err}");
        encoded.truncate(encoded.len() - 7);
        let err = fast
            .decode_into(&encoded, &mut out, &shape, &dt, &fill)
            .unwrap_err();
        assert!(err.contains("blosc"), "{err}");
    }

    /// A zstd chunk whose first bytes are all the caller needs is decoded that far and no
    /// further; a frame cut short is still an error, though its first blocks are whole.
    #[test]
    fn zstd_chunks_decode_only_the_prefix_needed() {
        let json = format!(
            r#"[{BYTES_LE},{{"name":"zstd","configuration":{{"level":3,"checksum":false}}}}]"#
        );
        let fast = leaf(&json, 2);
        let (rows, cols) = (512u64, 1024u64);
        let raw: Vec<u8> = (0..rows * cols)
            .flat_map(|i| ((i * 37 % 1000 + i / 3000) as u16).to_le_bytes())
            .collect();
        let encoded = zstd::bulk::compress(&raw, 3).unwrap();
        let shape = [
            NonZeroU64::new(rows).unwrap(),
            NonZeroU64::new(cols).unwrap(),
        ];
        let (dt, fill) = (
            zarrs::array::data_type::uint16(),
            FillValue::new(vec![0, 0]),
        );
        let decode = |encoded: &[u8], needed: usize| {
            let mut scratch = Vec::new();
            let mut got = Vec::new();
            fast.decode_then(
                encoded,
                &mut scratch,
                &shape,
                &dt,
                &fill,
                needed,
                |chunk| {
                    got = chunk.to_vec();
                    Ok::<(), String>(())
                },
                |e| e,
            )
            .map(|()| got)
        };
        // A third of the chunk: just that prefix, as decoded in full.
        let third = raw.len() / 3;
        assert_eq!(decode(&encoded, third).unwrap(), &raw[..third]);
        // Less than a block short of the whole: decoded whole.
        assert_eq!(decode(&encoded, raw.len() - 100).unwrap(), raw);
        // Cut at the end: an error, not the prefix.
        let err = decode(&encoded[..encoded.len() - 10], third).unwrap_err();
        assert!(err.contains("zstd"), "{err}");
        // Trailing bytes after the frame: an error too.
        let mut padded = encoded.clone();
        padded.extend_from_slice(&[0; 9]);
        assert!(decode(&padded, third).is_err());
    }
}
