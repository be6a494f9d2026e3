"""`python -m kernels.aot` compiles the fused kernel for sm_80/sm_90 without a GPU.

Compiling needs triton without the interpreter, which this pytest process may already have
imported (tests/conftest.py sets TRITON_INTERPRET on CPU machines), so everything that compiles
runs in a child process with TRITON_INTERPRET removed.
"""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import requires_triton

pytestmark = requires_triton
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _run(*argv, code=None):
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "kernels.aot", *argv]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def test_help():
    result = _run("--help")
    assert result.returncode == 0 and "--arch" in result.stdout and "--quick" in result.stdout


def test_main_leaves_the_interpreter_behind(monkeypatch, capfd):
    """With TRITON_INTERPRET set (as on CPU under pytest), main() runs in a child process without
    it and leaves this process's environment alone."""
    from kernels import aot

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert aot.main(["--help"]) == 0
    assert "--arch" in capfd.readouterr().out and os.environ["TRITON_INTERPRET"] == "1"


@pytest.mark.slow
def test_quick_aot_compiles_both_archs_without_spills():
    result = _run("--arch", "sm_80", "sm_90", "--quick")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK:" in result.stdout
    for arch in ("sm_80", "sm_90"):
        table = result.stdout.split(f"\n{arch}: ")[1].split("\n\n")[0]
        rows = [line.split() for line in table.splitlines()[2:]]
        assert rows, table
        for config, dtype, variant, regs, spill_st, spill_ld, smem, selected_by in rows:
            assert 0 < int(regs) <= 255 and int(spill_st) == int(spill_ld) == 0 and int(smem) > 0
            assert dtype == "fp16" and variant == "training" and int(selected_by) == 2


@pytest.mark.slow
def test_spill_detection_reads_real_ptxas_numbers():
    """A config squeezed to 64 registers must be reported as spilling, so a clean AOT run means
    something (a parser that always read zero would fail here)."""
    code = """
import triton
from kernels import aot, conv_relu_pool as crp
crp.CONFIGS.append(triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=2, maxnreg=64))
layer = [l for l in aot.seed_layers(256) if l.name == "cifar_cnn.1"][0]
print(aot.compile_one(("sm_90", layer, "nchw", "fp32", "training", len(crp.CONFIGS) - 1)))
"""
    result = _run(code=code)
    assert result.returncode == 0, result.stderr
    report = dict(re.findall(r"'(\w+)': (\d+)", result.stdout))
    assert int(report["regs"]) <= 64 and int(report["spill_stores"]) > 0 and int(report["spill_loads"]) > 0
