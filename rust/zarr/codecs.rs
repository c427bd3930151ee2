//! Codec chains: what turns the bytes of a stored chunk back into its elements.
//!
//! A chunk is encoded by an array→bytes codec (`bytes`, or `sharding_indexed` whose inner
//! chunks have chains of their own) followed by bytes→bytes codecs (`zstd`, `crc32c`).
//! Decoding runs the bytes→bytes codecs in reverse, then undoes the byte order.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::Path;

use zarrs_metadata::v3::MetadataV3;
use zarrs_metadata::Endianness;
use zarrs_metadata_ext::codec::bytes::BytesCodecConfiguration;
use zarrs_metadata_ext::codec::sharding::{ShardingCodecConfiguration, ShardingIndexLocation};

use super::dtype::DataType;
use crate::error::{Error, Result};

/// A bytes→bytes codec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BytesCodec {
    Zstd,
    Crc32c,
}

/// Where a shard keeps its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexLocation {
    Start,
    End,
}

/// The codecs of a chunk whose array→bytes codec is `bytes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecChain {
    /// Whether the stored byte order differs from this machine's.
    pub swap_bytes: bool,
    /// The bytes→bytes codecs in encoding order.
    pub bytes_codecs: Vec<BytesCodec>,
}

/// How a `sharding_indexed` codec lays out a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharding {
    /// The shape of an inner chunk, in elements.
    pub inner_shape: Vec<u64>,
    /// The codecs of each inner chunk.
    pub inner: CodecChain,
    /// The codecs of the index (`bytes` little-endian, usually followed by `crc32c`).
    pub index: CodecChain,
    pub index_location: IndexLocation,
}

/// How a stored chunk (or shard) is encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkEncoding {
    Plain(CodecChain),
    Sharded(Sharding),
}

impl ChunkEncoding {
    /// Builds the encoding from the `codecs` list of a `zarr.json`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for codecs this engine does not decode, [`Error::InvalidMetadata`]
    /// for configurations that do not parse.
    pub fn from_metadata(path: &Path, codecs: &[MetadataV3], dtype: DataType) -> Result<Self> {
        let Some((first, rest)) = codecs.split_first() else {
            return Err(Error::invalid_metadata(path, "empty codec list"));
        };
        match first.name() {
            "sharding_indexed" => {
                let config: ShardingCodecConfiguration = typed_config(path, first)?;
                let ShardingCodecConfiguration::V1(config) = config else {
                    return Err(Error::unsupported(path, "sharding_indexed configuration"));
                };
                if !rest.is_empty() {
                    return Err(Error::unsupported(
                        path,
                        "codecs after sharding_indexed (compress inner chunks instead)",
                    ));
                }
                if config.codecs.first().map(MetadataV3::name) == Some("sharding_indexed") {
                    return Err(Error::unsupported(path, "codec: nested sharding_indexed"));
                }
                let index_location = match config.index_location {
                    ShardingIndexLocation::Start => IndexLocation::Start,
                    ShardingIndexLocation::End => IndexLocation::End,
                    #[allow(unreachable_patterns)]
                    _ => return Err(Error::unsupported(path, "shard index location")),
                };
                Ok(Self::Sharded(Sharding {
                    inner_shape: config.chunk_shape.iter().map(|n| n.get()).collect(),
                    inner: CodecChain::from_metadata(path, &config.codecs, dtype)?,
                    index: CodecChain::from_metadata(path, &config.index_codecs, DataType::UInt64)?,
                    index_location,
                }))
            }
            _ => Ok(Self::Plain(CodecChain::from_metadata(path, codecs, dtype)?)),
        }
    }
}

fn typed_config<T: serde::de::DeserializeOwned>(path: &Path, codec: &MetadataV3) -> Result<T> {
    codec.to_typed_configuration::<T>().map_err(|e| {
        Error::invalid_metadata(
            path,
            format!("configuration of codec {}: {e}", codec.name()),
        )
    })
}

impl CodecChain {
    /// Builds a chain from a codec list that starts with `bytes`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for any other array→bytes or array→array codec, and for
    /// bytes→bytes codecs other than `zstd` and `crc32c`.
    pub fn from_metadata(path: &Path, codecs: &[MetadataV3], dtype: DataType) -> Result<Self> {
        let Some((first, rest)) = codecs.split_first() else {
            return Err(Error::invalid_metadata(path, "empty codec list"));
        };
        let swap_bytes = match first.name() {
            "bytes" => {
                let endian = if first.configuration_is_none_or_empty() {
                    None
                } else {
                    let BytesCodecConfiguration::V1(config) = typed_config(path, first)? else {
                        return Err(Error::unsupported(path, "bytes codec configuration"));
                    };
                    config.endian
                };
                match endian {
                    None if dtype.size() > 1 => {
                        return Err(Error::invalid_metadata(
                            path,
                            format!("codec bytes needs an endian for {}", dtype.name()),
                        ))
                    }
                    None => false,
                    Some(endian) => dtype.size() > 1 && endian != Endianness::native(),
                }
            }
            "sharding_indexed" => {
                return Err(Error::unsupported(path, "codec: nested sharding_indexed"))
            }
            other => return Err(Error::unsupported(path, format!("codec: {other}"))),
        };
        let bytes_codecs = rest
            .iter()
            .map(|codec| match codec.name() {
                "zstd" => Ok(BytesCodec::Zstd),
                "crc32c" => Ok(BytesCodec::Crc32c),
                other => Err(Error::unsupported(path, format!("codec: {other}"))),
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            swap_bytes,
            bytes_codecs,
        })
    }

    /// Decodes `encoded` into `out`, which must be exactly the decoded size.
    ///
    /// # Errors
    /// A message saying what did not decode: a bad checksum, a bad compressed frame, a size
    /// other than `out.len()`.
    pub fn decode_into(
        &self,
        encoded: &[u8],
        out: &mut [u8],
        dtype: DataType,
    ) -> Result<(), String> {
        let mut current: Cow<[u8]> = Cow::Borrowed(encoded);
        let mut written = false;
        for (position, codec) in self.bytes_codecs.iter().enumerate().rev() {
            match codec {
                BytesCodec::Crc32c => {
                    let n = current.len();
                    if n < 4 {
                        return Err(format!("crc32c: {n} bytes, shorter than a checksum"));
                    }
                    let stored = u32::from_le_bytes([
                        current[n - 4],
                        current[n - 3],
                        current[n - 2],
                        current[n - 1],
                    ]);
                    let actual = crc32c::crc32c(&current[..n - 4]);
                    if stored != actual {
                        return Err(format!(
                            "crc32c mismatch: stored {stored:#010x}, computed {actual:#010x}"
                        ));
                    }
                    current = match current {
                        Cow::Borrowed(b) => Cow::Borrowed(&b[..n - 4]),
                        Cow::Owned(mut v) => {
                            v.truncate(n - 4);
                            Cow::Owned(v)
                        }
                    };
                }
                BytesCodec::Zstd if position == 0 => {
                    // The outermost codec decompresses straight into the output.
                    let n = zstd_decompress_into(&current, out)?;
                    if n != out.len() {
                        return Err(format!("zstd: decoded {n} bytes, expected {}", out.len()));
                    }
                    written = true;
                }
                BytesCodec::Zstd => {
                    current =
                        Cow::Owned(zstd::decode_all(&*current).map_err(|e| format!("zstd: {e}"))?);
                }
            }
        }
        if !written {
            if current.len() != out.len() {
                return Err(format!(
                    "decoded {} bytes, expected {}",
                    current.len(),
                    out.len()
                ));
            }
            out.copy_from_slice(&current);
        }
        if self.swap_bytes {
            swap_in_place(out, dtype.swap_unit());
        }
        Ok(())
    }
}

thread_local! {
    // One decompression context per thread, reused for every chunk it decodes.
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn zstd_decompress_into(src: &[u8], out: &mut [u8]) -> Result<usize, String> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
        }
        let decompressor = slot.as_mut().ok_or("zstd: no context")?;
        decompressor
            .decompress_to_buffer(src, out)
            .map_err(|e| format!("zstd: {e}"))
    })
}

/// Reverses the byte order of every `unit`-sized group of bytes.
pub fn swap_in_place(bytes: &mut [u8], unit: usize) {
    if unit > 1 {
        for element in bytes.chunks_exact_mut(unit) {
            element.reverse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codecs(json: &str) -> Vec<MetadataV3> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn zstd_and_crc32c_round_trip() {
        let data: Vec<u8> = (0..4000u32)
            .flat_map(|i| (i as u16).to_le_bytes())
            .collect();
        let mut encoded = zstd::encode_all(&data[..], 3).unwrap();
        encoded.extend_from_slice(&crc32c::crc32c(&encoded).to_le_bytes());
        let chain = CodecChain::from_metadata(
            Path::new("a"),
            &codecs(r#"[{"name":"bytes","configuration":{"endian":"little"}},{"name":"zstd","configuration":{"level":3,"checksum":false}},{"name":"crc32c"}]"#),
            DataType::UInt16,
        )
        .unwrap();
        let mut out = vec![0u8; data.len()];
        chain
            .decode_into(&encoded, &mut out, DataType::UInt16)
            .unwrap();
        assert_eq!(out, data);

        let last = encoded.len() - 1;
        encoded[last] ^= 1;
        let err = chain
            .decode_into(&encoded, &mut out, DataType::UInt16)
            .unwrap_err();
        assert!(err.contains("crc32c mismatch"), "{err}");
    }

    #[test]
    fn wrong_size_is_an_error() {
        let chain = CodecChain {
            swap_bytes: false,
            bytes_codecs: vec![BytesCodec::Zstd],
        };
        let encoded = zstd::encode_all(&[1u8; 10][..], 1).unwrap();
        let mut out = vec![0u8; 12];
        assert!(chain
            .decode_into(&encoded, &mut out, DataType::UInt8)
            .is_err());
        assert!(chain
            .decode_into(b"not zstd", &mut out, DataType::UInt8)
            .is_err());
    }

    #[test]
    fn big_endian_is_swapped() {
        let chain = CodecChain::from_metadata(
            Path::new("a"),
            &codecs(r#"[{"name":"bytes","configuration":{"endian":"big"}}]"#),
            DataType::Int32,
        )
        .unwrap();
        let mut out = [0u8; 4];
        chain
            .decode_into(&7i32.to_be_bytes(), &mut out, DataType::Int32)
            .unwrap();
        assert_eq!(i32::from_ne_bytes(out), 7);
    }

    #[test]
    fn unknown_codecs_are_refused_by_name() {
        let err = ChunkEncoding::from_metadata(
            Path::new("arr"),
            &codecs(r#"[{"name":"bytes","configuration":{"endian":"little"}},{"name":"lzma"}]"#),
            DataType::Int16,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "arr: unsupported codec: lzma");
    }
}
