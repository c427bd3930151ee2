//! Where an array or group lives: a local directory, or a prefix of an object store. Its
//! metadata is read through here; its chunks through the engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::references::{Entry, ReferenceSet};
use crate::error::{Error, Result};
use crate::io::remote::{self, is_url, Expected, RemoteStore, Wanted};

#[derive(Clone, Debug)]
pub enum Location {
    Local(PathBuf),
    Remote(Arc<RemoteStore>),
    /// A group or array of a reference set: the set, and the prefix of its keys (`""` at
    /// the root, else ending in `/`).
    References(Arc<ReferenceSet>, String),
}

impl Location {
    /// A local path, or a URL of an object store (`s3://`, `gs://`, `az://`, `http(s)://`)
    /// with its `storage_options`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a URL or option that does not parse, or options given
    /// for a local path.
    pub fn parse(path: &str, options: &[(String, String)]) -> Result<Self> {
        if is_url(path) {
            return Ok(Self::Remote(Arc::new(RemoteStore::parse(path, options)?)));
        }
        if let Some((key, _)) = options.first() {
            return Err(Error::InvalidArgument(format!(
                "{path}: storage option {key:?} given for a local path (storage_options are for \
                 s3://, gs://, az:// and http(s):// URLs)"
            )));
        }
        Ok(Self::Local(PathBuf::from(path)))
    }

    /// The path or URL, for messages (a URL as a path: `s3://bucket/a.zarr/c/0`).
    #[must_use]
    pub fn path(&self) -> PathBuf {
        match self {
            Self::Local(path) => path.clone(),
            Self::Remote(store) => PathBuf::from(&store.url),
            Self::References(set, prefix) => {
                PathBuf::from(&set.url).join(prefix.trim_end_matches('/'))
            }
        }
    }

    /// The member `name` of this group: a name of `/`-separated segments, each neither empty
    /// nor `.` nor `..`, so that no member (a variable asked for, or one a consolidated
    /// `.zmetadata`/`zarr.json` lists) leaves the group.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the group and the member for any other name.
    pub fn join(&self, name: &str) -> Result<Self> {
        let inside = !name.is_empty()
            && !name.contains('\0')
            && name.split('/').all(|s| !matches!(s, "" | "." | ".."));
        if !inside {
            return Err(Error::InvalidArgument(format!(
                "{}: member {name:?} is not a name inside the group (a name of '/'-separated \
                 parts, none of them empty, '.' or '..', not starting with '/')",
                self.path().display()
            )));
        }
        Ok(match self {
            Self::Local(path) => Self::Local(path.join(name)),
            Self::Remote(store) => Self::Remote(Arc::new(store.child(name))),
            Self::References(set, prefix) => {
                Self::References(Arc::clone(set), format!("{prefix}{name}/"))
            }
        })
    }

    /// The bytes of `key` (`zarr.json`, `.zarray`...), or `None` when there is no such file
    /// or object.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file or object when it cannot be read.
    pub fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read_at_most(key, remote::MAX_METADATA_BYTES)
    }

    /// Like [`Location::read`], for a file of up to `at_most` bytes from an object store.
    ///
    /// # Errors
    /// As [`Location::read`].
    pub fn read_at_most(&self, key: &str, at_most: u64) -> Result<Option<Vec<u8>>> {
        let path = self.path().join(key);
        match self {
            Self::Local(dir) => match std::fs::read(dir.join(key)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(path, "reading metadata", e)),
            },
            Self::Remote(store) => {
                let fetched = remote::on_this_thread(async {
                    let client = store.build()?;
                    let one = Semaphore::new(1);
                    let part = store.settings.part_bytes;
                    let key = store.key(key);
                    let whole = Wanted::Whole { at_most };
                    remote::get(client.as_ref(), &key, whole, part, &one, &Expected::ANY)
                        .await
                        .map_err(|e| Error::io(&path, "reading metadata", e))
                })??;
                Ok(fetched.map(|f| f.bytes.to_vec()))
            }
            Self::References(set, prefix) => match set.get(&format!("{prefix}{key}"))? {
                None => Ok(None),
                Some(Entry::Inline(bytes)) => Ok(Some(bytes.to_vec())),
                Some(_) => Err(Error::Unsupported {
                    path,
                    detail: "metadata held by reference, not inline".into(),
                }),
            },
        }
    }

    /// Whether the local directory exists (always true of a URL: an object store has no
    /// directories to look for).
    #[must_use]
    pub fn exists(&self) -> bool {
        match self {
            Self::Local(path) => path.exists(),
            Self::Remote(_) | Self::References(..) => true,
        }
    }

    /// The local directory, if this is one.
    #[must_use]
    pub fn local(&self) -> Option<&Path> {
        match self {
            Self::Local(path) => Some(path),
            Self::Remote(_) | Self::References(..) => None,
        }
    }

    /// The object stores chunks are fetched from: this one, or those a reference set's
    /// targets may be in (numbered as its targets name them). Empty for a local array.
    #[must_use]
    pub fn stores(&self) -> &[Arc<RemoteStore>] {
        match self {
            Self::Local(_) => &[],
            Self::Remote(store) => std::slice::from_ref(store),
            Self::References(set, _) => set.stores(),
        }
    }

    /// The first of [`Location::stores`]: whether chunks are fetched from an object store at
    /// all, and the settings (request bounds) they are fetched with.
    #[must_use]
    pub fn remote(&self) -> Option<&Arc<RemoteStore>> {
        self.stores().first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_local_and_a_url_is_remote() {
        let local = Location::parse("/data/era5.zarr", &[]).unwrap();
        assert_eq!(local.local(), Some(Path::new("/data/era5.zarr")));
        assert!(local.remote().is_none());
        let remote = Location::parse("http://127.0.0.1:9/era5.zarr", &[]).unwrap();
        assert!(remote.local().is_none() && remote.remote().is_some());
        assert_eq!(remote.path(), PathBuf::from("http://127.0.0.1:9/era5.zarr"));
        assert!(
            remote.exists(),
            "an object store has no directories to look for"
        );
    }

    #[test]
    fn storage_options_for_a_local_path_are_refused_naming_the_key_not_the_value() {
        let options = [("secret_access_key".to_string(), "SECRETVALUE".to_string())];
        let e = Location::parse("/data/era5.zarr", &options).unwrap_err();
        let message = e.to_string();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert!(message.contains("\"secret_access_key\""), "{message}");
        assert!(!message.contains("SECRETVALUE"), "{message}");
    }

    #[test]
    fn members_join_the_path_and_metadata_reads_back_or_is_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("t2m")).unwrap();
        std::fs::write(dir.path().join("t2m/zarr.json"), b"{}").unwrap();
        let group = Location::parse(dir.path().to_str().unwrap(), &[]).unwrap();
        let member = group.join("t2m").unwrap();
        assert_eq!(member.path(), dir.path().join("t2m"));
        assert_eq!(member.read("zarr.json").unwrap(), Some(b"{}".to_vec()));
        assert_eq!(member.read(".zarray").unwrap(), None);
        assert!(member.exists() && !group.join("u10").unwrap().exists());
        for outside in ["../x", "/etc", "a//b", "", ".", "a/../../x"] {
            let e = group.join(outside).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{outside}: {e:?}");
        }
        assert!(group.join("nested/t2m").is_ok());
        // A key that is a directory cannot be read: an error naming it, not None.
        let e = group.read("t2m").unwrap_err().to_string();
        assert!(e.contains("t2m") && e.contains("reading metadata"), "{e}");
    }
}
