"""engine.models.reference: the four --model forms, references as data, code imported only when named."""

import sys

import pytest
import torch
from torch import nn

from engine.errors import EngineError, UsageError
from engine.models.build import build
from engine.models.probe import check_fits
from engine.models.reference import ModelRef, parse_model, reference_of, reopen
from engine.models.user_code import load_code

TUTORIAL = """
import torch
from torch import nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 15 * 15, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(x, 1))


class Sized(nn.Module):
    def __init__(self, num_classes, in_channels=3, width=4):
        super().__init__()
        self.width = width
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


class Timm(nn.Module):
    def __init__(self, n_classes, in_chans=3):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.head = nn.Linear(4, n_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def make(num_classes, in_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes))
"""


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(TUTORIAL)
    return path


def test_the_four_forms_parse_without_importing_user_code(nets, tmp_path):
    assert parse_model("cifar_cnn") == ModelRef("builtin", "cifar_cnn")
    assert parse_model("torchvision:resnet18", '{"zero_init_residual": true}').args == {"zero_init_residual": True}
    ref = parse_model(f"{nets}:Net")
    assert ref.kind == "file" and ref.file == str(nets.resolve()) and len(ref.sha256) == 64
    assert parse_model("mypkg.nets:Net") == ModelRef("module", "Net", "mypkg.nets")  # not imported: no such package
    (tmp_path / "marker.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w').close()\n")
    parse_model(f"{tmp_path / 'marker.py'}:Net")
    assert not (tmp_path / "RAN").exists()


@pytest.mark.parametrize("text, args, words", [
    ("vgg", None, "unknown model 'vgg'"),
    ("torchvision:nope", None, "torchvision has no classification model 'nope'"),
    ("torchvision:fasterrcnn_resnet50_fpn", None, "no classification model"),  # a detection model
    ("os:system", None, "os:system is not model code"),
    ("subprocess.run:x", None, "not model code"),
    (":Net", None, "no file or module before ':'"),
    ("cifar_cnn", '{"width": 2}', "the built-in cifar_cnn takes none"),
    ("torchvision:resnet18", "{width", "must be a JSON object"),
    ("torchvision:resnet18", "[1, 2]", "must be a JSON object"),
    ("torchvision:resnet18", '{"weights": "DEFAULT"}', "cannot set torchvision:resnet18's weights: .* --init-from PATH"),
    ("torchvision:resnet18", '{"zero_init_residual": NaN}', r"not .*NaN is not a JSON number"),
    ("torchvision:resnet18", '{"x": [1, -Infinity]}', r"-Infinity is not a JSON number"),
    ("torchvision:resnet18", {"x": {"y": float("nan")}}, r"--model-args 'x' is \{'y': nan\}: give finite numbers"),
])
def test_bad_references_are_one_line(text, args, words):
    with pytest.raises(UsageError, match=words):
        parse_model(text, args)


def test_a_model_file_that_is_not_there_is_a_missing_file_exit_1_as_for_data():
    with pytest.raises(EngineError, match="no such file absent.py") as missing:
        parse_model("absent.py:Net")
    assert missing.value.exit_code == 1


def test_constructors_get_classes_and_shape_by_name_and_model_args_win(nets):
    sized = build(parse_model(f"{nets}:Sized", '{"width": 6}'), (1, 20, 24), 5)
    assert sized.width == 6 and sized.conv.in_channels == 1 and sized.head.out_features == 5
    timm = build(parse_model(f"{nets}:Timm"), (1, 8, 8), 3)  # the class count and channels as other code names them
    assert timm.conv.in_channels == 1 and timm.head.out_features == 3
    made = build(parse_model(f"{nets}:make"), (3, 8, 8), 4)  # a function returning a module
    assert made(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
    with pytest.raises(UsageError, match=r"--model-args do not fit Net\(\): it takes no argument 'depth'"):
        build(parse_model(f"{nets}:Net", '{"depth": 2}'), (3, 32, 32), 10)


def test_a_constructor_that_needs_arguments_says_how_to_give_them(tmp_path):
    (tmp_path / "wide.py").write_text("from torch import nn\n\n\nclass Wide(nn.Module):\n"
                                      "    def __init__(self, width, num_classes):\n        super().__init__()\n")
    with pytest.raises(UsageError, match=r"Wide\(width, num_classes\) needs arguments the engine cannot give \(missing "
                                         r"a required argument: 'width'\); pass them as JSON: --model-args"):
        build(parse_model(f"{tmp_path / 'wide.py'}:Wide"), (3, 8, 8), 4)
    (tmp_path / "named.py").write_text("from torch import nn\n\n\nclass Named(nn.Module):\n"
                                       "    def __init__(self, classes, *, depth, width=8):\n        super().__init__()\n")
    with pytest.raises(UsageError) as error:  # a class count by a name the engine does not pass: shown with the data's count
        build(parse_model(f"{tmp_path / 'named.py'}:Named"), (3, 8, 8), 4)
    assert str(error.value).endswith("""--model-args '{"classes": 4, "depth": VALUE}' (for 4 classes)""")


def test_a_constructor_with_positional_only_parameters_gets_them_by_position(tmp_path):
    (tmp_path / "pos.py").write_text("from torch import nn\n\n\nclass Pos(nn.Module):\n"
                                     "    def __init__(self, num_classes, in_channels=3, /, width=4):\n"
                                     "        super().__init__()\n        self.conv = nn.Conv2d(in_channels, width, 3)\n"
                                     "        self.head = nn.Linear(width, num_classes)\n\n"
                                     "    def forward(self, x):\n        return self.head(self.conv(x).mean((2, 3)))\n")
    model = build(parse_model(f"{tmp_path / 'pos.py'}:Pos", '{"width": 6}'), (1, 8, 8), 5)
    assert model.conv.in_channels == 1 and model.conv.out_channels == 6 and model.head.out_features == 5


def test_torchvision_s_init_warning_is_not_shown(recwarn):
    build(parse_model("torchvision:googlenet", '{"aux_logits": false}'), (3, 32, 32), 10)
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)], [str(w.message) for w in recwarn]


def test_a_model_that_does_not_fit_the_data_is_one_line_before_any_work(nets):
    with pytest.raises(UsageError, match=r"nets.py:Net returns \(2, 10\) for a batch of 2, not .* \(2, 7\)"):
        build(parse_model(f"{nets}:Net"), (3, 32, 32), 7)  # a tutorial net hard-wired to 10 classes
    with pytest.raises(UsageError, match="nets.py:Net cannot take 3x16x16 images: its forward raised RuntimeError"):
        build(parse_model(f"{nets}:Net"), (3, 16, 16), 10)
    with pytest.raises(UsageError, match=r"Net.forward is a method of the class Net; name the class \(nets.py:Net\)"):
        build(parse_model(f"{nets}:Net.forward"), (3, 32, 32), 10)


MISSES = """
import torch
from torch import nn


class Outer:
    class Inner(nn.Module):
        def forward(self, x):
            return x

    @staticmethod
    def make(num_classes=10):
        return Odd(num_classes, shape="all")


class Odd(nn.Module):
    def __init__(self, num_classes=10, shape="none"):
        super().__init__()
        self.fc, self.shape = nn.Linear(3, num_classes), shape

    def forward(self, x):
        logits = self.fc(x.mean((2, 3)))
        if self.shape == "none":
            return None
        return logits[:1] if self.shape == "first" or (self.shape == "eval" and not self.training) else logits
"""


def test_outputs_and_names_that_miss_get_the_hint_that_fits(tmp_path):
    """A forward returning None, one row for the batch, a shape right only in training mode, and a
    nested class's method: each line says what is wrong with that model, not another's fix."""
    (tmp_path / "misses.py").write_text(MISSES)
    odd = tmp_path / "misses.py"
    with pytest.raises(UsageError, match=r"returns a NoneType in training mode, not a tensor of logits \(does its "
                                         r"forward end without a return\?\)$"):
        build(parse_model(f"{odd}:Odd"), (3, 8, 8), 10)
    with pytest.raises(UsageError, match=r"returns \(1, 10\) for a batch of 2, not .* \(its forward must keep the batch "
                                         r"dimension: one row of logits per image\)$"):
        build(parse_model(f"{odd}:Odd", '{"shape": "first"}'), (3, 8, 8), 10)
    with pytest.raises(UsageError, match=r"returns \(1, 10\) for a batch of 2 in evaluation mode, not"):
        build(parse_model(f"{odd}:Odd", '{"shape": "eval"}'), (3, 8, 8), 10)
    with pytest.raises(UsageError, match=r"Outer.Inner.forward is a method of the class Outer.Inner; name the class "
                                         r"\(misses.py:Outer.Inner\)"):
        build(parse_model(f"{odd}:Outer.Inner.forward"), (3, 8, 8), 10)
    assert build(parse_model(f"{odd}:Outer.make"), (3, 8, 8), 10)(torch.zeros(2, 3, 8, 8)).shape == (2, 10)


KWARGS = """
from torch import nn


class Net(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, kw.get("num_classes", 10))

    def forward(self, x):
        return self.fc(x.flatten(1))


class Ignores(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""


def test_a_class_count_that_is_not_the_data_s_says_what_to_pass_by_how_the_constructor_takes_it(tmp_path):
    """A **kwargs-only constructor gets no num_classes (the engine passes it only by name): the line gives
    the --model-args to pass, not 'give its constructor a num_classes argument', which it already takes."""
    (tmp_path / "nets.py").write_text(KWARGS)
    net = f"{tmp_path / 'nets.py'}:Net"
    with pytest.raises(UsageError) as error:
        build(parse_model(net), (3, 8, 8), 3)
    assert str(error.value) == (
        "nets.py:Net returns (2, 10) for a batch of 2, not (batch, classes) = (2, 3) for 3 classes (Net(**kw) takes "
        "num_classes only through **kw, and the engine passes the class count only to a parameter of that name: "
        """pass --model-args '{"num_classes": 3}')""")
    with pytest.raises(UsageError) as error:  # a count given through --model-args, with other arguments kept
        build(parse_model(net, '{"num_classes": 10, "width": 2}'), (3, 8, 8), 3)
    assert str(error.value).endswith("""(--model-args gives Net(**kw) num_classes 10, not the data's 3: pass """
                                     """--model-args '{"num_classes": 3, "width": 2}')""")
    assert build(parse_model(net, '{"num_classes": 3}'), (3, 8, 8), 3).fc.out_features == 3  # the advice works
    with pytest.raises(UsageError, match=r"\(the engine passed num_classes=3; its output does not follow it\)$"):
        build(parse_model(f"{tmp_path / 'nets.py'}:Ignores"), (3, 8, 8), 3)


ODD = """
import torch
from torch import nn


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def logits(self, x):
        return self.fc(x.flatten(1))


class IntLogits(Linear):
    def forward(self, x):
        return self.logits(x).long()


class Double(Linear):
    def forward(self, x):
        return self.logits(x).double()


class TupleWhenEvaluating(Linear):
    def forward(self, x):
        y = self.logits(x)
        return y if self.training else (y, y)


class Segmentation(Linear):
    def forward(self, x):
        return {"out": self.logits(x)}


class Named(Linear):
    def forward(self, x):
        import collections

        return collections.namedtuple("Out", "logits")(self.logits(x))


class AllFrozen(Linear):
    def __init__(self):
        super().__init__()
        self.fc.requires_grad_(False)

    def forward(self, x):
        return self.logits(x)


class NoParameters(nn.Module):
    def forward(self, x):
        return x.mean((2, 3)).repeat(1, 2)[:, :4]


class Norm1d(Linear):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.norm(self.logits(x))


class InPlace(Linear):
    def forward(self, x):
        y = torch.sigmoid(self.logits(x))
        y.mul_(2)  # sigmoid saved its output for the backward
        return y


class Untrainable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2


class Detached(Linear):
    def forward(self, x):
        return self.logits(x).detach()


class Float64(Linear):
    def __init__(self):
        super().__init__()
        self.double()

    def forward(self, x):
        return self.logits(x)


class NoBackward(Linear):
    def forward(self, x):
        return Untrainable.apply(self.logits(x))


class Float64Inside(Linear):
    def __init__(self):
        super().__init__()
        self.double()

    def forward(self, x):
        return self.logits(x.double()).float()  # float32 logits: it would train, in float64, and not export


class Windows(nn.Module):  # a window partition, as torchvision's maxvit_t: 16-pixel windows, torch's own words
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        b, c, h, w = x.shape
        return self.fc(x.reshape(b, c, h // 16, 16, w // 16, 16).mean((2, 3, 4, 5)))
"""


@pytest.mark.parametrize("name, words", [
    ("IntLogits", "odd.py:IntLogits returns int64 logits in training mode; return float32 logits"),
    ("Double", "odd.py:Double returns float64 logits in training mode; return float32 logits"),
    ("TupleWhenEvaluating", "odd.py:TupleWhenEvaluating returns a tuple in evaluation mode, not a tensor of logits"),
    ("Named", "odd.py:Named returns an Out in training mode, not a tensor of logits"),
    ("Segmentation", r"odd.py:Segmentation returns a dict in training mode, not a tensor of logits \(return the logits "
                     r"tensor itself"),
    ("AllFrozen", r"odd.py:AllFrozen has no parameter to train \(all 772 have requires_grad False\)"),
    ("NoParameters", r"odd.py:NoParameters has no parameter to train \(it has none\)"),
    ("InPlace", r"odd.py:InPlace: its backward \(a training step's gradient\) raised RuntimeError: one of the variables "
                r"needed for gradient computation has been modified by an inplace operation: .*; write the in-place op"),
    ("NoBackward", r"odd.py:NoBackward: its backward \(a training step's gradient\) raised NotImplementedError"),
    ("Detached", r"odd.py:Detached's logits depend on no trainable parameter \(detached, or computed under"),
    ("Float64", r"odd.py:Float64 cannot take 3x8x8 images: .*; its parameters are float64, and the engine feeds float32"),
    ("Float64Inside", r"odd.py:Float64Inside's parameters are float64; the engine trains float32 models and exports "
                      r"them as float32"),
    ("Windows", r"odd.py:Windows cannot take 3x8x8 images: its forward raised RuntimeError \(line \d+\): shape .* is "
                r"invalid .*; the images are too small for this network, which runs on 3x224x224 images"),
])
def test_a_model_that_could_not_train_or_evaluate_is_one_line_before_any_work(tmp_path, name, words):
    (tmp_path / "odd.py").write_text(ODD)
    with pytest.raises(UsageError, match=words):
        build(parse_model(f"{tmp_path / 'odd.py'}:{name}"), (3, 8, 8), 4, batch=8)  # to train: its backward is probed too


@pytest.mark.parametrize("name", ["AllFrozen", "NoParameters", "Float64Inside"])
def test_what_only_training_needs_is_not_asked_of_a_model_that_is_only_summarised(tmp_path, name):
    (tmp_path / "odd.py").write_text(ODD)
    model = build(parse_model(f"{tmp_path / 'odd.py'}:{name}"), (3, 8, 8), 4)  # engine summary: no batch, no training
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 4)


def test_images_too_small_are_said_only_where_larger_ones_would_run(nets):
    with pytest.raises(UsageError, match="cannot take 3x16x16 images") as wrong:
        build(parse_model(f"{nets}:Net"), (3, 16, 16), 10)  # its head is wired to 32-pixel images, not larger ones
    assert "too small" not in str(wrong.value)


def test_the_probe_runs_at_batch_1_for_a_run_of_batch_1(tmp_path):
    (tmp_path / "odd.py").write_text(ODD)
    ref = parse_model(f"{tmp_path / 'odd.py'}:Norm1d")
    assert build(ref, (3, 8, 8), 4, batch=32)(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
    with pytest.raises(UsageError, match="odd.py:Norm1d cannot take 3x8x8 images: its forward in training mode at "
                                         "--batch-size 1 raised ValueError .*Expected more than 1 value per channel"):
        build(ref, (3, 8, 8), 4, batch=1)  # BatchNorm1d cannot train on one image at a time


def test_the_probe_changes_no_statistics_and_no_random_state(nets):
    model = build(parse_model(f"{nets}:Net"), (3, 32, 32), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    check_fits(model, parse_model(f"{nets}:Net"), (3, 32, 32), 10)  # its backward too: no gradient left behind
    assert torch.equal(torch.get_rng_state(), state) and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm's running stats too


def test_torchvision_models_fit_grey_images_and_small_vits():
    grey = build(parse_model("torchvision:resnet18"), (1, 28, 28), 10)
    assert grey.conv1.in_channels == 1 and grey(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(UsageError, match="takes square images"):
        build(parse_model("torchvision:vit_b_16"), (3, 32, 48), 10)


def test_num_classes_in_model_args_wins_for_torchvision_as_for_a_users_constructor():
    """--model-args '{"num_classes": K}' used to give get_model num_classes twice (a TypeError line)."""
    model = build(parse_model("torchvision:resnet18", '{"num_classes": 10, "zero_init_residual": true}'), (3, 32, 32), 10)
    assert model.fc.out_features == 10 and torch.all(model.layer1[0].bn2.weight == 0)
    with pytest.raises(UsageError, match=r"returns \(2, 5\) .*for 10 classes \(--model-args sets num_classes"):
        build(parse_model("torchvision:resnet18", '{"num_classes": 5}'), (3, 32, 32), 10)


def test_stored_references_are_checked_as_data_and_refused_without_import(tmp_path, monkeypatch):
    (tmp_path / "evil_mod.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for stored, words in [({"kind": "module", "name": "system", "file": "os"}, "os:system is not model code"),
                          ({"kind": "pickle", "name": "x"}, "kind 'pickle'"),
                          ({"kind": "file", "name": "Net", "file": "relative.py"}, "not the absolute path"),
                          ({"kind": "builtin", "name": "os.system"}, "no built-in model"),
                          ({"kind": "module", "name": "__import__('os')", "file": "x"}, "is not a Python name"),
                          ({"kind": "builtin", "name": ["cifar_cnn"]}, "name \\['cifar_cnn'\\]"),
                          ({"kind": "torchvision", "name": ["resnet18"]}, "name \\['resnet18'\\]"),
                          ({"kind": ["file"], "name": "Net"}, "kind \\['file'\\]"),
                          ({"kind": "builtin", "name": "cifar_cnn", "args": [1]}, "model args \\[1\\]"),
                          ({"kind": "file", "name": "Net", "file": "/n.py", "neighbours": {"../up.py": "0"}}, "neighbour '../up.py'"),
                          ({"kind": "file", "name": "Net", "file": "/n.py", "neighbours": ["a.py"]}, "neighbours \\['a.py'\\]")]:
        with pytest.raises(EngineError, match=f"will not load .*{words}"):
            ModelRef.from_dict(stored)
    evil = ModelRef.from_dict({"kind": "module", "name": "Net", "file": "evil_mod"})
    with pytest.raises(UsageError, match="was trained with evil_mod:Net, not"):
        reopen(evil, parse_model("torchvision:resnet18"))
    with pytest.raises(UsageError, match="name it again: --model evil_mod:Net"):
        reopen(evil, None)
    assert not (tmp_path / "RAN").exists() and "evil_mod" not in sys.modules


def test_a_changed_file_is_said_and_loads_only_if_the_weights_fit(nets):
    saved = parse_model(f"{nets}:Net")
    nets.write_text(TUTORIAL + "\n# edited\n")
    said = []
    ref = reopen(saved, parse_model(f"{nets}:Net"), warn=said.append)
    assert ref.sha256 != saved.sha256 and "changed since the run was trained" in said[0]
    reopen(saved, parse_model(f"{nets}:Net"), warn=said.append)  # a resume reopens twice: said once
    assert len(said) == 1
    with pytest.raises(UsageError, match="not .*:Sized"):
        reopen(saved, parse_model(f"{nets}:Sized"))


def test_a_module_built_by_the_caller_is_recorded_by_its_class(nets):
    model = build(parse_model(f"{nets}:Net"), (3, 32, 32), 10)  # its class comes from the file
    ref = reference_of(model)
    assert ref.kind == "file" and ref.name == "Net" and ref.file == str(nets.resolve())
    with pytest.raises(UsageError, match=r"train\(model=...\): torch.nn.modules.container.Sequential is torch's own "
                                         "class, which cannot name your network"):
        reference_of(nn.Sequential(nn.Flatten(), nn.Linear(2, 2)))

    def local():
        class Inner(nn.Module):
            pass

        return Inner()

    with pytest.raises(UsageError, match="defined inside a function"):
        reference_of(local())


def test_a_class_imported_from_a_loose_file_is_recorded_as_that_file(tmp_path, monkeypatch):
    # `from nets import Net` in a script beside nets.py: the command line cannot import `nets` from
    # elsewhere, so the reference is the file, which `--model nets.py:Net` names from anywhere
    (tmp_path / "looseneighbour.py").write_text(TUTORIAL)
    monkeypatch.syspath_prepend(str(tmp_path))
    import looseneighbour

    try:
        ref = reference_of(looseneighbour.Net())
    finally:
        sys.modules.pop("looseneighbour", None)
    assert ref.kind == "file" and ref.file == str((tmp_path / "looseneighbour.py").resolve()) and ref.sha256
    assert ref == parse_model(f"{tmp_path / 'looseneighbour.py'}:Net")  # what eval's --model names


def test_import_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "broken.py").write_text("import torch\n\nx = undefined_name\n")
    with pytest.raises(EngineError, match=r"broken.py raised NameError on import \(line 3\)"):
        load_code(parse_model(f"{tmp_path / 'broken.py'}:Net"))
    assert not (tmp_path / "__pycache__").exists()  # nothing written beside the user's file
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "nets.py").write_text("from . import blocks\n")
    with pytest.raises(EngineError, match=r"nets.py raised ImportError on import \(line 1\): attempted relative import "
                                          r"with no known parent package \(a file of a package: name it as "
                                          r"package.module:Net, with the folder above the package on PYTHONPATH\)"):
        load_code(parse_model(f"{tmp_path / 'pkg' / 'nets.py'}:Net"))


def test_a_neighbour_imported_inside_the_constructor_or_forward_is_found_and_shadows_no_library(tmp_path):
    """`from blocks import block` inside __init__ or forward runs after the file's import: it finds the
    file beside it, as Python does for a script; a neighbour named like the standard library (copy.py)
    never replaces it for anyone else."""
    (tmp_path / "blocks.py").write_text("from torch import nn\n\n\ndef block(i, o):\n    return nn.Conv2d(i, o, 3)\n")
    (tmp_path / "copy.py").write_text("raise ImportError('the user copy.py, imported in place of the library')\n")
    (tmp_path / "late.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self, num_classes=10):\n"
        "        super().__init__()\n        from blocks import block\n\n        self.conv = block(3, 4)\n"
        "        self.head = nn.Linear(4, num_classes)\n\n    def forward(self, x):\n        import blocks\n\n"
        "        assert blocks.block\n        return self.head(self.conv(x).mean((2, 3)))\n")
    model = build(parse_model(f"{tmp_path / 'late.py'}:Net"), (3, 8, 8), 3)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
    import importlib

    sys.modules.pop("copy", None)
    try:
        assert importlib.import_module("copy").__file__ != str(tmp_path / "copy.py")
    finally:
        sys.path.remove(str(tmp_path))  # this process's later tests: as they were


def test_lazy_modules_take_their_shapes_from_the_probe(tmp_path):
    (tmp_path / "lazy.py").write_text(
        "from torch import nn\n"
        "def Lazy(num_classes):\n"
        "    return nn.Sequential(nn.LazyConv2d(8, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(num_classes))\n")
    ref = parse_model(f"{tmp_path / 'lazy.py'}:Lazy")
    model = build(ref, (3, 12, 12), 4)
    assert model[0].weight.shape == (8, 3, 3, 3) and model[4].weight.shape == (4, 8 * 10 * 10)
    assert torch.equal(model[1].running_mean, torch.zeros(8)) and int(model[1].num_batches_tracked) == 0


def test_the_changed_file_warning_goes_to_stderr(nets, capsys):
    saved = parse_model(f"{nets}:Net")
    nets.write_text(TUTORIAL + "\n# edited for stderr\n")
    reopen(saved, parse_model(f"{nets}:Net"))
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("engine: warning: ") and "changed since the run was trained" in err


def test_images_too_small_for_a_network_say_so():
    with pytest.raises(UsageError, match=r"torchvision:inception_v3 cannot take 3x32x32 images: its forward raised "
                                         r"RuntimeError: Calculated .*; the images are too small for this network \(resize an "
                                         r"image folder's with --image-size; summary takes --input-shape\)$"):
        build(parse_model("torchvision:inception_v3", '{"aux_logits": false}'), (3, 32, 32), 10)


PROBABILITIES = """
from torch import nn


def head(num_classes):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def Softmaxed(num_classes):
    return nn.Sequential(head(num_classes), nn.Softmax(dim=1))


def LogSoftmaxed(num_classes):
    return nn.Sequential(head(num_classes), nn.LogSoftmax(dim=1))


made = head(10)
"""


def test_a_model_returning_probabilities_is_warned_of_once_where_it_trains(tmp_path, capsys):
    (tmp_path / "probs.py").write_text(PROBABILITIES)
    build(parse_model(f"{tmp_path / 'probs.py'}:LogSoftmaxed"), (3, 8, 8), 3, batch=8)  # cross-entropy's own
    build(parse_model(f"{tmp_path / 'probs.py'}:Softmaxed"), (3, 8, 8), 3)  # summarised, not trained
    assert "probabilities" not in capsys.readouterr().err
    for _ in range(2):
        build(parse_model(f"{tmp_path / 'probs.py'}:Softmaxed"), (3, 8, 8), 3, batch=8)
    err = capsys.readouterr().err
    assert err.count("engine: warning: probs.py:Softmaxed returns probabilities (each row sums to 1") == 1, err


def test_a_module_made_at_import_is_told_to_become_a_function(tmp_path):
    (tmp_path / "probs.py").write_text(PROBABILITIES)
    with pytest.raises(UsageError, match=r"made is not an nn.Module .*\(it is of type Sequential\); make it a function "
                                         r"that builds it, def made\(num_classes\): return Sequential\(...\)"):
        build(parse_model(f"{tmp_path / 'probs.py'}:made"), (3, 8, 8), 3, batch=8)
