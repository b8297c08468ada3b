//! An exported network gives the same logits in PyTorch as in the trainer.
//!
//! Each test builds a network with random weights, moves its batch-norm running statistics
//! away from their initial values with a few train-mode passes, saves it as a checkpoint the
//! way a run does, exports it, and then asks `$MPL_PYTHON` to load the export with
//! `python/mpl_reference.py` and compute logits for images the test wrote to a file. Those
//! logits must match the ones `trainer eval --logits-out` writes for the same images and
//! checkpoint to 1e-4.
//!
//! The tests skip (with a printed reason) only when `$MPL_PYTHON` (default `python3`) cannot
//! import torch; the torchvision architectures also need torchvision.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mpl_protocol::spec::Architecture;
use mpl_protocol::{CheckpointKind, ModelRole, RunSpec};
use mpl_trainer::checkpoint::{self, DataInfo, Manifest};
use mpl_trainer::export::export_student;
use mpl_trainer::models::{self, ModelConfig};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// Images per comparison.
const IMAGES: usize = 6;
/// Tolerance on logits: both sides compute in f32, in possibly different kernel orders.
const TOLERANCE: f64 = 1e-4;

fn python() -> String {
    std::env::var("MPL_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Whether `$MPL_PYTHON` can import every module in `modules`.
fn python_has(modules: &str) -> bool {
    Command::new(python())
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python")
}

/// Everything the trainer records about the data, for images of `channels` x `side` x `side`.
fn data_info(channels: usize, side: usize, bn_momentum: f64) -> DataInfo {
    DataInfo {
        num_classes: 10,
        in_channels: channels,
        height: side,
        width: side,
        class_names: (0..10).map(|i| format!("class {i}")).collect(),
        mean: vec![0.45, 0.40, 0.35][..channels].to_vec(),
        std: vec![0.25, 0.22, 0.20][..channels].to_vec(),
        bn_momentum,
        num_labeled: 100,
        num_unlabeled: 900,
    }
}

fn run_spec(config: &ModelConfig) -> RunSpec {
    let spec = serde_json::json!({
        "algorithm": "supervised",
        "model": {
            "arch": config.arch,
            "depth": config.depth,
            "widen_factor": config.widen_factor,
            "dropout": config.dropout,
            "bn_momentum": config.bn_momentum,
            "leaky_relu_slope": config.leaky_relu_slope,
        },
        "data": { "labeled": { "path": "unused.idx", "format": "idx" } },
    });
    RunSpec::from_value(spec).expect("the test spec is valid")
}

/// Random weights everywhere: rank-1 variables (batch-norm affine parameters, biases) get noise
/// so that they are not the 1 / 0 of initialisation, then train-mode passes on shifted inputs
/// move the running statistics.
fn randomise(vs: &nn::VarStore, model: &dyn ModuleT, channels: i64, side: i64) {
    tch::no_grad(|| {
        for (_, mut t) in vs.variables() {
            if t.dim() == 1 && t.requires_grad() {
                let noise = Tensor::randn_like(&t) * 0.2;
                t.copy_(&(&t + noise));
            }
        }
        for _ in 0..4 {
            let xs =
                Tensor::randn([8, channels, side, side], (Kind::Float, Device::Cpu)) * 1.5 + 0.7;
            let _ = model.forward_t(&xs, true);
        }
    });
}

/// Random u8 pixels, `IMAGES` x side x side x channels (HWC per image).
fn random_pixels(channels: usize, side: usize) -> Vec<u8> {
    let count = (IMAGES * side * side * channels) as i64;
    let pixels = Tensor::randint(256, [count], (Kind::Uint8, Device::Cpu));
    Vec::<u8>::try_from(&pixels).expect("u8 tensor to vec")
}

/// Writes `pixels` as a raw IDX images file (`n x rows x cols x channels`) and random labels
/// as an IDX labels file, the input of `trainer eval`.
fn write_idx(dir: &Path, pixels: &[u8], info: &DataInfo) -> (PathBuf, PathBuf) {
    let dims = [IMAGES, info.height, info.width, info.in_channels];
    let mut images = vec![0, 0, 0x08, dims.len() as u8];
    for dim in dims {
        images.extend_from_slice(&(dim as u32).to_be_bytes());
    }
    images.extend_from_slice(pixels);
    let mut labels = vec![0, 0, 0x08, 1];
    labels.extend_from_slice(&(IMAGES as u32).to_be_bytes());
    labels.extend((0..IMAGES).map(|i| (i % info.num_classes) as u8));

    let (images_path, labels_path) = (dir.join("images.idx"), dir.join("labels.idx"));
    std::fs::write(&images_path, images).expect("write the IDX images");
    std::fs::write(&labels_path, labels).expect("write the IDX labels");
    (images_path, labels_path)
}

/// The logits `trainer eval --logits-out` writes for the student of `checkpoint`.
fn trainer_logits(dir: &Path, checkpoint: &Path, images: &Path, labels: &Path) -> Vec<Vec<f64>> {
    let logits_file = dir.join("logits.json");
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("eval")
        .arg("--checkpoint")
        .arg(checkpoint)
        .arg("--data")
        .arg(images)
        .args(["--format", "idx", "--labels-path"])
        .arg(labels)
        .arg("--logits-out")
        .arg(&logits_file)
        .output()
        .expect("run trainer eval");
    assert!(
        out.status.success(),
        "trainer eval failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&logits_file).expect("trainer eval wrote --logits-out");
    let written: serde_json::Value = serde_json::from_str(&text).expect("logits file is JSON");
    serde_json::from_value(written["logits"].clone()).expect("a matrix of logits")
}

const PYTHON_LOGITS: &str = r#"
import json, sys
import numpy as np
import torch
sys.path.insert(0, sys.argv[1])
from mpl_reference import load_exported, normalise
model, card = load_exported(sys.argv[2])
inp = card["input"]
shape = (-1, inp["height"], inp["width"], inp["channels"])
pixels = np.fromfile(sys.argv[3], dtype=np.uint8).reshape(shape)
with torch.no_grad():
    logits = model(normalise(pixels, card))
print(json.dumps(logits.tolist()))
"#;

/// Logits `$MPL_PYTHON` computes for the export at `weights` on the images in `pixels_file`.
fn python_logits(dir: &Path, weights: &Path, pixels_file: &Path) -> Vec<Vec<f64>> {
    let script = dir.join("logits.py");
    std::fs::write(&script, PYTHON_LOGITS).expect("write the python script");
    let out = Command::new(python())
        .arg(&script)
        .arg(reference_dir())
        .arg(weights)
        .arg(pixels_file)
        .output()
        .expect("run $MPL_PYTHON");
    assert!(
        out.status.success(),
        "the PyTorch side failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python prints a JSON matrix of logits")
}

/// Builds, randomises, checkpoints and exports a network, then returns the largest absolute
/// difference between the trainer's and PyTorch's logits.
fn export_and_compare(config: ModelConfig, side: usize) -> f64 {
    tch::manual_seed(7);
    let dir = tempfile::tempdir().expect("temporary directory");
    let channels = config.in_channels as usize;
    let info = data_info(channels, side, config.bn_momentum);

    let vs = nn::VarStore::new(Device::Cpu);
    let model = models::build(&vs.root(), &config);
    randomise(&vs, model.as_ref(), config.in_channels, side as i64);

    let manifest = Manifest {
        format_version: checkpoint::FORMAT_VERSION,
        step: 12,
        phase: "train".to_owned(),
        kind: CheckpointKind::Latest,
        spec: run_spec(&config),
        data: info.clone(),
        metrics: BTreeMap::from([("student/top1".to_owned(), 0.5)]),
        state: serde_json::Value::Null,
        files: Vec::new(),
    };
    let written = checkpoint::write(dir.path(), manifest, &[("student", &vs)], &[])
        .expect("write the checkpoint");

    let weights = dir.path().join("student.safetensors");
    let card = export_student(&written.path, &weights, ModelRole::Student).expect("export");
    assert_eq!(card.architecture.name, config.arch);
    assert_eq!(card.num_classes, 10);
    assert_eq!(card.input.mean, info.mean);
    assert_eq!(card.training.steps, 12);

    let pixels = random_pixels(channels, side);
    let pixels_file = dir.path().join("images.u8");
    std::fs::write(&pixels_file, &pixels).expect("write the images");
    let (images, labels) = write_idx(dir.path(), &pixels, &info);
    let ours = trainer_logits(dir.path(), &written.path, &images, &labels);

    let theirs = python_logits(dir.path(), &weights, &pixels_file);
    assert_eq!(theirs.len(), ours.len(), "one row of logits per image");
    let differences = ours.iter().flatten().zip(theirs.iter().flatten());
    let largest = differences.map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let scale = ours.iter().flatten().map(|a| a.abs()).fold(0.0, f64::max);
    eprintln!(
        "{:?}: max |logit| {scale:.3}, max |difference| {largest:.2e}",
        config.arch
    );
    largest
}

fn small_config(arch: Architecture, in_channels: i64) -> ModelConfig {
    ModelConfig {
        arch,
        depth: 10,
        widen_factor: 1,
        dropout: 0.3,
        bn_momentum: 0.5,
        leaky_relu_slope: 0.1,
        in_channels,
        num_classes: 10,
    }
}

#[test]
fn a_wide_resnet_export_gives_the_same_logits_in_pytorch() {
    if !python_has("torch") {
        eprintln!("skipped: {} cannot import torch", python());
        return;
    }
    let difference = export_and_compare(small_config(Architecture::WideResnet, 1), 28);
    assert!(
        difference < TOLERANCE,
        "max |logit difference| {difference}"
    );
}

#[test]
fn a_resnet18_export_gives_the_same_logits_in_torchvision() {
    if !python_has("torch, torchvision") {
        eprintln!("skipped: {} cannot import torch and torchvision", python());
        return;
    }
    let difference = export_and_compare(small_config(Architecture::Resnet18, 1), 32);
    assert!(
        difference < TOLERANCE,
        "max |logit difference| {difference}"
    );
}

#[test]
fn an_efficientnet_b0_export_gives_the_same_logits_in_torchvision() {
    if !python_has("torch, torchvision") {
        eprintln!("skipped: {} cannot import torch and torchvision", python());
        return;
    }
    let difference = export_and_compare(small_config(Architecture::EfficientnetB0, 3), 32);
    assert!(
        difference < TOLERANCE,
        "max |logit difference| {difference}"
    );
}
