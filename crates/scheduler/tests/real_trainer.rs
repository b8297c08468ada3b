//! The scheduler with the real `trainer` binary: the smoke spec on a slice of Fashion-MNIST,
//! given to the platform as canonical datasets, from queued to succeeded with an exported
//! student, and resumed from its stored checkpoint after a SIGKILL.
//!
//! Needs the trainer built (`cargo build -p mpl-trainer`, found at `<target>/debug/trainer` or
//! through `MPL_TRAINER_BIN`), libtorch on the library path (`source scripts/torch-env.sh`)
//! and the Fashion-MNIST IDX files under `/usr/share/datasets/fashion-mnist`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use mpl_protocol::CheckpointFile;
use mpl_protocol::spec::DataFormat;
use mpl_scheduler::Scheduler;
use serde_json::Value;
use sha2::{Digest, Sha256};

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

fn real_trainer_bin() -> PathBuf {
    if let Ok(path) = std::env::var("MPL_TRAINER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let debug_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = debug_dir.join("trainer");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p mpl-trainer`",
        path.display()
    );
    path
}

/// The first `count` images of an IDX pair, written in the canonical form.
fn canonical_slice(images: &str, labels: &str, count: usize, out: &Path) -> Vec<u8> {
    let set = mpl_data::load(
        DataFormat::Idx,
        &Path::new(FASHION).join(images),
        Some(&Path::new(FASHION).join(labels)),
    )
    .expect("Fashion-MNIST loads");
    let indices: Vec<usize> = (0..count).collect();
    mpl_data::canonical::write(out, &set.subset(&indices)).expect("canonical form written");
    std::fs::read(out).expect("canonical file")
}

/// Queues the smoke spec on platform copies of a Fashion-MNIST slice; returns the run.
async fn queue_smoke_run(
    db: &TestDb,
    storage: &mpl_storage::Storage,
    dir: &Path,
    max_attempts: i32,
) -> uuid::Uuid {
    let train = canonical_slice(
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        3000,
        &dir.join("train.mpld"),
    );
    let test = canonical_slice(
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        1000,
        &dir.join("test.mpld"),
    );
    let labeled = ready_dataset(&db.pool, storage, &train).await;
    let eval = ready_dataset(&db.pool, storage, &test).await;

    let smoke = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/smoke.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(smoke).unwrap()).unwrap();
    spec["data"]["labeled"] = serde_json::json!({"dataset_id": labeled});
    spec["data"]["eval"] = serde_json::json!({"dataset_id": eval});
    queue_run(&db.pool, spec, 0, max_attempts).await
}

#[tokio::test]
async fn the_smoke_spec_runs_to_success_on_platform_datasets_with_an_exported_student() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&db, dir.path(), 1);
    config.trainer_bin = real_trainer_bin();
    config.cancel_grace = Duration::from_secs(60);
    let storage = storage(&config);

    let run_id = queue_smoke_run(&db, &storage, dir.path(), 1).await;

    let scheduler = Scheduler::start(config).await.unwrap();
    // Generous: the smoke spec takes well under a minute on an idle machine, much longer on a
    // loaded one.
    wait_for_status(&db.pool, run_id, "succeeded", Duration::from_secs(900)).await;
    scheduler.shutdown().await.unwrap();

    let points: i64 = sqlx::query_scalar("SELECT count(*) FROM metrics WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        points > 40,
        "training metrics were ingested ({points} points)"
    );
    let (final_metrics, best): (Value, Value) =
        sqlx::query_as("SELECT final_metrics, best_metrics FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        final_metrics.as_object().is_some_and(|m| !m.is_empty()),
        "{final_metrics}"
    );
    assert!(best.as_object().is_some_and(|m| !m.is_empty()), "{best}");

    let (files, prefix): (Value, String) = sqlx::query_as(
        "SELECT files, storage_prefix FROM checkpoints \
         WHERE run_id = $1 AND kind = 'final' AND deleted_at IS NULL",
    )
    .bind(run_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let files: Vec<CheckpointFile> = serde_json::from_value(files).unwrap();
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert!(names.contains(&"student.export.safetensors"), "{names:?}");
    assert!(names.contains(&"model_card.json"), "{names:?}");
    for file in &files {
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
    }
}

/// SIGKILL of the real trainer after its first stored checkpoint: the next attempt downloads
/// that checkpoint (manifest included), resumes at its step and the run succeeds.
#[tokio::test]
async fn a_killed_real_trainer_resumes_from_its_stored_checkpoint() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&db, dir.path(), 1);
    config.trainer_bin = real_trainer_bin();
    let storage = storage(&config);
    let run_id = queue_smoke_run(&db, &storage, dir.path(), 3).await;
    let scheduler = Scheduler::start(config).await.unwrap();

    kill_trainer_after_first_checkpoint(&db.pool, run_id, Duration::from_secs(900)).await;

    wait_for_status(&db.pool, run_id, "succeeded", Duration::from_secs(900)).await;
    scheduler.shutdown().await.unwrap();

    let attempts = attempts_of(&db.pool, run_id).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].1.as_deref(), Some("killed"));
    let resumed_step = resumed_checkpoint_step(&db.pool, &attempts[1]).await;
    assert!(resumed_step >= 10, "resumed at step {resumed_step}");
}
