//! Where the repository of an `icechunk.Session` (the icechunk Python package's) lies: the
//! session's serialized bytes (`Session.as_bytes`, MessagePack, the same layout in the
//! package's 1 and 2 lines) hold its storage, which this finds and turns into the URL and
//! `storage_options` an [`Icechunk`](super::icechunk) repository is opened with.
//!
//! Only the storage is read; the version comes from the session's public `snapshot_id`.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A session's repository: its URL (a folder, `http(s)://` or `s3://bucket/prefix`) and the
/// options to read it with (object_store's S3 option names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRepository {
    pub url: String,
    pub options: Vec<(String, String)>,
}

/// The repository of the session serialized as `bytes`.
///
/// # Errors
/// [`Error::InvalidArgument`] for bytes that are not a session's, [`Error::Unsupported`] for a
/// storage not read yet (GCS, Azure, refreshable credentials), naming it.
pub fn session_repository(bytes: &[u8]) -> Result<SessionRepository> {
    let not_a_session =
        |why: String| Error::InvalidArgument(format!("not an icechunk session's bytes ({why})"));
    let Lenient(tree) = rmp_serde::from_slice(bytes).map_err(|e| not_a_session(e.to_string()))?;
    let storage = find_storage(&tree).ok_or_else(|| not_a_session("no storage in it".into()))?;
    repository_of(storage)
}

/// The first map of `tree` (depth first) tagged as a storage: `{"type": "...Storage", ...}`.
fn find_storage(tree: &Value) -> Option<&Map<String, Value>> {
    match tree {
        Value::Object(map) => {
            let tagged = map.get("type").and_then(Value::as_str);
            if tagged.is_some_and(|t| t.ends_with("Storage")) {
                return Some(map);
            }
            map.values().find_map(find_storage)
        }
        Value::Array(items) => items.iter().find_map(find_storage),
        _ => None,
    }
}

fn unsupported(what: &str) -> Error {
    Error::Unsupported {
        path: "icechunk session".into(),
        detail: format!(
            "its repository is in {what}, not read yet (local folders, http(s):// and s3:// \
             are): pass Icechunk(url, snapshot=session.snapshot_id) with storage_options"
        ),
    }
}

fn repository_of(storage: &Map<String, Value>) -> Result<SessionRepository> {
    let text = |map: &Map<String, Value>, key: &str| -> Option<String> {
        map.get(key).and_then(Value::as_str).map(str::to_string)
    };
    let kind = text(storage, "type").unwrap_or_default();
    if kind == "S3Storage" {
        return s3_repository(storage);
    }
    if kind != "ObjectStorage" {
        return Err(unsupported(&format!("a {kind}")));
    }
    let backend = storage
        .get("backend")
        .and_then(Value::as_object)
        .ok_or_else(|| unsupported("an ObjectStorage without a backend"))?;
    let provider = text(backend, "object_store_provider_type").unwrap_or_default();
    let plain = |url: Option<String>| {
        url.map(|url| SessionRepository {
            url,
            options: Vec::new(),
        })
        .ok_or_else(|| unsupported(&format!("a {provider} without its location")))
    };
    match provider.as_str() {
        "local_file_system_object_store_provider" => plain(text(backend, "path")),
        "http_object_store_provider" => plain(text(backend, "url")),
        "s3_object_store_provider" => s3_repository(backend),
        _ => Err(unsupported(&format!("a {provider}"))),
    }
}

/// An S3 storage (the `S3Storage` of `icechunk.s3_storage`, or an object_store S3 backend):
/// `bucket`, `prefix`, `config` (S3Options, as a list or a map) and `credentials`.
fn s3_repository(storage: &Map<String, Value>) -> Result<SessionRepository> {
    let bucket = storage
        .get("bucket")
        .and_then(Value::as_str)
        .ok_or_else(|| unsupported("an S3 storage without a bucket"))?;
    let prefix = storage.get("prefix").and_then(Value::as_str).unwrap_or("");
    let url = if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{}", prefix.trim_matches('/'))
    };
    let mut options = Vec::new();
    let mut push = |key: &str, value: String| options.push((key.to_string(), value));
    // S3Options: region, endpoint_url, anonymous, allow_http, force_path_style,
    // network_stream_timeout_seconds, requester_pays, ... (in this order when a list).
    let field = |index: usize, name: &str| -> Option<&Value> {
        match storage.get("config")? {
            Value::Array(items) => items.get(index),
            Value::Object(map) => map.get(name),
            _ => None,
        }
    };
    if let Some(region) = field(0, "region").and_then(Value::as_str) {
        push("region", region.to_string());
    }
    if let Some(endpoint) = field(1, "endpoint_url").and_then(Value::as_str) {
        push("endpoint", endpoint.to_string());
    }
    let anonymous = field(2, "anonymous").and_then(Value::as_bool) == Some(true);
    if field(3, "allow_http").and_then(Value::as_bool) == Some(true) {
        push("allow_http", "true".into());
    }
    if field(6, "requester_pays").and_then(Value::as_bool) == Some(true) {
        push("request_payer", "true".into());
    }
    // Credentials: ["static", key, secret, token, expiry], ["from_env"], ["anonymous"], or
    // the same as a map tagged by its variant.
    let credentials = storage.get("credentials");
    let (variant, fields): (String, Vec<Value>) = match credentials {
        None | Some(Value::Null) => ("from_env".into(), Vec::new()),
        Some(Value::String(s)) => (s.to_ascii_lowercase(), Vec::new()),
        Some(Value::Array(items)) => (
            items
                .first()
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase(),
            items.iter().skip(1).cloned().collect(),
        ),
        Some(Value::Object(map)) if map.len() == 1 => {
            let (name, value) = map.iter().next().expect("one entry");
            let fields = match value {
                Value::Array(items) => items.clone(),
                Value::Object(m) => ["access_key_id", "secret_access_key", "session_token"]
                    .iter()
                    .map(|k| m.get(*k).cloned().unwrap_or(Value::Null))
                    .collect(),
                _ => Vec::new(),
            };
            (name.to_ascii_lowercase(), fields)
        }
        Some(_) => ("unknown".into(), Vec::new()),
    };
    match variant.as_str() {
        "from_env" | "fromenv" if !anonymous => {}
        "anonymous" | "from_env" | "fromenv" => push("skip_signature", "true".into()),
        "static" => {
            let text = |i: usize| fields.get(i).and_then(Value::as_str).map(str::to_string);
            let (Some(key), Some(secret)) = (text(0), text(1)) else {
                return Err(unsupported(
                    "an S3 storage whose static credentials are incomplete",
                ));
            };
            push("access_key_id", key);
            push("secret_access_key", secret);
            if let Some(token) = text(2) {
                push("session_token", token);
            }
        }
        other => {
            return Err(unsupported(&format!(
                "an S3 storage with {other} credentials"
            )))
        }
    }
    Ok(SessionRepository { url, options })
}

/// Any MessagePack value as JSON; binary strings (a snapshot id, a manifest) become null.
struct Lenient(Value);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor).map(Lenient)
    }
}

struct LenientVisitor;

impl<'de> Visitor<'de> for LenientVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any MessagePack value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_bytes<E>(self, _: &[u8]) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        Lenient::deserialize(d).map(|Lenient(v)| v)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Lenient(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((Lenient(key), Lenient(value))) = map.next_entry()? {
            let key = match key {
                Value::String(s) => s,
                other => other.to_string(),
            };
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A session as the icechunk package lays it out: config, storage, then more, with a
    /// binary snapshot id among them.
    fn session(storage: &Value) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Session<'a>(
            Vec<Option<u8>>,
            &'a Value,
            #[serde(with = "serde_bytes_like")] Vec<u8>,
            Vec<u64>,
        );
        mod serde_bytes_like {
            pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        rmp_serde::to_vec(&Session(
            vec![None, None],
            storage,
            vec![11; 12],
            vec![5, 4096],
        ))
        .unwrap()
    }

    #[test]
    fn a_local_or_http_repository_is_its_path_or_url() {
        let local = json!({"type": "ObjectStorage", "backend": {
            "object_store_provider_type": "local_file_system_object_store_provider",
            "path": "/data/repo"}});
        let found = session_repository(&session(&local)).unwrap();
        assert_eq!(found.url, "/data/repo");
        assert!(found.options.is_empty());
        let http = json!({"type": "ObjectStorage", "backend": {
            "object_store_provider_type": "http_object_store_provider",
            "url": "https://host:8443/repo", "config": null}});
        assert_eq!(
            session_repository(&session(&http)).unwrap().url,
            "https://host:8443/repo"
        );
    }

    #[test]
    fn an_s3_storage_gives_its_bucket_prefix_and_options() {
        let s3 = json!({"type": "S3Storage",
            "config": ["us-west-2", "http://127.0.0.1:9", false, true, true, 60, false, null],
            "credentials": ["static", "AK", "SK", "TOKEN", null],
            "bucket": "era5", "prefix": "repos/v1/", "can_write": true});
        let found = session_repository(&session(&s3)).unwrap();
        assert_eq!(found.url, "s3://era5/repos/v1");
        let option = |k: &str| {
            found
                .options
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(option("region"), Some("us-west-2"));
        assert_eq!(option("endpoint"), Some("http://127.0.0.1:9"));
        assert_eq!(option("allow_http"), Some("true"));
        assert_eq!(option("access_key_id"), Some("AK"));
        assert_eq!(option("secret_access_key"), Some("SK"));
        assert_eq!(option("session_token"), Some("TOKEN"));
        assert_eq!(option("skip_signature"), None);

        let anonymous = json!({"type": "S3Storage",
            "config": [null, null, true, false, false, 60, true],
            "credentials": ["anonymous"], "bucket": "open", "prefix": ""});
        let found = session_repository(&session(&anonymous)).unwrap();
        assert_eq!(found.url, "s3://open");
        assert!(found
            .options
            .contains(&("skip_signature".into(), "true".into())));
        assert!(found
            .options
            .contains(&("request_payer".into(), "true".into())));
        let env = json!({"type": "S3Storage", "config": ["r", null, false, false, false, 60,
            false], "credentials": ["from_env"], "bucket": "b", "prefix": "p"});
        let found = session_repository(&session(&env)).unwrap();
        assert_eq!(found.options, vec![("region".into(), "r".into())]);
    }

    #[test]
    fn storages_not_read_yet_and_bytes_of_something_else_are_named() {
        let gcs = json!({"type": "ObjectStorage", "backend": {
            "object_store_provider_type": "gcs_object_store_provider", "bucket": "g"}});
        let e = session_repository(&session(&gcs)).unwrap_err().to_string();
        assert!(e.contains("gcs_object_store_provider"), "{e}");
        let refreshable = json!({"type": "S3Storage", "config": [null, null, false, false,
            false, 60, false], "credentials": ["refreshable", null], "bucket": "b"});
        let e = session_repository(&session(&refreshable))
            .unwrap_err()
            .to_string();
        assert!(e.contains("refreshable credentials"), "{e}");
        for junk in [
            &b"not msgpack at all \xc1"[..],
            &rmp_serde::to_vec(&[1, 2]).unwrap(),
        ] {
            let e = session_repository(junk).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        }
    }
}
