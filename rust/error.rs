//! The one error type of the engine. `python.rs` maps each variant to a Python exception once.

use std::path::PathBuf;

/// Everything that can go wrong between opening an array and delivering a batch.
///
/// Messages name what was being done, the file (and chunk) involved, and the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path the user named does not exist (an array, its metadata).
    #[error("{path}: no Zarr array here ({what})")]
    NotFound { path: PathBuf, what: String },

    /// Metadata that does not parse or contradicts itself.
    #[error("{path}: invalid Zarr metadata: {reason}")]
    InvalidMetadata { path: PathBuf, reason: String },

    /// A Zarr feature this engine does not read (codec, dtype, chunk grid, ...); `detail`
    /// names it.
    #[error("{path}: {detail}")]
    Unsupported { path: PathBuf, detail: String },

    /// A bad argument: crop shape, thread count, buffer size, ...
    #[error("{0}")]
    InvalidArgument(String),

    /// A crop that does not fit inside the array at the requested origin.
    #[error("{0}")]
    OutOfBounds(String),

    /// The operating system refused a read or an open.
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// A chunk or shard whose bytes do not decode: wrong size, bad checksum, bad frame.
    #[error("{path}: corrupt {what}: {reason}")]
    Corrupt {
        path: PathBuf,
        what: String,
        reason: String,
    },

    /// The engine was shut down or one of its threads died; the message says which.
    #[error("engine stopped: {0}")]
    Stopped(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            path: path.into(),
            what: what.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::Corrupt {
            path: path.into(),
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_metadata(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::InvalidMetadata {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An unsupported feature, named by `feature` ("codec lzma").
    pub(crate) fn unsupported(path: impl Into<PathBuf>, feature: impl std::fmt::Display) -> Self {
        Self::Unsupported {
            path: path.into(),
            detail: format!("unsupported {feature}"),
        }
    }

    /// An unsupported feature, explained by a message that already says so.
    pub(crate) fn unsupported_because(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
    ) -> Self {
        Self::Unsupported {
            path: path.into(),
            detail: message.into(),
        }
    }
}
