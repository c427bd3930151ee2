//! The engine's stages, each a file, in the order a batch flows through them; each imports
//! only the stages before it:
//!
//! ```text
//! shared ─▶ files ─▶ targets ─▶ referenced_shards ─▶ planned ─▶ groups ─▶ decode ─▶ batch ─▶ io_stage ─▶ remote ─▶ engine
//! context   open     where a     inner chunks of      a batch     reads     bytes →   local    reads on    object    threads,
//!           files,   chunk's     shards listed by     planned to  grouped   the       reads,   I/O threads store     submit,
//!           indexes  pieces land a reference set      its reads   & merged  batch     decoded             fetches   tickets
//! ```

mod batch;
mod decode;
mod engine;
mod files;
mod groups;
mod io_stage;
mod planned;
mod referenced_shards;
mod remote;
mod shared;
mod targets;

pub use engine::{Engine, EngineConfig, Part, Ticket};
pub(crate) use files::PlanCache;
pub(crate) use groups::requested_ranges;
pub(crate) use planned::{plan_reads, read_all, read_only_what_crops_need};
pub(crate) use remote::requested_objects;
#[cfg(feature = "python")]
pub(crate) use shared::panic_message;
pub(crate) use shared::Shared;
pub use shared::{OutBuffer, Stats};
