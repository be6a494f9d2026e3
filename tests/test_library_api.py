"""The library called from Python gets the command line's rules: wrong types are one UsageError naming
the field, a module passed to train() ends trained and must be what its checkpoint rebuilds, the
evaluations refuse what they do not take, and a call leaves the caller's process as it found it."""

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import load
from engine.config import Config
from engine.errors import UsageError
from engine.evaluate import evaluate_checkpoint
from engine.train import train

TINY = dict(epochs=1, limit_train=64, limit_test=32, batch_size=16, amp=False, quiet=True, device="cpu")
NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    """conv -> ReLU -> max-pool: the engine trains it reordered (a traced copy)."""

    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(width * 16 * 16, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Scaled(nn.Module):
    """A temperature that changes no weight's shape: only the logits tell it apart."""

    def __init__(self, num_classes=10, temperature=1.0):
        super().__init__()
        self.conv, self.head, self.temperature = nn.Conv2d(3, 4, 3), nn.Linear(4, num_classes), temperature

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3))) / self.temperature


class Plain(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 32 * 32, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "api_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("api_nets", None)
    import api_nets

    yield api_nets
    sys.modules.pop("api_nets", None)


@pytest.mark.parametrize("values, message", [
    (dict(compile="False"), "--compile must be True or False, not 'False'"),
    (dict(quiet="no"), "--quiet must be True or False"),
    (dict(lr="0.1"), "--lr must be a number, not '0.1'"),
    (dict(lr=None), "--lr must be a number, not None"),
    (dict(epochs=None), "--epochs must be a whole number, not None"),
    (dict(epochs=True), "--epochs must be a whole number, not True"),
    (dict(tta=1.0), "--tta must be a whole number"),
    (dict(target_acc="80"), r"--target-acc must be a number \(or None\)"),
    (dict(data_dir=None), "--data-dir must be a string, not None"),
    (dict(freeze=[1]), "--freeze must be a string"),
])
def test_a_value_of_the_wrong_type_is_one_usage_error_naming_the_field(values, message):
    with pytest.raises(UsageError, match=message):
        Config(**values)


def test_the_natural_python_forms_are_taken_as_the_command_lines(tmp_path):
    cfg = Config(data=tmp_path, out=tmp_path / "run", image_size=(24, 32), val_split=10, save_every=600,
                 model="torchvision:resnet18", model_args={"zero_init_residual": True}, freeze=["conv1", "layer1"])
    assert (cfg.data, cfg.out) == (str(tmp_path), str(tmp_path / "run"))
    assert (cfg.image_size, cfg.val_split, cfg.save_every) == ("24x32", "10", "600")
    assert json.loads(cfg.model_args) == {"zero_init_residual": True} and cfg.freeze == "conv1,layer1"
    json.dumps(cfg.to_dict())  # what config.json and the checkpoint store
    numpy = Config(epochs=np.int64(3), lr=np.float32(0.1), ema=np.float64(0.9), amp=np.bool_(False))
    assert (numpy.epochs, numpy.lr, numpy.ema, numpy.amp) == (3, 0.1, 0.9, False)
    assert [type(v) for v in (numpy.epochs, numpy.lr, numpy.amp)] == [int, float, bool]
    with pytest.raises(UsageError, match="--epochs must be a whole number"):
        Config(epochs=np.float64(3.0))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Net", "Plain"])
def test_the_module_passed_ends_holding_the_runs_weights_in_its_own_format(nets, tmp_path, name):
    net = getattr(nets, name)()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out, _ = train(Config(**TINY, out=str(tmp_path / "run")), model=net, log=lambda *_: None)
    saved = load(out / "last.pt").model
    assert all(torch.equal(net.state_dict()[k], saved[k]) for k in saved)
    assert any(not torch.equal(before[k], saved[k]) for k in saved)
    assert all(p.is_contiguous() for p in net.parameters())  # not left channels_last by the run


@pytest.mark.slow
def test_a_module_its_checkpoint_cannot_rebuild_is_refused_before_any_work(nets, tmp_path):
    with pytest.raises(UsageError, match=r"features.0.weight is \(16, 3, 3, 3\) in yours, \(8, 3, 3, 3\) rebuilt"):
        train(Config(**TINY, out=str(tmp_path / "a")), model=nets.Net(width=16), log=lambda *_: None)
    assert not (tmp_path / "a").exists()
    code = f"{Path(nets.__file__)}:Net"
    out, _ = train(Config(**TINY, out=str(tmp_path / "b"), model=code, model_args={"width": 16}),
                   model=nets.Net(width=16), log=lambda *_: None)
    assert load(out / "best.pt").ref.args == {"width": 16}
    result = evaluate_checkpoint(out / "best.pt", {"limit_test": 32}, log=lambda *_: None, model=code)
    assert result["images"] == 32  # rebuilt with its recorded arguments, no --model-args needed


@pytest.mark.slow
def test_an_argument_that_changes_no_shape_is_not_lost(nets, tmp_path):
    with pytest.raises(UsageError, match=r"your api_nets.py:Scaled computes other logits than its checkpoint would "
                                         r"rebuild, Scaled\(\), with your weights in it"):
        train(Config(**TINY, out=str(tmp_path / "a")), model=nets.Scaled(temperature=0.05), log=lambda *_: None)
    code = f"{Path(nets.__file__)}:Scaled"
    out, _ = train(Config(**TINY, out=str(tmp_path / "b"), model=code, model_args={"temperature": 0.05}),
                   model=nets.Scaled(temperature=0.05), log=lambda *_: None)
    assert load(out / "best.pt").ref.args == {"temperature": 0.05}


SCRIPT = """
import sys

import torch
from torch import nn

from engine.config import Config
from engine.train import train

print("SCRIPT BODY", flush=True)


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x):
        return self.head(x.mean((2, 3)))


{call}
"""


@pytest.mark.slow
@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_training_its_own_class_is_imported_once_and_guarded(tmp_path, guarded):
    """A checkpoint reloads a script's class by importing the script: an unguarded train() there would
    run again on that import (it recursed about 90 times); a guarded script's body runs once here."""
    import subprocess

    call = "train(Config(epochs=1, limit_train=64, limit_test=32, batch_size=32, amp=False, quiet=True, out=sys.argv[1]), model=Net())"
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(call=f'if __name__ == "__main__":\n    {call}' if guarded else call))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.stdout.count("SCRIPT BODY") == 1, done.stdout
    if guarded:
        assert done.returncode == 0 and (tmp_path / "run" / "best.pt").exists(), done.stderr
    else:
        assert done.returncode == 1 and "script.py calls train() at its top level (line 22)" in done.stderr
        assert 'put it under if __name__ == "__main__":' in done.stderr and not (tmp_path / "run").exists()


def test_arguments_of_the_wrong_kind_are_one_line(nets, tmp_path):
    for model, said in ((nets.Net, "not the class Net"), ("api_nets.py:Net", "not a str")):
        with pytest.raises(UsageError, match=f"train\\(model=...\\) takes a module you built.*{said}"):
            train(Config(**TINY), model=model)
    with pytest.raises(UsageError, match=r"Config\(model='fast_cifar'\) and train\(model=...\) name different networks"):
        train(Config(**TINY, model="fast_cifar"), model=nets.Net(), log=lambda *_: None)
    with pytest.raises(UsageError, match="takes the Checkpoint that engine.resume.resume_config"):
        train(Config(**TINY), resume=str(tmp_path))
    with pytest.raises(UsageError, match=r"returns \(2, 3\) .* 10 classes \(build it with 10 outputs, e.g. Net\(num_classes=10\)\)$"):
        train(Config(**TINY, out=str(tmp_path / "c")), model=nets.Net(num_classes=3), log=lambda *_: None)


@pytest.mark.slow
def test_a_call_leaves_the_callers_generator_dtype_and_environment_as_they_were(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    torch.set_default_dtype(torch.float64)
    try:
        out, metrics = train(Config(**TINY, out=str(tmp_path / "run")), log=lambda *_: None)
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    assert torch.equal(torch.rand(3), expected)  # the run's seeding did not replace the caller's stream
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ and metrics[0]["test_acc"] >= 0
    _, again = train(Config(**TINY, out=str(tmp_path / "again")), log=lambda *_: None)
    assert again[0]["test_acc"] == metrics[0]["test_acc"]  # float64 as the default changed nothing in the run


def test_a_call_under_no_grad_trains_and_leaves_gradients_off(tmp_path):
    """`with torch.no_grad(): train(...)` (or torch.set_grad_enabled(False) earlier in a notebook) ended
    in torch's 'element 0 of tensors does not require grad' traceback: training turns them on for
    the run and puts the caller's mode back."""
    with torch.no_grad():
        _, metrics = train(Config(**TINY, out=str(tmp_path / "run")), log=lambda *_: None)
        assert not torch.is_grad_enabled()
    assert metrics[0]["train_loss"] > 0 and torch.is_grad_enabled()


def test_evaluations_refuse_what_they_do_not_take(tmp_path, tiny_run, tiny_onnx, nets):
    from export.evaluate import evaluate_onnx
    from export.onnx_export import export_onnx

    with pytest.raises(UsageError, match=r"evaluate_checkpoint takes no limt_test"):
        evaluate_checkpoint(tiny_run[1], {"limt_test": 3})
    with pytest.raises(UsageError, match="evaluate_checkpoint takes no model_args"):
        evaluate_checkpoint(tiny_run[1], {"model_args": '{"width": 16}'})
    with pytest.raises(UsageError, match="evaluate_onnx takes no limt_test"):
        evaluate_onnx(tiny_onnx, {"limt_test": 3})
    with pytest.raises(UsageError, match="--tta applies to PyTorch checkpoints"):
        evaluate_onnx(tiny_onnx, {"tta": 1})
    assert evaluate_onnx(tiny_onnx, {"tta": 0, "amp": False, "quiet": True, "limit_test": 8})["images"] == 8  # what it does anyway
    with pytest.raises(UsageError, match=r"evaluate_checkpoint\(model=...\) names the checkpoint's code as text"):
        evaluate_checkpoint(tiny_run[1], {}, model=nets.Net())
    with pytest.raises(UsageError, match=r"export_onnx\(model=...\) names the checkpoint's code as text"):
        export_onnx(tmp_path / "m.onnx", tiny_run[1], model=nets.Net)
    with pytest.raises(UsageError, match="--opset must be a whole number, not '18'"):
        export_onnx(tmp_path / "m.onnx", tiny_run[1], opset="18")
    for name in ("verify", "int8"):
        with pytest.raises(UsageError, match=f"export_onnx's {name} must be True or False, not 'False'"):
            export_onnx(tmp_path / "m.onnx", tiny_run[1], **{name: "False"})
    with pytest.raises(UsageError, match=r"--image-size 16 fits the images to 16x16, but .* takes 32x32: give "
                                         r"--image-size 32x32"):
        evaluate_checkpoint(tiny_run[1], {"image_size": 16})
    with pytest.raises(UsageError, match="takes 32x32"):
        evaluate_onnx(tiny_onnx, {"image_size": "16x16"})
    assert not (tmp_path / "m.onnx").exists()  # nothing written by any refusal



def test_numpy_values_are_stored_as_python_ones_so_checkpoints_stay_weights_only(tmp_path):
    cfg = Config(**TINY, lr=np.float64(0.05), optimizer=np.str_("sgd"), image_size=np.int64(32), out=str(tmp_path / "r"))
    assert (type(cfg.lr), type(cfg.optimizer), cfg.image_size) == (float, str, "32")
    assert (Config(test_split=0.1).test_split, Config(val_split=0.2).val_split) == ("10%", "20%")
    assert Config(image_size=np.array([24, 32])).image_size == "24x32"
    with pytest.raises(UsageError, match="--test-split takes a percentage such as '10%' or a fraction such as 0.1"):
        Config(test_split=20)
    out, _ = train(dataclasses.replace(cfg, image_size=None), log=lambda *_: None)
    assert load(out / "last.pt").config["lr"] == 0.05  # a weights-only load reads it back


def test_a_lazy_module_trains_from_python_as_from_the_command_line(tmp_path):
    class_source = (tmp_path / "lazy_nets.py")
    class_source.write_text("from torch import nn\n\n\nclass LazyNet(nn.Sequential):\n"
                            "    def __init__(self, num_classes=10):\n"
                            "        super().__init__(nn.LazyConv2d(4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(num_classes))\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import lazy_nets

        net = lazy_nets.LazyNet()
        out, _ = train(Config(**TINY, out=str(tmp_path / "run")), model=net, log=lambda *_: None)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("lazy_nets", None)
    saved = load(out / "last.pt").model
    assert all(torch.equal(net.state_dict()[k], saved[k]) for k in saved)


@pytest.mark.slow
def test_a_config_naming_other_code_than_the_module_passed_is_refused(nets, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "nets2.py").write_text("from torch import nn\n\n\nclass Net(nn.Linear):\n    pass\n")
    for named in (f"{other / 'nets2.py'}:Net", "elsewhere.nets:Net", "fast_cifar"):
        with pytest.raises(UsageError, match="name different networks"):
            train(Config(**TINY, model=named), model=nets.Net(), log=lambda *_: None)
    out, _ = train(Config(**TINY, model="api_nets:Net", out=str(tmp_path / "ok")), model=nets.Net(), log=lambda *_: None)
    assert out.is_dir()  # its own module, named as a module, is the same code


def test_a_class_typed_into_a_notebook_is_named_again_by_its_file_not_by_main():
    from engine.models.reference import ModelRef, parse_model, reopen

    saved = ModelRef("module", "MainNet", "__main__")
    with pytest.raises(UsageError, match=r"name it again: --model FILE.py:MainNet \(the file that defines it\)$"):
        reopen(saved, None, "best.pt")
    with pytest.raises(UsageError, match=r"not torchvision:resnet18; pass --model FILE.py:MainNet"):
        reopen(saved, parse_model("torchvision:resnet18"), "best.pt")
