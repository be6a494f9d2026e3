"""--compile's measurement compares the compiled training step with eager's before using it; a model with
dropout drew other masks in the compiled copy (Inductor's own random numbers, and the eager step had used
the state first), so every such model 'disagreed with eager' and its training step never compiled, said as
a disagreement. The compiled copy now uses eager's random ops and both steps start from one state."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.compile_plan import measure_training
from engine.config import Config
from engine.runtime import Runtime


class Dropped(nn.Module):  # shapes of this test's own, so no compiled graph of them is cached
    def __init__(self):
        super().__init__()
        self.conv, self.drop, self.head = nn.Conv2d(3, 6, 3), nn.Dropout(0.5), nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.drop(F.relu(self.conv(x)).mean((2, 3))))


@pytest.mark.slow
def test_a_model_with_dropout_agrees_with_eager_once_compiled(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    runtime = Runtime.from_config(Config(compile=True, amp=False, device="cpu"), warn=lambda _: None)
    model, x, y = Dropped(), torch.randn(8, 3, 9, 7), torch.randint(0, 4, (8,))
    state = torch.get_rng_state()
    ratio, _ = measure_training(model, runtime, x, y)
    assert ratio > 0  # 0 is the measurement's 'compiled disagreed with eager'
    assert torch.equal(torch.get_rng_state(), state)  # the run's random state as it was
