"""What every bench run shares: the machine it ran on and its fp32 SGEMM roof, measured in the same run.

Each case reports images/s and, with the FLOPs per image of its model (`engine.models.forward_flops`),
the share of the roof it reached, in `extra_info`. `python bench/table.py RUN.json` prints a run
(saved with `--benchmark-json RUN.json`) as a Markdown table.
"""

import platform
import statistics
import time

import pytest
import torch

ROOF_SIZE = 2048  # square fp32 matmul: large enough to run at the BLAS kernel's peak on a small CPU


def cpu_description():
    """`lscpu`'s model name and the flags that decide the fast paths here."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model in ("", platform.machine(), "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return model, [f for f in wanted if f in flags]


def measure_roof(size=ROOF_SIZE, rounds=15):
    """fp32 SGEMM GFLOP/s on this machine: the ceiling every case is set against.

    The median of `rounds`, the statistic the cases are reported with, so a share compares like
    with like (best-of here against medians there would understate every share).
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool, page faults
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times) / 1e9


_roof = {}


@pytest.fixture(scope="session")
def roof():
    """GFLOP/s of fp32 SGEMM, measured once per run, before the cases."""
    if "gflops" not in _roof:
        _roof["gflops"] = measure_roof()
    return _roof["gflops"]


def pytest_benchmark_update_machine_info(config, machine_info):
    model, flags = cpu_description()
    machine_info.update(cpu_model=model, cpu_flags=flags, torch=str(torch.__version__),
                        torch_threads=torch.get_num_threads(), sgemm_roof_gflops=round(_roof.get("gflops", 0.0), 1))
    try:
        import onnxruntime

        machine_info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
