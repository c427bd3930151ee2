//! Icechunk repositories, read through the `icechunk` crate at one version (a branch's tip, a
//! tag or a snapshot): the metadata of each node, and where each chunk's bytes are (inline, a
//! range of one of the repository's `chunks/` objects, or a range of a virtual target). The
//! engine reads the bytes itself, as it reads any reference set's.
//!
//! The repository is opened in each process that asks (a runtime of its own, made on first
//! use): nothing runs before then, and a forked worker never uses its parent's.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use icechunk::format::manifest::{Checksum, ChunkPayload};
use icechunk::format::{ChunkIndices, Path as NodePath, SnapshotId};
use icechunk::repository::VersionInfo;
use icechunk::session::Session;
use icechunk::storage::{S3Credentials, S3Options, S3StaticCredentials};
use icechunk::{Repository, Storage};

use super::references::{Check, Entry, Targets};
use crate::error::{Error, Result};
use crate::io::remote::{is_url, redact};

/// Which version of a repository is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    Branch(String),
    Tag(String),
    Snapshot(String),
}

impl Version {
    /// How `repr(ds)` and messages name it: `branch main`, `tag v1`, `snapshot 1CEC…`.
    #[must_use]
    pub fn shown(&self) -> String {
        match self {
            Self::Branch(name) => format!("branch {name}"),
            Self::Tag(name) => format!("tag {name}"),
            Self::Snapshot(id) => format!("snapshot {id}"),
        }
    }
}

/// A repository at one version.
pub(super) struct IcechunkKeys {
    url: String,
    options: Vec<(String, String)>,
    shown: String,
    version: Version,
    opened: Mutex<Option<Opened>>,
}

impl std::fmt::Debug for IcechunkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IcechunkKeys({} at {})",
            self.shown,
            self.version.shown()
        )
    }
}

/// The repository's session in this process, and the runtime its calls run on.
struct Opened {
    pid: u32,
    runtime: tokio::runtime::Runtime,
    session: Session,
}

impl IcechunkKeys {
    /// The repository at `url` (a local folder, an `http(s)://` or `s3://` URL, with the
    /// store's `options`) at `version`: opened
    /// now, so that a repository or version that does not exist is an error at once.
    ///
    /// # Errors
    /// [`Error::NotFound`] for no repository at `url`, [`Error::InvalidArgument`] for a
    /// version it does not have, [`Error::Unsupported`] for a URL scheme not read yet.
    pub(super) fn open(url: &str, options: &[(String, String)], version: Version) -> Result<Self> {
        let keys = Self {
            url: url.to_string(),
            options: options.to_vec(),
            shown: redact(url),
            version,
            opened: Mutex::new(None),
        };
        keys.with_session(|_, _| Ok(()))?;
        Ok(keys)
    }

    /// Runs `body` with this process's session (opened now where it is not yet).
    fn with_session<T>(
        &self,
        body: impl FnOnce(&tokio::runtime::Runtime, &Session) -> Result<T>,
    ) -> Result<T> {
        let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = std::process::id();
        if opened.as_ref().is_none_or(|o| o.pid != pid) {
            // A parent's runtime is never used (nor dropped: its threads are not ours).
            if let Some(parent) = opened.take() {
                std::mem::forget(parent);
            }
            *opened = Some(self.open_here(pid)?);
        }
        let Some(opened) = opened.as_ref() else {
            return Err(Error::Stopped("internal error: no Icechunk session".into()));
        };
        body(&opened.runtime, &opened.session)
    }

    fn open_here(&self, pid: u32) -> Result<Opened> {
        // Its blocking threads (local files are read on them) end soon after each call, so
        // that none is left when the process forks its workers.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_keep_alive(std::time::Duration::from_millis(20))
            .build()
            .map_err(|e| Error::io(&self.shown, "starting the Icechunk runtime", e))?;
        let session = runtime.block_on(async {
            let storage = self.storage().await?;
            let repository = Repository::open(storage)
                .execute()
                .await
                .map_err(|e| self.open_error(&e))?;
            let version = match &self.version {
                Version::Branch(name) => VersionInfo::BranchTipRef(name.clone()),
                Version::Tag(name) => VersionInfo::TagRef(name.clone()),
                Version::Snapshot(id) => {
                    let id = SnapshotId::try_from(id.as_str()).map_err(|e| {
                        Error::InvalidArgument(format!(
                            "{}: snapshot {id:?} is not a snapshot id: {e}",
                            self.shown
                        ))
                    })?;
                    VersionInfo::SnapshotId(id)
                }
            };
            repository.readonly_session(&version).await.map_err(|e| {
                Error::InvalidArgument(format!(
                    "{}: no {} in the repository ({})",
                    self.shown,
                    self.version.shown(),
                    first_line(&e.to_string())
                ))
            })
        })?;
        Ok(Opened {
            pid,
            runtime,
            session,
        })
    }

    /// What a failure to open the repository is: no repository there (`FileNotFoundError`),
    /// or a store that could not be read (an IO error naming the repository and the cause).
    fn open_error(&self, e: &icechunk::repository::RepositoryError) -> Error {
        use icechunk::refs::RefErrorKind as Ref;
        use icechunk::repository::RepositoryErrorKind as Kind;
        use icechunk::storage::StorageErrorKind as Storage;
        let message = first_line(&e.to_string());
        match e.kind() {
            Kind::StorageError(Storage::ObjectNotFound)
            | Kind::Ref(Ref::Storage(Storage::ObjectNotFound) | Ref::RefNotFound(_))
            | Kind::RepositoryDoesntExist => Error::NotFound {
                path: PathBuf::from(&self.shown),
                what: format!("no Icechunk repository here ({message})"),
            },
            Kind::StorageError(_)
            | Kind::IOError(_)
            | Kind::Ref(Ref::Storage(_) | Ref::IOError(_)) => Error::io(
                &self.shown,
                "opening the Icechunk repository",
                std::io::Error::other(message),
            ),
            _ => Error::InvalidMetadata {
                path: PathBuf::from(&self.shown),
                reason: format!("not a readable Icechunk repository ({message})"),
            },
        }
    }

    async fn storage(&self) -> Result<Arc<dyn Storage + Send + Sync>> {
        let failed = |e: String| Error::InvalidArgument(format!("{}: {e}", self.shown));
        let lower = self.url.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return icechunk::storage::new_http_storage(&self.url, None, None)
                .map_err(|e| failed(e.to_string()));
        }
        if lower.starts_with("s3://") {
            return self.s3_storage().await;
        }
        if is_url(&self.url) {
            return Err(Error::Unsupported {
                path: PathBuf::from(&self.shown),
                detail: "Icechunk repositories are read from local folders, s3:// and \
                         http(s):// URLs for now"
                    .into(),
            });
        }
        let path = self.url.strip_prefix("file://").unwrap_or(&self.url);
        icechunk::new_local_filesystem_storage(std::path::Path::new(path))
            .await
            .map_err(|e| failed(e.to_string()))
    }

    /// An `s3://bucket/prefix` repository, with the `object_store` option names the rest of
    /// the engine takes (`endpoint`, `region`, `access_key_id`, `secret_access_key`,
    /// `session_token`, `allow_http`, `skip_signature`, `request_payer`); credentials not given come from the
    /// environment, as the icechunk package takes them.
    async fn s3_storage(&self) -> Result<Arc<dyn Storage + Send + Sync>> {
        let failed = |e: String| Error::InvalidArgument(format!("{}: {e}", self.shown));
        let rest = &self.url["s3://".len()..];
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let option = |names: &[&str]| {
            self.options.iter().find_map(|(k, v)| {
                let k = k.to_ascii_lowercase();
                names.iter().any(|n| k == *n).then(|| v.clone())
            })
        };
        let yes = |v: Option<String>| v.is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let mut config = S3Options::default();
        if let Some(region) = option(&["region", "aws_region"]) {
            config = config.with_region(region);
        }
        if let Some(endpoint) = option(&["endpoint", "aws_endpoint", "endpoint_url"]) {
            config = config
                .with_endpoint_url(endpoint)
                .with_force_path_style(true);
        }
        let anonymous = yes(option(&["skip_signature", "aws_skip_signature"]));
        config = config
            .with_allow_http(yes(option(&["allow_http"])))
            .with_requester_pays(yes(option(&["request_payer", "aws_request_payer"])))
            .with_anonymous(anonymous);
        let key = option(&["access_key_id", "aws_access_key_id"]);
        let secret = option(&["secret_access_key", "aws_secret_access_key"]);
        let credentials = match (anonymous, key, secret) {
            (true, ..) => S3Credentials::Anonymous,
            (false, Some(access_key_id), Some(secret_access_key)) => {
                S3Credentials::Static(S3StaticCredentials {
                    access_key_id,
                    secret_access_key,
                    session_token: option(&["session_token", "aws_session_token", "token"]),
                    expires_after: None,
                })
            }
            _ => S3Credentials::FromEnv,
        };
        let prefix = (!prefix.is_empty()).then(|| prefix.trim_end_matches('/').to_string());
        icechunk::new_s3_object_store_storage(
            config,
            bucket.to_string(),
            prefix,
            Some(credentials),
            Vec::new(),
            Vec::new(),
        )
        .await
        .map_err(|e| failed(first_line(&e.to_string())))
    }

    /// The metadata at `key` (`zarr.json` of the root, `t2m/zarr.json`), or `None`.
    pub(super) fn metadata(&self, key: &str) -> Result<Option<Entry>> {
        let Some(node) = key.strip_suffix("zarr.json") else {
            return Ok(None);
        };
        let path = node_path(node)?;
        self.with_session(|runtime, session| {
            use icechunk::session::SessionErrorKind as Kind;
            match runtime.block_on(session.get_node(&path)) {
                Ok(node) => Ok(Some(Entry::Inline(node.user_data.to_vec().into()))),
                // A node not there is no metadata; a snapshot that cannot be read is an error.
                Err(e) if matches!(e.kind(), Kind::NodeNotFound { .. }) => Ok(None),
                Err(e) => Err(Error::InvalidMetadata {
                    path: PathBuf::from(format!("{}/{}", self.shown, node.trim_matches('/'))),
                    reason: format!(
                        "reading its node from the snapshot: {}",
                        first_line(&e.to_string())
                    ),
                }),
            }
        })
    }

    /// Where each chunk of `chunks` (grid coordinates) of the array at `node` is: all looked
    /// up in one call on this process's runtime.
    pub(super) fn chunks(
        &self,
        node: &str,
        chunks: &[&[u64]],
        targets: &Targets,
    ) -> Result<Vec<Option<Entry>>> {
        let path = node_path(node)?;
        let shown = || PathBuf::from(format!("{}/{}", self.shown, node.trim_matches('/')));
        let payloads = self.with_session(|runtime, session| {
            runtime.block_on(async {
                let mut payloads = Vec::with_capacity(chunks.len());
                for coords in chunks {
                    let Ok(indices) = coords.iter().map(|&c| u32::try_from(c)).collect() else {
                        payloads.push(None);
                        continue;
                    };
                    let found = session.get_chunk_ref(&path, &ChunkIndices(indices)).await;
                    payloads.push(found.map_err(|e| Error::InvalidMetadata {
                        path: shown(),
                        reason: format!(
                            "the manifest of chunk {coords:?}: {}",
                            first_line(&e.to_string())
                        ),
                    })?);
                }
                Ok(payloads)
            })
        })?;
        payloads
            .into_iter()
            .map(|payload| self.entry(payload, targets))
            .collect()
    }

    /// The entry of one chunk's payload.
    fn entry(&self, payload: Option<ChunkPayload>, targets: &Targets) -> Result<Option<Entry>> {
        Ok(match payload {
            None => None,
            Some(ChunkPayload::Inline(bytes)) => Some(Entry::Inline(bytes.to_vec().into())),
            Some(ChunkPayload::Ref(chunk)) => Some(Entry::Range {
                target: targets.id(&format!("chunks/{}", chunk.id))?,
                offset: chunk.offset,
                len: chunk.length,
            }),
            Some(ChunkPayload::Virtual(chunk)) => Some(Entry::Range {
                target: targets.checked_id(chunk.location.url(), chunk.checksum.map(check_of))?,
                offset: chunk.offset,
                len: chunk.length,
            }),
            Some(other) => {
                return Err(Error::Unsupported {
                    path: PathBuf::from(&self.shown),
                    detail: format!("a chunk payload of a kind not read yet: {other:?}"),
                })
            }
        })
    }
}

/// What a virtual chunk's checksum asks of its target.
fn check_of(checksum: Checksum) -> Check {
    match checksum {
        Checksum::ETag(tag) => Check::ETag(tag.0),
        Checksum::LastModified(at) => Check::UnmodifiedSince(u64::from(at.0)),
    }
}

/// An Icechunk error's first line (the rest is a span trace).
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or(text).trim().to_string()
}

/// The node at `prefix` (`""` the root, `t2m/`), as Icechunk names it (`/`, `/t2m`).
fn node_path(prefix: &str) -> Result<NodePath> {
    let path = format!("/{}", prefix.trim_matches('/'));
    NodePath::try_from(path.as_str())
        .map_err(|e| Error::InvalidArgument(format!("{path}: not an Icechunk node path: {e}")))
}
