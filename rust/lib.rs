//! lsio_torch: random N-dimensional crops from Zarr arrays on local disk, read with io_uring,
//! decoded on rayon, written straight into the caller's (pinned) batch buffer.
//!
//! The pipeline, one direction: [`sampler`] → [`plan`] → [`io`] → decode ([`zarr::codecs`])
//! → the batch buffer, driven by [`pipeline::Engine`]. `python.rs` is the only file that
//! knows about Python.

pub mod batch_memory;
pub mod bench;
pub mod cache;
pub mod cast;
pub mod dlpack;
pub mod error;
pub mod io;
pub mod pipeline;
pub mod plan;
pub mod pool;
pub mod sampler;
pub mod window;
pub mod zarr;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
