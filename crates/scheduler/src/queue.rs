//! The run lifecycle in SQL: claiming queued runs, closing attempts, reaping expired leases.
//!
//! Every statement that changes a run from here names the attempt it belongs to (the fencing
//! token), so a scheduler that lost its lease cannot overwrite the state another one now owns.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// A run this scheduler now owns for one attempt.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    /// The run.
    pub run_id: Uuid,
    /// The attempt number: the fencing token of every later write.
    pub attempt: i32,
    /// The run spec as stored (not yet resolved to local paths).
    pub spec: Value,
    /// The step the run had reached before this attempt.
    pub current_step: i64,
    /// Best metrics recorded by earlier attempts.
    pub best_metrics: Option<Value>,
}

/// The attempt number held by a writer is no longer the run's current one (or the run is no
/// longer running): the writer must stop and drop its output.
#[derive(Debug, thiserror::Error)]
#[error("attempt {attempt} of run {run_id} is stale: the run moved on without it")]
pub struct StaleAttempt {
    /// The run.
    pub run_id: Uuid,
    /// The attempt that tried to write.
    pub attempt: i32,
}

/// How an attempt ended, as far as the run's next status is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The trainer finished every step: the run succeeded.
    Succeeded,
    /// A cancel was requested and the trainer stopped (or was killed).
    Cancelled,
    /// The scheduler is shutting down: the run goes back to the queue, and this attempt does
    /// not count against `max_attempts`.
    Released,
    /// The attempt failed; the run is queued again while attempts remain (when `retryable`),
    /// otherwise it fails with `reason`.
    Failed {
        /// What the attempts table records: `failed`, `killed`, `lease_expired`, ...
        exit_reason: String,
        /// Why, for a person.
        reason: String,
        /// False when retrying cannot help (invalid input).
        retryable: bool,
    },
}

impl Outcome {
    fn exit_reason(&self) -> &str {
        match self {
            Outcome::Succeeded => "finished",
            Outcome::Cancelled => "cancelled",
            Outcome::Released => "stopped",
            Outcome::Failed { exit_reason, .. } => exit_reason,
        }
    }
}

/// Sends a Postgres notification (delivered when the surrounding transaction commits).
pub async fn notify(
    conn: &mut sqlx::PgConnection,
    channel: &str,
    payload: &str,
) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// Appends one row to the run's event stream.
pub async fn insert_event(
    conn: &mut sqlx::PgConnection,
    run_id: Uuid,
    attempt: i32,
    kind: &str,
    payload: Value,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO run_events (run_id, attempt, kind, payload) VALUES ($1, $2, $3, $4)")
        .bind(run_id)
        .bind(attempt)
        .bind(kind)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// Claims the next queued run (highest priority, then oldest) for `worker_id`, or `None` when
/// the queue is empty. Concurrent schedulers skip each other's locked rows.
pub async fn claim_next(
    pool: &PgPool,
    worker_id: Uuid,
    lease_ttl: Duration,
) -> anyhow::Result<Option<ClaimedRun>> {
    let mut tx = pool.begin().await?;

    let candidate: Option<(Uuid,)> = sqlx::query_as(
        "SELECT id FROM runs WHERE status = 'queued' \
         ORDER BY priority DESC, created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some((run_id,)) = candidate else {
        return Ok(None);
    };

    let (attempt, spec, current_step, best_metrics): (i32, Value, i64, Option<Value>) =
        sqlx::query_as(
            "UPDATE runs SET status = 'running', attempt = attempt + 1, worker_id = $2, \
                 lease_expires_at = now() + make_interval(secs => $3), \
                 started_at = coalesce(started_at, now()), finished_at = NULL, \
                 failure_reason = NULL, updated_at = now() \
             WHERE id = $1 RETURNING attempt, spec, current_step, best_metrics",
        )
        .bind(run_id)
        .bind(worker_id)
        .bind(lease_ttl.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;

    sqlx::query(
        "INSERT INTO attempts (run_id, attempt, worker_id, first_step, last_step) \
         VALUES ($1, $2, $3, $4, $4)",
    )
    .bind(run_id)
    .bind(attempt)
    .bind(worker_id)
    .bind(current_step)
    .execute(&mut *tx)
    .await?;

    let status = json!({"status": "running", "worker_id": worker_id});
    insert_event(&mut tx, run_id, attempt, "status", status).await?;
    let started = json!({"attempt": attempt, "event": "started", "worker_id": worker_id});
    insert_event(&mut tx, run_id, attempt, "attempt", started).await?;
    announce(&mut tx, run_id, false).await?;
    tx.commit().await?;

    Ok(Some(ClaimedRun {
        run_id,
        attempt,
        spec,
        current_step,
        best_metrics,
    }))
}

/// Ends attempt `attempt` of `run_id` with `outcome` and moves the run to its next status.
/// Fails with [`StaleAttempt`] when the attempt is no longer the run's current running one.
pub async fn close_attempt(
    pool: &PgPool,
    run_id: Uuid,
    attempt: i32,
    outcome: &Outcome,
    last_step: Option<i64>,
    exit_code: Option<i32>,
) -> anyhow::Result<&'static str> {
    let mut tx = pool.begin().await?;
    let current: Option<(i32, String)> =
        sqlx::query_as("SELECT attempt, status FROM runs WHERE id = $1 FOR UPDATE")
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
    if current != Some((attempt, "running".to_string())) {
        return Err(StaleAttempt { run_id, attempt }.into());
    }
    let status = close_locked(&mut tx, run_id, attempt, outcome, last_step, exit_code).await?;
    tx.commit().await?;
    Ok(status)
}

/// The part of [`close_attempt`] that runs once the run row is locked and known current.
async fn close_locked(
    tx: &mut Transaction<'_, Postgres>,
    run_id: Uuid,
    attempt: i32,
    outcome: &Outcome,
    last_step: Option<i64>,
    exit_code: Option<i32>,
) -> anyhow::Result<&'static str> {
    sqlx::query(
        "UPDATE attempts SET ended_at = now(), exit_reason = $3, exit_code = $4, \
             last_step = greatest(last_step, coalesce($5, last_step)) \
         WHERE run_id = $1 AND attempt = $2",
    )
    .bind(run_id)
    .bind(attempt)
    .bind(outcome.exit_reason())
    .bind(exit_code)
    .bind(last_step)
    .execute(&mut **tx)
    .await?;

    let (status, reason) = next_status(tx, run_id, outcome).await?;
    let terminal = matches!(status, "succeeded" | "failed" | "cancelled");
    sqlx::query(
        "UPDATE runs SET status = $3, worker_id = NULL, lease_expires_at = NULL, \
             failure_reason = CASE WHEN $3 = 'failed' THEN $4 ELSE failure_reason END, \
             finished_at = CASE WHEN $5 THEN now() ELSE NULL END, updated_at = now() \
         WHERE id = $1 AND attempt = $2",
    )
    .bind(run_id)
    .bind(attempt)
    .bind(status)
    .bind(&reason)
    .bind(terminal)
    .execute(&mut **tx)
    .await?;

    let ended = json!({"attempt": attempt, "event": "ended",
        "exit_reason": outcome.exit_reason(), "exit_code": exit_code});
    insert_event(tx, run_id, attempt, "attempt", ended).await?;
    let changed = json!({"status": status, "reason": reason});
    insert_event(tx, run_id, attempt, "status", changed).await?;
    announce(tx, run_id, status == "queued").await?;
    Ok(status)
}

/// Decides where the run goes after `outcome`, counting the attempts that were not releases.
async fn next_status(
    tx: &mut Transaction<'_, Postgres>,
    run_id: Uuid,
    outcome: &Outcome,
) -> anyhow::Result<(&'static str, Option<String>)> {
    let (reason, retryable) = match outcome {
        Outcome::Succeeded => return Ok(("succeeded", None)),
        Outcome::Cancelled => return Ok(("cancelled", Some("cancelled by request".into()))),
        Outcome::Released => {
            return Ok(("queued", Some("released by a stopping scheduler".into())));
        }
        Outcome::Failed {
            reason, retryable, ..
        } => (reason, *retryable),
    };
    if !retryable {
        return Ok(("failed", Some(reason.clone())));
    }
    let (counted, max_attempts): (i64, i32) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM attempts WHERE run_id = $1 \
                     AND exit_reason IS DISTINCT FROM 'stopped'), \
                max_attempts FROM runs WHERE id = $1",
    )
    .bind(run_id)
    .fetch_one(&mut **tx)
    .await?;
    if counted < i64::from(max_attempts) {
        Ok((
            "queued",
            Some(format!("attempt failed, retrying: {reason}")),
        ))
    } else {
        let summary = format!("{reason} (after {counted} of {max_attempts} attempts)");
        Ok(("failed", Some(summary)))
    }
}

/// Notifies listeners that a run's status (and events) changed, and wakes claimers when the
/// run went back to the queue.
async fn announce(
    tx: &mut Transaction<'_, Postgres>,
    run_id: Uuid,
    queued: bool,
) -> sqlx::Result<()> {
    let id = run_id.to_string();
    notify(tx, "mpl_run_status", &id).await?;
    notify(tx, "mpl_events", &id).await?;
    if queued {
        notify(tx, "mpl_queue", &id).await?;
    }
    Ok(())
}

/// Closes every running attempt whose lease expired: the run is queued again while attempts
/// remain, failed otherwise, or cancelled when a cancel was pending. Returns the runs reaped.
pub async fn reap_expired(pool: &PgPool) -> anyhow::Result<Vec<Uuid>> {
    let mut reaped = Vec::new();
    loop {
        let mut tx = pool.begin().await?;
        let expired: Option<(Uuid, i32, i64, bool)> = sqlx::query_as(
            "SELECT id, attempt, current_step, cancel_requested FROM runs \
             WHERE status = 'running' AND lease_expires_at < now() \
             LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((run_id, attempt, step, cancel_requested)) = expired else {
            return Ok(reaped);
        };
        let outcome = if cancel_requested {
            Outcome::Cancelled
        } else {
            Outcome::Failed {
                exit_reason: "lease_expired".into(),
                reason: "the scheduler running it stopped renewing its lease".into(),
                retryable: true,
            }
        };
        let status = close_locked(&mut tx, run_id, attempt, &outcome, Some(step), None).await?;
        tx.commit().await?;
        tracing::warn!(%run_id, attempt, status, "lease expired; attempt closed");
        reaped.push(run_id);
    }
}
