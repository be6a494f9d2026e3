"""Class folders named with dollar signs ('cost $5 to $10', 'a$\\frac{$b'): matplotlib read them as TeX, so
the confusion picture drew a price in math italics, or raised ParseSyntaxException, a traceback at the end
of every training run (its confusion.png never written) and from engine eval --confusion."""

import numpy as np
import torch
from PIL import Image

from engine.confusion import Confusion


def test_class_names_with_dollar_signs_draw_as_written(tmp_path):
    classes = ["cost $5 to $10", "a$\\frac{$b", "x^2 $_$"]
    confusion = Confusion(classes)
    confusion.add(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 0]))
    confusion.save_png(tmp_path / "cm.png", "mlp on $HOME$/photos $\\alpha")
    with Image.open(tmp_path / "cm.png") as picture:
        assert picture.size[0] > 100 and np.asarray(picture.convert("L")).min() < 128
