"""What every bench run shares: the machine it ran on and its roof, measured in the same run on the
device under test: fp32 SGEMM on a CPU, a bf16 matmul on a CUDA GPU (what its tensor cores peak at).

Each case reports images/s and, with the FLOPs per image of its model (`engine.models.forward_flops`),
the share of the roof it reached, in `extra_info`. `python bench/table.py RUN.json` prints a run
(saved with `--benchmark-json RUN.json`) as a Markdown table.
"""

import statistics
import time

import pytest
import torch

from engine import cpu

from tests.conftest import pytest_runtest_setup  # noqa: F401  the `cuda` marker's skip, defined once

ROOF_SIZE = 2048  # square fp32 matmul: large enough to run at the BLAS kernel's peak on a small CPU
GPU_ROOF_SIZE = 8192  # square bf16 matmul: 1.1 TFLOP, about 1.5 ms on an H100/H200, long enough to time with events


def roof_device():
    """The device the bench cases run on when they leave it to the engine (`--device auto`)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def measure_roof(size=None, rounds=15, device=None):
    """GFLOP/s of the device's fastest dense matmul: the ceiling every case is set against.

    CPU (the default without CUDA): fp32 SGEMM of `size` (ROOF_SIZE). CUDA: bf16 GEMM of `size`
    (GPU_ROOF_SIZE), each round timed with CUDA events around the kernel, after warm-up calls that
    let cuBLAS pick its kernel and the clocks rise. The median of `rounds`, the statistic the cases
    are reported with, so a share compares like with like (best-of here against medians there
    would understate every share).
    """
    device = torch.device(device) if device is not None else roof_device()
    if device.type == "cuda":
        return _measure_cuda_roof(size or GPU_ROOF_SIZE, rounds, device)
    size = size or ROOF_SIZE
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool, page faults
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times) / 1e9


def _measure_cuda_roof(size, rounds, device):
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(5):  # warm-up: cuBLAS heuristics and workspace, GPU clocks
        torch.mm(a, b)
    torch.cuda.synchronize(device)
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.mm(a, b)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)  # ms -> s
    return 2 * size**3 / statistics.median(times) / 1e9


_roof = {}  # device type -> GFLOP/s, each measured once per run


@pytest.fixture
def roof(request):
    """GFLOP/s of the roof on the device under test, measured once per run and device, before the
    first case that needs it: the bench module's `DEVICE` where it names one, else the device
    `--device auto` resolves to (CUDA when available)."""
    device = torch.device(getattr(request.module, "DEVICE", None) or roof_device())
    if device.type not in _roof:
        _roof[device.type] = measure_roof(device=device)
    return _roof[device.type]


def pytest_benchmark_update_machine_info(config, machine_info):
    model, flags = cpu.description()
    machine_info.update(cpu_model=model, cpu_flags=flags, torch=str(torch.__version__),
                        torch_threads=torch.get_num_threads(), sgemm_roof_gflops=round(_roof.get("cpu", 0.0), 1))
    if "cuda" in _roof:
        machine_info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                            bf16_roof_gflops=round(_roof["cuda"], 1))
    try:
        import onnxruntime

        machine_info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
