//! Parquet reference sets, fsspec's layout: a folder with `.zmetadata` (every metadata key of
//! the group, and `record_size`) and, per array, record files `<array>/refs.<n>.parq` of
//! `record_size` rows each, one row per chunk in C order of the chunk grid: `path`, `offset`,
//! `size` (0 for a whole file) and `raw` (inline bytes); a row with neither is a chunk never
//! written. A record file is read when a chunk of it is first needed, and only a bounded
//! number are kept: a set of millions of chunks is never loaded whole.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::Value;

use super::json::parse;
use super::location::Location;
use super::references::{Entry, Targets, MAX_REFERENCE_BYTES};
use crate::error::{Error, Result};

/// Record files kept decoded per set (the oldest is dropped first).
const RECORD_FILES: usize = 64;

/// An array's chunk grid: chunks per dimension, and the separator of its chunk keys.
#[derive(Debug)]
struct Grid {
    chunks: Vec<u64>,
    separator: char,
}

/// The entries of one record file, by row.
type Records = Arc<[Option<Entry>]>;

/// A parquet reference set.
#[derive(Debug)]
pub(super) struct ParquetRefs {
    /// The set's folder.
    at: Location,
    metadata: HashMap<String, Arc<[u8]>>,
    record_size: u64,
    grids: HashMap<String, Grid>,
    loaded: Mutex<Loaded>,
}

#[derive(Debug, Default)]
struct Loaded {
    files: HashMap<(String, u64), Records>,
    order: VecDeque<(String, u64)>,
}

fn invalid(path: impl Into<PathBuf>, reason: String) -> Error {
    Error::InvalidMetadata {
        path: path.into(),
        reason,
    }
}

impl ParquetRefs {
    /// The set in the folder `at`, from its `.zmetadata` (`text`).
    ///
    /// # Errors
    /// [`Error::InvalidMetadata`] when `.zmetadata` is not a parquet set's.
    pub(super) fn open(at: Location, shown: &str, text: &[u8]) -> Result<Self> {
        let bad = |reason: String| invalid(format!("{shown}/.zmetadata"), reason);
        let json = parse(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let record_size = json
            .get("record_size")
            .and_then(Value::as_u64)
            .filter(|&n| n > 0)
            .ok_or_else(
                || bad("no positive \"record_size\": not a parquet reference set".into()),
            )?;
        let Some(Value::Object(entries)) = json.get("metadata") else {
            return Err(bad("no \"metadata\" object".into()));
        };
        let mut metadata = HashMap::with_capacity(entries.len());
        let mut grids = HashMap::new();
        for (key, value) in entries {
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            if let Some(array) = key.strip_suffix(".zarray") {
                let zarray = parse(text.as_bytes()).map_err(|e| bad(format!("{key}: {e}")))?;
                let grid =
                    grid_of(&zarray).ok_or_else(|| bad(format!("{key}: no shape/chunks")))?;
                grids.insert(array.trim_end_matches('/').to_string(), grid);
            }
            metadata.insert(key.clone(), Arc::from(text.into_bytes()));
        }
        Ok(Self {
            at,
            metadata,
            record_size,
            grids,
            loaded: Mutex::default(),
        })
    }

    /// The entry at `key`: metadata, or a chunk's row of its record file.
    pub(super) fn get(&self, key: &str, targets: &Targets) -> Result<Option<Entry>> {
        if let Some(text) = self.metadata.get(key) {
            return Ok(Some(Entry::Inline(Arc::clone(text))));
        }
        let (array, chunk) = key.rsplit_once('/').unwrap_or(("", key));
        let Some(grid) = self.grids.get(array) else {
            return Ok(None);
        };
        let Some(index) = chunk_index(grid, chunk) else {
            return Ok(None);
        };
        let (file, row) = (index / self.record_size, index % self.record_size);
        let records = self.records(array, file, targets)?;
        Ok(usize::try_from(row)
            .ok()
            .and_then(|row| records.get(row).cloned().flatten()))
    }

    /// Record file `file` of `array`: kept, or read now.
    fn records(&self, array: &str, file: u64, targets: &Targets) -> Result<Records> {
        let id = (array.to_string(), file);
        {
            let loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(records) = loaded.files.get(&id) {
                return Ok(Arc::clone(records));
            }
        }
        let name = format!("refs.{file}.parq");
        let folder = if array.is_empty() {
            self.at.clone()
        } else {
            self.at.join(array)?
        };
        let path = folder.path().join(&name);
        let records: Records = match folder.read_at_most(&name, MAX_REFERENCE_BYTES)? {
            // A record file not written: none of its chunks were.
            None => Arc::from(Vec::new()),
            Some(bytes) => read_records(&path, bytes, targets)?.into(),
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        while loaded.files.len() >= RECORD_FILES {
            let Some(oldest) = loaded.order.pop_front() else {
                break;
            };
            loaded.files.remove(&oldest);
        }
        if !loaded.files.contains_key(&id) {
            loaded.order.push_back(id.clone());
            loaded.files.insert(id, Arc::clone(&records));
        }
        Ok(records)
    }
}

/// The grid of an array's `.zarray`.
fn grid_of(zarray: &Value) -> Option<Grid> {
    let numbers = |k: &str| -> Option<Vec<u64>> {
        zarray
            .get(k)?
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect()
    };
    let (shape, chunks) = (numbers("shape")?, numbers("chunks")?);
    if shape.len() != chunks.len() || chunks.contains(&0) {
        return None;
    }
    let separator = match zarray.get("dimension_separator").and_then(Value::as_str) {
        Some("/") => '/',
        _ => '.',
    };
    let chunks = shape
        .iter()
        .zip(&chunks)
        .map(|(s, c)| s.div_ceil(*c))
        .collect();
    Some(Grid { chunks, separator })
}

/// The C-order index of the chunk at `key` (`1.0.3`) in `grid`, or `None` for a key that
/// names no chunk of it.
fn chunk_index(grid: &Grid, key: &str) -> Option<u64> {
    let coords: Vec<u64> = if grid.chunks.is_empty() {
        (key == "0").then(Vec::new)?
    } else {
        key.split(grid.separator)
            .map(|c| c.parse().ok())
            .collect::<Option<_>>()?
    };
    if coords.len() != grid.chunks.len() || coords.iter().zip(&grid.chunks).any(|(c, n)| c >= n) {
        return None;
    }
    coords
        .iter()
        .zip(&grid.chunks)
        .try_fold(0u64, |index, (c, n)| index.checked_mul(*n)?.checked_add(*c))
}

/// The rows of one record file, as entries.
fn read_records(
    path: &std::path::Path,
    bytes: Vec<u8>,
    targets: &Targets,
) -> Result<Vec<Option<Entry>>> {
    let corrupt = |reason: String| invalid(path, format!("not a record file: {reason}"));
    let reader =
        SerializedFileReader::new(Bytes::from(bytes)).map_err(|e| corrupt(e.to_string()))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| corrupt(e.to_string()))?;
    let mut out = Vec::new();
    for row in rows {
        let row = row.map_err(|e| corrupt(e.to_string()))?;
        let (mut target, mut offset, mut size, mut raw) = (None, 0u64, 0u64, None);
        for (name, field) in row.get_column_iter() {
            let number = |field: &Field| match field {
                Field::Long(n) => u64::try_from(*n).ok(),
                Field::Int(n) => u64::try_from(*n).ok(),
                Field::ULong(n) => Some(*n),
                Field::Null => Some(0),
                _ => None,
            };
            match (name.as_str(), field) {
                ("path", Field::Str(url)) => target = Some(url.clone()),
                ("raw", Field::Bytes(bytes)) => raw = Some(Arc::<[u8]>::from(bytes.data())),
                ("raw", Field::Str(text)) => raw = Some(Arc::<[u8]>::from(text.as_bytes())),
                ("offset", f) => {
                    offset = number(f).ok_or_else(|| corrupt(format!("offset {f}")))?
                }
                ("size", f) => size = number(f).ok_or_else(|| corrupt(format!("size {f}")))?,
                _ => {}
            }
        }
        let entry = match (raw, target) {
            (Some(raw), _) => Some(Entry::Inline(raw)),
            (None, Some(url)) if size == 0 && offset == 0 => Some(Entry::Whole {
                target: targets.id(&url)?,
            }),
            (None, Some(url)) => Some(Entry::Range {
                target: targets.id(&url)?,
                offset,
                len: size,
            }),
            (None, None) => None,
        };
        out.push(entry);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_index_the_grid_in_c_order() {
        let grid =
            grid_of(&serde_json::json!({"shape": [10, 30, 40], "chunks": [1, 16, 16]})).unwrap();
        assert_eq!(grid.chunks, [10, 2, 3]);
        assert_eq!(chunk_index(&grid, "0.0.0"), Some(0));
        assert_eq!(chunk_index(&grid, "0.1.2"), Some(5));
        assert_eq!(chunk_index(&grid, "9.1.2"), Some(59));
        for outside in ["10.0.0", "0.2.0", "0.0", "a.b.c", "0/0/0"] {
            assert_eq!(chunk_index(&grid, outside), None, "{outside}");
        }
        let nested =
            serde_json::json!({"shape": [4, 4], "chunks": [2, 2], "dimension_separator": "/"});
        assert_eq!(chunk_index(&grid_of(&nested).unwrap(), "1/1"), Some(3));
        let scalar = grid_of(&serde_json::json!({"shape": [], "chunks": []})).unwrap();
        assert_eq!(chunk_index(&scalar, "0"), Some(0));
    }
}
