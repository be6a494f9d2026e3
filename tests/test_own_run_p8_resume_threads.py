"""A CPU run resumed with another thread count (OMP_NUM_THREADS, another machine, a container given
other cores) continued without a word, though torch splits its sums by thread: the weights were not
an uninterrupted run's, as reliability.md promised bit for bit. The thread count is part of the
recorded runtime, and a resume on another says so in the one 'different runtime' warning."""

import pytest
import torch

from engine.checkpoint import load
from engine.config import Config
from engine.resume import resume_config
from engine.train import train


@pytest.mark.slow
def test_a_resume_with_another_cpu_thread_count_says_so(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "run"
    cfg = Config(out=str(out), epochs=2, limit_train=64, limit_test=32, batch_size=32, amp=False, device="cpu",
                 quiet=True)
    try:
        torch.set_num_threads(1)
        train(cfg, log=lambda *_: None)
        assert load(out / "last.pt").runtime["cpu_threads"] == 1
        checkpoint = torch.load(out / "last.pt", weights_only=True)  # as if killed after epoch 1
        checkpoint["epoch"], checkpoint["metrics"] = 1, checkpoint["metrics"][:1]
        torch.save(checkpoint, out / "last.pt")
        capsys.readouterr()
        torch.set_num_threads(2)
        again, resume = resume_config(out, say=None)
        train(again, resume=resume, log=lambda *_: None)
        err = capsys.readouterr().err
        assert "resuming on a different runtime: cpu_threads 1 -> 2" in err and err.count("\n") == 1, err
    finally:
        torch.set_num_threads(threads)
