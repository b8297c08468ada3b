//! The queue's SQL on a real database: claim order, fencing of stale attempts, the reaper.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use mpl_protocol::Event;
use mpl_scheduler::ingest::EventSink;
use mpl_scheduler::queue::{self, Outcome, StaleAttempt};
use mpl_scheduler::worker::{self, LeaseState};
use serde_json::json;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(30);

async fn expire_lease(db: &TestDb, run_id: Uuid) {
    sqlx::query("UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(run_id)
        .execute(&db.pool)
        .await
        .unwrap();
}

fn metrics(step: u64, value: f64) -> Event {
    Event::Metrics {
        step,
        values: BTreeMap::from([("teacher/loss".to_string(), value)]),
    }
}

#[tokio::test]
async fn runs_are_claimed_by_priority_then_age() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let worker_id = worker::register(&db.pool, &config(&db, dir.path(), 1))
        .await
        .unwrap();
    let spec = spec(Uuid::now_v7(), 10, 5);
    let old_low = queue_run(&db.pool, spec.clone(), 0, 3).await;
    let high = queue_run(&db.pool, spec.clone(), 5, 3).await;
    let new_low = queue_run(&db.pool, spec.clone(), 0, 3).await;

    let mut order = Vec::new();
    while let Some(claimed) = queue::claim_next(&db.pool, worker_id, TTL).await.unwrap() {
        assert_eq!(claimed.attempt, 1);
        order.push(claimed.run_id);
    }
    assert_eq!(order, [high, old_low, new_low]);
}

#[tokio::test]
async fn a_stale_attempt_s_writes_are_rejected() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let worker_id = worker::register(&db.pool, &config(&db, dir.path(), 1))
        .await
        .unwrap();
    let run_id = queue_run(&db.pool, spec(Uuid::now_v7(), 10, 5), 0, 3).await;

    let first = queue::claim_next(&db.pool, worker_id, TTL)
        .await
        .unwrap()
        .unwrap();
    let mut zombie = EventSink::new(db.pool.clone(), run_id, first.attempt, None);
    zombie.push_event(&metrics(1, 0.5));
    zombie.flush().await.unwrap();

    // The lease runs out; the reaper re-queues the run and another claim takes attempt 2.
    expire_lease(&db, run_id).await;
    assert_eq!(queue::reap_expired(&db.pool).await.unwrap(), [run_id]);
    assert_eq!(status_of(&db.pool, run_id).await, "queued");
    let second = queue::claim_next(&db.pool, worker_id, TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.attempt, 2);

    // Everything the first attempt tries now is refused.
    zombie.push_event(&metrics(2, 0.25));
    zombie.push_log("still here");
    let err = zombie.flush().await.unwrap_err();
    assert!(err.is::<StaleAttempt>(), "{err:#}");
    let renewed = worker::renew_lease(&db.pool, run_id, first.attempt, TTL)
        .await
        .unwrap();
    assert_eq!(renewed, LeaseState::Lost);
    let closed = queue::close_attempt(
        &db.pool,
        run_id,
        first.attempt,
        &Outcome::Succeeded,
        None,
        Some(0),
    )
    .await
    .unwrap_err();
    assert!(closed.is::<StaleAttempt>(), "{closed:#}");

    let points: Vec<(i64, f64)> =
        sqlx::query_as("SELECT step, value FROM metrics WHERE run_id = $1 ORDER BY step")
            .bind(run_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        points,
        [(1, 0.5)],
        "only the write made while the attempt was current"
    );
    let logs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM run_events WHERE run_id = $1 AND kind = 'log'")
            .bind(run_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(logs, 0);
    assert_eq!(status_of(&db.pool, run_id).await, "running");

    // The current attempt writes normally.
    let mut current = EventSink::new(db.pool.clone(), run_id, second.attempt, None);
    current.push_event(&metrics(1, 0.75));
    current.flush().await.unwrap();
    let value: f64 = sqlx::query_scalar(
        "SELECT value FROM metrics WHERE run_id = $1 AND name = 'teacher/loss' AND step = 1",
    )
    .bind(run_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(value, 0.75, "a re-sent point overwrites, never duplicates");
}

#[tokio::test]
async fn the_reaper_fails_a_run_whose_attempts_are_used_up() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let worker_id = worker::register(&db.pool, &config(&db, dir.path(), 1))
        .await
        .unwrap();
    let run_id = queue_run(&db.pool, spec(Uuid::now_v7(), 10, 5), 0, 2).await;

    for attempt in 1..=2 {
        let claimed = queue::claim_next(&db.pool, worker_id, TTL)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claimed.attempt, attempt);
        expire_lease(&db, run_id).await;
        queue::reap_expired(&db.pool).await.unwrap();
    }
    assert_eq!(status_of(&db.pool, run_id).await, "failed");
    let reason = failure_reason(&db.pool, run_id).await.unwrap();
    assert!(reason.contains("2 of 2 attempts"), "{reason}");
    let exits: Vec<Option<String>> =
        sqlx::query_scalar("SELECT exit_reason FROM attempts WHERE run_id = $1 ORDER BY attempt")
            .bind(run_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        exits,
        [Some("lease_expired".into()), Some("lease_expired".into())]
    );
}

#[tokio::test]
async fn a_batch_is_one_event_row_per_kind_of_summary_and_keeps_arrival_order() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let worker_id = worker::register(&db.pool, &config(&db, dir.path(), 1))
        .await
        .unwrap();
    let run_id = queue_run(&db.pool, spec(Uuid::now_v7(), 10, 5), 0, 3).await;
    let claimed = queue::claim_next(&db.pool, worker_id, TTL)
        .await
        .unwrap()
        .unwrap();

    let mut sink = EventSink::new(db.pool.clone(), run_id, claimed.attempt, None);
    for step in 1..=100 {
        sink.push_event(&metrics(step, 1.0 / step as f64));
        sink.push_event(&Event::Progress {
            step,
            total_steps: 100,
            phase: "mpl".into(),
            images_per_sec: 50.0,
            eta_secs: (100 - step) as f64,
        });
    }
    sink.push_log("first");
    sink.push_log("second");
    sink.flush().await.unwrap();

    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT kind, payload FROM run_events WHERE run_id = $1 AND kind IN \
             ('log', 'metrics', 'progress') ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let kinds: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["log", "log", "metrics", "progress"]);
    assert_eq!(rows[0].1["line"], "first");
    assert_eq!(
        rows[2].1,
        json!({"step": 100, "values": {"teacher/loss": 0.01}})
    );
    let (step, eta): (i64, f64) =
        sqlx::query_as("SELECT current_step, eta_secs FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((step, eta), (100, 0.0));
    assert_eq!(sink.points_written(), 100);
}
