//! Runs: submission (validated by the trainer's own spec code), listing with filters and cursor
//! pagination, progress and queue position, cancel, retry, attempts and log lines.
//!
//! Every status change the api makes is written as a `status` row of `run_events` and announced
//! with `NOTIFY mpl_run_status` (and `mpl_events`), so event streams and schedulers hear of it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use mpl_protocol::{FieldError, RunSpec, SpecError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

/// Default number of runs on one page of `GET /v1/runs`.
const DEFAULT_PAGE: i64 = 50;
/// Largest page of `GET /v1/runs`.
const MAX_PAGE: i64 = 500;
/// Longest accepted run name, in characters.
const MAX_NAME_CHARS: usize = 200;
/// Largest `max_attempts` a run may ask for.
const MAX_ATTEMPTS_LIMIT: i32 = 100;
/// Longest accepted `Idempotency-Key`, in bytes.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 200;
/// Default and largest number of log lines per `GET /v1/runs/{id}/logs`.
const DEFAULT_LOG_LINES: i64 = 1_000;
const MAX_LOG_LINES: i64 = 10_000;

/// The run routes, to be nested under `/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit_run, list_runs))
        .routes(routes!(get_run))
        .routes(routes!(cancel_run))
        .routes(routes!(retry_run))
        .routes(routes!(list_attempts))
        .routes(routes!(list_logs))
}

/// Where a run is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    /// The name stored in `runs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored or requested status name.
    pub fn parse(text: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the run will never change again (unless retried).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// Where training stands, as last reported by the trainer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub step: i64,
    pub total_steps: i64,
    /// `mpl`, `uda`, `supervised` or `finetune`; null before the first report.
    pub phase: Option<String>,
    /// `step / total_steps`, in [0, 1].
    pub fraction: f64,
    pub images_per_sec: Option<f64>,
    /// Estimated seconds to completion; null when not running.
    pub eta_secs: Option<f64>,
}

/// A training run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: Uuid,
    pub experiment_id: Option<Uuid>,
    pub name: String,
    /// `mpl`, `uda` or `supervised`.
    pub algorithm: String,
    pub status: RunStatus,
    /// Higher runs first; ties go to the oldest.
    pub priority: i32,
    /// The current attempt (0 before the first one starts).
    pub attempt: i32,
    pub max_attempts: i32,
    /// The spec with every default filled in.
    #[schema(value_type = RunSpec)]
    pub spec: Value,
    pub progress: Progress,
    /// 1-based place in the queue; null unless queued.
    pub queue_position: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub best_metrics: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub final_metrics: Option<Value>,
    pub failure_reason: Option<String>,
    /// The scheduler running (or last running) the run.
    pub worker_id: Option<Uuid>,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A `runs` row with its queue position, as every run query selects it.
#[derive(Debug, sqlx::FromRow)]
struct RunRow {
    id: Uuid,
    experiment_id: Option<Uuid>,
    name: String,
    algorithm: String,
    status: String,
    priority: i32,
    attempt: i32,
    max_attempts: i32,
    spec: Value,
    phase: Option<String>,
    current_step: i64,
    total_steps: i64,
    images_per_sec: Option<f64>,
    eta_secs: Option<f64>,
    queue_position: Option<i64>,
    best_metrics: Option<Value>,
    final_metrics: Option<Value>,
    failure_reason: Option<String>,
    worker_id: Option<Uuid>,
    cancel_requested: bool,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl RunRow {
    fn into_run(self) -> ApiResult<Run> {
        let status = RunStatus::parse(&self.status).ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "run {} has unknown status {:?}",
                self.id,
                self.status
            ))
        })?;
        let fraction = if self.total_steps > 0 {
            (self.current_step as f64 / self.total_steps as f64).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let running = status == RunStatus::Running;
        Ok(Run {
            id: self.id,
            experiment_id: self.experiment_id,
            name: self.name,
            algorithm: self.algorithm,
            status,
            priority: self.priority,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            spec: self.spec,
            progress: Progress {
                step: self.current_step,
                total_steps: self.total_steps,
                phase: self.phase,
                fraction,
                images_per_sec: self.images_per_sec.filter(|_| running),
                eta_secs: self.eta_secs.filter(|_| running),
            },
            queue_position: self.queue_position.filter(|_| status == RunStatus::Queued),
            best_metrics: self.best_metrics,
            final_metrics: self.final_metrics,
            failure_reason: self.failure_reason,
            worker_id: self.worker_id,
            cancel_requested: self.cancel_requested,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        })
    }
}

/// Selects [`RunRow`]s as `r`; the queue position is each queued run's rank in claim order
/// (priority first, then age), the order in which schedulers claim.
const SELECT_RUN: &str = "WITH queue AS ( \
         SELECT id, row_number() OVER (ORDER BY priority DESC, created_at, id) AS position \
         FROM runs WHERE status = 'queued') \
     SELECT r.id, r.experiment_id, r.name, r.algorithm, r.status, r.priority, r.attempt, \
         r.max_attempts, r.spec, r.phase, r.current_step, r.total_steps, r.images_per_sec, \
         r.eta_secs, queue.position AS queue_position, r.best_metrics, r.final_metrics, \
         r.failure_reason, r.worker_id, r.cancel_requested, r.created_at, r.started_at, \
         r.finished_at \
     FROM runs r LEFT JOIN queue ON queue.id = r.id";

/// Loads one run, or `None` when there is no such run.
pub(crate) async fn fetch_run(db: &sqlx::PgPool, id: Uuid) -> ApiResult<Option<Run>> {
    let row = sqlx::query_as::<_, RunRow>(&format!("{SELECT_RUN} WHERE r.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(RunRow::into_run).transpose()
}

/// Fails with 404 unless the run exists.
pub(crate) async fn ensure_run_exists(db: &sqlx::PgPool, id: Uuid) -> ApiResult<()> {
    let exists = sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1)")
        .bind(id)
        .fetch_one(db)
        .await?;
    if exists {
        Ok(())
    } else {
        Err(ApiError::NotFound("run"))
    }
}

/// The body of `POST /v1/runs`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRun {
    /// The trainer's run spec; omitted fields get the paper's defaults.
    #[schema(value_type = RunSpec)]
    pub spec: Value,
    #[serde(default)]
    pub experiment_id: Option<Uuid>,
    #[serde(default)]
    pub name: Option<String>,
    /// Higher runs are claimed first (default 0).
    #[serde(default)]
    pub priority: Option<i32>,
    /// Attempts before the run is failed for good (default 3, at most 100).
    #[serde(default)]
    pub max_attempts: Option<i32>,
}

/// A submission that passed validation, ready to insert.
struct ValidSubmission {
    spec: RunSpec,
    spec_json: Value,
    experiment_id: Option<Uuid>,
    name: String,
    priority: i32,
    max_attempts: i32,
}

/// Submits a run. With an `Idempotency-Key` header, repeating the same request returns the same
/// run (200) and reusing the key for a different request is refused (409).
#[utoipa::path(post, path = "/runs", tag = "runs",
    request_body = NewRun,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes retries of this request safe")),
    responses(
        (status = 201, description = "Queued", body = Run),
        (status = 200, description = "Already submitted with this Idempotency-Key", body = Run),
        (status = 400, description = "The body is not JSON"),
        (status = 409, description = "The Idempotency-Key was used for a different request"),
        (status = 422, description = "Fields are invalid; each is named"),
    ))]
async fn submit_run(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Run>)> {
    caller.require_write()?;
    let idempotency_key = idempotency_key(&headers)?;
    let submission = parse_submission(&body)?;
    check_references(&state.db, &submission).await?;

    let mut tx = state.db.begin().await?;
    let inserted = insert_run(&mut tx, &submission, idempotency_key.as_deref()).await?;
    let Some(id) = inserted else {
        tx.rollback().await?;
        let key = idempotency_key.unwrap_or_default();
        return replay_idempotent(&state.db, &key, &submission).await;
    };
    record_status(&mut tx, id, 0, json!({"status": "queued"})).await?;
    notify(&mut tx, "mpl_queue", &id.to_string()).await?;
    tx.commit().await?;

    tracing::info!(run_id = %id, algorithm = submission.spec_json["algorithm"].as_str(),
        "run queued");
    let run = fetch_run(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("run"))?;
    Ok((StatusCode::CREATED, Json(run)))
}

/// Reads the optional `Idempotency-Key` header.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_BYTES)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// Parses and validates the body; every bad field is reported at once.
fn parse_submission(body: &[u8]) -> ApiResult<ValidSubmission> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    let request: NewRun = serde_path_to_error::deserialize(value).map_err(|e| {
        ApiError::Validation(vec![FieldError {
            field: e.path().to_string(),
            message: e.inner().to_string(),
        }])
    })?;

    let mut errors = Vec::new();
    let spec = match RunSpec::from_value(request.spec) {
        Ok(spec) => Some(spec),
        Err(SpecError::Malformed(fields) | SpecError::Invalid(fields)) => {
            errors.extend(fields.into_iter().map(|f| FieldError {
                field: prefixed("spec", &f.field),
                message: f.message,
            }));
            None
        }
    };
    let name = request.name.unwrap_or_default().trim().to_owned();
    if name.chars().count() > MAX_NAME_CHARS {
        errors.push(field_error(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    let max_attempts = request.max_attempts.unwrap_or(3);
    if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
        errors.push(field_error(
            "max_attempts",
            format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
        ));
    }
    let (Some(spec), true) = (spec, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };

    let spec_json = serde_json::to_value(&spec)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("run spec does not serialise: {e}")))?;
    Ok(ValidSubmission {
        spec,
        spec_json,
        experiment_id: request.experiment_id,
        name,
        priority: request.priority.unwrap_or(0),
        max_attempts,
    })
}

/// `spec` + `data.labeled` -> `spec.data.labeled`; an empty path names the spec itself.
fn prefixed(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

fn field_error(field: &str, message: String) -> FieldError {
    FieldError {
        field: field.into(),
        message,
    }
}

#[derive(sqlx::FromRow)]
struct DatasetState {
    id: Uuid,
    kind: String,
    status: String,
}

/// The experiment must exist, and every dataset the spec names must exist and be ready.
async fn check_references(db: &sqlx::PgPool, submission: &ValidSubmission) -> ApiResult<()> {
    let mut errors = Vec::new();
    if let Some(experiment_id) = submission.experiment_id {
        let exists = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM experiments WHERE id = $1)",
        )
        .bind(experiment_id)
        .fetch_one(db)
        .await?;
        if !exists {
            errors.push(field_error(
                "experiment_id",
                format!("no experiment has id {experiment_id}"),
            ));
        }
    }

    let sources = submission.spec.dataset_ids();
    let ids: Vec<Uuid> = sources.iter().map(|(_, id)| *id).collect();
    let datasets = sqlx::query_as::<_, DatasetState>(
        "SELECT id, kind, status FROM datasets WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    for (source, id) in sources {
        let field = format!("spec.{source}.dataset_id");
        match datasets.iter().find(|d| d.id == id) {
            None => errors.push(field_error(&field, format!("no dataset has id {id}"))),
            Some(d) if d.status != "ready" => errors.push(field_error(
                &field,
                format!("dataset {id} is {}, not ready", d.status),
            )),
            Some(d) if source == "data.labeled" && d.kind != "labeled" => errors.push(field_error(
                &field,
                format!("dataset {id} is {}; labeled data is needed", d.kind),
            )),
            Some(_) => {}
        }
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Inserts the run; `None` when the idempotency key is already taken.
async fn insert_run(
    tx: &mut PgConnection,
    s: &ValidSubmission,
    idempotency_key: Option<&str>,
) -> ApiResult<Option<Uuid>> {
    let total_steps = i64::try_from(s.spec.total_steps).unwrap_or(i64::MAX);
    let id = sqlx::query_scalar::<_, Uuid>(
        "INSERT INTO runs (id, experiment_id, name, algorithm, spec, priority, max_attempts, \
             idempotency_key, total_steps) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(s.experiment_id)
    .bind(&s.name)
    .bind(s.spec_json["algorithm"].as_str().unwrap_or("mpl"))
    .bind(&s.spec_json)
    .bind(s.priority)
    .bind(s.max_attempts)
    .bind(idempotency_key)
    .bind(total_steps)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(id)
}

#[derive(sqlx::FromRow)]
struct IdempotentOriginal {
    id: Uuid,
    spec: Value,
    experiment_id: Option<Uuid>,
    name: String,
    priority: i32,
}

/// Answers a repeated submission: the original run when the request is the same, else 409.
///
/// `max_attempts` is not compared, since a retry of the run raises it after submission.
async fn replay_idempotent(
    db: &sqlx::PgPool,
    key: &str,
    submission: &ValidSubmission,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let original = sqlx::query_as::<_, IdempotentOriginal>(
        "SELECT id, spec, experiment_id, name, priority FROM runs WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(db)
    .await?
    .ok_or_else(|| ApiError::Conflict("the Idempotency-Key was used by a deleted run".into()))?;

    let original_spec = serde_json::from_value::<RunSpec>(original.spec).ok();
    let same = original_spec.as_ref() == Some(&submission.spec)
        && original.experiment_id == submission.experiment_id
        && original.name == submission.name
        && original.priority == submission.priority;
    if !same {
        return Err(ApiError::Conflict(format!(
            "the Idempotency-Key was already used for a different request (run {})",
            original.id
        )));
    }
    let run = fetch_run(db, original.id)
        .await?
        .ok_or(ApiError::NotFound("run"))?;
    Ok((StatusCode::OK, Json(run)))
}

/// Writes a `status` event for a change the api made, and wakes event streams and schedulers.
async fn record_status(
    tx: &mut PgConnection,
    run_id: Uuid,
    attempt: i32,
    payload: Value,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO run_events (run_id, attempt, kind, payload) VALUES ($1, $2, 'status', $3)",
    )
    .bind(run_id)
    .bind(attempt)
    .bind(payload)
    .execute(&mut *tx)
    .await?;
    notify(tx, "mpl_run_status", &run_id.to_string()).await?;
    notify(tx, "mpl_events", &run_id.to_string()).await
}

/// `NOTIFY channel, 'payload'`; inside a transaction it is delivered on commit.
async fn notify(tx: &mut PgConnection, channel: &str, payload: &str) -> ApiResult<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Filters and paging of `GET /v1/runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunFilter {
    /// Only runs of this experiment.
    pub experiment_id: Option<String>,
    /// Only runs in these statuses (comma-separated).
    pub status: Option<String>,
    /// Only runs of this algorithm.
    pub algorithm: Option<String>,
    /// Only runs whose name contains this text (case-insensitive).
    pub q: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of runs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunPage {
    pub items: Vec<Run>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A validated [`RunFilter`].
struct ListQuery {
    experiment_id: Option<Uuid>,
    statuses: Option<Vec<String>>,
    algorithm: Option<String>,
    name_pattern: Option<String>,
    limit: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
}

impl RunFilter {
    fn validate(self) -> ApiResult<ListQuery> {
        let mut errors = Vec::new();
        let experiment_id = match self.experiment_id.as_deref().map(Uuid::parse_str) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                errors.push(field_error("experiment_id", "must be a UUID".into()));
                None
            }
        };
        let statuses = self.status.as_deref().map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
        for status in statuses.iter().flatten() {
            if RunStatus::parse(status).is_none() {
                errors.push(field_error(
                    "status",
                    format!(
                        "unknown status {status:?}; use queued, running, succeeded, failed \
                             or cancelled"
                    ),
                ));
            }
        }
        if let Some(algorithm) = &self.algorithm
            && !["mpl", "uda", "supervised"].contains(&algorithm.as_str())
        {
            errors.push(field_error(
                "algorithm",
                "must be mpl, uda or supervised".into(),
            ));
        }
        let limit = match self.limit.as_deref().map(str::parse::<i64>) {
            None => DEFAULT_PAGE,
            Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
            Some(_) => {
                errors.push(field_error("limit", format!("must be 1 to {MAX_PAGE}")));
                DEFAULT_PAGE
            }
        };
        let after = match self.cursor.as_deref().map(cursor::decode) {
            None => None,
            Some(Some(position)) => Some(position),
            Some(None) => {
                errors.push(field_error(
                    "cursor",
                    "is not a cursor this server issued".into(),
                ));
                None
            }
        };
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        Ok(ListQuery {
            experiment_id,
            statuses,
            algorithm: self.algorithm,
            name_pattern: self.q.filter(|q| !q.is_empty()).map(|q| like_pattern(&q)),
            limit,
            after,
        })
    }
}

/// `%text%` with LIKE's wildcards in `text` escaped, so they match themselves.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Lists runs, newest first, filtered and paged with an opaque cursor.
#[utoipa::path(get, path = "/runs", tag = "runs",
    params(RunFilter),
    responses(
        (status = 200, description = "One page of runs", body = RunPage),
        (status = 422, description = "A filter is invalid"),
    ))]
async fn list_runs(
    State(state): State<AppState>,
    _caller: Caller,
    Query(filter): Query<RunFilter>,
) -> ApiResult<Json<RunPage>> {
    let query = filter.validate()?;

    let mut sql = QueryBuilder::<Postgres>::new(SELECT_RUN);
    sql.push(" WHERE TRUE");
    if let Some(id) = query.experiment_id {
        sql.push(" AND r.experiment_id = ").push_bind(id);
    }
    if let Some(statuses) = query.statuses.filter(|s| !s.is_empty()) {
        sql.push(" AND r.status = ANY(")
            .push_bind(statuses)
            .push(")");
    }
    if let Some(algorithm) = query.algorithm {
        sql.push(" AND r.algorithm = ").push_bind(algorithm);
    }
    if let Some(pattern) = query.name_pattern {
        sql.push(" AND r.name ILIKE ").push_bind(pattern);
    }
    if let Some((created_at, id)) = query.after {
        sql.push(" AND (r.created_at, r.id) < (")
            .push_bind(created_at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    sql.push(" ORDER BY r.created_at DESC, r.id DESC LIMIT ")
        .push_bind(query.limit + 1);
    let mut rows = sql.build_query_as::<RunRow>().fetch_all(&state.db).await?;

    let more = rows.len() as i64 > query.limit;
    rows.truncate(query.limit as usize);
    let next_cursor = rows
        .last()
        .filter(|_| more)
        .map(|last| cursor::encode(last.created_at, last.id));
    let items = rows
        .into_iter()
        .map(RunRow::into_run)
        .collect::<ApiResult<_>>()?;
    Ok(Json(RunPage { items, next_cursor }))
}

/// The opaque page cursor: URL-safe base64 of the last run's creation time and id.
mod cursor {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    /// Encodes the position after the run created at `created_at` with id `id`.
    pub fn encode(created_at: DateTime<Utc>, id: Uuid) -> String {
        let mut bytes = Vec::with_capacity(24);
        bytes.extend_from_slice(&created_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a cursor from [`encode`]; `None` when it is not one.
    pub fn decode(text: &str) -> Option<(DateTime<Utc>, Uuid)> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let (micros, id) = bytes.split_first_chunk::<8>()?;
        let created_at = DateTime::from_timestamp_micros(i64::from_be_bytes(*micros))?;
        Some((created_at, Uuid::from_slice(id).ok()?))
    }
}

/// Gets one run with its progress and queue position.
#[utoipa::path(get, path = "/runs/{id}", tag = "runs",
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run", body = Run),
        (status = 404, description = "No such run"),
    ))]
async fn get_run(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Run>> {
    let run = fetch_run(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("run"))?;
    Ok(Json(run))
}

#[derive(sqlx::FromRow)]
struct RunState {
    status: String,
    attempt: i32,
}

/// Locks the run's row for a status change and reads where it stands.
async fn lock_run(tx: &mut PgConnection, id: Uuid) -> ApiResult<(RunStatus, i32)> {
    let row =
        sqlx::query_as::<_, RunState>("SELECT status, attempt FROM runs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(ApiError::NotFound("run"))?;
    let status = RunStatus::parse(&row.status).ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "run {id} has unknown status {:?}",
            row.status
        ))
    })?;
    Ok((status, row.attempt))
}

/// Cancels a run: a queued run is cancelled at once; a running one is asked to stop, and its
/// scheduler stops the trainer (which writes a last checkpoint) and marks it cancelled.
#[utoipa::path(post, path = "/runs/{id}/cancel", tag = "runs",
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "Cancelled, or cancellation requested", body = Run),
        (status = 404, description = "No such run"),
        (status = 409, description = "The run has already ended"),
    ))]
async fn cancel_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Run>> {
    caller.require_write()?;

    let mut tx = state.db.begin().await?;
    let (status, attempt) = lock_run(&mut tx, id).await?;
    match status {
        RunStatus::Queued => {
            sqlx::query(
                "UPDATE runs SET status = 'cancelled', cancel_requested = TRUE, \
                 finished_at = now(), updated_at = now() WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let payload = json!({"status": "cancelled", "reason": "cancelled while queued"});
            record_status(&mut tx, id, attempt, payload).await?;
        }
        RunStatus::Running => {
            sqlx::query(
                "UPDATE runs SET cancel_requested = TRUE, updated_at = now() WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let payload = json!({"status": "running", "reason": "cancel requested"});
            record_status(&mut tx, id, attempt, payload).await?;
            notify(&mut tx, "mpl_cancel", &id.to_string()).await?;
        }
        ended => {
            return Err(ApiError::Conflict(format!(
                "the run has already {}; there is nothing to cancel",
                ended.as_str()
            )));
        }
    }
    tx.commit().await?;

    tracing::info!(run_id = %id, was = status.as_str(), "run cancel requested");
    let run = fetch_run(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("run"))?;
    Ok(Json(run))
}

/// Queues a failed or cancelled run again, with one more attempt allowed. The new attempt
/// resumes from the run's latest checkpoint.
#[utoipa::path(post, path = "/runs/{id}/retry", tag = "runs",
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "Queued again", body = Run),
        (status = 404, description = "No such run"),
        (status = 409, description = "The run is not failed or cancelled"),
    ))]
async fn retry_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Run>> {
    caller.require_write()?;

    let mut tx = state.db.begin().await?;
    let (status, attempt) = lock_run(&mut tx, id).await?;
    if !matches!(status, RunStatus::Failed | RunStatus::Cancelled) {
        return Err(ApiError::Conflict(format!(
            "only failed or cancelled runs can be retried; this one is {}",
            status.as_str()
        )));
    }
    sqlx::query(
        "UPDATE runs SET status = 'queued', max_attempts = max_attempts + 1, \
             cancel_requested = FALSE, failure_reason = NULL, finished_at = NULL, \
             worker_id = NULL, lease_expires_at = NULL, images_per_sec = NULL, \
             eta_secs = NULL, updated_at = now() \
         WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let payload =
        json!({"status": "queued", "reason": format!("retried after {}", status.as_str())});
    record_status(&mut tx, id, attempt, payload).await?;
    notify(&mut tx, "mpl_queue", &id.to_string()).await?;
    tx.commit().await?;

    tracing::info!(run_id = %id, "run retried");
    let run = fetch_run(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("run"))?;
    Ok(Json(run))
}

/// One attempt at a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Attempt {
    pub attempt: i32,
    pub worker_id: Option<Uuid>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// `finished`, `failed`, `stopped`, `cancelled`, `lease_expired`, `killed` or
    /// `spawn_failed`; null while the attempt runs.
    pub exit_reason: Option<String>,
    pub exit_code: Option<i32>,
    pub first_step: i64,
    pub last_step: i64,
    /// The checkpoint this attempt resumed from.
    pub resumed_from: Option<Uuid>,
}

/// Lists a run's attempts, oldest first.
#[utoipa::path(get, path = "/runs/{id}/attempts", tag = "runs",
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "Every attempt", body = [Attempt]),
        (status = 404, description = "No such run"),
    ))]
async fn list_attempts(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<Attempt>>> {
    ensure_run_exists(&state.db, id).await?;
    let attempts = sqlx::query_as::<_, Attempt>(
        "SELECT attempt, worker_id, started_at, ended_at, exit_reason, exit_code, first_step, \
             last_step, resumed_from \
         FROM attempts WHERE run_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(attempts))
}

/// Which log lines `GET /v1/runs/{id}/logs` returns.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogFilter {
    /// Only lines of this attempt.
    pub attempt: Option<String>,
    /// Only lines after this line id (the last `id` of the previous call).
    pub after: Option<String>,
    /// Lines per call, 1 to 10000 (default 1000).
    pub limit: Option<String>,
}

/// One line the trainer wrote to stderr.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct LogLine {
    /// Increasing; pass the last one as `after` to continue.
    pub id: i64,
    pub attempt: i32,
    pub line: String,
    pub created_at: DateTime<Utc>,
}

/// Log lines of a run, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
}

/// Reads a run's log lines, oldest first, optionally of one attempt.
#[utoipa::path(get, path = "/runs/{id}/logs", tag = "runs",
    params(("id" = Uuid, Path, description = "Run id"), LogFilter),
    responses(
        (status = 200, description = "Log lines", body = LogPage),
        (status = 404, description = "No such run"),
        (status = 422, description = "A parameter is invalid"),
    ))]
async fn list_logs(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
    Query(filter): Query<LogFilter>,
) -> ApiResult<Json<LogPage>> {
    let attempt = parse_param::<i32>("attempt", filter.attempt.as_deref(), |_| true)?;
    let after = parse_param::<i64>("after", filter.after.as_deref(), |n| *n >= 0)?.unwrap_or(0);
    let limit = parse_param::<i64>("limit", filter.limit.as_deref(), |n| {
        (1..=MAX_LOG_LINES).contains(n)
    })?
    .unwrap_or(DEFAULT_LOG_LINES);
    ensure_run_exists(&state.db, id).await?;

    let lines = sqlx::query_as::<_, LogLine>(
        "SELECT id, attempt, coalesce(payload->>'line', '') AS line, created_at \
         FROM run_events \
         WHERE run_id = $1 AND kind = 'log' AND id > $2 \
             AND ($3::integer IS NULL OR attempt = $3) \
         ORDER BY id LIMIT $4",
    )
    .bind(id)
    .bind(after)
    .bind(attempt)
    .bind(limit)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(LogPage { lines }))
}

/// Parses an optional query parameter, naming it when it is malformed or out of range.
pub(crate) fn parse_param<T: std::str::FromStr>(
    name: &str,
    text: Option<&str>,
    in_range: impl Fn(&T) -> bool,
) -> ApiResult<Option<T>> {
    let Some(text) = text else {
        return Ok(None);
    };
    match text.trim().parse::<T>() {
        Ok(value) if in_range(&value) => Ok(Some(value)),
        _ => Err(ApiError::Validation(vec![field_error(
            name,
            format!("{text:?} is not an accepted value"),
        )])),
    }
}

/// Queued runs in the order schedulers will claim them, each with its queue position.
pub(crate) async fn queued_runs(db: &sqlx::PgPool) -> ApiResult<Vec<Run>> {
    let rows = sqlx::query_as::<_, RunRow>(&format!(
        "{SELECT_RUN} WHERE r.status = 'queued' ORDER BY queue.position"
    ))
    .fetch_all(db)
    .await?;
    rows.into_iter().map(RunRow::into_run).collect()
}
