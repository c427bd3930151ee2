//! An opened Zarr array (v2 or v3): its metadata, validated by the zarrs crate, and where each
//! chunk lives, on disk or in an object store.

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zarrs::array::{Array, ArrayMetadata, ArrayToBytesCodecTraits, FillValue};
use zarrs_metadata_ext::chunk_grid::regular::RegularChunkGridConfiguration;

use super::codecs::{ChunkLayout, Sharding};
use super::dtype::DataType;
use super::leaf::LeafCodecs;
use super::limits;
use super::location::Location;
use super::metadata::{read_array_metadata, read_group_member, StoredMetadata};
use super::references::{Check, Entry, ReferenceSet, Target};
use super::region::c_order_index;
use crate::error::{Error, Result};

/// A Zarr array on local disk or in an object store.
#[derive(Debug)]
pub struct ZarrArray {
    /// The directory or URL, for messages.
    pub path: PathBuf,
    pub location: Location,
    /// 2 or 3.
    pub zarr_format: u8,
    pub shape: Vec<u64>,
    pub dtype: DataType,
    /// One element of the fill value, native byte order.
    pub fill_value: Vec<u8>,
    /// The shape of a stored chunk: a file (a shard, when sharded).
    pub chunk_shape: Vec<u64>,
    pub layout: ChunkLayout,
    pub dimension_names: Option<Vec<Option<String>>>,
    /// The bytes of one decoded leaf chunk, at most [`limits::MAX_CHUNK_BYTES`].
    leaf_bytes: usize,
    /// The validated metadata: data type, fill value, chunk keys.
    zarrs: Array<()>,
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
    /// Opens the array at `path` (a directory with `zarr.json` or `.zarray`).
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no array at `path`, [`Error::InvalidMetadata`] when
    /// its metadata does not parse, [`Error::Unsupported`] for features this engine lacks.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_at(Location::Local(path.as_ref().to_path_buf()))
    }

    /// Opens the array at `location`: a directory, or a prefix of an object store.
    ///
    /// # Errors
    /// As [`ZarrArray::open`]; [`Error::Io`] for metadata that cannot be fetched.
    pub fn open_at(location: Location) -> Result<Self> {
        let stored = read_array_metadata(&location)?;
        Self::from_metadata(location, stored)
    }

    /// Opens array `name` of the group at `group`, using its consolidated metadata if any.
    ///
    /// # Errors
    /// As [`ZarrArray::open_at`].
    pub fn open_in_group(group: &Location, name: &str) -> Result<Self> {
        let (location, stored) = read_group_member(group, name)?;
        Self::from_metadata(location, stored)
    }

    /// Builds the array from metadata read at `location`.
    ///
    /// # Errors
    /// As [`ZarrArray::open`].
    pub fn from_metadata(location: Location, stored: StoredMetadata) -> Result<Self> {
        let path = location.path();
        super::numcodecs::install();
        let zarr_format = match stored.metadata {
            ArrayMetadata::V2(_) => 2,
            ArrayMetadata::V3(_) => 3,
        };
        if let ArrayMetadata::V3(v3) = &stored.metadata {
            // zarrs reads these grids; the crop planner needs a regular one.
            if v3.chunk_grid.name() != "regular" {
                return Err(Error::unsupported(
                    &path,
                    format!("chunk grid {}", v3.chunk_grid.name()),
                ));
            }
            // The spec: a reader must refuse fields it does not understand unless they say
            // `"must_understand": false`.
            if let Some((name, _)) = v3
                .additional_fields
                .iter()
                .find(|(_, f)| f.must_understand())
            {
                return Err(Error::unsupported(
                    &path,
                    format!("metadata field {name:?} (must_understand)"),
                ));
            }
            if let Some(t) = v3.storage_transformers.first() {
                return Err(Error::unsupported(
                    &path,
                    format!("storage transformer {}", t.name()),
                ));
            }
        }
        let array = Array::new_with_metadata(Arc::new(()), "/", stored.metadata)
            .map_err(|e| Error::unsupported_because(&path, e.to_string()))?
            .to_v3()
            .map_err(|e| Error::unsupported_because(&path, e.to_string()))?;
        let ArrayMetadata::V3(v3) = array.metadata().clone() else {
            return Err(Error::invalid_metadata(&path, "not convertible to Zarr v3"));
        };
        let dtype = DataType::from_name(v3.data_type.name()).ok_or_else(|| {
            Error::unsupported(&path, format!("data type {}", v3.data_type.name()))
        })?;
        let grid: RegularChunkGridConfiguration = v3
            .chunk_grid
            .to_typed_configuration()
            .map_err(|e| Error::invalid_metadata(&path, format!("chunk_grid: {e}")))?;
        let chunk_shape: Vec<u64> = grid.chunk_shape.iter().map(|n| n.get()).collect();
        if chunk_shape.len() != v3.shape.len() {
            return Err(Error::invalid_metadata(
                &path,
                "chunk_shape and shape differ in length",
            ));
        }
        // Every size the engine multiplies out later, checked once here.
        limits::box_bytes(&path, "shape", &v3.shape, dtype.size())?;
        limits::box_bytes(&path, "chunk shape", &chunk_shape, dtype.size())?;
        let layout = ChunkLayout::from_metadata(&path, &v3.codecs, &chunk_shape, dtype.size())?;
        let fill_value = array.fill_value().as_ne_bytes().to_vec();
        if fill_value.len() != dtype.size() {
            return Err(Error::invalid_metadata(
                &path,
                format!("fill_value for {}", dtype.name()),
            ));
        }
        let dimension_names = v3.dimension_names.clone().or(stored.dimension_names);
        let mut opened = Self {
            path,
            location,
            zarr_format,
            shape: v3.shape,
            dtype,
            fill_value,
            chunk_shape,
            layout,
            dimension_names,
            leaf_bytes: 0,
            zarrs: array,
        };
        opened.leaf_bytes =
            limits::chunk_bytes(&opened.path, "chunk", opened.leaf_shape(), dtype.size())?;
        // The codecs' own checks of the chunks they are given (a filter's `dtype` that is not
        // the array's, say), made now rather than at the first chunk read.
        opened
            .leaf_codecs()
            .chain()
            .encoded_representation(
                &opened.leaf_shape_nonzero(),
                opened.codec_data_type(),
                opened.codec_fill_value(),
            )
            .map_err(|e| Error::unsupported_because(&opened.path, format!("codecs: {e}")))?;
        // An array by reference looks up its first chunk now: a parquet set reads its first
        // record file, which makes the object store of its targets known before any engine
        // starts (and a record file that cannot be read is an error at once).
        if opened.is_referenced() {
            opened.references_of(&[&vec![0; opened.ndim()]])?;
        }
        Ok(opened)
    }

    #[must_use]
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// The shape of the unit that is decoded: the inner chunk when sharded, else the chunk.
    #[must_use]
    pub fn leaf_shape(&self) -> &[u64] {
        match &self.layout {
            ChunkLayout::Whole(_) => &self.chunk_shape,
            ChunkLayout::Sharded(s) => &s.inner_shape,
        }
    }

    /// The bytes of one decoded leaf chunk (checked at open: at most
    /// [`limits::MAX_CHUNK_BYTES`]).
    #[must_use]
    pub fn leaf_bytes(&self) -> usize {
        self.leaf_bytes
    }

    /// [`ZarrArray::leaf_shape`] as the codecs take it.
    #[must_use]
    pub fn leaf_shape_nonzero(&self) -> Vec<NonZeroU64> {
        self.leaf_shape()
            .iter()
            .map(|&n| NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN))
            .collect()
    }

    /// The sharding layout, when the planner reads inside shards.
    #[must_use]
    pub fn sharding(&self) -> Option<&Sharding> {
        match &self.layout {
            ChunkLayout::Whole(_) => None,
            ChunkLayout::Sharded(s) => Some(s),
        }
    }

    /// The codecs that decode a leaf chunk.
    #[must_use]
    pub fn leaf_codecs(&self) -> &LeafCodecs {
        match &self.layout {
            ChunkLayout::Whole(c) => c,
            ChunkLayout::Sharded(s) => &s.inner,
        }
    }

    /// The data type as the codecs take it.
    #[must_use]
    pub fn codec_data_type(&self) -> &zarrs::array::DataType {
        self.zarrs.data_type()
    }

    /// The fill value as the codecs take it.
    #[must_use]
    pub fn codec_fill_value(&self) -> &FillValue {
        self.zarrs.fill_value()
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

    /// The file that holds the chunk (or shard) at grid coordinates `file` (for a remote
    /// array, its URL as a path; for one by reference, target number `file[0]`).
    #[must_use]
    pub fn file_path(&self, file: &[u64]) -> PathBuf {
        match self.target(file) {
            Some(target) => target.path(),
            None => self.path.join(self.file_key(file)),
        }
    }

    /// The key of the chunk (or shard) at grid coordinates `file`, relative to the array (for
    /// an array by reference, the target's key in the store of the set's targets).
    #[must_use]
    pub fn file_key(&self, file: &[u64]) -> String {
        match self.target(file) {
            Some(Target::Remote { key, .. }) => key.to_string(),
            Some(Target::Local(path)) => path.display().to_string(),
            None => self.zarrs.chunk_key(file).as_str().to_string(),
        }
    }

    /// The number of the store (among [`Location::stores`]) the chunk or shard at grid
    /// coordinates `file` is fetched from; `None` for a local file (a local array's, or a
    /// local target of an array by reference).
    #[must_use]
    pub fn store_of(&self, file: &[u64]) -> Option<usize> {
        match &self.location {
            Location::Local(_) => None,
            Location::Remote(_) => Some(0),
            Location::References(..) => match self.target(file)? {
                Target::Remote { store, .. } => Some(store),
                Target::Local(_) => None,
            },
        }
    }

    /// The reference set the array is in, and the prefix of its keys there.
    fn references(&self) -> Option<(&ReferenceSet, &str)> {
        match &self.location {
            Location::References(set, prefix) => Some((set, prefix)),
            _ => None,
        }
    }

    /// Whether the array's chunks are byte ranges of other files (a reference set's).
    #[must_use]
    pub fn is_referenced(&self) -> bool {
        self.references().is_some()
    }

    /// What the reference set holds for each leaf chunk of `leaves`: `None` for a chunk it
    /// does not list (the fill value), every one `None` for an array not by reference.
    ///
    /// # Errors
    /// As [`ReferenceSet::get`].
    pub fn references_of(&self, leaves: &[&[u64]]) -> Result<Vec<Option<Entry>>> {
        let Some((set, prefix)) = self.references() else {
            return Ok(vec![None; leaves.len()]);
        };
        let keyed: Vec<(String, &[u64])> = leaves
            .iter()
            .map(|leaf| (self.zarrs.chunk_key(leaf).as_str().to_string(), *leaf))
            .collect();
        set.chunks(prefix, &keyed)
    }

    /// Where a chunk by reference is: in its target, whose number stands for the file's
    /// coordinates (a chunk inline or not listed has no file).
    #[must_use]
    pub fn reference_location(entry: Option<&Entry>) -> ChunkLocation {
        let target = match entry {
            Some(Entry::Range { target, .. } | Entry::Whole { target }) => u64::from(*target),
            _ => u64::MAX,
        };
        ChunkLocation {
            file: vec![target],
            inner: 0,
        }
    }

    /// What the target at `file` (an array by reference's) must still be for its chunks to be
    /// read: the version it was referenced at, where the references say.
    #[must_use]
    pub fn target_check(&self, file: &[u64]) -> Option<Check> {
        let (set, _) = self.references()?;
        set.check(u32::try_from(*file.first()?).ok()?)
    }

    /// Target number `file[0]` of an array by reference.
    fn target(&self, file: &[u64]) -> Option<Target> {
        let (set, _) = self.references()?;
        set.target(u32::try_from(*file.first()?).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zarr::codecs::IndexLocation;
    use crate::zarr::metadata::StoredMetadata;
    use zarrs::array::ArrayMetadataV3;

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

    fn array(text: &str) -> Result<ZarrArray> {
        let v3: ArrayMetadataV3 = serde_json::from_str(text).unwrap();
        ZarrArray::from_metadata(
            Location::Local("/d/a.zarr".into()),
            StoredMetadata {
                metadata: ArrayMetadata::V3(v3),
                dimension_names: None,
            },
        )
    }

    #[test]
    fn sharded_array_locates_inner_chunks() {
        let a = array(SHARDED).unwrap();
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
        let sharding = a.sharding().unwrap();
        assert_eq!(sharding.index_location, IndexLocation::Start);
        assert_eq!(sharding.index_len, 4 * 16 + 4);
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
            let a = array(&text).unwrap();
            assert_eq!(a.file_path(&[1, 1]), PathBuf::from(expected), "{encoding}");
        }
    }

    #[test]
    fn unsupported_features_are_named() {
        let err = array(&SHARDED.replace("\"int16\"", "\"string\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("string"), "{err}");
        let err = array(&SHARDED.replace("\"regular\"", "\"rectilinear\"")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/d/a.zarr: unsupported chunk grid rectilinear"
        );
        let err = array(&SHARDED.replace("\"zstd\"", "\"lzma\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lzma"), "{err}");
    }
}
