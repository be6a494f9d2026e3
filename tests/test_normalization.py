"""engine.normalization: one multiply-add for uint8 and [0, 1] pixels, equal to (x / 255 - mean) / std."""

import pytest
import torch

from engine.normalization import Normalize, Normalized


def test_uint8_and_unit_pixels_normalise_to_the_same_values():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (5, 3, 7, 9), generator=generator, dtype=torch.uint8)
    mean, std = [0.491, 0.482, 0.447], [0.247, 0.243, 0.262]
    norm = Normalize(mean, std)
    expected = (pixels.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(1, 3, 1, 1)
    from_bytes, from_unit = norm(pixels), norm(pixels.float() / 255)
    assert from_bytes.dtype == from_unit.dtype == torch.float32
    # fp32 rounding of a multiply-add on values of magnitude < 3: a few ulps
    torch.testing.assert_close(from_bytes.double(), expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(from_unit.double(), expected, rtol=0, atol=2e-6)


def test_statistics_are_saved_buffers_and_derived_ones_are_not():
    norm = Normalize([0.5], [0.25])
    assert set(norm.state_dict()) == {"mean", "std"} and norm.channels == 1
    restored = Normalize([0.0], [1.0])
    restored.load_state_dict(norm.state_dict())
    assert torch.equal(restored.mean, norm.mean)


def test_keeps_channels_last_and_rejects_bad_statistics():
    x = torch.rand(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    assert Normalize([0.5] * 3, [0.5] * 3)(x).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="positive"):
        Normalize([0.5, 0.5], [0.5, 0.0])


def test_normalized_model_puts_normalisation_in_front():
    model = torch.nn.Conv2d(3, 2, 1)
    wrapped = Normalized(model, [0.1, 0.2, 0.3], [0.5, 0.5, 0.5]).eval()
    x = torch.rand(4, 3, 5, 5)
    torch.testing.assert_close(wrapped(x), model((x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / 0.5))
