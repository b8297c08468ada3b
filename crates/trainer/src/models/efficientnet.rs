//! EfficientNet-B0 laid out exactly like torchvision's `efficientnet_b0`.
//!
//! `tch::vision::efficientnet` shares the variable names but pads stride-2 convolutions the
//! TensorFlow way (asymmetric "same" padding), so its outputs differ from torchvision's; this
//! version pads symmetrically like torchvision, takes any number of input channels and the
//! configured batch-norm momentum. MBConv blocks use stochastic depth (linearly increasing to
//! 0.2 over the blocks, in training only) and the classifier applies the run's dropout.

use super::{ConvShape, ModelConfig, batch_norm, conv2d};
use tch::{Kind, Tensor, nn};

/// One stage of B0: expansion ratio, kernel, first stride, input and output channels, blocks.
struct Stage {
    expand_ratio: i64,
    kernel: i64,
    stride: i64,
    c_in: i64,
    c_out: i64,
    blocks: usize,
}

/// The B0 stages (width and depth multipliers 1.0, so no rounding is needed).
const B0_STAGES: [Stage; 7] = [
    Stage {
        expand_ratio: 1,
        kernel: 3,
        stride: 1,
        c_in: 32,
        c_out: 16,
        blocks: 1,
    },
    Stage {
        expand_ratio: 6,
        kernel: 3,
        stride: 2,
        c_in: 16,
        c_out: 24,
        blocks: 2,
    },
    Stage {
        expand_ratio: 6,
        kernel: 5,
        stride: 2,
        c_in: 24,
        c_out: 40,
        blocks: 2,
    },
    Stage {
        expand_ratio: 6,
        kernel: 3,
        stride: 2,
        c_in: 40,
        c_out: 80,
        blocks: 3,
    },
    Stage {
        expand_ratio: 6,
        kernel: 5,
        stride: 1,
        c_in: 80,
        c_out: 112,
        blocks: 3,
    },
    Stage {
        expand_ratio: 6,
        kernel: 5,
        stride: 2,
        c_in: 112,
        c_out: 192,
        blocks: 4,
    },
    Stage {
        expand_ratio: 6,
        kernel: 3,
        stride: 1,
        c_in: 192,
        c_out: 320,
        blocks: 1,
    },
];

/// Stochastic-depth probability of the last block; earlier blocks scale it linearly.
const STOCHASTIC_DEPTH_PROB: f64 = 0.2;

/// Convolution, batch norm and (optionally) SiLU: torchvision's `Conv2dNormActivation`, with
/// variables `{path}.0.weight` and `{path}.1.*`.
#[derive(Debug)]
struct ConvBnAct {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    silu: bool,
}

impl ConvBnAct {
    fn new(path: nn::Path, c_in: i64, c_out: i64, shape: ConvShape, bn: f64) -> ConvBnAct {
        ConvBnAct {
            conv: conv2d(&path / 0, c_in, c_out, shape),
            bn: batch_norm(&path / 1, c_out, bn),
            silu: true,
        }
    }

    fn without_activation(self) -> ConvBnAct {
        ConvBnAct {
            silu: false,
            ..self
        }
    }
}

impl nn::ModuleT for ConvBnAct {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv).apply_t(&self.bn, train);
        if self.silu { ys.silu() } else { ys }
    }
}

/// Squeeze-and-excitation: pooled channels through two 1x1 convolutions (`fc1`, `fc2`, with
/// bias) gate the input channels.
#[derive(Debug)]
struct SqueezeExcitation {
    fc1: nn::Conv2D,
    fc2: nn::Conv2D,
}

impl SqueezeExcitation {
    fn new(path: nn::Path, channels: i64, squeezed: i64) -> SqueezeExcitation {
        let config = nn::ConvConfig {
            ws_init: super::KAIMING_FAN_OUT,
            ..Default::default()
        };
        SqueezeExcitation {
            fc1: nn::conv2d(&path / "fc1", channels, squeezed, 1, config),
            fc2: nn::conv2d(&path / "fc2", squeezed, channels, 1, config),
        }
    }
}

impl nn::Module for SqueezeExcitation {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let pooled = xs.adaptive_avg_pool2d([1, 1]);
        let scale = pooled.apply(&self.fc1).silu().apply(&self.fc2).sigmoid();
        xs * scale
    }
}

/// The inverted-residual block: expand (1x1), depthwise (kxk), squeeze-excite, project (1x1),
/// with a residual connection and stochastic depth when the shape is preserved.
#[derive(Debug)]
struct MbConv {
    expand: Option<ConvBnAct>,
    depthwise: ConvBnAct,
    squeeze_excitation: SqueezeExcitation,
    project: ConvBnAct,
    residual: bool,
    drop_prob: f64,
}

impl MbConv {
    fn new(path: nn::Path, stage: &Stage, c_in: i64, stride: i64, drop_prob: f64, bn: f64) -> Self {
        let path = &path / "block";
        let expanded = c_in * stage.expand_ratio;
        let expand = (expanded != c_in)
            .then(|| ConvBnAct::new(&path / 0, c_in, expanded, ConvShape::square(1, 1), bn));
        let first = if expand.is_some() { 1 } else { 0 };
        let depthwise_shape = ConvShape {
            groups: expanded,
            ..ConvShape::square(stage.kernel, stride)
        };
        let depthwise = ConvBnAct::new(&path / first, expanded, expanded, depthwise_shape, bn);
        let squeezed = (c_in / 4).max(1);
        let squeeze_excitation = SqueezeExcitation::new(&path / (first + 1), expanded, squeezed);
        let project = ConvBnAct::new(
            &path / (first + 2),
            expanded,
            stage.c_out,
            ConvShape::square(1, 1),
            bn,
        )
        .without_activation();
        MbConv {
            expand,
            depthwise,
            squeeze_excitation,
            project,
            residual: stride == 1 && c_in == stage.c_out,
            drop_prob,
        }
    }
}

/// Drops whole samples' residual branches with probability `p` and rescales the survivors.
fn stochastic_depth(xs: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p == 0.0 {
        return xs.shallow_clone();
    }
    let survival = 1.0 - p;
    let mut keep = Tensor::empty([xs.size()[0], 1, 1, 1], (Kind::Float, xs.device()));
    let keep = keep.bernoulli_float_(survival).to_kind(xs.kind());
    xs * keep / survival
}

impl nn::ModuleT for MbConv {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let expanded = match &self.expand {
            Some(expand) => xs.apply_t(expand, train),
            None => xs.shallow_clone(),
        };
        let ys = expanded
            .apply_t(&self.depthwise, train)
            .apply(&self.squeeze_excitation)
            .apply_t(&self.project, train);

        if self.residual {
            stochastic_depth(&ys, self.drop_prob, train) + xs
        } else {
            ys
        }
    }
}

/// A torchvision-compatible EfficientNet classifier.
#[derive(Debug)]
pub struct EfficientNet {
    stem: ConvBnAct,
    blocks: Vec<MbConv>,
    head: ConvBnAct,
    classifier: nn::Linear,
    dropout: f64,
}

impl EfficientNet {
    /// EfficientNet-B0 under `path` (`features.*`, `classifier.1.*`).
    pub fn b0(path: &nn::Path, config: &ModelConfig) -> EfficientNet {
        let bn = config.bn_momentum;
        let features = path / "features";
        let stem = ConvBnAct::new(
            &features / 0,
            config.in_channels,
            32,
            ConvShape::square(3, 2),
            bn,
        );

        let total_blocks: usize = B0_STAGES.iter().map(|stage| stage.blocks).sum();
        let mut blocks = Vec::with_capacity(total_blocks);
        for (s, stage) in B0_STAGES.iter().enumerate() {
            for i in 0..stage.blocks {
                let (c_in, stride) = if i == 0 {
                    (stage.c_in, stage.stride)
                } else {
                    (stage.c_out, 1)
                };
                let drop_prob = STOCHASTIC_DEPTH_PROB * blocks.len() as f64 / total_blocks as f64;
                let block_path = &features / (s + 1) / i;
                blocks.push(MbConv::new(block_path, stage, c_in, stride, drop_prob, bn));
            }
        }

        let last = B0_STAGES[B0_STAGES.len() - 1].c_out;
        let head_path = &features / (B0_STAGES.len() + 1);
        let head = ConvBnAct::new(head_path, last, 4 * last, ConvShape::square(1, 1), bn);
        let classifier = uniform_linear(path / "classifier" / 1, 4 * last, config.num_classes);

        EfficientNet {
            stem,
            blocks,
            head,
            classifier,
            dropout: config.dropout,
        }
    }
}

/// torchvision's EfficientNet classifier initialisation: weight uniform in
/// `+-1 / sqrt(out_features)`, bias zero.
fn uniform_linear(path: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let bound = 1.0 / (c_out as f64).sqrt();
    let config = nn::LinearConfig {
        ws_init: nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(path, c_in, c_out, config)
}

impl nn::ModuleT for EfficientNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut features = xs.apply_t(&self.stem, train);
        for block in &self.blocks {
            features = features.apply_t(block, train);
        }

        let pooled = features
            .apply_t(&self.head, train)
            .adaptive_avg_pool2d([1, 1]);
        pooled
            .flatten(1, -1)
            .dropout(self.dropout, train)
            .apply(&self.classifier)
    }
}
