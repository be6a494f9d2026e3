"""A colour photo reaches a model of gray images the same way through `engine eval` as through
`engine predict`: converted to gray (PIL's luma) before it is fitted to the model's size, not fitted in
colour and converted after (bicubic's overshoot, clipped per channel, then differs by up to 20/255)."""

import numpy as np
import pytest
from PIL import Image

from engine.config import Config
from engine.evaluate import evaluate_checkpoint
from engine.train import train


def grey_folder(root, rng):
    for label, name in enumerate(("dark", "light")):
        for split, count in (("train", 12), ("test", 2)):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                v = (rng.integers(0, 120, (int(rng.integers(12, 40)), int(rng.integers(12, 40)))) + label * 120)
                Image.fromarray(v.astype(np.uint8)).save(root / split / name / f"{i}.png")


def colour_and_its_grey(root, rng):
    """Colour noise of very different aspect ratios (and one smaller than the size), and PIL's gray copy of each."""
    for label, name in enumerate(("dark", "light")):
        for i, (w, h) in enumerate(((400, 50), (50, 400), (7, 5), (37, 64))):
            pixels = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
            for kind, image in (("colour", Image.fromarray(pixels)), ("gray", Image.fromarray(pixels).convert("L"))):
                (root / kind / name).mkdir(parents=True, exist_ok=True)
                image.save(root / kind / name / f"{i}.png")
    return root / "colour", root / "gray"


@pytest.mark.slow
@pytest.mark.parametrize("resize", ["stretch", "crop"])
def test_colour_photos_on_a_gray_model_evaluate_as_their_gray_copies(tmp_path, resize):
    rng = np.random.default_rng(0)
    grey_folder(tmp_path / "g", rng)
    flags = dict(epochs=1, batch_size=8, amp=False, quiet=True, device="cpu", cache_dir=str(tmp_path / "cache"))
    out, _ = train(Config(data=str(tmp_path / "g"), out=str(tmp_path / "run"), image_size="24x40", resize=resize,
                          **flags), log=lambda *_: None)
    colour, gray = colour_and_its_grey(tmp_path / "photos", rng)
    said = []
    on_colour = evaluate_checkpoint(out / "best.pt", {"data": str(colour), "cache_dir": flags["cache_dir"]},
                                    log=said.append)
    on_gray = evaluate_checkpoint(out / "best.pt", {"data": str(gray), "cache_dir": flags["cache_dir"]},
                                  log=lambda *_: None)
    assert on_colour["test_loss"] == on_gray["test_loss"]
    assert any(line.startswith("Colour images, read as gray (PIL's luma)") for line in said)
    if resize == "crop":  # the exported file alike, and as engine predict (export.load) scores each photo
        import export
        from export.evaluate import evaluate_onnx
        from export.onnx_export import export_onnx

        export_onnx(tmp_path / "m.onnx", out / "best.pt", verify=False, log=lambda *_: None)
        cached = {"cache_dir": flags["cache_dir"]}
        onnx_colour = evaluate_onnx(tmp_path / "m.onnx", {"data": str(colour), **cached}, log=lambda *_: None)
        onnx_gray = evaluate_onnx(tmp_path / "m.onnx", {"data": str(gray), **cached}, log=lambda *_: None)
        assert onnx_colour["test_loss"] == onnx_gray["test_loss"]
        files = sorted(colour.rglob("*.png"))
        logits = export.load(tmp_path / "m.onnx", device="cpu").logits(files).astype(np.float64)
        labels = np.array([0 if f.parent.name == "dark" else 1 for f in files])
        shifted = logits - logits.max(1, keepdims=True)
        loss = -(shifted - np.log(np.exp(shifted).sum(1, keepdims=True)))[np.arange(len(files)), labels].mean()
        assert abs(onnx_colour["test_loss"] - loss) < 1e-6
