//! Helpers shared by the trainer's integration tests: Fashion-MNIST specs and running the
//! `trainer` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

/// The Fashion-MNIST files installed by the `dataset-fashion-mnist` package.
pub const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// A labeled IDX source of Fashion-MNIST (`train` or `t10k`).
pub fn fashion(split: &str) -> Value {
    json!({
        "path": format!("{FASHION}/{split}-images-idx3-ubyte.gz"),
        "labels_path": format!("{FASHION}/{split}-labels-idx1-ubyte.gz"),
        "format": "idx",
    })
}

/// A small, fast spec: WRN-10-1 on Fashion-MNIST, CPU, two threads.
pub fn tiny_spec(algorithm: &str, total_steps: u64) -> Value {
    json!({
        "algorithm": algorithm,
        "model": {"arch": "wide_resnet", "depth": 10, "widen_factor": 1, "dropout": 0.2},
        "data": {"labeled": fashion("train"), "num_labeled": 200, "num_validation": 100},
        "batch_size": 8,
        "mu": 2,
        "total_steps": total_steps,
        "teacher_optimizer": {"lr": 0.05, "warmup_steps": 2},
        "student_optimizer": {"lr": 0.05, "warmup_steps": 2},
        "student_wait_steps": 1,
        "uda": {"ramp_steps": 4},
        "augment": {"randaugment_magnitude": 10},
        "finetune": {"enabled": true, "steps": 4, "batch_size": 16, "lr": 0.001},
        "eval": {"interval_steps": 1000, "batch_size": 256},
        "checkpoint": {"interval_steps": 3, "keep_latest": 10},
        "seed": 7,
        "device": {"device": "cpu", "threads": 2},
    })
}

/// Writes `spec` into `dir/spec.json` and returns the path.
pub fn write_spec(dir: &Path, spec: &Value) -> PathBuf {
    let path = dir.join("spec.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(spec).expect("spec serialises"),
    )
    .expect("spec written");
    path
}

/// The trainer binary built for these tests.
pub fn trainer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
}

/// Runs `trainer run` and returns its output.
pub fn run(spec: &Path, out: &Path, resume: Option<&Path>) -> Output {
    let mut cmd = trainer();
    cmd.args(["run", "--spec"]).arg(spec).arg("--out").arg(out);
    if let Some(dir) = resume {
        cmd.arg("--resume").arg(dir);
    }
    cmd.output().expect("trainer starts")
}

/// Writes `spec` into `dir`, runs it to `dir/out`, asserts that it succeeded and returns its
/// events.
pub fn run_to_success(dir: &Path, spec: &Value) -> Vec<Value> {
    let output = run(&write_spec(dir, spec), &dir.join("out"), None);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    events(&output)
}

/// Parses stdout as JSON lines; panics with the offending line when one is not JSON.
pub fn events(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect()
}

/// The events of one kind.
pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// stderr of a finished process, for assertion messages.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The sha256 of a file as recorded in a checkpoint's manifest.
pub fn manifest_sha(checkpoint: &Path, file: &str) -> String {
    let text = std::fs::read_to_string(checkpoint.join("manifest.json")).expect("manifest");
    let manifest: Value = serde_json::from_str(&text).expect("manifest is JSON");
    manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["name"] == file)
        .and_then(|f| f["sha256"].as_str())
        .unwrap_or_else(|| panic!("{file} missing from {}", checkpoint.display()))
        .to_string()
}
