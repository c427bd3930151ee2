//! Metadata JSON as Zarr writers write it, and the optional codec fields they leave out.
//!
//! zarr-python 3 and xarray write attributes (and fill values) with Python's `json`, which
//! spells non-finite floats as bare `NaN`, `Infinity` and `-Infinity`: not JSON, but what
//! real stores hold. Those tokens are read as the strings Zarr itself uses for them.

use serde_json::{Map, Value};

/// Parses `bytes` as JSON, taking bare `NaN`, `Infinity` and `-Infinity` outside strings as
/// the strings `"NaN"`, `"Infinity"` and `"-Infinity"`.
///
/// # Errors
/// serde_json's error when the text is not JSON even so.
pub fn parse(bytes: &[u8]) -> serde_json::Result<Value> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(e) => match quote_non_finite(bytes) {
            Some(quoted) => serde_json::from_slice(&quoted),
            None => Err(e),
        },
    }
}

/// `bytes` with its bare non-finite tokens quoted, or `None` when it has none.
fn quote_non_finite(bytes: &[u8]) -> Option<Vec<u8>> {
    const TOKENS: [&[u8]; 3] = [b"-Infinity", b"Infinity", b"NaN"];
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let (mut in_string, mut escaped, mut changed) = (false, false, false);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if let Some(token) = TOKENS.iter().find(|t| bytes[i..].starts_with(t)) {
            out.push(b'"');
            out.extend_from_slice(token);
            out.push(b'"');
            i += token.len();
            changed = true;
            continue;
        }
        out.push(b);
        i += 1;
    }
    changed.then_some(out)
}

/// Fills in the optional fields of v3 codec configurations that zarrs requires, as the spec
/// defines them: zstd's `checksum` (NGFF examples and zarr-java leave it out), blosc's
/// `blocksize`, numcodecs' bz2 `level`, sharding's `index_codecs`; inside shards too. Fields
/// that are present are left as they are.
pub fn fill_codec_defaults(codecs: &mut Value) {
    let Value::Array(codecs) = codecs else {
        return;
    };
    for codec in codecs {
        let Value::Object(codec) = codec else {
            continue;
        };
        let name = codec
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let config = codec
            .entry("configuration")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(config) = config else {
            continue;
        };
        let defaults: Vec<(&str, Value)> = match name.as_str() {
            "zstd" => vec![("level", 0.into()), ("checksum", false.into())],
            "blosc" => vec![("clevel", 5.into()), ("blocksize", 0.into())],
            "gzip" => vec![("level", 5.into())],
            // zarr-python writes `{}` for numcodecs.BZ2(); its default level is 1.
            "numcodecs.bz2" => vec![("level", 1.into())],
            "sharding_indexed" => vec![(
                "index_codecs",
                serde_json::json!([
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "crc32c"}
                ]),
            )],
            _ => vec![],
        };
        for (key, value) in defaults {
            config.entry(key).or_insert(value);
        }
        if name == "sharding_indexed" {
            for key in ["codecs", "index_codecs"] {
                if let Some(inner) = config.get_mut(key) {
                    fill_codec_defaults(inner);
                }
            }
        }
        if config.is_empty() {
            codec.remove("configuration");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_non_finite_floats_read_as_zarr_strings() {
        let text = br#"{"a": NaN, "b": [Infinity, -Infinity], "s": "NaN is \"NaN\"", "n": 1.5}"#;
        let value = parse(text).unwrap();
        assert_eq!(value["a"], "NaN");
        assert_eq!(value["b"], serde_json::json!(["Infinity", "-Infinity"]));
        assert_eq!(value["s"], r#"NaN is "NaN""#);
        assert_eq!(value["n"], 1.5);
        assert!(parse(b"{\"a\": Nope}").is_err());
        assert!(parse(b"{\"a\": 1").is_err());
        // Strings are left as they are, escapes included.
        assert_eq!(quote_non_finite(br#"{"x": "\\", "y": "NaN"}"#), None);
    }

    #[test]
    fn optional_codec_fields_get_the_spec_defaults() {
        let mut codecs = serde_json::json!([
            {"name": "sharding_indexed", "configuration": {"chunk_shape": [2], "codecs": [
                {"name": "bytes"}, {"name": "zstd", "configuration": {"level": 3}}]}},
            {"name": "crc32c"}
        ]);
        fill_codec_defaults(&mut codecs);
        let shard = &codecs[0]["configuration"];
        assert_eq!(shard["codecs"][1]["configuration"]["checksum"], false);
        assert_eq!(shard["codecs"][1]["configuration"]["level"], 3);
        assert_eq!(shard["index_codecs"][1]["name"], "crc32c");
        assert_eq!(shard["codecs"][0], serde_json::json!({"name": "bytes"}));
        assert_eq!(codecs[1], serde_json::json!({"name": "crc32c"}));
    }
}
