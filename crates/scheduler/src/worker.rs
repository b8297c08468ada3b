//! This scheduler as the platform sees it: its `workers` row, heartbeats and lease renewals.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Config;

/// Inserts this scheduler's `workers` row and returns its id.
pub async fn register(pool: &PgPool, config: &Config) -> anyhow::Result<Uuid> {
    let id = Uuid::now_v7();
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown".into());
    sqlx::query("INSERT INTO workers (id, hostname, slots, devices) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(&hostname)
        .bind(i32::try_from(config.slots)?)
        .bind(json!(config.devices))
        .execute(pool)
        .await?;
    tracing::info!(worker_id = %id, %hostname, slots = config.slots, "worker registered");
    Ok(id)
}

/// Renews the worker's heartbeat.
pub async fn beat(pool: &PgPool, worker_id: Uuid) -> anyhow::Result<()> {
    sqlx::query("UPDATE workers SET last_heartbeat_at = now(), stopped_at = NULL WHERE id = $1")
        .bind(worker_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// What renewing one run's lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Still ours; `cancel_requested` mirrors the run row.
    Held {
        /// A cancel was requested through the api.
        cancel_requested: bool,
    },
    /// The attempt is no longer current: its trainer must stop and its output be dropped.
    Lost,
}

/// Extends the lease of attempt `attempt` of `run_id` by `ttl`, fenced by the attempt number.
pub async fn renew_lease(
    pool: &PgPool,
    run_id: Uuid,
    attempt: i32,
    ttl: Duration,
) -> anyhow::Result<LeaseState> {
    let row: Option<(bool,)> = sqlx::query_as(
        "UPDATE runs SET lease_expires_at = now() + make_interval(secs => $3) \
         WHERE id = $1 AND attempt = $2 AND status = 'running' RETURNING cancel_requested",
    )
    .bind(run_id)
    .bind(attempt)
    .bind(ttl.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some((cancel_requested,)) => LeaseState::Held { cancel_requested },
        None => LeaseState::Lost,
    })
}

/// Marks the worker stopped (a clean shutdown).
pub async fn mark_stopped(pool: &PgPool, worker_id: Uuid) -> anyhow::Result<()> {
    sqlx::query("UPDATE workers SET stopped_at = now(), last_heartbeat_at = now() WHERE id = $1")
        .bind(worker_id)
        .execute(pool)
        .await?;
    Ok(())
}
