"""confusion.png drew every class: with 2,000 classes the picture took about 30 s (one thread) to draw
4,000 tick labels no screen can read. Over PICTURE_CLASSES classes it draws the classes with the most
errors, in class order, and its title says so; confusion.json keeps the whole matrix."""

import torch
from PIL import Image

from engine import confusion as module
from engine.confusion import Confusion


def confusion_with_errors(k, errors):
    """A Confusion of k classes, 10 right images each, with errors[(true, predicted)] = images."""
    counts = torch.eye(k, dtype=torch.int64) * 10
    for (i, j), n in errors.items():
        counts[i, j] = n
    return Confusion([f"c{i}" for i in range(k)], counts=counts)


def test_up_to_the_limit_every_class_is_drawn():
    c = confusion_with_errors(module.PICTURE_CLASSES, {(3, 4): 2})
    assert c.pictured().tolist() == list(range(module.PICTURE_CLASSES))


def test_over_the_limit_the_classes_with_the_most_errors_are_drawn_in_class_order():
    c = confusion_with_errors(2000, {(1500, 7): 9, (30, 1999): 5, (12, 13): 1, (400, 400): 50})
    assert c.pictured(4).tolist() == [7, 30, 1500, 1999]  # errors as the true class and as the prediction
    assert c.pictured(5).tolist() == [7, 12, 30, 1500, 1999]  # a tie (12 and 13, one error each): the first
    assert len(c.pictured()) == module.PICTURE_CLASSES


def test_the_picture_of_many_classes_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(module, "PICTURE_CLASSES", 6)  # drawn as 100 of 2,000 would be, quicker
    c = confusion_with_errors(40, {(1, 2): 3, (5, 9): 4})
    c.save_png(tmp_path / "cm.png", "net on data", say=lambda *_: None)
    assert Image.open(tmp_path / "cm.png").format == "PNG"
    assert c.to_dict()["matrix"] == c.counts.tolist()  # the JSON keeps every class
