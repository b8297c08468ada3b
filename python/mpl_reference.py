"""PyTorch reference for the networks the trainer exports, and a loader for its exports.

The WideResNet here is the one the trainer trains (crates/trainer/src/models/wrn.rs): the
parameter and buffer names of ``WideResNet().state_dict()`` are exactly the keys of an exported
``.safetensors`` file, so loading is a plain ``load_state_dict``. ResNet and EfficientNet exports
use torchvision's names and load into torchvision's modules.

Usage::

    from mpl_reference import load_exported
    model, card = load_exported("student.safetensors")   # eval mode, on the CPU
    logits = model(images)  # images: float32 [N, C, H, W], scaled to 0..1, then
                            # (x - card["input"]["mean"][c]) / card["input"]["std"][c]
"""

import json
import os

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Pre-activation block: BN, leaky ReLU, 3x3 conv, BN, leaky ReLU, 3x3 conv, + shortcut.

    The shortcut takes the raw input, or the activated one when ``activate_before_residual``
    (the first block of the network); a 1x1 conv (``convShortcut``) adapts it when the
    shape changes.
    """

    def __init__(self, c_in, c_out, stride, activate_before_residual, bn_momentum, slope):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.convShortcut = None
        if c_in != c_out or stride != 1:
            self.convShortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
        self.activate_before_residual = activate_before_residual
        self.slope = slope

    def forward(self, x):
        activated = F.leaky_relu(self.bn1(x), self.slope)
        residual = F.leaky_relu(self.bn2(self.conv1(activated)), self.slope)
        residual = self.conv2(residual)
        shortcut = activated if self.activate_before_residual else x
        if self.convShortcut is not None:
            shortcut = self.convShortcut(shortcut)
        return shortcut + residual


class NetworkBlock(nn.Module):
    """A group of blocks of one width, kept under ``layer`` for the state_dict names."""

    def __init__(self, blocks):
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """WideResNet-depth-width for small images (the MPL / UDA / FixMatch variant)."""

    def __init__(self, num_classes, depth=28, widen_factor=2, dropout=0.0,
                 bn_momentum=0.001, leaky_relu_slope=0.1, in_channels=3):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        for group, stride in enumerate([1, 2, 2]):
            blocks = [
                BasicBlock(widths[group] if i == 0 else widths[group + 1], widths[group + 1],
                           stride if i == 0 else 1, group == 0 and i == 0,
                           bn_momentum, leaky_relu_slope)
                for i in range(n)
            ]
            setattr(self, f"block{group + 1}", NetworkBlock(blocks))
        self.bn1 = nn.BatchNorm2d(widths[3], momentum=bn_momentum)
        self.fc = nn.Linear(widths[3], num_classes)
        self.dropout = dropout
        self.slope = leaky_relu_slope
        self._initialise()

    def _initialise(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = F.leaky_relu(self.bn1(x), self.slope)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = F.dropout(x, self.dropout, self.training)
        return self.fc(x)


def build_from_card(card):
    """An untrained module of the architecture a model card describes."""
    arch = card["architecture"]
    classes, channels = card["num_classes"], card["input"]["channels"]
    name = arch["name"]
    if name == "wide_resnet":
        return WideResNet(classes, arch["depth"], arch["widen_factor"], arch["dropout"],
                          arch["bn_momentum"], arch["leaky_relu_slope"], channels)
    import torchvision  # only the torchvision architectures need it

    if name in ("resnet18", "resnet50"):
        model = getattr(torchvision.models, name)(num_classes=classes)
        if channels != 3:
            model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        # The trainer also applies the run's dropout before `fc` in training; torchvision's
        # ResNet has none, which changes nothing in eval mode.
    elif name == "efficientnet_b0":
        model = torchvision.models.efficientnet_b0(num_classes=classes, dropout=arch["dropout"])
        if channels != 3:
            model.features[0][0] = nn.Conv2d(channels, 32, 3, stride=2, padding=1, bias=False)
    else:
        raise ValueError(f"unknown architecture {name!r} in the model card")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = arch["bn_momentum"]
    return model


def load_exported(weights_path):
    """Loads an export: returns ``(model, card)`` with ``model`` in eval mode on the CPU.

    The model card is the ``.json`` file beside the weights.
    """
    from safetensors.torch import load_file

    card_path = os.path.splitext(weights_path)[0] + ".json"
    with open(card_path, encoding="utf-8") as f:
        card = json.load(f)
    model = build_from_card(card)
    model.load_state_dict(load_file(weights_path), strict=True)
    return model.eval(), card


def normalise(images_uint8_nhwc, card):
    """Turns uint8 images [N, H, W, C] into the float32 [N, C, H, W] input the model expects."""
    x = torch.as_tensor(images_uint8_nhwc).float().div(255.0).permute(0, 3, 1, 2)
    mean = torch.tensor(card["input"]["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(card["input"]["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std
