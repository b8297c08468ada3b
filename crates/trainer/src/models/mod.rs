//! The networks a run can train: WideResNet for small images, ResNet-18/50 and
//! EfficientNet-B0 for larger ones.
//!
//! Every network is built from a [`tch::nn::Path`], so its variable names are the keys of the
//! matching PyTorch `state_dict()` (torchvision's names for ResNet and EfficientNet, the
//! `python/mpl_reference.py` module's names for WideResNet). An exported var store therefore
//! loads into PyTorch without any renaming.

pub mod efficientnet;
pub mod resnet;
pub mod wrn;

use mpl_protocol::spec::{Architecture, ModelSpec};
use tch::nn;

/// Everything needed to build a network, with the batch-norm momentum already resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Which network.
    pub arch: Architecture,
    /// WideResNet depth (`6n + 4`); ignored by the other architectures.
    pub depth: usize,
    /// WideResNet widen factor; ignored by the other architectures.
    pub widen_factor: usize,
    /// Dropout probability applied to the pooled features, before the classifier.
    pub dropout: f64,
    /// Batch-norm momentum in PyTorch's convention (`running = (1 - m) * running + m * batch`).
    pub bn_momentum: f64,
    /// Negative slope of the leaky ReLUs (WideResNet only).
    pub leaky_relu_slope: f64,
    /// Channels of the input images (1 for grey, 3 for RGB).
    pub in_channels: i64,
    /// Number of classes, the width of the logits.
    pub num_classes: i64,
}

impl ModelConfig {
    /// Builds the configuration from a run spec's model section, the batch-norm momentum the
    /// trainer resolved for this run, and the shape of the data.
    pub fn from_spec(
        spec: &ModelSpec,
        bn_momentum: f64,
        in_channels: i64,
        num_classes: i64,
    ) -> ModelConfig {
        ModelConfig {
            arch: spec.arch,
            depth: spec.depth,
            widen_factor: spec.widen_factor,
            dropout: spec.dropout,
            bn_momentum,
            leaky_relu_slope: spec.leaky_relu_slope,
            in_channels,
            num_classes,
        }
    }
}

/// A classifier: `forward_t(xs: [N, C, H, W] f32 normalised, train) -> logits [N, classes]`.
pub type Model = Box<dyn nn::ModuleT + Send>;

/// Builds a freshly initialised network under `path`.
pub fn build(path: &nn::Path, config: &ModelConfig) -> Model {
    match config.arch {
        Architecture::WideResnet => Box::new(wrn::WideResNet::new(path, config)),
        Architecture::Resnet18 => Box::new(resnet::ResNet::resnet18(path, config)),
        Architecture::Resnet50 => Box::new(resnet::ResNet::resnet50(path, config)),
        Architecture::EfficientnetB0 => Box::new(efficientnet::EfficientNet::b0(path, config)),
    }
}

/// Number of trainable scalars in a var store (batch-norm running statistics excluded).
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

/// The architecture's name as written in run specs and model cards (`wide_resnet`, ...).
pub fn arch_name(arch: Architecture) -> &'static str {
    match arch {
        Architecture::WideResnet => "wide_resnet",
        Architecture::Resnet18 => "resnet18",
        Architecture::Resnet50 => "resnet50",
        Architecture::EfficientnetB0 => "efficientnet_b0",
    }
}

/// Kaiming-normal initialisation scaled by fan-out with the ReLU gain, as torchvision and the
/// WideResNet reference initialise their convolutions.
const KAIMING_FAN_OUT: nn::Init = nn::Init::Kaiming {
    dist: nn::init::NormalOrUniform::Normal,
    fan: nn::init::FanInOut::FanOut,
    non_linearity: nn::init::NonLinearity::ReLU,
};

/// Options of a convolution without bias.
#[derive(Debug, Clone, Copy)]
struct ConvShape {
    kernel: i64,
    stride: i64,
    padding: i64,
    groups: i64,
}

impl ConvShape {
    /// A `kernel` x `kernel` convolution with "same" padding for odd kernels.
    fn square(kernel: i64, stride: i64) -> ConvShape {
        ConvShape {
            kernel,
            stride,
            padding: (kernel - 1) / 2,
            groups: 1,
        }
    }
}

/// A bias-free convolution with kaiming fan-out initialisation.
fn conv2d(path: nn::Path, c_in: i64, c_out: i64, shape: ConvShape) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride: shape.stride,
        padding: shape.padding,
        groups: shape.groups,
        bias: false,
        ws_init: KAIMING_FAN_OUT,
        ..Default::default()
    };
    nn::conv2d(path, c_in, c_out, shape.kernel, config)
}

/// A batch norm with weight 1, bias 0, PyTorch's epsilon and the given momentum.
fn batch_norm(path: nn::Path, channels: i64, momentum: f64) -> nn::BatchNorm {
    let config = nn::BatchNormConfig {
        momentum,
        eps: 1e-5,
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::batch_norm2d(path, channels, config)
}

/// PyTorch's default `nn.Linear` initialisation: weight and bias uniform in
/// `+-1 / sqrt(fan_in)`.
fn linear_torch_default(path: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let bound = 1.0 / (c_in as f64).sqrt();
    let config = nn::LinearConfig {
        ws_init: nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
        bs_init: Some(nn::Init::Uniform {
            lo: -bound,
            up: bound,
        }),
        bias: true,
    };
    nn::linear(path, c_in, c_out, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    fn config(arch: Architecture, in_channels: i64) -> ModelConfig {
        ModelConfig {
            arch,
            depth: 28,
            widen_factor: 2,
            dropout: 0.2,
            bn_momentum: 0.01,
            leaky_relu_slope: 0.1,
            in_channels,
            num_classes: 10,
        }
    }

    fn logits_shape(config: &ModelConfig, side: i64) -> Vec<i64> {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build(&vs.root(), config);
        let xs = Tensor::randn(
            [2, config.in_channels, side, side],
            (Kind::Float, Device::Cpu),
        );
        model.forward_t(&xs, true).size()
    }

    #[test]
    fn resnet18_gives_one_row_of_logits_per_image_for_grey_and_rgb_inputs() {
        assert_eq!(
            logits_shape(&config(Architecture::Resnet18, 1), 32),
            vec![2, 10]
        );
        assert_eq!(
            logits_shape(&config(Architecture::Resnet18, 3), 64),
            vec![2, 10]
        );
    }

    #[test]
    fn resnet50_gives_one_row_of_logits_per_image() {
        assert_eq!(
            logits_shape(&config(Architecture::Resnet50, 3), 32),
            vec![2, 10]
        );
    }

    #[test]
    fn efficientnet_b0_gives_one_row_of_logits_per_image_for_grey_and_rgb_inputs() {
        assert_eq!(
            logits_shape(&config(Architecture::EfficientnetB0, 1), 28),
            vec![2, 10]
        );
        assert_eq!(
            logits_shape(&config(Architecture::EfficientnetB0, 3), 64),
            vec![2, 10]
        );
    }

    #[test]
    fn resnet_and_efficientnet_have_torchvision_parameter_counts() {
        // torchvision's resnet18(num_classes=1000) has 11_689_512 parameters, resnet50
        // 25_557_032 and efficientnet_b0 5_288_548 (printed by
        // `sum(p.numel() for p in m.parameters())` with torchvision 0.26).
        let counts = [
            (Architecture::Resnet18, 11_689_512),
            (Architecture::Resnet50, 25_557_032),
            (Architecture::EfficientnetB0, 5_288_548),
        ];
        for (arch, expected) in counts {
            let vs = nn::VarStore::new(Device::Cpu);
            let config = ModelConfig {
                num_classes: 1000,
                ..config(arch, 3)
            };
            let _model = build(&vs.root(), &config);
            assert_eq!(parameter_count(&vs), expected, "{arch:?}");
        }
    }
}
