"""engine.confusion: the matrix against hand counts, its pairs, table and picture; eval's per-class
output (text, --json, --confusion, ONNX); a run's confusion files; --class-weights auto."""

import json
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine.cli import main
from engine.config import Config
from engine.confusion import Confusion, check_png_path, class_weights, columns, fonts_for
from engine.errors import EngineError
from engine.evaluate import evaluate, evaluate_checkpoint
from engine.loader import BatchLoader
from engine.models import build_model
from engine.runtime import Runtime

PNG = b"\x89PNG\r\n\x1a\n"


def three_classes():
    """9 images: cat 1 right of 3, dog 1 of 2, bird 3 of 4."""
    confusion = Confusion(["cat", "dog", "bird"])
    confusion.add(torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2]), torch.tensor([0, 1, 1, 1, 0, 2, 2, 0, 2]))
    return confusion


def test_counts_per_class_figures_and_pairs_by_hand():
    confusion = three_classes()
    assert confusion.counts.tolist() == [[1, 2, 0], [1, 1, 0], [1, 0, 3]]
    assert confusion.images == 9 and confusion.accuracy == pytest.approx(5 / 9)
    rows = {c["class"]: c for c in confusion.per_class()}
    assert rows["cat"]["accuracy"] == pytest.approx(1 / 3) and rows["cat"]["precision"] == pytest.approx(1 / 3)
    assert rows["dog"]["accuracy"] == 0.5 and rows["dog"]["precision"] == pytest.approx(1 / 3)
    assert rows["bird"]["accuracy"] == 0.75 and rows["bird"]["precision"] == 1.0 and rows["bird"]["images"] == 4
    pairs = confusion.most_confused()
    assert [(p["true"], p["predicted"], p["images"]) for p in pairs] == [
        ("cat", "dog", 2), ("dog", "cat", 1), ("bird", "cat", 1)]  # ties: the larger share of its class first
    text = confusion.format()
    assert "  cat -> dog 2 (66.7% of cat)" in text.splitlines() and "bird -> cat 1 (25.0% of bird)" in text
    assert re.search(r"^bird\s+75\.0%\s+100\.0%\s+4$", text, re.M)
    empty = Confusion(["a", "b"])
    empty.add(torch.tensor([0]), torch.tensor([0]))
    assert empty.per_class()[1] == {"class": "b", "images": 0, "accuracy": None, "precision": None}
    assert empty.most_confused() == []


def test_evaluate_counts_the_matrix_of_a_model_on_a_padded_loader():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 4, (37,))
    model = build_model("cifar_cnn", (3, 32, 32), 4)
    loader = BatchLoader(x, y, 16, [0.5] * 3, [0.25] * 3, device="cpu", train=False, channels_last=False)
    runtime = Runtime.from_config(Config(device="cpu", amp=False))
    confusion = Confusion(list("abcd"))
    loss, acc = evaluate(model, loader, runtime, confusion=confusion)
    with torch.no_grad():
        predicted = model((x.float() / 255 - 0.5) / 0.25).argmax(1)
    expected = [[0] * 4 for _ in range(4)]
    for true, guess in zip(y.tolist(), predicted.tolist()):
        expected[true][guess] += 1
    assert confusion.counts.tolist() == expected  # 37 images: the 11 padded rows of the last batch not counted
    assert confusion.images == 37 and confusion.accuracy == pytest.approx(acc)
    assert evaluate(model, loader, runtime) == (loss, acc)  # the plain path gives the same figures


@pytest.mark.slow
@pytest.mark.parametrize("classes", [2, 10, 100])
def test_the_picture_is_a_real_png_of_a_sensible_size(tmp_path, classes):
    names = [f"class{i}" for i in range(classes)]
    confusion = Confusion(names)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (2000,), generator=g)
    confusion.add(y, torch.where(torch.rand(2000, generator=g) < 0.7, y, torch.randint(0, classes, (2000,), generator=g)))
    path = tmp_path / "cm.png"
    confusion.save_png(path, "cifar_cnn on tests")
    assert path.read_bytes()[:8] == PNG and not list(tmp_path.glob(".cm.png.tmp*"))
    width, height = Image.open(path).size
    assert 500 <= min(width, height) and max(width, height) <= 3000  # big enough to read, small enough to open
    if classes == 100:
        assert width > 2000  # 100 class names on each axis need the room
        lines = confusion.format().splitlines()
        assert "... 60 more classes (--json lists them all)" in lines and len(lines) < 50


def test_wide_class_names_keep_the_table_in_columns():
    confusion = Confusion(["猫", "dog", "cafe\u0301", "ねこねこねこ"])  # wide, narrow, combining accent, wider than 8
    confusion.add(torch.tensor([0, 1, 2, 3, 0]), torch.tensor([0, 1, 2, 0, 3]))
    lines = confusion.format().splitlines()[:5]
    assert [columns(line[:line.index("%")]) for line in lines[1:]] == [columns(lines[0][:lines[0].index("accuracy")]) + 6] * 4
    assert columns("猫") == 2 and columns("cafe\u0301") == 4 and columns("ねこねこねこ") == 12


def test_the_picture_draws_each_name_in_an_installed_font_that_has_it(tmp_path):
    families, missing = fonts_for("Ⓐ")  # not in matplotlib's DejaVu Sans; in the STIX fonts it ships
    assert families[0] == "DejaVu Sans" and len(families) == 2 and "STIX" in families[1] and missing == []
    assert fonts_for("plain café") == (["DejaVu Sans"], [])
    said = []
    confusion = Confusion(["Ⓐ", "b"])
    confusion.add(torch.tensor([0, 1]), torch.tensor([0, 0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph drawn as a box would warn
        confusion.save_png(tmp_path / "cm.png", "t", said.append)
    assert said == [] and (tmp_path / "cm.png").read_bytes()[:8] == PNG


def test_names_no_installed_font_has_are_said_once(tmp_path):
    name = "\U00018b00\U000e01ef"  # Khitan, and a variation selector: in no font matplotlib ships
    assert fonts_for(name)[1] == [name[0]]  # the selector is a mark, drawn with the character before it
    said = []
    confusion = Confusion([name, "b"])
    confusion.add(torch.tensor([0, 1]), torch.tensor([0, 1]))
    confusion.save_png(tmp_path / "cm.png", "t", said.append)
    assert len(said) == 1 and name[0] in said[0] and "boxes" in said[0] and (tmp_path / "cm.png").exists()


def test_a_picture_path_is_checked_before_any_work(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    check_png_path(tmp_path / "cm.png")
    for bad, words, code in [(tmp_path / "cm.jpg", "ending in .png", 2), (tmp_path / "nowhere" / "cm.png", "does not exist", 1),
                             (tmp_path / "notes.txt" / "cm.png", "is not a folder", 1), (tmp_path, "ending in .png", 2)]:
        with pytest.raises(EngineError, match=words) as refused:  # a name that is wrong: 2; a folder that is not there: 1
            check_png_path(bad)
        assert refused.value.exit_code == code
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # the probe leaves nothing


def parse_table(text):
    """{class: (accuracy %, precision % or None, images)} from eval's text table."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^(\S+)\s+([\d.]+)%\s+(?:([\d.]+)%|-)\s+([\d,]+)$", line)
        if match:
            rows[match[1]] = (float(match[2]), match[3] and float(match[3]), int(match[4].replace(",", "")))
    return rows


@pytest.mark.slow  # a whole-command integration case: CI runs it (README's test command)
def test_eval_json_holds_the_numbers_the_text_shows(tiny_run, tmp_path, capsys):
    flags = ["--limit-test", "300", "--no-amp", "--device", "cpu"]
    picture = tmp_path / "cm.png"
    assert main(["eval", str(tiny_run[1]), *flags, "--confusion", str(picture)]) == 0
    text = capsys.readouterr().out
    assert picture.read_bytes()[:8] == PNG and f"Wrote {picture} (confusion matrix)" in text
    assert main(["eval", str(tiny_run[1]), *flags, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON object
    first = next(line for line in text.splitlines() if line.startswith("Test_acc"))
    assert first.startswith(f"Test_acc:{record['test_acc'] * 100:.2f}%, Test_loss:{record['test_loss']:.4f} (300 test")
    assert record["images"] == 300 and sum(map(sum, record["matrix"])) == 300 and record["model"] == "cifar_cnn"
    assert record["accuracy"] == pytest.approx(record["test_acc"])
    rows = parse_table(text)
    assert list(rows) == record["classes"]
    for entry, row in zip(record["per_class"], record["matrix"]):
        accuracy, precision, images = rows[entry["class"]]
        assert images == entry["images"] == sum(row)
        assert accuracy == round(entry["accuracy"] * 100, 1)
        assert precision == (round(entry["precision"] * 100, 1) if entry["precision"] is not None else None)
    for pair in record["most_confused"]:
        assert f"{pair['true']} -> {pair['predicted']} {pair['images']:,} ({pair['share'] * 100:.1f}% of" in text


@pytest.mark.slow  # a whole-command integration case: CI runs it (README's test command)
def test_onnx_eval_counts_the_same_matrix_as_the_checkpoint(tiny_run, tiny_onnx):
    from export.evaluate import evaluate_onnx

    flags = {"quiet": True, "limit_test": 500}
    from_checkpoint = evaluate_checkpoint(tiny_run[1], {**flags, "amp": False, "device": "cpu"})["confusion"]
    from_onnx = evaluate_onnx(tiny_onnx, flags, log=lambda *_: None)["confusion"]
    assert from_onnx.classes == from_checkpoint.classes
    assert from_onnx.counts.sum(1).tolist() == from_checkpoint.counts.sum(1).tolist()  # the same images and labels
    moved = int((from_onnx.counts - from_checkpoint.counts).abs().sum()) // 2
    assert moved <= 1  # at most one near-tie of 500 decided otherwise by another float order


def test_a_training_run_writes_its_final_confusion_matrix(tiny_run):
    out, _ = tiny_run
    assert (out / "confusion.png").read_bytes()[:8] == PNG
    record = json.loads((out / "confusion.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(map(sum, record["matrix"])) == record["images"] == 200  # the run's --limit-test
    assert round(record["accuracy"], 5) == metrics[-1]["test_acc"]  # the last epoch's model, evaluated again


def test_inverse_frequency_weights_of_a_90_10_split():
    weights = class_weights(torch.tensor([0] * 90 + [1] * 10), ["many", "few"])
    assert weights.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])  # 0.556 and 5.0
    assert float((weights[torch.tensor([0] * 90 + [1] * 10)]).mean()) == pytest.approx(1.0)  # mean over the images
    assert class_weights(torch.tensor([0, 0, 2, 2]), ["a", "b", "c"]).tolist() == [1.0, 0.0, 1.0]  # b has none


def imbalanced_folder(root, counts, size=32):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", counts), ("test", {name: 4 for name in counts})):
        for name, n in per_class.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_class_weights_auto_weights_the_training_loss(tmp_path):
    from engine.session import open_session
    from engine.train import train_step

    data = imbalanced_folder(tmp_path / "data", {"cats": 90, "dogs": 10})
    said = []
    cfg = Config(data=str(data), cache_dir=str(tmp_path / "cache"), class_weights="auto", batch_size=50, amp=False,
                 device="cpu", out=str(tmp_path / "run"), seed=1)
    s = open_session(cfg, say=said.append)
    try:
        assert s.class_weights.tolist() == pytest.approx([100 / 180, 5.0], rel=1e-6)
        assert any(line.startswith("Class weights: inverse class frequency over the 100 training images") and
                   "from 0.56 (cats) to 5.00 (dogs)" in line for line in said)
        x, y, _ = next(iter(s.train_loader.epoch(0)))
        assert 0 < int((y == 1).sum()) < len(y)  # both classes in the batch: the weights matter
        loss, logits = train_step(s, x, y, 0)  # logits: the model before this step's update
        weighted = F.cross_entropy(logits, y, weight=torch.tensor([100 / 180, 5.0]), label_smoothing=0.1)
        assert float(loss) == pytest.approx(float(weighted), rel=1e-5)
        assert float(loss) != pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=0.1)), rel=1e-3)
    finally:
        s.run.close()
    unweighted = open_session(Config(**{**cfg.to_dict(), "class_weights": "none", "out": str(tmp_path / "run2")}),
                              say=lambda *_: None)
    unweighted.run.close()
    assert unweighted.class_weights is None


@pytest.mark.slow
def test_a_class_weighted_run_keeps_its_choice_in_checkpoints_and_on_resume(tmp_path, capsys):
    from engine.checkpoint import load

    data = imbalanced_folder(tmp_path / "data", {"cats": 90, "dogs": 10})
    out = tmp_path / "run"
    common = ["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "25", "--no-amp"]
    assert main(["train", *common, "--epochs", "1", "--class-weights", "auto", "--out", str(out)]) == 0
    assert "Class weights: inverse class frequency" in capsys.readouterr().out
    assert load(out / "last.pt").config["class_weights"] == "auto"
    assert main(["train", "--resume", str(out), "--class-weights", "none"]) == 2  # the weights are the run's
    assert "--class-weights none differs from its --class-weights auto" in capsys.readouterr().err
    assert main(["train", "--resume", str(out)]) == 0  # nothing left to train; the choice stays
    assert load(out / "last.pt").config["class_weights"] == "auto"


def test_class_names_with_a_newline_or_too_long_for_the_picture_print_on_one_line(tmp_path, recwarn):
    """A class folder named 'a\\nb' split the table's row in two; 250-character names leaked matplotlib's
    'Tight layout not applied' warning onto the terminal."""
    import warnings

    warnings.simplefilter("always")
    names = ["a\nb", "tab\there", "L" * 250]
    matrix = Confusion(names)
    matrix.add(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 2, 2, 1]))
    text = matrix.format()
    assert "a\\nb" in text and "tab\\there" in text and all(not line.startswith("b ") for line in text.splitlines())
    matrix.save_png(tmp_path / "c.png", "title")
    assert (tmp_path / "c.png").stat().st_size > 0
    assert not [w for w in recwarn if "Tight layout" in str(w.message)]
