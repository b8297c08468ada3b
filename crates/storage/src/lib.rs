//! Object storage for the platform's bytes: uploaded dataset parts, canonical datasets and
//! checkpoint files.
//!
//! One [`Storage`] value fronts a local directory, an S3 (or S3-compatible) bucket, or memory
//! (for unit tests), chosen by URL. Writes stream: the body is never held whole in memory, its
//! sha256 is computed on the way through, and an upload that fails or grows past its limit leaves
//! nothing behind (the object appears only when the upload completes). Keys are built by the
//! platform from ids and hashes, never from names a user supplied; [`Storage`] still refuses keys
//! with empty, `.` or `..` segments so that no key can leave the storage root.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Bytes buffered per multipart part before it is sent (S3's minimum part size is 5 MiB).
const PART_SIZE_BYTES: usize = 8 * 1024 * 1024;

/// Parts of one upload that may be in flight at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// Read size when streaming a local file out.
const LOCAL_READ_CHUNK_BYTES: usize = 256 * 1024;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The storage URL could not be understood.
    #[error("storage URL {url:?} is not valid: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key had an empty, `.` or `..` segment, or was empty.
    #[error("storage key {0:?} is not valid")]
    InvalidKey(String),
    /// No object is stored under the key.
    #[error("no object is stored under {0:?}")]
    NotFound(String),
    /// The body grew past the allowed size; nothing was stored.
    #[error("the body is larger than the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit_bytes: u64,
    },
    /// The requested byte range does not lie within the object.
    #[error("range {start}..{end} is outside the object of {size} bytes")]
    InvalidRange {
        /// First byte requested.
        start: u64,
        /// One past the last byte requested.
        end: u64,
        /// Size of the object.
        size: u64,
    },
    /// Downloaded bytes did not hash to the expected value; the file was not written.
    #[error("object {key:?} has sha256 {actual}, expected {expected}")]
    HashMismatch {
        /// The key read.
        key: String,
        /// The expected lower-case hex sha256.
        expected: String,
        /// The hash of the bytes actually read.
        actual: String,
    },
    /// Reading the body that was being stored failed (e.g. the client went away).
    #[error("reading the body failed: {0}")]
    Body(#[source] io::Error),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The storage backend reported an error.
    #[error("object storage: {0}")]
    Backend(#[source] object_store::Error),
}

impl From<object_store::Error> for StorageError {
    fn from(err: object_store::Error) -> Self {
        match err {
            object_store::Error::NotFound { path, .. } => StorageError::NotFound(path),
            other => StorageError::Backend(other),
        }
    }
}

/// Result of a storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What was stored by a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// Bytes stored.
    pub size_bytes: u64,
    /// Lower-case hex sha256 of the bytes stored.
    pub sha256: String,
}

/// What is known about a stored object without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key it is stored under.
    pub key: String,
    /// Its full size in bytes.
    pub size_bytes: u64,
}

/// A stream of an object's bytes (or of a range of them).
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// The platform's object store.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// Set for a local directory, so reads can stream the file directly in large chunks.
    local_root: Option<PathBuf>,
    description: String,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("backend", &self.description)
            .finish()
    }
}

impl Storage {
    /// Opens the store a URL names.
    ///
    /// - `file:///abs/dir` (or `file://relative/dir`): a local directory, created if missing.
    /// - `s3://bucket[/prefix]`: an S3 bucket configured from `AWS_ACCESS_KEY_ID`,
    ///   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` and `AWS_ENDPOINT_URL` (plain http allowed, for
    ///   MinIO and other S3-compatible stores on a private network).
    /// - `memory://`: an in-memory store, for tests.
    pub fn from_url(url: &str) -> Result<Storage> {
        let invalid = |reason: &str| StorageError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(invalid("names no directory"));
            }
            return Storage::local(Path::new(dir));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("names no bucket"));
            }
            return Storage::s3(bucket, prefix.trim_matches('/')).map_err(|e| match e {
                StorageError::Backend(source) => invalid(&source.to_string()),
                other => other,
            });
        }
        if url == "memory://" || url == "memory:" {
            return Ok(Storage {
                store: Arc::new(InMemory::new()),
                local_root: None,
                description: "memory".into(),
            });
        }
        Err(invalid(
            "expected file://DIR, s3://BUCKET[/PREFIX] or memory://",
        ))
    }

    fn local(dir: &Path) -> Result<Storage> {
        let file_error = |source| StorageError::File {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(file_error)?;
        let root = std::fs::canonicalize(dir).map_err(file_error)?;
        let store = LocalFileSystem::new_with_prefix(&root)?.with_automatic_cleanup(true);
        Ok(Storage {
            store: Arc::new(store),
            description: format!("file://{}", root.display()),
            local_root: Some(root),
        })
    }

    fn s3(bucket: &str, prefix: &str) -> Result<Storage> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_allow_http(true);
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            builder = builder.with_endpoint(endpoint);
        }
        if std::env::var("AWS_REGION").is_err() {
            builder = builder.with_region("us-east-1");
        }
        let s3 = builder.build()?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Storage {
            store,
            local_root: None,
            description: format!("s3://{bucket}/{prefix}"),
        })
    }

    /// Streams `body` into `key`, replacing what was there only once the whole body is stored.
    ///
    /// The sha256 is computed while streaming. When the body ends in an error, or grows past
    /// `max_bytes`, the upload is aborted: nothing is stored and a previous object under `key`
    /// is untouched.
    pub async fn put_stream<S>(&self, key: &str, body: S, max_bytes: u64) -> Result<PutOutcome>
    where
        S: Stream<Item = io::Result<Bytes>> + Send,
    {
        let path = object_path(key)?;
        let upload = self.store.put_multipart(&path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE_BYTES);
        match copy_hashing(&mut writer, body, max_bytes).await {
            Ok(outcome) => {
                writer.finish().await?;
                tracing::debug!(key, size_bytes = outcome.size_bytes, "object stored");
                Ok(outcome)
            }
            Err(err) => {
                if let Err(abort_err) = writer.abort().await {
                    tracing::warn!(key, error = %abort_err, "aborting an upload failed");
                }
                Err(err)
            }
        }
    }

    /// Stores a local file under `key`.
    pub async fn put_file(&self, key: &str, file: &Path) -> Result<PutOutcome> {
        let handle = tokio::fs::File::open(file)
            .await
            .map_err(|source| StorageError::File {
                path: file.to_owned(),
                source,
            })?;
        let body = tokio_util::io::ReaderStream::with_capacity(handle, LOCAL_READ_CHUNK_BYTES);
        self.put_stream(key, body, u64::MAX).await
    }

    /// Size of the object under `key`.
    pub async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let meta = self.store.head(&object_path(key)?).await?;
        Ok(ObjectInfo {
            key: key.to_owned(),
            size_bytes: meta.size,
        })
    }

    /// Streams the object under `key`, or the bytes `range` of it.
    ///
    /// The range must be non-empty and lie within the object ([`StorageError::InvalidRange`]
    /// otherwise); the returned info always carries the object's full size.
    pub async fn get_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<(ObjectInfo, ByteStream)> {
        let path = object_path(key)?;
        let info = self.head(key).await?;
        let range = match range {
            Some(r) if r.start >= r.end || r.end > info.size_bytes => {
                return Err(StorageError::InvalidRange {
                    start: r.start,
                    end: r.end,
                    size: info.size_bytes,
                });
            }
            Some(r) => r,
            None => 0..info.size_bytes,
        };
        if let Some(root) = &self.local_root {
            let stream = local_range_stream(root.join(path.as_ref()), range).await?;
            return Ok((info, stream));
        }
        if range.is_empty() {
            return Ok((info, futures::stream::empty().boxed()));
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let result = self.store.get_opts(&path, options).await?;
        let stream = result.into_stream().map_err(io::Error::other).boxed();
        Ok((info, stream))
    }

    /// Reads the whole object under `key` into memory; for small objects (model cards, stats).
    pub async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        let result = self.store.get(&object_path(key)?).await?;
        Ok(result.bytes().await?)
    }

    /// Copies the object under `key` to `dest`, atomically: the bytes go to a temporary file
    /// beside `dest`, are hashed (and checked against `expected_sha256` when given), flushed,
    /// and only then renamed into place.
    pub async fn download_to_file(
        &self,
        key: &str,
        dest: &Path,
        expected_sha256: Option<&str>,
    ) -> Result<PutOutcome> {
        let temp = temp_path_beside(dest);
        let result = self.download_unchecked(key, &temp).await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(err) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(err);
            }
        };
        if let Some(expected) = expected_sha256
            && !expected.eq_ignore_ascii_case(&outcome.sha256)
        {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(StorageError::HashMismatch {
                key: key.to_owned(),
                expected: expected.to_owned(),
                actual: outcome.sha256,
            });
        }
        tokio::fs::rename(&temp, dest)
            .await
            .map_err(|source| StorageError::File {
                path: dest.to_owned(),
                source,
            })?;
        Ok(outcome)
    }

    async fn download_unchecked(&self, key: &str, temp: &Path) -> Result<PutOutcome> {
        let file_error = |source| StorageError::File {
            path: temp.to_owned(),
            source,
        };
        let (_, mut stream) = self.get_stream(key, None).await?;
        let mut file = tokio::fs::File::create(temp).await.map_err(file_error)?;
        let mut hasher = Sha256::new();
        let mut size_bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                StorageError::Backend(object_store::Error::Generic {
                    store: "read",
                    source: Box::new(e),
                })
            })?;
            hasher.update(&chunk);
            size_bytes += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(file_error)?;
        }
        file.flush().await.map_err(file_error)?;
        file.sync_all().await.map_err(file_error)?;
        Ok(PutOutcome {
            size_bytes,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// Deletes the object under `key`; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&object_path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(other) => Err(other.into()),
        }
    }

    /// Deletes every object whose key starts with `prefix/`; returns how many were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let prefix = object_path(prefix)?;
        let keys: Vec<ObjectPath> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        for key in &keys {
            match self.store.delete(key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(other) => return Err(other.into()),
            }
        }
        Ok(keys.len())
    }

    /// Keys (relative to the store's root) of every object under `prefix/`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let prefix = object_path(prefix)?;
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        Ok(metas
            .into_iter()
            .map(|meta| ObjectInfo {
                key: meta.location.to_string(),
                size_bytes: meta.size,
            })
            .collect())
    }
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// Checks a key's segments and turns it into a store path.
fn object_path(key: &str) -> Result<ObjectPath> {
    let bad_segment = |s: &str| s.is_empty() || s == "." || s == ".." || s.contains('\\');
    if key.is_empty() || key.split('/').any(bad_segment) {
        return Err(StorageError::InvalidKey(key.to_owned()));
    }
    ObjectPath::parse(key).map_err(|_| StorageError::InvalidKey(key.to_owned()))
}

/// Feeds `body` into the upload, hashing and counting; fails past `max_bytes`.
async fn copy_hashing<S>(writer: &mut WriteMultipart, body: S, max_bytes: u64) -> Result<PutOutcome>
where
    S: Stream<Item = io::Result<Bytes>> + Send,
{
    let mut body = std::pin::pin!(body);
    let mut hasher = Sha256::new();
    let mut size_bytes = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(StorageError::Body)?;
        size_bytes += chunk.len() as u64;
        if size_bytes > max_bytes {
            return Err(StorageError::TooLarge {
                limit_bytes: max_bytes,
            });
        }
        hasher.update(&chunk);
        writer.wait_for_capacity(UPLOAD_CONCURRENCY).await?;
        writer.put(chunk);
    }
    Ok(PutOutcome {
        size_bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Streams `range` of a local file in large chunks.
async fn local_range_stream(path: PathBuf, range: Range<u64>) -> Result<ByteStream> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    let file_error = |source| StorageError::File {
        path: path.clone(),
        source,
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(file_error)?;
    file.seek(io::SeekFrom::Start(range.start))
        .await
        .map_err(file_error)?;
    let limited = file.take(range.end - range.start);
    Ok(tokio_util::io::ReaderStream::with_capacity(limited, LOCAL_READ_CHUNK_BYTES).boxed())
}

/// A unique temporary path in the same directory as `dest` (so the final rename is atomic).
fn temp_path_beside(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.{}.partial", uuid::Uuid::new_v4()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_leave_the_root() {
        for key in ["", "..", "a/../b", "a//b", "./a", "a/", "a\\b"] {
            assert!(object_path(key).is_err(), "{key:?} was accepted");
        }
        assert!(object_path("datasets/1/images-abc").is_ok());
    }

    #[test]
    fn urls_are_checked() {
        assert!(Storage::from_url("ftp://x").is_err());
        assert!(Storage::from_url("file://").is_err());
        assert!(Storage::from_url("s3://").is_err());
        assert!(Storage::from_url("memory://").is_ok());
    }
}
