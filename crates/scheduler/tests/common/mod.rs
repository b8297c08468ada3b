//! Helpers shared by the scheduler's integration tests: a fresh database per test, a local
//! object store, the trainer to run, and the rows the api would write.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mpl_scheduler::{Config, MIGRATOR};
use mpl_storage::Storage;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// A database created for one test and dropped when the value is dropped.
pub struct TestDb {
    /// Pool on the test database.
    pub pool: PgPool,
    /// Its URL.
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates and migrates `test_<uuid>` next to `MPL_TEST_DATABASE_URL`.
    pub async fn new() -> TestDb {
        let admin_url = std::env::var("MPL_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await.expect("connect");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .expect("connect to test database");
        MIGRATOR.run(&pool).await.expect("migrate");
        TestDb {
            pool,
            url,
            name,
            admin_url,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Dropping needs async; do it on a thread of its own so it works inside a runtime.
        // The pool is not closed first: its connections belong to the test's runtime, which is
        // blocked here; `WITH (FORCE)` ends them from the server side.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(&sql).execute(&mut admin).await;
                }
            });
        })
        .join();
    }
}

/// The scripted trainer (an example of this crate, built beside the test executable by
/// `cargo test`): the real trainer's protocol at a few milliseconds per step, on any bytes.
pub fn scripted_trainer_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let debug_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = debug_dir.join("examples").join("scripted_trainer");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p mpl-scheduler --examples`",
        path.display()
    );
    path
}

/// A scheduler configuration for tests: short leases and heartbeats.
pub fn config(db: &TestDb, data_dir: &std::path::Path, slots: usize) -> Config {
    Config {
        database_url: db.url.clone(),
        storage_url: format!("file://{}", data_dir.join("objects").display()),
        data_dir: data_dir.to_path_buf(),
        trainer_bin: scripted_trainer_bin(),
        slots,
        devices: vec!["cpu".into()],
        lease_ttl: Duration::from_secs(3),
        heartbeat: Duration::from_secs(1),
        cancel_grace: Duration::from_secs(10),
        poll_interval: Duration::from_millis(500),
    }
}

/// The object store of `config`.
pub fn storage(config: &Config) -> Storage {
    Storage::from_url(&config.storage_url).expect("storage")
}

/// Stores `bytes` as a ready dataset's canonical file, as ingestion would; returns its id.
pub async fn ready_dataset(pool: &PgPool, storage: &Storage, bytes: &[u8]) -> Uuid {
    use sha2::{Digest, Sha256};
    let id = Uuid::now_v7();
    let sha256 = hex::encode(Sha256::digest(bytes));
    let key = format!("datasets/{id}/canonical-{sha256}.mpld");
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(
        bytes,
    ))]);
    storage
        .put_stream(&key, body, u64::MAX)
        .await
        .expect("store dataset");
    sqlx::query(
        "INSERT INTO datasets (id, name, kind, format, status, canonical_key, canonical_sha256) \
         VALUES ($1, 'fixture', 'labeled', 'idx', 'ready', $2, $3)",
    )
    .bind(id)
    .bind(key)
    .bind(sha256)
    .execute(pool)
    .await
    .expect("insert dataset");
    id
}

/// A small run spec on `dataset_id`: `total_steps` steps, an evaluation and a checkpoint every
/// `interval` steps, keeping two latest checkpoints.
pub fn spec(dataset_id: Uuid, total_steps: u64, interval: u64) -> Value {
    json!({
        "algorithm": "supervised",
        "data": {"labeled": {"dataset_id": dataset_id}, "num_labeled": 100},
        "total_steps": total_steps,
        "eval": {"interval_steps": interval},
        "checkpoint": {"interval_steps": interval, "keep_latest": 2},
        "device": {"device": "cpu"}
    })
}

/// Queues a run as the api does (row + `NOTIFY mpl_queue`); returns its id.
pub async fn queue_run(pool: &PgPool, spec: Value, priority: i32, max_attempts: i32) -> Uuid {
    let id = Uuid::now_v7();
    let total_steps = spec["total_steps"].as_i64().unwrap_or(1);
    sqlx::query(
        "INSERT INTO runs (id, algorithm, spec, priority, max_attempts, total_steps) \
         VALUES ($1, 'supervised', $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(spec)
    .bind(priority)
    .bind(max_attempts)
    .bind(total_steps)
    .execute(pool)
    .await
    .expect("insert run");
    sqlx::query("SELECT pg_notify('mpl_queue', $1)")
        .bind(id.to_string())
        .execute(pool)
        .await
        .expect("notify");
    id
}

/// The run's status.
pub async fn status_of(pool: &PgPool, run_id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM runs WHERE id = $1")
        .bind(run_id)
        .fetch_one(pool)
        .await
        .expect("run status")
}

/// Waits until `check` returns true, polling every 100 ms; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the run has status `status`.
pub async fn wait_for_status(pool: &PgPool, run_id: Uuid, status: &str, limit: Duration) {
    wait_until(limit, &format!("run {run_id} to be {status}"), || async {
        let now = status_of(pool, run_id).await;
        assert!(
            !(now == "failed" && status != "failed"),
            "run {run_id} failed: {:?}",
            failure_reason(pool, run_id).await
        );
        now == status
    })
    .await;
}

/// The run's failure reason.
pub async fn failure_reason(pool: &PgPool, run_id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT failure_reason FROM runs WHERE id = $1")
        .bind(run_id)
        .fetch_one(pool)
        .await
        .expect("failure reason")
}

/// Pids of the processes whose command line mentions `needle` (e.g. a run id in the trainer's
/// work directory).
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && cmdline.contains(" run ") {
            pids.push(pid);
        }
    }
    pids
}

/// Waits (up to `limit`) until the run has a stored checkpoint, then SIGKILLs the trainer of
/// its first attempt.
pub async fn kill_trainer_after_first_checkpoint(pool: &PgPool, run_id: Uuid, limit: Duration) {
    wait_until(limit, "a stored checkpoint", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM checkpoints WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(pool)
            .await
            .unwrap();
        n > 0
    })
    .await;
    let pids = pids_mentioning(&format!("{run_id}/attempt-1"));
    assert_eq!(pids.len(), 1, "one trainer process for the run: {pids:?}");
    let pid = nix::unistd::Pid::from_raw(pids[0]);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
}

/// The step of the checkpoint a resumed attempt (from [`attempts_of`]) started from, after
/// checking that the trainer restarted at exactly that step.
pub async fn resumed_checkpoint_step(
    pool: &PgPool,
    attempt: &(i32, Option<String>, Option<i32>, i64, Option<Uuid>),
) -> i64 {
    let resumed_from = attempt.4.expect("the attempt resumed from a checkpoint");
    let step: i64 = sqlx::query_scalar("SELECT step FROM checkpoints WHERE id = $1")
        .bind(resumed_from)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        attempt.3, step,
        "the trainer restarted at the checkpoint's step"
    );
    step
}

/// (attempt, exit_reason, exit_code, first_step, resumed_from) of every attempt, in order.
pub async fn attempts_of(
    pool: &PgPool,
    run_id: Uuid,
) -> Vec<(i32, Option<String>, Option<i32>, i64, Option<Uuid>)> {
    sqlx::query_as(
        "SELECT attempt, exit_reason, exit_code, first_step, resumed_from FROM attempts \
         WHERE run_id = $1 ORDER BY attempt",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .expect("attempts")
}
