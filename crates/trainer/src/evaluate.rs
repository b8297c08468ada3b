//! Evaluation: from u8 images to normalised tensors, logits, and the accuracy figures.
//!
//! Reports top-1, top-5, mean cross-entropy loss, per-class accuracy and (on request) the
//! confusion matrix. Batch-norm statistics can be re-estimated on training batches before an
//! evaluation ([`recalibrate_batch_norm`]); the live statistics are restored afterwards so
//! training continues exactly as if no evaluation had happened.

use anyhow::{Result, bail};
use mpl_data::ImageSet;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::DataInfo;

/// Converts `n` u8 HWC images into a normalised f32 NCHW tensor on `device`.
#[allow(clippy::too_many_arguments)]
pub fn normalise(
    pixels: &[u8],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    mean: &[f64],
    std: &[f64],
    device: Device,
) -> Tensor {
    let shape = [n as i64, h as i64, w as i64, c as i64];
    let raw = Tensor::from_slice(pixels).view(shape).to_device(device);
    let scaled = raw.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0;
    let mean = channel_tensor(mean, c, device);
    let std = channel_tensor(std, c, device);
    ((scaled - mean) / std).contiguous()
}

fn channel_tensor(values: &[f64], c: usize, device: Device) -> Tensor {
    let values: Vec<f32> = (0..c)
        .map(|i| values.get(i).or(values.last()).copied().unwrap_or(0.0) as f32)
        .collect();
    Tensor::from_slice(&values)
        .view([1, c as i64, 1, 1])
        .to_device(device)
}

/// Logits of `model` (eval mode) for every image of `set`, as a `[N, classes]` CPU tensor.
pub fn predict_logits(
    model: &dyn ModuleT,
    set: &ImageSet,
    info: &DataInfo,
    batch: usize,
    device: Device,
) -> Tensor {
    let batch = batch.max(1);
    let image_len = set.image_len();
    let mut chunks = Vec::new();
    let _guard = tch::no_grad_guard();
    for start in (0..set.len()).step_by(batch) {
        let n = batch.min(set.len() - start);
        let pixels = &set.pixels[start * image_len..(start + n) * image_len];
        let xs = normalise(
            pixels,
            n,
            set.height,
            set.width,
            set.channels,
            &info.mean,
            &info.std,
            device,
        );
        let logits = model.forward_t(&xs, false);
        chunks.push(logits.to_kind(Kind::Float).to_device(Device::Cpu));
    }
    if chunks.is_empty() {
        return Tensor::zeros([0, info.num_classes as i64], (Kind::Float, Device::Cpu));
    }
    Tensor::cat(&chunks, 0)
}

/// The figures of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Images evaluated.
    pub count: usize,
    /// Fraction of images whose top prediction is right.
    pub top1: f64,
    /// Fraction of images whose label is among the five highest logits.
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 per true class (0 for a class without images).
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Scores `[N, classes]` logits against labels.
pub fn score(logits: &Tensor, labels: &[u32], num_classes: usize) -> Result<Evaluation> {
    let n = labels.len();
    let size = logits.size();
    if size.len() != 2 || size[0] as usize != n || size[1] as usize != num_classes {
        bail!("logits of shape {size:?} do not match {n} labels of {num_classes} classes");
    }
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= num_classes) {
        bail!("label {bad} is out of range for {num_classes} classes");
    }
    if n == 0 {
        bail!("cannot evaluate on an empty set");
    }
    let logits = logits.to_kind(Kind::Float).to_device(Device::Cpu);
    let targets = Tensor::from_slice(&labels.iter().map(|&l| i64::from(l)).collect::<Vec<_>>());
    let loss = logits.cross_entropy_for_logits(&targets).double_value(&[]);

    let predicted: Vec<i64> = Vec::try_from(logits.argmax(1, false))?;
    let k = 5.min(num_classes) as i64;
    let (_, top) = logits.topk(k, 1, true, true);
    let in_top = top.eq_tensor(&targets.unsqueeze(1)).any_dim(1, false);
    let in_top: Vec<bool> = Vec::try_from(in_top)?;

    let mut confusion = vec![vec![0u64; num_classes]; num_classes];
    for (&truth, &pred) in labels.iter().zip(&predicted) {
        confusion[truth as usize][pred as usize] += 1;
    }
    let correct: u64 = (0..num_classes).map(|c| confusion[c][c]).sum();
    let per_class_accuracy = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let total: u64 = row.iter().sum();
            if total == 0 {
                0.0
            } else {
                row[c] as f64 / total as f64
            }
        })
        .collect();
    Ok(Evaluation {
        count: n,
        top1: correct as f64 / n as f64,
        top5: in_top.iter().filter(|&&b| b).count() as f64 / n as f64,
        loss,
        per_class_accuracy,
        confusion,
    })
}

/// Evaluates `model` on a labeled set.
pub fn evaluate(
    model: &dyn ModuleT,
    set: &ImageSet,
    info: &DataInfo,
    batch: usize,
    device: Device,
) -> Result<Evaluation> {
    let Some(labels) = &set.labels else {
        bail!("cannot evaluate on an unlabeled set");
    };
    let logits = predict_logits(model, set, info, batch, device);
    score(&logits, labels, info.num_classes)
}

/// The batch-norm running statistics of a var store, saved so they can be put back.
pub struct SavedStatistics {
    saved: Vec<(Tensor, Tensor)>,
}

impl SavedStatistics {
    /// Puts the saved statistics back into the live tensors.
    pub fn restore(self) {
        let _guard = tch::no_grad_guard();
        for (mut live, saved) in self.saved {
            live.copy_(&saved);
        }
    }
}

/// Re-estimates the batch-norm running statistics of `model` on `batches` (train-mode forwards
/// without gradients) and returns the previous statistics for [`SavedStatistics::restore`].
///
/// The running averages are zeroed first; after `k` batches at momentum `m` each holds
/// `1 - (1 - m)^k` of the exponentially weighted batch statistics, so dividing by that factor
/// gives an unbiased estimate whatever the momentum (with the paper's 0.001 the result is close
/// to the plain mean over the batches).
pub fn recalibrate_batch_norm(
    vs: &VarStore,
    model: &dyn ModuleT,
    batches: &[Tensor],
    momentum: f64,
) -> SavedStatistics {
    let _guard = tch::no_grad_guard();
    let mut live = Vec::new();
    for (name, tensor) in vs.variables() {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            live.push(tensor);
        }
    }
    let saved = live.iter().map(|t| (t.shallow_clone(), t.copy())).collect();
    if batches.is_empty() || live.is_empty() {
        return SavedStatistics { saved };
    }
    for t in &mut live {
        let _ = t.zero_();
    }
    for xs in batches {
        let _ = model.forward_t(xs, true);
    }
    let weight = 1.0 - (1.0 - momentum).powi(batches.len() as i32);
    if weight > 0.0 {
        for t in &mut live {
            let _ = t.g_div_scalar_(weight);
        }
    }
    SavedStatistics { saved }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_a_hand_count() {
        // Three images, three classes: image 0 right, image 1 wrong (true 1, predicted 2,
        // label second-highest), image 2 right.
        let logits =
            Tensor::from_slice(&[5.0f32, 1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 3.0]).view([3, 3]);
        let eval = score(&logits, &[0, 1, 2], 3).unwrap();
        assert_eq!(eval.count, 3);
        assert!((eval.top1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(eval.top5, 1.0);
        assert_eq!(eval.per_class_accuracy, vec![1.0, 0.0, 1.0]);
        assert_eq!(eval.confusion[1], vec![0, 0, 1]);
        // Mean of -log softmax at the true class, computed by hand.
        let lse = |v: [f64; 3]| v.iter().map(|x| x.exp()).sum::<f64>().ln();
        let expected = ((lse([5.0, 1.0, 0.0]) - 5.0)
            + (lse([0.0, 1.0, 2.0]) - 1.0)
            + (lse([0.0, 0.0, 3.0]) - 3.0))
            / 3.0;
        assert!(
            (eval.loss - expected).abs() < 1e-5,
            "{} vs {expected}",
            eval.loss
        );
    }

    #[test]
    fn out_of_range_labels_are_rejected() {
        let logits = Tensor::zeros([1, 2], (Kind::Float, Device::Cpu));
        assert!(score(&logits, &[2], 2).is_err());
    }

    #[test]
    fn normalise_maps_hwc_bytes_to_nchw_floats() {
        // One 1x2 image with 2 channels: pixel 0 = (0, 255), pixel 1 = (51, 102).
        let t = normalise(
            &[0, 255, 51, 102],
            1,
            1,
            2,
            2,
            &[0.0, 0.5],
            &[1.0, 0.5],
            Device::Cpu,
        );
        assert_eq!(t.size(), vec![1, 2, 1, 2]);
        let v: Vec<f32> = Vec::try_from(t.flatten(0, -1)).unwrap();
        let expected = [0.0, 0.2, 1.0, (0.4 - 0.5) / 0.5];
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
    }

    #[test]
    fn recalibration_recovers_the_batch_statistics_and_restores_them() {
        let vs = VarStore::new(Device::Cpu);
        let bn = tch::nn::batch_norm2d(
            vs.root() / "bn",
            1,
            tch::nn::BatchNormConfig {
                momentum: 0.001,
                ..Default::default()
            },
        );
        let xs = Tensor::from_slice(&[1.0f32, 3.0, 5.0, 7.0]).view([4, 1, 1, 1]);
        let saved = recalibrate_batch_norm(&vs, &bn, std::slice::from_ref(&xs), 0.001);
        let mean = bn.running_mean.double_value(&[0]);
        let var = bn.running_var.double_value(&[0]);
        assert!((mean - 4.0).abs() < 1e-4, "{mean}");
        // Unbiased variance of 1, 3, 5, 7.
        assert!((var - 20.0 / 3.0).abs() < 1e-3, "{var}");
        saved.restore();
        assert_eq!(bn.running_mean.double_value(&[0]), 0.0);
        assert_eq!(bn.running_var.double_value(&[0]), 1.0);
    }
}
