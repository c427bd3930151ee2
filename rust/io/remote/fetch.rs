//! One object's bytes, or a range of them, fetched from a store: a missing object is `None`
//! (Zarr reads it as the fill value), every other failure an `io::Error` that says why.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResult, ObjectStore, ObjectStoreExt};
use tokio::sync::Semaphore;

use super::client::redact;

/// The most bytes a metadata object (`zarr.json`, `.zarray`, `.zmetadata`...) may hold: a
/// response declaring more is refused before its body is read.
pub const MAX_METADATA_BYTES: u64 = 64 << 20;

/// What an object must still be for a read to be served (none of it: any version): the
/// version a shard's index was read from, or the one a reference set referenced. A store
/// that finds it otherwise answers 412, an error; never other bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// Its ETag (`If-Match`).
    pub etag: Option<String>,
    /// Not modified after this time, in seconds since the epoch (`If-Unmodified-Since`).
    pub unmodified_since: Option<u64>,
}

impl Expected {
    /// No condition: whatever version the store holds.
    pub const ANY: Self = Self {
        etag: None,
        unmodified_since: None,
    };

    fn apply(&self, options: &mut GetOptions) {
        options.if_match.clone_from(&self.etag);
        options.if_unmodified_since = self
            .unmodified_since
            .and_then(|s| chrono::DateTime::from_timestamp(i64::try_from(s).ok()?, 0));
    }
}

/// Which bytes of an object a request wants. A response never holds more than a request
/// asked for: a whole object at most `at_most` bytes, a range its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    Whole {
        at_most: u64,
    },
    Range(Range<u64>),
    /// The last `n` bytes.
    Suffix(u64),
}

/// What a request brought back.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: Bytes,
    /// The whole object's size.
    pub size: u64,
    /// The object's version, as the store tags it.
    pub etag: Option<String>,
}

/// Fetches `wanted` of the object at `key`, holding one of `requests`' permits while the
/// request is open; ranges longer than `part_bytes` are fetched in parts, in parallel. Only
/// the `expected` version of the object is read (a shard replaced since its index was read is
/// an error, not a mix of two versions).
///
/// # Errors
/// An `io::Error` naming the cause: `PermissionDenied` for 401/403, `UnexpectedEof` for an
/// object shorter than the range, `Other` for a request that failed after its retries or an
/// object that changed.
pub async fn get(
    store: &dyn ObjectStore,
    key: &Path,
    wanted: Wanted,
    part_bytes: u64,
    requests: &Semaphore,
    expected: &Expected,
) -> std::io::Result<Option<Fetched>> {
    if let Wanted::Range(range) = &wanted {
        let len = range.end - range.start;
        if len > part_bytes.max(1) {
            let part_bytes = part_bytes.max(1);
            return get_parts(store, key, range.clone(), part_bytes, requests, expected).await;
        }
    }
    let _permit = requests.acquire().await.map_err(closed)?;
    get_one(store, key, wanted, expected).await
}

async fn get_parts(
    store: &dyn ObjectStore,
    key: &Path,
    range: Range<u64>,
    part_bytes: u64,
    requests: &Semaphore,
    expected: &Expected,
) -> std::io::Result<Option<Fetched>> {
    let parts = (range.start..range.end)
        .step_by(part_bytes as usize)
        .map(|start| start..(start + part_bytes).min(range.end));
    let fetched = futures::future::try_join_all(parts.map(|part| async move {
        let _permit = requests.acquire().await.map_err(closed)?;
        get_one(store, key, Wanted::Range(part), expected).await
    }))
    .await?;
    let mut joined = BytesMut::with_capacity((range.end - range.start) as usize);
    let (mut size, mut etag) = (0, None);
    for part in fetched {
        let Some(part) = part else {
            return Ok(None);
        };
        joined.extend_from_slice(&part.bytes);
        (size, etag) = (part.size, part.etag);
    }
    Ok(Some(Fetched {
        bytes: joined.freeze(),
        size,
        etag,
    }))
}

async fn get_one(
    store: &dyn ObjectStore,
    key: &Path,
    wanted: Wanted,
    expected: &Expected,
) -> std::io::Result<Option<Fetched>> {
    let range = match &wanted {
        Wanted::Whole { .. } => None,
        Wanted::Range(r) if r.is_empty() => {
            // An empty range is refused by stores; the object's existence still matters.
            let meta = match store.head(key).await {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(to_io(e)),
            };
            return Ok(Some(Fetched {
                bytes: Bytes::new(),
                size: meta.size,
                etag: meta.e_tag,
            }));
        }
        Wanted::Range(r) => Some(GetRange::Bounded(r.clone())),
        Wanted::Suffix(n) => Some(GetRange::Suffix(*n)),
    };
    let mut options = GetOptions {
        range,
        ..GetOptions::default()
    };
    expected.apply(&mut options);
    let result = match store.get_opts(key, options).await {
        Ok(result) => result,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(to_io(e)),
    };
    let (size, etag) = (result.meta.size, result.meta.e_tag.clone());
    let at_most = match &wanted {
        Wanted::Whole { at_most } => *at_most,
        Wanted::Range(r) => r.end - r.start,
        Wanted::Suffix(n) => *n,
    };
    let bytes = capped_body(result, at_most).await?;
    let expected = match &wanted {
        Wanted::Whole { .. } => size,
        Wanted::Range(r) => r.end - r.start,
        Wanted::Suffix(n) => (*n).min(size),
    };
    if bytes.len() as u64 != expected {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "{} bytes came back of the {expected} asked for (the object holds {size})",
                bytes.len()
            ),
        ));
    }
    Ok(Some(Fetched { bytes, size, etag }))
}

/// The body of `result`, read as a stream into memory of the size it declares, refused
/// before reading when it declares more than `at_most` bytes, and cut off (an error) as soon
/// as more than that arrive: a server that lies about a length costs at most `at_most` bytes.
async fn capped_body(result: GetResult, at_most: u64) -> std::io::Result<Bytes> {
    let declared = result.range.end.saturating_sub(result.range.start);
    let too_long = |what: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the server {what}, more than the {at_most} asked for; nothing was kept"),
        )
    };
    if declared > at_most {
        return Err(too_long(format!("declared a body of {declared} bytes")));
    }
    // `declared <= at_most`, which is a leaf's or a range's size: it fits in memory.
    let mut body = BytesMut::with_capacity(declared as usize);
    let mut stream = result.into_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(to_io)?;
        if (body.len() + piece.len()) as u64 > at_most {
            return Err(too_long(format!(
                "sent {} bytes and more",
                body.len() + piece.len()
            )));
        }
        body.extend_from_slice(&piece);
    }
    Ok(body.freeze())
}

/// The object's size, from a HEAD request; `None` when it does not exist.
///
/// # Errors
/// As [`get`].
pub async fn size(
    store: &dyn ObjectStore,
    key: &Path,
    requests: &Semaphore,
) -> std::io::Result<Option<u64>> {
    let _permit = requests.acquire().await.map_err(closed)?;
    match store.head(key).await {
        Ok(meta) => Ok(Some(meta.size)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(to_io(e)),
    }
}

fn closed(_: tokio::sync::AcquireError) -> std::io::Error {
    std::io::Error::other("the engine stopped")
}

/// An `object_store` error as an `io::Error` of the matching kind, its message kept (it
/// names the URL, the status and the retries made).
#[must_use]
pub fn to_io(e: object_store::Error) -> std::io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => std::io::ErrorKind::PermissionDenied,
        object_store::Error::Precondition { .. } => {
            return std::io::Error::other(format!(
                "the object was replaced (its ETag or modification time changed) after its \
                 shard index was read (the next iteration reads the new one) or after it was \
                 referenced: {}",
                full_message(&e)
            ));
        }
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, full_message(&e))
}

/// An error's message followed by those of its sources, each once, with the values of URL
/// queries and passwords hidden ([`redact`]).
fn full_message(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    redact(&message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_store_errors_keep_their_kind_and_their_message() {
        let missing = object_store::Error::NotFound {
            path: "a.zarr/c/0".into(),
            source: "404 Not Found".into(),
        };
        let e = to_io(missing);
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("a.zarr/c/0"), "{e}");
        let denied = object_store::Error::PermissionDenied {
            path: "a.zarr/c/0".into(),
            source: "403 Forbidden".into(),
        };
        let e = to_io(denied);
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("403 Forbidden"), "{e}");
        let replaced = object_store::Error::Precondition {
            path: "a.zarr/c/0".into(),
            source: "412".into(),
        };
        let e = to_io(replaced).to_string();
        assert!(
            e.contains("replaced (its ETag or modification time changed) after its shard index"),
            "{e}"
        );
    }

    #[test]
    fn a_message_names_each_source_once() {
        let inner = std::io::Error::other("connection reset");
        let outer = std::io::Error::other(Wrapped(inner));
        assert_eq!(full_message(&outer), "GET failed: connection reset");
    }

    /// An error whose message does not repeat its source's.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("GET failed")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
