"""File and folder names that are not UTF-8 (Linux allows any bytes; Python reads them with
surrogate escapes): an image folder holding them is read, cached and pictured like any other."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from engine.confusion import Confusion
from engine.data.imagefolder import read, source_key

QUIET = {"log": lambda *_: None}


def undecodable(*parts):
    """A path from raw bytes, as os.listdir would give it back (b'\\xe9' is Latin-1's e-acute)."""
    return os.fsdecode(os.path.join(*parts))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    for c, name in enumerate([b"b", b"\xe9t\xe9"]):  # a class folder named in Latin-1, not UTF-8
        where = undecodable(os.fsencode(root), name)
        os.makedirs(where)
        for k in range(4):
            Image.fromarray(np.full((8, 8, 3), 40 * c + k, np.uint8)).save(os.path.join(where, f"{k}.png"))
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(undecodable(os.fsencode(root), b"b", b"\xff\xfe.png"))
    return root


def test_a_folder_with_names_that_are_not_utf8_is_read_and_cached(tmp_path, folder):
    key = source_key(folder)
    assert key == source_key(folder) and len(key) == 20
    data = read(folder, tmp_path / "cache", test_split="20%", **QUIET)
    assert data.classes == ["b", "\udce9t\udce9"]
    assert len(data.train_x) + len(data.test_x) == 9
    again = read(folder, tmp_path / "cache", test_split="20%", **QUIET)  # from the cache
    assert torch.equal(again.train_x[:], data.train_x[:])


def test_the_confusion_picture_takes_a_title_with_a_name_that_is_not_utf8(tmp_path):
    confusion = Confusion(["b", "\udce9t\udce9"])
    confusion.add(torch.tensor([0, 1]), torch.tensor([0, 1]))
    path = tmp_path / "cm.png"
    confusion.save_png(path, "net on bad\udcffdir after epoch 1")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


NET = '''import torch.nn as nn


def net(num_classes):  # torch's forward: see the note on the test below
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''


def test_a_model_file_and_data_under_names_that_are_not_utf8_train_export_and_evaluate(tmp_path, folder, monkeypatch):
    """(A forward defined in such a file cannot be exported: the next test.)"""
    from engine.config import Config
    from engine.train import train
    from export.evaluate import evaluate_onnx
    from export.onnx_export import export_onnx
    from export.session import load_checked

    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    code = undecodable(os.fsencode(tmp_path), b"m\xffdels")
    os.makedirs(code)
    with open(os.path.join(code, "nets.py"), "w") as f:
        f.write(NET)
    out, _ = train(Config(model=f"{code}/nets.py:net", data=str(folder), test_split="20%", epochs=1, batch_size=2,
                          amp=False, device="cpu", quiet=True, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache")),
                   log=lambda *_: None)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(onnx_path, out / "best.pt", log=lambda *_: None, model=f"{code}/nets.py:net")
    props = {p.key: p.value for p in load_checked(str(onnx_path)).metadata_props}
    assert "m\\udcffdels" in props["model"] and props["classes"] == '["b", "\\udce9t\\udce9"]'
    result = evaluate_onnx(onnx_path, {}, log=lambda *_: None)
    assert result["images"] == 2


def test_a_forward_defined_under_a_name_that_is_not_utf8_is_one_line_naming_its_file(tmp_path):
    """torch.onnx writes each node's stack trace, file names included, into the ONNX file, and refuses
    a name that is not UTF-8: the export says so and names the file, instead of a codec's message."""
    from engine.errors import EngineError
    from engine.models.reference import parse_model
    from engine.models.user_code import load_code
    from export.onnx_export import to_onnx

    code = undecodable(os.fsencode(tmp_path), b"m\xffdels")
    os.makedirs(code)
    with open(os.path.join(code, "nets.py"), "w") as f:
        f.write("import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.conv = nn.Conv2d(3, 2, 3)\n\n    def forward(self, x):\n        return self.conv(x).mean((2, 3))\n")
    net = load_code(parse_model(f"{code}/nets.py:Net"))()  # the class, loaded as the engine loads it
    with pytest.raises(EngineError, match=r"source file names .* not UTF-8: .*m\\udcffdels/nets.py; move"):
        to_onnx(net.eval(), torch.zeros(1, 3, 8, 8), tmp_path / "m.onnx")
