//! The HTTP client under every object store: reqwest, configured from the store's client
//! options as `object_store` configures it, and careful where a hostile server or a careless
//! message could cost a user their credentials:
//!
//! - **Redirects** are followed within the request's origin (scheme, host and port) only. A
//!   redirect to another origin is an error naming both: credentials (`Authorization`,
//!   `x-amz-security-token`, a token in the query) are never sent where the user did not point
//!   the store, and object stores do not redirect reads within a region.
//! - **Error bodies** are cut to what names the failure: the status, and the error code and
//!   request id a store's body gives (`<Code>`, `<RequestId>`); the rest (an S3
//!   `SignatureDoesNotMatch` body echoes the request's canonical headers, security token
//!   included) never reaches a message. At most [`ERROR_BODY_BYTES`] of a body are read.
//! - **A query on the store's URL** (a token of an `http(s)://` server) is sent with every
//!   request of the store.
//! - **A bearer token** (`bearer_token=`) is sent as `Authorization: Bearer`, marked sensitive.
//!
//! [`redact`] hides the values of queries and passwords in URLs of every message.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, LOCATION};
use http::Uri;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::{ClientConfigKey, ClientOptions};
use regex::Regex;

/// The most bytes of an error response's body read: enough for any store's error document.
pub const ERROR_BODY_BYTES: usize = 64 << 10;
/// Redirects followed within one origin before the request fails.
const MOST_REDIRECTS: usize = 10;

/// Builds the careful client of a store: see the module's documentation.
#[derive(Debug, Default)]
pub struct Connector {
    /// The query of the store's URL, without its `?`.
    pub query: Option<String>,
    /// `Authorization: Bearer <token>` on every request.
    pub bearer: Option<String>,
}

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.bearer {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                object_store::Error::Generic {
                    store: "HTTP",
                    source: "bearer_token: not a valid HTTP header value".into(),
                }
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let inner = reqwest_client(options, headers).map_err(|e| object_store::Error::Generic {
            store: "HTTP",
            source: e.into(),
        })?;
        Ok(HttpClient::new(Careful {
            inner,
            query: self.query.clone(),
        }))
    }
}

/// The reqwest client `object_store` would build from `options`, with the redirect policy of
/// this module and `headers` sent on every request.
fn reqwest_client(options: &ClientOptions, headers: HeaderMap) -> Result<reqwest::Client, String> {
    let get = |key| options.get_config_value(&key);
    let flag = |key| get(key).is_some_and(|v: String| v.eq_ignore_ascii_case("true"));
    let duration = |key| -> Result<Option<Duration>, String> {
        get(key)
            .map(|v: String| humantime::parse_duration(&v).map_err(|e| format!("{v:?}: {e}")))
            .transpose()
    };
    let mut builder = reqwest::ClientBuilder::new()
        .user_agent(
            get(ClientConfigKey::UserAgent)
                .unwrap_or_else(|| concat!("lsio_torch/", env!("CARGO_PKG_VERSION")).into()),
        )
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let first = attempt.previous().first().cloned();
            if attempt.previous().len() > MOST_REDIRECTS {
                attempt.error("too many redirects")
            } else if first.is_some_and(|f| f.origin() == attempt.url().origin()) {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
        // As object_store: compression would change the lengths ranges are checked against.
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .no_deflate()
        .https_only(!flag(ClientConfigKey::AllowHttp));
    if let Some(proxy) = get(ClientConfigKey::ProxyUrl) {
        let mut proxy = reqwest::Proxy::all(&proxy).map_err(|e| format!("proxy_url: {e}"))?;
        if let Some(excludes) = get(ClientConfigKey::ProxyExcludes) {
            proxy = proxy.no_proxy(reqwest::NoProxy::from_string(&excludes));
        }
        builder = builder.proxy(proxy);
    }
    if let Some(t) = duration(ClientConfigKey::Timeout)? {
        builder = builder.timeout(t);
    }
    if let Some(t) = duration(ClientConfigKey::ConnectTimeout)? {
        builder = builder.connect_timeout(t);
    }
    if let Some(t) = duration(ClientConfigKey::ReadTimeout)? {
        builder = builder.read_timeout(t);
    }
    if let Some(t) = duration(ClientConfigKey::PoolIdleTimeout)? {
        builder = builder.pool_idle_timeout(t);
    }
    if let Some(n) = get(ClientConfigKey::PoolMaxIdlePerHost) {
        let n = n
            .parse()
            .map_err(|_| format!("pool_max_idle_per_host: {n:?} is not a count"))?;
        builder = builder.pool_max_idle_per_host(n);
    }
    if flag(ClientConfigKey::Http1Only) {
        builder = builder.http1_only();
    }
    if flag(ClientConfigKey::Http2Only) {
        builder = builder.http2_prior_knowledge();
    }
    if flag(ClientConfigKey::AllowInvalidCertificates) {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|e| e.to_string())
}

#[derive(Debug)]
struct Careful {
    inner: reqwest::Client,
    query: Option<String>,
}

#[async_trait]
impl HttpService for Careful {
    async fn call(&self, mut req: HttpRequest) -> Result<HttpResponse, HttpError> {
        if let Some(query) = &self.query {
            *req.uri_mut() = with_query(req.uri(), query)?;
        }
        let from = origin(&req.uri().to_string());
        let response = HttpService::call(&self.inner, req).await?;
        let status = response.status();
        if status.is_redirection() {
            let to = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "nowhere".to_string(), origin);
            // Not a failure to retry: the answer will not change.
            return Err(HttpError::new(
                HttpErrorKind::Unknown,
                Refused(format!(
                    "the server redirected the request from {from} to another origin, {to}: \
                     refused (credentials are never sent to another origin, and object \
                     stores do not redirect reads)"
                )),
            ));
        }
        if !(status.is_client_error() || status.is_server_error()) {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let body = head_of(body).await;
        Ok(HttpResponse::from_parts(
            parts,
            HttpResponseBody::from(error_summary(&body)),
        ))
    }
}

/// An error of this module's own, shown as its message.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// `uri` with `query` added to its own.
fn with_query(uri: &Uri, query: &str) -> Result<Uri, HttpError> {
    let text = uri.to_string();
    let joined = if uri.query().is_some() {
        format!("{text}&{query}")
    } else {
        format!("{text}?{query}")
    };
    joined
        .parse()
        .map_err(|e| HttpError::new(HttpErrorKind::Request, e))
}

/// The scheme, host and port of a URL, for messages.
fn origin(url: &str) -> String {
    url::Url::parse(url).map_or_else(
        |_| "an unparsable URL".to_string(),
        |u| u.origin().ascii_serialization(),
    )
}

/// At most [`ERROR_BODY_BYTES`] of a body, as text.
async fn head_of(body: HttpResponseBody) -> String {
    let mut stream = body.bytes_stream();
    let mut head = Vec::new();
    while let Some(Ok(piece)) = stream.next().await {
        let room = ERROR_BODY_BYTES - head.len();
        head.extend_from_slice(&piece[..piece.len().min(room)]);
        if head.len() >= ERROR_BODY_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// What an error body may show: the store's error code and request id (S3 and Azure XML,
/// Google's JSON), and nothing else of it.
fn error_summary(body: &str) -> String {
    static FIELDS: LazyLock<Vec<(&str, Regex)>> = LazyLock::new(|| {
        [
            ("code", r"<Code>\s*([A-Za-z0-9_.\-]{1,64})\s*</Code>"),
            (
                "code",
                r#""(?:code|status)"\s*:\s*"?([A-Za-z0-9_.\-]{1,64})"?"#,
            ),
            (
                "request id",
                r"<RequestId>\s*([A-Za-z0-9_.\-]{1,128})\s*</RequestId>",
            ),
        ]
        .into_iter()
        .map(|(name, re)| (name, Regex::new(re).unwrap_or_else(|e| unreachable!("{e}"))))
        .collect()
    });
    let mut shown: Vec<String> = Vec::new();
    for (name, re) in FIELDS.iter() {
        if shown.iter().any(|s| s.starts_with(name)) {
            continue;
        }
        if let Some(found) = re.captures(body).and_then(|c| c.get(1)) {
            shown.push(format!("{name} {}", found.as_str()));
        }
    }
    if shown.is_empty() {
        "(the body is not shown)".into()
    } else {
        format!("{} (the rest of the body is not shown)", shown.join(", "))
    }
}

/// `text` with the value of every URL query parameter and the password of every URL's user
/// info replaced by `***`: what messages and reprs show of URLs that carry tokens.
#[must_use]
pub fn redact(text: &str) -> String {
    static QUERY: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"([?&][^=&?#\s"'<>]+=)[^&#\s"'<>]*"#).unwrap_or_else(|e| unreachable!("{e}"))
    });
    static PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(://[^/:@\s]+:)[^/@\s]+@").unwrap_or_else(|e| unreachable!("{e}"))
    });
    let text = QUERY.replace_all(text, "${1}***");
    PASSWORD.replace_all(&text, "${1}***@").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_passwords_are_redacted_and_the_rest_kept() {
        let url = "https://h:8/a.zarr/c/0?X-Amz-Signature=abc&sig=d%3D&flag";
        assert_eq!(
            redact(&format!("GET {url} failed")),
            "GET https://h:8/a.zarr/c/0?X-Amz-Signature=***&sig=***&flag failed"
        );
        assert_eq!(redact("s3://u:pw@b/a"), "s3://u:***@b/a");
        assert_eq!(
            redact("/data/a.zarr: no zarr.json"),
            "/data/a.zarr: no zarr.json"
        );
    }

    #[test]
    fn an_error_body_shows_its_code_and_request_id_only() {
        let s3 = "<Error><Code>SignatureDoesNotMatch</Code><Message>m</Message>\
                  <CanonicalRequest>x-amz-security-token:TOKEN</CanonicalRequest>\
                  <RequestId>4442587FB7D0A2F9</RequestId></Error>";
        let shown = error_summary(s3);
        assert_eq!(
            shown,
            "code SignatureDoesNotMatch, request id 4442587FB7D0A2F9 (the rest of the body is \
             not shown)"
        );
        assert_eq!(error_summary("TOKEN"), "(the body is not shown)");
    }

    #[test]
    fn a_query_is_added_to_the_requests_own() {
        let uri: Uri = "http://h/a.zarr/zarr.json".parse().unwrap();
        assert_eq!(
            with_query(&uri, "token=t").unwrap().to_string(),
            "http://h/a.zarr/zarr.json?token=t"
        );
        let uri: Uri = "http://h/a?x=1".parse().unwrap();
        assert_eq!(
            with_query(&uri, "token=t").unwrap().to_string(),
            "http://h/a?x=1&token=t"
        );
    }
}
