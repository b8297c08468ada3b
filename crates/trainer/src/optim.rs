//! Stochastic gradient descent with (Nesterov) momentum whose state can be checkpointed.
//!
//! The update follows PyTorch's `torch.optim.SGD` without dampening, for each parameter `p`
//! with gradient `g`:
//!
//! ```text
//! d = g + weight_decay * p        (weight decay only for parameters of rank >= 2)
//! b = d                           (first step)      b = momentum * b + d   (later steps)
//! d = d + momentum * b            (Nesterov)        d = b                  (plain momentum)
//! p = p - lr * d
//! ```
//!
//! Restricting weight decay to rank >= 2 tensors leaves biases and batch-norm scales and shifts
//! undecayed. The momentum buffers are ordinary tensors named after their parameters, so a
//! checkpoint can save them and an exact resume can restore them.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use tch::{Kind, Tensor, nn::VarStore};

/// One trainable parameter of a var store and its momentum buffer.
struct Slot {
    name: String,
    param: Tensor,
    decayed: bool,
    buffer: Option<Tensor>,
}

/// SGD with momentum or Nesterov momentum over the trainable variables of one var store.
pub struct Sgd {
    slots: Vec<Slot>,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
}

impl Sgd {
    /// Weight decay applies to parameters of rank >= 2 only (skips batch-norm and biases).
    pub fn new(vs: &VarStore, momentum: f64, nesterov: bool, weight_decay: f64) -> Sgd {
        let slots = trainable_by_name(vs)
            .into_iter()
            .map(|(name, param)| Slot {
                decayed: param.dim() >= 2,
                name,
                param,
                buffer: None,
            })
            .collect();
        Sgd {
            slots,
            momentum,
            nesterov,
            weight_decay,
        }
    }

    /// Names of the parameters this optimizer updates, in its (sorted) order.
    pub fn parameter_names(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.name.as_str()).collect()
    }

    /// The parameters this optimizer updates, in the order of [`Sgd::parameter_names`].
    pub fn parameters(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.param.shallow_clone()).collect()
    }

    /// Current gradients (zeros where a parameter has none yet), as detached copies.
    pub fn gradients(&self) -> Vec<Tensor> {
        self.slots
            .iter()
            .map(|s| {
                let grad = s.param.grad();
                if grad.defined() {
                    grad.detach().copy()
                } else {
                    s.param.zeros_like()
                }
            })
            .collect()
    }

    /// `sum_i <grad_i, others_i>` over all parameters, in f64, where `others` is in the order
    /// of [`Sgd::parameter_names`] (as [`Sgd::gradients`] returns it). Parameters without a
    /// gradient contribute 0.
    pub fn gradient_dot(&self, others: &[Tensor]) -> Result<f64> {
        if others.len() != self.slots.len() {
            bail!(
                "gradient dot product: {} tensors given for {} parameters",
                others.len(),
                self.slots.len()
            );
        }
        let terms: Vec<Tensor> = self
            .slots
            .iter()
            .map(|s| s.param.grad())
            .zip(others)
            .filter(|(grad, _)| grad.defined())
            .map(|(grad, other)| (grad * other).sum(Kind::Double))
            .collect();
        if terms.is_empty() {
            return Ok(0.0);
        }
        Ok(Tensor::stack(&terms, 0).sum(Kind::Double).double_value(&[]))
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        for slot in &mut self.slots {
            slot.param.zero_grad();
        }
    }

    /// Clips the global gradient norm to `max_norm`; returns the norm before clipping.
    ///
    /// The norm is taken over all gradients together; when it exceeds `max_norm` every
    /// gradient is scaled by `max_norm / (norm + 1e-6)`, as PyTorch's `clip_grad_norm_` does.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads = self.defined_grads();
        if grads.is_empty() {
            return 0.0;
        }
        let squares: Vec<Tensor> = grads.iter().map(|g| g.square().sum(Kind::Double)).collect();
        let norm = Tensor::stack(&squares, 0)
            .sum(Kind::Double)
            .sqrt()
            .double_value(&[]);
        let scale = max_norm / (norm + 1e-6);
        if scale < 1.0 {
            tch::no_grad(|| {
                for mut grad in grads {
                    let _ = grad.f_mul_scalar_(scale);
                }
            });
        }
        norm
    }

    /// Applies one update with learning rate `lr` from the current gradients.
    ///
    /// Parameters without a gradient are left alone (and their buffers untouched).
    pub fn step(&mut self, lr: f64) {
        let (momentum, nesterov, weight_decay) = (self.momentum, self.nesterov, self.weight_decay);
        tch::no_grad(|| {
            for slot in &mut self.slots {
                let grad = slot.param.grad();
                if !grad.defined() {
                    continue;
                }
                let mut direction = if slot.decayed && weight_decay != 0.0 {
                    &grad + &slot.param * weight_decay
                } else {
                    grad.shallow_clone()
                };
                if momentum != 0.0 {
                    let buffer = match slot.buffer.take() {
                        None => direction.detach().copy(),
                        Some(mut b) => {
                            let _ = b.f_mul_scalar_(momentum);
                            let _ = b.f_add_(&direction);
                            b
                        }
                    };
                    direction = if nesterov {
                        &direction + &buffer * momentum
                    } else {
                        buffer.shallow_clone()
                    };
                    slot.buffer = Some(buffer);
                }
                let _ = slot.param.f_sub_(&(direction * lr));
            }
        });
    }

    /// Momentum buffers by parameter name (parameters not yet stepped have none).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .filter_map(|s| {
                s.buffer
                    .as_ref()
                    .map(|b| (s.name.clone(), b.shallow_clone()))
            })
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; parameters absent from `named` start
    /// without a buffer. Unknown names and shape mismatches are errors.
    pub fn load_state(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        let mut by_name: BTreeMap<&str, &Tensor> = BTreeMap::new();
        for (name, tensor) in named {
            by_name.insert(name.as_str(), tensor);
        }
        for slot in &self.slots {
            if let Some(t) = by_name.get(slot.name.as_str())
                && t.size() != slot.param.size()
            {
                bail!(
                    "optimizer state for {}: shape {:?} does not match the parameter's {:?}",
                    slot.name,
                    t.size(),
                    slot.param.size()
                );
            }
        }
        for slot in &mut self.slots {
            slot.buffer = by_name.remove(slot.name.as_str()).map(|t| {
                t.to_device(slot.param.device())
                    .to_kind(slot.param.kind())
                    .detach()
                    .copy()
            });
        }
        if let Some(unknown) = by_name.keys().next() {
            bail!("optimizer state names {unknown:?}, which is not a trainable parameter");
        }
        Ok(())
    }

    fn defined_grads(&self) -> Vec<Tensor> {
        self.slots
            .iter()
            .map(|s| s.param.grad())
            .filter(|g| g.defined())
            .collect()
    }
}

/// The trainable variables of `vs`, sorted by name so every order derived from it is stable.
pub fn trainable_by_name(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn};

    /// A var store with a 2x2 weight `w` (decayed) and a 2-vector bias `b` (not decayed).
    fn store() -> (VarStore, Tensor, Tensor) {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let w = root.var_copy(
            "w",
            &Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]).view([2, 2]),
        );
        let b = root.var_copy("b", &Tensor::from_slice(&[0.5f32, -1.0]));
        (vs, w, b)
    }

    /// Gives `w` the gradient `gw` and `b` the gradient `gb` through `sum(w * gw) + sum(b * gb)`.
    fn set_grads(sgd: &mut Sgd, w: &Tensor, b: &Tensor, gw: &[f32], gb: &[f32]) {
        sgd.zero_grad();
        let gw = Tensor::from_slice(gw).view([2, 2]);
        let gb = Tensor::from_slice(gb);
        ((w * gw).sum(Kind::Float) + (b * gb).sum(Kind::Float)).backward();
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    fn assert_close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn nesterov_with_decay_matches_two_steps_by_hand() {
        // Hand computation, momentum m = 0.9, weight decay 0.1 on w only, lr 0.5.
        // Step 1, g_w = [1, 1, 1, 1], g_b = [1, -1]:
        //   d_w = g + 0.1 w = [1.1, 0.8, 1.05, 1.3]; b_w = d_w; nesterov d = d + 0.9 b = 1.9 d_w
        //   w = w - 0.5 * 1.9 * d_w = [-0.045, -2.76, -0.4975, 1.765]
        //   d_b = [1, -1]; b_b = d_b; w/o decay: b = b - 0.95 d_b = [-0.45, -0.05]
        // Step 2, g_w = [0, 2, 0, -1], g_b = [0.5, 0.5]:
        //   d_w = g + 0.1 w = [-0.0045, 1.724, -0.04975, -0.8235]
        //   b_w = 0.9 b_w + d_w = [0.9855, 2.444, 0.89525, 0.3465]
        //   w = w - 0.5 (d_w + 0.9 b_w)
        //     = [-0.045 - 0.5 * 0.88245, -2.76 - 0.5 * 3.9236,
        //        -0.4975 - 0.5 * 0.755975, 1.765 - 0.5 * (-0.51165)]
        //   b_b = 0.9 [1, -1] + [0.5, 0.5] = [1.4, -0.4]; d = [0.5, 0.5] + 0.9 b_b = [1.76, 0.14]
        //   b = [-0.45 - 0.88, -0.05 - 0.07]
        let (vs, w, b) = store();
        let mut sgd = Sgd::new(&vs, 0.9, true, 0.1);
        set_grads(&mut sgd, &w, &b, &[1.0, 1.0, 1.0, 1.0], &[1.0, -1.0]);
        sgd.step(0.5);
        assert_close(&values(&w), &[-0.045, -2.76, -0.4975, 1.765]);
        assert_close(&values(&b), &[-0.45, -0.05]);
        set_grads(&mut sgd, &w, &b, &[0.0, 2.0, 0.0, -1.0], &[0.5, 0.5]);
        sgd.step(0.5);
        assert_close(&values(&w), &[-0.486225, -4.7218, -0.8754875, 2.020825]);
        assert_close(&values(&b), &[-1.33, -0.12]);
    }

    #[test]
    fn plain_momentum_steps_along_the_buffer() {
        // m = 0.5, no decay, lr 1: step 1 moves by g1, step 2 by 0.5 g1 + g2.
        let (vs, w, b) = store();
        let mut sgd = Sgd::new(&vs, 0.5, false, 0.0);
        set_grads(&mut sgd, &w, &b, &[1.0, 0.0, 0.0, 0.0], &[0.0, 2.0]);
        sgd.step(1.0);
        set_grads(&mut sgd, &w, &b, &[1.0, 0.0, 0.0, 0.0], &[0.0, 0.0]);
        sgd.step(1.0);
        assert_close(&values(&w), &[1.0 - 1.0 - 1.5, -2.0, 0.5, 3.0]);
        assert_close(&values(&b), &[0.5, -1.0 - 2.0 - 1.0]);
    }

    #[test]
    fn clipping_scales_the_global_norm_down_and_reports_it() {
        // Gradients [3, 0, 0, 0] and [0, 4]: global norm 5. Clipping to 1 scales by 1/5.
        let (vs, w, b) = store();
        let mut sgd = Sgd::new(&vs, 0.0, false, 0.0);
        set_grads(&mut sgd, &w, &b, &[3.0, 0.0, 0.0, 0.0], &[0.0, 4.0]);
        let norm = sgd.clip_grad_norm(1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let grads = sgd.gradients();
        let names = sgd.parameter_names();
        assert_eq!(names, vec!["b", "w"]);
        assert_close(&values(&grads[0]), &[0.0, 0.8]);
        assert_close(&values(&grads[1]), &[0.6, 0.0, 0.0, 0.0]);
        // Below the limit nothing changes.
        assert!((sgd.clip_grad_norm(10.0) - 1.0).abs() < 1e-5);
        assert_close(&values(&sgd.gradients()[0]), &[0.0, 0.8]);
    }

    #[test]
    fn state_round_trips_into_a_fresh_optimizer() {
        // Two optimizers on identical stores: one steps twice, the other steps once, has its
        // state replaced by the first's after one step, then steps again. Same result.
        let (vs1, w1, b1) = store();
        let (vs2, mut w2, mut b2) = store();
        let mut a = Sgd::new(&vs1, 0.9, true, 0.01);
        let mut b = Sgd::new(&vs2, 0.9, true, 0.01);
        set_grads(&mut a, &w1, &b1, &[1.0, 2.0, 3.0, 4.0], &[1.0, 1.0]);
        a.step(0.1);
        let saved: Vec<(String, Tensor)> =
            a.state().into_iter().map(|(n, t)| (n, t.copy())).collect();
        assert_eq!(saved.len(), 2);
        tch::no_grad(|| {
            w2.copy_(&w1);
            b2.copy_(&b1);
        });
        b.load_state(&saved).unwrap();
        set_grads(&mut a, &w1, &b1, &[-1.0, 0.0, 1.0, 0.0], &[2.0, 0.0]);
        set_grads(&mut b, &w2, &b2, &[-1.0, 0.0, 1.0, 0.0], &[2.0, 0.0]);
        a.step(0.1);
        b.step(0.1);
        assert_eq!(values(&w1), values(&w2));
        assert_eq!(values(&b1), values(&b2));
    }

    #[test]
    fn loading_state_with_unknown_names_or_shapes_fails() {
        let (vs, _, _) = store();
        let mut sgd = Sgd::new(&vs, 0.9, true, 0.0);
        let bad_name = vec![(
            "nope".to_string(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        )];
        assert!(sgd.load_state(&bad_name).is_err());
        let bad_shape = vec![(
            "w".to_string(),
            Tensor::zeros([3], (Kind::Float, Device::Cpu)),
        )];
        let err = sgd.load_state(&bad_shape).unwrap_err().to_string();
        assert!(err.contains("w"), "{err}");
    }

    #[test]
    fn batch_norm_buffers_are_not_optimised() {
        let vs = VarStore::new(Device::Cpu);
        let _bn = nn::batch_norm2d(vs.root().sub("bn"), 3, Default::default());
        let sgd = Sgd::new(&vs, 0.9, true, 0.0);
        assert_eq!(sgd.parameter_names(), vec!["bn.bias", "bn.weight"]);
    }
}
