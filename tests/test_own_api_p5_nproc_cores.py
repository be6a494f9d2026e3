"""--nproc beyond this machine's cores on CPU: each rank gets one thread and the ranks share cores,
where docs/distributed.md promises cores / local ranks each; it ran slower without a word. Rank 0 says
so in one line (the ranks' thread share is what process_group sets; engine.distributed)."""
import os
import subprocess
import sys

import pytest


@pytest.mark.slow  # three ranks of a short run: about 15 s
def test_more_ranks_than_cores_is_said_once_and_trains(tmp_path):
    cores = len(os.sched_getaffinity(0))
    job = subprocess.run([sys.executable, "-m", "engine", "train", "--nproc", str(cores + 1), "--epochs", "1",
                          "--limit-train", "192", "--limit-test", "32", "--batch-size", "16", "--device", "cpu",
                          "--no-amp", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr
    said = [line for line in job.stdout.splitlines() if "ranks on this machine's" in line]
    assert said == [f"{cores + 1} ranks on this machine's {cores} cores: they share cores, one thread each, and run "
                    f"slower than --nproc {cores} would"], job.stdout


@pytest.mark.slow
def test_as_many_ranks_as_cores_say_nothing_of_it(tmp_path):
    ranks = min(2, len(os.sched_getaffinity(0)))
    job = subprocess.run([sys.executable, "-m", "engine", "train", "--nproc", str(ranks), "--epochs", "1", "--limit-train",
                          "128", "--limit-test", "32", "--batch-size", "16", "--device", "cpu", "--no-amp",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr
    assert "ranks on this machine's" not in job.stdout
