//! Where a remote array lives: its URL, the options its store is built with, and the
//! engine's own knobs for it.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreScheme, RetryConfig};

use super::client::{redact, Connector};
use crate::error::{Error, Result};

/// The URL schemes read from object stores.
const SCHEMES: [&str; 9] = [
    "s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://", "abfss://", "http://", "https://",
];

/// Whether `path` names an object store rather than a local file.
#[must_use]
pub fn is_url(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    SCHEMES.iter().any(|s| lower.starts_with(s))
}

/// The engine's knobs for a remote array, given in `storage_options` beside the store's own
/// keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Requests in flight at once, per engine (`max_requests`). Measured over HTTP at 90 MB/s
    /// a connection (full sat-zstd and raw, 640 crops, two runs each): 64, 128 and 256 gave
    /// raw 331/351, 372/348 and 371 crops/s at 50 ms, and ran within 3% of one another
    /// elsewhere (raw at 20 ms, sat-zstd at 20 and 50 ms, where the cores are the limit).
    pub max_requests: usize,
    /// Bytes fetched and not yet decoded, per engine (`max_bytes_in_flight`). Measured on
    /// sat-zstd over HTTP at 90 MB/s a connection: 64, 128, 256 and 512 MiB gave 230, 299, 304
    /// and 308 crops/s at 50 ms (290, 307, 312, 319 at 20 ms): below 128 MiB the permits held
    /// for a first byte's wait, not the network, set the pace.
    pub max_bytes_in_flight: usize,
    /// Chunks of one object at most this many bytes apart are fetched by one request; the
    /// bytes between them are fetched and dropped (`merge_gap`). Measured over HTTP at 20 ms
    /// and 90 MB/s a connection (lsio_torch bench, crops/s for gaps of 0, 64 KiB, 256 KiB,
    /// 1, 2 and 4 MiB): sat-zstd 150, 145, 174, 200, 142, 84; raw 100, 142, 227, 232, 153,
    /// 89. A gap is worth fetching while it costs less time than a request's first byte.
    pub merge_gap: u64,
    /// A range longer than this is fetched in parts of this size, in parallel
    /// (`part_bytes`); merged requests grow no longer than this either.
    pub part_bytes: u64,
    /// Retries of a request that failed on the way (5xx, throttling, a reset, a timeout).
    pub max_retries: usize,
    /// No retry starts later than this after a request's first try (`retry_timeout`).
    pub retry_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_requests: 128,
            max_bytes_in_flight: 128 << 20,
            merge_gap: 1 << 20,
            part_bytes: 16 << 20,
            max_retries: 5,
            retry_timeout: Duration::from_secs(30),
        }
    }
}

/// An array or group in an object store: a URL, and what its store is built with.
#[derive(Clone, Debug)]
pub struct RemoteStore {
    /// The URL as given, without its query or a trailing slash (and a password in it
    /// hidden): names objects in messages.
    pub url: String,
    scheme: ObjectStoreScheme,
    /// What the store's builder is given: the URL up to its path (bucket, container, host).
    base: String,
    /// The URL's path inside the store.
    pub prefix: Path,
    /// The store's own options (`region`, `endpoint`, ...), checked when parsed.
    options: Vec<(String, String)>,
    /// The query of an `http(s)://` URL (a token), sent with every request of the store.
    query: Option<String>,
    /// `bearer_token=`: sent as `Authorization: Bearer`.
    bearer: Option<String>,
    pub settings: Settings,
}

impl RemoteStore {
    /// Whether one client serves both stores: the same bucket, container or host, with the
    /// same options.
    #[must_use]
    pub fn same_client(&self, other: &Self) -> bool {
        self.scheme == other.scheme
            && self.base == other.base
            && self.options == other.options
            && self.query == other.query
            && self.bearer == other.bearer
    }

    /// The store at `url`, with `options`: the store's keys as the `object_store` crate names
    /// them, and the keys of [`Settings`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a URL that does not parse, an unknown scheme or option,
    /// or an option whose value does not parse.
    pub fn parse(url: &str, options: &[(String, String)]) -> Result<Self> {
        let shown = redact(url.trim_end_matches('/'));
        let invalid = |why: String| Error::InvalidArgument(format!("{shown}: {why}"));
        let mut parsed = url::Url::parse(url)
            .map_err(|e| invalid(format!("not a URL: {}", redact(&e.to_string()))))?;
        let query = parsed.query().map(str::to_string);
        parsed.set_query(None);
        parsed.set_fragment(None);
        let url = redact(parsed.as_str().trim_end_matches('/'));
        let (scheme, path) = ObjectStoreScheme::parse(&parsed)
            .map_err(|e| invalid(format!("not an object store URL: {e}")))?;
        if matches!(scheme, ObjectStoreScheme::Local | ObjectStoreScheme::Memory) {
            return Err(invalid("not an object store URL".into()));
        }
        let base = parsed[..url::Position::BeforePath].to_string();
        let mut settings = Settings::default();
        let mut store_options = Vec::new();
        let mut bearer = None;
        let http = matches!(scheme, ObjectStoreScheme::Http);
        for (key, value) in options {
            let key = key.to_ascii_lowercase();
            // The key, never the value: a misspelled key may hold a secret.
            let bad = |what: &str| invalid(format!("storage option {key}: {what}"));
            match key.as_str() {
                "max_requests" => {
                    settings.max_requests =
                        positive(value).ok_or_else(|| bad("expected a positive integer"))?
                }
                "max_bytes_in_flight" => {
                    settings.max_bytes_in_flight =
                        positive(value).ok_or_else(|| bad("expected a positive integer"))?;
                }
                "merge_gap" => {
                    settings.merge_gap = value.parse().map_err(|_| bad("expected an integer"))?
                }
                "part_bytes" => {
                    settings.part_bytes =
                        positive(value).ok_or_else(|| bad("expected a positive integer"))? as u64;
                }
                "max_retries" => {
                    settings.max_retries = value.parse().map_err(|_| bad("expected an integer"))?
                }
                "retry_timeout" => {
                    settings.retry_timeout = seconds(value)
                        .ok_or_else(|| bad("expected seconds, as 30 or 30s or 500ms"))?;
                }
                "bearer_token" if http => bearer = Some(value.clone()),
                _ => {
                    if !known_option(&scheme, &key) {
                        return Err(bad(&format!(
                            "not an option of {} stores",
                            scheme_name(&scheme)
                        )));
                    }
                    store_options.push((key, value.clone()));
                }
            }
        }
        // A plain-HTTP URL, or endpoint, asks for plain HTTP: the store refuses it otherwise.
        let plain = |v: &str| v.to_ascii_lowercase().starts_with("http://");
        let asks_plain_http = plain(&url)
            || store_options
                .iter()
                .any(|(k, v)| (k.ends_with("endpoint") || k.ends_with("endpoint_url")) && plain(v));
        if asks_plain_http && !store_options.iter().any(|(k, _)| k.ends_with("allow_http")) {
            store_options.push(("allow_http".into(), "true".into()));
        }
        // A query: an HTTP server's token goes with every request; an Azure SAS token is the
        // store's own option; S3 and Google sign each object's URL on its own (a presigned URL
        // reads one object, and a Zarr store is many).
        let query = match (query, &scheme) {
            (None, _) => None,
            (Some(q), ObjectStoreScheme::Http) => Some(q),
            (Some(q), ObjectStoreScheme::MicrosoftAzure) => {
                if !store_options.iter().any(|(k, _)| k.contains("sas")) {
                    store_options.push(("azure_storage_sas_key".into(), q));
                }
                None
            }
            (Some(_), _) => {
                return Err(invalid(format!(
                    "a query on a {} URL (a presigned URL) signs one object, and a Zarr store \
                     is many objects: give the store's credentials in storage_options \
                     instead",
                    scheme_name(&scheme)
                )))
            }
        };
        Ok(Self {
            url,
            scheme,
            base,
            prefix: path,
            options: store_options,
            query,
            bearer,
            settings,
        })
    }

    /// The store, built anew: each runtime has a client of its own (a client's connections
    /// belong to the runtime that opened them). Credentials and settings not given as options
    /// come from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the store refuses its configuration.
    pub fn build(&self) -> Result<Arc<dyn ObjectStore>> {
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: self.settings.max_retries,
            retry_timeout: self.settings.retry_timeout,
        };
        let failed = |e: object_store::Error| {
            Error::InvalidArgument(format!("{}: {}", self.url, redact(&e.to_string())))
        };
        let options = self.options.iter();
        Ok(match self.scheme {
            ObjectStoreScheme::AmazonS3 => {
                let builder = options.fold(
                    AmazonS3Builder::from_env()
                        .with_url(&self.base)
                        .with_http_connector(self.connector())
                        .with_retry(retry),
                    |b, (k, v)| match k.parse::<AmazonS3ConfigKey>() {
                        Ok(key) => b.with_config(key, v),
                        Err(_) => b,
                    },
                );
                Arc::new(builder.build().map_err(failed)?)
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                let builder = options.fold(
                    GoogleCloudStorageBuilder::from_env()
                        .with_url(&self.base)
                        .with_http_connector(self.connector())
                        .with_retry(retry),
                    |b, (k, v)| match k.parse::<GoogleConfigKey>() {
                        Ok(key) => b.with_config(key, v),
                        Err(_) => b,
                    },
                );
                Arc::new(builder.build().map_err(failed)?)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                let builder = options.fold(
                    MicrosoftAzureBuilder::from_env()
                        .with_url(&self.base)
                        .with_http_connector(self.connector())
                        .with_retry(retry),
                    |b, (k, v)| match k.parse::<AzureConfigKey>() {
                        Ok(key) => b.with_config(key, v),
                        Err(_) => b,
                    },
                );
                Arc::new(builder.build().map_err(failed)?)
            }
            _ => {
                let builder = options.fold(
                    HttpBuilder::new()
                        .with_url(&self.base)
                        .with_http_connector(self.connector())
                        .with_retry(retry),
                    |b, (k, v)| match k.parse::<ClientConfigKey>() {
                        Ok(key) => b.with_config(key, v),
                        Err(_) => b,
                    },
                );
                Arc::new(builder.build().map_err(failed)?)
            }
        })
    }

    /// The careful HTTP client of the store ([`Connector`]).
    fn connector(&self) -> Connector {
        Connector {
            query: self.query.clone(),
            bearer: self.bearer.clone(),
        }
    }

    /// The member `name` of this group: its URL and prefix below this one's.
    #[must_use]
    pub fn child(&self, name: &str) -> Self {
        let mut child = self.clone();
        child.url = format!("{}/{}", self.url, name.trim_matches('/'));
        child.prefix = self.key(name);
        child
    }

    /// The URL of the object at `key`: what the disk cache keys its chunks by.
    #[must_use]
    pub fn object_url(&self, key: &Path) -> String {
        format!("{}/{key}", self.base)
    }

    /// The object `rel` (a key relative to this URL: `zarr.json`, `c/0/1`).
    #[must_use]
    pub fn key(&self, rel: &str) -> Path {
        let parts = self.prefix.parts().chain(
            rel.split('/')
                .filter(|p| !p.is_empty())
                .map(object_store::path::PathPart::from),
        );
        Path::from_iter(parts)
    }

    /// Whether the store serves a suffix range (`bytes=-n`) with the object's size: Azure
    /// refuses them, so a shard index at the end is found from a HEAD there.
    #[must_use]
    pub fn serves_suffix_ranges(&self) -> bool {
        !matches!(self.scheme, ObjectStoreScheme::MicrosoftAzure)
    }
}

fn positive(value: &str) -> Option<usize> {
    value.trim().parse::<usize>().ok().filter(|&n| n > 0)
}

/// `30`, `30s`, `1.5s` or `500ms`.
fn seconds(value: &str) -> Option<Duration> {
    let value = value.trim();
    let (number, scale) = if let Some(ms) = value.strip_suffix("ms") {
        (ms, 1e-3)
    } else {
        (value.strip_suffix('s').unwrap_or(value), 1.0)
    };
    let s = number.trim().parse::<f64>().ok()? * scale;
    (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s))
}

fn known_option(scheme: &ObjectStoreScheme, key: &str) -> bool {
    match scheme {
        ObjectStoreScheme::AmazonS3 => key.parse::<AmazonS3ConfigKey>().is_ok(),
        ObjectStoreScheme::GoogleCloudStorage => key.parse::<GoogleConfigKey>().is_ok(),
        ObjectStoreScheme::MicrosoftAzure => key.parse::<AzureConfigKey>().is_ok(),
        _ => key.parse::<ClientConfigKey>().is_ok(),
    }
}

fn scheme_name(scheme: &ObjectStoreScheme) -> &'static str {
    match scheme {
        ObjectStoreScheme::AmazonS3 => "S3",
        ObjectStoreScheme::GoogleCloudStorage => "Google Cloud Storage",
        ObjectStoreScheme::MicrosoftAzure => "Azure",
        _ => "HTTP",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn urls_are_told_from_paths() {
        assert!(is_url("s3://bucket/a.zarr"));
        assert!(is_url("HTTPS://host/a.zarr"));
        assert!(is_url("abfs://container@account.dfs.core.windows.net/a"));
        assert!(!is_url("/data/a.zarr"));
        assert!(!is_url("data/s3://a"));
    }

    #[test]
    fn keys_join_below_the_prefix() {
        let store = RemoteStore::parse("s3://bucket/era5.zarr/", &[]).unwrap();
        assert_eq!(store.url, "s3://bucket/era5.zarr");
        assert_eq!(store.key("c/0/1").as_ref(), "era5.zarr/c/0/1");
        let child = store.child("t2m");
        assert_eq!(child.url, "s3://bucket/era5.zarr/t2m");
        assert_eq!(child.key(".zarray").as_ref(), "era5.zarr/t2m/.zarray");
        let http = RemoteStore::parse("http://127.0.0.1:8000/data/a.zarr", &[]).unwrap();
        assert_eq!(http.base, "http://127.0.0.1:8000");
        assert_eq!(http.key("zarr.json").as_ref(), "data/a.zarr/zarr.json");
    }

    #[test]
    fn options_are_checked_and_settings_parsed() {
        let options = opts(&[
            ("region", "us-west-2"),
            ("skip_signature", "true"),
            ("max_requests", "8"),
            ("retry_timeout", "500ms"),
        ]);
        let store = RemoteStore::parse("s3://bucket/a.zarr", &options).unwrap();
        assert_eq!(store.settings.max_requests, 8);
        assert_eq!(store.settings.retry_timeout, Duration::from_millis(500));
        assert_eq!(store.options.len(), 2);
        store.build().unwrap();
        let err = RemoteStore::parse("s3://bucket/a", &opts(&[("regoin", "x")])).unwrap_err();
        assert!(err.to_string().contains("regoin"), "{err}");
        let err = RemoteStore::parse("s3://bucket/a", &opts(&[("max_requests", "0")])).unwrap_err();
        assert!(err.to_string().contains("positive"), "{err}");
        assert!(RemoteStore::parse("ftp://host/a", &[]).is_err());
        assert_eq!(seconds("2"), Some(Duration::from_secs(2)));
        assert_eq!(seconds("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(seconds("-1"), None);
    }

    #[test]
    fn azure_alone_refuses_suffix_ranges() {
        assert!(RemoteStore::parse("gs://b/a", &[])
            .unwrap()
            .serves_suffix_ranges());
        assert!(!RemoteStore::parse("az://c/a", &[])
            .unwrap()
            .serves_suffix_ranges());
    }
}
