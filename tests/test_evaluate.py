"""engine.evaluate: loss and accuracy over exactly the real images, and `engine eval`'s config rules."""

import pytest
import torch
import torch.nn.functional as F

from engine.config import Config
from engine.evaluate import evaluate, evaluate_checkpoint
from engine.loader import BatchLoader
from engine.models import build_model
from engine.runtime import Runtime
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


def test_eval_takes_data_from_the_checkpoint_and_runtime_from_its_own_flags(tmp_path):
    out, _ = train(Config(epochs=1, limit_train=128, limit_test=16, batch_size=32, amp=False, quiet=True,
                          out=str(tmp_path / "run")), log=lambda *_: None)
    result = evaluate_checkpoint(out / "last.pt", {"quiet": True})
    assert result["images"] == 2_000  # the whole synthetic test set, not the run's --limit-test 16
    assert result["data"] == "synthetic" and 0 <= result["test_acc"] <= 1
    subset = evaluate_checkpoint(out / "last.pt", {"quiet": True, "limit_test": 100, "amp": False})
    assert subset["images"] == 100


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


def test_eval_tta_is_off_unless_asked(tmp_path):
    out, _ = train(Config(epochs=1, limit_train=128, limit_test=16, batch_size=32, amp=False, quiet=True, tta=True,
                          out=str(tmp_path / "run")), log=lambda *_: None)
    flags = {"quiet": True, "limit_test": 50, "amp": False}
    assert evaluate_checkpoint(out / "last.pt", flags)["tta"] is False  # the run's --tta is not eval's
    with_tta = evaluate_checkpoint(out / "last.pt", {**flags, "tta": True})
    assert with_tta["tta"] is True and with_tta["images"] == 50
