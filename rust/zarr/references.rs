//! Reference sets (kerchunk's format, versions 0 and 1): a Zarr v2 group whose metadata is
//! inline and whose chunks are byte ranges of other files (NetCDF4/HDF5 archives), read where
//! they lie. Every target is resolved once, when the set is opened, and must lie under a
//! place the user authorized (by default the folder that holds the reference file): a
//! reference file cannot make the engine read anything else.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use serde_json::Value;

use super::icechunk::{IcechunkKeys, Version};
use super::json::parse;
use super::location::Location;
use super::reference_parquet::ParquetRefs;
use crate::error::{Error, Result};
use crate::io::remote::{is_url, redact, RemoteStore};

/// The largest reference file read (a JSON set of a few million chunks).
pub const MAX_REFERENCE_BYTES: u64 = 1 << 30;

/// What a key of the set holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The bytes themselves: metadata, or a small chunk.
    Inline(Arc<[u8]>),
    /// `len` bytes at `offset` of target `target`.
    Range { target: u32, offset: u64, len: u64 },
    /// All of target `target`.
    Whole { target: u32 },
}

/// What a target must still be for its chunks to be read: the version it was referenced at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The object's ETag (sent as `If-Match`).
    ETag(String),
    /// Not modified after this time (seconds since the epoch).
    UnmodifiedSince(u64),
}

/// A file chunks are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Local(PathBuf),
    /// An object of store number `store` of the set's [`ReferenceSet::stores`]: its URL
    /// (for messages) and key.
    Remote {
        url: String,
        key: object_store::path::Path,
        store: usize,
    },
}

impl Target {
    /// The path, or the URL as a path, for messages.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        match self {
            Self::Local(path) => path.clone(),
            Self::Remote { url, .. } => PathBuf::from(url),
        }
    }
}

/// An opened reference set.
#[derive(Debug)]
pub struct ReferenceSet {
    /// The reference file, for messages (a URL's secrets hidden).
    pub url: String,
    keys: Keys,
    targets: Targets,
}

/// Where a set's keys are: all in memory (JSON), or in record files read as they are needed
/// (parquet).
#[derive(Debug)]
enum Keys {
    Json(HashMap<String, Entry>),
    Parquet(ParquetRefs),
    Icechunk(Box<IcechunkKeys>),
}

/// A place the user authorizes targets in (a folder or a URL prefix), and the storage options
/// of its store where they are not the dataset's (another bucket's credentials, say).
#[derive(Clone, Debug, Default)]
pub struct Authorized {
    pub place: String,
    pub options: Option<Vec<(String, String)>>,
}

impl Authorized {
    /// `place`, read with the dataset's options.
    #[must_use]
    pub fn place(place: &str) -> Self {
        Self {
            place: place.to_string(),
            options: None,
        }
    }
}

/// Where a target may be: the folder of the reference file, or what the user authorized.
#[derive(Clone, Debug)]
enum Place {
    Local(PathBuf),
    Url(String),
}

impl Place {
    fn parse(text: &str) -> Result<Self> {
        if is_url(text) {
            let url = no_dot_segments(text)?;
            return Ok(Self::Url(url.trim_end_matches('/').to_string()));
        }
        let path = text.strip_prefix("file://").unwrap_or(text);
        let path = Path::new(path);
        if !path.is_absolute() {
            let here = std::env::current_dir()
                .map_err(|e| Error::io(path, "resolving a relative path", e))?;
            return Ok(Self::Local(normalized(&here.join(path))));
        }
        Ok(Self::Local(normalized(path)))
    }

    /// Whether `target` lies in this place (at or below it, segment by segment).
    fn holds(&self, target: &Place) -> bool {
        match (self, target) {
            (Self::Local(place), Self::Local(target)) => target.starts_with(place),
            (Self::Url(place), Self::Url(target)) => {
                target == place
                    || target
                        .strip_prefix(place.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            _ => false,
        }
    }

    fn shown(&self) -> String {
        match self {
            Self::Local(path) => path.display().to_string(),
            Self::Url(url) => redact(url),
        }
    }
}

/// `path` with `.` and `..` taken out lexically (never past the root).
fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A URL with no `.` or `..` segment in its path (refused: they would step out of a place).
fn no_dot_segments(url: &str) -> Result<&str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let after_scheme = path.split_once("://").map_or(path, |(_, rest)| rest);
    if after_scheme.split('/').any(|s| s == "." || s == "..") {
        return Err(Error::InvalidArgument(format!(
            "{}: a URL with a '.' or '..' segment",
            redact(url)
        )));
    }
    Ok(url)
}

impl ReferenceSet {
    /// Opens the reference set at `url` (a local path or an object-store URL with its
    /// `storage_options`): a JSON file, or a parquet folder (fsspec's layout: `.zmetadata`
    /// and `<array>/refs.<n>.parq`). Targets may lie in the set's folder and in the places of
    /// `authorize` (folders, or URL prefixes: `s3://bucket/archive`).
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no set at `url`, [`Error::Io`] when it cannot be
    /// read, [`Error::InvalidMetadata`] when it is not a reference set,
    /// [`Error::InvalidArgument`] for a target outside the authorized places or remote
    /// targets in more than one store.
    pub fn open(
        url: &str,
        options: &[(String, String)],
        authorize: &[Authorized],
    ) -> Result<Arc<Self>> {
        let (folder, name) = match url.trim_end_matches('/').rsplit_once('/') {
            Some((folder, name)) if !name.is_empty() => (folder, name),
            _ => (".", url.trim_end_matches('/')),
        };
        let at = Location::parse(folder, options)?;
        let shown = redact(url);
        let targets = Targets::new(&shown, folder, authorize, options)?;
        let folder_of_records = match &at {
            Location::Local(dir) => dir.join(name).is_dir(),
            _ => !name.ends_with(".json"),
        };
        if folder_of_records {
            let records = at.join(name)?;
            if let Some(metadata) = records.read(".zmetadata")? {
                let keys = Keys::Parquet(ParquetRefs::open(records, &shown, &metadata)?);
                return Ok(Arc::new(Self {
                    url: shown,
                    keys,
                    targets,
                }));
            }
        }
        let Some(text) = at.read_at_most(name, MAX_REFERENCE_BYTES)? else {
            return Err(Error::NotFound {
                path: PathBuf::from(&shown),
                what: "no reference file at this path".into(),
            });
        };
        let keys = Keys::Json(parse_json(&shown, &text, &targets)?);
        Ok(Arc::new(Self {
            url: shown,
            keys,
            targets,
        }))
    }

    /// The Icechunk repository at `url` (a local folder or an `http(s)://` URL) at
    /// `version`; its native chunks are read from its `chunks/` folder, its virtual chunks
    /// only from the places of `authorize`.
    ///
    /// # Errors
    /// As [`IcechunkKeys::open`].
    pub fn icechunk(
        url: &str,
        options: &[(String, String)],
        version: Version,
        authorize: &[Authorized],
    ) -> Result<Arc<Self>> {
        let url = url.trim_end_matches('/');
        let shown = redact(url);
        let targets = Targets::new(&shown, url, authorize, options)?;
        let keys = Keys::Icechunk(Box::new(IcechunkKeys::open(url, options, version)?));
        Ok(Arc::new(Self {
            url: shown,
            keys,
            targets,
        }))
    }

    /// Where each chunk of an array at `prefix` is, given as its chunk key and coordinates.
    ///
    /// # Errors
    /// As [`ReferenceSet::get`].
    pub fn chunks(&self, prefix: &str, chunks: &[(String, &[u64])]) -> Result<Vec<Option<Entry>>> {
        match &self.keys {
            Keys::Icechunk(repository) => {
                let coords: Vec<&[u64]> = chunks.iter().map(|(_, c)| *c).collect();
                repository.chunks(prefix, &coords, &self.targets)
            }
            _ => chunks
                .iter()
                .map(|(key, _)| self.get(&format!("{prefix}{key}")))
                .collect(),
        }
    }

    /// The entry at `key` (`t2m/.zarray`, `t2m/0.1.2`), or `None` where the set has none.
    ///
    /// # Errors
    /// For a parquet set, when the record file that holds `key` cannot be read or is not one,
    /// or names a target outside the authorized places.
    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        match &self.keys {
            Keys::Json(entries) => Ok(entries.get(key).cloned()),
            Keys::Parquet(parquet) => parquet.get(key, &self.targets),
            Keys::Icechunk(repository) => repository.metadata(key),
        }
    }

    /// Target number `id`.
    #[must_use]
    pub fn target(&self, id: u32) -> Option<Target> {
        self.targets.get(id)
    }

    /// What target number `id` must still be for its chunks to be read, if the set says.
    #[must_use]
    pub fn check(&self, id: u32) -> Option<Check> {
        self.targets.check(id)
    }

    /// The object stores remote targets may be in: one for each object-store place (the
    /// set's own, and the authorized ones) that needs a client of its own, known when the
    /// set is opened. Empty when every place is a local folder.
    #[must_use]
    pub fn stores(&self) -> &[Arc<RemoteStore>] {
        &self.targets.stores
    }
}

/// An error about one key of a set, naming it.
fn with_key(e: Error, shown: &str, key: &str) -> Error {
    match e {
        Error::InvalidMetadata { reason, .. } => Error::InvalidMetadata {
            path: PathBuf::from(shown),
            reason: format!("{key:?}: {reason}"),
        },
        Error::InvalidArgument(reason) => {
            Error::InvalidArgument(format!("{shown}: {key:?}: {reason}"))
        }
        other => other,
    }
}

fn invalid(shown: &str, reason: String) -> Error {
    Error::InvalidMetadata {
        path: PathBuf::from(shown),
        reason,
    }
}

/// The files chunks are read from, numbered as the set names them: resolved against the
/// set's folder and refused outside the authorized places.
#[derive(Debug)]
pub(super) struct Targets {
    shown: String,
    base: Place,
    /// Each place, with the number of its store among `stores` for a URL.
    places: Vec<(Place, Option<usize>)>,
    stores: Vec<Arc<RemoteStore>>,
    list: Mutex<TargetList>,
}

#[derive(Debug, Default)]
struct TargetList {
    targets: Vec<Target>,
    checks: Vec<Option<Check>>,
    by_url: HashMap<String, u32>,
}

impl Targets {
    /// The targets of the set `shown`: relative ones resolved against `base` (a folder or a
    /// URL prefix, read with `options`), each allowed there or under a place of `authorize`
    /// (read with its own options, or `options`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a place that does not parse, or options its store
    /// refuses (an S3 key given for an HTTP place, say).
    fn new(
        shown: &str,
        base: &str,
        authorize: &[Authorized],
        options: &[(String, String)],
    ) -> Result<Self> {
        let mut places = Vec::with_capacity(authorize.len() + 1);
        let mut stores: Vec<Arc<RemoteStore>> = Vec::new();
        let own = Authorized::place(base);
        for at in std::iter::once(&own).chain(authorize) {
            let place = Place::parse(&at.place)?;
            let store = match &place {
                Place::Local(_) => None,
                Place::Url(url) => {
                    let parsed = url::Url::parse(url).map_err(|e| {
                        Error::InvalidArgument(format!("place {}: {e}", redact(url)))
                    })?;
                    let container = &parsed[..url::Position::BeforePath];
                    let options = at.options.as_deref().unwrap_or(options);
                    let store = Arc::new(RemoteStore::parse(container, options)?);
                    match stores.iter().position(|s| s.same_client(&store)) {
                        Some(i) => Some(i),
                        None => {
                            stores.push(store);
                            Some(stores.len() - 1)
                        }
                    }
                }
            };
            places.push((place, store));
        }
        Ok(Self {
            shown: shown.to_string(),
            base: places[0].0.clone(),
            places,
            stores,
            list: Mutex::default(),
        })
    }

    fn get(&self, id: u32) -> Option<Target> {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.targets.get(id as usize).cloned()
    }

    fn check(&self, id: u32) -> Option<Check> {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.checks.get(id as usize).cloned().flatten()
    }

    /// The number of the target at `raw`, whose chunks are read only while it passes
    /// `check` (the first check given for a target holds).
    pub(super) fn checked_id(&self, raw: &str, check: Option<Check>) -> Result<u32> {
        let id = self.id(raw)?;
        if let Some(check) = check {
            let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot @ None) = list.checks.get_mut(id as usize) {
                *slot = Some(check);
            }
        }
        Ok(id)
    }

    /// The number of the target at `raw` (a URL or path from the set).
    pub(super) fn id(&self, raw: &str) -> Result<u32> {
        {
            let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(&id) = list.by_url.get(raw) {
                return Ok(id);
            }
        }
        let place = if is_url(raw) || raw.starts_with('/') || raw.starts_with("file://") {
            Place::parse(raw)?
        } else if raw.contains("://") {
            return Err(Error::InvalidArgument(format!(
                "target {}: not a path or a URL of s3, gs, az or http(s)",
                redact(raw)
            )));
        } else {
            match &self.base {
                Place::Local(folder) => Place::Local(normalized(&folder.join(raw))),
                Place::Url(folder) => {
                    Place::Url(no_dot_segments(&format!("{folder}/{raw}"))?.into())
                }
            }
        };
        let Some((_, store)) = self.places.iter().find(|(p, _)| p.holds(&place)) else {
            let allowed: Vec<String> = self.places.iter().map(|(p, _)| p.shown()).collect();
            return Err(Error::InvalidArgument(format!(
                "target {} lies outside the places this set may read ({}): pass \
                 References(..., authorize=[...]) to allow it",
                place.shown(),
                allowed.join(", ")
            )));
        };
        let target = match (place, store) {
            (Place::Local(path), _) => Target::Local(path),
            (Place::Url(url), Some(store)) => remote_target(&url, *store)?,
            (Place::Url(url), None) => {
                return Err(Error::InvalidArgument(format!(
                    "target {}: a URL in a local place",
                    redact(&url)
                )))
            }
        };
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&id) = list.by_url.get(raw) {
            return Ok(id);
        }
        let id = u32::try_from(list.targets.len())
            .map_err(|_| invalid(&self.shown, "more than 2^32 targets".into()))?;
        list.targets.push(target);
        list.checks.push(None);
        list.by_url.insert(raw.to_string(), id);
        Ok(id)
    }
}

/// The target at `url`, an object of store number `store` (the store of the place it lies in).
fn remote_target(url: &str, store: usize) -> Result<Target> {
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::InvalidArgument(format!("target {}: {e}", redact(url))))?;
    let rest = parsed.path().trim_start_matches('/');
    let key = object_store::path::Path::from_url_path(rest)
        .map_err(|e| Error::InvalidArgument(format!("target {}: {e}", redact(url))))?;
    Ok(Target::Remote {
        url: redact(url),
        key,
        store,
    })
}

/// The entries of a JSON set (version 0 or 1).
fn parse_json(shown: &str, text: &[u8], targets: &Targets) -> Result<HashMap<String, Entry>> {
    let json: Value =
        parse(text).map_err(|e| invalid(shown, format!("not a JSON reference set: {e}")))?;
    let Value::Object(mut top) = json else {
        return Err(invalid(shown, "not a JSON object".into()));
    };
    let (refs, templates, generators) = match top.get("version") {
        None => (top, serde_json::Map::new(), Vec::new()),
        Some(v) if v.as_u64() == Some(1) => {
            let refs = match top.remove("refs") {
                Some(Value::Object(refs)) => refs,
                None => serde_json::Map::new(),
                Some(_) => return Err(invalid(shown, "\"refs\" is not an object".into())),
            };
            let templates = match top.remove("templates") {
                Some(Value::Object(t)) => t,
                None | Some(Value::Null) => serde_json::Map::new(),
                Some(_) => return Err(invalid(shown, "\"templates\" is not an object".into())),
            };
            let generators = match top.remove("gen") {
                Some(Value::Array(g)) => g,
                None | Some(Value::Null) => Vec::new(),
                Some(_) => return Err(invalid(shown, "\"gen\" is not a list".into())),
            };
            (refs, templates, generators)
        }
        Some(v) => {
            return Err(invalid(
                shown,
                format!("reference set version {v}, not 0 or 1"),
            ))
        }
    };
    let mut templates: HashMap<String, String> = templates
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(invalid(shown, format!("template {k:?} is not a string"))),
        })
        .collect::<Result<_>>()?;
    let mut entries = HashMap::with_capacity(refs.len());
    for (key, value) in refs {
        let entry =
            entry(&key, &value, &templates, targets).map_err(|e| with_key(e, shown, &key))?;
        entries.insert(key, entry);
    }
    for generator in &generators {
        generate(shown, generator, &mut templates, targets, &mut entries)?;
    }
    Ok(entries)
}

/// The entry of one key of a JSON set.
fn entry(
    key: &str,
    value: &Value,
    templates: &HashMap<String, String>,
    targets: &Targets,
) -> Result<Entry> {
    let bad = |reason: String| invalid(&targets.shown, format!("{key:?}: {reason}"));
    match value {
        Value::String(text) => Ok(Entry::Inline(inline_bytes(text).map_err(bad)?)),
        // Metadata written as a JSON object rather than a string.
        Value::Object(_) => Ok(Entry::Inline(value.to_string().into_bytes().into())),
        Value::Array(parts) => {
            let url = match parts.first() {
                Some(Value::String(url)) => expand(url, templates),
                _ => return Err(bad("no target URL".into())),
            };
            match parts.as_slice() {
                [_] => Ok(Entry::Whole {
                    target: targets.id(&url)?,
                }),
                [_, offset, len] => match (offset.as_u64(), len.as_u64()) {
                    (Some(offset), Some(len)) => Ok(Entry::Range {
                        target: targets.id(&url)?,
                        offset,
                        len,
                    }),
                    _ => Err(bad(format!(
                        "offset {offset} and length {len} are not byte counts"
                    ))),
                },
                _ => Err(bad(
                    "expected [url], [url, offset, length] or inline text".into()
                )),
            }
        }
        other => Err(bad(format!("unexpected value {other}"))),
    }
}

/// Adds the entries of one `gen` item: a key, URL, offset and length, each a template over
/// the item's dimensions (`{"i": {"start": 0, "stop": 10, "step": 1}}` or a list).
fn generate(
    shown: &str,
    generator: &Value,
    templates: &mut HashMap<String, String>,
    targets: &Targets,
    entries: &mut HashMap<String, Entry>,
) -> Result<()> {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let field = |name: &str| generator.get(name).and_then(Value::as_str);
    let (Some(key), Some(url)) = (field("key"), field("url")) else {
        return Err(invalid(
            shown,
            "a \"gen\" item without \"key\" and \"url\"".into(),
        ));
    };
    let offset = generator.get("offset").map(text);
    let length = generator.get("length").map(text);
    let Some(Value::Object(dims)) = generator.get("dimensions") else {
        return Err(invalid(
            shown,
            format!("\"gen\" item {key:?} without \"dimensions\""),
        ));
    };
    let mut axes: Vec<(String, Vec<String>)> = Vec::new();
    for (name, spec) in dims {
        let bad = |what: &str| invalid(shown, format!("\"gen\" dimension {name:?}: {what}"));
        let values = match spec {
            Value::Array(values) => values.iter().map(text).collect(),
            Value::Object(range) => {
                let get = |k: &str| range.get(k).and_then(Value::as_i64);
                let (start, step) = (get("start").unwrap_or(0), get("step").unwrap_or(1));
                let stop = get("stop").ok_or_else(|| bad("no \"stop\""))?;
                let step = usize::try_from(step)
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| bad("a step below 1"))?;
                (start..stop).step_by(step).map(|v| v.to_string()).collect()
            }
            _ => return Err(bad("not a range or a list")),
        };
        axes.push((name.clone(), values));
    }
    let total: usize = axes.iter().map(|(_, v)| v.len()).product();
    for mut n in 0..total {
        for (name, values) in axes.iter().rev() {
            templates.insert(name.clone(), values[n % values.len()].clone());
            n /= values.len();
        }
        let key = expand(key, templates);
        let parts = match (&offset, &length) {
            (Some(offset), Some(length)) => {
                let parse = |t: &str| expand(t, templates).trim().parse::<u64>().ok();
                let (Some(o), Some(l)) = (parse(offset), parse(length)) else {
                    return Err(invalid(
                        shown,
                        format!(
                            "\"gen\" item {key:?}: offset and length must come out as byte \
                             counts (only {{{{name}}}} is substituted)"
                        ),
                    ));
                };
                serde_json::json!([url, o, l])
            }
            _ => serde_json::json!([url]),
        };
        let entry =
            entry(&key, &parts, templates, targets).map_err(|e| with_key(e, shown, &key))?;
        entries.insert(key, entry);
    }
    for (name, _) in &axes {
        templates.remove(name);
    }
    Ok(())
}

/// `text` with each `{{name}}` (spaces allowed inside) replaced by its template.
fn expand(text: &str, templates: &HashMap<String, String>) -> String {
    if !text.contains("{{") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = rest[open + 2..open + close].trim();
        match templates.get(name) {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[open..open + close + 2]),
        }
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

/// The bytes of an inline entry: `base64:` then base64, or the text's own UTF-8.
pub(super) fn inline_bytes(text: &str) -> std::result::Result<Arc<[u8]>, String> {
    match text.strip_prefix("base64:") {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Into::into)
            .map_err(|e| format!("bad base64: {e}")),
        None => Ok(text.as_bytes().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, base: &str, authorize: &[&str]) -> Result<ReferenceSet> {
        let authorize: Vec<Authorized> = authorize.iter().map(|p| Authorized::place(p)).collect();
        let targets = Targets::new("refs.json", base, &authorize, &[]).unwrap();
        let entries = parse_json("refs.json", text.as_bytes(), &targets)?;
        Ok(ReferenceSet {
            url: "refs.json".into(),
            keys: Keys::Json(entries),
            targets,
        })
    }

    fn get(set: &ReferenceSet, key: &str) -> Option<Entry> {
        set.get(key).unwrap()
    }

    #[test]
    fn version_0_and_1_give_the_same_entries() {
        let v0 = r#"{".zgroup": "{\"zarr_format\":2}", "t/0.0": ["a.nc", 100, 20], "t/0.1": ["/d/b.nc"], "t/1.0": "base64:AAEC"}"#;
        let v1 = r#"{"version": 1, "templates": {"u": "a.nc"}, "refs": {".zgroup": "{\"zarr_format\":2}", "t/0.0": ["{{ u }}", 100, 20], "t/0.1": ["/d/b.nc"], "t/1.0": "base64:AAEC"}}"#;
        for text in [v0, v1] {
            let set = parse(text, "/d", &[]).unwrap();
            assert_eq!(
                get(&set, ".zgroup"),
                Some(Entry::Inline(b"{\"zarr_format\":2}".to_vec().into()))
            );
            let Some(Entry::Range {
                target,
                offset,
                len,
            }) = get(&set, "t/0.0")
            else {
                panic!("{:?}", get(&set, "t/0.0"));
            };
            assert_eq!((offset, len), (100, 20));
            assert_eq!(set.target(target), Some(Target::Local("/d/a.nc".into())));
            let Some(Entry::Whole { target }) = get(&set, "t/0.1") else {
                panic!();
            };
            assert_eq!(set.target(target), Some(Target::Local("/d/b.nc".into())));
            assert_eq!(
                get(&set, "t/1.0"),
                Some(Entry::Inline(vec![0, 1, 2].into()))
            );
            assert_eq!(get(&set, "t/1.1"), None);
        }
    }

    #[test]
    fn gen_items_expand_over_their_dimensions() {
        let text = r#"{"version": 1, "refs": {}, "gen": [{"key": "t/{{i}}.{{j}}",
            "url": "f{{i}}.nc", "offset": "{{j}}00", "length": 10,
            "dimensions": {"i": {"stop": 2}, "j": [3, 4]}}]}"#;
        let set = parse(text, "/d", &[]).unwrap();
        for (key, file, offset) in [("t/0.3", "/d/f0.nc", 300), ("t/1.4", "/d/f1.nc", 400)] {
            let Some(Entry::Range {
                target,
                offset: o,
                len,
            }) = get(&set, key)
            else {
                panic!("{key}");
            };
            assert_eq!((o, len), (offset, 10));
            assert_eq!(set.target(target), Some(Target::Local(file.into())));
        }
        let Keys::Json(entries) = &set.keys else {
            panic!()
        };
        assert_eq!(entries.len(), 4);
    }

    #[test]
    fn targets_outside_the_authorized_places_are_refused() {
        for target in [
            "/etc/passwd",
            "../x.nc",
            "/d/../etc/passwd",
            "http://elsewhere/x.nc",
        ] {
            let text = format!(r#"{{"t/0": ["{target}", 0, 4]}}"#);
            let e = parse(&text, "/d", &[]).unwrap_err().to_string();
            assert!(
                e.contains("outside the places") && e.contains("t/0"),
                "{target}: {e}"
            );
        }
        let text = r#"{"t/0": ["/archive/x.nc", 0, 4], "t/1": ["/archived/y.nc", 0, 4]}"#;
        let e = parse(text, "/d", &["/archive"]).unwrap_err().to_string();
        assert!(
            e.contains("/archived/y.nc"),
            "a prefix ends at a segment: {e}"
        );
        assert!(parse(r#"{"t/0": ["/archive/x.nc", 0, 4]}"#, "/d", &["/archive/"]).is_ok());
        let e = parse(
            r#"{"t/0": ["http://h/a/../b", 0, 4]}"#,
            "/d",
            &["http://h/a"],
        )
        .unwrap_err();
        assert!(e.to_string().contains("'..'"), "{e}");
    }

    #[test]
    fn remote_targets_resolve_against_the_sets_url_each_in_its_places_store() {
        let text =
            r#"{"t/0": ["a.nc", 0, 4], "t/1": ["http://127.0.0.1:9/refs/sub/b%20c.nc", 0, 4]}"#;
        let set = parse(text, "http://127.0.0.1:9/refs", &[]).unwrap();
        let Some(Entry::Range { target, .. }) = get(&set, "t/1") else {
            panic!();
        };
        let Some(Target::Remote { key, store, .. }) = set.target(target) else {
            panic!();
        };
        assert_eq!(
            key.as_ref(),
            "refs/sub/b c.nc",
            "decoded: the store encodes it again"
        );
        assert_eq!((store, set.stores().len()), (0, 1));
        // Targets in two stores (and local ones) each read from their own place's store.
        let two = r#"{"t/0": ["http://127.0.0.1:9/a/x.nc", 0, 4],
                      "t/1": ["http://127.0.0.2:9/b/y.nc", 0, 4], "t/2": ["/d/z.nc", 0, 4]}"#;
        let set = parse(
            two,
            "/d",
            &["http://127.0.0.1:9/a", "http://127.0.0.2:9/b/"],
        )
        .unwrap();
        assert_eq!(set.stores().len(), 2);
        let store_of = |key: &str| {
            let Some(Entry::Range { target, .. }) = get(&set, key) else {
                panic!("{key}");
            };
            match set.target(target) {
                Some(Target::Remote { store, .. }) => Some(store),
                _ => None,
            }
        };
        assert_eq!(
            (store_of("t/0"), store_of("t/1"), store_of("t/2")),
            (Some(0), Some(1), None)
        );
        // One store for two places of one bucket; a place's own options are checked.
        let targets = Targets::new(
            "refs.json",
            "s3://era5/refs",
            &[
                Authorized::place("s3://era5/archive"),
                Authorized {
                    place: "http://127.0.0.1:9/x".into(),
                    options: Some(vec![("region".into(), "us-east-1".into())]),
                },
            ],
            &[("region".into(), "us-east-1".into())],
        );
        let e = targets.unwrap_err().to_string();
        assert!(e.contains("region") && e.contains("http"), "{e}");
        let targets = Targets::new(
            "refs.json",
            "s3://era5/refs",
            &[Authorized::place("s3://era5/archive")],
            &[],
        )
        .unwrap();
        assert_eq!(targets.stores.len(), 1);
    }

    #[test]
    fn malformed_sets_name_what_is_wrong() {
        for (text, says) in [
            ("[1]", "not a JSON object"),
            ("{", "not a JSON reference set"),
            (r#"{"version": 2}"#, "version 2"),
            (r#"{"t/0": ["a.nc", -1, 4]}"#, "\"t/0\""),
            (r#"{"t/0": [1]}"#, "no target URL"),
            (r#"{"t/0": "base64:!!"}"#, "bad base64"),
        ] {
            let e = parse(text, "/d", &[]).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("refs.json"), "{text}: {e}");
        }
    }
}
