"""engine export --int8 compared the int8 file with the fp32 one on the whole test set converted to float32 at
once: 4x the test set's uint8 size in memory beside it (6 GB for 10,000 images of 224x224), where the export's
own verification takes 256 images. It converts a batch at a time now."""

import importlib
import tracemalloc
from types import SimpleNamespace

import pytest
import torch

from export.quantize import quantize_and_compare


@pytest.mark.slow
def test_the_int8_comparison_converts_the_test_set_a_batch_at_a_time(tiny_onnx, tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = SimpleNamespace(train_x=torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=generator),
                           test_x=torch.randint(0, 256, (2000, 3, 32, 32), dtype=torch.uint8, generator=generator),
                           test_y=torch.randint(0, 10, (2000,), generator=generator))
    importlib.import_module("onnxruntime.quantization")  # its modules' import is not the comparison's memory

    tracemalloc.start()
    try:
        report = quantize_and_compare(tiny_onnx, tmp_path / "m.int8.onnx", data, log=lambda *_: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.test_images == 2000 and 0 <= report.agreement <= 1
    # the whole test set in float32 is 25 MB alone (the old peak: 49 MB); a batch of 256 is 3 MB, beside
    # onnxruntime's calibration (about 10 MB of numpy arrays here)
    assert peak < 20e6, f"{peak / 1e6:.0f} MB"
