"""A model named as `package.module:NAME` (an importable module, not a .py file) had no source digest:
the checkpoint kept a file model's sha256 but `sha256: None` for a module's, so an edited module was
loaded in silence by eval, export and resume, and the compile and bf16 measurement caches (keyed by
ModelRef.measured_as) served the old code's measurement. The module's .py file (and the files it
imports beside it) is now digested as a file model's is, and a change is said in one line."""

import sys
import textwrap

import pytest

NETS = textwrap.dedent("""
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))
""")


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package `p8digest_<n>` on sys.path holding nets.py; removed from sys.modules afterwards."""
    name = f"p8digest_{len(tmp_path.name)}_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / "lib" / name).mkdir(parents=True)
    (tmp_path / "lib" / name / "__init__.py").write_text("")
    (tmp_path / "lib" / name / "nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    yield name, tmp_path / "lib" / name / "nets.py"
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


@pytest.mark.slow
def test_a_module_models_checkpoint_keeps_its_digest_and_an_edit_is_said(package, tmp_path, capsys):
    from engine.checkpoint import load
    from engine.config import Config
    from engine.evaluate import evaluate_checkpoint
    from engine.models.neighbours import digest
    from engine.models.reference import parse_model, reopen
    from engine.models.user_code import load_code, with_neighbours
    from engine.train import train

    name, nets = package
    code = f"{name}.nets:Net"
    run = tmp_path / "run"
    train(Config(model=code, data=photos(tmp_path), test_split=0.5, epochs=1, batch_size=4, amp=False, device="cpu",
                 quiet=True, out=str(run), cache_dir=str(tmp_path / "cache")), log=lambda *_: None)
    saved = load(run / "last.pt").ref
    assert saved.kind == "module" and saved.sha256 == digest(nets)
    assert saved.neighbours == {"__init__.py": digest(nets.parent / "__init__.py")}
    capsys.readouterr()

    nets.write_text(NETS.replace("torch.relu", "torch.tanh"))  # same weights, another forward
    flags = {"amp": False, "device": "cpu", "quiet": True, "cache_dir": str(tmp_path / "cache")}
    evaluate_checkpoint(run / "best.pt", flags, log=lambda *_: None, model=code)
    err = capsys.readouterr().err
    assert f"engine: warning: {nets} (module {name}.nets) changed since the run was trained (sha256 " in err
    assert "loading it only if the weights fit" in err
    assert err.count("changed since") == 1

    again = reopen(saved, parse_model(code), "run")  # what a resume builds: the code now, another model to the caches
    load_code(again)
    now = with_neighbours(again)
    assert now.sha256 == digest(nets) != saved.sha256
    assert now.measured_as() != saved.measured_as()


def test_a_module_class_built_in_python_is_recorded_with_its_digest(package):
    import importlib

    from engine.models.neighbours import digest
    from engine.models.reference import reference_of

    name, nets = package
    module = importlib.import_module(f"{name}.nets")
    ref = reference_of(module.Net(3))
    assert (ref.kind, ref.file, ref.sha256) == ("module", f"{name}.nets", digest(nets))
    assert ref.measured_as()["code"][0] == digest(nets)


def test_a_checkpoint_of_a_module_from_before_has_no_digest_and_loads_without_a_word(package, capsys):
    from engine.models.reference import ModelRef, parse_model, reopen
    from engine.models.user_code import load_code

    name, _ = package
    old = ModelRef.from_dict({"kind": "module", "name": "Net", "file": f"{name}.nets", "sha256": None, "args": {}})
    ref = reopen(old, parse_model(f"{name}.nets:Net"), "old.pt")
    load_code(ref)
    assert "warning" not in capsys.readouterr().err


def test_a_stored_digest_that_is_no_string_is_a_refused_reference_not_a_traceback():
    from engine.errors import EngineError
    from engine.models.reference import ModelRef

    for sha in (12345, ["a"], {"x": 1}):  # reopen and load_code slice it: TypeError's traceback before
        with pytest.raises(EngineError, match=r"bad.pt names a model the engine will not load \(.*sha256 "):
            ModelRef.from_dict({"kind": "file", "name": "Net", "file": "/x/nets.py", "sha256": sha, "args": {}}, "bad.pt")


def photos(root):
    """Two classes of 8 tiny PNG images each: a run on them takes a fraction of the synthetic set's time."""
    from PIL import Image

    for c, name in enumerate(("a", "b")):
        (root / "photos" / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (8, 8), (40 * i, 200 * c, 90)).save(root / "photos" / name / f"{i}.png")
    return str(root / "photos")
