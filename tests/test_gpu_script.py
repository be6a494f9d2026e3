"""`.ci/gpu` in its CPU mode, as a real subprocess: it installs nothing (--no-install), collects the
tests marked `cuda`, names every step that needs CUDA as skipped, prints one Markdown table, and
exits 0; a failed step turns the exit non-zero. On a GPU machine the script runs its whole
8-minute check instead, so these cases skip there (run it by hand: docs/gpu.md)."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HAS_CUDA

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "gpu"
CUDA_STEPS = ("roof", "cuda tests", "train 85%", "headline", "kernel", "sweep", "gpu parity", "bench", "train 93%")
cpu_only = pytest.mark.skipif(HAS_CUDA, reason="on a CUDA machine .ci/gpu runs the whole GPU check")


def run_script(tmp_path, python=sys.executable, *args):
    env = {**os.environ, "OUT": str(tmp_path / "report"), "PYTHON": str(python)}
    return subprocess.run(["bash", str(SCRIPT), "--no-install", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def table(text):
    """{step: (status, figure)} from the script's Markdown table."""
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \| (.*?) \| (\d+) \|$", text, re.M)
    return {step: (status, figure) for step, status, figure, _ in rows}


def test_help_names_every_step_and_a_bad_argument_is_refused():
    result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for step in ("install", "environment", *CUDA_STEPS):
        assert step in result.stdout, step
    bad = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--bogus" in bad.stderr


@pytest.mark.slow  # imports torch and collects the suite: about 15 s on the 2-core CPU
@cpu_only
def test_cpu_mode_collects_the_cuda_tests_and_names_the_skipped_steps(tmp_path):
    result = run_script(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| step | status | figure | seconds |" in result.stdout
    assert result.stdout.count("| step | status |") == 1  # one table
    steps = table(result.stdout)
    # --no-install: "ok, already installed from this checkout" where it is (CI's venv), else skipped
    assert steps["install"][0] in ("ok", "skipped") and "pip" not in result.stdout
    assert steps["environment"][0] == "ok"
    status, figure = steps["cuda collect"]
    collected = re.match(r"(\d+) tests and (\d+) benchmarks marked cuda", figure)
    assert status == "ok" and collected, figure
    in_test_cuda = sum(1 for line in (ROOT / "tests" / "test_cuda.py").read_text().splitlines()
                       if line.startswith("def test_"))
    assert int(collected.group(1)) > in_test_cuda  # parametrized cases and test_parity's fp16 case too
    for step in CUDA_STEPS:
        assert steps[step] == ("skipped", "needs CUDA"), step
    assert "no CUDA here" in result.stdout
    assert "skipped, needing CUDA: " + ", ".join(CUDA_STEPS) in result.stdout
    report = (tmp_path / "report" / "report.md").read_text()
    assert table(report) == steps
    assert len(list((tmp_path / "report").iterdir())) <= 8  # what the GPU machine's tool brings back


@pytest.mark.slow
@cpu_only
def test_a_failed_step_is_marked_and_makes_the_exit_non_zero(tmp_path):
    """A python whose pytest is broken: the collection step fails, the table says so, exit 1."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = pytest ]; then echo "pytest is broken" >&2; exit 3; fi\n'
                      f'exec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    result = run_script(tmp_path, python)
    assert result.returncode == 1, result.stdout + result.stderr
    status, figure = table(result.stdout)["cuda collect"]
    assert status == "FAIL" and figure.startswith("exit 3") and "pytest is broken" in figure
