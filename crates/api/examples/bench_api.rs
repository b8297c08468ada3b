//! Load benchmark of a running `mpl-server` on loopback; `scripts/bench-api.sh` starts the server
//! against a fresh database and runs this.
//!
//! It measures run submissions per second and their latency percentiles under concurrent load,
//! the time of a metrics query over a 1 000 000-point series downsampled to 1 000 points, and the
//! throughput of a checkpoint download together with the server's resident memory during it.
//! Setup rows (a ready dataset, the metric points, a checkpoint whose file is placed in the local
//! storage directory) are written straight to Postgres, as ingestion and a scheduler would.
//!
//! Usage: `bench_api URL TOKEN DATABASE_URL OBJECTS_DIR SERVER_PID [SUBMISSIONS] [CONCURRENCY]
//! [CHECKPOINT_MIB]`

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

struct Bench {
    url: String,
    token: String,
    db: sqlx::PgPool,
    objects_dir: PathBuf,
    server_pid: u32,
    client: reqwest::Client,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        bail!(
            "usage: bench_api URL TOKEN DATABASE_URL OBJECTS_DIR SERVER_PID [SUBMISSIONS] \
               [CONCURRENCY] [CHECKPOINT_MIB]"
        );
    }
    let number = |i: usize, default: usize| -> Result<usize> {
        args.get(i).map_or(Ok(default), |a| {
            a.parse().with_context(|| format!("argument {i}: {a:?}"))
        })
    };
    let bench = Bench {
        url: args[1].clone(),
        token: args[2].clone(),
        db: sqlx::PgPool::connect(&args[3])
            .await
            .context("connecting to Postgres")?,
        objects_dir: PathBuf::from(&args[4]),
        server_pid: args[5].parse().context("SERVER_PID")?,
        client: reqwest::Client::new(),
    };
    let submissions = number(6, 2_000)?;
    let concurrency = number(7, 32)?;
    let checkpoint_mib = number(8, 1_024)?;

    let dataset = bench.ready_dataset().await?;
    bench.submissions(dataset, submissions, concurrency).await?;
    let run = bench.submit(dataset, None).await?.0;
    bench.metrics_query(run).await?;
    bench.checkpoint_download(run, checkpoint_mib).await?;
    Ok(())
}

impl Bench {
    async fn ready_dataset(&self) -> Result<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO datasets (id, name, kind, format, status) \
             VALUES ($1, 'bench', 'labeled', 'idx', 'ready')",
        )
        .bind(id)
        .execute(&self.db)
        .await?;
        Ok(id)
    }

    /// Submits one run; returns its id and the request latency.
    async fn submit(&self, dataset: Uuid, key: Option<String>) -> Result<(Uuid, Duration)> {
        let spec = json!({"data": {"labeled": {"dataset_id": dataset}}, "total_steps": 100});
        let mut request = self
            .client
            .post(format!("{}/v1/runs", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"spec": spec}));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let started = Instant::now();
        let response = request.send().await?;
        let latency = started.elapsed();
        if response.status() != 201 {
            bail!("submission answered {}", response.status());
        }
        let run: Value = response.json().await?;
        let id = run["id"].as_str().context("run id")?.parse()?;
        Ok((id, latency))
    }

    async fn submissions(&self, dataset: Uuid, count: usize, concurrency: usize) -> Result<()> {
        let started = Instant::now();
        let latencies: Vec<Duration> = futures::stream::iter(0..count)
            .map(|i| self.submit(dataset, Some(format!("bench-{i}"))))
            .buffer_unordered(concurrency)
            .map(|r| r.map(|(_, latency)| latency))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        let elapsed = started.elapsed();
        let mut sorted = latencies;
        sorted.sort();
        let pct = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
        println!(
            "submissions: {count} runs, {concurrency} concurrent: {:.0} runs/s, \
             p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            count as f64 / elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            sorted[sorted.len() - 1].as_secs_f64() * 1e3,
        );
        Ok(())
    }

    async fn metrics_query(&self, run: Uuid) -> Result<()> {
        let started = Instant::now();
        sqlx::query(
            "INSERT INTO metrics (run_id, name, step, value) \
             SELECT $1, 'student/loss', s, sin(s / 5000.0) + random() \
             FROM generate_series(0, 999999) s",
        )
        .bind(run)
        .execute(&self.db)
        .await?;
        println!(
            "metrics: 1 000 000 points inserted in one statement in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        let url = format!(
            "{}/v1/runs/{run}/metrics?names=student/loss&points=1000",
            self.url
        );
        let mut times = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let response = self
                .client
                .get(&url)
                .bearer_auth(&self.token)
                .send()
                .await?;
            let body: Value = response.json().await?;
            times.push(started.elapsed());
            let points = body["series"][0]["points"].as_array().map_or(0, Vec::len);
            if points == 0 || points > 1_000 {
                bail!("unexpected series: {points} points");
            }
        }
        times.sort();
        println!(
            "metrics query, 1 000 000 points -> 1 000: median {:.1} ms, best {:.1} ms, \
             worst {:.1} ms (20 requests)",
            times[10].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[19].as_secs_f64() * 1e3,
        );
        Ok(())
    }

    /// Stores a checkpoint file of `mib` MiB in the local storage directory, records it, and
    /// downloads it through the api while sampling the server's resident memory.
    async fn checkpoint_download(&self, run: Uuid, mib: usize) -> Result<()> {
        let checkpoint = Uuid::new_v4();
        let prefix = format!("checkpoints/{run}/{checkpoint}");
        let path = self.objects_dir.join(&prefix).join("state.safetensors");
        std::fs::create_dir_all(path.parent().context("file path has a parent")?)?;
        let (size, sha256) = write_file(&path, mib)?;
        let files = json!([{"name": "state.safetensors", "size_bytes": size, "sha256": sha256}]);
        sqlx::query(
            "INSERT INTO checkpoints (id, run_id, attempt, step, kind, files, storage_prefix, \
                 size_bytes) VALUES ($1, $2, 1, 100, 'final', $3, $4, $5)",
        )
        .bind(checkpoint)
        .bind(run)
        .bind(&files)
        .bind(&prefix)
        .bind(size as i64)
        .execute(&self.db)
        .await?;

        let rss_before = rss_kib(self.server_pid);
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
        let sampler = {
            let (peak, pid) = (peak.clone(), self.server_pid);
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let url = format!(
            "{}/v1/checkpoints/{checkpoint}/files/state.safetensors",
            self.url
        );
        let started = Instant::now();
        let response = self
            .client
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await?;
        if response.status() != 200 {
            sampler.abort();
            println!(
                "checkpoint download: not measured (the api answered {})",
                response.status()
            );
            return Ok(());
        }
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            received += chunk.len() as u64;
            hasher.update(&chunk);
        }
        let elapsed = started.elapsed();
        sampler.abort();
        if received != size || hex::encode(hasher.finalize()) != sha256 {
            bail!("the downloaded checkpoint differs from the stored file");
        }
        println!(
            "checkpoint download: {mib} MiB in {:.2} s = {:.0} MiB/s; server RSS {} MiB before, \
             peak {} MiB during",
            elapsed.as_secs_f64(),
            received as f64 / 1_048_576.0 / elapsed.as_secs_f64(),
            rss_before / 1024,
            peak.load(std::sync::atomic::Ordering::Relaxed) / 1024,
        );
        std::fs::remove_file(&path)?;
        Ok(())
    }
}

/// Writes `mib` MiB of varied bytes; returns the size and the hex sha256.
fn write_file(path: &std::path::Path, mib: usize) -> Result<(u64, String)> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    for i in 0..mib {
        for (j, byte) in block.iter_mut().enumerate() {
            *byte = (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8;
        }
        hasher.update(&block);
        file.write_all(&block)?;
    }
    file.flush()?;
    Ok(((mib as u64) << 20, hex::encode(hasher.finalize())))
}

/// Resident memory of a process in KiB (0 when unreadable).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
