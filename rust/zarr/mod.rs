//! Zarr: metadata, codecs, shard indexes, and the region math of chunk grids.

pub mod array;
pub mod codecs;
pub mod dtype;
pub mod icechunk;
pub mod icechunk_session;
pub mod json;
pub mod leaf;
pub mod limits;
pub mod location;
pub mod metadata;
pub mod numcodecs;
mod reference_parquet;
pub mod references;
pub mod region;
pub mod shard_index;

pub use array::ZarrArray;
pub use dtype::DataType;
pub use region::Region;
