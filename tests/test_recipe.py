"""engine.recipe: a model's recipe fills only the flags not given (through the real CLI), and a fresh
run whitens fast_cifar's stem from its training images while a resume keeps the checkpoint's."""

import json

import pytest
import torch

from engine.checkpoint import load
from engine.cli import main
from engine.config import Config
from engine.models import MODELS, build_model
from engine.recipe import apply_recipe, whitening_images
from engine.session import open_session

SMALL = ["--limit-train", "128", "--limit-test", "32", "--epochs", "1", "--device", "cpu", "--no-amp"]


def saved_config(out):
    return json.loads((out / "config.json").read_text())["config"]


@pytest.mark.slow
def test_a_recipe_fills_only_the_flags_not_given(tmp_path, capsys):
    out = tmp_path / "fast"
    assert main(["train", "--model", "fast_cifar", *SMALL, "--batch-size", "32", "--lr", "0.1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    recipe = MODELS["fast_cifar"].recipe
    cfg = saved_config(out)
    assert cfg["batch_size"] == 32 and cfg["lr"] == 0.1  # given: the user's
    for name in set(recipe) - {"batch_size", "lr"}:
        assert cfg[name] == recipe[name], name  # not given: the recipe's
    line = next(line for line in printed if line.startswith("Recipe for fast_cifar:"))
    assert "--label-smoothing 0.2" in line and "--tta 1" in line and "--lr" not in line and "--batch-size" not in line
    assert load(out / "last.pt").config["label_smoothing"] == recipe["label_smoothing"]  # and in the checkpoint

    plain = tmp_path / "plain"
    assert main(["train", "--model", "cifar_cnn", *SMALL, "--out", str(plain)]) == 0
    assert not any(line.startswith("Recipe") for line in capsys.readouterr().out.splitlines())
    assert saved_config(plain)["label_smoothing"] == Config().label_smoothing  # no recipe: the defaults


def test_the_python_api_uses_exactly_its_config():
    assert apply_recipe({"model": "cifar_cnn"}, say=print) == {"model": "cifar_cnn"}
    assert Config(model="fast_cifar").label_smoothing == 0.1  # Config itself knows no recipes
    said = []
    values = apply_recipe({"model": "fast_cifar", "tta": False}, say=said.append)
    assert values["tta"] is False and values["label_smoothing"] == 0.2 and len(said) == 1


@pytest.mark.slow
def test_a_fresh_run_whitens_the_stem_and_a_resume_does_not(tmp_path):
    cfg = Config(model="fast_cifar", epochs=1, limit_train=96, limit_test=32, batch_size=32, amp=False, device="cpu",
                 quiet=True, out=str(tmp_path / "run"))
    s = open_session(cfg, say=lambda *_: None)
    expected = build_model("fast_cifar", (3, 32, 32), 10)
    train_x = s.train_loader.x
    expected.init_from_data(whitening_images(train_x, s.spec, cfg.seed))
    stem = s.model.stem[0].weight
    assert torch.equal(stem, expected.stem[0].weight) and not stem.requires_grad
    assert not torch.equal(stem, build_model("fast_cifar", (3, 32, 32), 10).stem[0].weight)  # not the random init
    s.run.close()

    from engine.train import train

    out, _ = train(Config(**{**cfg.to_dict(), "out": str(tmp_path / "trained")}), log=lambda *_: None)
    checkpoint = load(out / "last.pt")
    assert "stem.0.weight" in checkpoint.frozen
    checkpoint.model["stem.0.weight"] = checkpoint.model["stem.0.weight"] * 2  # not what whitening gives
    resumed = open_session(Config.from_dict(checkpoint.config), resume=checkpoint, say=lambda *_: None)
    assert torch.equal(resumed.model.stem[0].weight, checkpoint.model["stem.0.weight"])  # the checkpoint's
    assert not resumed.model.stem[0].weight.requires_grad  # frozen again, as in the fresh run
    resumed.run.close()


def test_models_without_a_data_init_are_left_alone(tmp_path):
    cfg = Config(epochs=1, limit_train=64, limit_test=32, batch_size=32, amp=False, device="cpu", quiet=True,
                 out=str(tmp_path / "run"))
    said = []
    s = open_session(cfg, say=said.append)
    assert not any(line.startswith("Initialised") for line in said)
    assert all(p.requires_grad for p in s.model.parameters())
    s.run.close()


def test_fast_cifar94_s_lr_follows_a_batch_size_given():
    """airbench's lr is a rate per image: at --batch-size 250 the recipe's 1.66 (for 2,000) would overshoot 8x."""
    from engine.recipe import apply_recipe

    said = []
    own = apply_recipe({"model": "fast_cifar94"}, say=said.append)
    assert own["batch_size"] == 2000 and own["lr"] == pytest.approx(0.67 * 2000 * (9 / 256) ** 2)
    smaller = apply_recipe({"model": "fast_cifar94", "batch_size": 250}, say=said.append)
    assert smaller["lr"] == pytest.approx(own["lr"] / 8) and "--lr 0.207" in said[-1]
    assert apply_recipe({"model": "fast_cifar94", "batch_size": 250, "lr": 0.9}, say=said.append)["lr"] == 0.9  # given
