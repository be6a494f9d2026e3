"""engine.distributed: `engine train --nproc 2` (torchrun, gloo on CPU) trains as one process with the
global batch would, shards each epoch between the ranks, leaves a single-process checkpoint,
resumes bit for bit, and stops with one line when a rank dies."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load
from engine.cli import main
from engine.config import Config
from engine.distributed import Ranks, without_nproc
from engine.train import train

pytestmark = pytest.mark.slow  # subprocesses or whole trainings: in CI (README's test command), not in a plain `pytest`

# 1536 images make 24 global batches of 2 x 32 an epoch: long enough to kill a rank mid-run. AdamW
# learns the synthetic shapes in 3 such epochs (SGD would need more).
ARGS = dict(epochs=3, limit_train=1536, limit_test=256, optimizer="adamw", lr=0.002, amp=False, device="cpu", quiet=True, seed=0)
TIMEOUT = 300  # a bound on any one job, so a hang fails the test instead of stalling the suite


def engine_train(out, *extra):
    flags = ["--epochs", "3", "--limit-train", "1536", "--limit-test", "256", "--no-amp", "--device", "cpu",
             "--optimizer", "adamw", "--lr", "0.002", "--batch-size", "32", "--out", str(out)]
    return [sys.executable, "-m", "engine", "train", "--nproc", "2", *flags, *extra]


def dumped(folder, rank):
    """{(epoch, step): [image indices]} that `rank` trained on, from ENGINE_LOADER_DUMP."""
    rows = (Path(folder) / f"indices-rank{rank}.txt").read_text().split("\n")
    return {(int(r[0]), int(r[1])): [int(i) for i in r[2:]] for r in (row.split() for row in rows if row)}


def worker_pid(launcher, rank):
    """The pid of `rank` among the children of the launcher process (torchrun runs in it)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    return None


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A 3-epoch run with 2 ranks of batch 32, and the indices each rank trained on."""
    root = tmp_path_factory.mktemp("ddp")
    dump = root / "dump"
    dump.mkdir()
    env = dict(os.environ, ENGINE_LOADER_DUMP=str(dump))
    done = subprocess.run(engine_train(root / "run"), env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return root / "run", dump, done


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """The same run with rank 1 killed (SIGKILL) once the first epoch is saved."""
    out = tmp_path_factory.mktemp("killed") / "run"
    job = subprocess.Popen(engine_train(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + TIMEOUT
    while not (out / "last.pt").exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    pid = worker_pid(job.pid, 1)
    assert pid is not None, "rank 1 was not found among the launcher's children"
    os.kill(pid, signal.SIGKILL)
    try:
        _, stderr = job.communicate(timeout=120)  # the other rank must not hang
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail("the job did not exit within 120 s of a rank being killed")
    return out, job.returncode, stderr


def test_two_ranks_train_as_one_process_with_the_global_batch(ddp_run, tmp_path, monkeypatch):
    out, _, done = ddp_run
    monkeypatch.setenv("ENGINE_LOADER_DUMP", str(tmp_path))
    _, single = train(Config(out=str(tmp_path / "single"), batch_size=64, **ARGS), log=lambda *_: None)
    ddp = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in ddp] == [1, 2, 3]
    # The same global batches, so only the order of float sums differs: close after one epoch, and
    # through the fast-learning epochs that follow, still close at the end. The loss leaves its plateau
    # in epochs 2-3, where a small difference moves the end most: on a Zen 5's AVX-512 kernels the two
    # ended at 0.516 / 0.547 test accuracy and 1.531 / 1.386 test loss (within 0.03 / 10% on a Zen 3 and a Xeon).
    assert ddp[0]["train_loss"] == pytest.approx(single[0]["train_loss"], rel=1e-3)
    assert ddp[-1]["test_acc"] == pytest.approx(single[-1]["test_acc"], abs=0.06)
    assert ddp[-1]["test_loss"] == pytest.approx(single[-1]["test_loss"], rel=0.2)
    assert ddp[-1]["test_acc"] > 0.4 and ddp[-1]["train_loss"] < ddp[0]["train_loss"]  # it learns (chance is 0.1)
    assert "1,536 train / 256 test images, 24 steps of 32 per rank x 2 ranks = 64 global" in done.stdout
    assert sum(line.startswith("Epoch:") for line in done.stdout.splitlines()) == 3  # rank 0 alone prints


def test_each_rank_trains_on_a_disjoint_shard_and_together_they_cover_the_epoch(ddp_run, tmp_path, monkeypatch):
    _, dump, _ = ddp_run
    ranks = [dumped(dump, 0), dumped(dump, 1)]
    assert sorted(ranks[0]) == sorted(ranks[1]) == [(e, s) for e in range(3) for s in range(24)]
    for epoch in range(3):
        shards = [[i for (e, _), batch in r.items() if e == epoch for i in batch] for r in ranks]
        assert len(shards[0]) == len(shards[1]) == 768  # equal shards of 1536 // 64 * 32
        assert not set(shards[0]) & set(shards[1])  # disjoint
        assert set(shards[0]) | set(shards[1]) == set(range(1536))  # 1536 = 24 x 64: nothing dropped
    # The ranks' batches are exactly the halves of a single process's global batches.
    monkeypatch.setenv("ENGINE_LOADER_DUMP", str(tmp_path))
    from engine.data import load_dataset
    from engine.loader import BatchLoader

    data = load_dataset(Config(batch_size=64, **ARGS), lambda *_: None)
    single = BatchLoader(data.train_x, data.train_y, 64, [0.5] * 3, [0.5] * 3, device="cpu", train=True, seed=0)
    for _ in single.epoch(1):
        pass
    for (epoch, step), batch in dumped(tmp_path, 0).items():
        assert batch == ranks[0][(epoch, step)] + ranks[1][(epoch, step)]


def test_the_checkpoint_of_a_ddp_run_loads_in_single_process_eval_and_export(ddp_run, tmp_path, capsys):
    out, _, _ = ddp_run
    checkpoint = load(out / "best.pt")
    assert not any(key.startswith("module.") for key in checkpoint.model)  # the unwrapped model
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "confusion.json", "confusion.png",
                                                     "curves.png", "last.pt", "metrics.jsonl"]
    best = max(m["test_acc"] for m in checkpoint.metrics)
    assert main(["eval", str(out / "best.pt"), "--device", "cpu", "--no-amp", "--limit-test", "256"]) == 0
    printed = capsys.readouterr().out
    shown = float(printed.split("Test_acc:")[1].split("%")[0]) / 100
    assert shown == pytest.approx(best, abs=1e-4)  # the sharded evaluation counted the same 256 images

    from export.onnx_export import export_onnx

    result = export_onnx(tmp_path / "ddp.onnx", out / "best.pt", log=lambda *_: None)
    assert result.parity is not None and (tmp_path / "ddp.onnx").stat().st_size > 0


def test_a_killed_rank_stops_the_job_with_one_line(killed_run):
    out, code, stderr = killed_run
    assert code != 0
    errors = [line for line in stderr.splitlines() if line.startswith("engine: error:")]
    assert errors == ["engine: error: rank 1 was killed by SIGKILL; torchrun stopped the other ranks"], stderr
    assert "Traceback" not in stderr


def test_resume_under_ddp_ends_with_the_weights_of_an_uninterrupted_run(ddp_run, killed_run):
    reference, _, _ = ddp_run
    out, _, _ = killed_run
    killed_at = load(out / "last.pt").epoch
    assert 1 <= killed_at < 3, "the run finished before rank 1 was killed"
    resumed = subprocess.run([sys.executable, "-m", "engine", "train", "--nproc", "2", "--resume", str(out), "--quiet"],
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load(reference / "last.pt"), load(out / "last.pt")
    assert b.epoch == 3 and len(b.rng["ranks"]) == 2  # every rank's RNG state is kept
    for key, value in a.model.items():
        assert torch.equal(value, b.model[key]), key
    assert [m["test_loss"] for m in a.metrics] == [m["test_loss"] for m in b.metrics]


def test_parameters_that_stop_training_mid_run_or_on_resume_under_ddp(tmp_path):
    """fast_cifar94's whitening bias stops taking gradients after epoch 3: the DDP wrapper, which
    registers the parameters that take gradients, is made again, and the run goes on to its end.
    A run killed after that resumes with its frozen stem (weight and bias) wrapped as frozen."""
    out = tmp_path / "run"
    flags = ["--model", "fast_cifar94", "--epochs", "6", "--limit-train", "640", "--limit-test", "32", "--batch-size",
             "16", "--lr", "0.02", "--no-amp", "--device", "cpu", "--quiet", "--out", str(out)]
    job = subprocess.Popen([sys.executable, "-m", "engine", "train", "--nproc", "2", *flags], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + TIMEOUT
    while job.poll() is None and time.time() < deadline:  # kill rank 1 once epoch 4 (frozen bias) is saved
        try:
            if load(out / "last.pt").epoch >= 4:
                break
        except Exception:  # not written yet
            pass
        time.sleep(0.05)
    pid = worker_pid(job.pid, 1)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    job.communicate(timeout=120)
    killed = load(out / "last.pt")
    assert 4 <= killed.epoch < 6 and "stem.0.bias" in killed.frozen, "the run ended before rank 1 was killed"
    resumed = subprocess.run([sys.executable, "-m", "engine", "train", "--nproc", "2", "--resume", str(out), "--quiet"],
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    state = load(out / "last.pt")
    assert state.epoch == 6 and {"stem.0.weight", "stem.0.bias"} <= set(state.frozen)


def test_one_rank_helpers_are_the_single_process_path():
    ranks = Ranks()
    t = torch.tensor(3.0)
    assert ranks.is_main and ranks.sum(t) == (t,) and ranks.broadcast("x") == "x"
    assert ranks.gather_rng({"torch": t}) == {"torch": t}
    assert ranks.rng_of_rank({"torch": t, "ranks": [{"torch": 1}, {"torch": 2}]}) == {"torch": t}
    assert without_nproc(["train", "--nproc", "2", "--epochs", "1", "--nproc=3"]) == ["train", "--epochs", "1"]
    assert without_nproc(["train", "--npr", "2", "--np=2", "--epochs", "1"]) == ["train", "--epochs", "1"]  # as argparse abbreviates


def test_a_user_model_whose_forward_skips_a_layer_on_some_steps_trains_under_ddp_quietly(tmp_path):
    """DDP waits for every parameter's gradient unless told to look for unused ones: a user's model
    that leaves one out on a step (a branch taken on some steps: stochastic depth) stopped with DDP's
    traceback; looking for them printed torch's C++ warning once per rank on the steps that used
    all. Also: `--npr 2` (argparse's abbreviation) is --nproc, and --save-every, which DDP runs do
    not honour, is said."""
    (tmp_path / "nets.py").write_text(
        "import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self, num_classes=10):\n"
        "        super().__init__()\n        self.conv = nn.Conv2d(3, 8, 3, padding=1)\n"
        "        self.sometimes = nn.Linear(8, 8)  # on every other call\n        self.head = nn.Linear(8, num_classes)\n"
        "        self.calls = 0\n\n"
        "    def forward(self, x):\n        self.calls += 1\n        h = self.conv(x).relu().mean((2, 3))\n"
        "        if self.training and self.calls % 2:\n            h = h + self.sometimes(h)\n"
        "        return self.head(h)\n")
    job = subprocess.run([sys.executable, "-m", "engine", "train", "--npr", "2", "--model", str(tmp_path / "nets.py:Net"),
                          "--epochs", "1", "--limit-train", "512", "--limit-test", "64", "--device", "cpu", "--no-amp",
                          "--save-every", "30s", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert job.returncode == 0, job.stderr
    assert "2 ranks" in job.stdout and "--save-every 30s: under --nproc, last.pt is written at epoch ends only" in job.stdout
    assert "find_unused_parameters" not in job.stderr + job.stdout
    assert load(tmp_path / "run" / "last.pt").epoch == 1


def running_ranks(tmp_path, signum):
    """A 2-rank job sent `signum` once both ranks train; returns (its exit code, the ranks' pids)."""
    out = tmp_path / "run"
    job = subprocess.Popen(engine_train(out, "--epochs", "500"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    while not (out / "last.pt").exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    pids = [worker_pid(job.pid, rank) for rank in (0, 1)]
    assert None not in pids, "the ranks were not found among the launcher's children"
    job.send_signal(signum)
    try:
        job.wait(timeout=120)  # the launcher alone: the ranks hold no pipe of ours
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail(f"the launcher did not exit within 120 s of signal {signum}")
    return job.returncode, pids


def test_sigterm_to_the_launcher_stops_the_ranks_and_exits_143(tmp_path):
    code, _ = running_ranks(tmp_path, signal.SIGTERM)
    assert code == 143  # 128 + SIGTERM, as without --nproc (it was 130, Ctrl-C's)
    assert load(tmp_path / "run" / "last.pt").epoch >= 1


def test_ranks_stop_when_their_launcher_is_killed(tmp_path):
    """kill -9 gives torchrun no chance to stop its ranks: they trained on, unseen, holding the lock."""
    code, pids = running_ranks(tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    deadline = time.time() + 30  # 500 epochs: they would train on for many minutes
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.time() < deadline:
        time.sleep(0.1)
        for pid in pids:  # reap them if they are ours (they are init's once the launcher is gone)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the ranks trained on after their launcher was killed"


def test_a_data_error_is_said_once_not_once_per_rank(tmp_path):
    (tmp_path / "empty").mkdir()
    job = subprocess.run([sys.executable, "-m", "engine", "train", "--nproc", "2", "--data", str(tmp_path / "empty"),
                          "--device", "cpu", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=TIMEOUT)
    lines = [line for line in job.stderr.splitlines() if line.strip()]
    assert job.returncode == 1 and len(lines) == 1, job.stderr
    assert lines[0].startswith("engine: error: ") and "holds no images" in lines[0] and "rank" not in lines[0]


def test_a_rank_whose_error_differs_is_named(tmp_path, monkeypatch, capsys):
    from engine.errors import RANK_ERRORS_ENV, rank_errors, say_error

    monkeypatch.setenv(RANK_ERRORS_ENV, str(tmp_path))
    for rank, message in ((0, "bad data"), (1, "bad data"), (2, "disk full")):
        monkeypatch.setenv("RANK", str(rank))
        say_error(message)
    assert capsys.readouterr().err == "engine: error: bad data\n"  # rank 0 alone prints
    assert rank_errors(tmp_path) == ["rank 2: disk full"]  # the launcher adds what another rank said otherwise
    (tmp_path / "rank-0").unlink()  # rank 0 stopped before it could say anything
    assert rank_errors(tmp_path) == ["rank 1: bad data", "rank 2: disk full"]
