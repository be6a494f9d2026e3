"""engine.evaluate: loss and accuracy over exactly the real images, and `engine eval`'s config rules."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from engine.config import Config
from engine.evaluate import evaluate, evaluate_checkpoint
from engine.loader import BatchLoader
from engine.models import build_model
from engine.runtime import Runtime
from engine.session import open_session
from engine.train import train


def test_evaluate_equals_a_direct_computation_despite_padding():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (37,))
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    loader = BatchLoader(x, y, 16, [0.5] * 3, [0.25] * 3, device="cpu", train=False, channels_last=False)
    loss, acc = evaluate(model, loader, Runtime.from_config(Config(device="cpu", amp=False)))
    with torch.no_grad():
        logits = model((x.float() / 255 - 0.5) / 0.25)
    assert abs(loss - F.cross_entropy(logits, y).item()) < 1e-5
    assert acc == (logits.argmax(1) == y).sum().item() / 37


@pytest.mark.slow
def test_eval_takes_data_from_the_checkpoint_and_runtime_from_its_own_flags(tmp_path):
    out, _ = train(Config(epochs=1, limit_train=128, limit_test=16, batch_size=32, amp=False, quiet=True,
                          out=str(tmp_path / "run")), log=lambda *_: None)
    result = evaluate_checkpoint(out / "last.pt", {"quiet": True})
    assert result["images"] == 2_000  # the whole synthetic test set, not the run's --limit-test 16
    assert result["data"] == "synthetic" and 0 <= result["test_acc"] <= 1
    subset = evaluate_checkpoint(out / "last.pt", {"quiet": True, "limit_test": 100, "amp": False})
    assert subset["images"] == 100


@pytest.mark.slow
def test_eval_keeps_the_precision_the_run_trained_and_evaluated_in(tmp_path, monkeypatch):
    import json

    out, _ = train(Config(epochs=1, limit_train=128, limit_test=64, batch_size=32, amp=False, quiet=True,
                          out=str(tmp_path / "run")), log=lambda *_: None)
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    monkeypatch.setenv("ENGINE_CPU_BF16", "1")  # a CPU where eval would pick bf16 autocast by default
    said = []
    again = evaluate_checkpoint(out / "last.pt", {"limit_test": 64}, log=said.append)
    assert any(line.startswith("Precision: fp32, as the run trained and evaluated") for line in said), said
    assert again["test_loss"] == pytest.approx(logged["test_loss"], abs=1e-5)  # metrics.jsonl keeps 5 decimals
    assert again["test_acc"] == pytest.approx(logged["test_acc"], abs=1e-5)
    said.clear()
    asked = evaluate_checkpoint(out / "last.pt", {"limit_test": 64, "amp_dtype": "bf16"}, log=said.append)
    assert not any(line.startswith("Precision:") for line in said)  # a flag given is obeyed
    assert asked["test_loss"] != again["test_loss"]  # bf16 autocast rounds differently


@pytest.mark.slow
def test_eval_with_triton_matches_eager(tmp_path):
    pytest.importorskip("triton")
    out, _ = train(Config(epochs=1, limit_train=256, limit_test=16, batch_size=32, amp=False, quiet=True,
                          out=str(tmp_path / "run")), log=lambda *_: None)
    flags = {"quiet": True, "limit_test": 24, "batch_size": 8, "amp": False}
    fused = evaluate_checkpoint(out / "last.pt", {**flags, "triton": True})
    eager = evaluate_checkpoint(out / "last.pt", flags)
    assert fused["images"] == eager["images"] == 24
    assert fused["test_loss"] == pytest.approx(eager["test_loss"], rel=1e-5)
    assert fused["test_acc"] == eager["test_acc"]


def test_tta_evaluation_is_the_mean_of_the_image_and_mirror_logits():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (21, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (21,))
    model = build_model("fast_cifar", (3, 32, 32), 10).eval()
    loader = BatchLoader(x, y, 8, [0.5] * 3, [0.25] * 3, device="cpu", train=False, channels_last=False)
    runtime = Runtime.from_config(Config(device="cpu", amp=False))
    loss, acc = evaluate(model, loader, runtime, tta=True)
    with torch.no_grad():
        normalised = (x.float() / 255 - 0.5) / 0.25
        logits = (model(normalised) + model(normalised.flip(3))) / 2
    assert abs(loss - F.cross_entropy(logits, y).item()) < 1e-5
    assert acc == (logits.argmax(1) == y).sum().item() / 21
    plain_loss, _ = evaluate(model, loader, runtime)
    assert abs(plain_loss - F.cross_entropy(model(normalised), y).item()) < 1e-5 and plain_loss != loss


@pytest.mark.slow
def test_eval_tta_is_off_unless_asked(tmp_path):
    out, _ = train(Config(epochs=1, limit_train=128, limit_test=16, batch_size=32, amp=False, quiet=True, tta=True,
                          out=str(tmp_path / "run")), log=lambda *_: None)
    flags = {"quiet": True, "limit_test": 50, "amp": False}
    assert evaluate_checkpoint(out / "last.pt", flags)["tta"] == 0  # the run's --tta is not eval's
    with_tta = evaluate_checkpoint(out / "last.pt", {**flags, "tta": True})  # on/off as before the levels: level 1
    assert with_tta["tta"] == 1 and with_tta["images"] == 50


def shifted(x, dy, dx):
    """x (B, C, H, W) moved by (dy, dx) pixels, the border filled by reflection, written out index by
    index (the specification `tta_views` must match)."""
    H, W = x.shape[2:]
    reflect = lambda i, n: abs(i) if i < 0 else 2 * (n - 1) - i if i >= n else i  # noqa: E731
    rows = torch.tensor([reflect(i - dy, H) for i in range(H)])
    cols = torch.tensor([reflect(j - dx, W) for j in range(W)])
    return x[:, :, rows][:, :, :, cols]


def test_tta_level_2_is_airbench_s_weighted_mean_of_six_views():
    """1/4 each for the image and its mirror, 1/8 each for the 1-pixel up-left and down-right
    translations and their mirrors; a model that is neither flip- nor translation-invariant."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 9 * 11, 5)).eval()
    x = torch.randn(4, 3, 9, 11)
    from engine.evaluate import predict

    with torch.no_grad():
        views = [x, x.flip(3), shifted(x, 1, 1), shifted(x, 1, 1).flip(3), shifted(x, -1, -1), shifted(x, -1, -1).flip(3)]
        expected = sum(w * model(v) for w, v in zip([1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8], views))
        got = predict(model, x, 2)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(got, predict(model, x, 1), atol=1e-3)  # the translations count
        torch.testing.assert_close(predict(model, x, 1), (model(x) + model(x.flip(3))) / 2)
        assert torch.equal(predict(model, x, 0), model(x))


def test_every_tta_view_has_the_batch_s_shape_and_memory_format():
    """A compiled model compiles once: each view it is given looks like the batch itself."""
    from engine.evaluate import predict

    seen = []

    class Record(torch.nn.Module):
        def forward(self, x):
            seen.append((tuple(x.shape), x.stride()))
            return x.mean((2, 3))

    for fmt in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(5, 3, 8, 8).contiguous(memory_format=fmt)
        seen.clear()
        predict(Record(), x, 2)
        assert len(seen) == 6 and set(seen) == {(tuple(x.shape), x.stride())}


def test_tta_levels_in_the_config_and_the_command_line():
    from engine.cli import build_parser
    from engine.errors import UsageError

    parse = lambda *flags: vars(build_parser().parse_args(["eval", "x.pt", *flags])).get("tta")  # noqa: E731
    assert (parse("--tta"), parse("--tta", "2"), parse("--no-tta"), parse()) == (1, 2, 0, None)
    assert Config(tta=True).tta == 1 and Config(tta=False).tta == 0  # configs saved before the levels
    with pytest.raises(UsageError, match="--tta must be one of 0, 1, 2, not 3"):
        Config(tta=3)
    with pytest.raises(UsageError, match="invalid choice"):
        parse("--tta", "4")


@pytest.mark.slow
def test_a_run_evaluates_at_its_eval_batch_with_the_training_batch_s_figures(tmp_path):
    """The eval loader's batch is --batch-size, or --eval-batch-size when given, and an evaluation
    at either gives the same figures: every image once, padding ignored."""
    values = dict(limit_train=256, limit_test=300, batch_size=32, amp=False, quiet=True, device="cpu")
    s = open_session(Config(out=str(tmp_path / "default"), **values), say=lambda *_: None)
    assert s.test_loader.batch_size == 32 and len(s.test_loader) == 10  # the last of 12 real images, padded
    given = open_session(Config(out=str(tmp_path / "given"), eval_batch_size=150, **values), say=lambda *_: None)
    assert given.test_loader.batch_size == 150 and len(given.test_loader) == 2
    huge = open_session(Config(out=str(tmp_path / "huge"), eval_batch_size=10**9, **values), say=lambda *_: None)
    assert huge.test_loader.batch_size == 300 and len(huge.test_loader) == 1  # no 10**9-image padded batch
    small = evaluate(s.model, s.test_loader, s.runtime)
    large = evaluate(s.model, given.test_loader, given.runtime)
    assert large[1] == small[1] and large[0] == pytest.approx(small[0], rel=1e-5)  # fp32: rounding only


@pytest.mark.slow
def test_eval_batch_size_is_a_flag_of_train_and_eval_and_refuses_zero(tmp_path):
    for command in ("train", "eval"):
        shown = subprocess.run([sys.executable, "-m", "engine", command, "--help"], capture_output=True, text=True)
        assert "--eval-batch-size N" in shown.stdout
    refused = subprocess.run([sys.executable, "-m", "engine", "train", "--eval-batch-size", "0", "--out", str(tmp_path / "r")],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--eval-batch-size must be a whole number of at least 1" in refused.stderr
    assert not (tmp_path / "r").exists()


def test_data_with_a_class_the_model_lacks_names_it():
    from types import SimpleNamespace

    from engine.errors import EngineError
    from engine.eval_data import labels_for

    trained = [f"c{i:02d}" for i in range(60)]
    data = SimpleNamespace(shape=(3, 8, 8), classes=trained[:59] + ["c99"], test_y=torch.tensor([0, 59]))
    with pytest.raises(EngineError, match=r"60 classes \(c00, c01, c02, c03, \.\.\.\); it has classes the model was not "
                                          r"trained on: c99$"):
        labels_for("best.pt", (3, 8, 8), trained, data, "other/")
    subset = SimpleNamespace(shape=(3, 8, 8), classes=["c05", "c01"], test_y=torch.tensor([0, 1, 1]))
    assert labels_for("best.pt", (3, 8, 8), trained, subset, "other/").tolist() == [5, 1, 1]  # matched by name


def test_images_of_another_size_get_the_resize_hint_only_where_it_helps(tmp_path):
    from types import SimpleNamespace

    from engine.errors import EngineError
    from engine.eval_data import labels_for

    trained = ["cat", "dog"]
    same_classes = SimpleNamespace(shape=(3, 40, 40), classes=["dog"], test_y=torch.tensor([0]))
    with pytest.raises(EngineError, match="; --image-size 32x32 resizes them to the model's$"):
        labels_for("best.pt", (3, 32, 32), trained, same_classes, str(tmp_path))  # a folder: --image-size applies
    with pytest.raises(EngineError, match=r"has 3x40x40 images of 1 class \(dog\)$"):
        labels_for("best.pt", (3, 32, 32), trained, same_classes, "synthetic")  # a built-in set has its own size


def test_tta_on_data_that_does_not_flip_is_said_not_ignored():
    from types import SimpleNamespace

    from engine.evaluate import tta_level, tta_note

    grey, colour = SimpleNamespace(flip=False), SimpleNamespace(flip=True)
    assert tta_level(Config(tta=1), grey) == 0
    assert tta_note(Config(tta=1), grey).startswith("--tta 1: this data does not train with flips")
    assert tta_note(Config(tta=2), colour) is None and tta_note(Config(tta=0), grey) is None


def png_folder(root, gray, seed=0):
    """train/ and test/ of two classes of 32x32 PNGs, gray or the same pixels as RGB (R = G = B)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", 24), ("test", 8)):
        for label, name in enumerate(("dark", "light")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                v = (rng.integers(0, 120, (32, 32)) + label * 120).astype(np.uint8)
                Image.fromarray(v if gray else np.dstack([v, v, v])).save(folder / f"{i}.png")
    return root


def colour_copies(source, root, seed=1):
    """`source`'s test/ PNGs tinted with random colour (root/colour), and those converted by PIL to
    gray (root/gray), as engine predict converts a colour photo for a model of gray images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for path in sorted((source / "test").rglob("*.png")):
        v = np.asarray(Image.open(path).convert("L")).astype(np.int64)
        tinted = np.clip(v[..., None] + rng.integers(-60, 60, (*v.shape, 3)), 0, 255).astype(np.uint8)
        for kind, image in (("colour", Image.fromarray(tinted)), ("gray", Image.fromarray(tinted).convert("L"))):
            out = root / kind / path.relative_to(source / "test")
            out.parent.mkdir(parents=True, exist_ok=True)
            image.save(out)
    return root / "colour", root / "gray"


@pytest.mark.slow
def test_gray_photos_evaluate_on_a_colour_model_as_their_rgb_copy_and_the_reverse_as_their_luma(tmp_path):
    rgb, gray = png_folder(tmp_path / "rgb", gray=False), png_folder(tmp_path / "gray", gray=True)
    flags = dict(epochs=1, batch_size=16, amp=False, quiet=True, device="cpu", cache_dir=str(tmp_path / "cache"))
    out, _ = train(Config(data=str(rgb), out=str(tmp_path / "run"), **flags), log=lambda *_: None)
    said = []
    on_gray = evaluate_checkpoint(out / "best.pt", {"data": str(gray / "test"), "amp": False,
                                                    "cache_dir": flags["cache_dir"]}, log=said.append)
    on_rgb = evaluate_checkpoint(out / "best.pt", {"data": str(rgb / "test"), "amp": False,
                                                   "cache_dir": flags["cache_dir"]}, log=lambda *_: None)
    assert (on_gray["test_loss"], on_gray["test_acc"]) == (on_rgb["test_loss"], on_rgb["test_acc"])
    assert any(line.startswith("Gray images, read as RGB (R = G = B)") for line in said)
    said.clear()
    evaluate_checkpoint(out / "best.pt", {"data": str(rgb / "test"), "resize": "crop", "cache_dir": flags["cache_dir"]},
                        log=said.append)
    assert any("--resize crop: images of another size are fitted otherwise than in training (--resize stretch)" in line
               for line in said)
    said.clear()  # the second read comes from the decode cache, whose Data line counts the images
    evaluate_checkpoint(out / "best.pt", {"data": str(gray / "test"), "cache_dir": flags["cache_dir"]}, log=said.append)
    assert any(line.startswith(f"Data: {gray / 'test'} (16 images, all evaluated, decoded earlier") for line in said)
    grey_run, _ = train(Config(data=str(gray), out=str(tmp_path / "grun"), **flags), log=lambda *_: None)
    colour, converted = colour_copies(gray, tmp_path / "tinted")
    said.clear()
    on_colour = evaluate_checkpoint(grey_run / "best.pt", {"data": str(colour), "cache_dir": flags["cache_dir"]},
                                    log=said.append)
    on_converted = evaluate_checkpoint(grey_run / "best.pt", {"data": str(converted), "cache_dir": flags["cache_dir"]},
                                       log=lambda *_: None)
    assert (on_colour["test_loss"], on_colour["test_acc"]) == (on_converted["test_loss"], on_converted["test_acc"])
    assert on_colour["confusion"].counts.tolist() == on_converted["confusion"].counts.tolist()
    assert any(line.startswith("Colour images, read as gray (PIL's luma)") for line in said)


def test_another_test_split_of_the_runs_own_images_is_warned_about(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(("dark", "light")):
        (tmp_path / "flat" / name).mkdir(parents=True)
        for i in range(20):
            Image.fromarray((rng.integers(0, 120, (32, 32)) + label * 120).astype(np.uint8)).save(tmp_path / "flat" / name / f"{i}.png")
    flags = dict(amp=False, quiet=True, device="cpu", cache_dir=str(tmp_path / "cache"))
    out, _ = train(Config(data=str(tmp_path / "flat"), out=str(tmp_path / "run"), epochs=1, batch_size=8, **flags),
                   log=lambda *_: None)
    capsys.readouterr()
    for same in ("10%", 0.1):  # the run's own split, as the command line or as a fraction
        evaluate_checkpoint(out / "best.pt", {"test_split": same, **flags}, log=lambda *_: None)
        assert capsys.readouterr().err == ""
    evaluate_checkpoint(out / "best.pt", {"test_split": "50%", **flags}, log=lambda *_: None)
    err = capsys.readouterr().err
    assert "--test-split 50% splits" in err and "(--test-split 10%, seed 0): the test images include images it trained on" in err


def test_the_runs_own_data_gone_is_one_line_saying_where_the_path_came_from(tmp_path):
    import shutil

    from engine.errors import EngineError

    rgb = png_folder(tmp_path / "photos", gray=False)
    flags = dict(epochs=1, batch_size=16, amp=False, quiet=True, device="cpu", cache_dir=str(tmp_path / "cache"))
    out, _ = train(Config(data=str(rgb), out=str(tmp_path / "run"), **flags), log=lambda *_: None)
    shutil.rmtree(rgb)
    with pytest.raises(EngineError, match=f"best.pt was trained on {rgb}, which is not there any more; pass --data"):
        evaluate_checkpoint(out / "best.pt", {}, log=lambda *_: None)


@pytest.mark.slow
def test_the_runs_own_images_moved_elsewhere_score_the_images_it_held_out(tmp_path, capsys):
    """--data naming the run's images at another path read them whole, most of them trained on (a
    model that memorised noise scored 90% where its held-out accuracy was 50%). Split as the run
    split them they give its data fingerprint: its held-out images are scored, said in one line."""
    import shutil

    from export.evaluate import evaluate_onnx
    from export.onnx_export import export_onnx

    rgb = png_folder(tmp_path / "photos", gray=False)
    shutil.rmtree(rgb / "test")  # a flat folder of classes: the run holds out --test-split of them
    for name in ("dark", "light"):
        shutil.move(rgb / "train" / name, rgb / name)
    (rgb / "train").rmdir()
    flags = dict(amp=False, quiet=True, device="cpu", cache_dir=str(tmp_path / "cache"))
    out, _ = train(Config(data=str(rgb), out=str(tmp_path / "run"), epochs=1, batch_size=8, test_split="25%",
                          seed=3, **flags), log=lambda *_: None)
    export_onnx(tmp_path / "m.onnx", out / "best.pt", log=lambda *_: None)
    own = evaluate_checkpoint(out / "best.pt", {}, log=lambda *_: None)
    moved = rgb.rename(tmp_path / "moved")
    lines = []
    other = evaluate_checkpoint(out / "best.pt", {"data": str(moved), **flags, "quiet": False}, log=lines.append)
    assert other["images"] == own["images"] == 12 and other["test_loss"] == pytest.approx(own["test_loss"])
    assert any(f"{moved} holds the images" in line and "scoring the 12 test images its run held out (--test-split 25%), "
               "not all 48" in line for line in lines), lines
    lines.clear()  # again, from the decode cache, which says what it read: not "all evaluated", which it was not
    evaluate_checkpoint(out / "best.pt", {"data": str(moved), **flags, "quiet": False}, log=lines.append)
    assert not any("all evaluated" in line for line in lines) and any("decoded earlier" in line for line in lines), lines
    onnx = evaluate_onnx(tmp_path / "m.onnx", {"data": str(moved), "quiet": True, "cache_dir": flags["cache_dir"]},
                         log=lambda *_: None)
    assert onnx["images"] == 12
    whole = evaluate_checkpoint(out / "best.pt", {"data": str(moved), "test_split": "all", **flags}, log=lambda *_: None)
    assert whole["images"] == 48  # asked for


def test_a_run_on_an_archive_is_recognised_in_its_folder_extracted_and_re_archived_in_another_order(tmp_path):
    """`tar czf` stores files in the order the file system lists them, and extracting sorts nothing:
    the same images reach the engine in another order. Each class's images are stacked in the order of
    their names, so the archive, its folder and a zip of it in reverse order split alike and give one
    fingerprint: the run's held-out images are scored wherever its images went."""
    import shutil
    import tarfile
    import zipfile

    from engine.data import load_dataset
    from engine.resume import data_fingerprint

    rgb = png_folder(tmp_path / "photos", gray=False, seed=5)
    shutil.rmtree(rgb / "test")
    files = sorted(p for p in rgb.rglob("*.png"))
    shuffled = [files[i] for i in torch.randperm(len(files), generator=torch.Generator().manual_seed(1))]
    with tarfile.open(tmp_path / "photos.tar.gz", "w:gz") as archive:  # members in no order
        for path in shuffled:
            archive.add(path, arcname=path.relative_to(rgb).as_posix())
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as archive:  # members in reverse order
        for path in reversed(files):
            archive.write(path, arcname=path.relative_to(rgb).as_posix())
    flags = dict(amp=False, quiet=True, device="cpu", cache_dir=str(tmp_path / "cache"))
    split = dict(test_split="25%", seed=3)
    sets = [load_dataset(Config(data=str(source), **split, **flags), lambda *_: None)
            for source in (tmp_path / "photos.tar.gz", rgb, tmp_path / "photos.zip")]
    assert all(torch.equal(s.train_x, sets[0].train_x) and torch.equal(s.test_x, sets[0].test_x) for s in sets)
    assert len({str(data_fingerprint(s)) for s in sets}) == 1
    out, _ = train(Config(data=str(tmp_path / "photos.tar.gz"), out=str(tmp_path / "run"), epochs=1, batch_size=8,
                          **split, **flags), log=lambda *_: None)
    own = evaluate_checkpoint(out / "best.pt", {}, log=lambda *_: None)
    for source in (rgb, tmp_path / "photos.zip"):
        lines = []
        other = evaluate_checkpoint(out / "best.pt", {"data": str(source), **flags, "quiet": False}, log=lines.append)
        assert other["images"] == own["images"] == 12 and other["test_loss"] == pytest.approx(own["test_loss"])
        assert any("holds the images" in line and "moved or copied" in line for line in lines), lines


def test_the_runs_images_under_other_class_names_are_not_called_the_runs(tmp_path):
    """The fingerprint digests pixels and label numbers, not names: a copy with its classes renamed
    matched it and was said to hold the run's images, a line before the refusal of its classes."""
    import shutil

    from engine.errors import EngineError

    rgb = png_folder(tmp_path / "photos", gray=False, seed=2)
    shutil.rmtree(rgb / "test")
    flags = dict(amp=False, quiet=True, device="cpu", cache_dir=str(tmp_path / "cache"))
    out, _ = train(Config(data=str(rgb), out=str(tmp_path / "run"), epochs=1, batch_size=8, test_split="25%", **flags),
                   log=lambda *_: None)
    renamed = shutil.copytree(rgb, tmp_path / "renamed")
    for old, new in (("dark", "dim"), ("light", "lit")):  # in the same order: the same label numbers
        (renamed / "train" / old).rename(renamed / "train" / new)
    lines = []
    with pytest.raises(EngineError, match="classes the model was not trained on"):
        evaluate_checkpoint(out / "best.pt", {"data": str(renamed), **flags, "quiet": False}, log=lines.append)
    assert not any("holds the images" in line for line in lines), lines
    copied = shutil.copytree(rgb, tmp_path / "copied")  # the same names: still recognised
    lines.clear()
    evaluate_checkpoint(out / "best.pt", {"data": str(copied), **flags, "quiet": False}, log=lines.append)
    assert any("holds the images" in line for line in lines), lines


@pytest.mark.slow
def test_the_runs_own_data_changed_is_named_as_the_runs_not_as_a_flag_never_given(tmp_path):
    """engine eval CKPT with no --data reads the run's own folder: where it now holds another class or
    another size, the one line names that path as the run's data, not as '--data PATH'."""
    import numpy as np
    from PIL import Image

    rgb = png_folder(tmp_path / "photos", gray=False)
    cache = str(tmp_path / "cache")
    out, _ = train(Config(data=str(rgb), out=str(tmp_path / "run"), epochs=1, batch_size=16, amp=False, quiet=True,
                          device="cpu", cache_dir=cache), log=lambda *_: None)
    for split in ("train", "test"):  # a third class added to the run's folder since it trained
        (rgb / split / "mid").mkdir()
        for i in range(4):
            Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(rgb / split / "mid" / f"{i}.png")
    result = subprocess.run([sys.executable, "-m", "engine", "eval", str(out / "best.pt"), "--device", "cpu",
                             "--cache-dir", cache], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error == (f"engine: error: {out / 'best.pt'} was trained on 3x32x32 images of 2 classes (dark, light), but "
                     f"its data {rgb} now has 3x32x32 images of 3 classes (dark, light, mid); it has classes the model "
                     "was not trained on: mid"), error
    assert "Traceback" not in result.stderr
    given = subprocess.run([sys.executable, "-m", "engine", "eval", str(out / "best.pt"), "--device", "cpu",
                            "--cache-dir", cache, "--data", str(rgb / "test")], capture_output=True, text=True, timeout=300)
    assert given.returncode == 1 and f"but --data {rgb / 'test'} has 3x32x32 images of 3 classes" in given.stderr


def test_a_class_that_differs_from_the_models_only_in_case_or_spaces_is_shown_so():
    from types import SimpleNamespace

    from engine.errors import EngineError
    from engine.eval_data import labels_for

    data = SimpleNamespace(shape=(3, 8, 8), classes=["Cat", "dog ", "frog"], test_y=torch.tensor([0, 1, 2]))
    with pytest.raises(EngineError, match=r"; it has classes the model was not trained on: Cat \(the model has 'cat'\), "
                                          r"'dog ' \(the model has 'dog'\)$"):
        labels_for("best.pt", (3, 8, 8), ["cat", "dog", "frog"], data, "other/")


def test_a_forward_that_drops_a_single_image_s_batch_evaluates_at_batch_1():
    """`.squeeze()` gives (classes,) for one image: `engine eval --batch-size 1` was torch's 'Expected floating
    point type for target with class probabilities', a traceback."""

    class Squeezes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 10)

        def forward(self, x):
            return self.head(F.adaptive_avg_pool2d(x, 1).squeeze())

    torch.manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (5,))
    model = Squeezes()
    runtime = Runtime.from_config(Config(device="cpu", amp=False))
    one = BatchLoader(x, y, 1, [0.5] * 3, [0.25] * 3, device="cpu", train=False, channels_last=False)
    five = BatchLoader(x, y, 5, [0.5] * 3, [0.25] * 3, device="cpu", train=False, channels_last=False)
    loss, acc = evaluate(model, one, runtime)
    assert (loss, acc) == pytest.approx(evaluate(model, five, runtime), abs=1e-6)


@pytest.mark.slow
def test_the_runs_own_data_path_now_a_file_is_not_named_as_a_flag_never_given(tmp_path):
    import shutil

    from engine.errors import EngineError

    rgb = png_folder(tmp_path / "photos", gray=False)
    flags = dict(epochs=1, batch_size=16, amp=False, quiet=True, device="cpu", cache_dir=str(tmp_path / "cache"))
    out, _ = train(Config(data=str(rgb), out=str(tmp_path / "run"), **flags), log=lambda *_: None)
    shutil.rmtree(rgb)
    rgb.write_text("a note where the photos were")
    with pytest.raises(EngineError) as error:
        evaluate_checkpoint(out / "best.pt", {}, log=lambda *_: None)
    assert str(error.value) == f"{rgb} is not a directory or a .tar, .tar.gz or .zip archive of an image folder"
