//! Workers (the schedulers the platform has seen) and the queue of runs waiting for them.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::runs::{Run, queued_runs};

/// The worker and queue routes, to be nested under `/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workers))
        .routes(routes!(get_queue))
}

/// A scheduler process and what it runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Worker {
    pub id: Uuid,
    pub hostname: String,
    /// How many runs it executes at once.
    pub slots: i32,
    /// The devices its slots use, e.g. `["cuda:0", "cuda:1"]`.
    #[schema(value_type = Vec<String>)]
    pub devices: Value,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    /// Set when it shut down cleanly.
    pub stopped_at: Option<DateTime<Utc>>,
    /// Not stopped, and heard from within one lease period.
    pub alive: bool,
    /// The runs it holds now.
    pub running_runs: Vec<Uuid>,
}

/// Lists every worker seen, live ones first, newest first.
#[utoipa::path(get, path = "/workers", tag = "workers",
    responses((status = 200, description = "Every worker", body = [Worker])))]
async fn list_workers(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<Vec<Worker>>> {
    let lease_ttl_secs = state.config.lease_ttl_secs as f64;
    let workers = sqlx::query_as::<_, Worker>(
        "SELECT w.id, w.hostname, w.slots, w.devices, w.started_at, w.last_heartbeat_at, \
             w.stopped_at, \
             (w.stopped_at IS NULL \
              AND w.last_heartbeat_at > now() - make_interval(secs => $1)) AS alive, \
             coalesce(array_agg(r.id ORDER BY r.started_at) FILTER (WHERE r.id IS NOT NULL), \
                      '{}') AS running_runs \
         FROM workers w \
         LEFT JOIN runs r ON r.worker_id = w.id AND r.status = 'running' \
         GROUP BY w.id \
         ORDER BY alive DESC, w.started_at DESC",
    )
    .bind(lease_ttl_secs)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(workers))
}

/// The queue: queued runs in the order schedulers will claim them (priority, then age).
#[utoipa::path(get, path = "/queue", tag = "workers",
    responses((status = 200, description = "Queued runs in claim order", body = [Run])))]
async fn get_queue(State(state): State<AppState>, _caller: Caller) -> ApiResult<Json<Vec<Run>>> {
    Ok(Json(queued_runs(&state.db).await?))
}
