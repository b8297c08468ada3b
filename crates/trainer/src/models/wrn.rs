//! WideResNet-depth-width for small images, the variant used by MPL, UDA and FixMatch.
//!
//! A 3x3 stem convolution to 16 channels, then three groups of pre-activation basic blocks of
//! widths `16k`, `32k`, `64k` with strides 1, 2, 2, then batch norm, leaky ReLU, global average
//! pooling, dropout and a linear classifier. Each group has `(depth - 4) / 6` blocks. The first
//! block of the first group feeds its shortcut the activated input ("activate before
//! residual"); the other blocks feed it the raw input. A 1x1 convolution replaces the identity
//! shortcut wherever the shape changes.
//!
//! Variable names follow `python/mpl_reference.py`: `conv1`, `block{1,2,3}.layer.{i}.{bn1,
//! conv1, bn2, conv2, convShortcut}`, `bn1`, `fc`.

use super::{ConvShape, ModelConfig, batch_norm, conv2d};
use tch::{Tensor, nn};

/// Leaky ReLU with an arbitrary negative slope, at the cost of libtorch's own fused kernel.
///
/// libtorch's binding fixes the slope at 0.01, and the compositions that take a slope are slow
/// on the CPU: `max(x, slope * x)` makes several passes over every activation each way (a
/// quarter of a WRN-28-2 MPL step), and PReLU's backward is slower still. So the forward is
/// the kernel of leaky ReLU's own derivative, `x > 0 ? g : slope * g`, applied to `g = x`:
/// the same values, one pass. Its input `x` is passed a second time detached, so autograd
/// differentiates only through `g`, with that same kernel: the gradient is
/// `x > 0 ? grad : slope * grad`, exactly leaky ReLU's (the tests compare both with PyTorch).
fn leaky_relu(xs: &Tensor, slope: f64) -> Tensor {
    xs.detach().leaky_relu_backward(xs, slope, false)
}

/// One pre-activation basic block: BN, leaky ReLU, 3x3 conv, BN, leaky ReLU, 3x3 conv, plus
/// the shortcut.
#[derive(Debug)]
struct BasicBlock {
    bn1: nn::BatchNorm,
    conv1: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
    activate_before_residual: bool,
    slope: f64,
}

impl BasicBlock {
    fn new(
        path: nn::Path,
        (c_in, c_out): (i64, i64),
        stride: i64,
        activate_before_residual: bool,
        config: &ModelConfig,
    ) -> BasicBlock {
        let shortcut = (c_in != c_out || stride != 1).then(|| {
            conv2d(
                &path / "convShortcut",
                c_in,
                c_out,
                ConvShape::square(1, stride),
            )
        });
        BasicBlock {
            bn1: batch_norm(&path / "bn1", c_in, config.bn_momentum),
            conv1: conv2d(&path / "conv1", c_in, c_out, ConvShape::square(3, stride)),
            bn2: batch_norm(&path / "bn2", c_out, config.bn_momentum),
            conv2: conv2d(&path / "conv2", c_out, c_out, ConvShape::square(3, 1)),
            shortcut,
            activate_before_residual,
            slope: config.leaky_relu_slope,
        }
    }
}

impl nn::ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let activated = leaky_relu(&xs.apply_t(&self.bn1, train), self.slope);

        let residual = activated.apply(&self.conv1).apply_t(&self.bn2, train);
        let residual = leaky_relu(&residual, self.slope).apply(&self.conv2);

        let shortcut_input = if self.activate_before_residual {
            &activated
        } else {
            xs
        };
        let shortcut = match &self.shortcut {
            Some(conv) => shortcut_input.apply(conv),
            None => shortcut_input.shallow_clone(),
        };
        shortcut + residual
    }
}

/// The WideResNet classifier.
#[derive(Debug)]
pub struct WideResNet {
    conv1: nn::Conv2D,
    blocks: Vec<BasicBlock>,
    bn1: nn::BatchNorm,
    fc: nn::Linear,
    dropout: f64,
    slope: f64,
}

impl WideResNet {
    /// Builds a WideResNet of `config.depth` and `config.widen_factor` under `path`.
    ///
    /// Panics if the depth is not `6n + 4` with `n >= 1`; `RunSpec::validate` rejects such
    /// specs before a model is built.
    pub fn new(path: &nn::Path, config: &ModelConfig) -> WideResNet {
        assert!(
            config.depth >= 10 && (config.depth - 4).is_multiple_of(6),
            "WideResNet depth must be 6n + 4, got {}",
            config.depth
        );
        let blocks_per_group = (config.depth - 4) / 6;
        let k = config.widen_factor as i64;
        let widths = [16, 16 * k, 32 * k, 64 * k];

        let conv1 = conv2d(
            path / "conv1",
            config.in_channels,
            widths[0],
            ConvShape::square(3, 1),
        );
        let mut blocks = Vec::with_capacity(3 * blocks_per_group);
        for (group, stride) in [1, 2, 2].into_iter().enumerate() {
            let group_path = path / format!("block{}", group + 1) / "layer";
            for i in 0..blocks_per_group {
                let c_in = if i == 0 {
                    widths[group]
                } else {
                    widths[group + 1]
                };
                let stride = if i == 0 { stride } else { 1 };
                let activate_before_residual = group == 0 && i == 0;
                let block_path = &group_path / i;
                let channels = (c_in, widths[group + 1]);
                blocks.push(BasicBlock::new(
                    block_path,
                    channels,
                    stride,
                    activate_before_residual,
                    config,
                ));
            }
        }
        let bn1 = batch_norm(path / "bn1", widths[3], config.bn_momentum);
        let fc = xavier_linear(path / "fc", widths[3], config.num_classes);

        WideResNet {
            conv1,
            blocks,
            bn1,
            fc,
            dropout: config.dropout,
            slope: config.leaky_relu_slope,
        }
    }
}

/// A linear layer with xavier-normal weight and zero bias.
fn xavier_linear(path: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let stdev = (2.0 / (c_in + c_out) as f64).sqrt();
    let config = nn::LinearConfig {
        ws_init: nn::Init::Randn { mean: 0.0, stdev },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(path, c_in, c_out, config)
}

impl nn::ModuleT for WideResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut features = xs.apply(&self.conv1);
        for block in &self.blocks {
            features = features.apply_t(block, train);
        }

        let features = leaky_relu(&features.apply_t(&self.bn1, train), self.slope);
        let pooled = features.adaptive_avg_pool2d([1, 1]).flatten(1, -1);

        pooled.dropout(self.dropout, train).apply(&self.fc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::parameter_count;
    use mpl_protocol::spec::Architecture;
    use tch::nn::ModuleT;
    use tch::{Device, Kind};

    fn config(depth: usize, widen_factor: usize, in_channels: i64) -> ModelConfig {
        ModelConfig {
            arch: Architecture::WideResnet,
            depth,
            widen_factor,
            dropout: 0.2,
            bn_momentum: 0.001,
            leaky_relu_slope: 0.1,
            in_channels,
            num_classes: 10,
        }
    }

    #[test]
    fn wrn_28_2_has_about_1_47_million_parameters() {
        // Counted by hand from the layer shapes: stem 432, group 1 70_112, group 2 279_488,
        // group 3 1_116_032, final batch norm 256, classifier 1_290. The paper rounds the
        // same network to 1.45 M.
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = WideResNet::new(&vs.root(), &config(28, 2, 3));
        assert_eq!(parameter_count(&vs), 1_467_610);
    }

    #[test]
    fn grey_28x28_images_give_one_row_of_logits_each() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = WideResNet::new(&vs.root(), &config(10, 1, 1));
        let xs = Tensor::randn([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        assert_eq!(model.forward_t(&xs, true).size(), vec![3, 10]);
        assert_eq!(model.forward_t(&xs, false).size(), vec![3, 10]);
    }

    #[test]
    fn variable_names_are_the_reference_state_dict_keys() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = WideResNet::new(&vs.root(), &config(10, 2, 3));
        let names = vs.variables();
        for key in [
            "conv1.weight",
            "block1.layer.0.bn1.running_mean",
            "block1.layer.0.convShortcut.weight",
            "block2.layer.0.conv2.weight",
            "block3.layer.0.bn2.running_var",
            "bn1.weight",
            "fc.bias",
        ] {
            assert!(names.contains_key(key), "missing {key}");
        }
        // Stem conv, three blocks of (two batch norms with four tensors, three convs), final
        // batch norm, classifier weight and bias.
        assert_eq!(names.len(), 1 + 3 * (2 * 4 + 3) + 4 + 2);
    }

    #[test]
    fn leaky_relu_keeps_positives_and_scales_negatives_by_the_slope() {
        let xs = Tensor::from_slice(&[-2.0f32, -0.5, 0.0, 1.5]);
        let ys = leaky_relu(&xs, 0.1);
        let expected = Tensor::from_slice(&[-0.2f32, -0.05, 0.0, 1.5]);
        assert!(ys.allclose(&expected, 1e-7, 1e-7, false));
        let steep = leaky_relu(&xs, 2.0);
        assert!(steep.allclose(
            &Tensor::from_slice(&[-4.0f32, -1.0, 0.0, 1.5]),
            0.0,
            0.0,
            false
        ));
    }

    #[test]
    fn leaky_relu_gradient_is_one_for_positives_and_the_slope_for_negatives() {
        let xs = Tensor::from_slice(&[-2.0f32, -0.5, 0.5, 1.5]).set_requires_grad(true);
        let upstream = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
        let ys = leaky_relu(&xs, 0.1);
        (&ys * &upstream).sum(Kind::Float).backward();
        let expected = Tensor::from_slice(&[0.1f32, 0.2, 3.0, 4.0]);
        assert!(xs.grad().allclose(&expected, 1e-7, 1e-7, false));
    }
}
