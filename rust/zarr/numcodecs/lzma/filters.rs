//! Python's lzma filter specifiers (`{"id": lzma.FILTER_DELTA, "dist": 4}`), the chains of
//! numcodecs' raw (`format` 3) streams: parsed, and built as liblzma filter chains.

use liblzma::stream::{Filters, LzmaOptions};
use serde_json::{Map, Value};
use zarrs_plugin::PluginCreateError;

use super::refused;

// Python's lzma constants.
const FILTER_LZMA1: u64 = 0x4000_0000_0000_0001;
const FILTER_LZMA2: u64 = 0x21;
const FILTER_DELTA: u64 = 0x03;
const FILTER_X86: u64 = 0x04;
const FILTER_POWERPC: u64 = 0x05;
const FILTER_IA64: u64 = 0x06;
const FILTER_ARM: u64 = 0x07;
const FILTER_ARMTHUMB: u64 = 0x08;
const FILTER_SPARC: u64 = 0x09;
pub(super) const PRESET_DEFAULT: u32 = 6;

/// One filter of a raw chain, with the options decoding needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Filter {
    Lzma {
        version: u8,
        preset: u32,
        dict_size: Option<u32>,
        lc: Option<u32>,
        lp: Option<u32>,
        pb: Option<u32>,
    },
    Delta {
        dist: u32,
    },
    /// A branch-call-jump filter (x86, ...), by id, with a zero start offset.
    Branch(u64),
}

/// Parses one of Python's filter specifiers (`{"id": lzma.FILTER_DELTA, "dist": 4}`).
pub(super) fn parse(spec: &Map<String, Value>) -> Result<Filter, PluginCreateError> {
    let id = spec
        .get("id")
        .and_then(Value::as_u64)
        .ok_or_else(|| refused(format!("filter {spec:?} has no integer id")))?;
    let option = |name: &str| -> Result<Option<u32>, PluginCreateError> {
        spec.get(name)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        refused(format!("filter option {name}={v} is not a 32-bit integer"))
                    })
            })
            .transpose()
    };
    let allowed: &[&str] = match id {
        FILTER_LZMA1 | FILTER_LZMA2 => &[
            "id",
            "preset",
            "dict_size",
            "lc",
            "lp",
            "pb",
            "mode",
            "nice_len",
            "mf",
            "depth",
        ],
        FILTER_DELTA => &["id", "dist"],
        FILTER_X86 | FILTER_POWERPC | FILTER_IA64 | FILTER_ARM | FILTER_ARMTHUMB | FILTER_SPARC => {
            &["id", "start_offset"]
        }
        _ => return Err(refused(format!("filter id {id:#x} is not supported"))),
    };
    if let Some(unknown) = spec.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(refused(format!("filter {id:#x} has no option {unknown:?}")));
    }
    Ok(match id {
        FILTER_LZMA1 | FILTER_LZMA2 => Filter::Lzma {
            version: if id == FILTER_LZMA1 { 1 } else { 2 },
            preset: option("preset")?.unwrap_or(PRESET_DEFAULT),
            dict_size: option("dict_size")?,
            lc: option("lc")?,
            lp: option("lp")?,
            pb: option("pb")?,
        },
        FILTER_DELTA => {
            let dist = option("dist")?.unwrap_or(1);
            if !(1..=256).contains(&dist) {
                return Err(refused(format!(
                    "delta filter dist {dist} is not in 1..=256"
                )));
            }
            Filter::Delta { dist }
        }
        _ => {
            if option("start_offset")?.unwrap_or(0) != 0 {
                return Err(refused(
                    "branch filters with a start_offset are not supported",
                ));
            }
            Filter::Branch(id)
        }
    })
}

/// The liblzma chain of `filters`, in Python's order (the order they encode in).
///
/// # Errors
/// liblzma's, for options it refuses (a preset past 9).
pub(super) fn chain(filters: &[Filter]) -> Result<Filters, liblzma::stream::Error> {
    let mut chain = Filters::new();
    for filter in filters {
        match *filter {
            Filter::Lzma {
                version,
                preset,
                dict_size,
                lc,
                lp,
                pb,
            } => {
                let mut options = LzmaOptions::new_preset(preset)?;
                if let Some(n) = dict_size {
                    options.dict_size(n);
                }
                if let Some(n) = lc {
                    options.literal_context_bits(n);
                }
                if let Some(n) = lp {
                    options.literal_position_bits(n);
                }
                if let Some(n) = pb {
                    options.position_bits(n);
                }
                if version == 1 {
                    chain.lzma1(&options);
                } else {
                    chain.lzma2(&options);
                }
            }
            Filter::Delta { dist } => {
                // The delta filter's one property byte is `dist - 1`.
                #[allow(clippy::cast_possible_truncation)] // dist is in 1..=256
                chain.delta_properties(&[(dist - 1) as u8])?;
            }
            Filter::Branch(id) => {
                match id {
                    FILTER_X86 => chain.x86(),
                    FILTER_POWERPC => chain.powerpc(),
                    FILTER_IA64 => chain.ia64(),
                    FILTER_ARM => chain.arm(),
                    FILTER_ARMTHUMB => chain.arm_thumb(),
                    _ => chain.sparc(),
                };
            }
        }
    }
    Ok(chain)
}
