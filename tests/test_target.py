"""engine.target: the command's clock, evaluations within an epoch, the stop at --target-acc, and
best.pt chosen on --val-split; fast_cifar end to end (learns, exports, resumes bit for bit)."""

import json
import subprocess
import sys

import pytest
import torch

from engine.checkpoint import load
from engine.cli import main
from engine.config import Config
from engine.errors import UsageError
from engine.evaluate import evaluate_checkpoint
from engine.target import best_score, eval_steps, process_age, reached_in, score, Watch
from engine.session import open_session
from engine.train import train

# fast_cifar with its recipe's optimizer values, small enough to learn the synthetic set in seconds
FAST = dict(model="fast_cifar", lr=0.375, momentum=0.85, weight_decay=0.0153 / 11.5, bn_lr_scale=64.0,
            label_smoothing=0.2, crop_padding=2, schedule="onecycle", amp=False, quiet=True, device="cpu")
PLAIN_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "images_per_s", "epoch_s", "warmup_s",
              "eval_s", "lr"}


def run(tmp_path, name, **values):
    return train(Config(out=str(tmp_path / name), **{**FAST, **values}), log=lambda *_: None)


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_eval_steps_split_the_epoch_and_leave_its_end_out():
    assert eval_steps(8, 0.25) == {2, 4, 6}
    assert eval_steps(195, 0.25) == {49, 98, 146}
    assert eval_steps(10, 1.0) == set()


def test_a_tiny_eval_every_is_every_step_at_once():
    # 1e-12 of an epoch used to loop 10^12 times before the first step (a hang, not an error)
    assert eval_steps(4, 1e-12) == {1, 2, 3}
    assert eval_steps(10, 0.1) == set(range(1, 10)) == eval_steps(10, 0.05)
    assert eval_steps(3, 0.1) == {1, 2}  # more points than steps: each step at most once
    assert eval_steps(100, 1 / 3) == {33, 67}


def test_a_target_evaluates_every_eighth_of_the_first_epoch_then_every_quarter():
    from engine.target import Watch

    def points(watch, epoch):
        return [done for done in range(1, 16) if watch.due(epoch, done)]

    default = Watch(55.9, None, 16, 3)
    assert points(default, 0) == [2, 4, 6, 8, 10, 12, 14] and points(default, 1) == points(default, 2) == [4, 8, 12]
    given = Watch(55.9, 0.25, 16, 3)  # --eval-every X: one cadence for every epoch
    assert points(given, 0) == points(given, 1) == [4, 8, 12]
    assert points(Watch(None, None, 16, 3), 0) == [] and points(Watch(None, 0.5, 16, 3), 0) == [8]


def test_process_age_counts_from_the_process_start():
    code = "import time; time.sleep(0.5); from engine.target import process_age; print(process_age())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.45 <= age < 60  # the sleep happened before the module was imported: it counts
    assert process_age() is not None and process_age() > 0


def test_score_prefers_validation_accuracy():
    assert score({"test_acc": 0.5}) == 0.5
    assert score({"test_acc": 0.5, "val_acc": 0.25}) == 0.25
    assert best_score([{"test_acc": 0.9, "val_acc": 0.1}, {"test_acc": 0.2, "val_acc": 0.3}]) == 0.3
    assert reached_in([{"test_acc": 0.1}, {"test_acc": 0.6, "time_to_target": 3.0}]) == {"test_acc": 0.6, "time_to_target": 3.0}


def test_config_checks_the_new_flags():
    for values, message in (({"target_acc": 0}, "--target-acc"), ({"target_acc": 101.0}, "--target-acc"),
                            ({"eval_every": 1.5}, "--eval-every"), ({"eval_every": 0.0}, "--eval-every"),
                            ({"eval_every": 2.5}, "--eval-every"), ({"eval_every": float("inf")}, "--eval-every"),
                            ({"eval_every": -2.0}, "--eval-every"),
                            ({"val_split": 0}, "--val-split"), ({"bn_lr_scale": 0.0}, "--bn-lr-scale"),
                            ({"crop_padding": -1}, "--crop-padding")):
        with pytest.raises(UsageError, match=message):
            Config(**values)


def test_target_acc_range_is_said_one_way():
    # out of range (0, a negative, above 100, not a number): the range the docs give; a fraction: the percent it meant
    for value in (0, -1.0, 101.0, float("nan")):
        with pytest.raises(UsageError, match=r"1 <= X <= 100"):
            Config(target_acc=value)
    with pytest.raises(UsageError, match="for 50% give 50"):
        Config(target_acc=0.5)
    assert Config(target_acc=1).target_acc == 1


def test_evaluations_left_follow_the_cadence():
    def evaluations_left(cfg, start):  # of a run of 100 steps an epoch
        return Watch(cfg.target_acc, cfg.eval_every, 100, cfg.epochs).evaluations(start)

    assert evaluations_left(Config(epochs=5), 0) == 5
    assert evaluations_left(Config(epochs=5, eval_every=0.25), 2) == 12
    assert evaluations_left(Config(epochs=5, eval_every=2), 0) == 3  # after epochs 2, 4 and the last
    assert evaluations_left(Config(epochs=6, eval_every=3), 1) == 2  # 3 and 6
    assert evaluations_left(Config(epochs=6, eval_every=10), 5) == 1  # the last always
    assert evaluations_left(Config(epochs=6, eval_every=2), 6) == 0


@pytest.mark.slow
def test_eval_every_n_epochs_evaluates_every_nth_and_the_last_and_resumes(tmp_path, capsys):
    """--eval-every 2 over 5 epochs: epochs 2, 4 and 5 evaluate; 1 and 3 print and record their training
    figures only, write last.pt (a resume point) but never best.pt; a run resumed after epoch 3 goes on
    to the same cadence."""
    out = tmp_path / "run"
    flags = ["train", "--model", "cifar_cnn", "--limit-train", "128", "--limit-test", "32", "--batch-size", "32",
             "--device", "cpu", "--no-amp", "--eval-every", "2", "--out", str(out), "--quiet"]

    def stop_after(epoch):
        import engine.train as loop

        original = loop.save_epoch

        def save_then_stop(s, m, best_now, state=None, announce=None):
            original(s, m, best_now, state, announce)
            if m["epoch"] == epoch:
                raise KeyboardInterrupt
        return original, save_then_stop

    import engine.train as loop

    original, stopping = stop_after(3)
    loop.save_epoch = stopping
    try:
        assert main([*flags, "--epochs", "5"]) == 130
    finally:
        loop.save_epoch = original
    assert load(out / "last.pt").epoch == 3 and load(out / "best.pt").epoch == 2
    assert main(["train", "--resume", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch:")]
    assert [("Test_acc" in line) for line in lines] == [False, True, False, True, True]  # 1, 2, 3 (saved, then
    # stopped: said); resumed: 4, 5
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5]
    assert [("test_acc" in m) for m in metrics] == [False, True, False, True, True]
    assert all("train_acc" in m and "images_per_s" in m for m in metrics)
    best = load(out / "best.pt")
    assert best.epoch in (2, 4, 5) and best.best["acc"] == max(m["test_acc"] for m in metrics if "test_acc" in m)
    assert (out / "curves.png").stat().st_size > 0 and (out / "confusion.png").exists()


def test_without_the_new_flags_metrics_keep_their_keys(tmp_path):
    out, metrics = run(tmp_path, "plain", epochs=1, limit_train=128, limit_test=32, batch_size=32, model="cifar_cnn")
    assert [set(m) for m in read_metrics(out)] == [PLAIN_KEYS]


@pytest.mark.slow
def test_target_acc_stops_at_the_first_evaluation_at_or_above_it(tmp_path, capsys):
    small = dict(epochs=3, limit_train=512, limit_test=100, batch_size=64, eval_every=0.25)
    _, reference = run(tmp_path, "reference", **small)
    accs = [m["test_acc"] for m in reference]
    assert len(accs) == 12 and [m["epoch"] for m in reference[:5]] == [0.25, 0.5, 0.75, 1, 1.25]
    # a target first met within an epoch, by an evaluation that beats every earlier one
    k = next(i for i in range(3, len(accs) - 1) if accs[i] > max(accs[:i]) and reference[i].get("partial"))
    target = accs[k] * 100
    flags = ["--model", "fast_cifar", "--epochs", "3", "--limit-train", "512", "--limit-test", "100", "--batch-size",
             "64", "--eval-every", "0.25", "--lr", "0.375", "--momentum", "0.85", "--weight-decay", str(0.0153 / 11.5),
             "--bn-lr-scale", "64", "--label-smoothing", "0.2", "--crop-padding", "2", "--schedule", "onecycle",
             "--no-tta", "--no-amp", "--no-ema",
             "--device", "cpu", "--quiet"]
    out = tmp_path / "target"
    capsys.readouterr()
    assert main(["train", *flags, "--target-acc", f"{target:g}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    metrics = read_metrics(out)
    assert [m["test_acc"] for m in metrics] == accs[:k + 1]  # the same run, cut at the k-th evaluation
    assert all(m["test_acc"] * 100 < target for m in metrics[:-1]) and metrics[-1]["test_acc"] * 100 >= target - 1e-9
    stop = metrics[-1]
    assert stop["time_to_target"] == stop["elapsed_s"] > 0 and stop["target_acc"] == pytest.approx(target)
    assert all("time_to_target" not in m and m["elapsed_s"] <= stop["elapsed_s"] for m in metrics[:-1])
    assert stop["partial"] and printed[-2].startswith(f"Epoch: {stop['epoch']:.2f}, ")
    assert printed[-2].endswith(f"reached {target:g}% in {stop['time_to_target']:.1f} s")
    assert printed[-1].startswith(f"Reached {target:g}% test accuracy in {stop['time_to_target']:.1f} s")
    # no training after the stop: the checkpoint is the state the evaluation saw, and eval agrees
    last, best = load(out / "last.pt"), load(out / "best.pt")
    assert last.scheduler["step"] == stop["step"] and last.metrics == metrics
    assert all(torch.equal(v, best.model[k]) for k, v in last.model.items())
    flags = {"quiet": True, "limit_test": 100, "batch_size": 64, "amp": False}
    evaluated = evaluate_checkpoint(out / "best.pt", flags)
    assert evaluated["test_acc"] == stop["test_acc"] and evaluated["epoch"] == stop["epoch"]  # e.g. 1.75
    # resuming a run that reached its target trains nothing and says so again
    assert main(["train", "--resume", str(out)]) == 0
    again, err = capsys.readouterr()
    assert "Epoch:" not in again and f"Reached {target:g}% test accuracy" in again
    assert "best.pt" not in err  # best.pt of the stop within an epoch is the run's own (it was warned about)
    assert main(["train", "--resume", str(out), "--no-quiet"]) == 0  # it names the epoch it stopped at
    assert f"it reached {target:g}% at epoch {stop['epoch']:g} of 3, so nothing is left to train" in capsys.readouterr().out
    assert read_metrics(out) == metrics


@pytest.mark.slow
def test_a_target_not_reached_trains_every_epoch_and_says_so(tmp_path, capsys):
    assert main(["train", "--model", "cifar_cnn", "--epochs", "1", "--limit-train", "128", "--limit-test", "32",
                 "--batch-size", "32", "--device", "cpu", "--no-amp", "--quiet", "--target-acc", "100",
                 "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out.splitlines()
    metrics = read_metrics(tmp_path / "run")
    assert [m["epoch"] for m in metrics] == [0.25, 0.5, 0.75, 1]  # every eighth of 4 steps: after steps 1, 2, 3
    assert all(m.get("partial") for m in metrics[:3]) and "partial" not in metrics[3]
    assert printed[-1].startswith("Did not reach 100% test accuracy")
    for _ in range(2):  # a finished run resumed trains nothing: its time stays the run's, not grown by each resume
        assert main(["train", "--resume", str(tmp_path / "run")]) == 0
        assert f"Did not reach 100% test accuracy in {metrics[-1]['elapsed_s']:.1f} s from the run's start" in \
            capsys.readouterr().out


@pytest.mark.slow
def test_val_split_keeps_its_images_out_of_training_and_chooses_best_pt(tmp_path):
    cfg = Config(out=str(tmp_path / "session"), epochs=1, limit_train=256, val_split=64, **FAST)
    s = open_session(cfg, say=lambda *_: None)
    train_rows = {bytes(x.numpy().tobytes()) for x in s.train_loader.x}
    val_rows = [bytes(x.numpy().tobytes()) for x in s.val_loader.x]
    assert len(s.train_loader.x) == 256 and len(val_rows) == 64
    assert not train_rows & set(val_rows)  # no validation image is trained on
    again = open_session(Config(**{**cfg.to_dict(), "out": str(tmp_path / "again")}), say=lambda *_: None)
    assert torch.equal(again.val_loader.x, s.val_loader.x)  # same seed, same split
    s.run.close()
    again.run.close()

    # seed 0 of this setting (stratified --val-split) is one where validation and test disagree on the best epoch
    out, metrics = run(tmp_path, "val", epochs=4, limit_train=256, limit_test=64, batch_size=64, val_split=64, seed=0,
                       schedule="constant")
    val, test = [m["val_acc"] for m in metrics], [m["test_acc"] for m in metrics]
    assert val.index(max(val)) != test.index(max(test)), "the setting no longer separates the two choices"
    assert load(out / "best.pt").epoch == val.index(max(val)) + 1
    assert all({"val_loss", "val_acc"} <= set(m) for m in read_metrics(out))


@pytest.mark.slow
def test_fast_cifar_learns_exports_and_resumes_bit_for_bit(tmp_path):
    small = dict(epochs=2, limit_train=256, limit_test=64, batch_size=64)
    out, metrics = run(tmp_path, "whole", **small)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]  # it learns

    def stop_after_the_first_epoch(line):
        if line.startswith("Epoch: 1,"):
            raise KeyboardInterrupt  # as Ctrl-C after epoch 1 was saved

    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        train(Config(out=str(tmp_path / "halves"), **{**FAST, **small}), log=stop_after_the_first_epoch)
    first = load(tmp_path / "halves" / "last.pt")
    assert first.epoch == 1
    train(Config.from_dict(first.config), resume=first, log=lambda *_: None)
    a, b = load(out / "last.pt"), load(tmp_path / "halves" / "last.pt")
    assert a.model.keys() == b.model.keys()
    for key, value in a.model.items():
        assert torch.equal(value, b.model[key]), key

    from export.onnx_export import export_onnx

    result = export_onnx(tmp_path / "fast.onnx", out / "best.pt", log=lambda *_: None)
    assert result.parity is not None and (tmp_path / "fast.onnx").stat().st_size > 100_000


def test_short_of_stops_only_well_below_the_target():
    from engine.target import SCREEN_SE, short_of

    # 1,000 of 10,000 images at a target of 55.9%: one standard error is 1.49 points
    error = (0.559 * 0.441 / 1000 * 9000 / 9999) ** 0.5
    assert short_of(55.9, 400, 1000, 10_000) and short_of(55.9, int(1000 * (0.559 - SCREEN_SE * error)) - 1, 1000, 10_000)
    assert not short_of(55.9, int(1000 * (0.559 - SCREEN_SE * error)) + 1, 1000, 10_000)
    assert not short_of(55.9, 540, 1000, 10_000)  # 54.0%, 1.3 errors below: the rest is read
    assert short_of(55.9, 3_240, 6_000, 10_000)  # 54.0% of 6,000 (an error of 0.41 points): cut
    assert not short_of(55.9, 3_300, 6_000, 10_000)
    assert not short_of(55.9, 559, 1000, 10_000) and not short_of(10.0, 1000, 1000, 10_000)


def screen_fixture(root, test=5000):
    """torchvision's cifar-10-batches-py holding the synthetic shapes: 1,000 training and `test` test
    images that a small net learns (a test set large enough for --target-acc's screen)."""
    import pickle

    from engine.data.synthetic import generate

    data = generate(seed=1, train_size=1000, test_size=test)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = [(f"data_batch_{i + 1}", data.train_x[i * 200:(i + 1) * 200], data.train_y[i * 200:(i + 1) * 200])
             for i in range(5)] + [("test_batch", data.test_x, data.test_y)]
    for name, x, y in parts:
        record = {b"batch_label": name.encode(), b"labels": y.tolist(), b"data": x.reshape(len(x), -1).numpy(),
                  b"filenames": [f"{i}.png".encode() for i in range(len(x))]}
        (folder / name).write_bytes(pickle.dumps(record, protocol=2))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return root


@pytest.mark.slow
def test_evaluate_screened_reads_the_parts_as_one_set_or_stops_after_the_first(tmp_path):
    """Read whole, the parts give evaluate()'s figures on the whole set (its confusion counts too);
    told short after the first part, it stops there with that part's figures."""
    from engine.confusion import Confusion
    from engine.data import load_dataset
    from engine.evaluate import evaluate, evaluate_screened
    from engine.models import build_model
    from engine.run_loaders import screen_loaders

    cfg = Config(data="cifar10", data_dir=str(screen_fixture(tmp_path)), batch_size=128, device="cpu", amp=False,
                 target_acc=99.0)
    s = open_session(Config(**{**cfg.to_dict(), "out": str(tmp_path / "run"), "quiet": True}), say=lambda *_: None)
    parts = s.screen
    assert [len(p.x) for p in parts] == [500, 1000, 1500, 2000]
    torch.manual_seed(0)
    model = build_model("lenet", (3, 32, 32), 10).eval()
    whole = Confusion(range(10))
    loss, acc = evaluate(model, s.test_loader, s.runtime, 1, whole)
    counted, asked = Confusion(range(10)), []
    got = evaluate_screened(model, parts, s.runtime, lambda right, read: asked.append(read) or False, 1, counted)
    # the same predictions; each batch's loss is summed in float32, over other batches here
    assert got[1:] == (acc, 5000, True) and got[0] == pytest.approx(loss, rel=1e-6)
    assert asked == [500, 1500, 3000] and torch.equal(counted.counts, whole.counts)
    first = evaluate(model, parts[0], s.runtime, 1)
    assert evaluate_screened(model, parts, s.runtime, lambda *_: True, 1) == (first[0], first[1], 500, False)
    small = Config(**{**cfg.to_dict(), "limit_test": 4999})  # under SCREEN_FROM: read whole
    data = load_dataset(small, lambda *_: None)
    assert len(data.test_x) == 4999 and screen_loaders(small, data, data.spec(), s.runtime, s.ranks) is None
    s.run.close()


@pytest.mark.slow
def test_target_acc_screens_evaluations_within_an_epoch(tmp_path, capsys):
    """Within an epoch, evaluations far below the target stop after the screened tenth (Screen_acc, no
    test figures); epoch ends evaluate the whole set; a target within reach reads the whole set, whose
    accuracy the checkpoint's own evaluation repeats."""
    root = screen_fixture(tmp_path)
    flags = ["train", "--model", "cifar_cnn", "--data", "cifar10", "--data-dir", str(root), "--batch-size", "50",
             "--device", "cpu", "--no-amp", "--quiet", "--epochs", "1", "--no-tta"]
    assert main([*flags, "--target-acc", "99", "--out", str(tmp_path / "far")]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch:")]
    metrics = read_metrics(tmp_path / "far")
    assert [m["epoch"] for m in metrics] == [0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1]  # 20 steps: every eighth
    for m, line in zip(metrics[:-1], printed):
        assert "test_acc" not in m and m["screen_images"] == 500 and 0 <= m["screen_acc"] < 0.9
        assert f"Screen_acc:{m['screen_acc'] * 100:.1f}% of 500 test images" in line and "Test_acc" not in line
    assert "screen_acc" not in metrics[-1] and "Test_acc" in printed[-1]
    assert load(tmp_path / "far" / "best.pt").best["acc"] == metrics[-1]["test_acc"]  # a screen never picks best.pt

    assert main([*flags, "--target-acc", "1", "--out", str(tmp_path / "near")]) == 0
    stop = read_metrics(tmp_path / "near")[-1]
    assert stop["epoch"] == 0.1 and "screen_acc" not in stop and stop["time_to_target"] > 0
    evaluated = evaluate_checkpoint(tmp_path / "near" / "best.pt", {"quiet": True, "batch_size": 50, "amp": False})
    assert evaluated["test_acc"] == stop["test_acc"] and evaluated["test_loss"] == pytest.approx(stop["test_loss"], abs=1e-5)


def test_a_missed_target_names_where_its_best_was_and_what_best_pt_holds():
    """The best of a missed target was an evaluation within an epoch, which best.pt (chosen at epoch
    ends) does not hold: the line said both as one figure."""
    from engine.target import Watch

    watch = Watch(90, 0.25, 4, 2)
    metrics = [{"epoch": 0.5, "test_acc": 0.61, "partial": True}, {"epoch": 1, "test_acc": 0.55},
               {"epoch": 1.5, "test_acc": 0.58, "partial": True}, {"epoch": 2, "test_acc": 0.57}]
    line = watch.summary(None, metrics, trained=False)
    assert "(best 61.00% at epoch 0.5 of 4 evaluations of the whole test set; best.pt holds epoch 2's 57.00%, " \
           "chosen at epoch ends); train longer or aim lower" in line
    line = watch.summary(None, metrics[1:2], trained=False)
    assert "(best 55.00% at epoch 1 of 1 evaluation of the whole test set)" in line


@pytest.mark.slow
def test_a_stop_at_an_eighth_of_an_epoch_is_that_epoch_everywhere(tmp_path, capsys):
    """A target met at epoch 0.125 (the first epoch's eighths: 0.125, 0.375, ...): its checkpoint said
    epoch 0.12 (rounded to 2 places, half to even), so --resume warned that the run's own best.pt was
    'not this run's', the ONNX metadata lost its test accuracy and engine eval said epoch 0.12."""
    from export.metadata import ModelInfo

    out = tmp_path / "eighth"
    flags = ["--model", "fast_cifar", "--epochs", "2", "--limit-train", "512", "--limit-test", "100", "--batch-size",
             "64", "--no-tta", "--no-amp", "--no-ema", "--device", "cpu", "--quiet", "--target-acc", "1"]
    assert main(["train", *flags, "--out", str(out)]) == 0
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [0.125] and metrics[0]["time_to_target"] > 0
    best = load(out / "best.pt")
    assert best.epochs_done == load(out / "last.pt").epochs_done == 0.125
    assert evaluate_checkpoint(out / "best.pt", {"quiet": True, "amp": False})["epoch"] == 0.125
    assert ModelInfo.from_checkpoint(best, 20).test_accuracy == metrics[0]["test_acc"]
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    assert "best.pt" not in capsys.readouterr().err  # the run's own best.pt: no warning
