//! A stand-in for the `trainer` binary that speaks its exact command line and event protocol
//! without doing any learning, so the scheduler's supervision can be exercised in seconds.
//!
//! `scripted_trainer run --spec SPEC --out DIR [--resume CHECKPOINT_DIR]` validates the spec
//! with the same code as the trainer, checks that its data paths exist, then walks through
//! `total_steps` steps (`SCRIPTED_TRAINER_STEP_MS` milliseconds each, default 25), emitting
//! progress and metrics every step, an evaluation every `eval.interval_steps` and a checkpoint
//! every `checkpoint.interval_steps`. SIGTERM writes a checkpoint, emits `stopped` and exits
//! with the STOPPED code; `--resume` continues from the step recorded in the checkpoint.
//! `scripted_trainer export --checkpoint DIR --out FILE.safetensors` writes the student and its
//! model card `FILE.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mpl_protocol::{CheckpointFile, CheckpointKind, Event, ModelRole, RunSpec, exit_code};
use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};

fn emit(event: &Event) {
    println!("{}", event.to_line());
}

fn fail(code: i32, reason: String) -> ! {
    eprintln!("error: {reason}");
    emit(&Event::Failed { reason });
    std::process::exit(code);
}

fn flag(args: &[String], name: &str) -> Option<String> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).cloned()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run(&args).await,
        Some("export") => export(&args),
        _ => fail(
            exit_code::INVALID_INPUT,
            "usage: run ... | export ...".into(),
        ),
    }
}

fn export(args: &[String]) {
    let (Some(checkpoint), Some(out)) = (flag(args, "--checkpoint"), flag(args, "--out")) else {
        fail(
            exit_code::INVALID_INPUT,
            "export needs --checkpoint and --out".into(),
        );
    };
    let state = std::fs::read(Path::new(&checkpoint).join("state.json"))
        .unwrap_or_else(|e| fail(exit_code::INVALID_INPUT, format!("{checkpoint}: {e}")));
    let out = PathBuf::from(out);
    let weights: Vec<u8> = state.iter().rev().copied().collect();
    write_or_fail(&out, &weights);
    let card = serde_json::json!({"architecture": "scripted", "source": checkpoint});
    write_or_fail(&out.with_extension("json"), card.to_string().as_bytes());
}

fn write_or_fail(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        fail(exit_code::FAILED, format!("{}: {e}", path.display()));
    }
}

async fn run(args: &[String]) {
    let (Some(spec_path), Some(out)) = (flag(args, "--spec"), flag(args, "--out")) else {
        fail(
            exit_code::INVALID_INPUT,
            "run needs --spec and --out".into(),
        );
    };
    let text = std::fs::read_to_string(&spec_path)
        .unwrap_or_else(|e| fail(exit_code::INVALID_INPUT, format!("{spec_path}: {e}")));
    let spec =
        RunSpec::from_json(&text).unwrap_or_else(|e| fail(exit_code::INVALID_INPUT, e.to_string()));
    for source in [Some(&spec.data.labeled), spec.data.unlabeled.as_ref()]
        .into_iter()
        .flatten()
    {
        let path = source.path.clone().unwrap_or_default();
        if !Path::new(&path).exists() {
            fail(
                exit_code::INVALID_INPUT,
                format!("data file {path:?} does not exist"),
            );
        }
    }

    let resume = flag(args, "--resume");
    let start = match &resume {
        Some(dir) => read_step(Path::new(dir)),
        None => 0,
    };
    let step_ms = std::env::var("SCRIPTED_TRAINER_STEP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let out = PathBuf::from(out);
    let mut terminate = signal(SignalKind::terminate())
        .unwrap_or_else(|e| fail(exit_code::FAILED, format!("cannot watch SIGTERM: {e}")));

    eprintln!("scripted trainer: steps {start}..{}", spec.total_steps);
    emit(&Event::Started {
        step: start,
        total_steps: spec.total_steps,
        device: spec.device.device.clone(),
        resumed_from: resume,
        num_labeled: spec.data.num_labeled as u64,
        num_unlabeled: 0,
        num_eval: 0,
        num_classes: 10,
        batch_norm_policy: "scripted".into(),
    });

    for step in start + 1..=spec.total_steps {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(step_ms)) => {}
            _ = terminate.recv() => {
                let path = checkpoint(&out, step - 1, CheckpointKind::Latest);
                emit(&Event::Stopped { step: step - 1, checkpoint: Some(path) });
                std::process::exit(exit_code::STOPPED);
            }
        }
        emit(&Event::Progress {
            step,
            total_steps: spec.total_steps,
            phase: "mpl".into(),
            images_per_sec: 1000.0,
            eta_secs: ((spec.total_steps - step) * step_ms) as f64 / 1000.0,
        });
        let values = BTreeMap::from([
            ("teacher/loss".to_string(), 1.0 / step as f64),
            ("student/loss".to_string(), 2.0 / step as f64),
        ]);
        emit(&Event::Metrics { step, values });
        if step % spec.eval.interval_steps == 0 {
            emit(&eval(step));
        }
        if step % spec.checkpoint.interval_steps == 0 && step < spec.total_steps {
            checkpoint(&out, step, CheckpointKind::Latest);
        }
    }

    let step = spec.total_steps;
    emit(&eval(step));
    checkpoint(&out, step, CheckpointKind::Final);
    let metrics = BTreeMap::from([("student/top1".to_string(), accuracy(step))]);
    emit(&Event::Finished { step, metrics });
}

fn accuracy(step: u64) -> f64 {
    1.0 - 1.0 / (step as f64 + 1.0)
}

fn eval(step: u64) -> Event {
    Event::Eval {
        step,
        model: ModelRole::Student,
        split: "eval".into(),
        top1: accuracy(step),
        top5: 1.0,
        loss: 1.0 / (step as f64 + 1.0),
        per_class_accuracy: vec![accuracy(step); 10],
        confusion_matrix: None,
    }
}

fn read_step(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("state.json"))
        .unwrap_or_else(|e| fail(exit_code::INVALID_INPUT, format!("{}: {e}", dir.display())));
    let state: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| fail(exit_code::INVALID_INPUT, format!("state.json: {e}")));
    state["step"].as_u64().unwrap_or(0)
}

/// Writes a checkpoint directory (state, and some weight bytes) and announces it.
fn checkpoint(out: &Path, step: u64, kind: CheckpointKind) -> String {
    let dir = out.join("checkpoints").join(format!("step-{step:08}"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        fail(exit_code::FAILED, format!("{}: {e}", dir.display()));
    }
    let state = serde_json::json!({"step": step}).to_string().into_bytes();
    let weights: Vec<u8> = (0..64 * 1024)
        .map(|i| ((i as u64 * 31 + step) % 251) as u8)
        .collect();
    let mut files = Vec::new();
    for (name, bytes) in [("state.json", state), ("weights.bin", weights)] {
        write_or_fail(&dir.join(name), &bytes);
        files.push(CheckpointFile {
            name: name.into(),
            size_bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
    }
    let path = dir.display().to_string();
    emit(&Event::Checkpoint {
        step,
        path: path.clone(),
        kind,
        files,
    });
    path
}
