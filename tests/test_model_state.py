"""User models whose state is out of the ordinary, through training, --ema, evaluation, resume,
--init-from, summary and `eval --json`: pruned (torch.nn.utils.prune's computed `weight`),
parametrized (weight_norm), a scripted submodule, buffers a forward grows or first sets, a
backward hook, and a forward that prints. Each is a model a user brings; each failed with a
traceback before (a fourth round of user models)."""

import json
import warnings

import pytest
import torch

from engine.checkpoint import load
from engine.cli import main
from engine.config import Config
from engine.errors import UsageError
from engine.evaluate import evaluate_checkpoint
from engine.models.copying import duplicate
from engine.train import train

NETS = '''
import torch
import torch.nn as nn
from torch.nn.utils import parametrizations, prune


class Base(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.f = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.f(torch.relu(self.c(x)).mean((2, 3)))


class Pruned(Base):
    def __init__(self, num_classes=10):
        super().__init__(num_classes)
        prune.l1_unstructured(self.c, "weight", amount=0.5)


class Normed(Base):
    def __init__(self, num_classes=10):
        super().__init__(num_classes)
        self.c = parametrizations.weight_norm(self.c)
        self.f = parametrizations.weight_norm(self.f)


class PrunedHead(Base):
    def __init__(self, num_classes=10):
        super().__init__(num_classes)
        prune.l1_unstructured(self.f, "weight", amount=0.5)


class Scripted(Base):
    def __init__(self, num_classes=10):
        super().__init__(num_classes)
        self.c = torch.jit.script(nn.Conv2d(3, 8, 3, padding=1))


class Memory(Base):
    """A buffer that grows in training (a memory of features) and one registered as None."""

    def __init__(self, num_classes=10):
        super().__init__(num_classes)
        self.register_buffer("seen", torch.empty(0))
        self.register_buffer("last", None, persistent=False)
        self.register_buffer("mean_in", None)  # kept in the state dict once a forward sets it

    def forward(self, x):
        self.mean_in = x.detach().mean((0, 2, 3))
        h = torch.relu(self.c(x)).mean((2, 3))
        if self.training:
            self.seen = torch.cat([self.seen, h.detach().mean(1)])[-50:]
        self.last = h.detach()
        return self.f(h)


class Viewed(Base):
    """Flattens a convolution's output with .view, as if its memory were NCHW."""

    def __init__(self, num_classes=10):
        super().__init__(num_classes)
        self.f = nn.Linear(8 * 32 * 32, num_classes)

    def forward(self, x):
        h = torch.relu(self.c(x))
        return self.f(h.view(h.size(0), -1))


class Hooked(Base):
    def __init__(self, num_classes=10):
        super().__init__(num_classes)
        self.c.register_full_backward_hook(lambda module, grad_in, grad_out: None)


class Loud(Base):
    def forward(self, x):
        print("forward", tuple(x.shape))
        return super().forward(x)


class Volumetric(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.c = nn.Conv3d(1, 4, (1, 3, 3), padding=(0, 1, 1))  # 5-d filters: (out, in, depth, height, width)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.c(x.unsqueeze(1))).mean((2, 3, 4)))
'''

FLAGS = dict(data="synthetic", epochs=2, limit_train=64, limit_test=32, batch_size=16, device="cpu", amp=False, quiet=True)


@pytest.fixture
def nets(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path / "nets.py"


def run(nets, name, out, **flags):
    return train(Config(model=f"{nets}:{name}", out=str(out), **{**FLAGS, **flags}), log=lambda *_: None)[0]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # the Scripted user model, on purpose
def test_a_pruned_model_copies_for_measurements_and_trains_with_ema(nets, tmp_path):
    """prune keeps `weight` as a computed attribute, not a leaf: copy.deepcopy refused it (the bf16
    and compile measurements, --ema's average)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nets_for_copy", nets)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Pruned()
    copied = duplicate(model, "a test")
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(copied(x), model(x)) and all(p.is_leaf for p in copied.parameters())
    with pytest.raises(UsageError, match="a test needs a copy of Scripted that trains.*torch.jit.script-ed submodule"):
        duplicate(module.Scripted(), "a test")
    out = run(nets, "Pruned", tmp_path / "pruned", ema=0.9)
    assert load(out / "best.pt").ema is not None
    with pytest.raises(UsageError, match="--ema's average needs a copy of Scripted"):
        run(nets, "Scripted", tmp_path / "scripted", ema=0.9)


@pytest.mark.slow
def test_buffers_a_forward_grows_or_sets_train_average_evaluate_and_resume(nets, tmp_path):
    """The probe put buffers back with copy_ (a shape error, a KeyError for one registered as None);
    --ema averaged a grown buffer with its empty start; a checkpoint's grown buffer did not load
    into the freshly built model."""
    out = run(nets, "Memory", tmp_path / "run", ema=0.9)
    saved = load(out / "last.pt")
    assert saved.model["seen"].shape == (50,) and saved.ema["seen"].shape == (50,)
    result = evaluate_checkpoint(out / "best.pt", {"quiet": True, "limit_test": 32}, log=lambda *_: None, model=f"{nets}:Memory")
    assert result["images"] == 32
    from engine.checkpoint import model_from_checkpoint
    from engine.ema import WeightAverage
    from engine.models.build import build
    from engine.models.reference import parse_model

    rebuilt = model_from_checkpoint(saved, out / "last.pt", parse_model(f"{nets}:Memory"), say=lambda *_: None)
    assert torch.equal(rebuilt.seen, saved.ema["seen"])  # the average, which evaluations use (check_state, as --resume)
    assert torch.equal(rebuilt.mean_in, saved.ema["mean_in"])  # registered as None in the built model
    average = WeightAverage(build(parse_model(f"{nets}:Memory"), (3, 32, 32), 10), 0.9)
    average.load_state_dict(saved.ema, saved.ema_updates)  # --resume's load of the average
    assert torch.equal(average.module.seen, saved.ema["seen"])


@pytest.mark.slow
def test_summary_of_a_parametrized_model_and_init_from_re_initialises_its_head(nets, tmp_path, capsys):
    """summary's autograd.grad under the FLOP counter failed through weight_norm; --init-from kept only
    `f.weight`/`f.bias` as the head, so a weight-normed head of another class count did not fit."""
    assert main(["summary", "--model", f"{nets}:Normed", "--input-shape", "3x16x16"]) == 0
    assert "Total parameters" in capsys.readouterr().out
    source = run(nets, "Normed", tmp_path / "ten")
    from engine.models.build import build
    from engine.models.reference import parse_model
    from engine.models.weights import init_from

    model = build(parse_model(f"{nets}:Normed"), (3, 32, 32), 4)
    fresh = init_from(model, source / "best.pt", say=lambda *_: None)
    assert set(fresh) == {"f.bias", "f.parametrizations.weight.original0", "f.parametrizations.weight.original1"}
    pruned = run(nets, "PrunedHead", tmp_path / "pruned")  # a head buffer (weight_mask) of another class count
    model = build(parse_model(f"{nets}:PrunedHead"), (3, 32, 32), 4)
    assert set(init_from(model, pruned / "best.pt", say=lambda *_: None)) == {"f.bias", "f.weight_orig", "f.weight_mask"}
    assert model.f.weight_mask.shape == (4, 8) and model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.slow
def test_evaluation_runs_no_backward_and_json_stays_json_when_the_forward_prints(nets, tmp_path, capsys):
    """eval probed a training step's backward, firing a user's backward hook (torch's warning about
    it on the terminal); a forward's print went into `eval --json`'s stdout."""
    out = run(nets, "Hooked", tmp_path / "hooked")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_checkpoint(out / "best.pt", {"quiet": True}, log=lambda *_: None, model=f"{nets}:Hooked")
    assert not [w for w in caught if "backward hook" in str(w.message)]
    loud = run(nets, "Loud", tmp_path / "loud")
    capsys.readouterr()
    assert main(["eval", str(loud / "best.pt"), "--model", f"{nets}:Loud", "--json", "--limit-test", "32"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["images"] == 32 and "forward (" in printed.err


@pytest.mark.slow
def test_a_forward_that_views_an_activation_as_nchw_runs_nchw_with_one_line(nets, tmp_path):
    """`x.view(x.size(0), -1)` after a convolution fails on channels_last batches, the default: the
    first step stopped with torch's "view size is not compatible" (said as the model's error, with
    nothing to pass); eval of its checkpoint did the same."""
    said = []
    out = train(Config(model=f"{nets}:Viewed", out=str(tmp_path / "run"), **{**FLAGS, "quiet": False}), log=said.append)[0]
    line = next(text for text in said if text.startswith("channels_last: off"))
    assert "(line " in line and "view size is not compatible" in line and ".flatten(1)" in line
    assert load(out / "best.pt").config["channels_last"] is False
    said.clear()
    result = evaluate_checkpoint(out / "best.pt", {"limit_test": 32}, log=said.append, model=f"{nets}:Viewed")
    assert result["images"] == 32 and any(text.startswith("channels_last: off") for text in said)
    run(nets, "Base", tmp_path / "base")  # a model that takes channels_last keeps it
    assert load(tmp_path / "base" / "best.pt").config["channels_last"] is True


@pytest.mark.slow
def test_a_model_with_5_d_filters_runs_nchw_with_one_line(nets, tmp_path):
    """A Conv3d's filters are 5-d, which Module.to(memory_format=channels_last) refuses ("required rank 4
    tensor to use channels_last format"): training stopped there with torch's traceback. It runs NCHW,
    said in one line, trains with --ema and evaluates."""
    said = []
    out = train(Config(model=f"{nets}:Volumetric", out=str(tmp_path / "run"), ema=0.9, **{**FLAGS, "quiet": False}),
                log=said.append)[0]
    line = next(text for text in said if text.startswith("channels_last: off"))
    assert "c.weight has 5 dimensions" in line
    assert load(out / "best.pt").config["channels_last"] is False
    result = evaluate_checkpoint(out / "best.pt", {"limit_test": 32}, log=lambda *_: None, model=f"{nets}:Volumetric")
    assert result["images"] == 32
