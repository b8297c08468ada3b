//! Checkpoints of runs: listing, metadata, and file downloads streamed from storage with
//! `ETag` (the file's sha256), `Content-Length`, `Accept-Ranges` and single `Range` requests.
//!
//! The exported student (`student.export.safetensors`) and its model card (`model_card.json`)
//! are files of `best` and `final` checkpoints, stored by the scheduler; they are served the
//! same way. A file is found by its name in the checkpoint's recorded file list, so a request can
//! only reach objects the platform stored for that checkpoint.

use std::ops::Range;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use mpl_protocol::CheckpointFile;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};

/// The exported student's file name within a checkpoint.
pub const EXPORT_FILE: &str = "student.export.safetensors";
/// The model card's file name within a checkpoint.
pub const MODEL_CARD_FILE: &str = "model_card.json";

/// The checkpoint routes, to be nested under `/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_checkpoints))
        .routes(routes!(get_checkpoint))
        .routes(routes!(download_file))
        .routes(routes!(download_export))
        .routes(routes!(get_model_card))
}

/// A stored checkpoint of a run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Checkpoint {
    /// Its id.
    pub id: Uuid,
    /// The run it belongs to.
    pub run_id: Uuid,
    /// The attempt that wrote it.
    pub attempt: i32,
    /// The training step it captures.
    pub step: i64,
    /// `latest`, `best` or `final`.
    pub kind: String,
    /// Its files, each downloadable at `files/{name}`.
    pub files: Vec<CheckpointFile>,
    /// Total bytes of its files.
    pub size_bytes: i64,
    /// The run's metrics at that step.
    #[schema(value_type = Object)]
    pub metrics: Value,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    id: Uuid,
    run_id: Uuid,
    attempt: i32,
    step: i64,
    kind: String,
    files: Value,
    storage_prefix: String,
    size_bytes: i64,
    metrics: Value,
    created_at: DateTime<Utc>,
}

const CHECKPOINT_COLUMNS: &str =
    "id, run_id, attempt, step, kind, files, storage_prefix, size_bytes, metrics, created_at";

impl CheckpointRow {
    fn files(&self) -> ApiResult<Vec<CheckpointFile>> {
        serde_json::from_value(self.files.clone()).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!(
                "checkpoint {} has unreadable files: {e}",
                self.id
            ))
        })
    }

    fn into_checkpoint(self) -> ApiResult<Checkpoint> {
        Ok(Checkpoint {
            files: self.files()?,
            id: self.id,
            run_id: self.run_id,
            attempt: self.attempt,
            step: self.step,
            kind: self.kind,
            size_bytes: self.size_bytes,
            metrics: self.metrics,
            created_at: self.created_at,
        })
    }
}

async fn fetch_row(db: &PgPool, id: Uuid) -> ApiResult<CheckpointRow> {
    sqlx::query_as::<_, CheckpointRow>(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("checkpoint"))
}

/// The checkpoints of a run, newest step first.
#[utoipa::path(get, path = "/runs/{id}/checkpoints", tag = "checkpoints",
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "Its checkpoints", body = Vec<Checkpoint>),
        (status = 404, description = "No such run", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn list_checkpoints(
    State(state): State<AppState>,
    _caller: Caller,
    Path(run_id): Path<Uuid>,
) -> ApiResult<Json<Vec<Checkpoint>>> {
    let run: Option<Uuid> = sqlx::query_scalar("SELECT id FROM runs WHERE id = $1")
        .bind(run_id)
        .fetch_optional(&state.db)
        .await?;
    if run.is_none() {
        return Err(ApiError::NotFound("run"));
    }
    let rows = sqlx::query_as::<_, CheckpointRow>(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE run_id = $1 AND deleted_at IS NULL \
         ORDER BY step DESC, created_at DESC"
    ))
    .bind(run_id)
    .fetch_all(&state.db)
    .await?;
    let checkpoints = rows
        .into_iter()
        .map(CheckpointRow::into_checkpoint)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(checkpoints))
}

/// One checkpoint.
#[utoipa::path(get, path = "/checkpoints/{id}", tag = "checkpoints",
    params(("id" = Uuid, Path, description = "Checkpoint id")),
    responses(
        (status = 200, description = "The checkpoint", body = Checkpoint),
        (status = 404, description = "No such checkpoint", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn get_checkpoint(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Checkpoint>> {
    Ok(Json(fetch_row(&state.db, id).await?.into_checkpoint()?))
}

/// Downloads one file of a checkpoint, streamed; supports one `Range` and `If-None-Match`.
#[utoipa::path(get, path = "/checkpoints/{id}/files/{name}", tag = "checkpoints",
    params(
        ("id" = Uuid, Path, description = "Checkpoint id"),
        ("name" = String, Path, description = "File name, as listed in `files`"),
        ("Range" = Option<String>, Header, description = "`bytes=START-END`, one range"),
    ),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream",
            body = Vec<u8>),
        (status = 206, description = "The requested range", content_type =
            "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Unchanged (If-None-Match)"),
        (status = 404, description = "No such checkpoint or file", body = Problem,
            content_type = "application/problem+json"),
        (status = 416, description = "The range is outside the file", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn download_file(
    State(state): State<AppState>,
    _caller: Caller,
    Path((id, name)): Path<(Uuid, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    serve_file(&state, id, &name, &headers, "application/octet-stream").await
}

/// Downloads the exported student (safetensors) of a `best` or `final` checkpoint.
#[utoipa::path(get, path = "/checkpoints/{id}/export", tag = "checkpoints",
    params(("id" = Uuid, Path, description = "Checkpoint id")),
    responses(
        (status = 200, description = "The exported student", content_type =
            "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such checkpoint, or it has no export", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn download_export(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    serve_file(
        &state,
        id,
        EXPORT_FILE,
        &headers,
        "application/octet-stream",
    )
    .await
}

/// The model card of an exported student: architecture, classes, normalisation, training
/// summary.
#[utoipa::path(get, path = "/checkpoints/{id}/model-card", tag = "checkpoints",
    params(("id" = Uuid, Path, description = "Checkpoint id")),
    responses(
        (status = 200, description = "The model card", body = Object),
        (status = 404, description = "No such checkpoint, or it has no export", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn get_model_card(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    serve_file(&state, id, MODEL_CARD_FILE, &headers, "application/json").await
}

/// Streams `name` of checkpoint `id`, honouring `If-None-Match` and one `Range`.
async fn serve_file(
    state: &AppState,
    id: Uuid,
    name: &str,
    headers: &HeaderMap,
    content_type: &'static str,
) -> ApiResult<Response> {
    let row = fetch_row(&state.db, id).await?;
    let file = row
        .files()?
        .into_iter()
        .find(|f| f.name == name)
        .ok_or(ApiError::NotFound("checkpoint file"))?;
    let etag = format!("\"{}\"", file.sha256);
    if etag_matches(headers, &etag) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        insert_header(&mut response, header::ETAG, &etag);
        return Ok(response);
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(text) => match parse_range(text, file.size_bytes) {
            RangeRequest::Ignore => None,
            RangeRequest::Satisfiable(range) => Some(range),
            RangeRequest::Unsatisfiable => return Ok(unsatisfiable(file.size_bytes)),
        },
    };
    let key = format!("{}/{}", row.storage_prefix, file.name);
    let (_, stream) = state.storage.get_stream(&key, range.clone()).await?;

    let (status, length) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.end - r.start),
        None => (StatusCode::OK, file.size_bytes),
    };
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    insert_header(&mut response, header::CONTENT_TYPE, content_type);
    insert_header(&mut response, header::CONTENT_LENGTH, &length.to_string());
    insert_header(&mut response, header::ACCEPT_RANGES, "bytes");
    insert_header(&mut response, header::ETAG, &etag);
    let disposition = format!("attachment; filename=\"{}\"", safe_filename(&file.name));
    insert_header(&mut response, header::CONTENT_DISPOSITION, &disposition);
    if let Some(r) = &range {
        let content_range = format!("bytes {}-{}/{}", r.start, r.end - 1, file.size_bytes);
        insert_header(&mut response, header::CONTENT_RANGE, &content_range);
    }
    Ok(response)
}

fn insert_header(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn safe_filename(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' && *c != '/')
        .collect()
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

fn unsatisfiable(size: u64) -> Response {
    let problem = ApiError::BadRequest(format!("the range is outside the file of {size} bytes"));
    let mut response = problem.into_response();
    *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
    insert_header(
        &mut response,
        header::CONTENT_RANGE,
        &format!("bytes */{size}"),
    );
    response
}

/// What a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// Not a single byte range this server understands; answer with the whole file.
    Ignore,
    /// Bytes `start..end` of the file.
    Satisfiable(Range<u64>),
    /// A range that does not overlap the file.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` or `bytes=-n` against a file of `size` bytes.
fn parse_range(text: &str, size: u64) -> RangeRequest {
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignore;
    };
    if spec.contains(',') {
        return RangeRequest::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Ignore;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    let range = match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, true) => return RangeRequest::Ignore,
        (true, false) => match parse(last) {
            Some(0) => return RangeRequest::Unsatisfiable,
            Some(n) => size.saturating_sub(n)..size,
            None => return RangeRequest::Ignore,
        },
        (false, true) => match parse(first) {
            Some(start) => start..size,
            None => return RangeRequest::Ignore,
        },
        (false, false) => match (parse(first), parse(last)) {
            (Some(start), Some(end)) if start <= end => start..end.saturating_add(1).min(size),
            _ => return RangeRequest::Ignore,
        },
    };
    if range.start >= size || range.is_empty() {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Satisfiable(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_describes() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-99", 1000), Satisfiable(0..100));
        assert_eq!(parse_range("bytes=900-", 1000), Satisfiable(900..1000));
        assert_eq!(parse_range("bytes=-100", 1000), Satisfiable(900..1000));
        assert_eq!(parse_range("bytes=-5000", 1000), Satisfiable(0..1000));
        assert_eq!(parse_range("bytes=990-5000", 1000), Satisfiable(990..1000));
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 1000), Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ignore);
        assert_eq!(parse_range("items=0-1", 1000), Ignore);
        assert_eq!(parse_range("bytes=a-b", 1000), Ignore);
    }

    #[test]
    fn download_names_cannot_break_the_header() {
        assert_eq!(safe_filename("a\"b/c\\d e.bin"), "abcde.bin");
    }
}
