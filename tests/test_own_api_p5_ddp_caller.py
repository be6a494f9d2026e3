"""A Python script under torchrun that calls train(): its torch threads are its own again after the
call, and a process group it joined before the call is used, not joined twice (once a raw
ValueError), and is still its own afterwards."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # torchrun and two ranks

SCRIPT = '''
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from engine.config import Config
from engine.train import train

if __name__ == "__main__":
    torch.set_num_threads(2)
    if sys.argv[1] == "joined":
        dist.init_process_group("gloo")
    cfg = Config(data="synthetic", limit_train=64, limit_test=32, epochs=1, batch_size=16, amp=False, device="cpu",
                 quiet=True, out=sys.argv[2])
    train(cfg)
    said = f"threads {torch.get_num_threads()} joined {dist.is_initialized()}"
    if dist.is_initialized():
        total = torch.ones(1)
        dist.all_reduce(total)
        said += f" sum {int(total.item())}"
        dist.destroy_process_group()
    Path(sys.argv[3], "rank" + os.environ["RANK"]).write_text(said)  # stdout interleaves the ranks' lines
'''


@pytest.mark.parametrize("how", ["joined", "fresh"])
def test_train_under_torchrun_leaves_the_callers_threads_and_group(tmp_path, how):
    script = tmp_path / "caller.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), how, str(tmp_path / "run"), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    said = [(tmp_path / f"rank{rank}").read_text() for rank in (0, 1)]
    # both ranks: threads set to 1 each for the run, then put back
    expected = "threads 2 joined True sum 2" if how == "joined" else "threads 2 joined False"
    assert said == [expected, expected]
    assert (tmp_path / "run" / "last.pt").exists()
