//! The sizes checked when an array is opened: every product of extents and byte sizes the
//! engine later relies on, and the largest chunk it decodes.
//!
//! Metadata is input like any other: `"chunks": [4, 2**64-1, 32]` or a shape whose element
//! count wraps around must be refused here, with the array's name, and never reach an
//! allocation or an unchecked multiplication.

use std::path::Path;

use crate::error::{Error, Result};

/// The largest decoded chunk (an inner chunk, when sharded) or shard index the engine
/// decodes: 2 GiB. A chunk is decoded whole into memory of its own; larger ones are refused
/// when the array is opened.
pub const MAX_CHUNK_BYTES: u64 = 1 << 31;

/// The most bytes an encoded chunk of `decoded` bytes is fetched with: no codec lsio_torch
/// reads grows a chunk past twice its size plus 1 MiB of headers, so a server that answers
/// with more is refused, not buffered.
#[must_use]
pub fn max_encoded_bytes(decoded: usize) -> u64 {
    (decoded as u64).saturating_mul(2).saturating_add(1 << 20)
}

/// The product of `extents`, or `None` when it does not fit in 64 bits.
#[must_use]
pub fn checked_product(extents: &[u64]) -> Option<u64> {
    extents.iter().try_fold(1u64, |n, &e| n.checked_mul(e))
}

/// The bytes of a box of `extents` elements of `element_size` bytes.
///
/// # Errors
/// [`Error::InvalidMetadata`] naming `what` when the size does not fit in 64 bits (nor in
/// this machine's address space).
pub fn box_bytes(path: &Path, what: &str, extents: &[u64], element_size: usize) -> Result<u64> {
    checked_product(extents)
        .and_then(|n| n.checked_mul(element_size as u64))
        .filter(|&n| usize::try_from(n).is_ok())
        .ok_or_else(|| {
            Error::invalid_metadata(
                path,
                format!("{what} {extents:?} of {element_size}-byte elements: its size overflows 64 bits"),
            )
        })
}

/// The bytes of one decoded chunk (or shard index) of `extents`, checked against
/// [`MAX_CHUNK_BYTES`].
///
/// # Errors
/// As [`box_bytes`]; [`Error::Unsupported`] for a chunk larger than the limit.
pub fn chunk_bytes(path: &Path, what: &str, extents: &[u64], element_size: usize) -> Result<usize> {
    let bytes = box_bytes(path, what, extents, element_size)?;
    if bytes > MAX_CHUNK_BYTES {
        return Err(Error::unsupported_because(
            path,
            format!(
                "{what} {extents:?} holds {bytes} bytes decoded, more than the {MAX_CHUNK_BYTES} \
                 bytes (2 GiB) lsio_torch decodes at once"
            ),
        ));
    }
    // Fits: MAX_CHUNK_BYTES is below usize::MAX on every 64-bit target.
    Ok(bytes as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_that_wrap_are_refused() {
        let p = Path::new("/a.zarr");
        assert_eq!(checked_product(&[]), Some(1));
        assert_eq!(checked_product(&[1 << 32, 1 << 31]), Some(1 << 63));
        assert_eq!(checked_product(&[1 << 32, 1 << 32]), None);
        assert_eq!(box_bytes(p, "shape", &[3, 4], 8).unwrap(), 96);
        let err = box_bytes(p, "shape", &[1 << 32, 1 << 31], 2).unwrap_err();
        assert!(err.to_string().contains("overflows 64 bits"), "{err}");
        assert!(box_bytes(p, "chunk", &[4, u64::MAX, 32], 1).is_err());
    }

    #[test]
    fn chunks_past_the_limit_are_refused_at_the_limit_exactly() {
        let p = Path::new("/a.zarr");
        assert_eq!(
            chunk_bytes(p, "chunk", &[1 << 15, 1 << 15], 2).unwrap(),
            1 << 31
        );
        let err = chunk_bytes(p, "chunk", &[1 << 15, (1 << 15) + 1], 2).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("2 GiB"), "{err}");
        let err = chunk_bytes(p, "chunk", &[1 << 20; 3], 1).unwrap_err();
        assert!(err.to_string().contains("/a.zarr"), "{err}");
    }
}
