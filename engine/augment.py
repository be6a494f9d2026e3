"""Random-resized crops on whole batches, on the device: torchvision's RandomResizedCrop, batched.

Each image gets its own box, drawn as torchvision's references draw it: an area fraction in `scale`
and an aspect ratio in `ratio` (log-uniform), placed uniformly inside the image; the box is resampled
back to the image's size. One `affine_grid` + `grid_sample` does the whole batch (bilinear), so
there is no per-image Python work. The boxes of an epoch are drawn for every image of the split
from the epoch's seeded generator (engine.loader), so a resumed run crops exactly as an
uninterrupted one, whatever the batch an image falls in.
"""

import math

import torch
import torch.nn.functional as F

SCALE = (0.35, 1.0)  # area fraction; torchvision's default (0.08, 1) is for 224-pixel ImageNet crops
RATIO = (3 / 4, 4 / 3)


def draw_boxes(n, generator, scale=SCALE, ratio=RATIO):
    """(n, 4) float32 boxes (height, width, top, left) as fractions of the image, one per image.

    Where the drawn box does not fit (a large area at an extreme ratio), its sides are clamped to
    the image, as torchvision falls back to a centre crop after its ten tries."""
    area = torch.empty(n).uniform_(*scale, generator=generator)  # (n,)
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()  # width / height
    width = (area * aspect).sqrt().clamp(max=1.0)
    height = (area / aspect).sqrt().clamp(max=1.0)
    top = torch.rand(n, generator=generator) * (1 - height)
    left = torch.rand(n, generator=generator) * (1 - width)
    return torch.stack([height, width, top, left], 1)


def random_resized_crop(x, boxes):
    """Each image of (B, C, H, W) cropped to its box (B, 4) and resized back to (H, W) with bilinear
    sampling, in the input's dtype (uint8 pixels are rounded back to uint8, which the loader's
    normalisation expects)."""
    B = x.shape[0]
    height, width, top, left = boxes.to(x.device).unbind(1)
    # affine_grid maps output coordinates in [-1, 1] to input coordinates: scale by the box's size
    # and move its centre (top + height / 2, in [0, 1]) to [-1, 1]
    theta = torch.zeros(B, 2, 3, device=x.device)
    theta[:, 0, 0] = width
    theta[:, 1, 1] = height
    theta[:, 0, 2] = 2 * (left + width / 2) - 1
    theta[:, 1, 2] = 2 * (top + height / 2) - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else out.to(x.dtype)
