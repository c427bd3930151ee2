//! Object stores behind the engine: s3://, gs://, az:// (abfs://) and http(s):// through the
//! `object_store` crate, which signs, retries and speaks HTTP.
//!
//! [`RemoteStore`] is where an array lives (a URL and its options); [`Net`] is an engine's
//! connection to it: an async runtime of its own, started with the engine (after a fork) and
//! joined when it stops. Metadata is read at open with [`RemoteStore::read`], on the calling
//! thread, so opening an array leaves no thread behind.

mod client;
mod config;
mod fetch;
mod net;

pub use client::redact;
pub use config::{is_url, RemoteStore, Settings};
pub use fetch::{get, size, to_io, Expected, Fetched, Wanted, MAX_METADATA_BYTES};
pub use net::{on_this_thread, Link, Net};
