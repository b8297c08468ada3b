//! Turning platform datasets named in a run spec into local files the trainer can read.
//!
//! A `dataset_id` source is replaced by `{path, format: "canonical"}` pointing at a copy of the
//! dataset's canonical file in the local cache. Cached files are named by their sha256 and
//! verified when downloaded, so a cache entry is either complete and correct or absent.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mpl_protocol::RunSpec;
use mpl_protocol::spec::{DataFormat, DataSource};
use mpl_storage::Storage;
use sqlx::PgPool;
use uuid::Uuid;

/// Why a spec's data could not be made local.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct UnusableDataset {
    /// The spec field naming the dataset (`data.labeled`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Replaces every `dataset_id` source of `spec` by the path of its canonical file, downloading
/// it into `cache_dir` when it is not cached yet.
pub async fn resolve_sources(
    pool: &PgPool,
    storage: &Storage,
    cache_dir: &Path,
    spec: &mut RunSpec,
) -> anyhow::Result<()> {
    let data = &mut spec.data;
    let sources = [
        ("data.labeled", Some(&mut data.labeled)),
        ("data.unlabeled", data.unlabeled.as_mut()),
        ("data.eval", data.eval.as_mut()),
    ];
    for (field, source) in sources {
        let Some(source) = source else { continue };
        let Some(dataset_id) = source.dataset_id else {
            continue;
        };
        let path = fetch_canonical(pool, storage, cache_dir, field, dataset_id).await?;
        *source = DataSource {
            dataset_id: None,
            path: Some(path.display().to_string()),
            labels_path: None,
            format: Some(DataFormat::Canonical),
        };
    }
    Ok(())
}

async fn fetch_canonical(
    pool: &PgPool,
    storage: &Storage,
    cache_dir: &Path,
    field: &str,
    dataset_id: Uuid,
) -> anyhow::Result<PathBuf> {
    let unusable = |reason: String| UnusableDataset {
        field: field.to_owned(),
        reason,
    };
    let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT status, canonical_key, canonical_sha256 FROM datasets WHERE id = $1",
    )
    .bind(dataset_id)
    .fetch_optional(pool)
    .await?;
    let Some((status, key, sha256)) = row else {
        return Err(unusable(format!("dataset {dataset_id} does not exist")).into());
    };
    let (Some(key), Some(sha256)) = (key, sha256) else {
        let reason = format!("dataset {dataset_id} is {status}, not ready");
        return Err(unusable(reason).into());
    };
    if status != "ready" {
        return Err(unusable(format!("dataset {dataset_id} is {status}, not ready")).into());
    }
    if !is_hex_digest(&sha256) {
        bail!("dataset {dataset_id} has a malformed canonical_sha256 {sha256:?}");
    }

    let path = cache_dir.join("datasets").join(format!("{sha256}.mpld"));
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Ok(path);
    }
    tokio::fs::create_dir_all(path.parent().unwrap_or(cache_dir))
        .await
        .with_context(|| {
            format!(
                "cannot create the dataset cache under {}",
                cache_dir.display()
            )
        })?;
    storage
        .download_to_file(&key, &path, Some(&sha256))
        .await
        .with_context(|| format!("downloading dataset {dataset_id} ({key}) for {field}"))?;
    tracing::info!(%dataset_id, path = %path.display(), "dataset cached");
    Ok(path)
}

/// True for a lower-case hex sha256 (safe to use as a file name).
pub fn is_hex_digest(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
