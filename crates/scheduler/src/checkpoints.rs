//! Checkpoints: storing a trainer's checkpoint directory, exporting the student, recording the
//! checkpoint once its bytes are verified, retention, and fetching the resume point.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt;
use mpl_protocol::{CheckpointFile, CheckpointKind, Event};
use mpl_storage::Storage;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::ingest::check_fence;
use crate::queue::{StaleAttempt, insert_event, notify};

/// The exported student's file name inside a checkpoint.
pub const EXPORT_FILE: &str = "student.export.safetensors";
/// The model card's file name inside a checkpoint.
pub const MODEL_CARD_FILE: &str = "model_card.json";

/// Stores and records the checkpoints of one attempt.
pub struct CheckpointRecorder {
    /// Database.
    pub pool: PgPool,
    /// Object storage.
    pub storage: Storage,
    /// The trainer executable (for `trainer export`).
    pub trainer_bin: PathBuf,
    /// The run.
    pub run_id: Uuid,
    /// The attempt (fencing token).
    pub attempt: i32,
    /// Latest checkpoints to keep (the spec's `checkpoint.keep_latest`).
    pub keep_latest: i64,
    /// Scratch space for exports.
    pub scratch_dir: PathBuf,
}

impl CheckpointRecorder {
    /// Stores the checkpoint a `checkpoint` event announced and records it; returns its id.
    /// Nothing is recorded unless every file was stored and read back with the right sha256.
    pub async fn record(&self, event: &Event) -> anyhow::Result<Uuid> {
        let Event::Checkpoint {
            step,
            path,
            kind,
            files,
        } = event
        else {
            bail!("not a checkpoint event");
        };
        let id = Uuid::now_v7();
        let prefix = format!("checkpoints/{}/{id}", self.run_id);
        let dir = Path::new(path);

        let result = self.store_all(&prefix, dir, *kind, files).await;
        let stored = match result {
            Ok(stored) => stored,
            Err(err) => {
                self.discard(&prefix).await;
                return Err(err);
            }
        };
        let step = i64::try_from(*step).unwrap_or(i64::MAX);
        if let Err(err) = self.insert_row(id, step, *kind, &prefix, &stored).await {
            self.discard(&prefix).await;
            return Err(err);
        }
        tracing::info!(run_id = %self.run_id, checkpoint_id = %id, step, ?kind,
            "checkpoint stored and verified");

        if let Err(err) = self.apply_retention().await {
            tracing::warn!(run_id = %self.run_id, error = %err, "checkpoint retention failed");
        }
        Ok(id)
    }

    async fn store_all(
        &self,
        prefix: &str,
        dir: &Path,
        kind: CheckpointKind,
        files: &[CheckpointFile],
    ) -> anyhow::Result<Vec<CheckpointFile>> {
        let mut stored = Vec::with_capacity(files.len() + 2);
        for file in files {
            check_file_name(&file.name)?;
            let expected = file.sha256.to_ascii_lowercase();
            let size_bytes =
                store_verified(&self.storage, prefix, dir, &file.name, &expected).await?;
            stored.push(CheckpointFile {
                name: file.name.clone(),
                size_bytes,
                sha256: expected,
            });
        }
        if matches!(kind, CheckpointKind::Final | CheckpointKind::Best) {
            match self.export(prefix, dir).await {
                Ok(mut exported) => stored.append(&mut exported),
                Err(err) => tracing::warn!(run_id = %self.run_id, error = format!("{err:#}"),
                    "exporting the student failed; the checkpoint is kept without export"),
            }
        }
        Ok(stored)
    }

    /// Runs `trainer export` on the checkpoint and stores the student and its model card.
    async fn export(&self, prefix: &str, dir: &Path) -> anyhow::Result<Vec<CheckpointFile>> {
        let out_dir = self.scratch_dir.join(format!("export-{}", Uuid::now_v7()));
        tokio::fs::create_dir_all(&out_dir)
            .await
            .with_context(|| format!("cannot create {}", out_dir.display()))?;
        let out_file = out_dir.join(EXPORT_FILE);
        let output = tokio::process::Command::new(&self.trainer_bin)
            .arg("export")
            .arg("--checkpoint")
            .arg(dir)
            .arg("--out")
            .arg(&out_file)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot start {}", self.trainer_bin.display()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            bail!("trainer export exited with {}: {tail}", output.status);
        }
        let card = ["student.export.json", "student.export.safetensors.json"]
            .into_iter()
            .map(|name| out_dir.join(name))
            .find(|path| path.exists())
            .context("trainer export wrote no model card beside the student")?;
        tokio::fs::rename(&card, out_dir.join(MODEL_CARD_FILE))
            .await
            .with_context(|| format!("cannot rename {}", card.display()))?;

        let mut stored = Vec::new();
        for name in [EXPORT_FILE, MODEL_CARD_FILE] {
            let sha256 = sha256_of_file(&out_dir.join(name)).await?;
            let size_bytes = store_verified(&self.storage, prefix, &out_dir, name, &sha256).await?;
            stored.push(CheckpointFile {
                name: name.to_owned(),
                size_bytes,
                sha256,
            });
        }
        let _ = tokio::fs::remove_dir_all(&out_dir).await;
        Ok(stored)
    }

    async fn insert_row(
        &self,
        id: Uuid,
        step: i64,
        kind: CheckpointKind,
        prefix: &str,
        files: &[CheckpointFile],
    ) -> anyhow::Result<()> {
        let kind = kind_name(kind);
        let size_bytes: u64 = files.iter().map(|f| f.size_bytes).sum();
        let mut tx = self.pool.begin().await?;
        check_fence(&mut tx, self.run_id, self.attempt).await?;
        sqlx::query(
            "INSERT INTO checkpoints \
                 (id, run_id, attempt, step, kind, files, storage_prefix, size_bytes, metrics) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                 (SELECT coalesce(jsonb_object_agg(name, value), '{}') FROM metrics \
                  WHERE run_id = $2 AND step = $4))",
        )
        .bind(id)
        .bind(self.run_id)
        .bind(self.attempt)
        .bind(step)
        .bind(kind)
        .bind(json!(files))
        .bind(prefix)
        .bind(i64::try_from(size_bytes)?)
        .execute(&mut *tx)
        .await?;
        let payload = json!({"checkpoint_id": id, "step": step, "kind": kind});
        insert_event(&mut tx, self.run_id, self.attempt, "checkpoint", payload).await?;
        notify(&mut tx, "mpl_events", &self.run_id.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Keeps the newest `keep_latest` latest checkpoints, the newest best one and every final
    /// one; the others are marked deleted first, then their objects are removed.
    pub async fn apply_retention(&self) -> anyhow::Result<()> {
        let doomed: Vec<(Uuid, String)> = sqlx::query_as(
            "WITH live AS ( \
                 SELECT id, kind, storage_prefix, row_number() OVER \
                     (PARTITION BY kind ORDER BY step DESC, created_at DESC) AS rank \
                 FROM checkpoints WHERE run_id = $1 AND deleted_at IS NULL) \
             UPDATE checkpoints c SET deleted_at = now() FROM live \
             WHERE c.id = live.id AND ((live.kind = 'latest' AND live.rank > $2) \
                 OR (live.kind = 'best' AND live.rank > 1)) \
             RETURNING c.id, c.storage_prefix",
        )
        .bind(self.run_id)
        .bind(self.keep_latest)
        .fetch_all(&self.pool)
        .await?;
        for (id, prefix) in doomed {
            self.storage
                .delete_prefix(&prefix)
                .await
                .with_context(|| format!("deleting the objects of checkpoint {id}"))?;
            tracing::debug!(run_id = %self.run_id, checkpoint_id = %id, "checkpoint retired");
        }
        Ok(())
    }

    async fn discard(&self, prefix: &str) {
        if let Err(err) = self.storage.delete_prefix(prefix).await {
            tracing::warn!(prefix, error = %err, "removing an unrecorded checkpoint failed");
        }
    }
}

/// Uploads `dir/name` to `prefix/name`, then reads the stored object back and checks that it
/// hashes to `expected`. Returns its size.
async fn store_verified(
    storage: &Storage,
    prefix: &str,
    dir: &Path,
    name: &str,
    expected: &str,
) -> anyhow::Result<u64> {
    let key = format!("{prefix}/{name}");
    let local = dir.join(name);
    let put = storage
        .put_file(&key, &local)
        .await
        .with_context(|| format!("storing checkpoint file {}", local.display()))?;
    if put.sha256 != expected {
        bail!(
            "checkpoint file {} has sha256 {}, but the trainer announced {expected}",
            local.display(),
            put.sha256
        );
    }
    let stored = sha256_of_object(storage, &key).await?;
    if stored != expected {
        bail!("stored object {key} reads back with sha256 {stored}, expected {expected}");
    }
    Ok(put.size_bytes)
}

async fn sha256_of_object(storage: &Storage, key: &str) -> anyhow::Result<String> {
    let (_, mut stream) = storage
        .get_stream(key, None)
        .await
        .with_context(|| format!("reading back {key}"))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        hasher.update(chunk.with_context(|| format!("reading back {key}"))?);
    }
    Ok(hex::encode(hasher.finalize()))
}

async fn sha256_of_file(path: &Path) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Checkpoint file names come from the trainer; only plain names are accepted, so a name can
/// never reach outside the checkpoint's directory or storage prefix.
fn check_file_name(name: &str) -> anyhow::Result<()> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name != EXPORT_FILE
        && name != MODEL_CARD_FILE;
    if !plain {
        bail!("checkpoint file name {name:?} is not a plain file name (or is reserved)");
    }
    Ok(())
}

fn kind_name(kind: CheckpointKind) -> &'static str {
    match kind {
        CheckpointKind::Latest => "latest",
        CheckpointKind::Best => "best",
        CheckpointKind::Final => "final",
    }
}

/// The checkpoint a new attempt resumes from, downloaded and verified.
#[derive(Debug, Clone)]
pub struct ResumePoint {
    /// Its id.
    pub checkpoint_id: Uuid,
    /// The step it was taken at.
    pub step: i64,
    /// The local directory holding its files.
    pub dir: PathBuf,
}

/// Downloads the run's most advanced stored checkpoint into `dest_root/<id>/`, verifying each
/// file's sha256; `None` when the run has no checkpoint yet.
pub async fn fetch_resume_point(
    pool: &PgPool,
    storage: &Storage,
    run_id: Uuid,
    dest_root: &Path,
) -> anyhow::Result<Option<ResumePoint>> {
    let row: Option<(Uuid, i64, Value, String)> = sqlx::query_as(
        "SELECT id, step, files, storage_prefix FROM checkpoints \
         WHERE run_id = $1 AND deleted_at IS NULL \
         ORDER BY step DESC, (kind = 'latest') DESC, created_at DESC LIMIT 1",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await?;
    let Some((checkpoint_id, step, files, prefix)) = row else {
        return Ok(None);
    };
    let files: Vec<CheckpointFile> = serde_json::from_value(files)
        .with_context(|| format!("checkpoint {checkpoint_id} has a malformed file list"))?;
    let dir = dest_root.join(checkpoint_id.to_string());
    tokio::fs::create_dir_all(&dir)
        .await
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for file in files {
        if file.name == EXPORT_FILE || file.name == MODEL_CARD_FILE {
            continue;
        }
        check_file_name(&file.name)?;
        let key = format!("{prefix}/{}", file.name);
        storage
            .download_to_file(&key, &dir.join(&file.name), Some(&file.sha256))
            .await
            .with_context(|| {
                format!("downloading checkpoint {checkpoint_id} file {}", file.name)
            })?;
    }
    Ok(Some(ResumePoint {
        checkpoint_id,
        step,
        dir,
    }))
}

/// True when `err` says the writer's attempt is stale.
pub fn is_stale(err: &anyhow::Error) -> bool {
    err.is::<StaleAttempt>()
}
