//! Exact resume: on the CPU with a fixed seed, a run stopped at a checkpoint and resumed ends
//! with bit-identical networks to the same run done in one go; SIGTERM stops a run cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::{events, manifest_sha, of_kind, run, stderr, tiny_spec, trainer, write_spec};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const NETWORKS: [&str; 3] = [
    "student.safetensors",
    "teacher.safetensors",
    "ema.safetensors",
];

fn final_checkpoint(out: &Path, step: u64) -> std::path::PathBuf {
    out.join(format!("checkpoints/step-{step:09}-final"))
}

#[test]
fn a_resumed_mpl_run_ends_bit_identical_to_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    // 6 training steps (checkpoints after 3 and 6) and 4 fine-tuning steps (one after 3,
    // i.e. global step 9): resume once from mid-training and once from mid-fine-tuning.
    let spec = write_spec(dir.path(), &tiny_spec("mpl", 6));
    let whole = dir.path().join("whole");
    let output = run(&spec, &whole, None);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    for resume_step in [3u64, 9] {
        let from = whole.join(format!("checkpoints/step-{resume_step:09}"));
        let out = dir.path().join(format!("resumed-{resume_step}"));
        let output = run(&spec, &out, Some(&from));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let started = &events(&output)[0];
        assert_eq!(started["step"], resume_step);
        assert!(started["resumed_from"].as_str().unwrap().contains("step-"));
        for file in NETWORKS {
            assert_eq!(
                manifest_sha(&final_checkpoint(&whole, 10), file),
                manifest_sha(&final_checkpoint(&out, 10), file),
                "{file} differs after resuming from step {resume_step}"
            );
        }
    }
}

#[test]
fn a_sigterm_stops_with_a_checkpoint_that_resumes_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = tiny_spec("uda", 40);
    spec["checkpoint"]["interval_steps"] = serde_json::json!(1000);
    let spec = write_spec(dir.path(), &spec);
    let out = dir.path().join("out");

    let mut child = trainer()
        .args(["run", "--spec"])
        .arg(&spec)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        let is_second_step = event["event"] == "metrics" && event["step"] == 2;
        seen.push(event);
        if is_second_step {
            break;
        }
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    for line in lines {
        seen.push(serde_json::from_str(&line.unwrap()).unwrap());
    }
    let status = child.wait().unwrap();

    assert_eq!(status.code(), Some(3), "{seen:?}");
    let stopped = seen.last().unwrap();
    assert_eq!(stopped["event"], "stopped");
    let stopped_at = stopped["step"].as_u64().unwrap();
    assert!((2..40).contains(&stopped_at), "{stopped}");
    let checkpoint = stopped["checkpoint"].as_str().unwrap().to_string();
    assert!(
        checkpoint.ends_with(&format!("step-{stopped_at:09}")),
        "{checkpoint}"
    );

    let output = run(
        &spec,
        &dir.path().join("resumed"),
        Some(Path::new(&checkpoint)),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let events = events(&output);
    assert_eq!(events[0]["step"], stopped_at);
    let metrics = of_kind(&events, "metrics");
    assert_eq!(
        metrics[0]["step"],
        stopped_at + 1,
        "training continues after the stop"
    );
    assert_eq!(events.last().unwrap()["event"], "finished");
    assert_eq!(events.last().unwrap()["step"], 44);
}
