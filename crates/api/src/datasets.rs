//! Datasets: creation, streamed part uploads, background ingestion and sample images.
//!
//! A dataset moves `created -> uploaded -> ingesting -> ready | failed`. Its content arrives as
//! parts (`images` and, when labeled, `labels` for IDX; one `archive` for the other formats),
//! each a streamed request body stored under a fresh key, hashed on the way and held to
//! `MPL_MAX_UPLOAD_BYTES`. A part is recorded only once all its bytes are stored, so a failed or
//! oversized upload leaves the previous part as it was. Ingestion starts by itself once every
//! required part is there: it runs the trainer's own parsers (`mpl-data`) on the parts, writes
//! the canonical form under `datasets/<id>/canonical-<sha256>.mpld`, and records the statistics,
//! or records the parser's message as the failure reason.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mpl_data::{DatasetStats, ImageSet};
use mpl_protocol::spec::DataFormat;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, JsonBody, Problem};

/// Longest accepted dataset name, in characters.
const MAX_NAME_CHARS: usize = 200;
/// Default and largest number of samples listed at once.
const DEFAULT_SAMPLES: usize = 16;
const MAX_SAMPLES: usize = 100;
/// Thumbnails are scaled up so that small images (28 x 28) are visible.
const THUMBNAIL_SCALE: u32 = 4;
/// Decoded datasets kept in memory for sample requests.
const SAMPLE_CACHE_ENTRIES: usize = 2;

/// The dataset routes, to be nested under `/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_dataset, list_datasets))
        .routes(routes!(get_dataset, delete_dataset))
        .routes(routes!(upload_part))
        .routes(routes!(start_ingestion))
        .routes(routes!(list_samples))
        .routes(routes!(sample_image))
}

/// Whether images carry class labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// Every image has a class.
    Labeled,
    /// Images only.
    Unlabeled,
}

/// File formats a dataset can be uploaded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadFormat {
    /// IDX files of the MNIST family (gzip or raw): parts `images` and `labels`.
    Idx,
    /// CIFAR-10 binary batches in a tar / tar.gz: part `archive`.
    Cifar10,
    /// CIFAR-100 binary batches in a tar / tar.gz: part `archive`.
    Cifar100,
    /// PNG / JPEG images in a tar, tar.gz or zip, one folder per class: part `archive`.
    ImageFolder,
}

impl UploadFormat {
    fn as_str(self) -> &'static str {
        match self {
            UploadFormat::Idx => "idx",
            UploadFormat::Cifar10 => "cifar10",
            UploadFormat::Cifar100 => "cifar100",
            UploadFormat::ImageFolder => "image_folder",
        }
    }

    fn parse(text: &str) -> Option<UploadFormat> {
        match text {
            "idx" => Some(UploadFormat::Idx),
            "cifar10" => Some(UploadFormat::Cifar10),
            "cifar100" => Some(UploadFormat::Cifar100),
            "image_folder" => Some(UploadFormat::ImageFolder),
            _ => None,
        }
    }

    fn data_format(self) -> DataFormat {
        match self {
            UploadFormat::Idx => DataFormat::Idx,
            UploadFormat::Cifar10 => DataFormat::Cifar10,
            UploadFormat::Cifar100 => DataFormat::Cifar100,
            UploadFormat::ImageFolder => DataFormat::ImageFolder,
        }
    }

    /// The parts a dataset of this format and kind needs before it can be ingested.
    fn required_parts(self, kind: DatasetKind) -> &'static [&'static str] {
        match (self, kind) {
            (UploadFormat::Idx, DatasetKind::Labeled) => &["images", "labels"],
            (UploadFormat::Idx, DatasetKind::Unlabeled) => &["images"],
            _ => &["archive"],
        }
    }
}

/// A request to create a dataset.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDataset {
    /// A name for people.
    pub name: String,
    /// Whether the images carry labels.
    pub kind: DatasetKind,
    /// The format the content will be uploaded in.
    pub format: UploadFormat,
}

/// One uploaded part, as stored in the `parts` column.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredPart {
    part: String,
    key: String,
    size_bytes: u64,
    sha256: String,
    #[serde(default)]
    uploaded_at: Option<DateTime<Utc>>,
}

/// One uploaded part of a dataset.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DatasetPart {
    /// `images`, `labels` or `archive`.
    pub part: String,
    /// Bytes uploaded.
    pub size_bytes: u64,
    /// Lower-case hex sha256 of the uploaded bytes.
    pub sha256: String,
    /// When the upload completed.
    pub uploaded_at: Option<DateTime<Utc>>,
}

/// A dataset.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Dataset {
    /// Its id; run specs name it as `dataset_id`.
    pub id: Uuid,
    /// A name for people.
    pub name: String,
    /// Whether the images carry labels.
    pub kind: DatasetKind,
    /// The upload format.
    pub format: UploadFormat,
    /// `created`, `uploaded`, `ingesting`, `ready` or `failed`.
    pub status: String,
    /// Why ingestion failed (the parser's message), when it did.
    pub failure_reason: Option<String>,
    /// The parts uploaded so far.
    pub parts: Vec<DatasetPart>,
    /// The parts still needed before ingestion can start.
    pub missing_parts: Vec<String>,
    /// Count, shape, classes and per-class counts, once ready.
    pub stats: Option<DatasetStats>,
    /// sha256 of the canonical form the trainer reads, once ready.
    pub canonical_sha256: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct DatasetRow {
    id: Uuid,
    name: String,
    kind: String,
    format: String,
    status: String,
    failure_reason: Option<String>,
    parts: Value,
    canonical_key: Option<String>,
    canonical_sha256: Option<String>,
    stats: Option<Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const DATASET_COLUMNS: &str = "id, name, kind, format, status, failure_reason, parts, \
    canonical_key, canonical_sha256, stats, created_at, updated_at";

impl DatasetRow {
    fn kind(&self) -> ApiResult<DatasetKind> {
        match self.kind.as_str() {
            "labeled" => Ok(DatasetKind::Labeled),
            "unlabeled" => Ok(DatasetKind::Unlabeled),
            other => Err(anyhow::anyhow!("dataset {} has unknown kind {other:?}", self.id).into()),
        }
    }

    fn format(&self) -> ApiResult<UploadFormat> {
        UploadFormat::parse(&self.format).ok_or_else(|| {
            anyhow::anyhow!("dataset {} has unknown format {:?}", self.id, self.format).into()
        })
    }

    fn stored_parts(&self) -> ApiResult<Vec<StoredPart>> {
        serde_json::from_value(self.parts.clone()).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!(
                "dataset {} has unreadable parts: {e}",
                self.id
            ))
        })
    }

    fn missing_parts(&self) -> ApiResult<Vec<String>> {
        let parts = self.stored_parts()?;
        let required = self.format()?.required_parts(self.kind()?);
        Ok(required
            .iter()
            .filter(|name| !parts.iter().any(|p| p.part == **name))
            .map(|name| (*name).to_owned())
            .collect())
    }

    fn into_dataset(self) -> ApiResult<Dataset> {
        let parts = self
            .stored_parts()?
            .into_iter()
            .map(|p| DatasetPart {
                part: p.part,
                size_bytes: p.size_bytes,
                sha256: p.sha256,
                uploaded_at: p.uploaded_at,
            })
            .collect();
        let stats = match &self.stats {
            Some(value) => Some(serde_json::from_value(value.clone()).map_err(|e| {
                ApiError::Internal(anyhow::anyhow!(
                    "dataset {} has unreadable stats: {e}",
                    self.id
                ))
            })?),
            None => None,
        };
        Ok(Dataset {
            kind: self.kind()?,
            format: self.format()?,
            missing_parts: self.missing_parts()?,
            id: self.id,
            name: self.name,
            status: self.status,
            failure_reason: self.failure_reason,
            parts,
            stats,
            canonical_sha256: self.canonical_sha256,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

async fn fetch_row(db: &PgPool, id: Uuid) -> ApiResult<DatasetRow> {
    sqlx::query_as::<_, DatasetRow>(&format!(
        "SELECT {DATASET_COLUMNS} FROM datasets WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("dataset"))
}

/// Creates a dataset; upload its parts next.
#[utoipa::path(post, path = "/datasets", tag = "datasets",
    request_body = NewDataset,
    responses(
        (status = 201, description = "Created; upload its parts next", body = Dataset),
        (status = 422, description = "Invalid fields", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn create_dataset(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(new): JsonBody<NewDataset>,
) -> ApiResult<(StatusCode, Json<Dataset>)> {
    caller.require_write()?;
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid_field(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    let id = Uuid::now_v7();
    let kind = match new.kind {
        DatasetKind::Labeled => "labeled",
        DatasetKind::Unlabeled => "unlabeled",
    };
    sqlx::query("INSERT INTO datasets (id, name, kind, format) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(name)
        .bind(kind)
        .bind(new.format.as_str())
        .execute(&state.db)
        .await?;
    tracing::info!(dataset_id = %id, format = new.format.as_str(), kind, "dataset created");
    let dataset = fetch_row(&state.db, id).await?.into_dataset()?;
    Ok((StatusCode::CREATED, Json(dataset)))
}

/// Lists every dataset, newest first.
#[utoipa::path(get, path = "/datasets", tag = "datasets",
    responses((status = 200, description = "Every dataset", body = Vec<Dataset>)))]
async fn list_datasets(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<Vec<Dataset>>> {
    let rows = sqlx::query_as::<_, DatasetRow>(&format!(
        "SELECT {DATASET_COLUMNS} FROM datasets ORDER BY created_at DESC, id DESC"
    ))
    .fetch_all(&state.db)
    .await?;
    let datasets = rows
        .into_iter()
        .map(DatasetRow::into_dataset)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(datasets))
}

/// One dataset, with its parts, status and statistics.
#[utoipa::path(get, path = "/datasets/{id}", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id")),
    responses(
        (status = 200, description = "The dataset", body = Dataset),
        (status = 404, description = "No such dataset", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn get_dataset(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Dataset>> {
    Ok(Json(fetch_row(&state.db, id).await?.into_dataset()?))
}

/// Deletes a dataset and its stored bytes; refused while a queued or running run uses it.
#[utoipa::path(delete, path = "/datasets/{id}", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such dataset", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "A queued or running run uses it", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn delete_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    caller.require_write()?;
    let mut tx = state.db.begin().await?;
    let exists: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM datasets WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Err(ApiError::NotFound("dataset"));
    }
    let users: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM runs WHERE status IN ('queued', 'running') AND $1 IN ( \
             spec #>> '{data,labeled,dataset_id}', spec #>> '{data,unlabeled,dataset_id}', \
             spec #>> '{data,eval,dataset_id}') LIMIT 5",
    )
    .bind(id.to_string())
    .fetch_all(&mut *tx)
    .await?;
    if !users.is_empty() {
        let ids: Vec<String> = users.iter().map(Uuid::to_string).collect();
        return Err(ApiError::Conflict(format!(
            "the dataset is used by queued or running runs: {}",
            ids.join(", ")
        )));
    }
    sqlx::query("DELETE FROM datasets WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if let Err(err) = state.storage.delete_prefix(&format!("datasets/{id}")).await {
        tracing::warn!(dataset_id = %id, error = %err, "deleting a dataset's bytes failed");
    }
    tracing::info!(dataset_id = %id, "dataset deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Uploads one part of a dataset as the raw request body (streamed; never held in memory).
///
/// Re-uploading a part replaces it once the new upload is complete. When every required part is
/// present, ingestion starts by itself.
#[utoipa::path(put, path = "/datasets/{id}/parts/{part}", tag = "datasets",
    params(
        ("id" = Uuid, Path, description = "Dataset id"),
        ("part" = String, Path, description = "`images` or `labels` (idx), `archive` (others)"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The part's bytes"),
    responses(
        (status = 200, description = "Stored; the dataset as it is now", body = Dataset),
        (status = 400, description = "The upload broke off", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No such dataset", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "The dataset is being ingested", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "The part exceeds MPL_MAX_UPLOAD_BYTES", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "This format has no such part", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn upload_part(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, part)): Path<(Uuid, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Dataset>> {
    caller.require_write()?;
    let row = fetch_row(&state.db, id).await?;
    let format = row.format()?;
    let required = format.required_parts(row.kind()?);
    if !required.contains(&part.as_str()) {
        return Err(ApiError::invalid_field(
            "part",
            format!(
                "a {} {} dataset has the parts {}",
                row.kind,
                format.as_str(),
                required.join(", ")
            ),
        ));
    }
    if row.status == "ingesting" {
        return Err(ApiError::Conflict(
            "the dataset is being ingested; upload again when it is ready or failed".into(),
        ));
    }
    let max_bytes = state.config.max_upload_bytes;
    if declared_length(&headers).is_some_and(|len| len > max_bytes) {
        return Err(ApiError::PayloadTooLarge(max_bytes));
    }

    let key = format!("datasets/{id}/parts/{part}-{}", Uuid::new_v4().simple());
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let stored = state.storage.put_stream(&key, stream, max_bytes).await;
    let outcome = match stored {
        Ok(outcome) => outcome,
        Err(err) => {
            tracing::info!(dataset_id = %id, part, error = %err, "part upload refused");
            return Err(err.into());
        }
    };
    let new_part = StoredPart {
        part: part.clone(),
        key,
        size_bytes: outcome.size_bytes,
        sha256: outcome.sha256,
        uploaded_at: Some(Utc::now()),
    };
    let replaced = record_part(&state, id, new_part.clone()).await;
    let replaced = match replaced {
        Ok(replaced) => replaced,
        Err(err) => {
            let _ = state.storage.delete(&new_part.key).await;
            return Err(err);
        }
    };
    if let Some(old) = replaced
        && let Err(err) = state.storage.delete(&old.key).await
    {
        tracing::warn!(dataset_id = %id, error = %err, "deleting a replaced part failed");
    }
    tracing::info!(dataset_id = %id, part, size_bytes = new_part.size_bytes, "part stored");

    let row = fetch_row(&state.db, id).await?;
    if row.missing_parts()?.is_empty() && row.status == "uploaded" {
        begin_ingestion(&state, id).await?;
    }
    Ok(Json(fetch_row(&state.db, id).await?.into_dataset()?))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Records an uploaded part (replacing one of the same name) and returns the one replaced.
async fn record_part(
    state: &AppState,
    id: Uuid,
    part: StoredPart,
) -> ApiResult<Option<StoredPart>> {
    let mut tx = state.db.begin().await?;
    let row: Option<(String, Value)> =
        sqlx::query_as("SELECT status, parts FROM datasets WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((status, parts)) = row else {
        return Err(ApiError::NotFound("dataset"));
    };
    if status == "ingesting" {
        return Err(ApiError::Conflict(
            "the dataset started ingesting during the upload; upload again later".into(),
        ));
    }
    let mut parts: Vec<StoredPart> = serde_json::from_value(parts)
        .map_err(|e| anyhow::anyhow!("dataset {id} has unreadable parts: {e}"))?;
    let replaced = parts
        .iter()
        .position(|p| p.part == part.part)
        .map(|i| parts.remove(i));
    parts.push(part);
    parts.sort_by(|a, b| a.part.cmp(&b.part));
    let parts = serde_json::to_value(&parts).map_err(anyhow::Error::from)?;
    sqlx::query(
        "UPDATE datasets SET parts = $2, status = 'uploaded', failure_reason = NULL, \
         updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(parts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(replaced)
}

/// (Re)starts ingestion of a dataset whose parts are all uploaded.
#[utoipa::path(post, path = "/datasets/{id}/ingest", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id")),
    responses(
        (status = 202, description = "Ingestion started", body = Dataset),
        (status = 404, description = "No such dataset", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "Parts are missing, or it is already ingesting",
            body = Problem, content_type = "application/problem+json"),
    ))]
async fn start_ingestion(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<(StatusCode, Json<Dataset>)> {
    caller.require_write()?;
    let row = fetch_row(&state.db, id).await?;
    let missing = row.missing_parts()?;
    if !missing.is_empty() {
        return Err(ApiError::Conflict(format!(
            "upload the missing parts first: {}",
            missing.join(", ")
        )));
    }
    if !begin_ingestion(&state, id).await? {
        return Err(ApiError::Conflict(
            "the dataset is already being ingested".into(),
        ));
    }
    let dataset = fetch_row(&state.db, id).await?.into_dataset()?;
    Ok((StatusCode::ACCEPTED, Json(dataset)))
}

/// Marks the dataset `ingesting` and starts the work in the background; false when it already
/// was ingesting.
async fn begin_ingestion(state: &AppState, id: Uuid) -> ApiResult<bool> {
    let claimed = sqlx::query(
        "UPDATE datasets SET status = 'ingesting', failure_reason = NULL, updated_at = now() \
         WHERE id = $1 AND status <> 'ingesting'",
    )
    .bind(id)
    .execute(&state.db)
    .await?;
    if claimed.rows_affected() == 0 {
        return Ok(false);
    }
    spawn_ingestion(state.clone(), id);
    Ok(true)
}

fn spawn_ingestion(state: AppState, id: Uuid) {
    let span = tracing::info_span!("ingesting a dataset", dataset_id = %id);
    tokio::spawn(
        async move {
            if let Err(err) = ingest(&state, id).await {
                tracing::error!(error = ?err, "ingestion could not record its result");
            }
        }
        .instrument(span),
    );
}

/// Restarts ingestions that a previous process left in the `ingesting` state.
pub async fn resume_interrupted_ingestions(state: &AppState) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM datasets WHERE status = 'ingesting'")
        .fetch_all(&state.db)
        .await?;
    for id in ids {
        tracing::info!(dataset_id = %id, "resuming an interrupted ingestion");
        spawn_ingestion(state.clone(), id);
    }
    Ok(())
}

/// The result of parsing a dataset: what to record.
struct Ingested {
    stats: DatasetStats,
    canonical_key: String,
    canonical_sha256: String,
}

/// Runs one ingestion to its end and records `ready` or `failed`.
async fn ingest(state: &AppState, id: Uuid) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let outcome = parse_and_store(state, id).await;
    match outcome {
        Ok(ingested) => {
            let stats = serde_json::to_value(&ingested.stats)?;
            let previous: Option<String> =
                sqlx::query_scalar("SELECT canonical_key FROM datasets WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&state.db)
                    .await?
                    .flatten();
            let recorded = sqlx::query(
                "UPDATE datasets SET status = 'ready', stats = $2, canonical_key = $3, \
                 canonical_sha256 = $4, failure_reason = NULL, updated_at = now() \
                 WHERE id = $1 AND status = 'ingesting'",
            )
            .bind(id)
            .bind(stats)
            .bind(&ingested.canonical_key)
            .bind(&ingested.canonical_sha256)
            .execute(&state.db)
            .await?;
            if recorded.rows_affected() == 1
                && let Some(old_key) = previous
                && old_key != ingested.canonical_key
            {
                let _ = state.storage.delete(&old_key).await;
            }
            tracing::info!(dataset_id = %id, count = ingested.stats.count,
                elapsed_ms = started.elapsed().as_millis() as u64, "dataset ready");
        }
        Err(reason) => {
            tracing::info!(dataset_id = %id, reason, "dataset ingestion failed");
            sqlx::query(
                "UPDATE datasets SET status = 'failed', failure_reason = $2, updated_at = now() \
                 WHERE id = $1 AND status = 'ingesting'",
            )
            .bind(id)
            .bind(reason)
            .execute(&state.db)
            .await?;
        }
    }
    Ok(())
}

/// Downloads the parts, parses them with `mpl-data`, and stores the canonical form. The error
/// is the message to show the user.
async fn parse_and_store(state: &AppState, id: Uuid) -> Result<Ingested, String> {
    let internal = |what: &str, err: &dyn std::fmt::Display| {
        tracing::error!(dataset_id = %id, error = %err, "{what}");
        format!("{what}; see the server log")
    };
    let row = fetch_row(&state.db, id)
        .await
        .map_err(|e| internal("reading the dataset failed", &e))?;
    let format = row.format().map_err(|e| internal("bad dataset row", &e))?;
    let kind = row.kind().map_err(|e| internal("bad dataset row", &e))?;
    let parts = row
        .stored_parts()
        .map_err(|e| internal("bad dataset row", &e))?;
    let work_dir = tempfile::Builder::new()
        .prefix("ingest-")
        .tempdir_in(
            ensure_dir(&state.config.data_dir.join("tmp"))
                .map_err(|e| internal("creating a working directory failed", &e))?,
        )
        .map_err(|e| internal("creating a working directory failed", &e))?;

    let mut local: HashMap<String, PathBuf> = HashMap::new();
    for part in &parts {
        let path = work_dir.path().join(&part.part);
        state
            .storage
            .download_to_file(&part.key, &path, Some(&part.sha256))
            .await
            .map_err(|e| internal("reading an uploaded part failed", &e))?;
        local.insert(part.part.clone(), path);
    }

    let canonical_path = work_dir.path().join("canonical.mpld");
    let (stats, sha256) = tokio::task::spawn_blocking({
        let canonical_path = canonical_path.clone();
        move || parse_to_canonical(format, kind, &local, &canonical_path)
    })
    .await
    .map_err(|e| internal("the parser stopped unexpectedly", &e))??;

    let canonical_key = format!("datasets/{id}/canonical-{sha256}.mpld");
    state
        .storage
        .put_file(&canonical_key, &canonical_path)
        .await
        .map_err(|e| internal("storing the canonical dataset failed", &e))?;
    Ok(Ingested {
        stats,
        canonical_key,
        canonical_sha256: sha256,
    })
}

fn ensure_dir(dir: &FsPath) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    Ok(dir.to_owned())
}

/// Parses the local parts and writes the canonical file; returns its stats and sha256.
fn parse_to_canonical(
    format: UploadFormat,
    kind: DatasetKind,
    parts: &HashMap<String, PathBuf>,
    canonical_path: &FsPath,
) -> Result<(DatasetStats, String), String> {
    let main_part = match format {
        UploadFormat::Idx => "images",
        _ => "archive",
    };
    let main = parts
        .get(main_part)
        .ok_or_else(|| format!("the {main_part} part is missing"))?;
    let labels = match (format, kind) {
        (UploadFormat::Idx, DatasetKind::Labeled) => Some(
            parts
                .get("labels")
                .ok_or_else(|| "the labels part is missing".to_owned())?
                .as_path(),
        ),
        _ => None,
    };
    // Messages name the part (`images: ...`), not the server's working directory.
    let work_dir = canonical_path.parent().map(|d| format!("{}/", d.display()));
    let user_message = |e: mpl_data::DataError| match &work_dir {
        Some(dir) => e.to_string().replace(dir.as_str(), ""),
        None => e.to_string(),
    };
    let mut set = mpl_data::load(format.data_format(), main, labels).map_err(user_message)?;
    match kind {
        DatasetKind::Labeled if set.labels.is_none() => {
            return Err("the upload carries no labels, but the dataset is labeled".into());
        }
        DatasetKind::Unlabeled => {
            set.labels = None;
            set.num_classes = 0;
            set.class_names.clear();
        }
        DatasetKind::Labeled => {}
    }
    if set.is_empty() {
        return Err("the upload holds no images".into());
    }
    mpl_data::canonical::write(canonical_path, &set).map_err(|e| e.to_string())?;
    let sha256 = sha256_file(canonical_path).map_err(|e| format!("reading back failed: {e}"))?;
    Ok((set.stats(), sha256))
}

fn sha256_file(path: &FsPath) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// How many samples to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SampleQuery {
    /// Number of samples, 1 to 100 (default 16), spread evenly over the dataset.
    pub count: Option<usize>,
}

/// One sample image of a dataset.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Sample {
    /// Position of the image in the dataset; fetch it at `samples/{index}`.
    pub index: u64,
    /// Its class, for labeled datasets.
    pub label: Option<u32>,
}

/// A few samples spread over a ready dataset.
#[utoipa::path(get, path = "/datasets/{id}/samples", tag = "datasets",
    params(("id" = Uuid, Path, description = "Dataset id"), SampleQuery),
    responses(
        (status = 200, description = "Samples", body = Vec<Sample>),
        (status = 404, description = "No such dataset", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "The dataset is not ready", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "Bad count", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn list_samples(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
    Query(query): Query<SampleQuery>,
) -> ApiResult<Json<Vec<Sample>>> {
    let count = query.count.unwrap_or(DEFAULT_SAMPLES);
    if !(1..=MAX_SAMPLES).contains(&count) {
        return Err(ApiError::invalid_field(
            "count",
            format!("must be 1 to {MAX_SAMPLES}"),
        ));
    }
    let set = load_ready_set(&state, id).await?;
    let total = set.len();
    let count = count.min(total);
    let samples = (0..count)
        .map(|i| {
            let index = i * total / count;
            Sample {
                index: index as u64,
                label: set.labels.as_ref().map(|labels| labels[index]),
            }
        })
        .collect();
    Ok(Json(samples))
}

/// One image of a ready dataset as PNG (scaled up for small images).
#[utoipa::path(get, path = "/datasets/{id}/samples/{index}", tag = "datasets",
    params(
        ("id" = Uuid, Path, description = "Dataset id"),
        ("index" = u64, Path, description = "Image position"),
    ),
    responses(
        (status = 200, description = "The image", content_type = "image/png", body = Vec<u8>),
        (status = 404, description = "No such dataset or image", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "The dataset is not ready", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn sample_image(
    State(state): State<AppState>,
    _caller: Caller,
    Path((id, index)): Path<(Uuid, u64)>,
) -> ApiResult<Response> {
    let set = load_ready_set(&state, id).await?;
    let index = usize::try_from(index).map_err(|_| ApiError::NotFound("image"))?;
    if index >= set.len() {
        return Err(ApiError::NotFound("image"));
    }
    let png =
        tokio::task::spawn_blocking(move || mpl_data::thumbnail::png(&set, index, THUMBNAIL_SCALE))
            .await
            .map_err(anyhow::Error::from)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        png,
    )
        .into_response())
}

/// Decoded canonical datasets, by sha256, most recently used last.
static SAMPLE_CACHE: Mutex<Vec<(String, Arc<ImageSet>)>> = Mutex::new(Vec::new());

/// The decoded images of a ready dataset, from the cache or from storage.
async fn load_ready_set(state: &AppState, id: Uuid) -> ApiResult<Arc<ImageSet>> {
    let row = fetch_row(&state.db, id).await?;
    let (Some(key), Some(sha256)) = (row.canonical_key, row.canonical_sha256) else {
        return Err(ApiError::Conflict(format!(
            "the dataset is {}, not ready",
            row.status
        )));
    };
    if let Some(set) = cached_set(&sha256) {
        return Ok(set);
    }
    let dir = ensure_dir(&state.config.data_dir.join("tmp")).map_err(anyhow::Error::from)?;
    let file = tempfile::NamedTempFile::new_in(&dir).map_err(anyhow::Error::from)?;
    state
        .storage
        .download_to_file(&key, file.path(), Some(&sha256))
        .await?;
    let set = tokio::task::spawn_blocking(move || mpl_data::canonical::read(file.path()))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(|e| anyhow::anyhow!("stored canonical dataset {key} is unreadable: {e}"))?;
    let set = Arc::new(set);
    remember_set(sha256, set.clone());
    Ok(set)
}

fn cached_set(sha256: &str) -> Option<Arc<ImageSet>> {
    let cache = SAMPLE_CACHE.lock().unwrap_or_else(|p| p.into_inner());
    cache
        .iter()
        .find(|(key, _)| key == sha256)
        .map(|(_, set)| set.clone())
}

fn remember_set(sha256: String, set: Arc<ImageSet>) {
    let mut cache = SAMPLE_CACHE.lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|(key, _)| *key != sha256);
    cache.push((sha256, set));
    while cache.len() > SAMPLE_CACHE_ENTRIES {
        cache.remove(0);
    }
}
