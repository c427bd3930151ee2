//! An opened Zarr array: its metadata, and where each chunk lives on disk.

use std::path::{Path, PathBuf};

use zarrs_metadata::v3::ArrayMetadataV3;
use zarrs_metadata::ChunkKeySeparator;
use zarrs_metadata_ext::chunk_grid::regular::RegularChunkGridConfiguration;
use zarrs_metadata_ext::chunk_key_encoding::default::DefaultChunkKeyEncodingConfiguration;
use zarrs_metadata_ext::chunk_key_encoding::v2::V2ChunkKeyEncodingConfiguration;

use super::codecs::{ChunkEncoding, CodecChain, Sharding};
use super::dtype::DataType;
use super::region::c_order_index;
use crate::error::{Error, Result};

/// How chunk grid coordinates become file names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkKeys {
    /// `c/1/2` (or `c.1.2`).
    Default { separator: char },
    /// `1.2` (or `1/2`); `0` for a zero-dimensional array.
    V2 { separator: char },
}

/// A Zarr v3 array on local disk.
#[derive(Clone, Debug)]
pub struct ZarrArray {
    pub path: PathBuf,
    pub shape: Vec<u64>,
    pub dtype: DataType,
    /// One element of the fill value, native byte order.
    pub fill_value: Vec<u8>,
    /// The shape of a stored chunk: a file (a shard, when sharded).
    pub chunk_shape: Vec<u64>,
    pub keys: ChunkKeys,
    pub encoding: ChunkEncoding,
    pub dimension_names: Option<Vec<Option<String>>>,
}

/// Where a leaf chunk (the unit that is decoded) is stored.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkLocation {
    /// The grid coordinates of the file: the chunk, or the shard that holds it.
    pub file: Vec<u64>,
    /// The inner chunk's C-order position in its shard (0 when not sharded).
    pub inner: u64,
}

impl ZarrArray {
    /// Reads `path/zarr.json`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no array at `path`, [`Error::InvalidMetadata`] when
    /// its metadata does not parse, [`Error::Unsupported`] for features this engine lacks.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let json_path = path.join("zarr.json");
        let text = match std::fs::read_to_string(&json_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if path.join(".zarray").exists() {
                    return Err(Error::unsupported(
                        &path,
                        "Zarr format 2 (.zarray); only Zarr v3 arrays are read",
                    ));
                }
                let what = if path.exists() {
                    "no zarr.json in this directory"
                } else {
                    "path does not exist"
                };
                return Err(Error::NotFound {
                    path,
                    what: what.into(),
                });
            }
            Err(e) => return Err(Error::io(&json_path, "reading metadata", e)),
        };
        Self::from_json(path, &text)
    }

    /// Parses the text of a `zarr.json` for the array at `path`.
    ///
    /// # Errors
    /// As [`ZarrArray::open`].
    pub fn from_json(path: PathBuf, text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid_metadata(&path, format!("zarr.json: {e}")))?;
        if value.get("node_type").and_then(|v| v.as_str()) == Some("group") {
            return Err(Error::InvalidArgument(format!(
                "{}: is a Zarr group, not an array; name one of its arrays",
                path.display()
            )));
        }
        let meta: ArrayMetadataV3 = serde_json::from_value(value)
            .map_err(|e| Error::invalid_metadata(&path, format!("zarr.json: {e}")))?;

        if let Some(field) = meta
            .additional_fields
            .iter()
            .find(|(_, f)| f.must_understand())
        {
            return Err(Error::unsupported(
                &path,
                format!("metadata field {:?}", field.0),
            ));
        }
        if let Some(t) = meta.storage_transformers.first() {
            return Err(Error::unsupported(
                &path,
                format!("storage transformer {}", t.name()),
            ));
        }
        let dtype = DataType::from_name(meta.data_type.name()).ok_or_else(|| {
            Error::unsupported(&path, format!("data type {}", meta.data_type.name()))
        })?;
        let fill_value = dtype.fill_bytes(&meta.fill_value).ok_or_else(|| {
            Error::invalid_metadata(
                &path,
                format!("fill_value {} for {}", meta.fill_value, dtype.name()),
            )
        })?;

        if meta.chunk_grid.name() != "regular" {
            return Err(Error::unsupported(
                &path,
                format!("chunk grid {}", meta.chunk_grid.name()),
            ));
        }
        let grid: RegularChunkGridConfiguration = meta
            .chunk_grid
            .to_typed_configuration()
            .map_err(|e| Error::invalid_metadata(&path, format!("chunk_grid: {e}")))?;
        let chunk_shape: Vec<u64> = grid.chunk_shape.iter().map(|n| n.get()).collect();
        if chunk_shape.len() != meta.shape.len() {
            return Err(Error::invalid_metadata(
                &path,
                "chunk_shape and shape differ in length",
            ));
        }

        let encoding_meta = &meta.chunk_key_encoding;
        // The configuration's separator, or the spec's default when it is left out.
        let separator = |default: ChunkKeySeparator| -> Result<char> {
            if encoding_meta.configuration_is_none_or_empty() {
                return Ok(separator_char(default));
            }
            let parse_error = |e: &dyn std::fmt::Display| {
                Error::invalid_metadata(&path, format!("chunk_key_encoding: {e}"))
            };
            Ok(separator_char(if encoding_meta.name() == "v2" {
                encoding_meta
                    .to_typed_configuration::<V2ChunkKeyEncodingConfiguration>()
                    .map_err(|e| parse_error(&e))?
                    .separator
            } else {
                encoding_meta
                    .to_typed_configuration::<DefaultChunkKeyEncodingConfiguration>()
                    .map_err(|e| parse_error(&e))?
                    .separator
            }))
        };
        let keys = match encoding_meta.name() {
            "default" => ChunkKeys::Default {
                separator: separator(ChunkKeySeparator::Slash)?,
            },
            "v2" => ChunkKeys::V2 {
                separator: separator(ChunkKeySeparator::Dot)?,
            },
            other => {
                return Err(Error::unsupported(
                    &path,
                    format!("chunk key encoding {other}"),
                ))
            }
        };

        let encoding = ChunkEncoding::from_metadata(&path, &meta.codecs, dtype)?;
        if let ChunkEncoding::Sharded(sharding) = &encoding {
            let divides = sharding.inner_shape.len() == chunk_shape.len()
                && sharding
                    .inner_shape
                    .iter()
                    .zip(&chunk_shape)
                    .all(|(i, s)| s % i == 0);
            if !divides {
                return Err(Error::invalid_metadata(
                    &path,
                    format!(
                        "inner chunk shape {:?} does not divide the shard shape {chunk_shape:?}",
                        sharding.inner_shape
                    ),
                ));
            }
        }

        Ok(Self {
            path,
            shape: meta.shape,
            dtype,
            fill_value,
            chunk_shape,
            keys,
            encoding,
            dimension_names: meta.dimension_names,
        })
    }

    #[must_use]
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// The shape of the unit that is decoded: the inner chunk when sharded, else the chunk.
    #[must_use]
    pub fn leaf_shape(&self) -> &[u64] {
        match &self.encoding {
            ChunkEncoding::Plain(_) => &self.chunk_shape,
            ChunkEncoding::Sharded(s) => &s.inner_shape,
        }
    }

    /// The sharding layout, when the array is sharded.
    #[must_use]
    pub fn sharding(&self) -> Option<&Sharding> {
        match &self.encoding {
            ChunkEncoding::Plain(_) => None,
            ChunkEncoding::Sharded(s) => Some(s),
        }
    }

    /// The codecs that decode a leaf chunk.
    #[must_use]
    pub fn leaf_codecs(&self) -> &CodecChain {
        match &self.encoding {
            ChunkEncoding::Plain(c) => c,
            ChunkEncoding::Sharded(s) => &s.inner,
        }
    }

    /// Inner chunks per shard along each dimension (all ones when not sharded).
    #[must_use]
    pub fn leaves_per_file(&self) -> Vec<u64> {
        self.chunk_shape
            .iter()
            .zip(self.leaf_shape())
            .map(|(c, l)| c / l)
            .collect()
    }

    /// Where the leaf chunk at grid coordinates `leaf` is stored.
    #[must_use]
    pub fn locate(&self, leaf: &[u64]) -> ChunkLocation {
        let per_file = self.leaves_per_file();
        let file: Vec<u64> = leaf.iter().zip(&per_file).map(|(l, p)| l / p).collect();
        let within: Vec<u64> = leaf.iter().zip(&per_file).map(|(l, p)| l % p).collect();
        ChunkLocation {
            file,
            inner: c_order_index(&within, &per_file),
        }
    }

    /// The file that holds the chunk (or shard) at grid coordinates `file`.
    #[must_use]
    pub fn file_path(&self, file: &[u64]) -> PathBuf {
        let join = |separator: char| {
            file.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(&separator.to_string())
        };
        let key = match self.keys {
            ChunkKeys::Default { separator } => {
                if file.is_empty() {
                    "c".to_string()
                } else {
                    format!("c{separator}{}", join(separator))
                }
            }
            ChunkKeys::V2 { separator } => {
                if file.is_empty() {
                    "0".to_string()
                } else {
                    join(separator)
                }
            }
        };
        self.path.join(key)
    }
}

fn separator_char(separator: ChunkKeySeparator) -> char {
    match separator {
        ChunkKeySeparator::Slash => '/',
        ChunkKeySeparator::Dot => '.',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARDED: &str = r#"{
        "zarr_format": 3, "node_type": "array", "shape": [10, 20], "data_type": "int16",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 10]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": -1,
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [2, 5],
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd", "configuration": {"level": 0, "checksum": false}}],
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            "index_location": "start"}}],
        "attributes": {}, "dimension_names": ["y", "x"]
    }"#;

    #[test]
    fn sharded_array_locates_inner_chunks() {
        let a = ZarrArray::from_json("/d/a.zarr".into(), SHARDED).unwrap();
        assert_eq!(a.leaf_shape(), &[2, 5]);
        assert_eq!(a.leaves_per_file(), vec![2, 2]);
        assert_eq!(a.fill_value, (-1i16).to_ne_bytes().to_vec());
        let loc = a.locate(&[3, 3]);
        assert_eq!(
            loc,
            ChunkLocation {
                file: vec![1, 1],
                inner: 3
            }
        );
        assert_eq!(a.file_path(&loc.file), PathBuf::from("/d/a.zarr/c/1/1"));
        assert_eq!(
            a.sharding().unwrap().index_location,
            super::super::codecs::IndexLocation::Start
        );
        assert_eq!(
            a.dimension_names,
            Some(vec![Some("y".into()), Some("x".into())])
        );
    }

    #[test]
    fn chunk_keys_follow_the_encoding_and_its_default_separator() {
        let cases = [
            (r#"{"name": "default"}"#, "/d/a.zarr/c/1/1"),
            (
                r#"{"name": "default", "configuration": {"separator": "."}}"#,
                "/d/a.zarr/c.1.1",
            ),
            (r#"{"name": "v2"}"#, "/d/a.zarr/1.1"),
            (
                r#"{"name": "v2", "configuration": {"separator": "/"}}"#,
                "/d/a.zarr/1/1",
            ),
        ];
        for (encoding, expected) in cases {
            let text = SHARDED.replace(
                r#"{"name": "default", "configuration": {"separator": "/"}}"#,
                encoding,
            );
            let a = ZarrArray::from_json("/d/a.zarr".into(), &text).unwrap();
            assert_eq!(a.file_path(&[1, 1]), PathBuf::from(expected), "{encoding}");
        }
    }

    #[test]
    fn unsupported_features_are_named() {
        let text = SHARDED.replace("\"int16\"", "\"string\"");
        let err = ZarrArray::from_json("a".into(), &text).unwrap_err();
        assert_eq!(err.to_string(), "a: unsupported data type string");
        let text = SHARDED.replace("\"regular\"", "\"rectilinear\"");
        let err = ZarrArray::from_json("a".into(), &text).unwrap_err();
        assert_eq!(err.to_string(), "a: unsupported chunk grid rectilinear");
    }
}
