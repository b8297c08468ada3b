//! The run lifecycle end to end: real Postgres, real object storage on disk, real trainer
//! processes supervised by real schedulers.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use mpl_protocol::CheckpointFile;
use mpl_scheduler::Scheduler;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);

async fn event_kinds(db: &TestDb, run_id: Uuid) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, count(*) FROM run_events WHERE run_id = $1 GROUP BY kind")
            .bind(run_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

#[tokio::test]
async fn a_run_goes_from_queued_to_succeeded_with_metrics_events_and_checkpoints() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&db, dir.path(), 1);
    let storage = storage(&config);
    let dataset = ready_dataset(&db.pool, &storage, b"canonical bytes").await;
    let run_id = queue_run(&db.pool, spec(dataset, 40, 10), 0, 3).await;

    let scheduler = Scheduler::start(config).await.unwrap();
    wait_for_status(&db.pool, run_id, "succeeded", LIMIT).await;
    scheduler.shutdown().await.unwrap();

    let points: i64 = sqlx::query_scalar("SELECT count(*) FROM metrics WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // Two training series for 40 steps, three eval series at steps 10, 20, 30 and 40.
    assert_eq!(points, 2 * 40 + 3 * 4);
    let (step, final_metrics, best): (i64, Value, Value) =
        sqlx::query_as("SELECT current_step, final_metrics, best_metrics FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(step, 40);
    assert!(final_metrics["student/top1"].as_f64().unwrap() > 0.9);
    assert_eq!(best["eval/student/top1"].as_f64(), Some(1.0 - 1.0 / 41.0));

    let kinds = event_kinds(&db, run_id).await;
    for kind in [
        "status",
        "attempt",
        "progress",
        "metrics",
        "eval",
        "checkpoint",
        "log",
    ] {
        assert!(kinds.contains_key(kind), "no {kind} event in {kinds:?}");
    }
    assert_eq!(
        kinds["eval"], 5,
        "four periodic evaluations and the final one"
    );
    assert_eq!(kinds["attempt"], 2, "one attempt, started and ended");

    let attempts = attempts_of(&db.pool, run_id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].1.as_deref(), Some("finished"));
    assert_eq!(attempts[0].2, Some(0));

    // Retention: the two newest latest checkpoints and the final one are live.
    let live: Vec<(String, i64, Value, String)> = sqlx::query_as(
        "SELECT kind, step, files, storage_prefix FROM checkpoints \
         WHERE run_id = $1 AND deleted_at IS NULL ORDER BY step",
    )
    .bind(run_id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let summary: Vec<(&str, i64)> = live.iter().map(|(k, s, _, _)| (k.as_str(), *s)).collect();
    assert_eq!(summary, [("latest", 20), ("latest", 30), ("final", 40)]);
    let retired: Vec<String> = sqlx::query_scalar(
        "SELECT storage_prefix FROM checkpoints WHERE run_id = $1 AND deleted_at IS NOT NULL",
    )
    .bind(run_id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(retired.len(), 1);
    assert!(storage.list(&retired[0]).await.unwrap().is_empty());

    // Every live file is in storage with the recorded hash; the final one has the export.
    for (kind, _, files, prefix) in &live {
        let files: Vec<CheckpointFile> = serde_json::from_value(files.clone()).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        if kind == "final" {
            assert!(names.contains(&"student.export.safetensors"), "{names:?}");
            assert!(names.contains(&"model_card.json"), "{names:?}");
        }
        for file in files {
            let bytes = storage
                .get_bytes(&format!("{prefix}/{}", file.name))
                .await
                .unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                file.sha256,
                "{}",
                file.name
            );
            assert_eq!(bytes.len() as u64, file.size_bytes);
        }
    }

    // The attempt's work directory is gone; the dataset stays cached by its hash.
    assert!(
        !dir.path()
            .join("work")
            .join(run_id.to_string())
            .join("attempt-1")
            .exists()
    );
    let cached = std::fs::read_dir(dir.path().join("cache/datasets"))
        .unwrap()
        .count();
    assert_eq!(cached, 1);
}

#[tokio::test]
async fn a_killed_trainer_resumes_from_its_last_checkpoint_in_a_new_attempt() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&db, dir.path(), 1);
    let dataset = ready_dataset(&db.pool, &storage(&config), b"data").await;
    let run_id = queue_run(&db.pool, spec(dataset, 120, 20), 0, 3).await;
    let scheduler = Scheduler::start(config).await.unwrap();

    kill_trainer_after_first_checkpoint(&db.pool, run_id, LIMIT).await;

    wait_for_status(&db.pool, run_id, "succeeded", LIMIT).await;
    scheduler.shutdown().await.unwrap();

    let attempts = attempts_of(&db.pool, run_id).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].1.as_deref(), Some("killed"));
    assert_eq!(attempts[0].2, Some(128 + 9));
    assert_eq!(attempts[1].1.as_deref(), Some("finished"));
    let resumed_step = resumed_checkpoint_step(&db.pool, &attempts[1]).await;
    assert!(resumed_step >= 20);
}

#[tokio::test]
async fn cancel_reaches_the_trainer_as_sigterm_and_the_run_ends_cancelled() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&db, dir.path(), 1);
    let dataset = ready_dataset(&db.pool, &storage(&config), b"data").await;
    let run_id = queue_run(&db.pool, spec(dataset, 2000, 1000), 0, 3).await;
    let scheduler = Scheduler::start(config).await.unwrap();

    wait_until(LIMIT, "progress", || async {
        let step: i64 = sqlx::query_scalar("SELECT current_step FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        step >= 5
    })
    .await;
    // What the api does on POST /v1/runs/{id}/cancel for a running run.
    sqlx::query("UPDATE runs SET cancel_requested = true WHERE id = $1")
        .bind(run_id)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_notify('mpl_cancel', $1)")
        .bind(run_id.to_string())
        .execute(&db.pool)
        .await
        .unwrap();

    // Far sooner than the heartbeat would notice: the notification delivers the cancel.
    wait_for_status(&db.pool, run_id, "cancelled", Duration::from_secs(10)).await;
    scheduler.shutdown().await.unwrap();

    let attempts = attempts_of(&db.pool, run_id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].1.as_deref(), Some("cancelled"));
    // The STOPPED exit code: the trainer saw SIGTERM and wrote its checkpoint.
    assert_eq!(attempts[0].2, Some(mpl_protocol::exit_code::STOPPED));
    let checkpoints: i64 = sqlx::query_scalar("SELECT count(*) FROM checkpoints WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        checkpoints, 1,
        "the checkpoint written on SIGTERM is stored"
    );
}

#[tokio::test]
async fn a_graceful_shutdown_releases_the_run_without_spending_an_attempt() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let first = config(&db, dir.path(), 1);
    let dataset = ready_dataset(&db.pool, &storage(&first), b"data").await;
    // One attempt only: a release must not use it up.
    let run_id = queue_run(&db.pool, spec(dataset, 200, 1000), 0, 1).await;
    let scheduler = Scheduler::start(first).await.unwrap();
    wait_until(LIMIT, "progress", || async {
        let step: i64 = sqlx::query_scalar("SELECT current_step FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        step >= 10
    })
    .await;

    scheduler.shutdown().await.unwrap();
    assert_eq!(status_of(&db.pool, run_id).await, "queued");
    let stopped: Option<Value> =
        sqlx::query_scalar("SELECT to_jsonb(stopped_at) FROM workers LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(stopped.is_some(), "the worker is marked stopped");

    let second = Scheduler::start(config(&db, dir.path(), 1)).await.unwrap();
    wait_for_status(&db.pool, run_id, "succeeded", LIMIT).await;
    second.shutdown().await.unwrap();

    let attempts = attempts_of(&db.pool, run_id).await;
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].1.as_deref(), Some("stopped"));
    assert_eq!(attempts[0].2, Some(mpl_protocol::exit_code::STOPPED));
    assert!(
        attempts[1].4.is_some(),
        "the second attempt resumed from the shutdown checkpoint"
    );
    assert!(attempts[1].3 >= 10);
}

#[tokio::test]
async fn a_vanished_scheduler_s_run_is_taken_over_after_its_lease_expires() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&db, dir.path(), 1);
    let dataset = ready_dataset(&db.pool, &storage(&config), b"data").await;
    let run_id = queue_run(&db.pool, spec(dataset, 160, 20), 0, 3).await;

    // The first scheduler is a separate process, killed with SIGKILL mid-run.
    let mut doomed = tokio::process::Command::new(env!("CARGO_BIN_EXE_mpl-scheduler"))
        .env("MPL_DATABASE_URL", &db.url)
        .env("MPL_DATA_DIR", dir.path())
        .env("MPL_TRAINER_BIN", &config.trainer_bin)
        .env("MPL_LEASE_TTL_SECS", "3")
        .env("MPL_HEARTBEAT_SECS", "1")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until(LIMIT, "a stored checkpoint", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM checkpoints WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        n > 0
    })
    .await;
    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();

    let rescuer = Scheduler::start(config).await.unwrap();
    wait_for_status(&db.pool, run_id, "succeeded", LIMIT).await;
    rescuer.shutdown().await.unwrap();

    let attempts = attempts_of(&db.pool, run_id).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].1.as_deref(), Some("lease_expired"));
    assert_eq!(attempts[1].1.as_deref(), Some("finished"));
    assert!(
        attempts[1].4.is_some(),
        "the rescue resumed from the stored checkpoint"
    );
    let workers: Vec<Uuid> =
        sqlx::query_scalar("SELECT DISTINCT worker_id FROM attempts WHERE run_id = $1")
            .bind(run_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        workers.len(),
        2,
        "two different schedulers ran the attempts"
    );
}

#[tokio::test]
async fn two_schedulers_execute_each_of_many_runs_exactly_once() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let dataset = ready_dataset(&db.pool, &storage(&config(&db, dir.path(), 1)), b"d").await;
    let mut runs = Vec::new();
    for _ in 0..12 {
        runs.push(queue_run(&db.pool, spec(dataset, 6, 100), 0, 3).await);
    }
    let a = Scheduler::start(config(&db, dir.path(), 2)).await.unwrap();
    let b = Scheduler::start(config(&db, dir.path(), 2)).await.unwrap();
    for run_id in &runs {
        wait_for_status(&db.pool, *run_id, "succeeded", LIMIT).await;
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    let per_run: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (SELECT count(*) FROM attempts a WHERE a.run_id = r.id), \
                (SELECT count(*) FROM run_events e WHERE e.run_id = r.id AND e.kind = 'attempt' \
                     AND e.payload->>'event' = 'started') \
         FROM runs r",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(per_run.len(), 12);
    assert!(
        per_run
            .iter()
            .all(|&(attempts, started)| attempts == 1 && started == 1),
        "{per_run:?}"
    );
    let workers_used: i64 = sqlx::query_scalar("SELECT count(DISTINCT worker_id) FROM attempts")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(workers_used, 2, "both schedulers took work");
}

#[tokio::test]
async fn a_run_on_a_dataset_that_is_not_ready_fails_at_once_naming_the_field() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = Uuid::now_v7();
    let run_id = queue_run(&db.pool, spec(missing, 10, 5), 0, 3).await;
    let scheduler = Scheduler::start(config(&db, dir.path(), 1)).await.unwrap();
    wait_for_status(&db.pool, run_id, "failed", LIMIT).await;
    scheduler.shutdown().await.unwrap();

    let reason = failure_reason(&db.pool, run_id).await.unwrap();
    assert!(reason.contains("data.labeled"), "{reason}");
    assert!(reason.contains("does not exist"), "{reason}");
    assert_eq!(
        attempts_of(&db.pool, run_id).await.len(),
        1,
        "invalid input is not retried"
    );
}
