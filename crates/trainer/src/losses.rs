//! Loss functions and accuracy helpers shared by every algorithm.
//!
//! Logits are `[N, K]` tensors; hard labels are `[N]` i64 class indices. Every loss here is a
//! mean over the batch unless its name says it returns one value per sample.

use anyhow::{Context, Result, bail};
use tch::{Kind, Reduction, Tensor};

/// Cross entropy of hard labels with label smoothing `eps`, averaged over the batch.
///
/// The target distribution is `(1 - eps) * onehot(y) + eps / K`, the convention of PyTorch's
/// `label_smoothing` argument. `eps = 0` is plain cross entropy.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, eps: f64) -> Result<Tensor> {
    check_batch(logits, labels)?;
    logits
        .f_cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, eps)
        .context("cross entropy of hard labels failed (is a label outside 0..num_classes?)")
}

/// Cross entropy of a soft target distribution, one value per sample: `-sum_k q_k log p_k`.
///
/// `targets` must already be a probability distribution over the last dimension and carries no
/// gradient of its own (detach it first when it comes from a network).
pub fn soft_cross_entropy_per_sample(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.size() != targets.size() {
        bail!(
            "soft cross entropy: logits {:?} and targets {:?} differ in shape",
            logits.size(),
            targets.size()
        );
    }
    let kind = compute_kind(logits);
    let log_probs = logits.f_log_softmax(-1, kind)?;
    Ok(-(targets * log_probs).sum_dim_intlist(-1, false, kind))
}

/// Number of samples whose label is among the `k` highest logits.
pub fn top_k_correct(logits: &Tensor, labels: &Tensor, k: i64) -> Result<i64> {
    check_batch(logits, labels)?;
    let k = k.min(num_classes(logits)?).max(1);
    let (_, top) = logits.f_topk(k, -1, true, true)?;
    let hits = top.f_eq_tensor(&labels.unsqueeze(-1))?;
    Ok(hits.any_dim(-1, false).sum(Kind::Int64).int64_value(&[]))
}

/// Fraction of samples whose argmax equals the label (0 for an empty batch).
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let count = labels.size().first().copied().unwrap_or(0);
    if count == 0 {
        return Ok(0.0);
    }
    Ok(top_k_correct(logits, labels, 1)? as f64 / count as f64)
}

/// The precision losses are computed in: f64 stays f64, anything else (f32, bf16) is f32.
pub fn compute_kind(logits: &Tensor) -> Kind {
    match logits.kind() {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    }
}

fn num_classes(logits: &Tensor) -> Result<i64> {
    match logits.size().as_slice() {
        [_, k] => Ok(*k),
        other => bail!("logits must have shape [N, K], got {other:?}"),
    }
}

fn check_batch(logits: &Tensor, labels: &Tensor) -> Result<()> {
    num_classes(logits)?;
    if labels.size().as_slice() != [logits.size()[0]] {
        bail!(
            "labels {:?} do not match logits {:?}: expected one label per row",
            labels.size(),
            logits.size()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Tensor {
        Tensor::from_slice(&[2.0f32, 0.0, -1.0, 0.5, 1.5, 0.0]).view([2, 3])
    }

    /// `-log softmax(z)_y` by hand, in f64.
    fn nll(z: &[f64], y: usize) -> f64 {
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        lse - z[y]
    }

    #[test]
    fn cross_entropy_without_smoothing_is_mean_negative_log_likelihood() {
        let labels = Tensor::from_slice(&[0i64, 2]);
        let got = cross_entropy(&logits(), &labels, 0.0)
            .unwrap()
            .double_value(&[]);
        let want = (nll(&[2.0, 0.0, -1.0], 0) + nll(&[0.5, 1.5, 0.0], 2)) / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn label_smoothing_mixes_in_the_uniform_distribution() {
        // With eps the loss is (1 - eps) * nll(y) + eps * mean_k nll(k).
        let eps = 0.15;
        let labels = Tensor::from_slice(&[1i64, 0]);
        let got = cross_entropy(&logits(), &labels, eps)
            .unwrap()
            .double_value(&[]);
        let rows = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]];
        let want = rows
            .iter()
            .zip([1usize, 0])
            .map(|(z, y)| {
                let uniform = (0..3).map(|k| nll(z, k)).sum::<f64>() / 3.0;
                (1.0 - eps) * nll(z, y) + eps * uniform
            })
            .sum::<f64>()
            / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn soft_cross_entropy_of_a_one_hot_target_equals_hard_cross_entropy() {
        let labels = Tensor::from_slice(&[2i64, 1]);
        let one_hot = labels.one_hot(3).to_kind(Kind::Float);
        let soft = soft_cross_entropy_per_sample(&logits(), &one_hot).unwrap();
        let hard = cross_entropy(&logits(), &labels, 0.0).unwrap();
        let diff = (soft.mean(Kind::Float) - hard).abs().double_value(&[]);
        assert!(diff < 1e-6);
        assert_eq!(soft.size(), vec![2]);
    }

    #[test]
    fn top_k_counts_labels_among_the_highest_logits() {
        // Row 0 ranks classes 0, 1, 2; row 1 ranks 1, 0, 2.
        let labels = Tensor::from_slice(&[1i64, 1]);
        assert_eq!(top_k_correct(&logits(), &labels, 1).unwrap(), 1);
        assert_eq!(top_k_correct(&logits(), &labels, 2).unwrap(), 2);
        let labels = Tensor::from_slice(&[2i64, 2]);
        assert_eq!(top_k_correct(&logits(), &labels, 2).unwrap(), 0);
        assert_eq!(top_k_correct(&logits(), &labels, 5).unwrap(), 2);
        assert!(
            (accuracy(&logits(), &Tensor::from_slice(&[0i64, 1])).unwrap() - 1.0).abs() < 1e-12
        );
    }

    #[test]
    fn mismatched_shapes_and_bad_labels_are_errors() {
        assert!(cross_entropy(&logits(), &Tensor::from_slice(&[0i64]), 0.0).is_err());
        assert!(cross_entropy(&logits(), &Tensor::from_slice(&[0i64, 7]), 0.0).is_err());
        let wrong = Tensor::zeros([2, 4], (Kind::Float, tch::Device::Cpu));
        assert!(soft_cross_entropy_per_sample(&logits(), &wrong).is_err());
    }
}
