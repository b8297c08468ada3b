//! ResNet-18 and ResNet-50 laid out exactly like torchvision's, for larger images.
//!
//! `tch::vision::resnet` has the same variable names but fixes the input at three channels
//! and the batch-norm momentum at 0.1, so the network is rebuilt here with both configurable.
//! Initialisation follows torchvision: kaiming-normal (fan-out) convolutions, batch norm 1 / 0,
//! PyTorch's default linear layer. The only addition is dropout (the run's `dropout`) on the
//! pooled features, which is the identity in eval mode and has no variables.

use super::{ConvShape, ModelConfig, batch_norm, conv2d, linear_torch_default};
use tch::{Tensor, nn};

/// The two block designs torchvision uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18 and -34).
    Basic,
    /// 1x1 reduce, 3x3, 1x1 expand by four (ResNet-50 and deeper).
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> i64 {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// A residual block: convolutions each followed by batch norm, ReLU between them and after the
/// sum, a projected shortcut (`downsample.0` conv, `downsample.1` batch norm) when needed.
#[derive(Debug)]
struct Block {
    layers: Vec<(nn::Conv2D, nn::BatchNorm)>,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Block {
    fn new(path: nn::Path, kind: BlockKind, c_in: i64, width: i64, stride: i64, bn: f64) -> Block {
        let c_out = width * kind.expansion();
        let convs: Vec<(i64, i64, ConvShape)> = match kind {
            BlockKind::Basic => vec![
                (c_in, width, ConvShape::square(3, stride)),
                (width, width, ConvShape::square(3, 1)),
            ],
            BlockKind::Bottleneck => vec![
                (c_in, width, ConvShape::square(1, 1)),
                (width, width, ConvShape::square(3, stride)),
                (width, c_out, ConvShape::square(1, 1)),
            ],
        };
        let layers = convs
            .into_iter()
            .enumerate()
            .map(|(i, (from, to, shape))| {
                let conv = conv2d(&path / format!("conv{}", i + 1), from, to, shape);
                (conv, batch_norm(&path / format!("bn{}", i + 1), to, bn))
            })
            .collect();
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let ds = &path / "downsample";
            let conv = conv2d(&ds / 0, c_in, c_out, ConvShape::square(1, stride));
            (conv, batch_norm(&ds / 1, c_out, bn))
        });
        Block { layers, downsample }
    }
}

impl nn::ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = self.layers.len() - 1;
        let mut residual = xs.shallow_clone();
        for (i, (conv, bn)) in self.layers.iter().enumerate() {
            residual = residual.apply(conv).apply_t(bn, train);
            if i < last {
                residual = residual.relu();
            }
        }

        let shortcut = match &self.downsample {
            Some((conv, bn)) => xs.apply(conv).apply_t(bn, train),
            None => xs.shallow_clone(),
        };
        (shortcut + residual).relu()
    }
}

/// A torchvision-compatible ResNet classifier.
#[derive(Debug)]
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    blocks: Vec<Block>,
    fc: nn::Linear,
    dropout: f64,
}

impl ResNet {
    /// ResNet-18: basic blocks, two per stage.
    pub fn resnet18(path: &nn::Path, config: &ModelConfig) -> ResNet {
        ResNet::new(path, config, BlockKind::Basic, [2, 2, 2, 2])
    }

    /// ResNet-50: bottleneck blocks, 3 / 4 / 6 / 3 per stage.
    pub fn resnet50(path: &nn::Path, config: &ModelConfig) -> ResNet {
        ResNet::new(path, config, BlockKind::Bottleneck, [3, 4, 6, 3])
    }

    fn new(path: &nn::Path, config: &ModelConfig, kind: BlockKind, counts: [usize; 4]) -> ResNet {
        let bn = config.bn_momentum;
        let stem = ConvShape {
            kernel: 7,
            stride: 2,
            padding: 3,
            groups: 1,
        };
        let conv1 = conv2d(path / "conv1", config.in_channels, 64, stem);
        let bn1 = batch_norm(path / "bn1", 64, bn);

        let mut blocks = Vec::new();
        let mut c_in = 64;
        for (stage, (width, count)) in [64, 128, 256, 512].into_iter().zip(counts).enumerate() {
            let stage_path = path / format!("layer{}", stage + 1);
            for i in 0..count {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                blocks.push(Block::new(&stage_path / i, kind, c_in, width, stride, bn));
                c_in = width * kind.expansion();
            }
        }
        let fc = linear_torch_default(path / "fc", c_in, config.num_classes);

        ResNet {
            conv1,
            bn1,
            blocks,
            fc,
            dropout: config.dropout,
        }
    }
}

impl nn::ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let stem = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        let mut features = stem.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in &self.blocks {
            features = features.apply_t(block, train);
        }

        let pooled = features.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        pooled.dropout(self.dropout, train).apply(&self.fc)
    }
}
