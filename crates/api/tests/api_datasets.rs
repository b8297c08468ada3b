//! Datasets end to end against the real app, a fresh database and local storage: real
//! Fashion-MNIST IDX files, and wrong-format, corrupt, oversized and broken-off uploads.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{TestApp, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

fn fashion(name: &str) -> std::path::PathBuf {
    Path::new(FASHION_DIR).join(name)
}

async fn create(app: &TestApp, kind: &str, format: &str) -> String {
    let response = app
        .post_json(
            "/v1/datasets",
            &json!({"name": "fashion test", "kind": kind, "format": format}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "created");
    body["id"].as_str().unwrap().to_owned()
}

/// Uploads a file as a streamed body (chunked, no Content-Length).
async fn upload_file(app: &TestApp, id: &str, part: &str, file: &Path) -> reqwest::Response {
    let handle = tokio::fs::File::open(file)
        .await
        .expect("fixture file opens");
    let stream = tokio_util::io::ReaderStream::new(handle);
    app.request(Method::PUT, &format!("/v1/datasets/{id}/parts/{part}"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap()
}

async fn upload_bytes(app: &TestApp, id: &str, part: &str, bytes: Vec<u8>) -> reqwest::Response {
    app.request(Method::PUT, &format!("/v1/datasets/{id}/parts/{part}"))
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn wait_until_settled(app: &TestApp, id: &str) -> Value {
    for _ in 0..600 {
        let body: Value = app
            .get(&format!("/v1/datasets/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["status"] == "ready" || body["status"] == "failed" {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("dataset {id} did not finish ingesting within 60 s");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn fashion_mnist_is_uploaded_ingested_and_sampled() {
    let app = spawn_app().await;
    let id = create(&app, "labeled", "idx").await;
    let images = fashion("t10k-images-idx3-ubyte.gz");
    let labels = fashion("t10k-labels-idx1-ubyte.gz");

    let first = upload_file(&app, &id, "images", &images).await;
    assert_eq!(first.status(), StatusCode::OK);
    let after_images: Value = first.json().await.unwrap();
    assert_eq!(after_images["missing_parts"], json!(["labels"]));
    assert_eq!(
        after_images["parts"][0]["sha256"],
        sha256_hex(&std::fs::read(&images).unwrap())
    );
    let second = upload_file(&app, &id, "labels", &labels).await;
    assert_eq!(second.status(), StatusCode::OK);
    let dataset = wait_until_settled(&app, &id).await;

    assert_eq!(dataset["status"], "ready", "{dataset}");
    let stats = &dataset["stats"];
    assert_eq!(stats["count"], 10_000);
    assert_eq!(
        (stats["height"].as_u64(), stats["width"].as_u64()),
        (Some(28), Some(28))
    );
    assert_eq!(stats["channels"], 1);
    assert_eq!(stats["num_classes"], 10);
    assert_eq!(stats["class_counts"], json!(vec![1000; 10]));
    let sha = dataset["canonical_sha256"].as_str().unwrap();
    let key = format!("datasets/{id}/canonical-{sha}.mpld");
    let stored = app
        .state
        .storage
        .get_bytes(&key)
        .await
        .expect("canonical form stored");
    assert_eq!(sha256_hex(&stored), sha);

    let samples: Value = app
        .get(&format!("/v1/datasets/{id}/samples?count=5"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(samples.as_array().unwrap().len(), 5);
    assert_eq!(samples[1]["index"], 2000);
    assert!(samples[0]["label"].as_u64().unwrap() < 10);
    let png = app
        .get(&format!("/v1/datasets/{id}/samples/2000"))
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), StatusCode::OK);
    assert_eq!(png.headers()["content-type"], "image/png");
    assert!(png.bytes().await.unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));
    let out_of_range = app
        .get(&format!("/v1/datasets/{id}/samples/10000"))
        .send()
        .await;
    assert_eq!(out_of_range.unwrap().status(), StatusCode::NOT_FOUND);
    let listed: Value = app
        .get("/v1/datasets")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], id);
}

#[tokio::test]
async fn a_file_of_the_wrong_kind_fails_with_the_parsers_message() {
    let app = spawn_app().await;
    let id = create(&app, "labeled", "idx").await;

    // The labels file where the images belong, and the images where the labels belong.
    upload_file(&app, &id, "images", &fashion("t10k-labels-idx1-ubyte.gz")).await;
    upload_file(&app, &id, "labels", &fashion("t10k-images-idx3-ubyte.gz")).await;
    let dataset = wait_until_settled(&app, &id).await;

    assert_eq!(dataset["status"], "failed");
    let reason = dataset["failure_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("images: "),
        "the reason must name the part: {reason}"
    );
    assert!(reason.contains("dimensions"), "unhelpful reason: {reason}");
    assert!(
        !reason.contains("/tmp"),
        "the reason leaks a server path: {reason}"
    );
    assert!(dataset["stats"].is_null());
    let samples = app
        .get(&format!("/v1/datasets/{id}/samples"))
        .send()
        .await
        .unwrap();
    assert_eq!(samples.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_truncated_file_fails_and_a_corrected_upload_recovers() {
    let app = spawn_app().await;
    let id = create(&app, "unlabeled", "idx").await;
    let raw = decompress(&fashion("t10k-images-idx3-ubyte.gz"));

    upload_bytes(&app, &id, "images", raw[..raw.len() / 2].to_vec()).await;
    let failed = wait_until_settled(&app, &id).await;
    let reupload = upload_bytes(&app, &id, "images", raw.clone()).await;
    let ready = wait_until_settled(&app, &id).await;

    assert_eq!(failed["status"], "failed");
    assert!(
        failed["failure_reason"]
            .as_str()
            .unwrap()
            .contains("truncated"),
        "{failed}"
    );
    assert_eq!(reupload.status(), StatusCode::OK);
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["stats"]["count"], 10_000);
    assert_eq!(ready["stats"]["num_classes"], 0);
    let objects = app
        .state
        .storage
        .list(&format!("datasets/{id}"))
        .await
        .unwrap();
    assert_eq!(
        objects.len(),
        2,
        "one part and one canonical file: {objects:?}"
    );
}

#[tokio::test]
async fn an_oversized_upload_is_refused_and_the_previous_part_survives() {
    let app = spawn_app_with(|config| config.max_upload_bytes = 1_000).await;
    let id = create(&app, "labeled", "idx").await;
    let small = vec![7u8; 500];
    upload_bytes(&app, &id, "labels", small.clone()).await;

    let declared = upload_bytes(&app, &id, "labels", vec![1u8; 5_000]).await;
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..10).map(|_| Ok(Bytes::from(vec![2u8; 400]))).collect();
    let streamed = app
        .request(Method::PUT, &format!("/v1/datasets/{id}/parts/labels"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();

    assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(streamed.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let dataset: Value = app
        .get(&format!("/v1/datasets/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dataset["parts"][0]["sha256"], sha256_hex(&small));
    let objects = app
        .state
        .storage
        .list(&format!("datasets/{id}"))
        .await
        .unwrap();
    assert_eq!(
        objects.len(),
        1,
        "a refused upload left bytes behind: {objects:?}"
    );
}

#[tokio::test]
async fn an_upload_that_breaks_off_leaves_the_previous_part_intact() {
    let app = spawn_app().await;
    let id = create(&app, "labeled", "idx").await;
    let original = vec![9u8; 300];
    upload_bytes(&app, &id, "labels", original.clone()).await;

    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(vec![1u8; 100_000])),
        Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "client crashed",
        )),
    ];
    let broken = app
        .request(Method::PUT, &format!("/v1/datasets/{id}/parts/labels"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert!(broken.is_err() || broken.unwrap().status() == StatusCode::BAD_REQUEST);
    let dataset: Value = app
        .get(&format!("/v1/datasets/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dataset["parts"][0]["sha256"], sha256_hex(&original));
    let objects = app
        .state
        .storage
        .list(&format!("datasets/{id}"))
        .await
        .unwrap();
    assert_eq!(objects.len(), 1, "{objects:?}");
}

#[tokio::test]
async fn bad_requests_get_clear_client_errors() {
    let app = spawn_app().await;
    let id = create(&app, "labeled", "idx").await;

    let bad_kind = app
        .post_json(
            "/v1/datasets",
            &json!({"name": "x", "kind": "some", "format": "idx"}),
        )
        .send()
        .await
        .unwrap();
    let unknown_field = app
        .post_json(
            "/v1/datasets",
            &json!({"name": "x", "kind": "labeled", "format": "idx", "colour": 1}),
        )
        .send()
        .await
        .unwrap();
    let bad_part = upload_bytes(&app, &id, "archive", vec![1, 2, 3]).await;
    let traversal = upload_bytes(&app, &id, "..%2F..%2Fetc", vec![1]).await;
    let unknown = app
        .get("/v1/datasets/00000000-0000-0000-0000-000000000000")
        .send()
        .await
        .unwrap();
    let not_a_uuid = app.get("/v1/datasets/nope").send().await.unwrap();
    let early_ingest = app
        .request(Method::POST, &format!("/v1/datasets/{id}/ingest"))
        .send()
        .await
        .unwrap();

    assert_eq!(bad_kind.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = bad_kind.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "kind");
    assert_eq!(unknown_field.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_part.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(traversal.status().is_client_error());
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(not_a_uuid.status(), StatusCode::BAD_REQUEST);
    assert_eq!(early_ingest.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_dataset_in_use_by_a_queued_run_cannot_be_deleted() {
    let app = spawn_app().await;
    let id = create(&app, "labeled", "idx").await;
    let spare = create(&app, "labeled", "idx").await;
    upload_bytes(&app, &spare, "labels", vec![1u8; 10]).await;
    let spec = json!({"data": {"labeled": {"dataset_id": id}}});
    sqlx::query("INSERT INTO runs (id, algorithm, spec, total_steps) VALUES ($1, 'mpl', $2, 10)")
        .bind(uuid::Uuid::now_v7())
        .bind(&spec)
        .execute(&app.db)
        .await
        .unwrap();

    let refused = app
        .delete(&format!("/v1/datasets/{id}"))
        .send()
        .await
        .unwrap();
    let deleted = app
        .delete(&format!("/v1/datasets/{spare}"))
        .send()
        .await
        .unwrap();
    let gone = app
        .get(&format!("/v1/datasets/{spare}"))
        .send()
        .await
        .unwrap();

    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let objects = app
        .state
        .storage
        .list(&format!("datasets/{spare}"))
        .await
        .unwrap();
    assert!(objects.is_empty(), "{objects:?}");
}

fn decompress(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let file = std::fs::File::open(path).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .unwrap();
    out
}
