"""The tutorials' classic networks: CNNs made of ConvReluPool stages then fully connected layers
(cifar_cnn, cifar_seq, mnist_cnn, lenet), and tutorial 003's two-layer MLP.

Their module names (`features.0.conv`, `fc1`, `fc2`, ...) are the state-dict keys checkpoints
hold, so they must not change.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.blocks import ConvReluPool
from engine.models.spec import ModelSpec


@dataclass(frozen=True)
class ConvNetSpec(ModelSpec):
    """ConvReluPool stages, then flatten -> fc -> ReLU -> ... -> fc."""

    stages: tuple  # ((out_channels, kernel_size, padding), ...), each followed by a 2x2 max-pool
    hidden: tuple  # widths of the hidden fc layers, each followed by a ReLU
    source: str
    reference_shape: tuple  # the (C, H, W) the tutorial trained on
    reference_params: int  # its parameter count at that shape, 10 classes

    def build(self, in_shape, num_classes):
        return ConvNet(self, in_shape, num_classes)

    def smallest_side(self):
        """The smallest square input that leaves every stage at least one pixel."""
        size = 1
        for _, kernel_size, padding in reversed(self.stages):
            size = max(size * 2 + kernel_size - 1 - 2 * padding, 1)
        return size


class ConvNet(nn.Module):
    """`features` (ConvReluPool blocks), then fc1 ... fcN with ReLUs between them."""

    def __init__(self, spec: ConvNetSpec, in_shape, num_classes):
        super().__init__()
        channels, height, width = in_shape
        blocks = []
        for out_channels, kernel_size, padding in spec.stages:
            blocks.append(ConvReluPool(channels, out_channels, kernel_size, padding))
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        for block in blocks:
            height, width = block.out_size(height), block.out_size(width)
        self.feature_shape = (channels, height, width)
        sizes = (channels * height * width, *spec.hidden, num_classes)
        self.depth = len(sizes) - 1
        for i in range(self.depth):  # fc1, fc2, ...: the names checkpoints store
            setattr(self, f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))

    def forward(self, x):  # (B, C, H, W) float -> (B, num_classes) logits
        x = torch.flatten(self.features(x), 1)  # (B, C' * H' * W')
        for i in range(1, self.depth):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.depth}")(x)


@dataclass(frozen=True)
class MLPSpec(ModelSpec):
    """flatten -> fc -> dropout -> fc, exactly as tutorial 003 writes it (no activation between)."""

    hidden: int
    dropout: float
    source: str
    reference_shape: tuple
    reference_params: int

    def build(self, in_shape, num_classes):
        return MLP(self, in_shape, num_classes)


class MLP(nn.Module):
    """Tutorial 003's network. Without an activation the two layers compose to one linear map
    (of rank <= hidden); it is kept as written so its numbers can be compared with the tutorial's.
    """

    def __init__(self, spec: MLPSpec, in_shape, num_classes):
        super().__init__()
        channels, height, width = in_shape
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(channels * height * width, spec.hidden)  # 784 -> 128 at 1x28x28
        self.dropout = nn.Dropout(spec.dropout)
        self.fc2 = nn.Linear(spec.hidden, num_classes)

    def forward(self, x):  # (B, C, H, W) -> (B, num_classes)
        return self.fc2(self.dropout(self.fc1(self.flatten(x))))


CLASSIC = {
    "cifar_cnn": ConvNetSpec(((64, 3, 0), (64, 3, 0), (128, 3, 0)), (256,), "tutorial 001", (3, 32, 32), 246_474),
    "cifar_seq": ConvNetSpec(((32, 5, 2), (32, 5, 2), (64, 5, 2)), (64,), "tutorial 000", (3, 32, 32), 145_578),
    "mnist_cnn": ConvNetSpec(((32, 3, 1), (64, 3, 1)), (256,), "tutorial 002", (1, 28, 28), 824_458),
    # The PyTorch 60-minute blitz CNN, which tutorial 003 trains on CIFAR-10.
    "lenet": ConvNetSpec(((6, 5, 0), (16, 5, 0)), (120, 84), "tutorial 003", (3, 32, 32), 62_006),
    "mlp": MLPSpec(128, 0.5, "tutorial 003", (1, 28, 28), 101_770),
}
