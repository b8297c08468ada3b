//! The exponential moving average (EMA) of the student's weights.
//!
//! After every student step each trainable parameter of the EMA copy moves towards the
//! student's: `e = decay * e + (1 - decay) * s`. Batch-norm running statistics are not
//! averaged but copied, so the EMA copy's statistics always describe the batches the student
//! saw most recently.

use tch::{Tensor, nn::VarStore};

use crate::models::Model;

/// An averaged copy of a network, with its own var store and model.
pub struct Ema {
    /// The averaged variables, named as in the source network.
    pub vs: VarStore,
    /// The network built on `vs`.
    pub model: Model,
    /// Weight of the old average in each update (0.995 in the paper's CIFAR recipe).
    pub decay: f64,
}

impl Ema {
    /// Blends the trainable parameters of `source` into the average and copies its other
    /// variables (batch-norm statistics). Variables of `source` absent from the EMA are
    /// ignored; [`Ema::reset_to`] reports such mismatches.
    pub fn update(&mut self, source: &VarStore) {
        let mine = self.vs.variables();
        let weight = 1.0 - self.decay;
        tch::no_grad(|| {
            for (name, src) in source.variables() {
                let Some(mut dst) = mine.get(&name).map(Tensor::shallow_clone) else {
                    continue;
                };
                if src.requires_grad() {
                    let _ = dst.f_lerp_(&src, weight);
                } else {
                    let _ = dst.f_copy_(&src);
                }
            }
        });
    }

    /// Makes the average an exact copy of `source` (the start of training) and stops the
    /// average's own variables from tracking gradients.
    pub fn reset_to(&mut self, source: &VarStore) -> anyhow::Result<()> {
        self.vs.copy(source).map_err(|e| {
            anyhow::anyhow!("the EMA network does not match the student it averages: {e}")
        })?;
        self.vs.freeze();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, nn};

    fn network(vs: &VarStore) -> Model {
        let root = vs.root();
        let linear = nn::linear(&root / "fc", 2, 2, Default::default());
        let bn = nn::batch_norm1d(&root / "bn", 2, Default::default());
        Box::new(nn::seq_t().add(linear).add(bn))
    }

    fn fill(vs: &VarStore, name: &str, value: f64) {
        let vars = vs.variables();
        tch::no_grad(|| {
            let _ = vars[name].shallow_clone().fill_(value);
        });
    }

    fn first(vs: &VarStore, name: &str) -> f64 {
        vs.variables()[name].flatten(0, -1).double_value(&[0])
    }

    #[test]
    fn parameters_are_blended_and_batch_norm_statistics_copied() {
        // Student weight 3, EMA weight 1, decay 0.9: 0.9 * 1 + 0.1 * 3 = 1.2, then
        // 0.9 * 1.2 + 0.1 * 3 = 1.38. The running mean is copied as it is (5).
        let student_vs = VarStore::new(Device::Cpu);
        let _student = network(&student_vs);
        let ema_vs = VarStore::new(Device::Cpu);
        let model = network(&ema_vs);
        let mut ema = Ema {
            vs: ema_vs,
            model,
            decay: 0.9,
        };
        fill(&student_vs, "fc.weight", 1.0);
        ema.reset_to(&student_vs).unwrap();
        assert_eq!(first(&ema.vs, "fc.weight"), 1.0);

        fill(&student_vs, "fc.weight", 3.0);
        fill(&student_vs, "bn.running_mean", 5.0);
        ema.update(&student_vs);
        assert!((first(&ema.vs, "fc.weight") - 1.2).abs() < 1e-6);
        assert_eq!(first(&ema.vs, "bn.running_mean"), 5.0);
        ema.update(&student_vs);
        assert!((first(&ema.vs, "fc.weight") - 1.38).abs() < 1e-6);
        let xs = Tensor::ones([4, 2], (Kind::Float, Device::Cpu));
        assert!(!ema.model.forward_t(&xs, false).requires_grad());
    }
}
