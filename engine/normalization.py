"""The one normalisation: pixels in, (x - mean) / std out, as training, evaluation and ONNX see it.

`Normalize` holds the training set's per-channel statistics as buffers and takes either uint8
pixels (0-255, as the batch loader has them) or float pixels already scaled to [0, 1] (as an
ONNX client has them). Both are one multiply-add, `x * scale + shift`, with the scale folding in
the 1/255 for uint8, so the graph inside an exported file is the arithmetic training ran.
"""

import torch
from torch import nn


class Normalize(nn.Module):
    """(B, C, H, W) uint8 or [0, 1] float pixels -> float32 normalised by `mean` and `std`."""

    def __init__(self, mean, std):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if mean.shape != std.shape or not bool((std > 0).all()):
            raise ValueError(f"mean {mean.flatten().tolist()} and std {std.flatten().tolist()} must be one positive std per channel")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        # Derived, so not saved: (x - m) / s == x * (1 / s) + (-m / s); for uint8, x / 255 is folded in.
        self.register_buffer("shift", -mean / std, persistent=False)
        self.register_buffer("scale", 1 / std, persistent=False)
        self.register_buffer("byte_scale", 1 / (255 * std), persistent=False)

    @property
    def channels(self):
        return self.mean.shape[1]

    def forward(self, x):
        scale = self.byte_scale if x.dtype == torch.uint8 else self.scale
        return torch.addcmul(self.shift, x.float(), scale)

    def extra_repr(self):
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class Normalized(nn.Module):
    """A model with its input normalisation in front: [0, 1] (or uint8) pixels -> logits.

    This is what `engine export` writes to ONNX, so a client only resizes and scales to [0, 1].
    """

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x):  # (B, C, H, W) -> (B, classes)
        return self.model(self.normalize(x))
