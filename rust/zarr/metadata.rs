//! Reading array metadata from a directory or an object store: Zarr v3 `zarr.json`, Zarr v2
//! `.zarray` + `.zattrs`, and the consolidated metadata of a group (v2 `.zmetadata`, v3
//! `consolidated_metadata`).

use std::path::Path;

use serde_json::Value;
use zarrs::array::{ArrayMetadata, ArrayMetadataV2, ArrayMetadataV3};

use super::json;
use super::location::Location;
use crate::error::{Error, Result};

/// An array's metadata and, for v2 stores written by xarray, its `_ARRAY_DIMENSIONS`.
#[derive(Clone, Debug)]
pub struct StoredMetadata {
    pub metadata: ArrayMetadata,
    pub dimension_names: Option<Vec<Option<String>>>,
}

fn read_json(at: &Location, key: &str) -> Result<Option<Value>> {
    let Some(bytes) = at.read(key)? else {
        return Ok(None);
    };
    json::parse(&bytes)
        .map(Some)
        .map_err(|e| Error::invalid_metadata(at.path().join(key), format!("not JSON: {e}")))
}

/// Reads the metadata of the array at `at`.
///
/// # Errors
/// [`Error::NotFound`] when `at` holds no array metadata, [`Error::InvalidArgument`] when it
/// is a group, [`Error::InvalidMetadata`] when the metadata does not parse.
pub fn read_array_metadata(at: &Location) -> Result<StoredMetadata> {
    let path = at.path();
    refuse_icechunk(at)?;
    if let Some(v3) = read_json(at, "zarr.json")? {
        return v3_metadata(&path, v3);
    }
    if let Some(v2) = read_json(at, ".zarray")? {
        // Attributes never stop an array from being read: ones that do not parse are left out
        // (and with them xarray's dimension names).
        let attributes = read_json(at, ".zattrs").unwrap_or(None);
        return v2_metadata(&path, v2, attributes);
    }
    if at.read(".zgroup")?.is_some() {
        return Err(not_an_array(&path));
    }
    let what = match at {
        Location::Remote(_) => "no zarr.json or .zarray under this URL",
        Location::References(..) => "no .zarray or zarr.json under this key of the references",
        Location::Local(_) if at.exists() => "no zarr.json or .zarray in this directory",
        Location::Local(_) => "path does not exist",
    };
    Err(Error::NotFound {
        path,
        what: what.into(),
    })
}

/// Reads the metadata of array `name` in the group at `group`, from the group's consolidated
/// metadata when it has some, else from the array's own files.
///
/// # Errors
/// As [`read_array_metadata`], for the path `group/name`.
pub fn read_group_member(group: &Location, name: &str) -> Result<(Location, StoredMetadata)> {
    refuse_icechunk(group)?;
    let member = group.join(name)?;
    let path = member.path();
    if let Some(Value::Object(root)) = read_json(group, "zarr.json")? {
        let consolidated = root
            .get("consolidated_metadata")
            .and_then(|c| c.get("metadata"))
            .and_then(|m| m.get(name));
        if let Some(v3) = consolidated {
            return Ok((member, v3_metadata(&path, v3.clone())?));
        }
    } else if let Some(consolidated) = read_json(group, ".zmetadata")? {
        let entries = consolidated.get("metadata");
        let entry = |file: &str| {
            entries
                .and_then(|m| m.get(format!("{name}/{file}")))
                .cloned()
        };
        if let Some(v2) = entry(".zarray") {
            return Ok((member, v2_metadata(&path, v2, entry(".zattrs"))?));
        }
    }
    let metadata = read_array_metadata(&member)?;
    Ok((member, metadata))
}

/// A local Icechunk repository (its `snapshots/` and `refs/` folders, no Zarr metadata) given
/// as a path is refused by name, pointing to `Icechunk(...)`, rather than reported as a folder
/// with no array.
fn refuse_icechunk(at: &Location) -> Result<()> {
    let Some(dir) = at.local() else {
        return Ok(());
    };
    let repository = dir.join("snapshots").is_dir()
        && dir.join("refs").is_dir()
        && !dir.join("zarr.json").exists()
        && !dir.join(".zarray").exists();
    if repository {
        return Err(Error::unsupported_because(
            dir,
            "an Icechunk repository: read it at a version with \
             lsio_torch.Icechunk(path, branch=..., tag=... or snapshot=...)",
        ));
    }
    Ok(())
}

fn not_an_array(path: &Path) -> Error {
    Error::InvalidArgument(format!(
        "{}: is a Zarr group, not an array; name one of its arrays (variables=[...])",
        path.display()
    ))
}

fn v3_metadata(path: &Path, mut value: Value) -> Result<StoredMetadata> {
    if value.get("node_type").and_then(Value::as_str) == Some("group") {
        return Err(not_an_array(path));
    }
    if let Some(codecs) = value.get_mut("codecs") {
        json::fill_codec_defaults(codecs);
    }
    bool_fill_as_bool(&mut value);
    let metadata: ArrayMetadataV3 = serde_json::from_value(value)
        .map_err(|e| Error::invalid_metadata(path, format!("zarr.json: {e}")))?;
    Ok(StoredMetadata {
        dimension_names: metadata.dimension_names.clone(),
        metadata: ArrayMetadata::V3(metadata),
    })
}

/// A `bool` array's fill value written as `0` or `1` (GDAL writes them so; zarr-python reads
/// them) as the `false` or `true` it means.
fn bool_fill_as_bool(value: &mut Value) {
    let is_bool = value.get("data_type").and_then(Value::as_str) == Some("bool");
    if let (true, Some(fill)) = (is_bool, value.get_mut("fill_value")) {
        match fill.as_u64() {
            Some(0) => *fill = Value::Bool(false),
            Some(1) => *fill = Value::Bool(true),
            _ => {}
        }
    }
}

fn v2_metadata(path: &Path, value: Value, attributes: Option<Value>) -> Result<StoredMetadata> {
    if let Some(dtype @ Value::Array(_)) = value.get("dtype") {
        return Err(Error::unsupported(
            path,
            format!("structured data type {dtype}"),
        ));
    }
    let mut metadata: ArrayMetadataV2 = serde_json::from_value(value)
        .map_err(|e| Error::invalid_metadata(path, format!(".zarray: {e}")))?;
    let mut dimension_names = None;
    if let Some(Value::Object(attributes)) = attributes {
        dimension_names = attributes
            .get("_ARRAY_DIMENSIONS")
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .map(|n| n.as_str().map(str::to_string))
                    .collect()
            });
        metadata.attributes = attributes;
    }
    Ok(StoredMetadata {
        metadata: ArrayMetadata::V2(metadata),
        dimension_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Location {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        Location::Local(path)
    }

    #[test]
    fn v3_and_v2_metadata_are_read_with_xarray_s_dimension_names() {
        let v3 = read_array_metadata(&fixture("sharded_end_int16.zarr")).unwrap();
        assert!(matches!(v3.metadata, ArrayMetadata::V3(_)));
        let v2 = read_array_metadata(&fixture("v2_blosc_order_f_float32.zarr")).unwrap();
        let ArrayMetadata::V2(meta) = &v2.metadata else {
            panic!("{v2:?}")
        };
        assert_eq!(meta.shape, vec![6, 10, 9]);
        let names = ["time", "y", "x"].map(|n| Some(n.to_string())).to_vec();
        assert_eq!(v2.dimension_names, Some(names));
    }

    #[test]
    fn what_is_not_an_array_says_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let at = Location::Local(dir.path().to_path_buf());
        let e = read_array_metadata(&at).unwrap_err();
        assert!(matches!(&e, Error::NotFound { what, .. } if what.contains("no zarr.json")));
        let gone = Location::Local(dir.path().join("nothing"));
        let e = read_array_metadata(&gone).unwrap_err();
        assert!(matches!(&e, Error::NotFound { what, .. } if what == "path does not exist"));
        std::fs::write(
            dir.path().join("zarr.json"),
            br#"{"zarr_format": 3, "node_type": "group"}"#,
        )
        .unwrap();
        let e = read_array_metadata(&at).unwrap_err().to_string();
        assert!(e.contains("is a Zarr group, not an array"), "{e}");
        std::fs::write(dir.path().join("zarr.json"), b"{not json").unwrap();
        let e = read_array_metadata(&at).unwrap_err();
        assert!(matches!(&e, Error::InvalidMetadata { reason, .. } if reason.contains("not JSON")));
    }

    #[test]
    fn a_group_member_is_read_from_consolidated_metadata_first() {
        let dir = tempfile::tempdir().unwrap();
        let array = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/sharded_end_int16.zarr/zarr.json"),
        )
        .unwrap();
        // The member has no files of its own: only the group's consolidated entry names it.
        let group = format!(
            r#"{{"zarr_format": 3, "node_type": "group", "consolidated_metadata":
                {{"kind": "inline", "must_understand": false, "metadata": {{"t2m": {array}}}}}}}"#
        );
        std::fs::write(dir.path().join("zarr.json"), group).unwrap();
        let at = Location::Local(dir.path().to_path_buf());
        let (member, meta) = read_group_member(&at, "t2m").unwrap();
        assert_eq!(member.path(), dir.path().join("t2m"));
        assert!(matches!(meta.metadata, ArrayMetadata::V3(_)));
        let e = read_group_member(&at, "u10").unwrap_err();
        assert!(
            matches!(&e, Error::NotFound { path, .. } if path.ends_with("u10")),
            "{e:?}"
        );
    }
}
