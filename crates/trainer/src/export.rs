//! Export of a trained network for use outside the platform.
//!
//! An export is two files side by side: `NAME.safetensors` with the network's parameters and
//! batch-norm buffers under the PyTorch `state_dict()` keys of the matching reference module
//! (torchvision for ResNet and EfficientNet, `python/mpl_reference.py` for WideResNet), and
//! `NAME.json`, the model card, which says how to rebuild the module and how to feed it.
//! `docs/export.md` shows how to load both in PyTorch.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mpl_protocol::spec::{Algorithm, Architecture};
use mpl_protocol::{CheckpointKind, ModelRole};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, Manifest};
use crate::models::{self, ModelConfig};
use crate::runner;

/// Version of the model card layout; bumped on incompatible changes.
pub const MODEL_CARD_VERSION: u32 = 1;

/// Suffix of the batch-norm buffer PyTorch counts forward passes in; the var store has no such
/// variable, so the export adds one per batch norm for `load_state_dict(strict=True)`.
const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

/// The JSON description written next to exported weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// [`MODEL_CARD_VERSION`].
    pub format_version: u32,
    /// File name of the weights, relative to the card.
    pub weights: String,
    /// Which network of the run was exported (`student`, `ema`, `teacher`, `finetuned`).
    pub model: ModelRole,
    /// How to rebuild the network.
    pub architecture: ArchitectureCard,
    /// Number of classes (the width of the logits).
    pub num_classes: usize,
    /// Class names by logit index.
    pub class_names: Vec<String>,
    /// The input the network expects.
    pub input: InputCard,
    /// Where the weights came from.
    pub training: TrainingCard,
    /// Trainable parameters (batch-norm running statistics excluded).
    pub parameter_count: i64,
}

/// The architecture and its settings, enough to rebuild the module in PyTorch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchitectureCard {
    /// `wide_resnet`, `resnet18`, `resnet50` or `efficientnet_b0`.
    pub name: Architecture,
    /// WideResNet depth (only meaningful for `wide_resnet`).
    pub depth: usize,
    /// WideResNet widen factor (only meaningful for `wide_resnet`).
    pub widen_factor: usize,
    /// Dropout before the classifier (inactive in eval mode).
    pub dropout: f64,
    /// Batch-norm momentum the network was trained with (PyTorch convention).
    pub bn_momentum: f64,
    /// Negative slope of the leaky ReLUs (WideResNet).
    pub leaky_relu_slope: f64,
}

/// Shape and normalisation of the network's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputCard {
    /// Always `NCHW`.
    pub layout: String,
    /// Image channels.
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Per-channel mean subtracted after scaling pixels to 0..1.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: Vec<f64>,
}

/// A summary of the run that produced the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingCard {
    /// `mpl`, `uda` or `supervised`.
    pub algorithm: Algorithm,
    /// Steps completed at the checkpoint (training plus fine-tuning).
    pub steps: u64,
    /// Phase at the checkpoint: `train`, `finetune` or `done`.
    pub phase: String,
    /// Why the checkpoint was kept.
    pub checkpoint_kind: CheckpointKind,
    /// Labeled training images.
    pub num_labeled: usize,
    /// Unlabeled training images.
    pub num_unlabeled: usize,
    /// The metrics recorded in the checkpoint.
    pub metrics: BTreeMap<String, f64>,
}

/// Writes the chosen network of a checkpoint as safetensors at `out` and its model card at
/// `out` with the extension `.json`; returns the card.
///
/// `Student` and `Finetuned` both read `student.safetensors` (fine-tuning updates the student in
/// place), `Ema` reads `ema.safetensors`, `Teacher` reads `teacher.safetensors`.
pub fn export_student(checkpoint: &Path, out: &Path, role: ModelRole) -> Result<ModelCard> {
    let card_path = card_path(out)?;
    let manifest = checkpoint::read_manifest(checkpoint)?;
    let stem = weights_stem(role);
    if !manifest
        .files
        .iter()
        .any(|f| f.name == format!("{stem}.safetensors"))
    {
        bail!(
            "{}: the checkpoint has no {stem} network (its files: {})",
            checkpoint.display(),
            file_names(&manifest)
        );
    }

    let config = runner::model_config(&manifest.spec, &manifest.data);
    let mut vs = VarStore::new(Device::Cpu);
    let _model = models::build(&vs.root(), &config);
    checkpoint::load_var_store(checkpoint, stem, &mut vs)?;

    let named = state_dict(&vs, manifest.step);
    Tensor::write_safetensors(&named, out)
        .with_context(|| format!("cannot write exported weights {}", out.display()))?;

    let card = model_card(&manifest, &config, role, out, models::parameter_count(&vs));
    let text = serde_json::to_string_pretty(&card).context("cannot serialise the model card")?;
    std::fs::write(&card_path, text + "\n")
        .with_context(|| format!("cannot write model card {}", card_path.display()))?;
    Ok(card)
}

/// The model card's path: `out` with the extension `.json`, refused if that is `out` itself.
fn card_path(out: &Path) -> Result<PathBuf> {
    let card = out.with_extension("json");
    if card == out {
        bail!(
            "--out {}: the weights file cannot end in .json (the card goes there)",
            out.display()
        );
    }
    Ok(card)
}

/// The checkpoint file stem that holds a role's weights.
fn weights_stem(role: ModelRole) -> &'static str {
    match role {
        ModelRole::Teacher => "teacher",
        ModelRole::Student | ModelRole::Finetuned => "student",
        ModelRole::Ema => "ema",
    }
}

fn file_names(manifest: &Manifest) -> String {
    let names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    names.join(", ")
}

/// The var store's tensors as PyTorch's `state_dict()` would list them: every variable in f32
/// on the CPU, plus a `num_batches_tracked` count (set to `steps`) for each batch norm.
fn state_dict(vs: &VarStore, steps: u64) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.detach().to_device(Device::Cpu).to_kind(Kind::Float)))
        .collect();
    let batch_norms: Vec<String> = named
        .iter()
        .filter_map(|(name, _)| name.strip_suffix(".running_mean").map(str::to_owned))
        .collect();
    for prefix in batch_norms {
        let count = Tensor::from(steps as i64).to_kind(Kind::Int64);
        named.push((format!("{prefix}.{NUM_BATCHES_TRACKED}"), count));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

fn model_card(
    manifest: &Manifest,
    config: &ModelConfig,
    role: ModelRole,
    out: &Path,
    parameter_count: i64,
) -> ModelCard {
    let weights = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let data = &manifest.data;
    ModelCard {
        format_version: MODEL_CARD_VERSION,
        weights,
        model: role,
        architecture: ArchitectureCard {
            name: config.arch,
            depth: config.depth,
            widen_factor: config.widen_factor,
            dropout: config.dropout,
            bn_momentum: config.bn_momentum,
            leaky_relu_slope: config.leaky_relu_slope,
        },
        num_classes: data.num_classes,
        class_names: data.class_names.clone(),
        input: InputCard {
            layout: "NCHW".to_owned(),
            channels: data.in_channels,
            height: data.height,
            width: data.width,
            mean: data.mean.clone(),
            std: data.std.clone(),
        },
        training: TrainingCard {
            algorithm: manifest.spec.algorithm,
            steps: manifest.step,
            phase: manifest.phase.clone(),
            checkpoint_kind: manifest.kind,
            num_labeled: data.num_labeled,
            num_unlabeled: data.num_unlabeled,
            metrics: manifest.metrics.clone(),
        },
        parameter_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_card_cannot_overwrite_the_weights() {
        assert!(card_path(Path::new("model.json")).is_err());
        assert_eq!(
            card_path(Path::new("a/model.safetensors")).ok(),
            Some("a/model.json".into())
        );
    }

    #[test]
    fn fine_tuned_and_plain_student_share_the_student_file() {
        assert_eq!(weights_stem(ModelRole::Finetuned), "student");
        assert_eq!(weights_stem(ModelRole::Student), "student");
        assert_eq!(weights_stem(ModelRole::Ema), "ema");
    }
}
