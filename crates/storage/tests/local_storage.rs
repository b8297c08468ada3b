//! The storage interface against a real local directory (and, where noted, memory).

use std::io;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use mpl_storage::{Storage, StorageError};
use sha2::{Digest, Sha256};

fn local_store() -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", dir.path().join("objects").display());
    let storage = Storage::from_url(&url).expect("local storage opens");
    (dir, storage)
}

/// A body of `chunks` chunks of `chunk_len` bytes, with varied content.
fn body(chunks: usize, chunk_len: usize) -> Vec<Bytes> {
    (0..chunks)
        .map(|i| {
            Bytes::from(
                (0..chunk_len)
                    .map(|j| ((i * 31 + j) % 251) as u8)
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

fn sha256_of(chunks: &[Bytes]) -> String {
    let mut hasher = Sha256::new();
    for chunk in chunks {
        hasher.update(chunk);
    }
    hex::encode(hasher.finalize())
}

async fn read_all(storage: &Storage, key: &str, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let (_, stream) = storage
        .get_stream(key, range)
        .await
        .expect("object readable");
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("stream reads");
    chunks.concat()
}

#[tokio::test]
async fn a_streamed_put_stores_the_bytes_and_reports_their_size_and_hash() {
    let (_dir, storage) = local_store();
    let chunks = body(40, 300_000);
    let expected: Vec<u8> = chunks.concat();

    let outcome = storage
        .put_stream(
            "datasets/a/part",
            stream::iter(chunks.clone()).map(Ok),
            u64::MAX,
        )
        .await
        .expect("put succeeds");

    assert_eq!(outcome.size_bytes, expected.len() as u64);
    assert_eq!(outcome.sha256, sha256_of(&chunks));
    assert_eq!(
        storage.head("datasets/a/part").await.unwrap().size_bytes,
        12_000_000
    );
    assert_eq!(read_all(&storage, "datasets/a/part", None).await, expected);
}

#[tokio::test]
async fn a_range_read_returns_exactly_those_bytes() {
    let (_dir, storage) = local_store();
    let chunks = body(3, 1000);
    let all = chunks.concat();
    storage
        .put_stream("k/range", stream::iter(chunks).map(Ok), u64::MAX)
        .await
        .unwrap();

    assert_eq!(
        read_all(&storage, "k/range", Some(10..2500)).await,
        &all[10..2500]
    );
    assert_eq!(
        read_all(&storage, "k/range", Some(2999..3000)).await,
        &all[2999..]
    );
    let past_end = storage.get_stream("k/range", Some(2990..3001)).await;
    assert!(matches!(
        past_end,
        Err(StorageError::InvalidRange { size: 3000, .. })
    ));
    let empty = storage.get_stream("k/range", Some(5..5)).await;
    assert!(matches!(empty, Err(StorageError::InvalidRange { .. })));
}

#[tokio::test]
async fn an_oversized_body_is_refused_and_the_previous_object_survives() {
    let (dir, storage) = local_store();
    let original = body(1, 100);
    storage
        .put_stream("k/obj", stream::iter(original.clone()).map(Ok), 1_000)
        .await
        .unwrap();

    let result = storage
        .put_stream("k/obj", stream::iter(body(20, 100)).map(Ok), 1_000)
        .await;

    assert!(matches!(
        result,
        Err(StorageError::TooLarge { limit_bytes: 1_000 })
    ));
    assert_eq!(read_all(&storage, "k/obj", None).await, original.concat());
    assert_eq!(
        files_under(dir.path()),
        1,
        "an aborted upload left files behind"
    );
}

#[tokio::test]
async fn a_body_that_fails_midway_stores_nothing() {
    let (dir, storage) = local_store();
    let chunks: Vec<io::Result<Bytes>> = vec![
        Ok(Bytes::from_static(b"first part")),
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ];

    let result = storage
        .put_stream("k/broken", stream::iter(chunks), u64::MAX)
        .await;

    assert!(matches!(result, Err(StorageError::Body(_))), "{result:?}");
    assert!(matches!(
        storage.head("k/broken").await,
        Err(StorageError::NotFound(_))
    ));
    assert_eq!(files_under(dir.path()), 0);
}

#[tokio::test]
async fn download_to_file_verifies_the_hash_and_writes_nothing_on_mismatch() {
    let (dir, storage) = local_store();
    let chunks = body(5, 10_000);
    let outcome = storage
        .put_stream(
            "ckpt/x/model.safetensors",
            stream::iter(chunks.clone()).map(Ok),
            u64::MAX,
        )
        .await
        .unwrap();
    let dest = dir.path().join("out.bin");

    let wrong = "0".repeat(64);
    let result = storage
        .download_to_file("ckpt/x/model.safetensors", &dest, Some(&wrong))
        .await;
    assert!(
        matches!(result, Err(StorageError::HashMismatch { .. })),
        "{result:?}"
    );
    assert!(!dest.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temp file left behind"
    );

    let got = storage
        .download_to_file("ckpt/x/model.safetensors", &dest, Some(&outcome.sha256))
        .await
        .unwrap();
    assert_eq!(got, outcome);
    assert_eq!(std::fs::read(&dest).unwrap(), chunks.concat());
}

#[tokio::test]
async fn put_file_delete_and_delete_prefix() {
    let (dir, storage) = local_store();
    let source = dir.path().join("source.bin");
    std::fs::write(&source, b"checkpoint bytes").unwrap();

    let outcome = storage.put_file("runs/r1/a", &source).await.unwrap();
    storage.put_file("runs/r1/b", &source).await.unwrap();
    storage.put_file("runs/r2/a", &source).await.unwrap();

    assert_eq!(outcome.size_bytes, 16);
    assert_eq!(
        outcome.sha256,
        hex::encode(Sha256::digest(b"checkpoint bytes"))
    );
    assert_eq!(storage.list("runs/r1").await.unwrap().len(), 2);
    storage.delete("runs/r2/a").await.unwrap();
    storage
        .delete("runs/r2/a")
        .await
        .expect("deleting twice is fine");
    assert_eq!(storage.delete_prefix("runs/r1").await.unwrap(), 2);
    assert!(storage.list("runs").await.unwrap().is_empty());
    assert!(matches!(
        storage.get_stream("runs/r1/a", None).await,
        Err(StorageError::NotFound(_))
    ));
}

#[tokio::test]
async fn the_memory_store_behaves_like_the_local_one() {
    let storage = Storage::from_url("memory://").unwrap();
    let chunks = body(2, 10);
    storage
        .put_stream("m/k", stream::iter(chunks.clone()).map(Ok), 100)
        .await
        .unwrap();
    assert_eq!(
        read_all(&storage, "m/k", Some(5..15)).await,
        &chunks.concat()[5..15]
    );
    assert_eq!(storage.get_bytes("m/k").await.unwrap(), chunks.concat());
}

fn files_under(dir: &std::path::Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            count += files_under(&entry.path());
        } else {
            count += 1;
        }
    }
    count
}
