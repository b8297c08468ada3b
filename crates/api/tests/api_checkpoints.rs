//! Checkpoint listing and downloads (ETag, Content-Length, Range, 416, export, model card)
//! against the real app, with checkpoint rows and files stored as the scheduler stores them.

mod common;

use common::{TestApp, spawn_app};
use futures::stream;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

struct Stored {
    run_id: Uuid,
    checkpoint_id: Uuid,
    weights: Vec<u8>,
    weights_sha256: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A run with one `final` checkpoint of three files, bytes in storage and a row in Postgres.
async fn store_checkpoint(app: &TestApp) -> Stored {
    let run_id = Uuid::now_v7();
    let checkpoint_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO runs (id, algorithm, spec, total_steps, status) \
         VALUES ($1, 'mpl', '{}', 10, 'succeeded')",
    )
    .bind(run_id)
    .execute(&app.db)
    .await
    .unwrap();
    let weights: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let card = br#"{"architecture": "wide_resnet", "classes": 10}"#.to_vec();
    let export = b"exported student".to_vec();
    let prefix = format!("checkpoints/{run_id}/{checkpoint_id}");
    let mut files = Vec::new();
    for (name, bytes) in [
        ("student.safetensors", &weights),
        ("model_card.json", &card),
        ("student.export.safetensors", &export),
    ] {
        let body = stream::iter(vec![Ok(bytes::Bytes::from(bytes.clone()))]);
        let outcome = app
            .state
            .storage
            .put_stream(&format!("{prefix}/{name}"), body, u64::MAX)
            .await
            .unwrap();
        files.push(json!({"name": name, "size_bytes": outcome.size_bytes,
            "sha256": outcome.sha256}));
    }
    sqlx::query(
        "INSERT INTO checkpoints (id, run_id, attempt, step, kind, files, storage_prefix, \
         size_bytes, metrics) VALUES ($1, $2, 1, 10, 'final', $3, $4, $5, $6)",
    )
    .bind(checkpoint_id)
    .bind(run_id)
    .bind(json!(files))
    .bind(&prefix)
    .bind((weights.len() + card.len() + export.len()) as i64)
    .bind(json!({"student/top1": 0.5}))
    .execute(&app.db)
    .await
    .unwrap();
    Stored {
        run_id,
        checkpoint_id,
        weights_sha256: sha256_hex(&weights),
        weights,
    }
}

#[tokio::test]
async fn checkpoints_are_listed_per_run_and_fetched_by_id() {
    let app = spawn_app().await;
    let stored = store_checkpoint(&app).await;

    let listed: Value = app
        .get(&format!("/v1/runs/{}/checkpoints", stored.run_id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let one = app
        .get(&format!("/v1/checkpoints/{}", stored.checkpoint_id))
        .send()
        .await
        .unwrap();
    let unknown_run = app
        .get(&format!("/v1/runs/{}/checkpoints", Uuid::nil()))
        .send()
        .await
        .unwrap();

    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["kind"], "final");
    assert_eq!(listed[0]["files"][0]["sha256"], stored.weights_sha256);
    assert_eq!(one.status(), StatusCode::OK);
    assert_eq!(unknown_run.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_file_downloads_whole_with_its_hash_as_etag() {
    let app = spawn_app().await;
    let stored = store_checkpoint(&app).await;
    let path = format!(
        "/v1/checkpoints/{}/files/student.safetensors",
        stored.checkpoint_id
    );

    let response = app.get(&path).send().await.unwrap();
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let length = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .to_owned();
    let accept = response.headers()["accept-ranges"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.bytes().await.unwrap();
    let revalidated = app
        .get(&path)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();

    assert_eq!(etag, format!("\"{}\"", stored.weights_sha256));
    assert_eq!(length, stored.weights.len().to_string());
    assert_eq!(accept, "bytes");
    assert_eq!(sha256_hex(&body), stored.weights_sha256);
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn a_range_gets_206_and_an_impossible_range_gets_416() {
    let app = spawn_app().await;
    let stored = store_checkpoint(&app).await;
    let path = format!(
        "/v1/checkpoints/{}/files/student.safetensors",
        stored.checkpoint_id
    );
    let size = stored.weights.len();

    let partial = app
        .get(&path)
        .header("range", "bytes=100-1099")
        .send()
        .await
        .unwrap();
    let tail = app
        .get(&path)
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    let beyond = app
        .get(&path)
        .header("range", format!("bytes={size}-"))
        .send()
        .await
        .unwrap();

    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        partial.headers()["content-range"],
        format!("bytes 100-1099/{size}").as_str()
    );
    assert_eq!(partial.bytes().await.unwrap(), &stored.weights[100..1100]);
    assert_eq!(tail.bytes().await.unwrap(), &stored.weights[size - 10..]);
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        beyond.headers()["content-range"],
        format!("bytes */{size}").as_str()
    );
}

#[tokio::test]
async fn the_export_and_model_card_are_served_and_unknown_files_are_404() {
    let app = spawn_app().await;
    let stored = store_checkpoint(&app).await;
    let base = format!("/v1/checkpoints/{}", stored.checkpoint_id);

    let export = app.get(&format!("{base}/export")).send().await.unwrap();
    let card = app.get(&format!("{base}/model-card")).send().await.unwrap();
    let unknown = app
        .get(&format!("{base}/files/secrets.txt"))
        .send()
        .await
        .unwrap();
    let traversal = app
        .get(&format!("{base}/files/..%2F..%2F..%2Fetc%2Fpasswd"))
        .send()
        .await
        .unwrap();

    assert_eq!(export.bytes().await.unwrap(), &b"exported student"[..]);
    assert_eq!(card.headers()["content-type"], "application/json");
    let card: Value = card.json().await.unwrap();
    assert_eq!(card["classes"], 10);
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(traversal.status(), StatusCode::NOT_FOUND);
}
