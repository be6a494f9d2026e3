"""A compile Inductor cannot build (no working C++ compiler, an op it cannot lower) is a decision to run
eagerly, said in one line and cached with its reason: `engine train --compile` on a machine without g++
stopped with InductorError's traceback from the training step's measurement, and at the second
evaluation from the evaluation's compile."""

import copy

import pytest
import torch
import torch._inductor.config as inductor_config
from torch import nn

import engine.inductor

from engine.compile_eval import EvalPlan
from engine.compile_plan import decide, plan_training, read
from engine.config import Config
from engine.inductor import compiled_graphs
from engine.models.reference import parse_model
from engine.runtime import Runtime


class Net(nn.Module):  # shapes of this test's own, so no compiled graph of them is cached
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 7, 3, padding=(1, 2))
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        return self.head(torch.amax(torch.relu(self.conv(x)), dim=(2, 3)))


@pytest.fixture
def no_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    with inductor_config.patch({"cpp.cxx": ("/bin/false",), "compile_threads": 1}):
        yield


def _runtime():
    return Runtime.from_config(Config(compile=True, amp=False, device="cpu"), warn=lambda _: None)


@pytest.mark.slow
def test_a_training_step_inductor_cannot_build_runs_eagerly_in_one_line(tmp_path, no_compiler):
    torch.manual_seed(0)
    model, said = Net(), []
    x, y = torch.randn(4, 3, 13, 11), torch.randint(0, 3, (4,))
    ref = parse_model("cifar_cnn")
    decision = plan_training(_runtime(), model, ref, tuple(x.shape), lambda: (x, y), 10**8, tmp_path, said.append)
    assert not decision.compile
    assert len(said) == 1 and "runs eagerly: Inductor could not compile it here" in said[0]
    assert "C++ compiler" in said[0] and "measured now" in said[0] and "\n" not in said[0]
    entry = decision.measured
    assert entry["ratio"] == 0 and "C++ compiler" in entry["failed"]
    again = decide("train", next(k for k, v in read(tmp_path).items() if v.get("failed")), tmp_path, 10**8)
    assert not again.compile and "Inductor could not compile it here" in again.why and "measured earlier" in again.why
    assert model.training and all(p.grad is None for p in model.parameters())  # the caller's model untouched


@pytest.mark.slow
def test_an_evaluation_inductor_cannot_build_runs_eagerly_and_keeps_the_mode(tmp_path, no_compiler):
    torch.manual_seed(0)
    model, said = Net().train(), []
    plan = EvalPlan(_runtime(), parse_model("cifar_cnn"), (4, 3, 13, 11), 10**6, tmp_path, said.append)
    assert plan.model(model) is model
    plan.timed(1.0)  # the first, eager evaluation took a second: the next would compile
    graphs = compiled_graphs()
    assert plan.model(model) is model  # refused by Inductor: eager, from here on
    assert compiled_graphs() == graphs  # no graph was built ('torch.compile built new graphs' is not said)
    assert said[-1].startswith("--compile: evaluation runs eagerly: Inductor could not compile it (")
    assert model.training  # put back though the compile failed
    assert plan.model(model) is model and plan.state == "eager"
    assert any(e.get("failed") and e["what"] == "evaluation" for e in read(tmp_path).values())
    with torch.no_grad():
        assert plan.model(model)(torch.zeros(2, 3, 13, 11)).shape == (2, 3)


@pytest.mark.slow
def test_a_compile_as_asked_that_inductor_cannot_build_evaluates_eagerly_with_one_warning(tmp_path, no_compiler,
                                                                                         monkeypatch, capsys):
    """ENGINE_COMPILE=always (and --triton --compile) compile as asked: a graph Inductor cannot build
    ran into InductorError's traceback at the first forward; it runs eagerly, said once."""
    monkeypatch.setenv("ENGINE_COMPILE", "always")
    monkeypatch.setattr(engine.inductor, "_said", [])  # said once a process: this test's own process-wide memory
    torch.manual_seed(0)
    eager, x = Net().eval(), torch.randn(4, 3, 13, 11)
    with torch.no_grad():
        expected = eager(x)
    model = _runtime().prepare(Net().eval(), compile=True)
    model.load_state_dict(eager.state_dict())
    with torch.no_grad():
        got = model(x)
        again = model(torch.randn(5, 3, 13, 11))  # another shape: another graph, no second line
    assert torch.allclose(got, expected, atol=1e-6) and again.shape == (5, 3)
    lines = [line for line in capsys.readouterr().err.splitlines() if "Inductor could not compile" in line]
    assert len(lines) == 1 and all(line.startswith("engine: warning: --compile: ") for line in lines)


class ItemBranch(nn.Module):  # `.item()` in a forward: Dynamo restarts its analysis through the backend
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 5, 3), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)).amax((2, 3))
        if h.mean().item() > 0.1:
            h = h * 2
        return self.head(h)


@pytest.mark.slow
def test_dynamos_own_restart_signal_is_not_taken_for_a_failed_build(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("ENGINE_COMPILE", "always")
    monkeypatch.setattr(engine.inductor, "_said", [])
    torch.manual_seed(0)
    eager, x = ItemBranch().eval(), torch.randn(8, 1, 9, 11)
    with torch.no_grad():
        expected = eager(x)
        graphs = compiled_graphs()
        model = _runtime().prepare(copy.deepcopy(eager), compile=True)
        got = torch.cat([model(x[:6]), model(x[6:])])  # a second batch size: the dynamic-shape graph restarts
    assert torch.allclose(got, expected, atol=1e-6) and compiled_graphs() > graphs  # built, not run eagerly
    err = capfd.readouterr().err
    assert "Inductor could not compile" not in err
    assert "Graph break" not in err  # Dynamo's 12 lines of advice on `.item()` (it handles the break) are not said
