//! The `trainer` command line as the scheduler sees it: exit codes, and stdout carrying only
//! JSON event lines in the documented order.

mod common;

use common::{events, of_kind, run, run_to_success, stderr, tiny_spec, trainer, write_spec};
use serde_json::{Value, json};

#[test]
fn a_bad_spec_exits_with_invalid_input_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = tiny_spec("mpl", 2);
    spec["batch_size"] = json!(0);
    spec["uda"]["threshold"] = json!(1.5);
    let spec_path = write_spec(dir.path(), &spec);

    let output = run(&spec_path, &dir.path().join("out"), None);

    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let events = events(&output);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "failed");
    let reason = events[0]["reason"].as_str().unwrap();
    assert!(reason.contains("batch_size"), "{reason}");
    assert!(reason.contains("uda.threshold"), "{reason}");
}

#[test]
fn a_platform_dataset_id_is_rejected_by_the_standalone_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = tiny_spec("supervised", 2);
    spec["data"]["labeled"] = json!({"dataset_id": "0190c8a4-6a4b-7c3d-9e1f-0a1b2c3d4e5f"});
    let output = run(
        &write_spec(dir.path(), &spec),
        &dir.path().join("out"),
        None,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let reason = events(&output)[0]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("data.labeled.dataset_id"), "{reason}");
}

#[test]
fn a_missing_data_file_is_invalid_input_naming_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = tiny_spec("supervised", 2);
    spec["data"]["labeled"]["path"] = json!("/nonexistent/images.gz");
    let output = run(
        &write_spec(dir.path(), &spec),
        &dir.path().join("out"),
        None,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let reason = events(&output)[0]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("data.labeled"), "{reason}");
}

#[test]
fn a_run_emits_started_first_finished_last_and_its_checkpoint_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = tiny_spec("mpl", 6);
    spec["data"]["eval"] = common::fashion("t10k");
    let spec_path = write_spec(dir.path(), &spec);

    let output = run(&spec_path, &dir.path().join("out"), None);

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let events = events(&output);
    assert_eq!(events.first().unwrap()["event"], "started");
    assert_eq!(events.last().unwrap()["event"], "finished");
    assert_eq!(events[0]["num_labeled"], 200);
    assert!(
        events[0]["batch_norm_policy"]
            .as_str()
            .unwrap()
            .contains("momentum")
    );
    assert_eq!(
        of_kind(&events, "metrics").len(),
        6 + 4,
        "6 training + 4 fine-tuning steps"
    );
    assert!(!of_kind(&events, "progress").is_empty());
    // The unlabeled images are the rest of a labeled source, so their pseudo labels are scored.
    for metrics in of_kind(&events, "metrics").iter().take(6) {
        let accuracy = metrics["values"]["pseudo/accuracy"].as_f64();
        assert!(
            accuracy.is_some_and(|a| (0.0..=1.0).contains(&a)),
            "{metrics}"
        );
    }

    // Final evaluation: teacher, student and EMA on validation and eval, then the fine-tuned
    // student; every final one carries a confusion matrix.
    let evals = of_kind(&events, "eval");
    let models: Vec<(&str, &str)> = evals
        .iter()
        .map(|e| (e["model"].as_str().unwrap(), e["split"].as_str().unwrap()))
        .collect();
    for model in ["teacher", "student", "ema", "finetuned"] {
        assert!(models.contains(&(model, "eval")), "{models:?}");
        assert!(models.contains(&(model, "validation")), "{models:?}");
    }
    assert!(evals.iter().all(|e| e["confusion_matrix"].is_array()));

    let finished = events.last().unwrap();
    assert_eq!(finished["step"], 10);
    for metric in [
        "student/top1",
        "teacher/top1",
        "ema/top1",
        "finetuned/top1",
        "h",
    ] {
        assert!(
            finished["metrics"][metric].is_number(),
            "{metric} in {finished}"
        );
    }

    let final_checkpoint = of_kind(&events, "checkpoint")
        .into_iter()
        .find(|e| e["kind"] == "final")
        .expect("a final checkpoint");
    let files: Vec<&str> = final_checkpoint["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for file in [
        "student.safetensors",
        "teacher.safetensors",
        "ema.safetensors",
    ] {
        assert!(files.contains(&file), "{files:?}");
    }
    let checkpoint_dir = final_checkpoint["path"].as_str().unwrap();

    // `trainer eval` on the eval source reproduces the run's own final figure.
    let logits_path = dir.path().join("logits.json");
    let eval = trainer()
        .args(["eval", "--checkpoint", checkpoint_dir, "--format", "idx"])
        .arg("--data")
        .arg(format!("{}/t10k-images-idx3-ubyte.gz", common::FASHION))
        .arg("--labels-path")
        .arg(format!("{}/t10k-labels-idx1-ubyte.gz", common::FASHION))
        .arg("--logits-out")
        .arg(&logits_path)
        .output()
        .unwrap();
    assert_eq!(eval.status.code(), Some(0), "{}", stderr(&eval));
    let line: Value = serde_json::from_slice(&eval.stdout).expect("one JSON line");
    assert_eq!(line["count"], 10_000);
    let run_top1 = finished["metrics"]["finetuned/top1"].as_f64().unwrap();
    assert!(
        (line["top1"].as_f64().unwrap() - run_top1).abs() < 1e-9,
        "{line}"
    );
    let logits: Value = serde_json::from_slice(&std::fs::read(&logits_path).unwrap()).unwrap();
    assert_eq!(logits["logits"].as_array().unwrap().len(), 10_000);
    assert_eq!(logits["logits"][0].as_array().unwrap().len(), 10);
    assert_eq!(logits["labels"].as_array().unwrap().len(), 10_000);
}

#[test]
fn eval_of_a_corrupt_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = write_spec(dir.path(), &tiny_spec("supervised", 3));
    let output = run(&spec_path, &dir.path().join("out"), None);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let checkpoint = dir.path().join("out/checkpoints/step-000000003");
    let student = checkpoint.join("student.safetensors");
    let mut bytes = std::fs::read(&student).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&student, bytes).unwrap();

    let eval = trainer()
        .args(["eval", "--format", "idx"])
        .arg("--checkpoint")
        .arg(&checkpoint)
        .arg("--data")
        .arg(format!("{}/t10k-images-idx3-ubyte.gz", common::FASHION))
        .output()
        .unwrap();
    assert_eq!(eval.status.code(), Some(2));
    assert!(
        stderr(&eval).contains("student.safetensors is corrupt"),
        "{}",
        stderr(&eval)
    );
}

/// `device.bf16` on the CPU: the step runs in mixed precision (the first losses differ from
/// fp32 by rounding only), and training stays finite.
#[test]
fn a_bf16_run_on_the_cpu_computes_in_mixed_precision() {
    let first_losses = |bf16: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = tiny_spec("mpl", 4);
        spec["device"]["bf16"] = json!(bf16);
        spec["finetune"]["enabled"] = json!(false);
        spec["augment"]["randaugment_sampling"] = json!("uniform");
        let events = run_to_success(dir.path(), &spec);
        let metrics = of_kind(&events, "metrics");
        assert_eq!(metrics.len(), 4);
        for event in &metrics {
            for (name, value) in event["values"].as_object().unwrap() {
                assert!(value.as_f64().unwrap().is_finite(), "{name} in {event}");
            }
        }
        // The student waits one step, so its first loss comes one step later.
        let student = metrics
            .iter()
            .find_map(|e| e["values"]["student/loss"].as_f64())
            .expect("a student step");
        (
            metrics[0]["values"]["teacher/sup"].as_f64().unwrap(),
            student,
        )
    };
    let (fp32_teacher, fp32_student) = first_losses(false);
    let (bf16_teacher, bf16_student) = first_losses(true);
    for (name, fp32, bf16) in [
        ("teacher/sup", fp32_teacher, bf16_teacher),
        ("student/loss", fp32_student, bf16_student),
    ] {
        let relative = (bf16 - fp32).abs() / fp32.abs();
        assert!(
            relative > 0.0 && relative < 0.05,
            "{name}: fp32 {fp32}, bf16 {bf16}"
        );
    }
}
