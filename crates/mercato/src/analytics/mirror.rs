//! The marts mirrored to object storage (`--analytics-store`:
//! `s3://bucket/prefix` for S3 and S3-compatible stores, `file:///path` for
//! a directory), through `object_store`, so engines on other machines
//! (DuckDB, ClickHouse, Trino) read them where they are, in the same layout.
//!
//! The local directory stays the marts' truth (reports read it, and its
//! commit is what makes an export exactly once); the store follows it. After
//! each run the files the run published or compacted are uploaded, the
//! manifest last, then the files a compaction stands for are deleted. After
//! a restart, or a run whose mirroring failed, the whole directory is
//! compared with the store (name and size: a published file never changes)
//! and made so. A reader of the store that filters by the manifest, as
//! `Layout::visible` does, never sees an uncommitted row.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreScheme, PutPayload};

use super::files::{files_under, Changes};

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("analytics store {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("analytics store {url}: {source}")]
    Store {
        url: String,
        source: object_store::Error,
    },
    #[error(transparent)]
    Files(#[from] super::files::FilesError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Uploads at once: object stores answer each request in tens of ms.
const CONCURRENCY: usize = 16;

/// An object store the marts are mirrored to.
#[derive(Clone)]
pub struct Mirror {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    pub url: String,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("url", &self.url).finish()
    }
}

impl Mirror {
    /// The store a URL names. S3's credentials, region and endpoint come
    /// from the usual `AWS_*` variables (`AWS_ENDPOINT` and
    /// `AWS_ALLOW_HTTP=true` for MinIO and other S3-compatible servers).
    pub fn open(url: &str) -> Result<Mirror, MirrorError> {
        let bad = |reason: String| MirrorError::Url {
            url: url.to_owned(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(e.to_string()))?;
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => Arc::new(LocalFileSystem::new()),
            ObjectStoreScheme::AmazonS3 => Arc::new(
                AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            _ => {
                return Err(bad(
                    "only s3://bucket/prefix and file:///directory are supported".into(),
                ))
            }
        };
        Ok(Mirror {
            store,
            prefix,
            url: url.to_owned(),
        })
    }

    fn store_error(&self) -> impl Fn(object_store::Error) -> MirrorError + '_ {
        move |source| MirrorError::Store {
            url: self.url.clone(),
            source,
        }
    }

    fn location(&self, relative: &FsPath) -> Path {
        relative
            .components()
            .filter_map(|c| c.as_os_str().to_str())
            .fold(self.prefix.clone(), |path, part| path.child(part))
    }

    /// Uploads the files a run wrote (the manifests last), then deletes
    /// what it removed.
    pub async fn apply(&self, dir: &FsPath, changes: &Changes) -> Result<usize, MirrorError> {
        let sent = self
            .upload_manifests_last(dir, changes.written.iter())
            .await?;
        let removed = changes.removed.iter().map(|p| self.location(p)).collect();
        self.delete(removed).await?;
        Ok(sent)
    }

    /// Makes the store hold what the directory holds: uploads what is
    /// missing or differs in size, the manifests last, and deletes mart
    /// files the directory no longer has. Returns the files uploaded.
    pub async fn sync_all(&self, dir: &FsPath) -> Result<usize, MirrorError> {
        let local = mirrored_files(dir)?;
        let remote: HashMap<Path, u64> = match self
            .store
            .list(Some(&self.prefix))
            .map_ok(|meta| (meta.location, meta.size))
            .try_collect()
            .await
        {
            Ok(remote) => remote,
            Err(object_store::Error::NotFound { .. }) => HashMap::new(),
            Err(e) => return Err(self.store_error()(e)),
        };
        let mut wanted = std::collections::HashSet::new();
        let mut stale = Vec::new();
        for (relative, size) in &local {
            let location = self.location(relative);
            if remote.get(&location) != Some(size) {
                stale.push(relative);
            }
            wanted.insert(location);
        }
        let sent = self.upload_manifests_last(dir, stale.into_iter()).await?;
        let extra = remote.into_keys().filter(|location| {
            !wanted.contains(location)
                && location
                    .filename()
                    .is_some_and(|name| is_mart_file(FsPath::new(name)))
        });
        self.delete(extra.collect::<Vec<_>>()).await?;
        Ok(sent)
    }

    /// Uploads mart files, then the manifests that make them visible.
    async fn upload_manifests_last(
        &self,
        dir: &FsPath,
        files: impl Iterator<Item = &PathBuf>,
    ) -> Result<usize, MirrorError> {
        let (manifests, parts): (Vec<&PathBuf>, Vec<&PathBuf>) =
            files.partition(|p| is_manifest(p));
        Ok(self.upload(dir, parts).await? + self.upload(dir, manifests).await?)
    }

    async fn upload(&self, dir: &FsPath, files: Vec<&PathBuf>) -> Result<usize, MirrorError> {
        // Collected first: a lazy map's closure in the future makes it not
        // `Send` for every lifetime, which `tokio::spawn` needs.
        let sends: Vec<_> = files
            .into_iter()
            .map(|relative| {
                let (store, url) = (self.store.clone(), self.url.clone());
                let (path, location) = (dir.join(relative), self.location(relative));
                async move {
                    let bytes = match tokio::fs::read(&path).await {
                        Ok(bytes) => bytes,
                        // Compacted away later in the same run: its removal follows.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                        Err(source) => return Err(MirrorError::Io { path, source }),
                    };
                    store
                        .put(&location, PutPayload::from(bytes))
                        .await
                        .map_err(|source| MirrorError::Store { url, source })?;
                    Ok::<usize, MirrorError>(1)
                }
            })
            .collect();
        let sent: Vec<usize> = futures_util::stream::iter(sends)
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        Ok(sent.into_iter().sum())
    }

    async fn delete(&self, locations: Vec<Path>) -> Result<(), MirrorError> {
        let deletes: Vec<_> = locations
            .into_iter()
            .map(|location| {
                let (store, url) = (self.store.clone(), self.url.clone());
                async move {
                    match store.delete(&location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(source) => Err(MirrorError::Store { url, source }),
                    }
                }
            })
            .collect();
        futures_util::stream::iter(deletes)
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

fn is_manifest(path: &FsPath) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("manifest-") && n.ends_with(".json"))
}

/// A committed mart file or a manifest (not a temporary file, not staging).
fn is_mart_file(path: &FsPath) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    is_manifest(path) || (name.ends_with(".parquet") && !name.starts_with('.'))
}

/// The directory's committed files and their sizes, relative to it.
fn mirrored_files(dir: &FsPath) -> Result<Vec<(PathBuf, u64)>, MirrorError> {
    let mut files = Vec::new();
    for path in files_under(dir)? {
        let Ok(relative) = path.strip_prefix(dir) else {
            continue;
        };
        if relative.starts_with("_staging") || !is_mart_file(&path) {
            continue;
        }
        let size = std::fs::metadata(&path)
            .map_err(|source| MirrorError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        files.push((relative.to_owned(), size));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_s3_and_directories_are_stores() {
        assert!(Mirror::open("file:///tmp/marts").is_ok());
        assert!(Mirror::open("s3://bucket/marts").is_ok());
        for url in ["gs://bucket/marts", "ftp://host/marts", "not a url"] {
            let err = Mirror::open(url).expect_err(url).to_string();
            assert!(
                err.starts_with(&format!("analytics store {url}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_location_keeps_the_layout_under_the_prefix() {
        let mirror = Mirror::open("file:///srv/marts").expect("a store");
        let at = mirror.location(FsPath::new(
            "fact_order_lines/merchant=m1/day=2026-01-02/main-1-2-0.parquet",
        ));
        assert_eq!(
            at.as_ref(),
            "srv/marts/fact_order_lines/merchant=m1/day=2026-01-02/main-1-2-0.parquet"
        );
        assert!(is_mart_file(FsPath::new("manifest-main.json")));
        assert!(!is_mart_file(FsPath::new("manifest-main.json.tmp")));
        assert!(!is_mart_file(FsPath::new(".main-1-2-c.parquet.tmp")));
    }
}
