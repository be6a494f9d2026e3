"""engine.train: a run learns, leaves a complete run directory, and resumes bit for bit after kill -9."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from engine.checkpoint import load
from engine.config import Config
from engine.session import open_session
from engine.run_files import checkpoint_state
from engine.train import train, train_epoch, train_step

QUIET = dict(quiet=True, device="cpu")


def run(tmp_path, name="run", **values):
    cfg = Config(out=str(tmp_path / name), **{**QUIET, **values})
    return train(cfg, log=lambda *_: None)


@pytest.mark.slow
def test_one_epoch_on_the_synthetic_set_is_well_above_chance(tmp_path):
    _, metrics = run(tmp_path, epochs=1, amp=False)
    assert metrics[0]["test_acc"] > 0.5  # chance is 0.1
    assert metrics[0]["train_loss"] < 2.3  # below the loss of a uniform guess, ln 10


@pytest.mark.slow
def test_run_directory_holds_everything_and_checkpoints_open_weights_only(tmp_path):
    out, metrics = run(tmp_path, epochs=2, limit_train=256, limit_test=100, batch_size=32, amp=False)
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "confusion.json", "confusion.png",
                                                     "curves.png", "last.pt", "metrics.jsonl"]
    assert not (tmp_path / "latest").exists()  # only default-named runs move runs/latest
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == metrics and [m["epoch"] for m in lines] == [1, 2]
    for key in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "images_per_s", "epoch_s"):
        assert all(isinstance(m[key], (int, float)) for m in lines)
    assert all(m["lr"] == float(f"{m['lr']:.6g}") for m in lines)  # no float noise (0.0031250000000000028)
    for name in ("last.pt", "best.pt"):
        checkpoint = torch.load(out / name, weights_only=True)
        assert checkpoint["config"]["epochs"] == 2 and checkpoint["data"]["shape"] == [3, 32, 32]
        assert set(checkpoint) >= {"model", "model_ref", "optimizer", "scheduler", "scaler", "epoch", "rng", "metrics"}
        assert checkpoint["model_ref"] == {"kind": "builtin", "name": "cifar_cnn", "file": None, "sha256": None, "args": {}}
    assert load(out / "last.pt").epoch == 2
    assert json.loads((out / "config.json").read_text())["config"]["limit_train"] == 256
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_default_run_directory_and_latest_link(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, _ = train(Config(epochs=1, limit_train=64, limit_test=32, amp=False, **QUIET), log=lambda *_: None)
    assert first.parent == tmp_path / "runs" or first.parent.name == "runs"
    assert first.name.startswith("cifar_cnn-synthetic-")
    assert (tmp_path / "runs" / "latest").resolve() == first.resolve()
    second, _ = train(Config(epochs=1, limit_train=64, limit_test=32, amp=False, **QUIET), log=lambda *_: None)
    assert second != first and (tmp_path / "runs" / "latest").resolve() == second.resolve()


@pytest.mark.slow
def test_amp_trains_on_this_device(tmp_path):
    _, metrics = run(tmp_path, epochs=1, limit_test=500, amp=True)
    # well above chance (0.1) in one epoch: bf16 really trains (0.478 with AVX512-BF16 on a Zen 5, above
    # 0.5 with AMX on a Xeon; the kernels round differently)
    assert metrics[0]["test_acc"] > 0.35



def test_the_run_line_counts_steps_and_the_images_each_epoch_leaves_out(tmp_path):
    said = []
    cfg = Config(out=str(tmp_path / "run"), epochs=1, limit_train=81, limit_test=32, batch_size=64, amp=False, **QUIET)
    open_session(cfg, say=said.append)
    run_line = next(line for line in said if line.startswith("Run: "))
    assert "(81 train / 32 test images, 1 step of 64 an epoch, 17 left out of each (a new draw every epoch), 1 epoch)" in run_line
    cfg = Config(out=str(tmp_path / "even"), epochs=2, limit_train=64, limit_test=32, batch_size=32, amp=False, **QUIET)
    open_session(cfg, say=said.append)
    assert said[-1].endswith("(64 train / 32 test images, 2 steps of 32 an epoch, 2 epochs)")


def test_the_pieces_of_an_epoch(tmp_path):
    cfg = Config(out=str(tmp_path / "run"), epochs=2, limit_train=64, limit_test=32, batch_size=32, amp=False, **QUIET)
    s = open_session(cfg, say=lambda *_: None)
    assert s.steps == 2 and s.total_steps == 4 and s.start_epoch == 0 and s.metrics == []
    x, y, _ = next(iter(s.train_loader.epoch(0)))
    before = [p.detach().clone() for p in s.model.parameters()]
    loss, logits = train_step(s, x, y, step=0)
    assert loss.shape == () and logits.shape == (32, 10) and not loss.requires_grad and not logits.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(before, s.model.parameters()))  # one step moved the weights
    figures = train_epoch(s, epoch=0, first=True)
    assert figures.warm_until == 0  # 2 steps are too few to time a warm-up apart
    assert 0 <= figures.correct.item() <= 64 and 0 < figures.loss_sum.item() / 64 < 10
    state = checkpoint_state(s, epochs_done=1)
    assert state.epoch == 1 and state.scheduler == {"step": 2, "total_steps": 4}
    assert state.spec == s.spec and state.config["out"] == str(tmp_path / "run")

def engine_train(out, epochs, *extra):
    return [sys.executable, "-m", "engine", "train", "--epochs", str(epochs), "--limit-train", "1536", "--limit-test",
            "128", "--batch-size", "32", "--no-amp", "--device", "cpu", "--out", str(out), *extra]


@pytest.mark.slow
def test_resume_after_kill_9_gives_bit_identical_weights(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(engine_train(reference, 3), check=True, capture_output=True)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(engine_train(interrupted, 3), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (interrupted / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)  # mid-way through epoch 2
    process.wait()
    killed_at = load(interrupted / "last.pt").epoch
    assert killed_at < 3, "the run finished before it could be killed; give it more data"

    subprocess.run([sys.executable, "-m", "engine", "train", "--resume", str(interrupted), "--quiet"],
                   check=True, capture_output=True)
    a, b = load(reference / "last.pt"), load(interrupted / "last.pt")
    assert b.epoch == 3
    for key, value in a.model.items():
        assert torch.equal(value, b.model[key]), key
    assert [m["test_loss"] for m in a.metrics] == [m["test_loss"] for m in b.metrics]
    lines = (interrupted / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


@pytest.mark.slow
def test_compile_builds_its_graphs_in_the_first_epoch_only(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_COMPILE", "always")  # compiled whatever it measures (tests/test_compile_plan.py)
    # 100 test images at batch 64 need a padded last eval batch; 500 train images drop a partial one.
    _, metrics = run(tmp_path, epochs=3, limit_train=500, limit_test=100, batch_size=64, amp=False, compile=True)
    graphs = [m["compiled_graphs"] for m in metrics]
    assert graphs[0] >= 2 and graphs == [graphs[0]] * 3  # one train graph, one eval graph, no recompiles
    assert metrics[0]["warmup_s"] > 0 and metrics[1]["warmup_s"] == 0  # compile is timed apart, in epoch 1


def test_tensorboard_has_every_evaluation_at_its_global_step(tmp_path):
    """4 steps an epoch and an evaluation every 2: each evaluation, mid-epoch ones too, is its own point."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, metrics = run(tmp_path, epochs=2, limit_train=64, limit_test=32, batch_size=16, amp=False,
                       tensorboard=True, eval_every=0.5)
    events = EventAccumulator(str(out)).Reload()
    points = [(e.step, e.value) for e in events.Scalars("test/acc")]
    assert points == [(step, pytest.approx(m["test_acc"])) for step, m in zip([2, 4, 6, 8], metrics, strict=True)]


def test_tensorboard_without_its_package_is_one_line_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    from engine.errors import UsageError

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    with pytest.raises(UsageError, match=r"pip install 'engine-cnn\[tensorboard\]'"):
        run(tmp_path, epochs=1, limit_train=64, limit_test=32, tensorboard=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_triton_training_matches_eager_step_for_step(tmp_path):
    """--triton trains through the fused kernel (Triton's interpreter on CPU): with one step per
    epoch, the per-epoch training losses are the per-step loss curve, and they must match."""
    pytest.importorskip("triton")
    one_step_epochs = dict(epochs=4, limit_train=16, limit_test=16, batch_size=16, amp=False, device="cpu")
    fused_dir, fused = run(tmp_path, "fused", triton=True, **one_step_epochs)
    eager_dir, eager = run(tmp_path, "eager", **one_step_epochs)
    fused_losses = [m["train_loss"] for m in fused]
    eager_losses = [m["train_loss"] for m in eager]
    assert len(set(eager_losses)) == 4  # the weights really moved between steps
    assert fused_losses == pytest.approx(eager_losses, rel=1e-4)  # fp32: only the summation order differs
    assert [m["test_loss"] for m in fused] == pytest.approx([m["test_loss"] for m in eager], rel=1e-4)
    a, b = torch.load(fused_dir / "last.pt", weights_only=True), torch.load(eager_dir / "last.pt", weights_only=True)
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_resolved_runtime_is_recorded_and_a_resume_on_another_says_what_changed(tmp_path, capsys):
    out, _ = run(tmp_path, epochs=2, limit_train=128, limit_test=32, batch_size=32, amp=False)
    recorded = json.loads((out / "config.json").read_text())["runtime"]
    assert recorded == {"device": "cpu", "precision": "fp32", "channels_last": True, "compile": False,
                        "compile_mode": None, "triton": False, "cpu_threads": torch.get_num_threads()}
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["runtime"] == recorded
    # As if the run had been trained in bf16 on another machine, and is resumed here in fp32.
    checkpoint["runtime"]["precision"], checkpoint["epoch"], checkpoint["metrics"] = "bf16", 1, checkpoint["metrics"][:1]
    torch.save(checkpoint, out / "last.pt")
    cfg = Config.from_dict({**checkpoint["config"], "out": str(out)})
    capsys.readouterr()
    train(cfg, resume=load(out / "last.pt"), log=lambda *_: None)
    err = capsys.readouterr().err  # a warning, so even --quiet shows it
    assert "different runtime: precision bf16 -> fp32" in err and err.count("\n") == 1


def test_a_loss_that_stays_non_finite_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    from engine.cli import main

    out = tmp_path / "run"
    argv = ["train", "--lr", "1e6", "--limit-train", "256", "--limit-test", "32", "--batch-size", "32", "--epochs", "2",
            "--device", "cpu", "--no-amp", "--save-every", "0s", "--quiet", "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lr 1e+06) is probably too high" in err[0]
    # checked before each save: by then the weights had gone non-finite, or 3 losses in a row had
    assert "NaN or infinite for 3 steps in a row" in err[0] or "and the weights are no longer finite" in err[0]
    saved = load(out / "last.pt")  # a mid-epoch checkpoint from before the loss went bad
    assert all(torch.isfinite(v).all() for v in saved.model.values() if v.is_floating_point())
    assert not (out / "metrics.jsonl").exists()  # no epoch was reported


@pytest.mark.parametrize("epochs", [1, 3])
def test_a_run_too_short_for_the_streak_stops_on_a_non_finite_test_loss(tmp_path, capsys, epochs):
    from engine.cli import main

    out = tmp_path / "run"  # 2 steps an epoch: no 3 in a row within one; the weights stay finite, the outputs overflow
    argv = ["train", "--lr", "1e9", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--epochs",
            str(epochs), "--device", "cpu", "--no-amp", "--quiet", "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lr 1e+09) is probably too high" in err[0]
    assert "the test loss after epoch 1 is NaN: the model's outputs overflow" in err[0] or "3 steps in a row" in err[0]
    assert not (out / "last.pt").exists() and not (out / "metrics.jsonl").exists()


def test_the_loss_watch_counts_non_finite_steps_in_a_row():
    """LossWatch.update only folds the loss into device tensors; check() is where the host reads them."""
    from engine.faults import LossWatch

    watch = LossWatch("cpu", lr=0.1)
    for value in (1.0, float("nan"), float("inf"), 2.0, float("nan"), float("nan")):
        watch.update(torch.tensor(value))
    assert int(watch.streak) == 2 and int(watch.worst) == 2
    watch.check(0, 6)  # 2 < 3: goes on
    watch.update(torch.tensor(float("nan")))
    with pytest.raises(Exception, match=r"3 steps in a row \(epoch 1, by step 7\): the learning rate \(--lr 0.1\) is probably"):
        watch.check(0, 7)
    start = LossWatch("cpu", lr=0.1)  # NaN from the first step: no update caused it
    for _ in range(3):
        start.update(torch.tensor(float("nan")))
    with pytest.raises(Exception, match="it was so from the first step, before any update, so the model's forward makes it"):
        start.check(0, 3)
    one = LossWatch("cpu", lr=0.1)
    one.update(torch.tensor(float("nan")))
    model = torch.nn.Linear(2, 2)
    one.check(0, 1, model)  # one bad loss and finite weights: goes on
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(Exception, match=r"NaN or infinite at step 1 of epoch 1, and the weights are no longer finite"):
        one.check(0, 1, model)


def test_a_run_resumes_with_the_number_of_processes_it_trained_with(tmp_path):
    from engine.errors import UsageError
    from engine.resume import check_resume

    out, _ = train(Config(epochs=1, limit_train=128, limit_test=16, batch_size=32, amp=False, quiet=True,
                          out=str(tmp_path / "run")), log=lambda *_: None)
    saved = load(out / "last.pt")
    total = saved.scheduler["total_steps"]
    check_resume(saved, out / "last.pt", saved.fingerprint, total, "synthetic", world=1)  # resumable as it ran
    with pytest.raises(UsageError, match=r"the run trained with 1 process and this one has 2: its schedule \(4 steps\) "
                                          r"counts the steps of its global batch; resume it without --nproc"):
        check_resume(saved, out / "last.pt", saved.fingerprint, total // 2, "synthetic", world=2)
    saved.rng["ranks"] = [saved.rng, saved.rng]  # what a 2-process run keeps
    with pytest.raises(UsageError, match="trained with 2 processes and this one has 1: .* resume it --nproc 2"):
        check_resume(saved, out / "last.pt", saved.fingerprint, total, "synthetic", world=1)


@pytest.mark.slow
def test_a_resume_redraws_a_curves_png_that_a_kill_left_unwritten(tmp_path):
    out, _ = train(Config(epochs=1, limit_train=128, limit_test=16, batch_size=32, amp=False, quiet=True,
                          out=str(tmp_path / "run")), log=lambda *_: None)
    (out / "curves.png").unlink()  # killed after metrics.jsonl, before the plot
    metrics = (out / "metrics.jsonl").read_text()
    said = []
    again = Config.from_dict({**load(out / "last.pt").config, "out": str(out), "quiet": False})
    train(again, resume=load(out / "last.pt"), log=said.append)
    assert "Repaired curves.png from last.pt (they were missing or behind it, as a kill leaves them)" in said, said
    assert (out / "curves.png").stat().st_size > 0 and (out / "metrics.jsonl").read_text() == metrics


@pytest.mark.slow
def test_an_unwritable_matplotlib_folder_says_nothing(tmp_path):
    """A read-only HOME (here: MPLCONFIGDIR under a file) made matplotlib log two lines of advice on
    every run; the run's pictures need none of it."""
    (tmp_path / "a-file").write_text("")
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "a-file" / "matplotlib"), "ENGINE_CACHE_DIR": str(tmp_path / "c")}
    done = subprocess.run([sys.executable, "-m", "engine", "train", "--epochs", "1", "--limit-train", "64",
                           "--limit-test", "32", "--batch-size", "32", "--no-amp", "--quiet", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and (tmp_path / "run" / "curves.png").is_file(), done.stderr
    assert "atplotlib" not in done.stderr and "mkdir" not in done.stderr, done.stderr
