"""engine.cli: the command end to end, as a subprocess and through main(argv), and every bad input."""

import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from engine.checkpoint import load
from engine.cli import main

EPOCH_LINE = re.compile(r"^Epoch: \d+, Train_acc:\d+\.\d%, Train_loss:\d+\.\d{3}, Test_acc:\d+\.\d%, "
                        r"Test_loss:\d+\.\d{3}, [\d,]+ img/s, \d+\.\d s$")
SMALL = ["--limit-train", "128", "--limit-test", "64", "--batch-size", "32", "--epochs", "1", "--device", "cpu"]
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def engine(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


def image_archive(path, train=None):
    """A .tar.gz image folder of two classes of 8x8 PNGs."""
    with tarfile.open(path, "w:gz") as archive:
        for split, n in (("train", 12), ("test", 4)):
            for c, name in enumerate(("ants", "bees")):
                for k in range(n):
                    buffer = io.BytesIO()
                    Image.fromarray(np.full((8, 8, 3), 60 * c + k, dtype=np.uint8)).save(buffer, format="PNG")
                    info = tarfile.TarInfo(f"{split}/{name}/{k}.png")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    archive.addfile(info, buffer)
    return path


@pytest.mark.slow
def test_train_then_eval_as_subprocesses(tmp_path):
    out = tmp_path / "run"
    trained = engine("train", *SMALL, "--out", str(out))
    assert trained.returncode == 0, trained.stderr
    lines = trained.stdout.splitlines()
    assert any(line.startswith("Data: built-in synthetic set") for line in lines)
    assert [line for line in lines if line.startswith("Epoch:")] and all(
        EPOCH_LINE.match(line) for line in lines if line.startswith("Epoch:"))
    evaluated = engine("eval", str(out / "last.pt"), "--limit-test", "64")
    assert evaluated.returncode == 0, evaluated.stderr
    assert re.search(r"^Test_acc:\d+\.\d\d%, Test_loss:\d+\.\d{4} \(64 test images of synthetic; checkpoint after "
                     r"epoch \d+, (fp32|bf16);", evaluated.stdout, re.M)  # the precision it evaluated in


@pytest.mark.slow  # a whole-command integration case: CI runs it (README's test command)
def test_main_trains_resumes_and_evaluates_in_process(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *SMALL[:-4], "--epochs", "2", "--out", out, "--quiet"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and all(EPOCH_LINE.match(line) for line in printed)
    assert main(["train", "--resume", out]) == 0  # all epochs done: resuming trains nothing more
    assert "Epoch:" not in capsys.readouterr().out
    assert main(["eval", out + "/best.pt", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("Test_acc:")
    # --tta's level is optional: given alone before the checkpoint, the checkpoint is not taken as the level
    assert main(["eval", "--tta", out + "/best.pt", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("Test_acc(tta):")
    assert main(["eval", "--tta", "2", out + "/best.pt", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("Test_acc(tta2):")


@pytest.mark.slow
def test_resume_defaults_to_runs_latest(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *SMALL[:-4], "--epochs", "2", "--quiet"]) == 0
    run = (tmp_path / "runs" / "latest").resolve()
    (run / "last.pt").unlink()
    (run / "best.pt").rename(run / "last.pt")  # back to the best epoch: with this seed, epoch 1
    assert load(run / "last.pt").epoch == 1
    capsys.readouterr()
    assert main(["train", "--resume"]) == 0
    assert capsys.readouterr().out.startswith("Epoch: 2, ")  # the run was quiet, and resumes quiet
    assert load(run / "last.pt").epoch == 2
    assert (tmp_path / "runs" / "latest").resolve() == run and run.is_dir()


def test_relative_data_paths_work_from_another_directory(tmp_path, capsys, monkeypatch):
    image_archive(tmp_path / "bugs.tar.gz")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "bugs.tar.gz", "--cache-dir", "cache", "--model", "mnist_cnn",
                 "--batch-size", "8", "--epochs", "1", "--out", "run", "--quiet"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["eval", "../run/last.pt"]) == 0
    assert "(8 test images of " + str(tmp_path / "bugs.tar.gz") in capsys.readouterr().out
    assert main(["train", "--resume", "../run", "--data", "../bugs.tar.gz"]) == 0  # the same data, named from here


@pytest.mark.slow
def test_eval_on_other_data_of_the_same_shape_and_classes(tmp_path, capsys):
    """Synthetic test images saved as an image folder: its classes come in alphabetical order, the
    model's in the synthetic set's order; eval must match them by name."""
    import torch

    from engine.checkpoint import model_from_checkpoint
    from engine.data.synthetic import CLASSES, generate

    out = str(tmp_path / "run")
    assert main(["train", "--epochs", "1", "--no-amp", "--out", out, "--quiet"]) == 0
    data = generate(0, 10, 200)
    folder = tmp_path / "shapes"
    for i, (image, label) in enumerate(zip(data.test_x, data.test_y)):
        for split in ("train", "test"):
            (folder / split / CLASSES[label]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / split / CLASSES[label] / f"{i}.png")
    capsys.readouterr()
    assert main(["eval", out + "/last.pt", "--data", str(folder), "--cache-dir", str(tmp_path / "c"), "--no-amp"]) == 0
    printed = capsys.readouterr().out
    assert "(200 test images of " in printed
    checkpoint = load(out + "/last.pt")
    spec = checkpoint.spec
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        predicted = model_from_checkpoint(checkpoint)((data.test_x.float() / 255 - mean) / std).argmax(1)
    expected = (predicted == data.test_y).float().mean().item()
    assert expected > 0.3  # a model worth checking against
    assert f"Test_acc:{expected * 100:.2f}%" in printed


@pytest.mark.slow
def test_ctrl_c_keeps_completed_epochs_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "engine", "train", "--epochs", "3", "--batch-size", "32",
                                "--device", "cpu", "--no-amp", "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    err = process.communicate(timeout=60)[1]
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == f"engine: interrupted; the run up to its last checkpoint is saved: continue with engine train --resume {out}"
    epoch = load(out / "last.pt").epoch
    assert epoch >= 1  # an epoch's files are whole and in step, with no temporaries left
    assert sorted(os.listdir(out)) == ["best.pt", "config.json", "curves.png", "last.pt", "metrics.jsonl"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == epoch


def test_train_on_an_archive_and_eval_on_it(tmp_path, capsys):
    archive = image_archive(tmp_path / "bugs.tar.gz")
    out = str(tmp_path / "run")
    args = ["--data", str(archive), "--cache-dir", str(tmp_path / "cache"), "--model", "mnist_cnn"]
    assert main(["train", *args, "--batch-size", "8", "--epochs", "1", "--out", out, "--quiet"]) == 0
    assert main(["eval", out + "/last.pt", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "(8 test images of " in capsys.readouterr().out


@pytest.mark.parametrize("name, total", [("cifar_cnn", "246,474"), ("cifar_seq", "145,578"), ("mnist_cnn", "824,458")])
def test_summary_totals(name, total, capsys):
    assert main(["summary", "--model", name]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"Total parameters: {total}"


def test_version_is_the_packages(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"engine {version('engine-cnn')}\n"


def test_summary_for_another_input_shape(capsys):
    assert main(["summary", "--model", "cifar_cnn", "--input-shape", "1x28x28"]) == 0
    assert "(1, 28, 28)" in capsys.readouterr().out


@pytest.mark.slow
def test_summary_of_a_checkpoint_is_its_model_on_its_images_and_classes(tmp_path, capsys):
    from engine.config import Config
    from engine.models import build_model, count_parameters
    from engine.train import train

    (tmp_path / "nets.py").write_text("import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
                                      "    def __init__(self, num_classes=10):\n        super().__init__()\n"
                                      "        self.conv = nn.Conv2d(3, 4, 3)\n        self.fc = nn.LazyLinear(num_classes)\n\n"
                                      "    def forward(self, x):\n        return self.fc(torch.relu(self.conv(x)).flatten(1))\n")
    for k in range(12):
        for split, name in (("train", "cat"), ("train", "dog"), ("train", "owl"), ("test", "cat"), ("test", "dog"), ("test", "owl")):
            (tmp_path / "pics" / split / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((24, 30, 3), 20 * k, np.uint8)).save(tmp_path / "pics" / split / name / f"{k}.png")
    for model, out in (("cifar_cnn", "built"), (f"{tmp_path / 'nets.py'}:Net", "user")):
        train(Config(model=model, data=str(tmp_path / "pics"), epochs=1, batch_size=8, amp=False, quiet=True, device="cpu",
                     cache_dir=str(tmp_path / "cache"), out=str(tmp_path / out)), log=lambda *_: None)
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "built" / "best.pt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{tmp_path / 'built' / 'best.pt'} (cifar_cnn, epoch 1, 3 classes: cat, dog, owl): input (3, 24, 30)"
    assert lines[-1] == f"Total parameters: {count_parameters(build_model('cifar_cnn', (3, 24, 30), 3)):,}"
    user = str(tmp_path / "user" / "best.pt")
    assert "name it again: --model" in bad(capsys, ["summary", user], 2)  # a user model's code is never imported unasked
    assert main(["summary", user, "--model", f"{tmp_path / 'nets.py'}:Net"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "input (3, 24, 30)" in lines[0] and lines[-1] == f"Total parameters: {4 * 27 + 4 + 4 * 22 * 28 * 3 + 3:,}"
    for flags in (["--input-shape", "3x8x8"], ["--num-classes", "5"], ["--model-args", "{}"]):
        assert "a checkpoint knows its own model, image shape and classes" in bad(capsys, ["summary", user, *flags], 2)


def test_a_class_count_below_two_is_one_rule_and_one_line_wherever_it_comes_from(tmp_path, capsys):
    """engine summary --num-classes 0 said 'at least 1' (argparse's) and 1 'at least 2' (the model's); engine
    train refuses data of one class, so a classifier needs 2 everywhere, said in the same words."""
    from engine.errors import UsageError
    from engine.models.build import build
    from engine.models.reference import parse_model

    for count in ("1", "0", "-3", "x"):
        shown = repr(count) if count == "x" else count
        assert bad(capsys, ["summary", "--num-classes", count], 2) == (
            f"engine: error: engine summary: argument --num-classes: a classifier needs at least 2 classes, not {shown} "
            "(see engine summary --help)")
    assert main(["summary", "--num-classes", "2"]) == 0 and "Total parameters" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r"^a classifier needs at least 2 classes, not 1$"):  # from Python
        build(parse_model("cifar_cnn"), (3, 32, 32), 1)
    for k in range(2):  # data of one class: the same minimum
        (tmp_path / "one" / "cat").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "one" / "cat" / f"{k}.png")
    line = bad(capsys, ["train", "--data", str(tmp_path / "one"), "--out", str(tmp_path / "run")], 1)
    assert "has 1 class; a classifier needs at least 2 (" in line and not (tmp_path / "run").exists()


def bad(capsys, argv, code):
    """Run main(argv), expecting one line on stderr and exit `code`; return that line."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("engine") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("argv, code, words", [
    (["train", "--model", "vgg"], 2, "unknown model 'vgg'"),
    (["train", "--data", "imagenet"], 2, "unknown dataset 'imagenet'"),
    (["train", "--epochs", "0"], 2, "--epochs must be"),
    (["train", "--batch-size", "-4"], 2, "--batch-size must be"),
    (["train", "--lr", "-0.1"], 2, "--lr must be greater than 0"),
    (["train", "--limit-test", "0"], 2, "--limit-test must be"),
    (["train", "--epochs", "three"], 2, "invalid int value"),
    (["train", "--optimizer", "lion"], 2, "invalid choice"),
    (["train", "--limit-train", "50", "--batch-size", "64"], 2, "--batch-size 64 is larger than the 50 training images"),
    (["summary", "--model", "vgg"], 2, "unknown model"),
    (["summary", "--input-shape", "32x32"], 2, "expected CxHxW"),
    (["summary", "--input-shape", ""], 2, "--input-shape"),
    (["eval"], 2, "required: CHECKPOINT"),
    (["eval", "--tta", "3", "run/best.pt"], 2, "argument --tta: invalid choice: 3"),
    (["fly"], 2, "invalid choice"),
    (["eval", "run/best.pt", "--confusion", ""], 2, "--confusion is an empty path"),
    (["predict", "", "cat.png"], 2, "the model is an empty path"),
    (["train", "--init-from", "/dev/null"], 2, "--init-from: /dev/null is not a regular file"),
])
def test_usage_errors(tmp_path, capsys, argv, code, words):
    line = bad(capsys, [*argv, *(["--out", str(tmp_path / "run")] if argv[0] == "train" else [])], code)
    assert words in line
    assert not (tmp_path / "run").exists()  # a refused run leaves nothing behind


def test_missing_data_directory_offline(tmp_path, capsys, monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    line = bad(capsys, ["train", "--data", "cifar10", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r")], 1)
    assert "cifar10 is not in" in line and "download failed" in line and "--data PATH" in line
    assert not (tmp_path / "data").exists()  # the folder the download made is gone with it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    line = bad(capsys, ["train", "--data", "mnist", "--data-dir", str(tmp_path / "mine" / "deep" / "er"), "--out",
                        str(tmp_path / "r")], 1)
    assert "mnist is not in" in line and "download failed" in line
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]  # a folder that was there stays


def test_empty_and_malformed_image_folders(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "holds no images (files ending .apng, .avif, .bmp" in bad(capsys, ["train", "--data", str(tmp_path / "empty")], 1)
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "flat" / "a.png")
    assert "expected train/<class>/<image>" in bad(capsys, ["train", "--data", str(tmp_path / "flat")], 1)
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    assert "broken.zip" in bad(capsys, ["train", "--data", str(tmp_path / "broken.zip"), "--cache-dir", str(tmp_path)], 1)


FRAGILE = """
import torch
from torch import nn


class Fragile(nn.Module):
    def __init__(self, num_classes=10, error="RuntimeError", mode="train"):
        super().__init__()
        self.fc, self.error, self.mode = nn.Linear(3, num_classes), error, mode

    def forward(self, x):
        if x.shape[0] > 8 and self.training == (self.mode == "train"):  # past the start-up probe's batch of 2
            raise {"RuntimeError": RuntimeError, "ValueError": ValueError, "SystemExit": SystemExit}[self.error](
                "this batch is not supported")
        return self.fc(x.mean((2, 3)))
"""


@pytest.mark.parametrize("error, mode", [("RuntimeError", "train"), ("ValueError", "eval"), ("SystemExit", "train")])
def test_the_models_own_error_mid_run_is_one_line_and_leaves_no_unresumable_folder(tmp_path, capsys, monkeypatch,
                                                                                     error, mode):
    (tmp_path / "fragile.py").write_text(FRAGILE)
    monkeypatch.chdir(tmp_path)
    line = bad(capsys, ["train", "--model", "fragile.py:Fragile", "--model-args", f'{{"error": "{error}", "mode": "{mode}"}}',
                        "--limit-train", "64", "--limit-test", "32", "--batch-size", "16", "--epochs", "1", "--no-amp"], 1)
    assert line.startswith(f"engine: error: the model's code raised {error} (") and "fragile.py, line 13, in forward" in line
    assert line.endswith("this batch is not supported")
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []  # nothing to resume, nothing left


def test_a_model_files_sys_exit_is_one_line_and_a_failure_not_a_silent_stop(tmp_path, capsys, monkeypatch):
    """sys.exit() in the user's constructor or at its file's top level would end the command without a
    word, with status 0 for sys.exit() or a message: it is one line naming the file, and status 1."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quits.py").write_text("import sys\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
                                       "    def __init__(self, num_classes=10):\n        super().__init__()\n"
                                       "        sys.exit(0)\n")
    (tmp_path / "top.py").write_text("import sys\n\nsys.exit('done here')\n")
    for command in (["train", "--model", "quits.py:Net", "--epochs", "1", "--limit-train", "64"],
                    ["summary", "--model", "quits.py:Net", "--input-shape", "3x32x32"]):
        line = bad(capsys, command, 1)
        assert line.startswith("engine: error: the model's code raised SystemExit (") and "quits.py, line 8, in __init__" in line
    line = bad(capsys, ["train", "--model", "top.py:Net", "--epochs", "1"], 1)
    assert line.endswith("top.py raised SystemExit on import (line 3): done here")
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_an_operating_system_refusal_is_one_short_line(tiny_run, tmp_path, capsys):
    line = bad(capsys, ["export", str(tmp_path / ("a" * 300 + ".onnx")), "--checkpoint", str(tiny_run[1])], 1)
    assert line.endswith("...: File name too long") and len(line) < 120 and "Errno" not in line


def test_an_out_that_is_a_file_is_said_so(tmp_path, capsys):
    (tmp_path / "notes").write_text("mine")
    line = bad(capsys, ["train", "--out", str(tmp_path / "notes"), "--epochs", "1", "--limit-train", "64"], 1)
    assert line.endswith("notes is a file, not a folder; choose another --out")
    assert (tmp_path / "notes").read_text() == "mine"


def test_unwritable_out(tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    line = bad(capsys, ["train", *SMALL, "--out", str(tmp_path / "file" / "run")], 1)
    assert "cannot write to --out" in line
    assert (tmp_path / "file").read_text() == "keep me"


def test_resume_with_nothing_to_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "nothing to resume" in bad(capsys, ["train", "--resume"], 2)
    (tmp_path / "run").mkdir()
    assert "has no last.pt" in bad(capsys, ["train", "--resume", str(tmp_path / "run")], 2)
    assert list((tmp_path / "run").iterdir()) == []


def test_an_existing_run_is_never_overwritten_and_resume_keeps_its_config(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *SMALL, "--out", out, "--quiet"]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    assert "already holds a run" in bad(capsys, ["train", *SMALL, "--out", out], 2)
    assert "--lr 0.5 differs from its --lr 0.05" in bad(capsys, ["train", "--resume", out, "--lr", "0.5"], 2)
    assert "--data mnist differs from its --data synthetic" in bad(capsys, ["train", "--resume", out, "--data", "mnist"], 2)
    longer = bad(capsys, ["train", "--resume", out, "--epochs", "9"], 2)  # more epochs: a new run from its weights
    assert f"differs from its --epochs 1 (start a new run to change it; a new run with --init-from {out}/last.pt " in longer
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_eval_refuses_data_of_another_shape_and_non_checkpoints(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *SMALL, "--out", out, "--quiet"]) == 0
    capsys.readouterr()
    archive = image_archive(tmp_path / "bugs.tar.gz")
    line = bad(capsys, ["eval", out + "/last.pt", "--data", str(archive), "--cache-dir", str(tmp_path / "c")], 1)
    assert "was trained on 3x32x32 images of 10 classes" in line and "3x8x8 images of 2 classes" in line
    assert line.endswith("; it has classes the model was not trained on: ants, bees")  # resizing could not help
    (tmp_path / "notes.pt").write_text("hello")
    assert "not a readable engine checkpoint" in bad(capsys, ["eval", str(tmp_path / "notes.pt")], 1)
    assert "no checkpoint at" in bad(capsys, ["eval", str(tmp_path / "absent.pt")], 1)


@pytest.mark.slow
def test_bad_input_as_a_subprocess_has_no_traceback(tmp_path):
    result = engine("train", "--epochs", "-1")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == "engine: error: --epochs must be a whole number of at least 1, not -1"
    result = engine("train", "--data", "mnist", "--data-dir", str(tmp_path), env=OFFLINE, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("engine: error: mnist is not in")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_reader_that_leaves_the_pipe_stops_the_command_quietly():
    # `engine ... | head -1`: the reader is gone before the output is written (here `true` reads nothing)
    job = subprocess.run(["bash", "-c", f"'{sys.executable}' -m engine summary --model cifar_cnn --input-shape 3x32x32 "
                          "| true; echo ${PIPESTATUS[0]}"], capture_output=True, text=True, timeout=120)
    assert job.stderr == "" and job.stdout.strip() == "141"  # no "Broken pipe" line, the shell's SIGPIPE status


@pytest.mark.slow
def test_a_closed_stdout_or_stderr_trains_as_an_open_one(tmp_path):
    """`engine train ... >&-`: sys.stdout is None, and the progress bar's isatty() raised AttributeError."""
    for stream in (1, 2):
        job = subprocess.run([sys.executable, "-m", "engine", "train", "--epochs", "1", "--limit-train", "64",
                              "--limit-test", "32", "--device", "cpu", "--no-amp", "--out", str(tmp_path / f"run{stream}")],
                             preexec_fn=lambda: os.close(stream), capture_output=False, timeout=300,
                             stdout=None if stream == 1 else subprocess.PIPE, stderr=None if stream == 2 else subprocess.PIPE)
        assert job.returncode == 0, (stream, job.stdout, job.stderr)
        assert (tmp_path / f"run{stream}" / "best.pt").exists()
    # `engine eval --json >&-`: the JSON, which has no reader, went to stderr among the messages
    job = subprocess.run([sys.executable, "-m", "engine", "eval", str(tmp_path / "run2" / "best.pt"), "--json",
                          "--limit-test", "32", "--device", "cpu"], preexec_fn=lambda: os.close(1), stdout=None,
                         stderr=subprocess.PIPE, text=True, timeout=300)
    assert job.returncode == 0 and '"test_acc"' not in job.stderr, job.stderr
