"""A Python script under torchrun that calls train(): its torch threads are its own again after the
call, and a process group it joined before the call is used, not joined twice (once a raw
ValueError), and is still its own afterwards."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # torchrun and two ranks

SCRIPT = '''
import sys
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
    print("threads", torch.get_num_threads(), "joined", dist.is_initialized(), flush=True)
    if dist.is_initialized():
        total = torch.ones(1)
        dist.all_reduce(total)
        print("sum", int(total.item()), flush=True)
        dist.destroy_process_group()
'''


@pytest.mark.parametrize("how", ["joined", "fresh"])
def test_train_under_torchrun_leaves_the_callers_threads_and_group(tmp_path, how):
    script = tmp_path / "caller.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), how, str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("threads 2 ") == 2  # both ranks: set to 1 each for the run, then put back
    if how == "joined":
        assert done.stdout.count("joined True") == 2 and done.stdout.count("sum 2") == 2
    else:
        assert done.stdout.count("joined False") == 2
    assert (tmp_path / "run" / "last.pt").exists()
