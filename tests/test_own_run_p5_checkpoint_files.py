"""Checkpoint files damaged after they were written, or of another kind, are one line naming what they are:
bytes changed inside a tensor (torch.load never checks the CRC-32 torch.save writes) no longer load as
other weights; a plain state dict or another format's checkpoint says so, and what to do."""

import pytest
import torch

from engine.checkpoint import FORMAT, load, save_atomic
from engine.cli import main
from engine.errors import EngineError
from engine.models import build_model
from engine.models.weights import read_state_dict
from tests.test_checkpoint import checkpoint_for


def _saved(tmp_path, name="c.pt"):
    torch.manual_seed(0)
    model = build_model("lenet", (3, 32, 32), 10)
    with torch.no_grad():
        model.fc3.bias.copy_(torch.arange(10, dtype=torch.float32) + 0.5)  # bytes easy to find in the file
    path = tmp_path / name
    save_atomic(checkpoint_for(model), path)
    return path, model


def _damage(path, model):
    """Change one float of fc3.bias in place in the file, as a bad disk or copy would."""
    data = bytearray(path.read_bytes())
    where = data.find(model.fc3.bias.detach().numpy().tobytes())
    assert where > 0
    data[where:where + 4] = torch.tensor([9.0]).numpy().tobytes()
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_changed_weight_bytes_is_refused_not_loaded(tmp_path, capsys):
    path, model = _saved(tmp_path)
    assert torch.equal(load(path).model["fc3.bias"], model.fc3.bias)  # whole: it loads
    _damage(path, model)
    assert torch.load(path, weights_only=True)["model"]["fc3.bias"][0] == 9.0  # torch alone: other weights, silently
    with pytest.raises(EngineError, match=r"c\.pt is not a readable engine checkpoint \(its .*data/\d+ fails the CRC-32"):
        load(path)
    with pytest.raises(EngineError, match=r"--init-from: .*fails the CRC-32 check"):
        read_state_dict(path)
    assert main(["eval", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("engine: error:") and "CRC-32" in err[0], err


def test_a_file_saved_without_crcs_still_loads(tmp_path):
    torch.serialization.set_crc32_options(False)  # its CRC fields are 0: nothing to check, nothing refused
    try:
        path, model = _saved(tmp_path)
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(load(path).model["fc3.bias"], model.fc3.bias)


def test_plain_weights_and_another_format_say_what_they_are(tmp_path):
    path, model = _saved(tmp_path)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(EngineError, match=r"weights\.pt is not an engine checkpoint .* but plain weights \(a state "
                                          r"dict\): start a run from them with engine train --init-from .*weights\.pt"):
        load(tmp_path / "weights.pt")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pt")
    with pytest.raises(EngineError, match="plain weights"):
        load(tmp_path / "wrapped.pt")
    newer = dict(torch.load(path, weights_only=True), format="engine-checkpoint/2")
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(EngineError, match=rf"newer\.pt is a checkpoint of format 'engine-checkpoint/2', which this "
                                          rf"engine cannot read \(it reads {FORMAT}"):
        load(tmp_path / "newer.pt")
